//! Memory checked before it is allocated. A command adds up what it is about to allocate (a
//! [`Need`]: parameters, gradients, optimizer moments, activations, a KV cache, each in
//! bytes) and compares the sum with what the machine can give, so that a batch or a context too
//! large for the machine is an error naming the figure and the flag to change, not an abort
//! ("memory allocation of ... bytes failed") or a kill by the kernel's OOM killer.
//!
//! Sizes are multiplied with saturation: a product beyond u64 reads as u64::MAX bytes, which no
//! machine has, so absurd sizes are refused without overflowing.
//!
//! [`HugePageAlloc`], the allocator the `gpt2` binary installs, puts buffers of 2 MiB and more
//! on 2 MiB pages (`huge_pages`).

use crate::error::{Error, Result};

mod huge_pages;
pub use huge_pages::{
    large_buffers_ask_for_huge_pages, transparent_huge_pages, HugePageAlloc, HUGE_MIN_BYTES, HUGE_PAGE,
};

/// The product of `factors`, saturating at u64::MAX.
pub fn product(factors: &[usize]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f as u64))
}

/// The sum of `terms`, saturating at u64::MAX.
pub fn sum(terms: &[u64]) -> u64 {
    terms.iter().fold(0u64, |acc, &t| acc.saturating_add(t))
}

/// Bytes a command is about to allocate, part by part.
#[derive(Debug, Clone, Default)]
pub struct Need {
    parts: Vec<(String, u64)>,
}

impl Need {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `floats` values of 4 bytes (f32 or u32) under the name `what`.
    pub fn floats(mut self, what: impl Into<String>, floats: u64) -> Self {
        self.parts.push((what.into(), floats.saturating_mul(4)));
        self
    }

    /// Total bytes (saturating).
    pub fn total(&self) -> u64 {
        sum(&self.parts.iter().map(|(_, b)| *b).collect::<Vec<_>>())
    }

    /// Ok when the machine has room for the total, or when what it has cannot be known (not
    /// Linux). Else an error: `what` ("training", "3 samples") needs the total, part by part,
    /// more than is available; `advice` names the flags that make it smaller.
    pub fn check(&self, what: &str, advice: &str) -> Result<()> {
        match available() {
            Some(avail) => self.check_against(avail, what, advice),
            None => Ok(()),
        }
    }

    /// [`Need::check`] against `avail` bytes.
    pub fn check_against(&self, avail: u64, what: &str, advice: &str) -> Result<()> {
        let total = self.total();
        if total <= avail {
            return Ok(());
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, b)| *b > 0)
            .map(|(name, b)| format!("{name} {}", human(*b)))
            .collect();
        Err(Error::Input(format!(
            "{what} needs about {} of memory ({}), more than the {} this machine has available: {advice}",
            human(total),
            parts.join(", "),
            human(avail)
        )))
    }
}

/// Bytes in decimal units: "512 B", "3.2 MB", "1.9 TB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes this process may still allocate: the least of the kernel's MemAvailable, the room
/// left under the cgroup's memory.max (containers) and under RLIMIT_AS when set. None where
/// this cannot be read (not Linux, no /proc).
pub fn available() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mem = kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")?;
        let rooms = [cgroup_room(), address_space_room()];
        Some(rooms.into_iter().flatten().fold(mem, u64::min))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// The value of a `Name:   1234 kB` line of a /proc file, in bytes.
#[cfg(target_os = "linux")]
fn kb_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// memory.max − memory.current of this process's cgroup (v2), when it has a limit.
#[cfg(target_os = "linux")]
fn cgroup_room() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" (no limit) does not parse
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// RLIMIT_AS − the address space already in use (VmSize), when the limit is set.
#[cfg(target_os = "linux")]
fn address_space_room() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let used = kb_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmSize:")?;
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Linux target
    Some((limit.rlim_cur as u64).saturating_sub(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_saturate_and_print_in_decimal_units() {
        assert_eq!(product(&[3, 4, 5]), 60);
        assert_eq!(product(&[usize::MAX, 3]), u64::MAX);
        assert_eq!(human(999), "999 B");
        assert_eq!(human(3_200_000), "3.2 MB");
        assert_eq!(human(960_000_000_000), "960.0 GB");
        assert_eq!(human(u64::MAX), "18.4 EB");
    }

    #[test]
    fn a_need_beyond_what_is_available_names_its_parts_and_the_advice() {
        let need = Need::new().floats("parameters", 250).floats("activations", u64::MAX);
        assert_eq!(need.total(), u64::MAX);
        let err = need
            .check_against(2_000_000_000, "training", "lower --batch-size")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input: training needs about 18.4 EB of memory (parameters 1.0 kB, activations 18.4 EB), \
             more than the 2.0 GB this machine has available: lower --batch-size"
        );
        need.check_against(u64::MAX, "training", "").unwrap();
        Need::new().floats("x", 10).check_against(40, "x", "").unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_machine_has_some_memory() {
        let avail = available().expect("Linux has /proc/meminfo");
        assert!(avail > 1_000_000, "{avail}");
    }
}

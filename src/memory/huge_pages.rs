//! A global allocator that backs large buffers with transparent huge pages (2 MiB) on Linux.
//!
//! Decoding reads every weight once a token, and reading a prompt walks a weight matrix's rows
//! in blocks, many pages at once. In 4 KiB pages the 0.5 GB of GPT-2 124M's f32 weights span
//! 120,000 pages, far more than the TLB maps, so streaming them means a page walk every 4 KiB;
//! in 2 MiB pages they span 240. On a Zen 5 host whose memory read at 75-85 GB/s, f32 decoding
//! ran 1.1-1.2x as fast on huge pages (README, Performance). Linux hands out huge pages where a
//! mapping asks for them (`madvise(MADV_HUGEPAGE)`) unless
//! `/sys/kernel/mm/transparent_hugepage/enabled` says `never`; where it says `madvise` (Debian's
//! and Ubuntu's default, among others) a buffer gets them only if it asks.
//!
//! [`HugePageAlloc`] maps each allocation of [`HUGE_MIN_BYTES`] or more on its own, starting on a
//! 2 MiB boundary (so that all its whole 2 MiB spans can be huge pages), and asks for huge pages
//! there; everything smaller goes to the system allocator. The mapping is fresh, so its pages read
//! as zero and are only faulted in when first written: a zeroed buffer costs nothing until used,
//! as with `calloc`. The `gpt2` binary installs it; a program using the library opts in with
//! `#[global_allocator] static ALLOC: gpt2::memory::HugePageAlloc = gpt2::memory::HugePageAlloc;`.
//! Elsewhere than Linux it is the system allocator.

#[cfg(target_os = "linux")]
pub use linux::HugePageAlloc;
#[cfg(not(target_os = "linux"))]
pub use std::alloc::System as HugePageAlloc;

/// The size of a transparent huge page on x86-64 (and aarch64 with 4 KiB pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Allocations of at least this many bytes get a mapping of their own with huge pages asked for:
/// weight matrices, the KV cache, activations. Below it, a huge page would cover little of the
/// buffer, and the system allocator's reuse of freed memory saves page faults.
pub const HUGE_MIN_BYTES: usize = 2 << 20;

#[cfg(target_os = "linux")]
mod linux {
    use super::{HUGE_MIN_BYTES, HUGE_PAGE};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::ptr;

    /// A global allocator that puts every block of [`HUGE_MIN_BYTES`] or more on a mapping of
    /// its own, starting on a 2 MiB boundary, with transparent huge pages asked for
    /// (`madvise(MADV_HUGEPAGE)`); smaller blocks go to the system allocator. A fresh mapping
    /// reads as zero and its pages are faulted in only when written. Installing it also sets two
    /// of glibc's malloc parameters for the whole process, once: blocks below 2 MiB come from the
    /// heap (`M_MMAP_THRESHOLD`), and up to 4 MiB of free heap is kept (`M_TRIM_THRESHOLD`).
    /// The `gpt2` binary installs it; a program opts in with `#[global_allocator] static ALLOC:
    /// gpt2::memory::HugePageAlloc = gpt2::memory::HugePageAlloc;`.
    pub struct HugePageAlloc;

    fn is_huge(size: usize, align: usize) -> bool {
        size >= HUGE_MIN_BYTES && align <= HUGE_PAGE
    }

    /// glibc's malloc maps blocks above 128 KiB on their own and hands the top of its heap back
    /// to the kernel when 128 KiB of it are free, and raises both thresholds to the size of each
    /// larger mapped block freed, so that a program that allocates and frees the same buffers
    /// over and over soon reuses heap memory instead of faulting fresh pages in every time. Here
    /// the largest blocks never reach it, so its thresholds would stop at the largest block
    /// below 2 MiB freed, and a 16-token prompt's buffers (a few MB in all, per generation) came
    /// back as fresh pages each time: 570 page faults a generation. So the thresholds are set
    /// once to where they would have settled: everything below 2 MiB from the heap, kept up to
    /// twice that free.
    fn tune_system_allocator() {
        #[cfg(target_env = "gnu")]
        {
            static TUNED: std::sync::Once = std::sync::Once::new();
            TUNED.call_once(|| {
                // SAFETY: mallopt only sets malloc's parameters. (A 32-bit glibc caps the mapping
                // threshold at 512 KiB and ignores the first call: harmless.)
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, HUGE_MIN_BYTES as libc::c_int);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, (2 * HUGE_MIN_BYTES) as libc::c_int);
                }
            });
        }
    }

    /// `bytes` rounded up to whole pages of the kernel's size.
    fn page_rounded(bytes: usize) -> usize {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        bytes.div_ceil(page) * page
    }

    /// A fresh mapping of at least `size` bytes starting on a 2 MiB boundary, huge pages asked
    /// for; null when the kernel refuses the memory.
    unsafe fn map(size: usize) -> *mut u8 {
        let len = page_rounded(size);
        let span = len + HUGE_PAGE; // room to slide the start to a boundary
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let base = libc::mmap(ptr::null_mut(), span, prot, flags, -1, 0);
        if base == libc::MAP_FAILED {
            return ptr::null_mut();
        }
        let base = base as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (start - base, base + span - (start + len));
        // Hand back the slack before the boundary and after the end (both whole pages).
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        // A hint: where the kernel has no transparent huge pages this fails and changes nothing.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        start as *mut u8
    }

    unsafe fn unmap(ptr: *mut u8, size: usize) {
        let status = libc::munmap(ptr as *mut libc::c_void, page_rounded(size));
        debug_assert_eq!(status, 0, "munmap of a block this allocator mapped");
    }

    // SAFETY: every block comes either from `map` (sizes from HUGE_MIN_BYTES up, alignment up to
    // 2 MiB, which the mapping's start satisfies) and goes back to `unmap` with the same size, or
    // from the system allocator and goes back to it; `is_huge` of the layout tells which, the same
    // way at both ends.
    unsafe impl GlobalAlloc for HugePageAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            tune_system_allocator();
            match is_huge(layout.size(), layout.align()) {
                true => map(layout.size()),
                false => System.alloc(layout),
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            tune_system_allocator();
            match is_huge(layout.size(), layout.align()) {
                true => map(layout.size()), // a fresh anonymous mapping reads as zero
                false => System.alloc_zeroed(layout),
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            match is_huge(layout.size(), layout.align()) {
                true => unmap(ptr, layout.size()),
                false => System.dealloc(ptr, layout),
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !is_huge(layout.size(), layout.align()) && !is_huge(new_size, layout.align()) {
                return System.realloc(ptr, layout, new_size);
            }
            // SAFETY: the caller guarantees new_size, rounded up to the alignment, fits an isize.
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

/// What Linux does with huge pages asked for: the bracketed word of
/// /sys/kernel/mm/transparent_hugepage/enabled (`always`, `madvise` or `never`); None where there
/// is no such file (not Linux, or a kernel without transparent huge pages).
pub fn transparent_huge_pages() -> Option<String> {
    let modes = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let (_, rest) = modes.split_once('[')?;
    Some(rest.split_once(']')?.0.to_string())
}

/// Whether this process's large buffers ask for huge pages, that is whether [`HugePageAlloc`] is
/// its global allocator: a fresh buffer of
/// [`HUGE_MIN_BYTES`] is looked up in /proc/self/smaps, and its mapping's flags hold `hg`. False
/// where that cannot be read.
pub fn large_buffers_ask_for_huge_pages() -> bool {
    let buffer: Vec<u8> = std::hint::black_box(Vec::with_capacity(HUGE_MIN_BYTES));
    mapping_flags(buffer.as_ptr() as usize).is_some_and(|flags| flags.split_whitespace().any(|f| f == "hg"))
}

/// The `VmFlags:` line of the mapping holding `addr`, from /proc/self/smaps (`hg`: huge pages
/// asked for); None where there is no such file or mapping.
fn mapping_flags(addr: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        match line.split_once(' ').and_then(|(range, _)| range.split_once('-')) {
            Some((lo, hi)) => {
                let (lo, hi) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16));
                inside = matches!((lo, hi), (Ok(lo), Ok(hi)) if (lo..hi).contains(&addr));
            }
            _ if inside && line.starts_with("VmFlags:") => return Some(line.to_string()),
            _ => {}
        }
    }
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn large_blocks_start_on_a_huge_page_read_as_zero_and_keep_their_bytes_when_resized() {
        let alloc = HugePageAlloc;
        let layout = Layout::from_size_align(HUGE_MIN_BYTES + 12_345, 8).unwrap();
        // SAFETY: every block is used within its size and handed back with its layout.
        unsafe {
            let block = alloc.alloc_zeroed(layout);
            assert!(!block.is_null());
            assert!((block as usize).is_multiple_of(HUGE_PAGE), "starts on a 2 MiB boundary");
            let bytes = std::slice::from_raw_parts_mut(block, layout.size());
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
            if transparent_huge_pages().is_some_and(|mode| mode != "never") {
                let flags = mapping_flags(block as usize).expect("the block's mapping");
                assert!(
                    flags.split_whitespace().any(|f| f == "hg"),
                    "huge pages asked for: {flags}"
                );
            }

            // Larger, then smaller than a huge block, then small to small and back up: each
            // move keeps the bytes both sizes share.
            let (mut block, mut size) = (block, layout.size());
            for new_size in [3 * HUGE_MIN_BYTES, HUGE_MIN_BYTES / 2, 1000, 5000, HUGE_MIN_BYTES + 1] {
                block = alloc.realloc(block, Layout::from_size_align(size, 8).unwrap(), new_size);
                assert!(!block.is_null());
                let kept = std::slice::from_raw_parts(block, size.min(new_size));
                assert!(
                    kept.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
                    "{size} -> {new_size}"
                );
                let grown = std::slice::from_raw_parts_mut(block, new_size);
                grown
                    .iter_mut()
                    .enumerate()
                    .skip(size)
                    .for_each(|(i, b)| *b = (i % 251) as u8);
                size = new_size;
            }
            alloc.dealloc(block, Layout::from_size_align(size, 8).unwrap());

            // Small blocks come from the system allocator, with their alignment.
            let small = Layout::from_size_align(4096, 64).unwrap();
            let block = alloc.alloc_zeroed(small);
            assert!(!block.is_null() && (block as usize).is_multiple_of(64));
            assert!(std::slice::from_raw_parts(block, 4096).iter().all(|&b| b == 0));
            alloc.dealloc(block, small);
        }
    }

    #[test]
    fn the_kernel_setting_is_read_when_there_is_one() {
        if let Some(mode) = transparent_huge_pages() {
            assert!(["always", "madvise", "never"].contains(&mode.as_str()), "{mode}");
        }
    }
}

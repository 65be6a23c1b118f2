//! Which kernel runs the products of each low-precision dtype, chosen at run time for the CPU.
//!
//! | dtype | kernels, best first | instruction doing the work |
//! |---|---|---|
//! | bf16 | `amx`, `avx512bf16`, `avx2`, `scalar` | `tdpbf16ps` on AMX tiles for prompts (decoding as `avx512bf16`); `vdpbf16ps` (pairs of bf16 products into f32); bf16 widened to f32 + FMA; plain Rust |
//! | q8_0 | `amx`, `avx512vnni`, `avxvnni`, `avx2`, `scalar` | `tdpbssd` on AMX tiles for prompts (decoding as `avx512vnni`); `vpdpbusd` (u8·i8 quads of 16 or 8 weight rows into i32), 512-bit or VEX encoded; `vpmaddubsw` + `vpmaddwd`; plain Rust |
//!
//! The best kernel the CPU has is used, unless `GPT2_KERNEL` names one: a dtype that has a
//! kernel of that name uses it (an error if the CPU lacks it), the other dtype keeps its best.
//! `avx2` and `scalar` exist for both dtypes.

use crate::error::{Error, Result};

/// The environment variable that forces a kernel.
pub const KERNEL_ENV: &str = "GPT2_KERNEL";

/// The kernels of bf16 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX `tdpbf16ps` for prompts and bf16 training, 16 x 16 x 32 products per
    /// instruction; decoding (one or a few rows) runs the `avx512bf16` tiles.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX512-BF16 `vdpbf16ps`: activations rounded to bf16, 32 products per instruction.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// AVX2 + FMA: weights widened to f32, f32 activations.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

/// The kernels of q8_0 weights (activations quantized to q8 blocks on the fly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q8Kernel {
    /// Intel AMX `tdpbssd` for prompts, 16 prompt rows x a q8_0 block of 16 weight rows per
    /// instruction; decoding runs the `avx512vnni` tiles.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX512-VNNI `vpdpbusd` on 512-bit registers: a quad of 16 weight rows (a stored line of
    /// a group) against an activation quad in every lane.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX-VNNI, the VEX-encoded `vpdpbusd` of CPUs without AVX-512, on 8 rows at a time.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX2: `vpmaddubsw` on |w| and x·sign(w), then `vpmaddwd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

/// A kernel of either dtype: its name, the CPU features it needs, whether this CPU has them.
pub trait Kernel: Copy + 'static {
    /// Every kernel of the dtype, best first.
    const ALL: &'static [Self];
    /// The name `GPT2_KERNEL` and `gpt2 info` use.
    fn name(self) -> &'static str;
    /// The CPU features it needs, as /proc/cpuinfo names them.
    fn requires(self) -> &'static [&'static str];
    /// Whether this CPU has them (and the operating system lets this process use them).
    fn available(self) -> bool {
        self.requires().iter().all(|f| has_feature(f)) && self.permitted()
    }
    /// Whether the operating system lets this process use the features: a kernel that needs
    /// the AMX tiles needs Linux's leave ([`crate::ops::amx::granted`]); the others, nothing.
    fn permitted(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.requires().contains(&"amx_tile") {
            return crate::ops::amx::granted();
        }
        true
    }
    /// Why this process cannot run the kernel (None where it can): the features this CPU lacks,
    /// or Linux's refusal.
    fn unavailable(self) -> Option<String> {
        let missing: Vec<&str> = self.requires().iter().copied().filter(|f| !has_feature(f)).collect();
        if !missing.is_empty() {
            return Some(format!("this CPU lacks {}", missing.join(", ")));
        }
        (!self.permitted()).then(|| "Linux refused this process the AMX tile state (arch_prctl)".into())
    }
    /// The best kernel this CPU has (`scalar` runs everywhere).
    fn best() -> Self {
        *Self::ALL
            .iter()
            .find(|k| k.available())
            .expect("the scalar kernel is always available")
    }
}

/// The features every x86 SIMD kernel here uses besides its own (f16c: q8_0 scales).
#[cfg(target_arch = "x86_64")]
const AVX2: [&str; 3] = ["avx2", "fma", "f16c"];

impl Kernel for Bf16Kernel {
    #[cfg(target_arch = "x86_64")]
    const ALL: &'static [Self] = &[
        Bf16Kernel::Amx,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Avx2,
        Bf16Kernel::Scalar,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const ALL: &'static [Self] = &[Bf16Kernel::Scalar];

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Amx => "amx",
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => "avx512bf16",
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx2 => "avx2",
            Bf16Kernel::Scalar => "scalar",
        }
    }

    fn requires(self) -> &'static [&'static str] {
        match self {
            // the vdpbf16ps kernels' (decoding, packing for training) and the tiles'
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Amx => &["avx512f", "avx512_bf16", "avx512bw", "amx_tile", "amx_bf16"],
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => &["avx512f", "avx512_bf16"],
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx2 => &AVX2,
            Bf16Kernel::Scalar => &[],
        }
    }
}

impl Kernel for Q8Kernel {
    #[cfg(target_arch = "x86_64")]
    const ALL: &'static [Self] = &[
        Q8Kernel::Amx,
        Q8Kernel::Avx512Vnni,
        Q8Kernel::AvxVnni,
        Q8Kernel::Avx2,
        Q8Kernel::Scalar,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const ALL: &'static [Self] = &[Q8Kernel::Scalar];

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Amx => "amx",
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni => "avx512vnni",
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::AvxVnni => "avxvnni",
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx2 => "avx2",
            Q8Kernel::Scalar => "scalar",
        }
    }

    fn requires(self) -> &'static [&'static str] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Amx => &[
                "avx2",
                "fma",
                "f16c",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512_vnni",
                "amx_tile",
                "amx_int8",
            ],
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx512Vnni => &["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"],
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::AvxVnni => &["avx2", "fma", "f16c", "avx_vnni"],
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx2 => &AVX2,
            Q8Kernel::Scalar => &[],
        }
    }
}

/// The CPU features `gpt2 info` reports, as /proc/cpuinfo names them.
pub const REPORTED_FEATURES: &[&str] = &[
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
];

/// Whether this CPU has the feature `name` (a name of [`REPORTED_FEATURES`]).
pub fn has_feature(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match name {
            "avx2" => is_x86_feature_detected!("avx2"),
            "fma" => is_x86_feature_detected!("fma"),
            "f16c" => is_x86_feature_detected!("f16c"),
            "avx512f" => is_x86_feature_detected!("avx512f"),
            "avx512bw" => is_x86_feature_detected!("avx512bw"),
            "avx512vl" => is_x86_feature_detected!("avx512vl"),
            "avx512_vnni" => is_x86_feature_detected!("avx512vnni"),
            "avx512_bf16" => is_x86_feature_detected!("avx512bf16"),
            "avx_vnni" => is_x86_feature_detected!("avxvnni"),
            // AMX: CPUID leaf 7, EDX bits 22 (bf16), 24 (tile), 25 (int8).
            "amx_bf16" => cpuid7_edx() >> 22 & 1 == 1,
            "amx_tile" => cpuid7_edx() >> 24 & 1 == 1,
            "amx_int8" => cpuid7_edx() >> 25 & 1 == 1,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn cpuid7_edx() -> u32 {
    // CPUID leaf 7 reads as zeros where the CPU does not define it.
    std::arch::x86_64::__cpuid_count(7, 0).edx
}

/// The kernels the products of each dtype run on. Only [`Kernels::best`] and
/// [`Kernels::forced`] make one, so its kernels are always ones this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    bf16: Bf16Kernel,
    q8_0: Q8Kernel,
}

impl Kernels {
    pub fn bf16(self) -> Bf16Kernel {
        self.bf16
    }

    pub fn q8_0(self) -> Q8Kernel {
        self.q8_0
    }

    /// The best this CPU has.
    pub fn best() -> Self {
        Kernels {
            bf16: Bf16Kernel::best(),
            q8_0: Q8Kernel::best(),
        }
    }

    /// The kernels with `name` forced (as `GPT2_KERNEL=name` asks): an error for a name no dtype
    /// has, or a kernel this CPU lacks, naming the missing features and what would be used.
    pub fn forced(name: &str) -> Result<Self> {
        let best = Kernels::best();
        let bf16 = Bf16Kernel::ALL.iter().copied().find(|k| k.name() == name);
        let q8_0 = Q8Kernel::ALL.iter().copied().find(|k| k.name() == name);
        let lacking = bf16
            .and_then(Kernel::unavailable)
            .or_else(|| q8_0.and_then(Kernel::unavailable));
        match (bf16, q8_0, lacking) {
            (None, None, _) => Err(Error::Input(format!(
                "{KERNEL_ENV}={name}: no such kernel (bf16: {}; q8_0: {})",
                names(Bf16Kernel::ALL),
                names(Q8Kernel::ALL)
            ))),
            (_, _, Some(why)) => Err(Error::Input(format!(
                "{KERNEL_ENV}={name}: {why}; without {KERNEL_ENV} the kernels are {} for bf16 \
                 and {} for q8_0",
                best.bf16.name(),
                best.q8_0.name()
            ))),
            (bf16, q8_0, None) => Ok(Kernels {
                bf16: bf16.unwrap_or(best.bf16),
                q8_0: q8_0.unwrap_or(best.q8_0),
            }),
        }
    }

    /// The kernels `GPT2_KERNEL` asks for, or the best.
    pub fn from_env() -> Result<Self> {
        match std::env::var(KERNEL_ENV) {
            Ok(name) if !name.is_empty() => Kernels::forced(&name),
            _ => Ok(Kernels::best()),
        }
    }
}

/// The names of `kernels`, comma-separated.
pub fn names<K: Kernel>(kernels: &[K]) -> String {
    kernels.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_a_kernel_picks_it_or_says_what_is_missing() {
        assert_eq!(
            Kernels::forced("scalar").unwrap(),
            Kernels {
                bf16: Bf16Kernel::Scalar,
                q8_0: Q8Kernel::Scalar
            }
        );
        let err = Kernels::forced("avx9000").unwrap_err().to_string();
        assert!(err.contains("no such kernel") && err.contains("avx512vnni"), "{err}");
        for &k in Bf16Kernel::ALL {
            match Kernels::forced(k.name()) {
                Ok(kernels) => assert!(k.available() && kernels.bf16 == k),
                Err(e) => assert!(!k.available() && e.to_string().contains("lacks"), "{e}"),
            }
        }
        for &k in Q8Kernel::ALL {
            match Kernels::forced(k.name()) {
                Ok(kernels) => assert!(k.available() && kernels.q8_0 == k),
                Err(e) => assert!(!k.available() && e.to_string().contains("lacks"), "{e}"),
            }
        }
    }
}

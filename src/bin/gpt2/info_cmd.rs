//! `gpt2 info`: the CPU features found, and the kernel each kind of product runs on here.

use anyhow::Result;
use clap::Args;
use gpt2::memory::HUGE_MIN_BYTES;
use gpt2::ops::lowp::kernel::{has_feature, Kernel, KERNEL_ENV, REPORTED_FEATURES};
use gpt2::ops::lowp::{prompt_path, Bf16Kernel, Kernels, Q8Kernel, WeightDtype};
use gpt2::ops::matmul::{prompt_f32_path, Precision};
use gpt2::ops::matmul_bf16::TileKernel;
use gpt2::ops::matvec::{dot_kernel_name, SMALL_M, SMALL_M_T};
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    /// Print one JSON object: {"cpu", "features", "threads", "kernel_env", "f32", "bf16", "q8_0",
    /// "prompts", "training_bf16", "decoding_attention", "memory_pages"}.
    #[arg(long)]
    json: bool,
}

/// Each kernel of a dtype: its name, whether it is the one used, and what it lacks here.
fn kernels<K: Kernel + PartialEq>(used: Option<K>) -> Vec<serde_json::Value> {
    K::ALL
        .iter()
        .map(|&k| {
            let mut missing: Vec<&str> = k.requires().iter().copied().filter(|f| !has_feature(f)).collect();
            if missing.is_empty() && !k.available() {
                missing.push("Linux's leave to use the AMX tiles (arch_prctl refused)");
            }
            json!({"name": k.name(), "used": Some(k) == used, "missing": missing})
        })
        .collect()
}

/// The model name /proc/cpuinfo gives, where there is one.
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let chosen = Kernels::from_env();
    let features: serde_json::Map<String, serde_json::Value> = REPORTED_FEATURES
        .iter()
        .map(|&f| (f.to_string(), has_feature(f).into()))
        .collect();
    let env = std::env::var(KERNEL_ENV).ok().filter(|v| !v.is_empty());
    let prompt = prompt_f32_path();
    // Rows below the prompt kernel's first go to the decoding kernels.
    let decode_rows = prompt.as_ref().map_or(SMALL_M, |(_, _, rows)| rows.start() - 1);
    let decoding = format!(
        "for decoding (up to {decode_rows} rows, the LM head up to {SMALL_M_T}) row-streaming kernels compiled for \
         this build's target CPU, the LM head's dot products on {}",
        dot_kernel_name()
    );
    let f32_path = match prompt {
        Some((isa, lanes, rows)) => format!(
            "prompts of {}-{} rows: {isa} panels of {lanes} rows, each weight broadcast from the stored rows; faer's \
             matrix product for longer prompts and training; {decoding}",
            rows.start(),
            rows.end(),
        ),
        None => format!("faer's matrix product for prompts and training; {decoding}"),
    };
    let (bf16, q8_0) = match &chosen {
        Ok(k) => (
            kernels::<Bf16Kernel>(Some(k.bf16())),
            kernels::<Q8Kernel>(Some(k.q8_0())),
        ),
        Err(_) => (kernels::<Bf16Kernel>(None), kernels::<Q8Kernel>(None)),
    };
    // A prompt's products: on the AVX-512 panel kernels, or in the dot-product tiles.
    let prompts: serde_json::Map<String, serde_json::Value> = [WeightDtype::Bf16, WeightDtype::Q8_0]
        .into_iter()
        .map(|dtype| {
            (
                dtype.name().to_string(),
                prompt_path(dtype, chosen.as_ref().ok().copied()).into(),
            )
        })
        .collect();
    // `gpt2 train --precision bf16`: its products' micro-kernel, or why they run in f32.
    let training_bf16 = match Precision::Bf16.on_this_cpu() {
        (_, Some(note)) => note,
        (_, None) => {
            let how = match TileKernel::best() {
                #[cfg(target_arch = "x86_64")]
                TileKernel::Amx => "tdpbf16ps on AMX tiles, 32 x 32 outputs per micro-tile",
                _ => "vdpbf16ps, 6 x 64 outputs per micro-tile",
            };
            format!(
                "{} ({how}; operands rounded to bf16 as they are packed, f32 sums)",
                TileKernel::best().name()
            )
        }
    };
    // Huge pages for the large buffers: this process's allocator asks, the kernel's setting decides.
    let asked = gpt2::memory::large_buffers_ask_for_huge_pages();
    let pages = match (gpt2::memory::transparent_huge_pages().as_deref(), asked) {
        (Some(mode @ ("always" | "madvise")), true) => format!(
            "buffers of {} MiB and more (weights, KV caches, activations) ask for 2 MiB pages (transparent huge pages: {mode})",
            HUGE_MIN_BYTES >> 20
        ),
        (Some(mode @ ("always" | "madvise")), false) => format!(
            "this program's allocator does not ask for huge pages (gpt2::memory::HugePageAlloc does; transparent \
             huge pages: {mode})"
        ),
        (Some(mode), _) => format!(
            "the kernel's base pages: transparent huge pages are `{mode}` in /sys/kernel/mm/transparent_hugepage/enabled \
             (with `madvise` the large buffers get 2 MiB pages, which decoding reads faster)"
        ),
        (None, _) => "the system's page size (no transparent huge pages)".to_string(),
    };
    // GPT-2's heads are 64 values at every size.
    let decoding_attention = if gpt2::ops::attend_one::reads_in_registers(64) {
        "one query per head on AVX-512, the KV cache read as stored: f16 for bf16 and q8_0 models \
         (widened in registers), f32 for f32 models"
    } else {
        "the tiled attention's products (faer), the KV cache in f32 for every model (a cache in f16 \
         is used only where AVX-512 widens it in registers)"
    };
    let report = json!({
        "cpu": cpu_name(),
        "features": features,
        "threads": rayon::current_num_threads(),
        "kernel_env": env,
        "f32": f32_path,
        "bf16": bf16,
        "q8_0": q8_0,
        "prompts": prompts,
        "training_bf16": training_bf16,
        "decoding_attention": decoding_attention,
        "memory_pages": pages,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("cpu: {}", cpu_name().unwrap_or_else(|| "unknown".into()));
        let flags: Vec<String> = REPORTED_FEATURES
            .iter()
            .map(|&f| format!("{f} {}", if has_feature(f) { "yes" } else { "no" }))
            .collect();
        println!("features: {}", flags.join(", "));
        println!("threads: {}", rayon::current_num_threads());
        println!("f32 weights: {f32_path}");
        for (dtype, list) in [("bf16", &report["bf16"]), ("q8_0", &report["q8_0"])] {
            let described: Vec<String> = list
                .as_array()
                .expect("a list")
                .iter()
                .map(|k| {
                    let name = k["name"].as_str().unwrap_or_default();
                    let missing: Vec<&str> = k["missing"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m.as_str())
                        .collect();
                    match (k["used"].as_bool() == Some(true), missing.is_empty()) {
                        (true, _) => format!("{name} (used)"),
                        (false, true) => format!("{name} (available)"),
                        (false, false) => format!("{name} (lacks {})", missing.join(", ")),
                    }
                })
                .collect();
            println!("{dtype} weights: {}", described.join("; "));
        }
        for (dtype, how) in &prompts {
            println!("{dtype} prompts: {}", how.as_str().unwrap_or_default());
        }
        match (&env, &chosen) {
            (_, Err(e)) => println!("{KERNEL_ENV}: {e}"),
            (Some(v), Ok(_)) => println!("{KERNEL_ENV}={v}: forced"),
            (None, Ok(_)) => println!("{KERNEL_ENV}: unset (the best kernel this CPU has; set it to force one)"),
        }
        println!("train --precision bf16: {training_bf16}");
        let granted = Bf16Kernel::ALL.iter().any(|k| k.name() == "amx" && k.available())
            || Q8Kernel::ALL.iter().any(|k| k.name() == "amx" && k.available());
        let amx = match (has_feature("amx_tile"), granted) {
            (false, _) => "not on this CPU",
            (true, true) => "tiles granted by Linux: prompts (bf16, q8_0) and bf16 training can use them",
            (true, false) => "on this CPU, but unused (Linux refused the tiles, or AVX-512 is missing)",
        };
        println!("AMX: {amx}");
        println!("decoding attention: {decoding_attention}");
        println!("memory pages: {pages}");
    }
    Ok(())
}

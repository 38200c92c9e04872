//! Classifier throughput benchmark: VGG-16 (torchvision widths, no batch norm, GAP-linear head;
//! or `--arch resnet18|resnet50|efficientnet-lite0`) forward (inference) and one AdamW training step, batch 8, at
//! 128² and 224², on the CPU or (`--device cuda`, wsss built with `--features cuda`) a GPU.
//!
//! Run: `cargo run --release --example bench_classify [-- --reps N] [--arch A] [--device D]`.
//! Each workload runs in a child process so its peak resident memory (VmHWM) is its own. Prints
//! a Markdown table with the median and the spread over repetitions, images/s, peak host
//! memory and, when `python3` can import `torch`, PyTorch's median on the same device
//! (`bench/torch_reference.py`) with the ratio wsss / PyTorch (`--no-torch` to skip). This is a
//! benchmark, not a test: nothing asserts on time.

mod common;

use std::process::Command;

use candle_core::{Device, Tensor};
use wsss::config::Arch;
use wsss::config::Optimizer as OptKind;
use wsss::model::{init, Backbone, BackboneSpec};
use wsss::train::{losses, optim::Optimizer};

const BATCH: usize = 8;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn arch_of(s: &str) -> Arch {
    match s {
        "resnet18" => Arch::Resnet18,
        "resnet50" => Arch::Resnet50,
        "efficientnet-lite0" => Arch::EfficientnetLite0,
        _ => Arch::Vgg16,
    }
}

fn one(arch: Arch, size: usize, train: bool, reps: usize, dev: &Device) -> candle_core::Result<()> {
    let dev = dev.clone();
    let vm = candle_nn::VarMap::new();
    let model = Backbone::new(
        BackboneSpec {
            arch,
            batch_norm: false,
            width: 1.0,
            output_stride_8: false,
        },
        2,
        init::var_builder(&vm, 0, &dev),
    )?;
    let vars: Vec<_> = vm
        .data()
        .lock()
        .map(|d| d.clone().into_iter().collect())
        .unwrap_or_default();
    let mut opt = Optimizer::new(OptKind::Adamw, vars, 1e-4, 1e-4, 0.9)?;
    let x = Tensor::randn(0f32, 1.0, (BATCH, 3, size, size), &dev)?;
    let y = Tensor::from_vec(
        (0..BATCH)
            .flat_map(|i| if i % 2 == 0 { [1f32, 0.0] } else { [0.0, 1.0] })
            .collect::<Vec<_>>(),
        (BATCH, 2),
        &dev,
    )?;
    let (med, lo, hi) = common::time(&dev, reps, || {
        if train {
            let (_, logits) = model.forward_t(&x, true, None)?;
            let loss = losses::cross_entropy(&logits, &y)?;
            let g = loss.backward()?;
            opt.step(&g)?;
        } else {
            let (_, logits) = model.forward_t(&x, false, None)?;
            logits.to_vec2::<f32>()?;
        }
        Ok(())
    })?;
    println!(
        "{size} {} {med:.4} {:.4} {:.4} {:.1}",
        if train { "train" } else { "forward" },
        lo,
        hi,
        peak_rss_mib()
    );
    Ok(())
}

fn main() -> candle_core::Result<()> {
    wsss::util::alloc::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let (dev, dev_name) = common::device(&args)?;
    if args.get(1).map(String::as_str) == Some("--one") {
        let size = args[2].parse().unwrap_or(128);
        let reps = args[4].parse().unwrap_or(3);
        return one(arch_of(&args[5]), size, args[3] == "train", reps, &dev);
    }
    let arch = common::flag(&args, "--arch").unwrap_or_else(|| "vgg16".into());
    let reps = common::flag(&args, "--reps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize);
    let (torch, about) = if arch == "vgg16" || arch == "efficientnet-lite0" {
        common::torch_reference(&args, "classify", &dev_name, reps, &["--arch", &arch])
    } else {
        Default::default()
    };
    let exe = std::env::current_exe()?;
    println!(
        "{arch} (width 1.0, GAP-linear head), batch {BATCH}, {dev_name} ({} kernels), {} CPU threads, {reps} timed repetitions after one warm-up",
        common::kernels(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{about}\n");
    println!("| workload | median s/batch | min–max s | images/s | peak host RSS MiB | PyTorch s | wsss / PyTorch | PyTorch peak RSS MiB (running max) |");
    println!("|---|---|---|---|---|---|---|---|");
    for size in [128, 224] {
        for mode in ["forward", "train"] {
            let out = Command::new(&exe)
                .args(["--one", &size.to_string(), mode, &reps.to_string(), &arch])
                .args(["--device", &dev_name])
                .output()?;
            let line = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                println!(
                    "| {mode} {size}² | failed: {} |",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                continue;
            }
            let med: f64 = f[2].parse().unwrap_or(f64::NAN);
            println!(
                "| {} {size}² | {med:.3} | {}–{} | {:.2} | {} | {} | {} |",
                if mode == "train" {
                    "train step"
                } else {
                    "forward"
                },
                f[3],
                f[4],
                BATCH as f64 / med,
                f[5],
                common::ratio_cells(med, torch.get(&format!("{mode} {size}"))),
                torch
                    .get(&format!("{mode} {size} peak"))
                    .map_or("–".into(), |p| format!("{p:.0}"))
            );
        }
    }
    Ok(())
}

//! Classifier throughput benchmark: VGG-16 (torchvision widths, no batch norm, GAP-linear head;
//! or `--arch resnet18|resnet50`) forward (inference) and one AdamW training step, batch 8, at
//! 128² and 224², on the CPU.
//!
//! Run: `cargo run --example bench_classify [-- --reps N] [--arch A]`. Each workload runs in a child
//! process so its peak resident memory (VmHWM) is its own. Prints a Markdown table with the
//! median and the spread over repetitions, images/s and peak memory. This is a benchmark, not
//! a test: nothing asserts on time.

use std::process::Command;
use std::time::Instant;

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
        _ => Arch::Vgg16,
    }
}

fn one(arch: Arch, size: usize, train: bool, reps: usize) -> candle_core::Result<()> {
    let dev = Device::Cpu;
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
    let mut times = Vec::new();
    for r in 0..=reps {
        let t = Instant::now();
        if train {
            let (_, logits) = model.forward_t(&x, true, None)?;
            let loss = losses::cross_entropy(&logits, &y)?;
            let g = loss.backward()?;
            opt.step(&g)?;
        } else {
            let (_, logits) = model.forward_t(&x, false, None)?;
            logits.to_vec2::<f32>()?;
        }
        if r > 0 {
            times.push(t.elapsed().as_secs_f64()); // the first run is warm-up
        }
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{size} {} {med:.4} {:.4} {:.4} {:.1}",
        if train { "train" } else { "forward" },
        times[0],
        times[times.len() - 1],
        peak_rss_mib()
    );
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        let size = args[2].parse().unwrap_or(128);
        let reps = args[4].parse().unwrap_or(3);
        return one(arch_of(&args[5]), size, args[3] == "train", reps);
    }
    let arch = args
        .iter()
        .position(|a| a == "--arch")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "vgg16".into());
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize);
    let exe = std::env::current_exe()?;
    println!("{arch} (width 1.0, GAP-linear head), batch {BATCH}, CPU, {} threads, {reps} timed repetitions after one warm-up\n", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("| workload | median s/batch | min–max s | images/s | peak RSS MiB |");
    println!("|---|---|---|---|---|");
    for size in [128, 224] {
        for mode in ["forward", "train"] {
            let out = Command::new(&exe)
                .args(["--one", &size.to_string(), mode, &reps.to_string(), &arch])
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
                "| {} {size}² | {med:.3} | {}–{} | {:.2} | {} |",
                if mode == "train" {
                    "train step"
                } else {
                    "forward"
                },
                f[3],
                f[4],
                BATCH as f64 / med,
                f[5]
            );
        }
    }
    Ok(())
}

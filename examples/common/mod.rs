//! What the benchmark examples share: the device flag, synchronised timing, and the PyTorch
//! reference (`bench/torch_reference.py`), run in the same session when `python3` can import
//! `torch`, so the tables print wsss and PyTorch side by side.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::Device;

/// The value after `--name`, if any.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--device cpu|cuda[:N]` (default `cpu`).
pub fn device(args: &[String]) -> candle_core::Result<(Device, String)> {
    let s = flag(args, "--device").unwrap_or_else(|| "cpu".into());
    if let Some(n) = s.strip_prefix("cuda") {
        let n = n.trim_start_matches(':').parse().unwrap_or(0);
        let dev = Device::new_cuda(n)?;
        // PyTorch's default arithmetic, as the reference runs with: TF32 in cuDNN's
        // convolutions, fp32 matrix products.
        let arith = wsss::model::precision::apply(wsss::config::Precision::Auto, &dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        eprintln!("GPU arithmetic: {arith}");
        Ok((dev, format!("cuda:{n}")))
    } else {
        // WSSS_CPU_KERNELS=avx2 measures the AVX2 tile on an AVX-512 machine.
        wsss::util::cpu::select_kernels().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((Device::Cpu, "cpu".into()))
    }
}

/// The CPU kernels' register tile, for the benchmarks' headers.
pub fn kernels() -> &'static str {
    wsss_kernels::sgemm::isa().name()
}

/// Median, min and max seconds of `reps` timed runs after one warm-up; the device is
/// synchronised after each run so GPU work is counted.
pub fn time(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<(f64, f64, f64)> {
    let mut t = Vec::new();
    for r in 0..=reps.max(1) {
        dev.synchronize()?;
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        if r > 0 {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0], t[t.len() - 1]))
}

/// The reference script: `--torch-script PATH`, else `bench/torch_reference.py` under the
/// current directory or the crate root.
fn script(args: &[String]) -> Option<PathBuf> {
    if let Some(p) = flag(args, "--torch-script") {
        return Some(PathBuf::from(p));
    }
    [
        PathBuf::from("bench/torch_reference.py"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/torch_reference.py"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// PyTorch's median seconds per workload name, and a one-line description of the PyTorch
/// run; empty with the reason when PyTorch is not available or `--no-torch` was given.
pub fn torch_reference(
    args: &[String],
    suite: &str,
    device: &str,
    reps: usize,
    extra: &[&str],
) -> (HashMap<String, f64>, String) {
    if args.iter().any(|a| a == "--no-torch") {
        return (
            HashMap::new(),
            "PyTorch reference skipped (--no-torch)".into(),
        );
    }
    let Some(script) = script(args) else {
        return (HashMap::new(), "PyTorch reference not found".into());
    };
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .args([
            "--suite",
            suite,
            "--device",
            device,
            "--reps",
            &reps.to_string(),
        ])
        .args(extra)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("").to_string();
            return (
                HashMap::new(),
                format!("PyTorch reference unavailable: {last}"),
            );
        }
        Err(e) => {
            return (
                HashMap::new(),
                format!("PyTorch reference unavailable: {e}"),
            )
        }
    };
    let mut times = HashMap::new();
    let mut about = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(w), Some(m)) = (v["workload"].as_str(), v["median_s"].as_f64()) {
            times.insert(w.to_string(), m);
            // PyTorch's peak resident memory so far (one process runs every workload, so this
            // is a running maximum), under "<workload> peak".
            if let Some(p) = v["peak_mib"].as_f64() {
                times.insert(format!("{w} peak"), p);
            }
        } else if let Some(t) = v["torch"].as_str() {
            about = format!(
                "PyTorch {t} on {}, {} threads",
                v["device"].as_str().unwrap_or("?"),
                v["threads"]
            );
        }
    }
    (times, about)
}

/// `| PyTorch s | ratio |` cells for a workload.
pub fn ratio_cells(wsss: f64, torch: Option<&f64>) -> String {
    match torch {
        Some(t) => format!("{t:.3} | {:.2}×", wsss / t),
        None => "– | –".into(),
    }
}

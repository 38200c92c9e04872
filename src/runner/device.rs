//! Device selection: `cpu`, `cuda:N` or `auto`, resolved once per run and recorded.

use candle_core::Device;

use crate::config::schema::{parse_device, DeviceSpec};
use crate::error::{Error, Result};

/// Resolve a manifest's `device` string to a candle device and a description for `run.json`.
pub fn resolve(s: &str) -> Result<(Device, String)> {
    match parse_device(s) {
        Some(DeviceSpec::Cpu) => Ok((Device::Cpu, "cpu".into())),
        Some(DeviceSpec::Cuda(n)) => {
            cuda(n).map_err(|e| Error::Usage(format!("device `{s}`: {e}")))
        }
        Some(DeviceSpec::Auto) => {
            Ok(cuda(0).unwrap_or_else(|_| (Device::Cpu, "cpu (auto: no CUDA device)".into())))
        }
        None => Err(Error::Usage(format!(
            "device `{s}`: expected `cpu`, `auto` or `cuda:N`"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> std::result::Result<(Device, String), String> {
    Device::new_cuda(n)
        .map(|d| (d, format!("cuda:{n}")))
        .map_err(|e| format!("CUDA device {n} unavailable: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_n: usize) -> std::result::Result<(Device, String), String> {
    Err("this wsss was built without the `cuda` feature (cargo build --features cuda)".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_and_auto_always_resolve() {
        assert_eq!(super::resolve("cpu").unwrap().1, "cpu");
        assert!(super::resolve("auto").is_ok());
        assert!(super::resolve("tpu").is_err());
    }
}

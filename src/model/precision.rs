//! The GPU's arithmetic (`precision`), set once per run before any model is built: TF32 in
//! cuDNN's convolutions ([`super::cudnn::set_tf32`], feature `cudnn`) and in candle's cuBLAS
//! matrix products (`candle_core::cuda::set_gemm_reduced_precision_f32`). The CPU kernels
//! compute in fp32 whatever is set.
//!
//! The settings are process-wide (as PyTorch's `allow_tf32` flags are); a process runs its
//! variants one after another, each applying its own.

use candle_core::Device;

use crate::config::Precision;
use crate::error::{Error, Result};

/// Applies `p` for computations on `dev` and describes what runs, for `run.json`.
///
/// Errors: `tf32` on a CPU device (a manifest with `device = "auto"` on a machine without a
/// GPU) — the run would otherwise claim an arithmetic it does not use.
pub fn apply(p: Precision, dev: &Device) -> Result<String> {
    if dev.is_cpu() {
        return match p {
            Precision::Tf32 => Err(Error::Usage(
                "precision = \"tf32\" needs a CUDA device; this run's device resolved to the CPU, which computes fp32".into(),
            )),
            Precision::Auto | Precision::Fp32 => Ok("fp32 (CPU)".into()),
        };
    }
    let (conv_tf32, matmul_tf32) = match p {
        Precision::Auto => (true, false),
        Precision::Fp32 => (false, false),
        Precision::Tf32 => (true, true),
    };
    set_gpu(conv_tf32, matmul_tf32);
    let name = |on: bool| if on { "TF32" } else { "fp32" };
    Ok(if cfg!(feature = "cudnn") {
        format!(
            "{} convolutions (cuDNN; depthwise ones through candle's cuDNN call, its default math: \
             TF32 where the GPU has it), {} matrix products",
            name(conv_tf32),
            name(matmul_tf32)
        )
    } else {
        // candle's convolutions without cuDNN are cuBLAS products: the matmul flag rules them
        format!(
            "{} convolutions (candle's im2col + cuBLAS) and matrix products",
            name(matmul_tf32)
        )
    })
}

#[cfg(feature = "cuda")]
fn set_gpu(conv_tf32: bool, matmul_tf32: bool) {
    #[cfg(feature = "cudnn")]
    super::cudnn::set_tf32(conv_tf32);
    let _ = conv_tf32;
    candle_core::cuda::set_gemm_reduced_precision_f32(matmul_tf32);
}

#[cfg(not(feature = "cuda"))]
fn set_gpu(_conv_tf32: bool, _matmul_tf32: bool) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_computes_fp32_and_refuses_tf32() {
        assert_eq!(apply(Precision::Auto, &Device::Cpu).unwrap(), "fp32 (CPU)");
        assert_eq!(apply(Precision::Fp32, &Device::Cpu).unwrap(), "fp32 (CPU)");
        let e = apply(Precision::Tf32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a CUDA device"), "{e}");
    }
}

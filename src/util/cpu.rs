//! Which register tile the CPU kernels use: the fastest this CPU runs, or the one named by the
//! `WSSS_CPU_KERNELS` environment variable (`avx512`, `avx2` or `portable`) — to compare the
//! paths on one machine or to rule one out. Read once, before any computation; recorded in
//! every run's `run.json` (`versions.cpu_kernels`).
//!
//! The AVX-512 and AVX2 tiles give the same bits; the portable tile differs in the last bits
//! (separate multiply and add), so a run forced onto it is not bit-identical to the others.

use wsss_kernels::sgemm::{self, Isa};

use crate::error::{Error, Result};

/// The environment variable naming the tile.
pub const ENV: &str = "WSSS_CPU_KERNELS";

/// Applies `WSSS_CPU_KERNELS` if set, and returns the tile in use.
///
/// # Errors
/// [`Error::Usage`] (exit code 2): the value names no tile, or one this CPU cannot run.
pub fn select_kernels() -> Result<Isa> {
    match std::env::var(ENV) {
        Ok(v) if !v.trim().is_empty() => select(v.trim()),
        _ => Ok(sgemm::isa()),
    }
}

fn select(v: &str) -> Result<Isa> {
    let names = || {
        Isa::ALL
            .iter()
            .map(|i| format!("`{}`", i.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let isa = Isa::parse(&v.to_ascii_lowercase())
        .ok_or_else(|| Error::Usage(format!("{ENV}={v}: expected one of {}", names())))?;
    sgemm::set_isa(isa).map_err(|e| {
        let here: Vec<&str> = Isa::ALL
            .iter()
            .filter(|i| i.supported())
            .map(|i| i.name())
            .collect();
        Error::Usage(format!("{ENV}={v}: {e} (it can run: {})", here.join(", ")))
    })?;
    Ok(isa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_with_the_choices() {
        let e = select("avx1024").unwrap_err().to_string();
        assert!(e.contains("WSSS_CPU_KERNELS=avx1024"), "{e}");
        assert!(e.contains("`avx512`, `avx2`, `portable`"), "{e}");
    }

    #[test]
    fn the_best_supported_tile_is_accepted() {
        // Setting the tile the process already uses changes nothing for the other tests.
        let best = sgemm::isa();
        assert_eq!(select(best.name()).unwrap(), best);
        if !Isa::Avx512.supported() {
            let e = select("AVX512").unwrap_err().to_string();
            assert!(e.contains("cannot run"), "{e}");
        }
    }
}

//! Which variants of a manifest one `wsss run` process runs: all of them, the ones named by
//! `--variant ID`, or shard `i/n` (`--shard`: every n-th variant in manifest order starting at
//! the i-th, 1-based, as a SLURM array task or a local job runs them). Processes that run
//! different selections of one experiment at once are safe: each variant's run directory has
//! its own lock, shared stages are computed once under the cache's per-entry locks, and the
//! experiment-level files are rebuilt from every run directory by whoever finishes last (see
//! [`super::Runner::run`]).

use std::str::FromStr;

use crate::config::Manifest;
use crate::error::{Error, Result};

/// A selection of variants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// Every variant.
    #[default]
    All,
    /// The variants with these ids (each must exist).
    Ids(Vec<String>),
    /// Shard `index` of `count` (1-based): variants `index − 1`, `index − 1 + count`, ….
    Shard {
        /// 1-based shard number.
        index: usize,
        /// Number of shards.
        count: usize,
    },
}

/// `i/n` with `1 ≤ i ≤ n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based shard number.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: expected i/n with 1 ≤ i ≤ n, e.g. 2/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Selection {
    /// The selection of `--variant` ids and `--shard` (at most one of the two is given).
    pub fn of(ids: &[String], shard: Option<Shard>) -> Self {
        match (ids.is_empty(), shard) {
            (false, _) => Selection::Ids(ids.to_vec()),
            (true, Some(s)) => Selection::Shard {
                index: s.index,
                count: s.count,
            },
            (true, None) => Selection::All,
        }
    }

    /// Indices of the selected variants of `m`, in manifest order. Errors: an id that names
    /// no variant (with the ids that exist).
    pub fn pick(&self, m: &Manifest) -> Result<Vec<usize>> {
        let n = m.variants.len();
        match self {
            Selection::All => Ok((0..n).collect()),
            Selection::Shard { index, count } => Ok(shard_indices(n, *index, *count)),
            Selection::Ids(ids) => {
                let mut out = Vec::new();
                let mut unknown = Vec::new();
                for id in ids {
                    match m.variants.iter().position(|v| &v.id == id) {
                        Some(i) if !out.contains(&i) => out.push(i),
                        Some(_) => {}
                        None => unknown.push(format!("`{id}`")),
                    }
                }
                if !unknown.is_empty() {
                    let known: Vec<String> =
                        m.variants.iter().map(|v| format!("`{}`", v.id)).collect();
                    return Err(Error::Usage(format!(
                        "--variant {}: no such variant in experiment `{}` (its variants: {})",
                        unknown.join(", "),
                        m.name(),
                        known.join(", ")
                    )));
                }
                out.sort_unstable();
                Ok(out)
            }
        }
    }

    /// Whether this is every variant.
    pub fn is_all(&self) -> bool {
        *self == Selection::All
    }
}

/// Variant indices of shard `index` (1-based) of `count` over `n` variants.
fn shard_indices(n: usize, index: usize, count: usize) -> Vec<usize> {
    (index.saturating_sub(1)..n).step_by(count.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "2", "a/b", "2/0", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // Shards of 7 variants into 3: disjoint, covering, in order.
        assert_eq!(shard_indices(7, 1, 3), [0, 3, 6]);
        assert_eq!(shard_indices(7, 2, 3), [1, 4]);
        assert_eq!(shard_indices(7, 3, 3), [2, 5]);
        // More shards than variants: the extra ones are empty.
        assert!(shard_indices(2, 3, 4).is_empty());
    }
}

//! The stage cache: `<work_dir>/.cache/<stage>/<key>/` holds one stage output, complete or
//! absent. Outputs are built in a temp folder beside it and renamed into place, so a crash
//! never leaves a half-written entry; a per-key lock stops two processes computing the same
//! entry at once (the second waits, then finds it done).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::util::fs::{mkdirs, Lock};

/// The cache under a work directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// How a stage entry came to be available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Found in the cache; nothing ran.
    Cached,
    /// Computed now.
    Ran,
}

impl Cache {
    /// The cache of a work directory.
    pub fn new(work_dir: &Path) -> Self {
        Self {
            root: work_dir.join(".cache"),
        }
    }

    /// Where an entry lives.
    pub fn entry(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    /// Whether an entry is complete.
    pub fn has(&self, stage: &str, key: &str) -> bool {
        self.entry(stage, key).is_dir()
    }

    /// Return the entry, computing it with `compute` (into an empty folder) if it is absent or
    /// if `force` is set. `before_commit` runs after `compute` and before the entry is
    /// published (a hook for crash tests).
    pub fn get_or_compute(
        &self,
        stage: &str,
        key: &str,
        force: bool,
        compute: impl FnOnce(&Path, &Path) -> Result<()>,
        before_commit: impl FnOnce(),
    ) -> Result<(PathBuf, Outcome)> {
        let dir = self.root.join(stage);
        mkdirs(&dir)?;
        let entry = dir.join(key);
        if !force && entry.is_dir() {
            return Ok((entry, Outcome::Cached));
        }
        let _lock = Lock::acquire(&dir.join(format!("{key}.lock")))?;
        if !force && entry.is_dir() {
            return Ok((entry, Outcome::Cached));
        }
        // Holding the key's lock, no one else is writing it: partial folders are leftovers of
        // a process that died.
        let prefix = format!(".partial-{key}-");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    tracing::debug!("removing leftover {}", e.path().display());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        let scratch = dir.join(format!(".work-{key}"));
        mkdirs(&scratch)?;
        compute(tmp.path(), &scratch)?;
        before_commit();
        let tmp = tmp.keep();
        if entry.exists() {
            let old = dir.join(format!(".replaced-{key}-{}", std::process::id()));
            std::fs::rename(&entry, &old).map_err(|e| Error::io(&entry, e))?;
            std::fs::rename(&tmp, &entry).map_err(|e| Error::io(&entry, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, &entry).map_err(|e| Error::io(&entry, e))?;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok((entry, Outcome::Ran))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_once_then_cached_and_failures_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        let (p, o) = c
            .get_or_compute(
                "s",
                "k",
                false,
                |out, _| crate::util::fs::atomic_write(&out.join("x"), b"1"),
                || {},
            )
            .unwrap();
        assert_eq!(o, Outcome::Ran);
        assert_eq!(std::fs::read(p.join("x")).unwrap(), b"1");
        let (_, o) = c
            .get_or_compute("s", "k", false, |_, _| panic!("must not run"), || {})
            .unwrap();
        assert_eq!(o, Outcome::Cached);
        let r = c.get_or_compute(
            "s",
            "k2",
            false,
            |_, _| Err(Error::stage("s", "boom")),
            || {},
        );
        assert!(r.is_err());
        assert!(!c.has("s", "k2"));
        let (_, o) = c
            .get_or_compute(
                "s",
                "k",
                true,
                |out, _| crate::util::fs::atomic_write(&out.join("x"), b"2"),
                || {},
            )
            .unwrap();
        assert_eq!(o, Outcome::Ran);
        assert_eq!(std::fs::read(c.entry("s", "k").join("x")).unwrap(), b"2");
    }
}

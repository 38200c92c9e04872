//! Atomic writes and advisory file locks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, then rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes))
}

/// Write a file atomically through a closure that fills the temp file.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    // temp files are private (0600) by default; the result should be like any written file
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    fill(tmp.as_file_mut()).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Serialise `value` as pretty JSON and write it atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let s =
        serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    atomic_write(path, &s)
}

/// Write an image atomically in the format its extension names.
pub fn write_png(path: &Path, img: &image::DynamicImage) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    atomic_write(path, buf.get_ref())
}

/// Copy files from a (finished, immutable) cache entry into a run directory, atomically each.
pub fn publish_files(entry: &Path, run_dir: &Path, names: &[&str]) -> Result<()> {
    for f in names {
        let src = entry.join(f);
        let bytes = fs::read(&src).map_err(|e| Error::io(&src, e))?;
        atomic_write(&run_dir.join(f), &bytes)?;
    }
    Ok(())
}

/// Publish a folder of a cache entry into a run directory as hard links (copies where the
/// file system cannot link): built beside the target, then swapped in, so a reader never
/// sees a half-filled folder. Cache entries are never modified, so sharing inodes is safe.
pub fn link_dir(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("linking");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    link_tree(src, &tmp)?;
    if dst.exists() {
        fs::remove_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    }
    fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))
}

/// Hard-link (or copy) every file below `src` into `dst`, sub-folders included.
fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    mkdirs(dst)?;
    for e in fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let e = e.map_err(|e| Error::io(src, e))?;
        let to = dst.join(e.file_name());
        if e.file_type()
            .map_err(|err| Error::io(e.path(), err))?
            .is_dir()
        {
            link_tree(&e.path(), &to)?;
        } else if fs::hard_link(e.path(), &to).is_err() {
            fs::copy(e.path(), &to).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Create a directory and its parents, naming the path on failure.
pub fn mkdirs(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// An exclusive advisory lock on a file, released on drop (and by the OS if the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Take the lock at `path`, waiting for another `wsss` process that holds it.
    pub fn acquire(path: &Path) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            mkdirs(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    "waiting for another wsss process holding {}",
                    path.display()
                );
                file.lock().map_err(|e| Error::io(path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
        Ok(Lock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether some process holds the lock at `path` now (false when the file does not
    /// exist). Does not wait.
    pub fn held(path: &Path) -> bool {
        let Ok(file) = OpenOptions::new().write(true).open(path) else {
            return false;
        };
        matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_as_held() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        assert!(!Lock::held(&p));
        let l = Lock::acquire(&p).unwrap();
        assert!(Lock::held(&p));
        drop(l);
        assert!(!Lock::held(&p));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b.txt")]);
    }

    #[test]
    fn lock_is_exclusive_within_process() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let _a = Lock::acquire(&p).unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        assert!(matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)));
    }
}

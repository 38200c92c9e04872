//! SIGINT (Ctrl-C) and SIGTERM (what SLURM sends on preemption, what `kill` sends) end a run
//! cleanly: the write in progress finishes, the training loops stop at their next safe point
//! (between steps, after a committed checkpoint), the run directory is marked `interrupted`,
//! and the process exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as
//! shells and batch systems expect. Rerunning the same command resumes from the last committed
//! checkpoint. A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

struct Flags {
    /// The number of the first signal received (0: none).
    signal: Arc<AtomicUsize>,
    /// Set by the first signal: a second one then exits at once.
    armed: Arc<AtomicBool>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Handle SIGINT and SIGTERM as the module docs say (idempotent). Until this is called the
/// signals keep their default action.
pub fn install() -> std::io::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags {
        signal: Arc::new(AtomicUsize::new(0)),
        armed: Arc::new(AtomicBool::new(false)),
    };
    #[cfg(unix)]
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional exit sees the flag as it was before this signal.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flags.armed.clone())?;
        signal_hook::flag::register(sig, flags.armed.clone())?;
        signal_hook::flag::register_usize(sig, flags.signal.clone(), sig as usize)?;
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    let s = FLAGS.get()?.signal.load(Ordering::SeqCst);
    (s != 0).then_some(s as i32)
}

/// Fail with [`Error::Interrupted`] once a signal has arrived; call it at safe points.
pub fn check() -> Result<()> {
    match received() {
        Some(signal) => Err(Error::Interrupted { signal }),
        None => Ok(()),
    }
}

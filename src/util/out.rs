//! Standard output that a closed pipe cannot break.
//!
//! `wsss plan M.toml | head -1` closes wsss's standard output after one line; Rust's `print!`
//! then panics ("failed printing to stdout: Broken pipe", exit 101), and in `wsss run … | head`
//! that panic came after the stages and before the report. Every line the commands print goes
//! through [`write`] instead: once the reader is gone, output is dropped quietly and the command
//! goes on to finish what matters (tables, run records, the report) and exits with its own
//! code, as ripgrep and the coreutils do.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Write formatted text to standard output; a closed pipe (or any other write error) turns
/// all further output into a no-op.
pub fn write(args: std::fmt::Arguments) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if o.write_fmt(args).and_then(|()| o.flush()).is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether standard output was closed by its reader.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `print!` that never panics (see the module docs).
macro_rules! out {
    ($($t:tt)*) => { $crate::util::out::write(format_args!($($t)*)) };
}

/// `println!` that never panics (see the module docs).
macro_rules! outln {
    () => { $crate::util::out::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::util::out::write(format_args!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {out, outln};

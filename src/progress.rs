//! Progress bars for long work (hidden when stderr is not a terminal, e.g. in CI).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps with a message.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} ({eta})") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(msg.to_string());
    b
}

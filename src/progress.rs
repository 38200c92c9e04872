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

/// Progress through the steps of one training epoch, so a long epoch shows signs of life: a
/// bar with images/s and ETA on a terminal; elsewhere (a batch job's log) an `info` line at
/// most every `WSSS_PROGRESS_SECS` seconds (default 30) with the step, images/s and ETA.
pub struct Steps {
    bar: Option<ProgressBar>,
    label: String,
    total: usize,
    done: usize,
    images: usize,
    start: std::time::Instant,
    last: std::time::Instant,
    every: std::time::Duration,
}

impl Steps {
    /// `total` steps of work named `label` (e.g. `classify epoch 3/20`).
    pub fn new(label: String, total: usize) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>24} [{bar:30}] {pos}/{len} steps, {per_sec} ({eta})",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.clone());
            b
        });
        let every = match std::env::var("WSSS_PROGRESS_SECS") {
            Err(_) => 30.0,
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => s,
                _ => {
                    tracing::warn!(
                        "WSSS_PROGRESS_SECS = `{v}` is not a number of seconds ≥ 0; using 30"
                    );
                    30.0
                }
            },
        };
        let now = std::time::Instant::now();
        Self {
            bar,
            label,
            total,
            done: 0,
            images: 0,
            start: now,
            last: now,
            every: std::time::Duration::from_secs_f64(every),
        }
    }

    /// One step of `images` examples done.
    pub fn step(&mut self, images: usize) {
        self.done += 1;
        self.images += images;
        if let Some(b) = &self.bar {
            b.inc(1);
            return;
        }
        if self.last.elapsed() >= self.every && self.done < self.total {
            self.last = std::time::Instant::now();
            tracing::info!("{}", self.line());
        }
    }

    /// `label: step k/n, x images/s, ETA t`.
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let eta = secs / self.done.max(1) as f64 * (self.total.saturating_sub(self.done)) as f64;
        format!(
            "{}: step {}/{}, {:.1} images/s, ETA {:.0} s",
            self.label,
            self.done,
            self.total,
            self.images as f64 / secs,
            eta
        )
    }

    /// Remove the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

//! Progress of a long download on stderr: a bar with the rate and the
//! time left on a terminal (indicatif), a plain line every few seconds
//! otherwise, nothing with `--json`.

use std::time::{Duration, Instant};

use backmesh_api::human_bytes as human;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// A bar with the rate and the time left when the total is known, else a
/// spinner with the rate and the time so far.
fn style(known: bool) -> ProgressStyle {
    if known {
        ProgressStyle::with_template("  {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    } else {
        ProgressStyle::with_template("  {spinner} {msg} {bytes} {binary_bytes_per_sec}, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }
}

pub(crate) struct Meter {
    bar: Option<ProgressBar>,
    /// Plain lines (stderr is not a terminal), and when the last was written.
    plain: Option<Instant>,
    what: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
}

impl Meter {
    /// A meter of `what` (`fetching …`), of `total` bytes when known.
    pub(crate) fn new(what: String, total: Option<u64>, json: bool) -> Meter {
        let start = Instant::now();
        let mut m = Meter { bar: None, plain: None, what, total, done: 0, start };
        if json {
            return m;
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            m.plain = Some(start);
            return m;
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        bar.set_style(style(total.is_some()));
        bar.set_message(m.what.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        m.bar = Some(bar);
        m
    }

    /// `done` bytes done of `total` (0: not known).
    pub(crate) fn set(&mut self, done: u64, total: u64) {
        if total > 0 && self.total != Some(total) {
            self.total = Some(total);
            if let Some(bar) = &self.bar {
                bar.set_length(total);
                bar.set_style(style(true));
            }
        }
        self.add(done.saturating_sub(self.done));
    }

    /// `n` more bytes done.
    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(last) = self.plain.filter(|l| l.elapsed() >= PLAIN_EVERY) {
            let _ = last;
            self.plain = Some(Instant::now());
            eprintln!("{}", self.line());
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        match self.total {
            Some(t) if rate > 0.0 => format!(
                "  {}: {} of {} ({}/s, {:.0} s left)",
                self.what,
                human(self.done),
                human(t),
                human(rate as u64),
                t.saturating_sub(self.done) as f64 / rate
            ),
            _ => format!("  {}: {} ({}/s)", self.what, human(self.done), human(rate as u64)),
        }
    }

    /// Done (or given up): the bar goes from the terminal.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

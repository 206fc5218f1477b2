//! A run's progress for the person watching it, and the log lines that share the terminal with it.
//!
//! On a terminal (stderr), a bar `scored/expected accounts` appears once the accounts are listed
//! (before that the total is not known) and goes when the run ends. Log lines written while it is
//! shown go through [`LogWriter`], which clears the bar, writes the line and draws the bar again:
//! the two never overwrite each other. Without a terminal (a pipe, a file, journald) there is no
//! bar and no escape code; a `progress` log line every [`LOG_EVERY`] says the same thing.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the progress is logged when there is no bar.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The bar currently on screen, if any: the one log lines must step around.
#[derive(Clone, Default)]
pub struct BarSlot(Arc<Mutex<Option<(u64, ProgressBar)>>>);

impl BarSlot {
    /// The process's slot: the one [`Progress::new`] shows its bar in and [`LogWriter`] reads.
    pub fn global() -> &'static BarSlot {
        static SLOT: std::sync::OnceLock<BarSlot> = std::sync::OnceLock::new();
        SLOT.get_or_init(BarSlot::default)
    }

    fn active(&self) -> Option<ProgressBar> {
        self.0
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(|(_, b)| b.clone()))
    }

    fn show(&self, id: u64, bar: ProgressBar) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((id, bar));
        }
    }

    fn hide(&self, id: u64) {
        if let Ok(mut slot) = self.0.lock() {
            if slot.as_ref().is_some_and(|(shown, _)| *shown == id) {
                *slot = None;
            }
        }
    }

    /// Runs `write` with the bar (if one is shown) cleared, and draws the bar again after.
    pub fn around<R>(&self, write: impl FnOnce() -> R) -> R {
        match self.active() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

/// A [`tracing_subscriber::fmt::MakeWriter`] for the console: each log line goes to stdout or
/// stderr with the progress bar stepped around ([`BarSlot::around`]).
#[derive(Clone)]
pub struct LogWriter {
    slot: BarSlot,
    stdout: bool,
}

impl LogWriter {
    /// Log lines on stderr (text logs).
    pub fn stderr() -> Self {
        LogWriter {
            slot: BarSlot::global().clone(),
            stdout: false,
        }
    }

    /// Log lines on stdout (JSON logs).
    pub fn stdout() -> Self {
        LogWriter {
            slot: BarSlot::global().clone(),
            stdout: true,
        }
    }
}

/// One log line's writer (the fmt layer writes each event with one `write_all`).
pub struct LineWriter<'a> {
    of: &'a LogWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.of.slot.around(|| {
            if self.of.stdout {
                std::io::stdout().lock().write_all(buf)
            } else {
                std::io::stderr().lock().write_all(buf)
            }
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.of.stdout {
            std::io::stdout().flush()
        } else {
            std::io::stderr().flush()
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { of: self }
    }
}

/// The progress of one run: a bar on a terminal, a log line every [`LOG_EVERY`] elsewhere.
/// Cheap to clone; the bar goes when [`Progress::finish`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    slot: BarSlot,
    /// The bar, on a terminal only.
    bar: Option<ProgressBar>,
    /// Where the bar is drawn once the total is known (taken when it is shown).
    target: Mutex<Option<ProgressDrawTarget>>,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// The progress of the run named `label` (`run 2026-11-23`): a bar if stderr is a terminal,
    /// shown once the accounts are listed.
    pub fn new(label: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            Self::with_target(label, ProgressDrawTarget::stderr(), BarSlot::global())
        } else {
            Self::log_only()
        }
    }

    /// No bar whatever the terminal (a scheduled service): the progress is logged.
    pub fn log_only() -> Progress {
        Self::build(None, None, BarSlot::global())
    }

    /// A bar drawn on `target` once the total is known, shown in `slot`.
    pub fn with_target(label: &str, target: ProgressDrawTarget, slot: &BarSlot) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} accounts scored ({percent}%, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_owned());
        Self::build(Some(bar), Some(target), slot)
    }

    fn build(bar: Option<ProgressBar>, target: Option<ProgressDrawTarget>, slot: &BarSlot) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Progress {
            inner: Arc::new(Inner {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                slot: slot.clone(),
                bar,
                target: Mutex::new(target),
                last_log: Mutex::new(Instant::now()),
            }),
        }
    }

    /// True when a bar is on screen.
    pub fn is_shown(&self) -> bool {
        self.inner.bar.is_some() && self.inner.target.lock().is_ok_and(|t| t.is_none())
    }

    /// Takes in what the assembler reports.
    pub fn update(&self, p: &esg_assembler::Progress) {
        let Some(bar) = &self.inner.bar else {
            self.log(p);
            return;
        };
        if let Some(total) = p.expected {
            bar.set_length(total);
            let target = self.inner.target.lock().ok().and_then(|mut t| t.take());
            if let Some(target) = target {
                // The accounts are listed: the bar can say "of how many".
                bar.set_draw_target(target);
                self.inner.slot.show(self.inner.id, bar.clone());
            }
        }
        bar.set_position(p.scored);
        if p.failed > 0 {
            bar.set_message(format!("{} failed", p.failed));
        }
    }

    fn log(&self, p: &esg_assembler::Progress) {
        let Ok(mut last) = self.inner.last_log.lock() else {
            return;
        };
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            tracing::info!(run_id = %p.run_id, scored = p.scored, expected = ?p.expected, failed = p.failed, "progress");
        }
    }

    /// A callback for the runner (`Fn(&Progress)`), feeding this progress.
    pub fn callback(&self) -> impl Fn(&esg_assembler::Progress) + Send + Sync + 'static {
        let this = self.clone();
        move |p| this.update(p)
    }

    /// Removes the bar (the run's report follows on stdout).
    pub fn finish(&self) {
        self.inner.finish();
    }
}

impl Inner {
    fn finish(&self) {
        self.slot.hide(self.id);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;

    /// A terminal that records what is drawn on it, and log lines written between.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        fn push(&self, s: String) -> std::io::Result<()> {
            self.0.lock().expect("screen").push(s);
            Ok(())
        }
        fn events(&self) -> Vec<String> {
            self.0.lock().expect("screen").clone()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.push(format!("<up {n}>"))
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.push(format!("<down {n}>"))
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.push(format!("bar: {s}"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if s.trim().is_empty() {
                return Ok(());
            }
            self.push(format!("bar: {s}"))
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.push("<clear>".into())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn at(scored: u64, expected: Option<u64>) -> esg_assembler::Progress {
        esg_assembler::Progress {
            run_id: "2026-11-23".into(),
            expected,
            scored,
            failed: 0,
        }
    }

    #[test]
    fn the_bar_appears_once_the_accounts_are_listed_and_log_lines_step_around_it() {
        let screen = Screen::default();
        let slot = BarSlot::default();
        let progress = Progress::with_target(
            "run 2026-11-23",
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
            &slot,
        );
        progress.update(&at(0, None));
        assert!(!progress.is_shown() && screen.events().is_empty());
        // A log line before the listing: written as it is.
        slot.around(|| screen.push("log: before".into()))
            .expect("log");

        progress.update(&at(10, Some(100)));
        assert!(progress.is_shown());
        let drawn = screen.events().len();
        slot.around(|| screen.push("log: during".into()))
            .expect("log");
        let events = screen.events()[drawn..].to_vec();
        let log = events
            .iter()
            .position(|e| e == "log: during")
            .expect("log line");
        // The bar is cleared before the line and drawn again after it.
        assert!(events[..log].iter().any(|e| e == "<clear>"), "{events:?}");
        assert!(
            events[log + 1..]
                .iter()
                .any(|e| e.starts_with("bar: ") && e.contains("10/100")),
            "{events:?}"
        );

        progress.finish();
        assert!(slot.active().is_none());
        let after = screen.events().len();
        slot.around(|| screen.push("log: after".into()))
            .expect("log");
        assert_eq!(screen.events()[after..], ["log: after".to_owned()]);
    }

    #[test]
    fn without_a_terminal_there_is_no_bar() {
        let slot = BarSlot::default();
        let progress = Progress::build(None, None, &slot);
        progress.update(&at(5, Some(10)));
        assert!(!progress.is_shown());
        assert!(slot.active().is_none());
        let cb = progress.callback();
        cb(&at(6, Some(10)));
    }

    #[test]
    fn a_dropped_progress_takes_its_bar_away() {
        let slot = BarSlot::default();
        let progress = Progress::with_target(
            "r",
            ProgressDrawTarget::term_like(Box::new(Screen::default())),
            &slot,
        );
        progress.update(&at(1, Some(2)));
        assert!(slot.active().is_some());
        drop(progress);
        assert!(slot.active().is_none());
    }
}

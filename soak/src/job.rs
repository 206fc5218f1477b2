//! The job under test: the real `esg` binary, one `esg run --once --business-date D` process at
//! a time, on a clock of the business day (libfaketime), its log read as it runs.
//!
//! Each process starts at 05:00 America/Chicago of its business date (DST-correct), later
//! processes of the same day at 05:00 plus the time the day has taken so far, so the job's
//! clock never goes back within a day and moves on between days as the calendar does: its
//! deadline, its retention and its audit trail see the days the soak simulates. The monotonic
//! clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`), so timers and timeouts are real.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};

/// Where Debian's `faketime` package puts the library.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// The preloaded library that gives the job the business day's clock.
pub fn libfaketime() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ESG_SOAK_LIBFAKETIME") {
        return Ok(PathBuf::from(path));
    }
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("libfaketime not found: install Debian's `faketime` package (ops/test-all.sh does), or set ESG_SOAK_LIBFAKETIME to the library")
}

/// 05:00 America/Chicago on `date`, in UTC.
pub fn day_start(date: NaiveDate) -> DateTime<Utc> {
    use chrono::TimeZone;
    let local = date.and_hms_opt(5, 0, 0).unwrap_or_default();
    chrono_tz::America::Chicago
        .from_local_datetime(&local)
        .earliest()
        .map_or_else(|| local.and_utc(), |t| t.with_timezone(&Utc))
}

/// What the soak sets of the job's configuration.
pub struct Settings<'a> {
    pub sim_url: &'a str,
    pub webhook: &'a str,
    pub out: &'a Path,
    pub state: &'a Path,
    pub delivered: &'a Path,
    pub batch_size: u32,
}

/// The job's configuration: quick retries, small pages and batches (so a day of a few dozen
/// accounts has phases long enough to be killed in), the webhook, a delivery target, retention.
pub fn config(s: &Settings<'_>) -> String {
    format!(
        r#"# Written by the soak (esg-soak): a fast, small configuration of the whole job.
[auth]
token_url = "{url}/oauth2/token"

[accounts]
url = "{url}"
client_id = "esg-accounts"
client_secret = "accounts-secret"
page_size = 8
timeout = "1s"
max_attempts = 3
backoff_base = "10ms"
backoff_cap = "50ms"
max_restarts = 3

[esg_api]
url = "{url}"
client_id = "esg-scorer"
client_secret = "scorer-secret"
rate_limit_per_second = 1000
max_in_flight = {in_flight}
batch_size = {batch}
batch_linger = "5ms"
timeout = "1s"
max_attempts = {attempts}
backoff_base = "10ms"
backoff_cap = "40ms"
max_retry_after = "2s"

[output]
dir = "{out}"

[state]
dir = "{state}"

[log]
level = "info"

[alerts]
retry_backoff = "10ms"

[alerts.webhook]
url = "{webhook}"
timeout = "2s"

[scorer]
flush_interval = "20ms"
flush_max = {flush_max}
shutdown_grace = "1s"

[[delivery]]
kind = "dir"
name = "compliance-share"
path = "{delivered}"

[retention]
files = "14days"
logs = "14days"
audit = "60days"
history = "30days"
departed = "30days"
"#,
        url = s.sim_url,
        webhook = s.webhook,
        out = s.out.display(),
        state = s.state.display(),
        delivered = s.delivered.display(),
        batch = s.batch_size,
        in_flight = MAX_IN_FLIGHT,
        flush_max = FLUSH_MAX,
        attempts = crate::oracle::MAX_ATTEMPTS,
    )
}

/// `[esg_api] max_in_flight` of the soak's job.
pub const MAX_IN_FLIGHT: u32 = 3;
/// `[scorer] flush_max` of the soak's job.
pub const FLUSH_MAX: u32 = 8;
/// `[esg_api] batch_size` of the soak's job on days of batches.
pub const BATCH_SIZE: u32 = 4;

/// Accounts whose score may be lost at a kill: those in flight and those scored but not yet
/// durable on the bus.
pub fn in_flight_window(batch_size: u32) -> u32 {
    MAX_IN_FLIGHT * batch_size + FLUSH_MAX
}

/// What the job's log has said so far.
#[derive(Debug, Default, Clone)]
pub struct Said {
    pub preflight_passed: bool,
    pub planned: bool,
    pub published: bool,
    pub assembled: bool,
    /// When `assembled` was first read.
    pub assembled_at: Option<std::time::Instant>,
    /// Log lines read.
    pub lines: u64,
}

/// One running `esg run --once` process.
pub struct Process {
    child: Child,
    said: Arc<Mutex<Said>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Peak resident set (VmHWM) read so far, KiB.
    pub peak_rss_kib: u64,
}

impl Process {
    /// Starts the job on `date`, its clock at `clock`, its log appended to `log`.
    pub fn start(
        esg: &Path,
        config: &Path,
        date: NaiveDate,
        full: bool,
        clock: DateTime<Utc>,
        faketime: &Path,
        log: &Path,
    ) -> Result<Process> {
        let mut command = Command::new(esg);
        command
            .args(["run", "--once", "--business-date", &date.to_string()])
            .arg("--config")
            .arg(config);
        if full {
            command.arg("--full");
        }
        command
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("LD_PRELOAD", faketime)
            .env("FAKETIME", clock.format("@%Y-%m-%d %H:%M:%S").to_string())
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", esg.display()))?;
        let Some(stderr) = child.stderr.take() else {
            bail!("no stderr of the job");
        };
        let said = Arc::new(Mutex::new(Said::default()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let _ = writeln!(file, "== esg run --once --business-date {date} at {clock}");
        let seen = said.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                let mut s = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.lines += 1;
                s.preflight_passed |= line.contains("pre-flight passed");
                s.planned |= line.contains("run planned");
                s.published |= line.contains("run published");
                if line.contains("run assembled") && !s.assembled {
                    s.assembled = true;
                    s.assembled_at = Some(std::time::Instant::now());
                }
            }
        });
        Ok(Process {
            child,
            said,
            reader: Some(reader),
            peak_rss_kib: 0,
        })
    }

    /// What the log has said so far.
    pub fn said(&self) -> Said {
        self.said
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the process's peak resident set while it runs.
    pub fn sample_rss(&mut self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        if let Some(kib) = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }

    /// The exit status, once the process has ended (its log read to the end).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.join_reader();
        }
        Ok(status)
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.join_reader();
        Ok(())
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_starts_at_five_in_chicago_on_both_sides_of_each_change() {
        for (date, utc) in [
            ("2027-03-12", "2027-03-12T11:00:00Z"), // CST, before the March change
            ("2027-03-15", "2027-03-15T10:00:00Z"), // CDT
            ("2027-11-05", "2027-11-05T10:00:00Z"), // CDT, before the November change
            ("2027-11-08", "2027-11-08T11:00:00Z"), // CST
        ] {
            assert_eq!(
                day_start(date.parse().expect("date"))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                utc
            );
        }
    }

    #[test]
    fn the_configuration_is_one_the_job_reads() {
        let text = config(&Settings {
            sim_url: "http://127.0.0.1:1",
            webhook: "http://127.0.0.1:2/alerts",
            out: Path::new("/tmp/o"),
            state: Path::new("/tmp/s"),
            delivered: Path::new("/tmp/d"),
            batch_size: 4,
        });
        assert!(text.contains("batch_size = 4"));
        assert!(text.contains("[[delivery]]"));
        assert!(text.contains("max_attempts = 3"));
    }
}

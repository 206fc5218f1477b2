//! The pre-flight: what must hold before a run makes its first vendor call, checked in seconds
//! so that a run that cannot deliver fails before it spends any of the day's quota.
//!
//! - every directory this process writes (output, state, log) takes a probe file;
//! - the output directory's file system has room for the expected file (an estimate from the
//!   roster and the last file written, with a margin);
//! - both token endpoints issue a token (the account system's client and the vendor's);
//! - both APIs answer: the vendor's `GET /v1/health`, and the account system's first page of
//!   one active account (the account system publishes no health route).
//!
//! The same checks run on demand (`esg check-config --connect`) and early in the morning
//! (`[schedule] preflight_at`), so a person hears of a problem before the run is due. No check
//! calls the vendor's analysis routes: the pre-flight spends no quota.

use crate::config::Config;
use crate::pipeline;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes a row of the ratings file takes at most in practice (a 200-character name quoted, ten
/// columns); the estimate of the file's size is rows times this.
const ROW_BYTES: u64 = 512;
/// Room asked for beyond the estimate: the errors file, the summary, the temporary copy a
/// re-run writes beside the file.
const MARGIN_BYTES: u64 = 16 * 1024 * 1024;

/// One check and how it came out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked, e.g. `output directory writable`.
    pub name: String,
    /// True when it holds.
    pub ok: bool,
    /// What was found (a path, a size, an error).
    pub detail: String,
    /// False for a check whose failure does not stop the run (a delivery target: the files
    /// are written locally and delivered when the target is back); it is reported and alerted.
    pub required: bool,
}

/// Every check of one pre-flight.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when every required check holds.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok || !c.required)
    }

    /// The required checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok && c.required)
    }

    /// The checks that failed without stopping the run (delivery targets).
    pub fn warnings(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok && !c.required)
    }

    /// `Err` naming every failed check, for a run to stop on.
    pub fn into_result(self) -> Result<Report, PreflightFailed> {
        if self.ok() {
            Ok(self)
        } else {
            Err(PreflightFailed {
                failed: self.failures().cloned().collect(),
            })
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "  {} {}: {}",
                match (c.ok, c.required) {
                    (true, _) => "ok  ",
                    (false, true) => "FAIL",
                    (false, false) => "WARN",
                },
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

/// The pre-flight found something that stops the run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pre-flight failed, no vendor call made: {}", .failed.iter().map(|c| format!("{}: {}", c.name, c.detail)).collect::<Vec<_>>().join("; "))]
pub struct PreflightFailed {
    pub failed: Vec<Check>,
}

/// What the pre-flight checks.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Check the output directory (false for a process that writes no files, the producer on
    /// Kafka).
    pub output: bool,
    /// Accounts the next file is expected to hold (for the free-space estimate).
    pub expected_rows: u64,
}

/// Runs every check. Never fails itself: a check that cannot be made is a failed check.
pub async fn run(config: &Config, scope: &Scope) -> Report {
    let mut checks = Vec::new();
    let mut dirs: Vec<(&str, PathBuf)> = vec![("state directory", config.state.dir.clone())];
    if scope.output {
        dirs.push(("output directory", config.output.dir.clone()));
    }
    if let Some(dir) = &config.log.dir {
        dirs.push(("log directory", dir.clone()));
    }
    for (what, dir) in &dirs {
        checks.push(writable(what, dir));
    }
    if scope.output {
        checks.push(free_space(&config.output.dir, scope.expected_rows));
    }
    let (accounts, esg, delivery) = tokio::join!(
        accounts_api(config),
        esg_api(config),
        delivery_targets(config, scope.output)
    );
    checks.extend(accounts);
    checks.extend(esg);
    checks.extend(delivery);
    Report { checks }
}

/// Each `[[delivery]]` target can be reached and written (not required: a target that is down
/// delays the delivery, not the file).
async fn delivery_targets(config: &Config, output: bool) -> Vec<Check> {
    if !output || config.delivery.is_empty() {
        return Vec::new();
    }
    let record = config.state.dir.join(crate::delivering::RECORD_FILE);
    let deliveries = match esg_delivery::Deliveries::new(&config.delivery, &record) {
        Ok(d) => d,
        Err(e) => {
            return vec![Check {
                required: false,
                ..failed("delivery targets", e.message)
            }]
        }
    };
    let failures = deliveries.check().await;
    deliveries
        .names()
        .into_iter()
        .map(|name| {
            let what = format!("delivery target {name} writable");
            let check = match failures.iter().find(|(n, _)| *n == name) {
                Some((_, e)) => failed(&what, e.message.clone()),
                None => passed(&what, "reached and written".into()),
            };
            Check {
                required: false,
                ..check
            }
        })
        .collect()
}

/// Writes, syncs and removes a probe file in `dir` (created if missing).
fn writable(what: &str, dir: &Path) -> Check {
    let name = format!("{what} writable");
    let probe = dir.join(format!(".esg-preflight-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::File::create(&probe)?;
        std::io::Write::write_all(&mut file, b"esg pre-flight probe\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::remove_file(&probe)
    })();
    match result {
        Ok(()) => Check {
            name,
            ok: true,
            detail: dir.display().to_string(),
            required: true,
        },
        Err(e) => {
            let _ = std::fs::remove_file(&probe);
            Check {
                name,
                ok: false,
                detail: format!("{}: {e}", dir.display()),
                required: true,
            }
        }
    }
}

/// The bytes the next file needs: the larger of the last ratings file written and the
/// estimate from the expected rows, plus the margin. (The errors file, the summaries and the
/// Parquet, when on, are not counted one by one: the estimate of `ROW_BYTES` a row is about
/// five times a real row of the ratings file, which leaves room for them.)
pub fn needed_bytes(dir: &Path, expected_rows: u64) -> u64 {
    let last_file = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("FirmESGRatings_") && !n.contains("_errors") && n.ends_with(".csv")
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap_or(0);
    // A file is written beside the old one and renamed over it: both exist for a moment.
    last_file
        .max(expected_rows.saturating_mul(ROW_BYTES))
        .saturating_add(MARGIN_BYTES)
}

fn free_space(dir: &Path, expected_rows: u64) -> Check {
    let name = "free space for the file".to_owned();
    let needed = needed_bytes(dir, expected_rows);
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let available = s.f_bavail.saturating_mul(s.f_frsize);
            Check {
                name,
                ok: available >= needed,
                detail: format!(
                    "{} available in {}, {} needed ({expected_rows} rows)",
                    mib(available),
                    dir.display(),
                    mib(needed)
                ),
                required: true,
            }
        }
        Err(e) => Check {
            name,
            ok: false,
            detail: format!("{}: {e}", dir.display()),
            required: true,
        },
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The account system: a token, then the first page of one active account.
async fn accounts_api(config: &Config) -> Vec<Check> {
    let timeout = config.accounts.timeout.min(Duration::from_secs(30));
    let (http, auth_http) = match (
        pipeline::http_client(timeout, &config.accounts.tls_files()),
        pipeline::auth_http_client(config, timeout),
    ) {
        (Ok(h), Ok(a)) => (h, a),
        (Err(e), _) | (_, Err(e)) => return vec![failed("account system token", format!("{e:#}"))],
    };
    let tokens = pipeline::accounts_tokens(config, auth_http);
    let token = match tokens.token().await {
        Ok(t) => t,
        Err(e) => {
            return vec![
                failed("account system token", e.to_string()),
                failed("account system answers", "not tried: no token".into()),
            ]
        }
    };
    let url = format!("{}/v1/accounts", config.accounts.url.trim_end_matches('/'));
    let answer = http
        .get(&url)
        .timeout(timeout)
        .bearer_auth(&*token)
        .query(&[("status", "ACTIVE"), ("pageSize", "1")])
        .send()
        .await;
    vec![
        passed("account system token", "issued".into()),
        match answer {
            Ok(r) if r.status().is_success() => passed("account system answers", url),
            Ok(r) => failed(
                "account system answers",
                format!("{url}: HTTP {}", r.status()),
            ),
            Err(e) => failed("account system answers", format!("{url}: {}", chain(&e))),
        },
    ]
}

/// The vendor: a token, then `GET /v1/health`.
async fn esg_api(config: &Config) -> Vec<Check> {
    let timeout = config.esg_api.timeout.min(Duration::from_secs(30));
    let (http, auth_http) = match (
        pipeline::http_client(timeout, &config.esg_api.tls_files()),
        pipeline::auth_http_client(config, timeout),
    ) {
        (Ok(h), Ok(a)) => (h, a),
        (Err(e), _) | (_, Err(e)) => return vec![failed("ESG API token", format!("{e:#}"))],
    };
    let tokens = pipeline::esg_tokens(config, auth_http);
    let (token_check, token) = match tokens.token().await {
        Ok(t) => (passed("ESG API token", "issued".into()), Some(t)),
        Err(e) => (failed("ESG API token", e.to_string()), None),
    };
    let url = format!("{}/v1/health", config.esg_api.url.trim_end_matches('/'));
    let mut request = http.get(&url).timeout(timeout);
    if let Some(t) = &token {
        request = request.bearer_auth(&**t);
    }
    let health = match request.send().await {
        Ok(r) if r.status().is_success() => passed("ESG API healthy", url),
        Ok(r) => failed("ESG API healthy", format!("{url}: HTTP {}", r.status())),
        Err(e) => failed("ESG API healthy", format!("{url}: {}", chain(&e))),
    };
    vec![token_check, health]
}

fn passed(name: &str, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok: true,
        detail,
        required: true,
    }
}

fn failed(name: &str, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        ok: false,
        detail,
        required: true,
    }
}

/// An error with its causes, one line (a connection refused says so, not only "error sending
/// request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_cannot_be_written_fails_its_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = writable("output directory", &dir.path().join("out"));
        assert!(ok.ok, "{ok:?}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("out"))
                .expect("dir")
                .count(),
            0,
            "the probe is removed"
        );
        // A path under a regular file cannot be a directory.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("file");
        let bad = writable("output directory", &file.join("out"));
        assert!(!bad.ok);
        assert!(bad.detail.contains("file/out"), "{}", bad.detail);
    }

    #[test]
    fn the_space_needed_grows_with_the_rows_and_the_last_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(needed_bytes(dir.path(), 0), MARGIN_BYTES);
        assert_eq!(
            needed_bytes(dir.path(), 100_000),
            100_000 * ROW_BYTES + MARGIN_BYTES
        );
        std::fs::write(
            dir.path().join("FirmESGRatings_20261123.csv"),
            vec![b'x'; 4096],
        )
        .expect("file");
        assert_eq!(needed_bytes(dir.path(), 1), 4096 + MARGIN_BYTES);
        let check = free_space(dir.path(), 1);
        assert!(check.ok, "{check:?}");
        let huge = free_space(dir.path(), u64::MAX / ROW_BYTES);
        assert!(!huge.ok, "{huge:?}");
    }

    #[test]
    fn a_failed_report_names_each_failed_check() {
        let report = Report {
            checks: vec![
                passed("state directory writable", "/s".into()),
                failed("ESG API healthy", "http://x/v1/health: HTTP 503".into()),
            ],
        };
        let err = report.into_result().expect_err("fails");
        let text = err.to_string();
        assert!(
            text.contains("ESG API healthy: http://x/v1/health: HTTP 503"),
            "{text}"
        );
        assert!(!text.contains("state directory"), "{text}");
    }
}

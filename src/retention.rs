//! Retention: the day files and logs older than `[retention]` allows are removed, locally and
//! on every delivery target (`esg purge`, and at the start of each run). A file's age is the
//! business date in its name (`FirmESGRatings_YYYYMMDD…`, a log's `esg.YYYY-MM-DD.log`), never
//! its modification time; temporary files a killed writer left behind go once they are a day
//! old. Each removal is an entry of the audit trail; a removal the store refuses (Object Lock, a
//! read-only share) is reported, alerted (`purge_refused`) and counted, never skipped in silence.

use crate::alerting::Alerts;
use crate::auditing::Audit;
use crate::config::Config;
use chrono::{NaiveDate, Utc};
use esg_audit::Event;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Temporary files of writers are left alone for this long (a writer may be at work).
const TEMP_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What one purge did, or (`dry_run`) would do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Purged {
    /// Where each removed (or removable) file was: a local path, or `target: name`.
    pub removed: Vec<String>,
    /// What could not be removed, and why.
    pub refused: Vec<String>,
}

/// The business date a day file's name carries (`FirmESGRatings_20261123.csv.age`, or a
/// temporary `.FirmESGRatings_20261123.csv.tmp-…`, `.FirmESGRatings_….part`).
pub fn business_date_of(name: &str) -> Option<NaiveDate> {
    let rest = name
        .trim_start_matches('.')
        .strip_prefix("FirmESGRatings_")?;
    NaiveDate::parse_from_str(rest.get(..8)?, "%Y%m%d").ok()
}

/// The date of a log file of `[log] dir` (`esg.2026-11-23.log`).
fn log_date_of(name: &str) -> Option<NaiveDate> {
    let date = name.strip_prefix("esg.")?.strip_suffix(".log")?;
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

/// True when a file of `date` is older than `keep` on `today`.
fn expired(date: NaiveDate, today: NaiveDate, keep: Duration) -> bool {
    let days = i64::try_from(keep.as_secs() / 86_400).unwrap_or(i64::MAX);
    (today - date).num_days() > days
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.ends_with(".part"))
}

/// Removes (unless `dry_run`) what `[retention]` says is too old, as of `today`.
pub async fn purge(
    config: &Config,
    today: NaiveDate,
    dry_run: bool,
    alerts: &Alerts,
    audit: &Audit,
    delivery: Option<&crate::delivering::Delivery>,
) -> Purged {
    let mut purged = Purged::default();
    let policy = &config.retention;
    if let Some(keep) = policy.files {
        let local = local_files(&config.output.dir, |name| {
            business_date_of(name).is_some_and(|d| expired(d, today, keep))
        });
        remove_local(local, "retention.files", dry_run, audit, &mut purged);
        if let Some(delivery) = delivery {
            let doomed =
                |name: &str| business_date_of(name).is_some_and(|d| expired(d, today, keep));
            for (target, name, result) in delivery.purge(&doomed, dry_run).await {
                let what = format!("{target}: {name}");
                match result {
                    Ok(()) => {
                        if !dry_run {
                            audit.record(
                                Event::new("purged", &name)
                                    .with("target", &target)
                                    .with("policy", "retention.files"),
                            );
                        }
                        purged.removed.push(what);
                    }
                    Err(e) => purged.refused.push(format!("{what}: {e}")),
                }
            }
        }
    }
    // Temporary files a killed writer left: a day after they were last written.
    let now = std::time::SystemTime::now();
    let temps = local_files(&config.output.dir, is_temp)
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > TEMP_GRACE))
        })
        .collect();
    remove_local(
        temps,
        "a killed writer's temporary file, a day old",
        dry_run,
        audit,
        &mut purged,
    );
    if let (Some(keep), Some(dir)) = (policy.logs, &config.log.dir) {
        let logs = local_files(dir, |name| {
            log_date_of(name).is_some_and(|d| expired(d, today, keep))
        });
        remove_local(logs, "retention.logs", dry_run, audit, &mut purged);
    }
    if let Some(keep) = policy.audit {
        let before = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let segments = if dry_run {
            audit.log().expired_segments(before)
        } else {
            audit.log().purge_segments(before)
        };
        match segments {
            Ok(paths) => {
                for path in paths {
                    if !dry_run {
                        record_purged(audit, &path, "retention.audit");
                    }
                    purged.removed.push(path.display().to_string());
                }
            }
            Err(e) => purged.refused.push(format!("audit segments: {e}")),
        }
    }
    for line in &purged.refused {
        tracing::error!(refused = %line, "retention: a file could not be removed");
    }
    if !purged.refused.is_empty() && !dry_run {
        metrics::counter!(esg_metrics::PURGE_REFUSED_TOTAL).increment(purged.refused.len() as u64);
        let mut alert = esg_alerts::Alert::new(
            esg_alerts::AlertKind::PurgeRefused,
            format!("purge-{today}"),
            today,
            &format!(
                "{} file(s) past retention could not be removed: {}",
                purged.refused.len(),
                purged.refused[0]
            ),
            Utc::now(),
        );
        for (i, line) in purged.refused.iter().enumerate().take(20) {
            alert = alert.with_detail(format!("refused {}", i + 1), line);
        }
        alerts.send_alert(alert).await;
    }
    if !dry_run && !purged.removed.is_empty() {
        tracing::info!(
            removed = purged.removed.len(),
            "retention: old files removed"
        );
    }
    purged
}

/// The regular files of `dir` whose names `doomed` picks (none when `dir` is missing).
fn local_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| doomed(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn remove_local(
    paths: Vec<PathBuf>,
    policy: &str,
    dry_run: bool,
    audit: &Audit,
    purged: &mut Purged,
) {
    for path in paths {
        let shown = path.display().to_string();
        if dry_run {
            purged.removed.push(shown);
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                record_purged(audit, &path, policy);
                purged.removed.push(shown);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => purged.refused.push(format!("{shown}: {e}")),
        }
    }
}

/// The audit entry of a local file removed by `policy`.
fn record_purged(audit: &Audit, path: &Path, policy: &str) {
    audit.record(
        Event::new(
            "purged",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        )
        .with("path", path.display())
        .with("policy", policy),
    );
}

//! Retention: the day files and logs older than `[retention]` allows are removed, locally and
//! on every delivery target (`esg purge`, and at the start of each run). A file's age is the
//! business date in its name (`FirmESGRatings_YYYYMMDD…`, a log's `esg.YYYY-MM-DD.log`), never
//! its modification time; a day's Parquet goes with the day's files, and its partition
//! directory once empty; temporary files a killed writer left behind go once they are a day
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

/// `keep` in whole days.
fn days(keep: Duration) -> chrono::Duration {
    chrono::Duration::days(i64::try_from(keep.as_secs() / 86_400).unwrap_or(i64::MAX / 86_400_000))
}

/// True when a file of `date` is older than `keep` on `today`.
fn expired(date: NaiveDate, today: NaiveDate, keep: Duration) -> bool {
    today - date > days(keep)
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
        let local = day_files(&config.output.dir, |name| {
            business_date_of(name).is_some_and(|d| expired(d, today, keep))
        });
        remove_local(local, "retention.files", dry_run, audit, &mut purged);
        if !dry_run {
            // A purged day's Parquet partition goes with its file.
            esg_assembler::parquet::remove_empty_partitions(&config.output.dir);
        }
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
    // The delivery record keeps the deliveries of the day files it keeps, no older ones.
    if let Some(keep) = policy.files {
        let record = config.state.dir.join(crate::delivering::RECORD_FILE);
        let doomed = |e: &esg_delivery::RecordEntry| expired(e.business_date, today, keep);
        let result = if dry_run {
            esg_delivery::Record::read(&record).map(|all| all.iter().filter(|e| doomed(e)).count())
        } else {
            esg_delivery::Record::retain(&record, |e| !doomed(e))
        };
        match result {
            Ok(0) => {}
            Ok(lines) => {
                if !dry_run {
                    audit.record(
                        Event::new("purged", crate::delivering::RECORD_FILE)
                            .with("lines", lines.to_string())
                            .with("policy", "retention.files"),
                    );
                }
                purged
                    .removed
                    .push(format!("{}: {lines} lines", record.display()));
            }
            Err(e) => purged.refused.push(format!("{}: {e}", record.display())),
        }
    }
    // Temporary files a killed writer left: a day after they were last written.
    let now = std::time::SystemTime::now();
    let temps = day_files(&config.output.dir, is_temp)
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
    if let Some(keep) = policy.history {
        purge_history(config, today - days(keep), dry_run, audit, &mut purged);
    }
    if let Some(keep) = policy.departed {
        let before = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        purge_departed(config, before, dry_run, audit, &mut purged).await;
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

/// The day files of the output directory `dir` whose names `doomed` picks: those of `dir`
/// itself and those of its Parquet partitions (`parquet/business_date=…/`).
fn day_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files = local_files(dir, &doomed);
    for partition in esg_assembler::parquet::partition_dirs(dir) {
        files.extend(local_files(&partition, &doomed));
    }
    files
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

/// The runs of business dates before `before` leave the producer's and the assembler's stores
/// (`[retention] history`): their phases, listings, expected and scored accounts, and facts.
fn purge_history(
    config: &Config,
    before: NaiveDate,
    dry_run: bool,
    audit: &Audit,
    purged: &mut Purged,
) {
    let key = config.state.key.as_ref();
    let before_text = before.to_string();
    let stores: [(PathBuf, &[&str]); 2] = [
        (
            config.producer_store_path(),
            esg_producer::store::PURGE_HISTORY,
        ),
        (
            config.assembler_store_path(),
            esg_assembler::state::PURGE_HISTORY,
        ),
    ];
    for (path, statements) in stores {
        let runs = if path.exists() {
            esg_bus::store::open_connection(&path, key).and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM runs WHERE business_date < ?1",
                    [&before_text],
                    |r| r.get::<_, i64>(0),
                )
            })
        } else {
            Ok(0)
        };
        let what = |n: i64| format!("{}: {n} run(s) before {before}", path.display());
        match runs {
            Ok(0) => {}
            Ok(n) if dry_run => purged.removed.push(what(n)),
            Ok(n) => {
                match esg_bus::store::delete(&path, key, statements, &[(":before", &before_text)]) {
                    Ok(_) => {
                        audit.record(
                            Event::new("purged", format!("runs before {before}"))
                                .with("store", path.display())
                                .with("runs", n)
                                .with("policy", "retention.history"),
                        );
                        purged.removed.push(what(n));
                    }
                    Err(e) => purged.refused.push(format!("{}: {e}", what(n))),
                }
            }
            Err(e) => purged.refused.push(format!("{}: {e}", path.display())),
        }
    }
}

/// Accounts that left the roster and were last scored before `before` leave the stores, the
/// embedded log, and on Kafka the scores topic (a tombstone each, which every assembler reading
/// it applies too): `[retention] departed`. They are found in the assembler's store, so on
/// Kafka this runs where the assembler keeps its state.
async fn purge_departed(
    config: &Config,
    before: chrono::DateTime<Utc>,
    dry_run: bool,
    audit: &Audit,
    purged: &mut Purged,
) {
    let key = config.state.key.as_ref();
    let assembler = config.assembler_store_path();
    if !assembler.exists() {
        return;
    }
    let ids: rusqlite::Result<Vec<String>> = esg_bus::store::open_connection(&assembler, key)
        .and_then(|c| {
            let mut stmt = c.prepare(esg_assembler::state::DEPARTED)?;
            let rows = stmt.query_map(
                rusqlite::named_params! {":before_ms": before.timestamp_millis()},
                |r| r.get(0),
            )?;
            rows.collect()
        });
    let ids = match ids {
        Ok(ids) if ids.is_empty() => return,
        Ok(ids) => ids,
        Err(e) => {
            purged
                .refused
                .push(format!("departed accounts in {}: {e}", assembler.display()));
            return;
        }
    };
    let what = format!(
        "{} departed account(s) last scored before {}",
        ids.len(),
        before.date_naive()
    );
    if dry_run {
        purged.removed.push(what);
        return;
    }
    let topics = esg_bus::Topics::new(&config.topics());
    let mut stores: Vec<(PathBuf, &[&str])> = vec![
        (config.producer_store_path(), esg_producer::store::ERASE),
        (assembler, esg_assembler::state::ERASE),
    ];
    let log = [esg_bus::store::ERASE_LOG];
    match config.bus.kind {
        crate::config::BusKind::Embedded => stores.push((config.bus_path(), &log)),
        crate::config::BusKind::Kafka => {
            let sent = match crate::pipeline::connect_bus(config).await {
                Ok((bus, _)) => bus
                    .tombstones(&topics.scores, &ids)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                purged
                    .refused
                    .push(format!("{what}: tombstones on {}: {e:#}", topics.scores));
                return;
            }
        }
    }
    let sets: Vec<[(&str, &dyn rusqlite::ToSql); 4]> = ids
        .iter()
        .map(|id| {
            [
                (":id", id as &dyn rusqlite::ToSql),
                (":accounts", &topics.accounts as &dyn rusqlite::ToSql),
                (":account_events", &topics.account_events),
                (":scores", &topics.scores),
            ]
        })
        .collect();
    let sets: Vec<&[(&str, &dyn rusqlite::ToSql)]> = sets.iter().map(|s| s.as_slice()).collect();
    for (path, statements) in stores {
        if let Err(e) = esg_bus::store::delete_each(&path, key, statements, &sets) {
            purged
                .refused
                .push(format!("{what}: {}: {e}", path.display()));
            return;
        }
    }
    audit.record(
        Event::new("purged", "departed accounts")
            .with("accounts", ids.len())
            .with("scored_before", before.to_rfc3339())
            .with("policy", "retention.departed"),
    );
    purged.removed.push(what);
}

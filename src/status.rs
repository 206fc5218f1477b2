//! `esg status`: where a run stands, read from the topics only. It takes no lock and writes
//! nothing, so it answers while a run is going, on either transport, from any host with the
//! configuration (the files it lists are those of this host's output directory).

use crate::config::Config;
use crate::pipeline;
use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDate, Utc};
use esg_bus::runs::{RunBook, RunFacts};
use esg_bus::{EventBus, RangeReader};
use esg_schemas::{Event, ScoreStatus};
use std::collections::HashMap;
use std::fmt;

/// The window over which the API rate is measured.
const RATE_WINDOW_SECONDS: i64 = 60;

/// One output file of the date.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileStatus {
    pub path: String,
    /// `None` when the file is not there (yet).
    pub bytes: Option<u64>,
    pub modified: Option<DateTime<Utc>>,
}

/// Where one run stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub run_id: String,
    pub business_date: NaiveDate,
    pub kind: String,
    pub full: bool,
    /// `started` (listing and publishing), `sealed` (scoring), `completed`.
    pub phase: String,
    pub triggered_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Accounts the run scores (known once sealed).
    pub expected: Option<u64>,
    /// Accounts with a score of this run so far.
    pub scored: u64,
    pub successful: u64,
    pub partial: u64,
    pub failed: u64,
    /// Scores written per second over the last minute.
    pub rate_per_second: f64,
    /// The configured share of the vendor's quota (requests per second).
    pub quota_per_second: u32,
    /// Seconds left at the quota for the accounts not scored yet (`None` before the seal or
    /// once done).
    pub eta_seconds: Option<u64>,
    /// The outcome, once completed.
    pub outcome: Option<String>,
    pub files: Vec<FileStatus>,
}

/// The status of the latest run of `date` (or the latest run of all).
pub async fn read(config: &Config, date: Option<NaiveDate>) -> Result<Status> {
    let (bus, _) = pipeline::connect_bus(config).await?;
    let book = RunBook::read(&bus).await?;
    let run = match date {
        Some(d) => book.of_date(d).last().copied(),
        None => book.latest(),
    };
    let Some(run) = run else {
        match date {
            Some(d) => bail!("no run of {d} on the triggers topic"),
            None => bail!("no run on the triggers topic yet"),
        }
    };
    let counts = count_scores(&bus, run).await?;
    let expected = run
        .sealed
        .as_ref()
        .map(|s| s.expected_accounts.max(0) as u64);
    let quota = config.esg_api.rate_limit_per_second;
    let eta_seconds = match (expected, &run.completed) {
        (Some(n), None) => Some(
            n.saturating_sub(counts.scored)
                .div_ceil(u64::from(quota.max(1))),
        ),
        _ => None,
    };
    let names = esg_assembler::output::file_names(run.business_date);
    // The names on disk: `<name>.age` when the outputs are encrypted.
    let protection = config.protection().unwrap_or_default();
    let files = [names.csv, names.errors, names.summary_json]
        .into_iter()
        .map(|name| {
            let path = config.output.dir.join(protection.file_name(&name));
            let meta = std::fs::metadata(&path).ok();
            FileStatus {
                path: path.display().to_string(),
                bytes: meta.as_ref().map(|m| m.len()),
                modified: meta
                    .and_then(|m| m.modified().ok())
                    .map(DateTime::<Utc>::from),
            }
        })
        .collect();
    Ok(Status {
        run_id: run.run_id.clone(),
        business_date: run.business_date,
        kind: run.kind.to_string(),
        full: run.full,
        phase: run.phase().to_owned(),
        triggered_at: run.triggered_at,
        deadline: run.deadline,
        expected,
        scored: counts.scored,
        successful: counts.successful,
        partial: counts.partial,
        failed: counts.failed,
        rate_per_second: counts.recent as f64 / RATE_WINDOW_SECONDS as f64,
        quota_per_second: quota,
        eta_seconds,
        outcome: run.completed.as_ref().map(|c| c.outcome.to_string()),
        files,
    })
}

#[derive(Default)]
struct Counts {
    scored: u64,
    successful: u64,
    partial: u64,
    failed: u64,
    /// Scores of the last minute.
    recent: u64,
}

/// The scores of `run` on the scores topic: read from the run's trigger time on, the latest of
/// each account counted.
async fn count_scores(bus: &EventBus, run: &RunFacts) -> Result<Counts> {
    let topic = &bus.topics.scores;
    let ends = bus.transport.end_offsets(topic).await?;
    let since = run.triggered_at.timestamp_millis();
    let recent_since = Utc::now() - chrono::Duration::seconds(RATE_WINDOW_SECONDS);
    let mut latest: HashMap<String, (ScoreStatus, DateTime<Utc>)> = HashMap::new();
    for (p, end) in ends.iter().enumerate() {
        let p = p as i32;
        let from = bus.transport.offset_for_time(topic, p, since).await?;
        let mut range = RangeReader::new(&*bus.transport, topic, p, from, *end, 5000);
        while let Some(batch) = range.next_batch().await? {
            for m in batch {
                if let Ok(Some(Event::EsgScore(s))) = bus.decode(m.value.as_deref()) {
                    if s.run_id == run.run_id {
                        latest.insert(s.account_id, (s.status, s.scored_at));
                    }
                }
            }
        }
    }
    let mut counts = Counts::default();
    for (status, at) in latest.values() {
        counts.scored += 1;
        match status {
            ScoreStatus::Successful => counts.successful += 1,
            ScoreStatus::Partial => counts.partial += 1,
            ScoreStatus::Failed => counts.failed += 1,
        }
        if *at >= recent_since {
            counts.recent += 1;
        }
    }
    Ok(counts)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "run {} ({}{}) of {}: {}{}",
            self.run_id,
            self.kind,
            if self.full { ", full" } else { "" },
            self.business_date,
            self.phase,
            self.outcome
                .as_ref()
                .map(|o| format!(", {o}"))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "  started {}, deadline {}",
            self.triggered_at.to_rfc3339(),
            self.deadline.to_rfc3339()
        )?;
        match self.expected {
            Some(n) => writeln!(
                f,
                "  scored {} of {} ({}%): {} successful, {} partial, {} failed",
                self.scored,
                n,
                (self.scored * 100).checked_div(n).unwrap_or(100),
                self.successful,
                self.partial,
                self.failed
            )?,
            None => writeln!(
                f,
                "  listing and publishing: scored {} so far ({} failed)",
                self.scored, self.failed
            )?,
        }
        writeln!(
            f,
            "  API rate {:.1}/s over the last minute (quota {}/s)",
            self.rate_per_second, self.quota_per_second
        )?;
        if let Some(eta) = self.eta_seconds {
            writeln!(
                f,
                "  ETA {} at the quota",
                humantime_serde::re::humantime::format_duration(std::time::Duration::from_secs(
                    eta
                ))
            )?;
        }
        for file in &self.files {
            match file.bytes {
                Some(b) => writeln!(f, "  file {} ({b} bytes)", file.path)?,
                None => writeln!(f, "  file {} (not written)", file.path)?,
            }
        }
        Ok(())
    }
}

//! `esg history`: the runs the assembler kept (`assembler.db`, table `history`), per day or
//! all, as text, JSON or CSV; `esg history import DIR` rebuilds the history from day summaries.

use crate::auditing::Audit;
use crate::config::Config;
use crate::runner::Refused;
use anyhow::{Context, Result};
use chrono::NaiveDate;
use esg_assembler::history::{self, Day, HistoryRow};
use esg_assembler::summary::Summary;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The runs from `since` on (all when `None`), by date then start, read through a read-only
/// connection (nothing written, no lock: beside a running job too). An error that says where
/// to look when there is no store. Shared by `esg history` and `esg serve`.
pub fn read(config: &Config, since: Option<NaiveDate>) -> Result<Vec<HistoryRow>> {
    let path = config.assembler_store_path();
    if !path.exists() {
        return Err(Refused::Usage(format!(
            "there is no history yet: {} does not exist (on Kafka, ask on the assembler's host)",
            path.display()
        ))
        .into());
    }
    let c = esg_bus::store::open_read_only(&path, config.state.key.as_ref())
        .with_context(|| format!("opening {} read-only", path.display()))?;
    // A store the assembler has not opened since the history came has no table yet: no runs.
    let has_table: bool = c
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'history'",
            [],
            |r| r.get(0),
        )
        .with_context(|| format!("reading {}", path.display()))?;
    if !has_table {
        return Ok(Vec::new());
    }
    let rows = history::runs(&c, since)
        .with_context(|| format!("reading the history in {}", path.display()))?;
    Ok(rows)
}

/// The per-day view (or every run with `all`) as lines of text.
pub fn text(rows: Vec<HistoryRow>, all: bool) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<10}  {:<14} {:<7} {:<21} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>7}  {}",
        "date",
        "run",
        "kind",
        "outcome",
        "accounts",
        "success%",
        "failed",
        "overall",
        "requests",
        "429s",
        "seconds",
        "deadline"
    )];
    let line = |r: &HistoryRow| {
        format!(
            "{:<10}  {:<14} {:<7} {:<21} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>7}  {}",
            r.business_date,
            r.run_id,
            r.kind,
            r.outcome,
            r.accounts,
            r.success_rate_percent,
            r.failed,
            r.averages
                .get("overall")
                .cloned()
                .flatten()
                .unwrap_or_else(|| "N/A".into()),
            r.api_requests,
            r.api_rate_limited,
            (r.finished_at - r.started_at).num_seconds().max(0),
            match r.deadline_met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "unknown",
            }
        )
    };
    if all {
        lines.extend(rows.iter().map(line));
    } else {
        for day in history::days(rows) {
            lines.extend(day.daily.iter().chain(day.reruns.iter()).map(line));
        }
    }
    if lines.len() == 1 {
        lines.push("(no runs)".into());
    }
    lines
}

/// The per-day view as JSON (`[{business_date, daily, reruns}]`), or every run with `all`.
pub fn json(rows: Vec<HistoryRow>, all: bool) -> Result<String> {
    Ok(if all {
        serde_json::to_string_pretty(&rows)?
    } else {
        let days: Vec<Day> = history::days(rows);
        serde_json::to_string_pretty(&days)?
    })
}

/// The columns of `esg history --csv`.
pub const CSV_HEADER: [&str; 34] = [
    "business_date",
    "run_id",
    "kind",
    "outcome",
    "started_at",
    "finished_at",
    "deadline",
    "deadline_met",
    "accounts",
    "successful",
    "partial",
    "failed",
    "success_rate_percent",
    "sum_overall",
    "rows_overall",
    "average_overall",
    "sum_environmental",
    "rows_environmental",
    "average_environmental",
    "sum_social",
    "rows_social",
    "average_social",
    "sum_governance",
    "rows_governance",
    "average_governance",
    "focus_environmental",
    "focus_social",
    "focus_governance",
    "scored",
    "carried_forward",
    "new_accounts",
    "gone_accounts",
    "api_requests",
    "api_rate_limited",
];

/// One line per run (the per-day view, or every run with `all`), RFC 4180, header first. The
/// scores' sums are exact decimals; attempts, retries and malformed records are in the JSON.
pub fn csv(rows: Vec<HistoryRow>, all: bool) -> Result<String> {
    let rows: Vec<HistoryRow> = if all {
        rows
    } else {
        history::days(rows)
            .into_iter()
            .flat_map(|d| d.daily.into_iter().chain(d.reruns))
            .collect()
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER)?;
    for r in &rows {
        let mut cells = vec![
            r.business_date.to_string(),
            r.run_id.clone(),
            r.kind.clone(),
            r.outcome.clone(),
            r.started_at.to_rfc3339(),
            r.finished_at.to_rfc3339(),
            r.deadline.map(|d| d.to_rfc3339()).unwrap_or_default(),
            r.deadline_met.map(|m| m.to_string()).unwrap_or_default(),
            r.accounts.to_string(),
            r.successful.to_string(),
            r.partial.to_string(),
            r.failed.to_string(),
            r.success_rate_percent.clone(),
        ];
        for score in ["overall", "environmental", "social", "governance"] {
            let sum = r.score_sums.get(score);
            cells.push(sum.map(|s| s.sum.clone()).unwrap_or_default());
            cells.push(sum.map(|s| s.rows.to_string()).unwrap_or_default());
            cells.push(r.averages.get(score).cloned().flatten().unwrap_or_default());
        }
        for pillar in ["Environmental", "Social", "Governance"] {
            cells.push(
                r.primary_focus
                    .get(pillar)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            );
        }
        for n in [
            r.scored,
            r.carried_forward,
            r.new_accounts,
            r.gone_accounts,
            r.api_requests,
            r.api_rate_limited,
        ] {
            cells.push(n.to_string());
        }
        out.write_record(&cells)?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Summary files read.
    pub summaries: u64,
    /// Runs added to the history.
    pub added: u64,
    /// Runs the history held already (left as they were).
    pub present: u64,
}

/// `esg history import DIR`: every day summary in `dir` (`FirmESGRatings_YYYYMMDD_summary.json`,
/// or `.json.age` decrypted in memory with `identity`) gives its daily run and each re-run; a
/// run the history holds already is left as it was (the assembler's row knows the deadline).
/// Encrypted summaries without an identity are refused before anything is written; each file
/// opened with an identity is in the audit trail.
pub fn import(config: &Config, dir: &Path, identity: Option<&Path>) -> Result<Imported> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("FirmESGRatings_")
                    && (n.ends_with("_summary.json") || n.ends_with("_summary.json.age"))
            })
        })
        .collect();
    files.sort();
    let encrypted = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "age"))
        .count();
    let identities = match identity {
        Some(path) => age::IdentityFile::from_file(path.display().to_string())
            .and_then(|f| f.into_identities().map_err(std::io::Error::other))
            .map_err(|e| anyhow::anyhow!("identity file {}: {e}", path.display()))?,
        None if encrypted > 0 => {
            return Err(Refused::Usage(format!(
                "{encrypted} of the summaries in {} are encrypted: give --identity (the age \
                 identity of one of their recipients)",
                dir.display()
            ))
            .into())
        }
        None => Vec::new(),
    };
    let audit = Audit::new(config);
    let mut summaries = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut bytes = Vec::new();
        if path.extension().is_some_and(|e| e == "age") {
            audit.record(
                esg_audit::Event::new("opened", &name)
                    .with(
                        "identity",
                        identity
                            .map(Path::display)
                            .map(|d| d.to_string())
                            .unwrap_or_default(),
                    )
                    .with("to", "esg history import"),
            );
            let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
            let decryptor = age::Decryptor::new(std::io::BufReader::new(file))
                .map_err(|e| anyhow::anyhow!("{} is not an age file: {e}", path.display()))?;
            decryptor
                .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .read_to_end(&mut bytes)
                .with_context(|| format!("{}: damaged or cut short", path.display()))?;
        } else {
            bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        }
        let summary: Summary = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a day summary", path.display()))?;
        summaries.push(summary);
    }
    let path = config.assembler_store_path();
    let store = esg_assembler::state::open_keyed(&path, config.state.key.as_ref())
        .with_context(|| format!("opening {}", path.display()))?;
    let mut done = Imported {
        summaries: summaries.len() as u64,
        ..Imported::default()
    };
    let (added, present) = store
        .call_blocking(move |c| {
            let tx = c.transaction()?;
            let (mut added, mut present) = (0u64, 0u64);
            for summary in &summaries {
                for row in HistoryRow::all_of(summary) {
                    if history::record_if_absent(&tx, &row)? {
                        added += 1;
                    } else {
                        present += 1;
                    }
                }
            }
            tx.commit()?;
            Ok((added, present))
        })
        .with_context(|| format!("writing the history in {}", path.display()))?;
    done.added = added;
    done.present = present;
    audit.record(
        esg_audit::Event::new("history_imported", dir.display().to_string())
            .with("summaries", done.summaries)
            .with("added", added),
    );
    Ok(done)
}

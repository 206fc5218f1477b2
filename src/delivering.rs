//! The job's `[[delivery]]` targets, wired to the assembler's run end and to `esg deliver`: a
//! run that wrote its files sends them to every target (retried until the run's deadline), a
//! target that gives up raises the `delivery_failed` alert, and the record
//! (`<state.dir>/deliveries.jsonl`) says what reached where. Sending is `esg_delivery`'s.

use crate::alerting::Alerts;
use crate::auditing::Audit;
use crate::config::Config;
use crate::runner::Refused;
use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use esg_alerts::Alert;
use esg_assembler::encryption::Protection;
use esg_assembler::output::file_names;
use esg_assembler::RunEnded;
use esg_delivery::{Deliveries, Record, Report, RunRef};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The delivery record's file name in `[state] dir`.
pub const RECORD_FILE: &str = "deliveries.jsonl";

/// The configured targets with what sending needs around them.
pub struct Delivery {
    deliveries: Arc<Deliveries>,
    alerts: Arc<Alerts>,
    audit: Arc<Audit>,
    output_dir: PathBuf,
    protection: Protection,
    record: PathBuf,
    /// Cancelled when the process is asked to stop: a target being retried gives up then.
    stop: CancellationToken,
    /// `delivery_failed` alerts open, by business date and run (resolved once every target
    /// took the date's files).
    open_alerts: std::sync::Mutex<std::collections::BTreeSet<(NaiveDate, String)>>,
    /// The delivery in progress of each business date: a newer one (a re-run's files) stops
    /// the retries of the one before.
    current: std::sync::Mutex<std::collections::HashMap<NaiveDate, CancellationToken>>,
    /// Retries after the first round go on in the background (a service: the assembler goes
    /// on with other runs) instead of being waited for (a command that ends when they do).
    background: bool,
}

impl Delivery {
    /// `None` when no `[[delivery]]` is configured.
    pub fn new(
        config: &Config,
        alerts: Arc<Alerts>,
        audit: Arc<Audit>,
    ) -> Result<Option<Arc<Self>>> {
        if config.delivery.is_empty() {
            return Ok(None);
        }
        let record = config.state.dir.join(RECORD_FILE);
        let deliveries =
            Deliveries::new(&config.delivery, &record).map_err(|e| anyhow::anyhow!("{e}"))?;
        let protection = config
            .protection()
            .map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
        Ok(Some(Arc::new(Delivery {
            deliveries,
            alerts,
            audit,
            output_dir: config.output.dir.clone(),
            protection,
            record,
            stop: CancellationToken::new(),
            open_alerts: Default::default(),
            current: Default::default(),
            background: false,
        })))
    }

    /// The targets with another retry policy (tests).
    pub fn with_policy(self: Arc<Self>, policy: esg_delivery::RetryPolicy) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut this) => {
                this.deliveries = this.deliveries.with_policy(policy);
                Arc::new(this)
            }
            Err(shared) => shared,
        }
    }

    /// Retries after the first round in the background: for a service that must go on with
    /// other runs meanwhile (`esg assembler`). Call before the value is shared.
    pub fn in_background(self: Arc<Self>) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut this) => {
                this.background = true;
                Arc::new(this)
            }
            Err(shared) => shared,
        }
    }

    /// Makes a target being retried give up when `shutdown` is cancelled.
    pub fn stop_with(&self, shutdown: &CancellationToken) {
        let (shutdown, stop) = (shutdown.clone(), self.stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.cancel();
        });
    }

    /// Where the record is.
    pub fn record_path(&self) -> &Path {
        &self.record
    }

    /// The targets' names.
    pub fn names(&self) -> Vec<String> {
        self.deliveries.names()
    }

    /// Retention on the targets: see [`esg_delivery::Deliveries::purge`].
    pub async fn purge(
        &self,
        doomed: &(dyn Fn(&str) -> bool + Sync),
        dry_run: bool,
    ) -> Vec<(String, String, Result<(), esg_delivery::DeliveryError>)> {
        self.deliveries.purge(doomed, dry_run).await
    }

    /// Pre-flight: the targets that cannot be reached or written now, with why.
    pub async fn check(&self) -> Vec<(String, esg_delivery::DeliveryError)> {
        self.deliveries.check().await
    }

    /// After the assembler wrote a run's files: send them, alert when a target gives up.
    pub async fn run_ended(self: &Arc<Self>, ended: &RunEnded, checkpoint: Option<PathBuf>) {
        let Some(report) = &ended.report else {
            return;
        };
        let mut files = vec![
            report.errors.clone(),
            report.summary_path.clone(),
            report.summary_html.clone(),
        ];
        let parquet =
            esg_assembler::parquet::path(&self.output_dir, report.business_date, &self.protection);
        if parquet.exists() {
            files.push(parquet);
        }
        // The audit checkpoint signed after the run: the firm's copy pins the log.
        files.extend(checkpoint);
        // The ratings file last: its arrival says the day's files are all there.
        files.push(report.csv.clone());
        let run = RunRef {
            run_id: report.run_id.clone(),
            business_date: report.business_date,
        };
        self.send(&run, &files, ended.deadline, None).await;
    }

    /// Sends `files` to every target (or the one at `only`): a first round of a few attempts;
    /// a target still failing raises `delivery_failed` at once (someone can fix it before the
    /// deadline) and is tried again with backoff until `deadline` (in the background for a
    /// service); when it then takes the files the date's alerts are resolved, when it does not
    /// the alert goes out again. A newer delivery of the same date ends these retries.
    async fn send(
        self: &Arc<Self>,
        run: &RunRef,
        files: &[PathBuf],
        deadline: DateTime<Utc>,
        only: Option<usize>,
    ) -> Report {
        let token = self.stop.child_token();
        let older = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.business_date, token.clone());
        if let Some(older) = older {
            older.cancel();
        }
        let first = self
            .deliveries
            .deliver(run, files, Utc::now(), only, &token)
            .await;
        self.audit.delivered(&run.run_id, &first);
        if first.is_complete() {
            self.resolve(run).await;
            return first;
        }
        let retry = deadline > Utc::now() && !token.is_cancelled();
        self.alert(run, &first, retry.then_some(deadline)).await;
        if !retry {
            return first;
        }
        if self.background {
            let (this, run, files) = (self.clone(), run.clone(), files.to_vec());
            let failed = first.clone();
            tokio::spawn(async move { this.retry(&run, failed, &files, deadline, token).await });
            return first;
        }
        self.retry(run, first, files, deadline, token).await
    }

    /// The retries of the targets that failed the first round (`first`), until `deadline`
    /// or `token`.
    async fn retry(
        &self,
        run: &RunRef,
        first: Report,
        files: &[PathBuf],
        deadline: DateTime<Utc>,
        token: CancellationToken,
    ) -> Report {
        let mut report = Report {
            delivered: first.delivered,
            failed: Vec::new(),
        };
        let mut again = Vec::new();
        for failed in first.failed {
            match self.deliveries.index_of(&failed.target) {
                Some(index) if failed.error.retryable => {
                    let pending: Vec<PathBuf> = files
                        .iter()
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| failed.files.iter().any(|f| f == n))
                        })
                        .cloned()
                        .collect();
                    again.push((index, pending));
                }
                _ => report.failed.push(failed),
            }
        }
        let retries = again.iter().map(|(index, pending)| {
            self.deliveries
                .deliver(run, pending, deadline, Some(*index), &token)
        });
        for outcome in futures::future::join_all(retries).await {
            self.audit.delivered(&run.run_id, &outcome);
            report.delivered.extend(outcome.delivered);
            report.failed.extend(outcome.failed);
        }
        if report.is_complete() {
            self.resolve(run).await;
        } else if token.is_cancelled() && !self.stop.is_cancelled() {
            tracing::info!(run_id = %run.run_id, "a newer delivery of the date took over from these retries");
        } else {
            self.alert(run, &report, None).await;
        }
        report
    }

    /// The files of `business_date` in the output directory, ratings file last; an error when
    /// the day has no ratings file.
    pub fn files_of(&self, business_date: NaiveDate) -> Result<Vec<PathBuf>> {
        let names = file_names(business_date);
        let path = |name: &str| self.output_dir.join(self.protection.file_name(name));
        let csv = path(&names.csv);
        if !csv.exists() {
            return Err(Refused::Usage(format!(
                "{} does not exist: there is no file of {business_date} to deliver (run the day first)",
                csv.display()
            ))
            .into());
        }
        let mut files: Vec<PathBuf> = [&names.errors, &names.summary_json, &names.summary_html]
            .into_iter()
            .map(|n| path(n))
            .chain([esg_assembler::parquet::path(
                &self.output_dir,
                business_date,
                &self.protection,
            )])
            .filter(|p| p.exists())
            .collect();
        files.push(csv);
        Ok(files)
    }

    /// `esg deliver`: sends the day's files to every target (or the one named `only`) again,
    /// retrying until `deadline`. Alerts as a run's delivery does.
    pub async fn deliver_date(
        self: &Arc<Self>,
        business_date: NaiveDate,
        only: Option<&str>,
        deadline: DateTime<Utc>,
    ) -> Result<Report> {
        let index = match only {
            None => None,
            Some(name) => Some(self.deliveries.index_of(name).ok_or_else(|| {
                Refused::Usage(format!(
                    "there is no delivery target {name:?}; the targets are: {}",
                    self.names().join(", ")
                ))
            })?),
        };
        let files = self.files_of(business_date)?;
        let run = RunRef {
            run_id: format!("{business_date}.deliver"),
            business_date,
        };
        Ok(self.send(&run, &files, deadline, index).await)
    }

    /// Sends the files of `business_date` that some target has not taken yet (by the record),
    /// retrying for up to ten minutes; alerts when a target gives up. Logs its own trouble.
    pub async fn finish(self: &Arc<Self>, business_date: NaiveDate) {
        let files = match self.undelivered(business_date) {
            Ok(files) if files.is_empty() => return,
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(%business_date, error = %format!("{e:#}"), "cannot tell whether the day's files were delivered");
                return;
            }
        };
        tracing::info!(
            %business_date,
            files = files.len(),
            "files of the day not yet delivered to every target: delivering them"
        );
        let run = RunRef {
            run_id: format!("{business_date}.deliver"),
            business_date,
        };
        let deadline = Utc::now() + chrono::Duration::minutes(10);
        self.send(&run, &files, deadline, None).await;
    }

    /// The files of `business_date` that some target has not taken as they are now (by the
    /// record: no `delivered` line with the file's current checksum), ratings file last.
    pub fn undelivered(&self, business_date: NaiveDate) -> Result<Vec<PathBuf>> {
        let files = self.files_of(business_date)?;
        let record = Record::read(&self.record)
            .with_context(|| format!("reading the delivery record {}", self.record.display()))?;
        let names = self.names();
        let mut missing = Vec::new();
        for path in files {
            let local = esg_delivery::LocalFile::read(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let taken_by_all = names.iter().all(|target| {
                record.iter().any(|e| {
                    e.outcome == "delivered"
                        && &e.target == target
                        && e.file == local.name
                        && e.sha256.as_deref() == Some(local.sha256.as_str())
                })
            });
            if !taken_by_all {
                missing.push(path);
            }
        }
        Ok(missing)
    }

    /// The pre-flight of run `run_id` found targets it cannot reach (`(check, detail)`): the
    /// alert goes out now, before the files are due, and is resolved when they are delivered.
    pub async fn preflight_failed(
        &self,
        run_id: &str,
        business_date: NaiveDate,
        failures: &[(String, String)],
    ) {
        let alert = Alert::delivery_failed(run_id, business_date, failures, Utc::now())
            .with_detail(
                "found_by",
                "pre-flight: the run goes on, the files are delivered when the target is back",
            );
        self.open(business_date, run_id);
        self.alerts.send_alert(alert).await;
    }

    fn open(&self, business_date: NaiveDate, run_id: &str) {
        self.open_alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((business_date, run_id.to_owned()));
    }

    /// Every target took the files of `run`'s date: resolves the date's open `delivery_failed`
    /// alerts (this run's, and those of earlier runs of the date it superseded).
    async fn resolve(&self, run: &RunRef) {
        let open: Vec<String> = {
            let mut alerts = self.open_alerts.lock().unwrap_or_else(|p| p.into_inner());
            let of_date: Vec<(NaiveDate, String)> = alerts
                .iter()
                .filter(|(d, _)| *d == run.business_date)
                .cloned()
                .collect();
            for key in &of_date {
                alerts.remove(key);
            }
            of_date.into_iter().map(|(_, id)| id).collect()
        };
        for run_id in open {
            let resolution = esg_alerts::Resolution::new(
                esg_alerts::AlertKind::DeliveryFailed,
                run_id.clone(),
                run.business_date,
                &format!(
                    "run {}: every target took the files of {}",
                    run.run_id, run.business_date
                ),
                Utc::now(),
            );
            self.alerts.resolve(resolution).await;
        }
    }

    /// `delivery_failed` for the targets of `report` that failed; `retrying_until`: they are
    /// being tried again until then.
    async fn alert(&self, run: &RunRef, report: &Report, retrying_until: Option<DateTime<Utc>>) {
        if report.is_complete() {
            return;
        }
        let failures: Vec<(String, String)> = report
            .failed
            .iter()
            .map(|f| (f.target.clone(), f.to_string()))
            .collect();
        let mut alert =
            Alert::delivery_failed(&run.run_id, run.business_date, &failures, Utc::now())
                .with_detail("record", self.record.display())
                .with_detail(
                    "local_files",
                    format!("{} (untouched)", self.output_dir.display()),
                );
        self.open(run.business_date, &run.run_id);
        alert = match retrying_until {
            Some(until) => alert.with_detail("retrying_until", until.to_rfc3339()),
            None => alert.with_detail(
                "next_step",
                format!("esg deliver --business-date {}", run.business_date),
            ),
        };
        self.alerts.send_alert(alert).await;
    }
}

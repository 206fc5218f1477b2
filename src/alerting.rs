//! When the job raises an alert, from what a run came to: a critical error that ended it, a
//! deadline that came first, too many failed accounts, a start later than the schedule's time
//! plus the grace period. Sending is `esg_alerts::Alerter`'s: a channel that is down is logged
//! and counted (`esg_alert_failures_total{channel}`) and never fails the run.

use crate::config::Config;
use chrono::{DateTime, NaiveDate, Utc};
use esg_alerts::{Alert, AlertReport, Alerter};
use esg_assembler::RunReport;
use esg_schemas::RunOutcome;

/// The job's alerter, built from `[alerts]` (checked when the configuration was loaded).
pub struct Alerts {
    alerter: Alerter,
    tz: chrono_tz::Tz,
}

impl Alerts {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let alerter =
            Alerter::new(config.alerts.clone()).map_err(|e| anyhow::anyhow!("alerts: {e}"))?;
        let tz = config.time_zone().unwrap_or(chrono_tz::America::Chicago);
        Ok(Alerts { alerter, tz })
    }

    /// The alerter's configuration.
    pub fn config(&self) -> &esg_alerts::AlertsConfig {
        self.alerter.config()
    }

    async fn send(&self, alert: Alert) {
        let report = self.alerter.send(&alert).await;
        count(&report, alert.kind.as_str());
    }

    /// A run ended with an error before writing its file.
    pub async fn critical_error(
        &self,
        run_id: &str,
        business_date: NaiveDate,
        error: &anyhow::Error,
    ) {
        let text = format!("{error:#}");
        self.send(Alert::critical_error(
            run_id,
            business_date,
            &text,
            Utc::now(),
        ))
        .await;
    }

    /// A run wrote its file: the deadline and the failure ratio.
    pub async fn run_written(&self, report: &RunReport, deadline: Option<DateTime<Utc>>) {
        let s = &report.summary;
        self.run_ended(RunEnd {
            run_id: &report.run_id,
            business_date: report.business_date,
            timed_out: report.outcome == RunOutcome::TimedOut,
            deadline: deadline.unwrap_or_else(Utc::now),
            not_scored: s.error_codes.get("DEADLINE").copied().unwrap_or(0),
            accounts: s.accounts,
            failed: s.failed,
            file: report.csv.display().to_string(),
        })
        .await;
    }

    /// Kafka mode: the assembler announced a run's end (`esg producer --wait` heard it).
    pub async fn run_completed(&self, done: &esg_schemas::RunCompleted) {
        let (failed, rows) = (done.failed.max(0) as u64, done.rows.max(0) as u64);
        self.run_ended(RunEnd {
            run_id: &done.run_id,
            business_date: done.business_date,
            timed_out: done.outcome == RunOutcome::TimedOut,
            deadline: done.completed_at,
            not_scored: failed,
            accounts: rows,
            failed,
            file: done.output_file.clone(),
        })
        .await;
    }

    async fn run_ended(&self, end: RunEnd<'_>) {
        if end.timed_out {
            self.send(Alert::over_window(
                end.run_id,
                end.business_date,
                &end.deadline.with_timezone(&self.tz),
                end.not_scored,
                end.accounts,
                Utc::now(),
            ))
            .await;
        }
        if self
            .config()
            .failure_ratio_exceeded(end.failed, end.accounts)
        {
            self.send(
                Alert::failure_ratio(
                    end.run_id,
                    end.business_date,
                    end.failed,
                    end.accounts,
                    self.config().failure_ratio_threshold,
                    Utc::now(),
                )
                .with_detail("file", end.file),
            )
            .await;
        }
    }

    /// The scheduled run of `business_date` starts later than its time plus the grace period
    /// (the process was down at 05:00, say).
    pub async fn started_late(&self, business_date: NaiveDate, start_by: DateTime<Utc>) {
        let start_by = start_by.with_timezone(&self.tz);
        self.send(Alert::missed_start(
            &business_date.to_string(),
            business_date,
            &start_by,
            Utc::now(),
        ))
        .await;
    }
}

/// What the alerts of a run's end are decided on.
struct RunEnd<'a> {
    run_id: &'a str,
    business_date: NaiveDate,
    timed_out: bool,
    deadline: DateTime<Utc>,
    /// Accounts the deadline left unscored.
    not_scored: u64,
    accounts: u64,
    failed: u64,
    file: String,
}

fn count(report: &AlertReport, kind: &'static str) {
    for channel in &report.sent {
        metrics::counter!("esg_alerts_sent_total", "channel" => channel.as_str(), "kind" => kind)
            .increment(1);
    }
    for (channel, _) in &report.failed {
        metrics::counter!("esg_alert_failures_total", "channel" => channel.as_str()).increment(1);
    }
}

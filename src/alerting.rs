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
        if report.outcome == RunOutcome::TimedOut {
            let not_scored = s.error_codes.get("DEADLINE").copied().unwrap_or(0);
            let deadline = deadline.unwrap_or_else(Utc::now).with_timezone(&self.tz);
            self.send(Alert::over_window(
                &report.run_id,
                report.business_date,
                &deadline,
                not_scored,
                s.accounts,
                Utc::now(),
            ))
            .await;
        }
        if self.config().failure_ratio_exceeded(s.failed, s.accounts) {
            self.send(
                Alert::failure_ratio(
                    &report.run_id,
                    report.business_date,
                    s.failed,
                    s.accounts,
                    self.config().failure_ratio_threshold,
                    Utc::now(),
                )
                .with_detail("file", report.csv.display()),
            )
            .await;
        }
    }

    /// Kafka mode: the assembler announced a run's end (`esg producer --wait` heard it).
    pub async fn run_completed(&self, done: &esg_schemas::RunCompleted) {
        let (failed, rows) = (done.failed.max(0) as u64, done.rows.max(0) as u64);
        if done.outcome == RunOutcome::TimedOut {
            let deadline = done.completed_at.with_timezone(&self.tz);
            self.send(Alert::over_window(
                &done.run_id,
                done.business_date,
                &deadline,
                failed,
                rows,
                Utc::now(),
            ))
            .await;
        }
        if self.config().failure_ratio_exceeded(failed, rows) {
            self.send(
                Alert::failure_ratio(
                    &done.run_id,
                    done.business_date,
                    failed,
                    rows,
                    self.config().failure_ratio_threshold,
                    Utc::now(),
                )
                .with_detail("file", &done.output_file),
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

fn count(report: &AlertReport, kind: &'static str) {
    for channel in &report.sent {
        metrics::counter!("esg_alerts_sent_total", "channel" => channel.as_str(), "kind" => kind)
            .increment(1);
    }
    for (channel, _) in &report.failed {
        metrics::counter!("esg_alert_failures_total", "channel" => channel.as_str()).increment(1);
    }
}

//! When the job raises an alert, from what a run came to: a critical error that ended it, a
//! deadline that came first, too many failed accounts, a start later than the schedule's time
//! plus the grace period. Sending is `esg_alerts::Alerter`'s: a channel that is down is logged
//! and counted (`esg_alert_failures_total{channel}`) and never fails the run.

use crate::auditing::Audit;
use crate::config::Config;
use crate::delivering::Delivery;
use chrono::{DateTime, NaiveDate, Utc};
use esg_alerts::{Alert, AlertKind, AlertReport, Alerter, Resolution};
use esg_assembler::encryption::Protection;
use esg_assembler::{RunEndHook, RunEnded};
use esg_bus::runs::RunBook;
use esg_bus::EventBus;
use esg_schemas::RunOutcome;
use std::sync::Arc;

/// The job's alerter, built from `[alerts]` (checked when the configuration was loaded).
pub struct Alerts {
    alerter: Alerter,
    tz: chrono_tz::Tz,
}

impl Alerts {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let alerter =
            Alerter::new(config.alerts.clone()).map_err(|e| anyhow::anyhow!("alerts: {e}"))?;
        let tz = config.time_zone();
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

    /// Resolves the alert of `resolution`'s kind and run on every channel that wants the kind.
    pub async fn resolve(&self, resolution: Resolution) {
        let report = self.alerter.resolve(&resolution).await;
        count(&report, resolution.kind.as_str());
    }

    /// Sends `alert` on every channel that wants its kind.
    pub async fn send_alert(&self, alert: Alert) {
        self.send(alert).await;
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

    /// The hook the assembler calls for every run it ends: the alerts of a run's end are
    /// decided there, on either transport; then the run's files are delivered (`delivery`).
    pub fn run_end_hook(
        self: &Arc<Self>,
        bus: EventBus,
        audit: Arc<Audit>,
        protection: Protection,
        delivery: Option<Arc<Delivery>>,
    ) -> RunEndHook {
        let alerts = self.clone();
        Arc::new(move |ended: RunEnded| {
            let (alerts, bus, audit, protection, delivery) = (
                alerts.clone(),
                bus.clone(),
                audit.clone(),
                protection.clone(),
                delivery.clone(),
            );
            Box::pin(async move {
                alerts.run_ended(&bus, &ended).await;
                // The audit entries of the run and its signed checkpoint, then the delivery of
                // the files with that checkpoint.
                let checkpoint = tokio::task::spawn_blocking({
                    let (audit, ended) = (audit.clone(), ended.clone());
                    move || audit.run_ended(&ended, &protection)
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "audit task");
                    None
                });
                if let Some(delivery) = delivery {
                    delivery.run_ended(&ended, checkpoint).await;
                }
            })
        })
    }

    /// A run ended: the deadline that came first, and the failure ratio of the day's file.
    ///
    /// The failure-ratio alert is one incident per business date (its run id is the date, so
    /// its PagerDuty `dedup_key` is `esg/<date>/failure_ratio` whichever run of the date raised
    /// it): a re-run that brings the day's file back under the threshold resolves it, with a
    /// resolution email.
    pub async fn run_ended(&self, bus: &EventBus, ended: &RunEnded) {
        let done = &ended.completed;
        let date = done.business_date;
        if done.outcome == RunOutcome::TimedOut {
            self.send(Alert::over_window(
                &done.run_id,
                date,
                &ended.deadline.with_timezone(&self.tz),
                ended.not_scored,
                (done.rows.max(0) as u64).max(ended.not_scored),
                Utc::now(),
            ))
            .await;
        }
        if ended.report.is_none() && done.output_file.is_empty() {
            return;
        }
        let (failed, rows) = (done.failed.max(0) as u64, done.rows.max(0) as u64);
        let incident = date.to_string();
        if self.config().failure_ratio_exceeded(failed, rows) {
            self.send(
                Alert::failure_ratio(
                    &incident,
                    date,
                    failed,
                    rows,
                    self.config().failure_ratio_threshold,
                    Utc::now(),
                )
                .with_detail("run_id", &done.run_id)
                .with_detail("file", &done.output_file),
            )
            .await;
            return;
        }
        // Under the threshold: resolve the date's incident if the file stood above it before.
        let before = match RunBook::read(bus).await {
            Ok(book) => book
                .of_date(date)
                .into_iter()
                .filter(|r| r.run_id != done.run_id && r.delivered())
                .filter_map(|r| r.completed.clone())
                .filter(|c| c.completed_at <= done.completed_at)
                .max_by_key(|c| c.completed_at),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the triggers topic to decide a resolution");
                None
            }
        };
        let was_over = before.is_some_and(|c| {
            self.config()
                .failure_ratio_exceeded(c.failed.max(0) as u64, c.rows.max(0) as u64)
        });
        if was_over {
            let resolution = Resolution::new(
                AlertKind::FailureRatio,
                incident,
                date,
                &format!(
                    "run {}: {failed} of {rows} accounts failed, under the threshold again",
                    done.run_id
                ),
                Utc::now(),
            );
            let report = self.alerter.resolve(&resolution).await;
            count(&report, AlertKind::FailureRatio.as_str());
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
        metrics::counter!(esg_metrics::ALERTS_SENT_TOTAL, "channel" => channel.as_str(), "kind" => kind)
            .increment(1);
    }
    for (channel, _) in &report.failed {
        metrics::counter!(esg_metrics::ALERT_FAILURES_TOTAL, "channel" => channel.as_str())
            .increment(1);
    }
}

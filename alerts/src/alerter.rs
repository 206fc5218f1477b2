//! [`Alerter`]: sends one alert or resolution to every enabled channel at once and tells the
//! caller what reached whom, without ever failing the caller.
//!
//! Delivery guarantee: at most two attempts per channel and event (one retry after
//! `retry_backoff`, only for failures that may pass: connection refused, timeouts, SMTP 4xx,
//! HTTP 408/429/5xx), each attempt bounded by the channel's `timeout`, the channels in parallel.
//! So [`Alerter::send`] returns within `2 × max(timeout) + retry_backoff` whatever the channels
//! do. Limit: an alert that both attempts fail to deliver is lost for that channel; it is logged
//! (`alert not delivered`, level error) and counted, and the other channels and the Prometheus
//! rules in `ops/` (for a job that cannot speak at all) remain. A retry can deliver a message
//! twice when the first attempt reached the server but its answer did not come back: PagerDuty
//! folds the two by `dedup_key`; an email or a webhook call then arrives twice.
//!
//! Logs carry `channel`, `kind`, `run_id`, `action` (`trigger`/`resolve`), `attempt` and the
//! error; never a secret, a webhook URL or an account name.

use crate::alert::{Alert, Event, Resolution};
use crate::channel::{AttemptError, Channel};
use crate::config::{AlertConfigError, AlertsConfig};
use crate::email::EmailChannel;
use crate::pagerduty::PagerDutyChannel;
use crate::webhook::WebhookChannel;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Attempts per channel and event: the first and one retry.
pub const MAX_ATTEMPTS: u32 = 2;

/// What one [`Alerter::send`] or [`Alerter::resolve`] achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertReport {
    /// The channels that accepted the event.
    pub sent: Vec<Channel>,
    /// The channels that did not, with the last error (no secret, no webhook URL).
    pub failed: Vec<(Channel, String)>,
}

impl AlertReport {
    /// True when some channel accepted the event.
    pub fn delivered(&self) -> bool {
        !self.sent.is_empty()
    }
}

/// Cumulative counts of one channel since the [`Alerter`] was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Events delivered (alerts and resolutions).
    pub sent: u64,
    /// Events not delivered after every attempt.
    pub failed: u64,
    /// Retries made (second attempts), whatever their outcome.
    pub retried: u64,
}

/// Cumulative counts per channel. Exported by the binary as `esg_alerts_sent_total`,
/// `esg_alerts_failed_total` and `esg_alerts_retries_total` with the label `channel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// The email channel.
    pub email: ChannelStats,
    /// The PagerDuty channel.
    pub pagerduty: ChannelStats,
    /// The webhook channel.
    pub webhook: ChannelStats,
}

impl AlertStats {
    /// The counts of `channel`.
    pub fn get(&self, channel: Channel) -> ChannelStats {
        match channel {
            Channel::Email => self.email,
            Channel::PagerDuty => self.pagerduty,
            Channel::Webhook => self.webhook,
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    retried: [AtomicU64; 3],
}

fn slot(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::PagerDuty => 1,
        Channel::Webhook => 2,
    }
}

/// Sends alerts of the job to email, PagerDuty and a webhook, as configured.
pub struct Alerter {
    config: AlertsConfig,
    email: Option<EmailChannel>,
    pagerduty: Option<PagerDutyChannel>,
    webhook: Option<WebhookChannel>,
    http: Option<reqwest::Client>,
    counters: Counters,
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerter")
            .field("channels", &self.channels())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Alerter {
    /// Checks `config` (addresses parse, URLs are http(s), keys in range, the CA file reads) and
    /// builds the enabled channels. Nothing is sent or connected to here.
    pub fn new(config: AlertsConfig) -> Result<Alerter, AlertConfigError> {
        config.check_common()?;
        let email = match &config.email {
            Some(email) if email.enabled => Some(EmailChannel::new(email)?),
            _ => None,
        };
        let pagerduty = match &config.pagerduty {
            Some(pagerduty) if pagerduty.enabled => Some(PagerDutyChannel::new(pagerduty)?),
            _ => None,
        };
        let webhook = match &config.webhook {
            Some(webhook) if webhook.enabled => Some(WebhookChannel::new(webhook)?),
            _ => None,
        };
        let http = if pagerduty.is_some() || webhook.is_some() {
            Some(crate::http::client()?)
        } else {
            None
        };
        let alerter = Alerter {
            config,
            email,
            pagerduty,
            webhook,
            http,
            counters: Counters::default(),
        };
        if alerter.channels().is_empty() {
            tracing::warn!("no alert channel is enabled: alerts will only be logged");
        }
        Ok(alerter)
    }

    /// The configuration it was built from (secrets stay hidden in `Debug`).
    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// The enabled channels.
    pub fn channels(&self) -> Vec<Channel> {
        let mut channels = Vec::new();
        if self.email.is_some() {
            channels.push(Channel::Email);
        }
        if self.pagerduty.is_some() {
            channels.push(Channel::PagerDuty);
        }
        if self.webhook.is_some() {
            channels.push(Channel::Webhook);
        }
        channels
    }

    /// Cumulative counts per channel.
    pub fn stats(&self) -> AlertStats {
        let read = |channel: Channel| ChannelStats {
            sent: self.counters.sent[slot(channel)].load(Ordering::Relaxed),
            failed: self.counters.failed[slot(channel)].load(Ordering::Relaxed),
            retried: self.counters.retried[slot(channel)].load(Ordering::Relaxed),
        };
        AlertStats {
            email: read(Channel::Email),
            pagerduty: read(Channel::PagerDuty),
            webhook: read(Channel::Webhook),
        }
    }

    /// Sends `alert` to every enabled channel that takes its kind (email: the routed audiences;
    /// PagerDuty: the configured kinds; webhook: all). Never fails: see [`AlertReport`].
    pub async fn send(&self, alert: &Alert) -> AlertReport {
        self.dispatch(Event::Fire(alert)).await
    }

    /// Tells every channel that would have taken the alert of this kind that it cleared
    /// (PagerDuty: `resolve` with the same `dedup_key`). Never fails: see [`AlertReport`].
    pub async fn resolve(&self, resolution: &Resolution) -> AlertReport {
        self.dispatch(Event::Resolve(resolution)).await
    }

    async fn dispatch(&self, event: Event<'_>) -> AlertReport {
        let kind = event.kind();
        let email = async {
            match &self.email {
                Some(channel) if channel.wants(kind) => Some(
                    self.deliver(Channel::Email, &event, channel.timeout, || {
                        channel.deliver(&event)
                    })
                    .await,
                ),
                _ => None,
            }
        };
        let pagerduty = async {
            match (&self.pagerduty, &self.http) {
                (Some(channel), Some(http)) if channel.wants(kind) => Some(
                    self.deliver(Channel::PagerDuty, &event, channel.timeout, || {
                        channel.deliver(http, &event)
                    })
                    .await,
                ),
                _ => None,
            }
        };
        let webhook = async {
            match (&self.webhook, &self.http) {
                (Some(channel), Some(http)) => Some(
                    self.deliver(Channel::Webhook, &event, channel.timeout, || {
                        channel.deliver(http, &event)
                    })
                    .await,
                ),
                _ => None,
            }
        };
        let (email, pagerduty, webhook) = tokio::join!(email, pagerduty, webhook);

        let mut report = AlertReport::default();
        for (channel, outcome) in [
            (Channel::Email, email),
            (Channel::PagerDuty, pagerduty),
            (Channel::Webhook, webhook),
        ] {
            match outcome {
                Some(Ok(())) => report.sent.push(channel),
                Some(Err(error)) => report.failed.push((channel, error)),
                None => {}
            }
        }
        if report.sent.is_empty() && report.failed.is_empty() {
            tracing::warn!(
                kind = %kind,
                run_id = %event.run_id(),
                action = event.action(),
                summary = %event.summary(),
                "alert went to no channel"
            );
        }
        report
    }

    /// Up to [`MAX_ATTEMPTS`] attempts of `attempt`, each bounded by `timeout`.
    async fn deliver<F, Fut>(
        &self,
        channel: Channel,
        event: &Event<'_>,
        timeout: Duration,
        mut attempt: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), AttemptError>>,
    {
        let mut number = 1;
        loop {
            let outcome = match tokio::time::timeout(timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(AttemptError::retryable(format!(
                    "no answer within {timeout:?}"
                ))),
            };
            match outcome {
                Ok(()) => {
                    self.on_delivered(channel, event, number);
                    return Ok(());
                }
                Err(error) if error.retryable && number < MAX_ATTEMPTS => {
                    self.on_retry(channel, event, number, &error);
                    tokio::time::sleep(self.config.retry_backoff).await;
                    number += 1;
                }
                Err(error) => {
                    self.on_failed(channel, event, number, &error);
                    return Err(format!(
                        "{} (after {number} attempt{})",
                        error.message,
                        if number == 1 { "" } else { "s" }
                    ));
                }
            }
        }
    }

    fn on_delivered(&self, channel: Channel, event: &Event<'_>, attempt: u32) {
        self.counters.sent[slot(channel)].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            channel = %channel,
            kind = %event.kind(),
            run_id = %event.run_id(),
            action = event.action(),
            attempt,
            "alert delivered"
        );
    }

    fn on_retry(&self, channel: Channel, event: &Event<'_>, attempt: u32, error: &AttemptError) {
        self.counters.retried[slot(channel)].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            channel = %channel,
            kind = %event.kind(),
            run_id = %event.run_id(),
            action = event.action(),
            attempt,
            error = %error,
            backoff_ms = u64::try_from(self.config.retry_backoff.as_millis()).unwrap_or(u64::MAX),
            "alert delivery failed, retrying"
        );
    }

    fn on_failed(&self, channel: Channel, event: &Event<'_>, attempt: u32, error: &AttemptError) {
        self.counters.failed[slot(channel)].fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            channel = %channel,
            kind = %event.kind(),
            run_id = %event.run_id(),
            action = event.action(),
            attempt,
            retryable = error.retryable,
            error = %error,
            "alert not delivered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AlertKind;
    use chrono::{NaiveDate, Utc};

    #[tokio::test]
    async fn no_channel_means_an_empty_report() {
        let alerter = Alerter::new(AlertsConfig::default()).expect("alerter");
        assert!(alerter.channels().is_empty());
        let alert = Alert::new(
            AlertKind::MissedStart,
            "2026-11-23",
            NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
            "run 2026-11-23 did not start",
            Utc::now(),
        );
        let report = alerter.send(&alert).await;
        assert_eq!(report, AlertReport::default());
        assert!(!report.delivered());
        assert_eq!(alerter.stats(), AlertStats::default());
    }

    #[tokio::test]
    async fn retries_once_only_what_may_pass_and_counts() {
        let config = AlertsConfig {
            retry_backoff: Duration::from_millis(1),
            ..AlertsConfig::default()
        };
        let alerter = Alerter::new(config).expect("alerter");
        let alert = Alert::new(
            AlertKind::CriticalError,
            "r1",
            NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
            "x",
            Utc::now(),
        );
        let event = Event::Fire(&alert);
        let timeout = Duration::from_secs(1);

        let mut calls = 0;
        let result = alerter
            .deliver(Channel::Webhook, &event, timeout, || {
                calls += 1;
                async { Err(AttemptError::retryable("refused")) }
            })
            .await;
        assert_eq!(calls, 2);
        assert_eq!(result, Err("refused (after 2 attempts)".to_owned()));

        let mut calls = 0;
        let result = alerter
            .deliver(Channel::Webhook, &event, timeout, || {
                calls += 1;
                async { Err(AttemptError::permanent("HTTP 400")) }
            })
            .await;
        assert_eq!(calls, 1);
        assert_eq!(result, Err("HTTP 400 (after 1 attempt)".to_owned()));

        let mut calls = 0;
        let result = alerter
            .deliver(Channel::Email, &event, timeout, || {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Err(AttemptError::retryable("421 busy"))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert_eq!((calls, result), (2, Ok(())));

        let stats = alerter.stats();
        assert_eq!(
            stats.webhook,
            ChannelStats {
                sent: 0,
                failed: 2,
                retried: 1
            }
        );
        assert_eq!(
            stats.get(Channel::Email),
            ChannelStats {
                sent: 1,
                failed: 0,
                retried: 1
            }
        );
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_is_cut_by_the_timeout() {
        let config = AlertsConfig {
            retry_backoff: Duration::from_millis(1),
            ..AlertsConfig::default()
        };
        let alerter = Alerter::new(config).expect("alerter");
        let alert = Alert::new(
            AlertKind::OverWindow,
            "r1",
            NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
            "x",
            Utc::now(),
        );
        let started = std::time::Instant::now();
        let result = alerter
            .deliver(
                Channel::PagerDuty,
                &Event::Fire(&alert),
                Duration::from_millis(50),
                std::future::pending::<Result<(), AttemptError>>,
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        let error = result.expect_err("timed out");
        assert!(error.starts_with("no answer within 50ms"), "{error}");
        assert_eq!(alerter.stats().pagerduty.failed, 1);
    }
}

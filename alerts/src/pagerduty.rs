//! The PagerDuty channel: Events API v2 (`POST /v2/enqueue`), `trigger` for an alert and
//! `resolve` for its resolution.
//!
//! De-duplication: every event of one run and kind carries `dedup_key = esg/<run_id>/<kind>`, so
//! PagerDuty folds a re-sent alert into the open incident (a retry that did reach PagerDuty,
//! or the job raising the same condition twice), and the `resolve` closes exactly that incident.
//! The key is cut to PagerDuty's 255 characters by shortening the run id, never the kind.

use crate::alert::{one_line, Event, MAX_SUMMARY_CHARS};
use crate::channel::AttemptError;
use crate::config::Secret;
use crate::config::{
    check_duration, check_http_url, AlertConfigError, PagerDutyConfig, MAX_TIMEOUT,
};
use crate::AlertKind;
use chrono::SecondsFormat;
use serde_json::json;
use std::time::Duration;

/// `payload.component`: the job.
pub const COMPONENT: &str = "esg";

/// `payload.group`: the job's daily ratings run.
pub const GROUP: &str = "daily-ratings";

/// Longest `dedup_key` PagerDuty accepts, in characters.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;

/// Length of a routing (integration) key.
pub const ROUTING_KEY_CHARS: usize = 32;

/// A configured, validated PagerDuty channel.
pub(crate) struct PagerDutyChannel {
    url: reqwest::Url,
    routing_key: Secret,
    kinds: Vec<AlertKind>,
    source: String,
    pub(crate) timeout: Duration,
}

impl PagerDutyChannel {
    /// Checks `config`: a 32-character alphanumeric routing key, an http(s) URL, some kinds.
    pub(crate) fn new(config: &PagerDutyConfig) -> Result<Self, AlertConfigError> {
        let key = config.routing_key.expose();
        if key.chars().count() != ROUTING_KEY_CHARS
            || !key.chars().all(|c| c.is_ascii_alphanumeric())
        {
            // The key itself is never quoted.
            return Err(AlertConfigError::invalid(
                "alerts.pagerduty.routing_key",
                format!(
                    "must be the {ROUTING_KEY_CHARS}-character integration key (letters and digits); it has {} characters",
                    key.chars().count()
                ),
            ));
        }
        let url = check_http_url("alerts.pagerduty.url", &config.url)?;
        check_duration("alerts.pagerduty.timeout", config.timeout, MAX_TIMEOUT)?;
        if config.kinds.is_empty() {
            return Err(AlertConfigError::invalid(
                "alerts.pagerduty.kinds",
                "is empty: nothing would page; set `enabled = false` instead",
            ));
        }
        let source = match &config.source {
            Some(source) if !source.trim().is_empty() => one_line(source, 255),
            Some(_) => {
                return Err(AlertConfigError::invalid(
                    "alerts.pagerduty.source",
                    "is empty",
                ))
            }
            None => hostname::get()
                .ok()
                .map(|name| name.to_string_lossy().into_owned())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "esg".to_owned()),
        };
        Ok(PagerDutyChannel {
            url,
            routing_key: config.routing_key.clone(),
            kinds: config.kinds.clone(),
            source,
            timeout: config.timeout,
        })
    }

    /// True when `kind` pages.
    pub(crate) fn wants(&self, kind: AlertKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// One attempt: one POST; delivered on 2xx (PagerDuty answers 202).
    pub(crate) async fn deliver(
        &self,
        client: &reqwest::Client,
        event: &Event<'_>,
    ) -> Result<(), AttemptError> {
        let body = self.event_body(event);
        crate::http::post_json(client, &self.url, None, self.timeout, &body)
            .await
            .map(|_status| ())
    }

    /// The Events API v2 document of `event`.
    pub(crate) fn event_body(&self, event: &Event<'_>) -> serde_json::Value {
        let dedup_key = dedup_key(event.run_id(), event.kind());
        match event {
            Event::Fire(alert) => {
                let mut custom_details = serde_json::Map::new();
                custom_details.insert("run_id".into(), json!(alert.run_id));
                custom_details.insert(
                    "business_date".into(),
                    json!(alert.business_date.to_string()),
                );
                for (key, value) in event.details() {
                    custom_details.insert(key, json!(value));
                }
                json!({
                    "routing_key": self.routing_key.expose(),
                    "event_action": "trigger",
                    "dedup_key": dedup_key,
                    "payload": {
                        "summary": one_line(&alert.summary, MAX_SUMMARY_CHARS),
                        "source": self.source,
                        "severity": alert.kind.severity().as_str(),
                        "timestamp": alert.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                        "component": COMPONENT,
                        "group": GROUP,
                        "class": alert.kind.as_str(),
                        "custom_details": custom_details,
                    },
                })
            }
            Event::Resolve(_) => json!({
                "routing_key": self.routing_key.expose(),
                "event_action": "resolve",
                "dedup_key": dedup_key,
            }),
        }
    }
}

/// `esg/<run_id>/<kind>`, at most [`MAX_DEDUP_KEY_CHARS`] characters (the run id is shortened).
pub fn dedup_key(run_id: &str, kind: AlertKind) -> String {
    let fixed = "esg//".len() + kind.as_str().len();
    let run_id: String = run_id
        .chars()
        .take(MAX_DEDUP_KEY_CHARS.saturating_sub(fixed))
        .collect();
    format!("esg/{run_id}/{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Alert;
    use chrono::{NaiveDate, TimeZone, Utc};

    fn config() -> PagerDutyConfig {
        PagerDutyConfig {
            enabled: true,
            routing_key: Secret::new("0123456789abcdef0123456789ABCDEF"),
            url: crate::config::default_pagerduty_url(),
            timeout: Duration::from_secs(5),
            kinds: AlertKind::ALL.to_vec(),
            source: Some("batch-01.firm.example".into()),
        }
    }

    fn alert() -> Alert {
        Alert::new(
            AlertKind::CriticalError,
            "2026-11-23",
            NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
            "run 2026-11-23 ended on a critical error: disk full",
            Utc.with_ymd_and_hms(2026, 11, 23, 12, 30, 5)
                .single()
                .expect("time"),
        )
        .with_detail("error", "disk full")
    }

    #[test]
    fn trigger_document_follows_events_api_v2() {
        let channel = PagerDutyChannel::new(&config()).expect("channel");
        let alert = alert();
        let body = channel.event_body(&Event::Fire(&alert));
        assert_eq!(body["routing_key"], "0123456789abcdef0123456789ABCDEF");
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], "esg/2026-11-23/critical_error");
        let payload = &body["payload"];
        assert_eq!(
            payload["summary"],
            "run 2026-11-23 ended on a critical error: disk full"
        );
        assert_eq!(payload["source"], "batch-01.firm.example");
        assert_eq!(payload["severity"], "critical");
        assert_eq!(payload["timestamp"], "2026-11-23T12:30:05.000Z");
        assert_eq!(payload["component"], COMPONENT);
        assert_eq!(payload["group"], GROUP);
        assert_eq!(payload["class"], "critical_error");
        assert_eq!(payload["custom_details"]["error"], "disk full");
        assert_eq!(payload["custom_details"]["run_id"], "2026-11-23");
        assert_eq!(payload["custom_details"]["business_date"], "2026-11-23");
    }

    #[test]
    fn resolve_document_has_no_payload_and_the_same_key() {
        let channel = PagerDutyChannel::new(&config()).expect("channel");
        let alert = alert();
        let resolution = alert.resolved("re-run succeeded", alert.at);
        let body = channel.event_body(&Event::Resolve(&resolution));
        assert_eq!(body["event_action"], "resolve");
        assert_eq!(body["dedup_key"], "esg/2026-11-23/critical_error");
        assert!(body.get("payload").is_none());
    }

    #[test]
    fn dedup_key_is_bounded_and_keeps_the_kind() {
        let key = dedup_key(&"r".repeat(1000), AlertKind::FailureRatio);
        assert_eq!(key.chars().count(), MAX_DEDUP_KEY_CHARS);
        assert!(
            key.starts_with("esg/rrr") && key.ends_with("/failure_ratio"),
            "{key}"
        );
        assert_eq!(
            dedup_key("2026-11-23.2", AlertKind::MissedStart),
            "esg/2026-11-23.2/missed_start"
        );
    }

    #[test]
    fn configuration_is_checked_without_quoting_the_key() {
        let mut bad = config();
        bad.routing_key = Secret::new("short-secret-key");
        let err = PagerDutyChannel::new(&bad).err().expect("short key");
        let text = err.to_string();
        assert!(text.contains("alerts.pagerduty.routing_key"), "{text}");
        assert!(!text.contains("short-secret-key"), "{text}");

        let mut bad = config();
        bad.url = "ftp://events.pagerduty.com/v2/enqueue".into();
        let err = PagerDutyChannel::new(&bad).err().expect("ftp");
        assert!(err.to_string().contains("alerts.pagerduty.url"), "{err}");

        let mut bad = config();
        bad.kinds.clear();
        let err = PagerDutyChannel::new(&bad).err().expect("no kinds");
        assert!(err.to_string().contains("alerts.pagerduty.kinds"), "{err}");

        let mut default_source = config();
        default_source.source = None;
        let channel = PagerDutyChannel::new(&default_source).expect("channel");
        assert!(!channel.source.is_empty());
    }
}

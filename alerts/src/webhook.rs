//! The webhook channel: a POST of one JSON document per alert (`status: "firing"`) and per
//! resolution (`status: "resolved"`), optionally with a bearer token, for chat, ticketing or the
//! firm's own monitoring. Every kind goes out. The URL is never logged nor put in an error
//! message: webhook URLs often carry a token of their own.

use crate::alert::Event;
use crate::channel::AttemptError;
use crate::config::{
    check_duration, check_http_url, AlertConfigError, Secret, WebhookConfig, MAX_TIMEOUT,
};
use chrono::SecondsFormat;
use serde_json::json;
use std::time::Duration;

/// A configured, validated webhook channel.
pub(crate) struct WebhookChannel {
    url: reqwest::Url,
    bearer_token: Option<Secret>,
    pub(crate) timeout: Duration,
}

impl WebhookChannel {
    /// Checks `config`: an http(s) URL and a bounded timeout.
    pub(crate) fn new(config: &WebhookConfig) -> Result<Self, AlertConfigError> {
        let url = check_http_url("alerts.webhook.url", &config.url)?;
        check_duration("alerts.webhook.timeout", config.timeout, MAX_TIMEOUT)?;
        if config
            .bearer_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(AlertConfigError::invalid(
                "alerts.webhook.bearer_token",
                "is empty; leave it out for no token",
            ));
        }
        Ok(WebhookChannel {
            url,
            bearer_token: config.bearer_token.clone(),
            timeout: config.timeout,
        })
    }

    /// One attempt: one POST; delivered on 2xx.
    pub(crate) async fn deliver(
        &self,
        client: &reqwest::Client,
        event: &Event<'_>,
    ) -> Result<(), AttemptError> {
        let body = document(event);
        crate::http::post_json(
            client,
            &self.url,
            self.bearer_token.as_ref().map(Secret::expose),
            self.timeout,
            &body,
        )
        .await
        .map(|_status| ())
    }
}

/// `{kind, severity, run_id, business_date, summary, details, at, status}`.
pub(crate) fn document(event: &Event<'_>) -> serde_json::Value {
    let kind = event.kind();
    json!({
        "kind": kind.as_str(),
        "severity": kind.severity().as_str(),
        "run_id": event.run_id(),
        "business_date": event.business_date().to_string(),
        "summary": event.summary(),
        "details": event.details(),
        "at": event.at().to_rfc3339_opts(SecondsFormat::Millis, true),
        "status": match event {
            Event::Fire(_) => "firing",
            Event::Resolve(_) => "resolved",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Alert, AlertKind};
    use chrono::{NaiveDate, TimeZone, Utc};

    #[test]
    fn firing_and_resolved_documents() {
        let alert = Alert::new(
            AlertKind::OverWindow,
            "2026-11-23",
            NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
            "run 2026-11-23 passed its deadline",
            Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0)
                .single()
                .expect("time"),
        )
        .with_detail("not_scored", 12);
        let firing = document(&Event::Fire(&alert));
        assert_eq!(
            firing,
            json!({
                "kind": "over_window",
                "severity": "critical",
                "run_id": "2026-11-23",
                "business_date": "2026-11-23",
                "summary": "run 2026-11-23 passed its deadline",
                "details": {"not_scored": "12"},
                "at": "2026-11-23T15:00:00.000Z",
                "status": "firing",
            })
        );
        let resolution = alert.resolved("re-run scored every account", alert.at);
        let resolved = document(&Event::Resolve(&resolution));
        assert_eq!(resolved["status"], "resolved");
        assert_eq!(resolved["kind"], "over_window");
        assert_eq!(resolved["summary"], "re-run scored every account");
        assert_eq!(resolved["details"], json!({}));
    }

    #[test]
    fn configuration_is_checked() {
        let config = WebhookConfig {
            enabled: true,
            url: "gopher://hooks.firm.example".into(),
            bearer_token: None,
            timeout: Duration::from_secs(1),
        };
        let err = WebhookChannel::new(&config).err().expect("scheme");
        assert!(err.to_string().contains("alerts.webhook.url"), "{err}");
        let config = WebhookConfig {
            url: "https://hooks.firm.example/x".into(),
            timeout: Duration::ZERO,
            ..config
        };
        let err = WebhookChannel::new(&config).err().expect("timeout");
        assert!(err.to_string().contains("alerts.webhook.timeout"), "{err}");
    }
}

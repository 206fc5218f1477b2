//! The webhook against a local receiver, and every channel at once: one that is down does not
//! stop the others nor fail the caller.

use crate::support::{self, SmtpServer, SMTP_PASSWORD, SMTP_USER};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use esg_alerts::{
    AlertKind, Alerter, AlertsConfig, Channel, ChannelStats, EmailConfig, PagerDutyConfig,
    Recipients, Routes, Secret, WebhookConfig,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "webhook-bearer-token";

type Received = Arc<Mutex<Vec<Value>>>;

async fn hook(
    State(received): State<Received>,
    headers: HeaderMap,
    Json(document): Json<Value>,
) -> StatusCode {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if !authorized {
        return StatusCode::UNAUTHORIZED;
    }
    received.lock().expect("lock").push(document);
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (Received, String) {
    let received = Received::default();
    let router = Router::new()
        .route("/hooks/esg", post(hook))
        .with_state(received.clone());
    let addr = support::serve(router).await;
    (received, format!("http://{addr}/hooks/esg"))
}

fn webhook(url: String, token: &str) -> WebhookConfig {
    WebhookConfig {
        enabled: true,
        url,
        bearer_token: Some(Secret::new(token)),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn the_receiver_gets_firing_and_resolved_documents() {
    let (received, url) = start_receiver().await;
    let alerter = Alerter::new(AlertsConfig {
        webhook: Some(webhook(url, TOKEN)),
        ..support::base_config()
    })
    .expect("alerter");
    let alert = support::alert(
        AlertKind::OverWindow,
        "2026-11-23",
        "run 2026-11-23 passed its deadline 09:00 CT: 12 of 1200 accounts not scored",
    );
    assert_eq!(alerter.send(&alert).await.sent, vec![Channel::Webhook]);
    let resolution = alert.resolved("re-run scored the 12 accounts", support::at());
    assert_eq!(
        alerter.resolve(&resolution).await.sent,
        vec![Channel::Webhook]
    );

    let documents = received.lock().expect("lock").clone();
    assert_eq!(
        documents[0],
        json!({
            "kind": "over_window",
            "severity": "critical",
            "run_id": "2026-11-23",
            "business_date": "2026-11-23",
            "summary": "run 2026-11-23 passed its deadline 09:00 CT: 12 of 1200 accounts not scored",
            "details": {
                "expected": "1200",
                "summary_file": "/data/out/FirmESGRatings_20261123_summary.json"
            },
            "at": "2026-11-23T11:15:00.000Z",
            "status": "firing"
        })
    );
    assert_eq!(documents[1]["status"], "resolved");
    assert_eq!(documents[1]["summary"], "re-run scored the 12 accounts");
}

#[tokio::test]
async fn a_refused_token_is_permanent_and_does_not_leak_the_url() {
    let (received, url) = start_receiver().await;
    let alerter = Alerter::new(AlertsConfig {
        webhook: Some(webhook(url, "wrong-token")),
        ..support::base_config()
    })
    .expect("alerter");
    let report = alerter
        .send(&support::alert(
            AlertKind::CriticalError,
            "2026-11-23",
            "run died",
        ))
        .await;
    let [(Channel::Webhook, error)] = report.failed.as_slice() else {
        panic!("webhook must fail: {report:?}");
    };
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(error.contains("after 1 attempt"), "{error}");
    assert!(
        !error.contains("/hooks/esg") && !error.contains("wrong-token"),
        "{error}"
    );
    assert!(received.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_receiver_that_is_down_does_not_fail_send() {
    let closed = support::closed_port();
    let url = format!("http://127.0.0.1:{}/hooks/esg", closed.port());
    let alerter = Alerter::new(AlertsConfig {
        webhook: Some(webhook(url, TOKEN)),
        ..support::base_config()
    })
    .expect("alerter");
    let report = alerter
        .send(&support::alert(
            AlertKind::MissedStart,
            "2026-11-23",
            "run did not start",
        ))
        .await;
    assert!(report.sent.is_empty());
    let [(Channel::Webhook, error)] = report.failed.as_slice() else {
        panic!("webhook must fail: {report:?}");
    };
    assert!(error.contains("cannot connect"), "{error}");
    assert!(!error.contains("/hooks/esg"), "{error}");
    assert_eq!(
        alerter.stats().webhook,
        ChannelStats {
            sent: 0,
            failed: 1,
            retried: 1
        }
    );
}

#[tokio::test]
async fn every_channel_at_once_and_one_down_does_not_stop_the_others() {
    let smtp = SmtpServer::start().await;
    let (webhook_received, webhook_url) = start_receiver().await;
    // PagerDuty is down.
    let closed = support::closed_port();
    let pagerduty_url = format!("http://127.0.0.1:{}/v2/enqueue", closed.port());
    let alerter = Alerter::new(AlertsConfig {
        email: Some(EmailConfig {
            enabled: true,
            smtp_host: "127.0.0.1".into(),
            smtp_port: smtp.port,
            starttls: true,
            tls_ca_file: Some(smtp.pki.ca.clone()),
            username: Some(SMTP_USER.into()),
            password: Some(Secret::new(SMTP_PASSWORD)),
            from: "esg-job@firm.example".into(),
            timeout: Duration::from_secs(10),
            recipients: Recipients {
                development: vec!["dev@firm.example".into()],
                business: vec!["biz@firm.example".into()],
            },
            routes: Routes::default(),
        }),
        pagerduty: Some(PagerDutyConfig {
            enabled: true,
            routing_key: Secret::new("R0UTINGKEY0123456789abcdefABCDEF"),
            url: pagerduty_url,
            timeout: Duration::from_secs(2),
            kinds: AlertKind::ALL.to_vec(),
            source: None,
        }),
        webhook: Some(webhook(webhook_url, TOKEN)),
        ..support::base_config()
    })
    .expect("alerter");
    assert_eq!(
        alerter.channels(),
        [Channel::Email, Channel::PagerDuty, Channel::Webhook]
    );

    let report = alerter
        .send(&support::alert(
            AlertKind::CriticalError,
            "2026-11-23",
            "run 2026-11-23 ended on a critical error: state store does not open",
        ))
        .await;
    assert_eq!(
        report.sent,
        vec![Channel::Email, Channel::Webhook],
        "{report:?}"
    );
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, Channel::PagerDuty);
    assert!(report.delivered());
    assert_eq!(smtp.messages()[0].rcpt_tos, ["dev@firm.example"]);
    assert_eq!(webhook_received.lock().expect("lock").len(), 1);
    let stats = alerter.stats();
    assert_eq!((stats.email.sent, stats.webhook.sent), (1, 1));
    assert_eq!((stats.pagerduty.failed, stats.pagerduty.retried), (1, 1));
}

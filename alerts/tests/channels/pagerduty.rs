//! PagerDuty against a local Events API v2 receiver that validates every event the way the
//! published API describes it, keeps the open incidents by `dedup_key`, and can be told to fail.

use crate::support;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use esg_alerts::{
    AlertKind, Alerter, AlertsConfig, Channel, ChannelStats, PagerDutyConfig, Secret,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUTING_KEY: &str = "R0UTINGKEY0123456789abcdefABCDEF";

/// What the receiver saw and how it answers.
#[derive(Default)]
struct Receiver {
    /// Every request body, valid or not.
    requests: Mutex<Vec<Value>>,
    /// Dedup keys of triggered, not yet resolved incidents.
    open: Mutex<BTreeSet<String>>,
    /// Answer this status (and no processing) to the next this-many requests.
    fail_next: Mutex<(usize, u16)>,
}

type Shared = Arc<Receiver>;

/// The errors of an event against the Events API v2 schema; empty when valid.
fn validate(event: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(object) = event.as_object() else {
        return vec!["event is not an object".into()];
    };
    for key in object.keys() {
        if ![
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "client",
            "client_url",
            "images",
            "links",
        ]
        .contains(&key.as_str())
        {
            errors.push(format!("unknown field {key}"));
        }
    }
    match object.get("routing_key").and_then(Value::as_str) {
        Some(key) if key.chars().count() == 32 => {}
        Some(_) => errors.push("routing_key must be 32 characters".into()),
        None => errors.push("routing_key is required".into()),
    }
    let action = object.get("event_action").and_then(Value::as_str);
    if !matches!(action, Some("trigger" | "acknowledge" | "resolve")) {
        errors.push(format!(
            "event_action {action:?} is not trigger/acknowledge/resolve"
        ));
    }
    match object.get("dedup_key") {
        None if action != Some("trigger") => {
            errors.push("dedup_key is required for acknowledge and resolve".into())
        }
        None => {}
        Some(Value::String(key)) if !key.is_empty() && key.chars().count() <= 255 => {}
        Some(other) => errors.push(format!("dedup_key {other} is not a string of 1..=255")),
    }
    if action == Some("trigger") {
        let Some(payload) = object.get("payload").and_then(Value::as_object) else {
            errors.push("payload is required for trigger".into());
            return errors;
        };
        for key in payload.keys() {
            if ![
                "summary",
                "source",
                "severity",
                "timestamp",
                "component",
                "group",
                "class",
                "custom_details",
            ]
            .contains(&key.as_str())
            {
                errors.push(format!("unknown payload field {key}"));
            }
        }
        match payload.get("summary").and_then(Value::as_str) {
            Some(s) if !s.is_empty() && s.chars().count() <= 1024 => {}
            _ => errors.push("payload.summary must be a string of 1..=1024 characters".into()),
        }
        match payload.get("source").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => {}
            _ => errors.push("payload.source is required".into()),
        }
        let severity = payload.get("severity").and_then(Value::as_str);
        if !matches!(severity, Some("critical" | "error" | "warning" | "info")) {
            errors.push(format!(
                "payload.severity {severity:?} is not critical/error/warning/info"
            ));
        }
        if let Some(timestamp) = payload.get("timestamp") {
            let valid = timestamp
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
            if !valid {
                errors.push(format!("payload.timestamp {timestamp} is not RFC 3339"));
            }
        }
        for key in ["component", "group", "class"] {
            if payload.get(key).is_some_and(|v| !v.is_string()) {
                errors.push(format!("payload.{key} must be a string"));
            }
        }
        if payload
            .get("custom_details")
            .is_some_and(|v| !v.is_object())
        {
            errors.push("payload.custom_details must be an object".into());
        }
    }
    errors
}

async fn enqueue(
    State(receiver): State<Shared>,
    Json(event): Json<Value>,
) -> (StatusCode, Json<Value>) {
    receiver.requests.lock().expect("lock").push(event.clone());
    {
        let mut fail = receiver.fail_next.lock().expect("lock");
        if fail.0 > 0 {
            fail.0 -= 1;
            let status = StatusCode::from_u16(fail.1).expect("status");
            return (
                status,
                Json(json!({"status": "unavailable", "message": "try again"})),
            );
        }
    }
    let errors = validate(&event);
    if !errors.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
            ),
        );
    }
    if event["routing_key"] != ROUTING_KEY {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["Invalid routing key"]}),
            ),
        );
    }
    let dedup_key = event["dedup_key"]
        .as_str()
        .unwrap_or("generated")
        .to_owned();
    {
        let mut open = receiver.open.lock().expect("lock");
        match event["event_action"].as_str() {
            Some("trigger") => {
                open.insert(dedup_key.clone());
            }
            Some("resolve") => {
                open.remove(&dedup_key);
            }
            _ => {}
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key})),
    )
}

async fn start_receiver() -> (Shared, String) {
    let receiver = Shared::default();
    let router = Router::new()
        .route("/v2/enqueue", post(enqueue))
        .with_state(receiver.clone());
    let addr = support::serve(router).await;
    (receiver, format!("http://{addr}/v2/enqueue"))
}

fn alerter(url: String, routing_key: &str) -> Alerter {
    Alerter::new(AlertsConfig {
        pagerduty: Some(PagerDutyConfig {
            enabled: true,
            routing_key: Secret::new(routing_key),
            url,
            timeout: Duration::from_secs(5),
            kinds: AlertKind::ALL.to_vec(),
            source: Some("batch-01.firm.example".into()),
        }),
        ..support::base_config()
    })
    .expect("alerter")
}

#[test]
fn the_receiver_rejects_what_the_api_rejects() {
    let ok = json!({
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "k",
        "payload": {"summary": "s", "source": "h", "severity": "error", "timestamp": "2026-11-23T11:15:00Z"}
    });
    assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));
    let mut bad = ok.clone();
    bad["payload"]["severity"] = json!("high");
    bad["payload"]["summary"] = json!("x".repeat(1025));
    bad["payload"]["timestamp"] = json!("23/11/2026");
    bad["event_action"] = json!("trigger");
    bad["dedup_key"] = json!("k".repeat(256));
    bad["routing_key"] = json!("short");
    assert_eq!(validate(&bad).len(), 5, "{:?}", validate(&bad));
    assert!(!validate(&json!({"routing_key": ROUTING_KEY, "event_action": "resolve"})).is_empty());
}

#[tokio::test]
async fn trigger_then_resolve_share_the_dedup_key() {
    let (receiver, url) = start_receiver().await;
    let alerter = alerter(url, ROUTING_KEY);
    let alert = support::alert(
        AlertKind::FailureRatio,
        "2026-11-23",
        "run 2026-11-23: 80 of 1000 accounts failed (8.00%, threshold 5%)",
    );

    let report = alerter.send(&alert).await;
    assert_eq!(report.sent, vec![Channel::PagerDuty], "{report:?}");
    // The same condition raised again folds into the same incident.
    let report = alerter.send(&alert).await;
    assert_eq!(report.sent, vec![Channel::PagerDuty], "{report:?}");
    assert_eq!(
        *receiver.open.lock().expect("lock"),
        BTreeSet::from(["esg/2026-11-23/failure_ratio".to_owned()])
    );

    let requests = receiver.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2);
    let trigger = &requests[0];
    assert!(validate(trigger).is_empty());
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["payload"]["severity"], "error");
    assert_eq!(trigger["payload"]["class"], "failure_ratio");
    assert_eq!(trigger["payload"]["source"], "batch-01.firm.example");
    assert_eq!(trigger["payload"]["timestamp"], "2026-11-23T11:15:00.000Z");
    assert_eq!(trigger["payload"]["custom_details"]["expected"], "1200");
    assert_eq!(trigger["payload"]["custom_details"]["run_id"], "2026-11-23");

    let resolution = alert.resolved("re-run brought failures under 5%", support::at());
    let report = alerter.resolve(&resolution).await;
    assert_eq!(report.sent, vec![Channel::PagerDuty], "{report:?}");
    assert!(
        receiver.open.lock().expect("lock").is_empty(),
        "the incident is closed"
    );
    let resolve = receiver.requests.lock().expect("lock")[2].clone();
    assert_eq!(
        resolve,
        json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "esg/2026-11-23/failure_ratio"})
    );
    assert_eq!(
        alerter.stats().pagerduty,
        ChannelStats {
            sent: 3,
            failed: 0,
            retried: 0
        }
    );
}

#[tokio::test]
async fn a_long_summary_is_cut_to_the_api_limit() {
    let (receiver, url) = start_receiver().await;
    let alerter = alerter(url, ROUTING_KEY);
    let mut alert = support::alert(AlertKind::CriticalError, "2026-11-23", "x");
    alert.summary = format!(
        "run 2026-11-23 ended on a critical error: {}",
        "é".repeat(3000)
    );
    let report = alerter.send(&alert).await;
    assert_eq!(report.sent, vec![Channel::PagerDuty], "{report:?}");
    let requests = receiver.requests.lock().expect("lock").clone();
    let summary = requests[0]["payload"]["summary"].as_str().expect("summary");
    assert_eq!(summary.chars().count(), 1024);
}

#[tokio::test]
async fn a_500_is_retried_once_then_reported_without_failing_the_caller() {
    let (receiver, url) = start_receiver().await;
    *receiver.fail_next.lock().expect("lock") = (10, 500);
    let alerter = alerter(url, ROUTING_KEY);
    let report = alerter
        .send(&support::alert(
            AlertKind::MissedStart,
            "2026-11-23",
            "run 2026-11-23 did not start by 05:15 CT",
        ))
        .await;
    assert!(report.sent.is_empty(), "{report:?}");
    let [(Channel::PagerDuty, error)] = report.failed.as_slice() else {
        panic!("pagerduty must fail: {report:?}");
    };
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(error.contains("after 2 attempts"), "{error}");
    assert!(!error.contains(ROUTING_KEY), "{error}");
    assert_eq!(receiver.requests.lock().expect("lock").len(), 2);
    assert_eq!(
        alerter.stats().pagerduty,
        ChannelStats {
            sent: 0,
            failed: 1,
            retried: 1
        }
    );
}

#[tokio::test]
async fn a_429_then_success_is_delivered_by_the_retry() {
    let (receiver, url) = start_receiver().await;
    *receiver.fail_next.lock().expect("lock") = (1, 429);
    let alerter = alerter(url, ROUTING_KEY);
    let report = alerter
        .send(&support::alert(
            AlertKind::OverWindow,
            "2026-11-23",
            "run 2026-11-23 passed its deadline",
        ))
        .await;
    assert_eq!(report.sent, vec![Channel::PagerDuty], "{report:?}");
    assert_eq!(receiver.requests.lock().expect("lock").len(), 2);
    assert_eq!(alerter.stats().pagerduty.retried, 1);
}

#[tokio::test]
async fn a_400_is_permanent_and_not_retried() {
    let (receiver, url) = start_receiver().await;
    let alerter = alerter(url, "0ther0ther0ther0ther0ther0ther12");
    let report = alerter
        .send(&support::alert(
            AlertKind::CriticalError,
            "2026-11-23",
            "run 2026-11-23 died",
        ))
        .await;
    let [(Channel::PagerDuty, error)] = report.failed.as_slice() else {
        panic!("pagerduty must fail: {report:?}");
    };
    assert!(
        error.contains("HTTP 400") && error.contains("Invalid routing key"),
        "{error}"
    );
    assert!(error.contains("after 1 attempt"), "{error}");
    assert_eq!(receiver.requests.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn kinds_that_do_not_page_are_not_sent() {
    let (receiver, url) = start_receiver().await;
    let alerter = Alerter::new(AlertsConfig {
        pagerduty: Some(PagerDutyConfig {
            enabled: true,
            routing_key: Secret::new(ROUTING_KEY),
            url,
            timeout: Duration::from_secs(5),
            kinds: vec![AlertKind::MissedStart],
            source: None,
        }),
        ..support::base_config()
    })
    .expect("alerter");
    let report = alerter
        .send(&support::alert(
            AlertKind::FailureRatio,
            "2026-11-23",
            "run 2026-11-23: many failed",
        ))
        .await;
    assert!(
        report.sent.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert!(receiver.requests.lock().expect("lock").is_empty());
}

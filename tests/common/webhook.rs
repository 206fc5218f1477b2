//! A webhook receiver for the job's alerts: every JSON document posted to it, in order.

use axum::routing::post;
use axum::Json;
use std::sync::{Arc, Mutex};

pub type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// Serves `POST /alerts` on a port of its own (bound to port 0, never released); returns its
/// URL and what it received.
pub async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/alerts",
        post(move |Json(body): Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("alerts").push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// `[alerts]` with this webhook, quick retries, and a PagerDuty endpoint that is down.
pub fn alerts_config(webhook: &str) -> String {
    format!(
        "[alerts]\nretry_backoff = \"10ms\"\n[alerts.webhook]\nurl = \"{webhook}\"\ntimeout = \"2s\"\n\
         [alerts.pagerduty]\nrouting_key = \"0123456789abcdef0123456789abcdef\"\nurl = \"http://127.0.0.1:9/v2/enqueue\"\ntimeout = \"1s\"\n"
    )
}

/// The `kind`/`status` pairs received so far.
pub fn kinds(got: &Received) -> Vec<(String, String)> {
    got.lock()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

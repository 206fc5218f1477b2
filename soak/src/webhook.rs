//! The receiver of the job's alerts: the `[alerts.webhook]` of the soak's job posts every alert
//! and resolution here, and the soak reads what came in since a process started.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use axum::routing::post;
use axum::Json;

/// One alert or resolution as the job posted it.
#[derive(Debug, Clone)]
pub struct Received {
    pub kind: String,
    pub status: String,
    pub run_id: String,
}

/// A running receiver: `POST /alerts` on a port of its own.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves on 127.0.0.1 on a port the system picks (never released while the soak runs).
    pub async fn start() -> Result<Receiver> {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/alerts",
            post(move |Json(body): Json<serde_json::Value>| {
                let seen = seen.clone();
                async move {
                    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Received {
                            kind: text("kind"),
                            status: text("status"),
                            run_id: text("run_id"),
                        });
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the alert receiver")?;
        let url = format!("http://{}/alerts", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { url, got })
    }

    /// How many have come in so far.
    pub fn count(&self) -> usize {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Those that came in after the first `from`.
    pub fn since(&self, from: usize) -> Vec<Received> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(from..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }
}

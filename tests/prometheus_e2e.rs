//! The monitoring path end to end with the real programs (Debian's `prometheus` and
//! `prometheus-alertmanager`): Prometheus scrapes a running job, evaluates
//! `ops/prometheus/esg-rules.yml`, and Alertmanager delivers the alert to a webhook.

mod common;

use axum::routing::post;
use axum::Json;
use common::*;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(program: &str, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(program)
        .args(args)
        // The job logs its metrics address at INFO, in text without colour (not a terminal).
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (Debian package): {e}"))
}

/// Whether the last process started is still running.
fn alive(running: &mut Killed) -> bool {
    running
        .0
        .last_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// How long a server may take to say where it listens.
const STARTUP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_alertmanager_deliver_a_failure_ratio_alert() {
    // The webhook that Alertmanager calls.
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("hook").push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A job whose day ends with 20% of accounts failed. Every server below takes a port of its
    // own choosing (port 0) and says in its log which: none can be given a port another holds.
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.2,
            ..quiet_sim(300)
        },
        "[schedule]\nat = \"00:00\"\ntime_zone = \"UTC\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let dir = world.dir.path();
    let mut running = Killed(Vec::new());
    running.0.push(spawn(
        env!("CARGO_BIN_EXE_esg"),
        &[
            "run".into(),
            "--config".into(),
            world.config_path.display().to_string(),
        ],
        &dir.join("esg.log"),
    ));
    let metrics = wait_for_address(
        &dir.join("esg.log"),
        "metrics served at /metrics",
        "listen",
        STARTUP,
        || alive(&mut running),
    )
    .await;

    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}\n        send_resolved: false\n"
        ),
    )
    .expect("alertmanager config");
    running.0.push(spawn(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            "--web.listen-address=127.0.0.1:0".into(),
            "--cluster.listen-address=".into(),
        ],
        &dir.join("alertmanager.log"),
    ));
    let alertmanager = wait_for_address(
        &dir.join("alertmanager.log"),
        "msg=\"Listening on\"",
        "address",
        STARTUP,
        || alive(&mut running),
    )
    .await;

    let rules = root().join("ops/prometheus/esg-rules.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
             scrape_configs:\n  - job_name: esg\n    static_configs:\n      - targets: ['{metrics}']\n",
            rules.display()
        ),
    )
    .expect("prometheus config");
    running.0.push(spawn(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            "--web.listen-address=127.0.0.1:0".into(),
        ],
        &dir.join("prometheus.log"),
    ));

    let started = Instant::now();
    let alert = loop {
        let found = got
            .lock()
            .expect("hook")
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["labels"]["alertname"] == "EsgFailureRatioHigh");
        if let Some(a) = found {
            break a;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let logs: String = ["esg.log", "prometheus.log", "alertmanager.log"]
                .iter()
                .map(|f| {
                    let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    format!(
                        "--- {f}\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("no EsgFailureRatioHigh at the webhook within 2 minutes\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(alert["status"], "firing");
    assert!(alert["annotations"]["runbook_url"]
        .as_str()
        .is_some_and(|u| u.contains("operations.md")));
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

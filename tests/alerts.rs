//! The job's own alerts, end to end: a day with too many failed accounts and a day whose account
//! system stays down each reach the webhook, while a PagerDuty endpoint that is down breaks
//! nothing (the failure to alert is logged and the run's outcome is unchanged).

mod common;

use common::webhook::{alerts_config, receiver};
use common::*;
use std::process::Command;

fn run_once(world: &World) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", "2026-11-23", "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("esg runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_failed_accounts_raise_a_failure_ratio_alert() {
    let (url, got) = receiver().await;
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.2,
            ..quiet_sim(300)
        },
        &alerts_config(&url),
    )
    .await;
    let out = run_once(&world);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = got.lock().expect("alerts").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["kind"], "failure_ratio");
    assert_eq!(a["status"], "firing");
    assert_eq!(a["run_id"], "2026-11-23");
    assert!(a["summary"].as_str().expect("summary").contains('%'), "{a}");
    // PagerDuty was down: logged, and the run still succeeded.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("pagerduty"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_ended_by_a_critical_error_raises_an_alert() {
    let (url, got) = receiver().await;
    let world = World::start(
        esg_simulator::SimConfig {
            accounts_transient_error_rate: 1.0,
            ..quiet_sim(50)
        },
        &alerts_config(&url),
    )
    .await;
    world.add_accounts_keys("max_attempts = 2\nbackoff_base = \"5ms\"\nbackoff_cap = \"10ms\"");
    let out = run_once(&world);
    assert_eq!(out.status.code(), Some(1));
    let alerts = got.lock().expect("alerts").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "critical_error");
    assert!(
        alerts[0]["summary"]
            .as_str()
            .expect("summary")
            .contains("pre-flight failed"),
        "{}",
        alerts[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_day_raises_nothing() {
    let (url, got) = receiver().await;
    let world = World::start(quiet_sim(100), &alerts_config(&url)).await;
    let out = run_once(&world);
    assert!(out.status.success());
    assert!(got.lock().expect("alerts").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_comes_first_raises_an_over_window_alert() {
    let (url, got) = receiver().await;
    let world = World::start(quiet_sim(300), &alerts_config(&url)).await;
    // A catch-up of a past date gets `run.max_duration` from its start: one second, for 300
    // accounts at 50 requests/s.
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    std::fs::write(
        &world.config_path,
        format!(
            "{}\n[run]\nmax_duration = \"1s\"\n",
            // Single calls: batches would rate 300 accounts in a few requests.
            text.replace(
                "rate_limit_per_second = 1000",
                "rate_limit_per_second = 50\nbatch_size = 1"
            )
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", "2026-01-05", "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("esg runs");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = got.lock().expect("alerts").clone();
    let kinds: Vec<&str> = alerts.iter().filter_map(|a| a["kind"].as_str()).collect();
    assert!(kinds.contains(&"over_window"), "{kinds:?}");
    let over = alerts
        .iter()
        .find(|a| a["kind"] == "over_window")
        .expect("over_window");
    assert_eq!(over["run_id"], "2026-01-05");
    assert!(
        over["summary"]
            .as_str()
            .expect("summary")
            .contains("not scored"),
        "{over}"
    );
}

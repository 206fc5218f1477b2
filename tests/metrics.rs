//! The Prometheus endpoint of a running job: scraped after a day's run and checked with
//! `promtool check metrics` (Debian's prometheus package).

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_exposes_valid_prometheus_metrics() {
    let share = tempfile::tempdir().expect("share");
    let world = World::start(
        esg_simulator::SimConfig {
            accounts: 300,
            rate_limit_per_second: None,
            permanent_error_rate: 0.05,
            transient_error_rate: 0.05,
            ..Default::default()
        },
        // Port 0: the job takes a free port and logs which (no port chosen here, none taken).
        &format!(
            "[schedule]\nat = \"00:00\"\ntime_zone = \"UTC\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[delivery]]\nkind = \"dir\"\nname = \"share\"\npath = \"{}\"\n",
            share.path().display()
        ),
    )
    .await;
    let today = chrono::Utc::now().date_naive();
    let log = world.dir.path().join("esg.log");
    let mut job = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn,esg::telemetry=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("esg starts");
    let addr = wait_for_address(
        &log,
        "metrics served at /metrics",
        "listen",
        Duration::from_secs(60),
        || matches!(job.try_wait(), Ok(None)),
    )
    .await;
    // The run's end is recorded right after its file is written: scrape until it shows.
    let ended = "esg_runs_total{kind=\"daily\",outcome=\"completed_with_failures\"} 1";
    let started = Instant::now();
    let body = loop {
        let body = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        // The files are delivered after the run's end is recorded.
        if body.contains(ended) && body.contains("esg_delivery_bytes_total{") {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no {ended} within 60 s (file written: {}):\n{body}",
            world.csv_path(today).exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = job.kill();
    let _ = job.wait();

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) runs");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("exposition written");
    let checked = promtool.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    for expected in [
        "esg_run_start_timestamp_seconds{kind=\"daily\"}",
        "esg_run_in_progress{kind=\"daily\"} 0",
        "esg_runs_total{kind=\"daily\",outcome=\"completed_with_failures\"} 1",
        "esg_last_successful_run_timestamp_seconds ",
        "esg_run_accounts{status=\"failed\"}",
        "esg_run_failure_ratio ",
        "esg_api_requests_total{outcome=\"ok\"}",
        // Batch requests: a 404 of one account is an item of a batch answered 200.
        "esg_api_batch_accounts",
        "esg_api_send_rate ",
        "esg_api_request_duration_seconds_bucket{le=\"0.005\"}",
        "esg_api_retries_total ",
        "esg_api_in_flight ",
        "esg_scorer_consumer_lag_records ",
        "esg_delivery_bytes_total{target=\"share\"}",
    ] {
        assert!(body.contains(expected), "{expected} missing from:\n{body}");
    }
    let delivered = body
        .lines()
        .find(|l| l.starts_with("esg_deliveries_total{") && l.contains("outcome=\"delivered\""))
        .unwrap_or_else(|| panic!("no delivered files counted:\n{body}"));
    // The ratings, the JSON summary and the HTML summary.
    assert!(
        delivered.contains("target=\"share\"") && delivered.ends_with(" 4"),
        "{delivered}"
    );
    // Bounded labels: no account or run id in any series.
    assert!(!body.contains("ACC0"), "{body}");
    assert!(!body.contains("2026-"), "{body}");
}

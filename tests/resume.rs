//! `kill -9` at any moment of a run, start it again: it finishes from where it was, no account
//! already scored is called again, and the file is identical to an uninterrupted run's.

mod common;

use common::*;
use esg::runner::Runner;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ACCOUNTS: u64 = 1500;
const MAX_IN_FLIGHT: usize = 32;
const FLUSH_MAX: usize = 16;

fn sim() -> esg_simulator::SimConfig {
    esg_simulator::SimConfig {
        accounts: ACCOUNTS,
        latency: Duration::from_millis(5),
        // The job's own limiter (400/s) keeps under the vendor's quota: no 429 retries, so
        // every second call of an account is a call made again after a kill.
        rate_limit_per_second: None,
        permanent_error_rate: 0.01,
        partial_rate: 0.02,
        ..Default::default()
    }
}

fn extra() -> String {
    format!("[scorer]\nflush_max = {FLUSH_MAX}\nflush_interval = \"50ms\"\n[producer]\nemit_batch = 100\n")
}

fn configure(world: &World) {
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    let text = text
        .replace(
            "rate_limit_per_second = 1000",
            "rate_limit_per_second = 400",
        )
        .replace(
            "max_in_flight = 64",
            &format!("max_in_flight = {MAX_IN_FLIGHT}"),
        );
    std::fs::write(&world.config_path, text).expect("config");
}

fn spawn(world: &World, day: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", day, "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("esg starts")
}

/// Waits until `ready` holds, then kills the child with SIGKILL.
async fn kill_when(child: &mut std::process::Child, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("esg ended before the kill point: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "kill point never reached"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_resume_to_the_same_file_without_calling_scored_accounts_again() {
    let day = "2026-11-23";

    // The reference: one uninterrupted run against an identical simulator.
    let reference = World::start(sim(), &extra()).await;
    configure(&reference);
    Runner::open(reference.config(), esg_assembler::system_clock())
        .await
        .expect("opens")
        .run_daily(date(day), false, CancellationToken::new(), |_| {})
        .await
        .expect("reference run");
    let expected = std::fs::read(reference.csv_path(date(day))).expect("reference file");

    let world = World::start(sim(), &extra()).await;
    configure(&world);
    let sim_handle = world.sim.clone();

    // Killed while listing accounts, then twice while scoring.
    let mut child = spawn(&world, day);
    kill_when(&mut child, || sim_handle.stats().account_pages >= 1).await;
    let mut child = spawn(&world, day);
    kill_when(&mut child, || sim_handle.stats().esg_requests >= 400).await;
    let mut child = spawn(&world, day);
    kill_when(&mut child, || sim_handle.stats().esg_requests >= 1000).await;
    assert!(
        !world.csv_path(date(day)).exists(),
        "no file before the run completes"
    );

    let status = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", day, "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("esg runs");
    assert!(status.success(), "{status}");

    let got = std::fs::read(world.csv_path(date(day))).expect("file");
    if got != expected {
        let (g, e) = (
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
        );
        let diff: Vec<String> = g
            .split("\r\n")
            .zip(e.split("\r\n"))
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(a, b)| format!("got      {a}\nexpected {b}"))
            .collect();
        panic!(
            "file after kills differs from the uninterrupted run ({} vs {} bytes):\n{}",
            got.len(),
            expected.len(),
            diff.join("\n")
        );
    }

    // Only calls in flight or not yet durable at a kill are made again.
    let twice = world.sim.accounts_called_at_least(2);
    let bound = 2 * (MAX_IN_FLIGHT + FLUSH_MAX);
    eprintln!(
        "{} accounts called twice after three kills; simulator: {:?}",
        twice.len(),
        world.sim.stats()
    );
    assert!(
        twice.len() <= bound,
        "{} accounts called twice, at most {bound} may be: {twice:?}",
        twice.len()
    );
    assert!(world.sim.accounts_called_at_least(4).is_empty());
    let all = world.sim.accounts_called_at_least(1).len();
    assert_eq!(all, active_ids(&world.sim).await.len());
}

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

/// Single calls at 400/s with a window of [`MAX_IN_FLIGHT`].
fn configure(world: &World) {
    world.replace_in_config(
        "rate_limit_per_second = 1000",
        "rate_limit_per_second = 400",
    );
    world.replace_in_config(
        "max_in_flight = 64",
        &format!("max_in_flight = {MAX_IN_FLIGHT}\nbatch_size = 1"),
    );
}

/// Batches of [`BATCH_SIZE`], [`BATCH_IN_FLIGHT`] requests at once, 20 requests/s.
fn configure_batches(world: &World) {
    world.replace_in_config("rate_limit_per_second = 1000", "rate_limit_per_second = 20");
    world.replace_in_config(
        "max_in_flight = 64",
        &format!("max_in_flight = {BATCH_IN_FLIGHT}\nbatch_size = {BATCH_SIZE}"),
    );
}

const BATCH_SIZE: usize = 50;
const BATCH_IN_FLIGHT: usize = 3;

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
    // Killed while listing accounts, then twice while scoring (400 and 1,000 requests in).
    killed_runs_resume(
        sim(),
        configure,
        [400, 1000],
        2 * (MAX_IN_FLIGHT + FLUSH_MAX),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_resumes_to_the_same_file_and_loses_nothing() {
    // Every batch is answered 150 ms after it arrives, so a kill right after the simulator
    // received the 6th and the 18th batch lands while batches are in flight.
    let slow = || esg_simulator::SimConfig {
        latency: Duration::from_millis(150),
        ..sim()
    };
    killed_runs_resume(
        slow(),
        configure_batches,
        [6, 18],
        2 * (BATCH_IN_FLIGHT * BATCH_SIZE + FLUSH_MAX),
    )
    .await;
}

/// Runs the day once undisturbed, then again with `kill -9` while listing and after each count
/// of ESG requests in `kills`, then once to the end: the file must be the undisturbed one's, and
/// at most `bound` accounts may have been called twice.
async fn killed_runs_resume(
    sim_config: esg_simulator::SimConfig,
    configure: fn(&World),
    kills: [u64; 2],
    bound: usize,
) {
    let day = "2026-11-23";

    // The reference: one uninterrupted run against an identical simulator.
    let reference = World::start(sim_config.clone(), &extra()).await;
    configure(&reference);
    Runner::open(reference.config(), esg_assembler::system_clock())
        .await
        .expect("opens")
        .run_daily(date(day), false, CancellationToken::new(), |_| {})
        .await
        .expect("reference run");
    let expected = std::fs::read(reference.csv_path(date(day))).expect("reference file");

    let world = World::start(sim_config, &extra()).await;
    configure(&world);
    let sim_handle = world.sim.clone();

    let mut child = spawn(&world, day);
    kill_when(&mut child, || sim_handle.stats().account_pages >= 1).await;
    for requests in kills {
        let mut child = spawn(&world, day);
        kill_when(&mut child, || sim_handle.stats().esg_requests >= requests).await;
    }
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

    // The history holds the run once, whatever the kills.
    let runs: Vec<(String, String)> = {
        let c = rusqlite::Connection::open(world.dir.path().join("state").join("assembler.db"))
            .expect("assembler store");
        let mut stmt = c
            .prepare("SELECT run_id, kind FROM history")
            .expect("history table");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query");
        rows.map(|r| r.expect("row")).collect()
    };
    assert_eq!(runs, [(day.to_owned(), "Daily".to_owned())]);
}

/// Whether the assembler has applied the seal of `run_id` (read beside the running job; the
/// store is in WAL mode).
fn seal_applied(world: &World, run_id: &str) -> bool {
    let path = world.dir.path().join("state").join("assembler.db");
    let Ok(c) =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    c.query_row(
        "SELECT sealed_json IS NOT NULL FROM runs WHERE run_id = ?1",
        [run_id],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_seal_and_its_marks_the_run_still_completes_before_its_deadline() {
    // Found by the soak (seed 3, day 20): a kill after the assembler applied the seal but
    // before it noted where the topics ended left the run without marks, and every later run
    // of the date waited for the deadline (09:00, or four hours for a past date).
    let day = "2026-11-23";
    let world = World::start(
        esg_simulator::SimConfig {
            accounts: 200,
            latency: Duration::from_millis(20),
            rate_limit_per_second: None,
            ..Default::default()
        },
        &extra(),
    )
    .await;
    world.replace_in_config("max_in_flight = 64", "max_in_flight = 2\nbatch_size = 1");
    let mut child = spawn(&world, day);
    kill_when(&mut child, || seal_applied(&world, day)).await;
    // The state such a kill leaves: the seal applied, its marks not noted.
    let store = rusqlite::Connection::open(world.dir.path().join("state").join("assembler.db"))
        .expect("assembler store");
    store
        .execute("UPDATE runs SET marks = NULL WHERE run_id = ?1", [day])
        .expect("marks cleared");
    drop(store);
    let mut child = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", day, "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("esg starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            child.kill().expect("kill");
            panic!("the resumed run did not complete within 90 s: it waits for its deadline");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let rows = read_csv(&world.csv_path(date(day))).len() - 1;
    assert_eq!(rows, active_ids(&world.sim).await.len());
}

//! The commands as an operator meets them: exit codes of a refused re-run, a held lock (taken
//! before any port is opened) and a stop by signal; `esg status` in text, JSON and into a closed
//! pipe; `esg rerun --accounts-file`; and `esg demo --dir` keeping away from directories it did
//! not make.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn esg(world: &World, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(args)
        .arg("--config")
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("esg runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_unknown_or_no_accounts_exits_2_and_runs_nothing() {
    let world = World::start(quiet_sim(40), "").await;
    let day = ["--business-date", "2026-11-23"];
    let out = esg(&world, &[&["run", "--once"][..], &day].concat());
    assert!(out.status.success(), "{}", text(&out));
    let ids = active_ids(&world.sim).await;

    let out = esg(
        &world,
        &[
            &["rerun", "--accounts", &format!("{},GHOST-1", ids[0])][..],
            &day,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("GHOST-1"), "{}", text(&out));
    // Neither --accounts, --accounts-file nor --failed: a usage error from the parser.
    let out = esg(&world, &[&["rerun"][..], &day].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // An accounts file: one id a line, comments and blank lines skipped; the next run id follows.
    let file = world.dir.path().join("ids.txt");
    std::fs::write(
        &file,
        format!(
            "# to re-score\n{}\n\n  {}  # and this one\n",
            ids[1], ids[2]
        ),
    )
    .expect("file");
    world.sim.reset_call_counts();
    let out = esg(
        &world,
        &[
            &["rerun", "--accounts-file", file.to_str().expect("utf8")][..],
            &day,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("run 2026-11-23.1 Completed"),
        "{}",
        text(&out)
    );
    let mut wanted = vec![ids[1].clone(), ids[2].clone()];
    wanted.sort();
    assert_eq!(world.sim.accounts_called_at_least(1), wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_exits_5_before_the_metrics_port_is_opened() {
    // The metrics port is taken: a command that opened it before taking the lock would fail on
    // the port (exit 1) instead of saying the state directory is in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let world = World::start(
        quiet_sim(10),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let holder = esg::runner::Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("first process");
    let out = esg(&world, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("another esg process"), "{}", text(&out));
    drop(holder);
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_a_signal_exits_4_and_the_same_command_resumes_it() {
    let world = World::start(
        esg_simulator::SimConfig {
            latency: Duration::from_millis(100),
            ..quiet_sim(400)
        },
        "",
    )
    .await;
    let text_of = std::fs::read_to_string(&world.config_path).expect("config");
    std::fs::write(
        &world.config_path,
        // Single calls, four at a time: a run long enough to be stopped.
        text_of.replace("max_in_flight = 64", "max_in_flight = 4\nbatch_size = 1"),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", "2026-11-23", "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("esg starts");
    let started = Instant::now();
    while world.sim.stats().esg_requests < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "scoring did not start"
        );
        assert!(child.try_wait().expect("wait").is_none(), "ended early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While it runs, `esg status` reads where it stands (no lock taken, nothing written).
    let out = esg(
        &world,
        &["status", "--business-date", "2026-11-23", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        status["phase"] == "started" || status["phase"] == "sealed",
        "{status}"
    );
    assert!(
        status["completed"].is_null() && status["outcome"].is_null(),
        "{status}"
    );
    if status["phase"] == "sealed" {
        let expected = status["expected"].as_u64().expect("expected");
        assert!(
            status["scored"].as_u64().expect("scored") < expected,
            "{status}"
        );
        assert!(status["eta_seconds"].as_u64().is_some(), "{status}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("reaped");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("run the same command again"), "{err}");

    let out = esg(&world, &["run", "--once", "--business-date", "2026-11-23"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    assert_eq!(rows.len() - 1, active_ids(&world.sim).await.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_text_json_and_survives_a_closed_pipe() {
    let world = World::start(quiet_sim(30), "").await;
    let out = esg(&world, &["run", "--once", "--business-date", "2026-11-23"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = esg(
        &world,
        &["status", "--business-date", "2026-11-23", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["phase"], "completed");
    assert_eq!(json["run_id"], "2026-11-23");
    assert_eq!(json["scored"], json["expected"]);

    let out = esg(&world, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("run 2026-11-23 (Daily)"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains('\u{1b}'),
        "no colour codes into a pipe"
    );

    // The reader goes away at once (`esg status | head -0`): no panic, a clean exit.
    let mut child = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["status", "--config"])
        .arg(&world.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("esg starts");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("reaped");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("panicked"), "{}", text(&out));

    let out = esg(&world, &["status", "--business-date", "2026-01-01"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no run of 2026-01-01"),
        "{}",
        text(&out)
    );
}

#[test]
fn demo_keeps_away_from_a_directory_it_did_not_make() {
    let dir = tempfile::tempdir().expect("tmp");
    let theirs = dir.path().join("theirs");
    std::fs::create_dir_all(theirs.join("state")).expect("dir");
    std::fs::write(theirs.join("state").join("precious.db"), b"keep me").expect("file");
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["demo", "--accounts", "20", "--dir"])
        .arg(&theirs)
        .output()
        .expect("esg demo");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not made by `esg demo`"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(theirs.join("state").join("precious.db")).expect("kept"),
        b"keep me"
    );

    // A new directory becomes the demo's, and the demo may run there again.
    let mine = dir.path().join("mine");
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_esg"))
            .args([
                "demo",
                "--accounts",
                "20",
                "--business-date",
                "2026-11-23",
                "--dir",
            ])
            .arg(&mine)
            .output()
            .expect("esg demo");
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(mine
        .join("out")
        .join("FirmESGRatings_20261123.csv")
        .exists());
}

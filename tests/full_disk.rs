//! A disk too small for the day's file is found by the pre-flight, before any vendor call. A
//! disk that fills up while the accounts are scored fails the run with the cause and the path,
//! no half file is left, the previous file (if any) is untouched, and the next run finishes the
//! day from the scores already on the bus, without calling the API again.
//!
//! The output directory is a small tmpfs mounted by the test (root only; CI runs as root).

mod common;

use common::*;
use esg::runner::Runner;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio_util::sync::CancellationToken;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(path).expect("mount point");
        let ok = Command::new("mount")
            // A tmpfs is 1777 by default, a shared directory the job refuses for its outputs.
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0750"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(path.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Bytes free in the file system of `dir`.
fn available(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the bytes available")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_too_small_for_the_file_is_found_before_any_vendor_call() {
    if !is_root() {
        eprintln!(
            "not root: cannot mount a small tmpfs; tests/run_path.rs covers a failed pre-flight"
        );
        return;
    }
    let world = World::start(quiet_sim(300), "").await;
    let small = world.dir.path().join("small");
    let _mount = Mount::tmpfs(&small, "256k").expect("root can mount a tmpfs");
    let mut config = world.config();
    config.output.dir = small.clone();
    let err = Runner::open(config, esg_assembler::system_clock())
        .await
        .expect("opens")
        .run_daily(date("2026-11-23"), false, CancellationToken::new(), |_| {})
        .await
        .expect_err("no room for the file");
    let text = format!("{err:#}");
    assert!(text.contains("free space for the file"), "{text}");
    assert!(text.contains(small.to_str().expect("utf8")), "{text}");
    assert_eq!(world.sim.stats().esg_requests, 0, "no quota spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_and_the_next_run_finishes_it() {
    if !is_root() {
        eprintln!("not root: cannot mount a small tmpfs; tests/embedded_day.rs covers an unwritable output");
        return;
    }
    let world = World::start(quiet_sim(3000), "").await;
    let small = world.dir.path().join("small");
    // Room for the pre-flight; then the disk fills up while the accounts are scored.
    let mount = Mount::tmpfs(&small, "24m").expect("root can mount a tmpfs");
    let day = date("2026-11-23");

    let mut config = world.config();
    config.output.dir = small.clone();
    config.esg_api.rate_limit_per_second = 5000;
    let run = tokio::spawn(async move {
        Runner::open(config, esg_assembler::system_clock())
            .await
            .expect("opens")
            .run_daily(day, false, CancellationToken::new(), |_| {})
            .await
    });
    let started = std::time::Instant::now();
    while world.sim.stats().esg_requests == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "scoring did not start"
        );
        assert!(!run.is_finished(), "the run ended before scoring");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let filler = small.join("filler");
    let free = available(&small);
    std::fs::write(&filler, vec![0u8; (free - 64 * 1024) as usize]).expect("fill the disk");
    let err = run.await.expect("task").expect_err("the file does not fit");
    let text = format!("{err:#}");
    assert!(
        text.contains("No space left on device") || text.contains("os error 28"),
        "the cause is named: {text}"
    );
    assert!(
        text.contains(small.to_str().expect("utf8")),
        "the path is named: {text}"
    );
    std::fs::remove_file(&filler).expect("filler");
    let left: Vec<_> = std::fs::read_dir(&small)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "no half file or temp file left: {left:?}");
    drop(mount);

    // Space is back (the normal output directory): the same run completes without new calls.
    let called = world.sim.accounts_called_at_least(1).len();
    assert!(called > 2000);
    world.sim.reset_call_counts();
    let outcome = Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("opens")
        .run_daily(day, false, CancellationToken::new(), |_| {})
        .await
        .expect("completes");
    assert!(outcome.report.is_some());
    assert!(world.sim.accounts_called_at_least(1).is_empty());
    let rows = read_csv(&world.csv_path(day));
    assert_eq!(rows.len() - 1, active_ids(&world.sim).await.len());
}

//! `esg run` without `--once` is a long-running daily schedule: started after the day's time it
//! runs today's business date once; started again the same day it does not run a second time.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(world: &World) -> Child {
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("esg starts")
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("reaped");
    assert!(status.success(), "esg run ended with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_runs_todays_date_once_across_a_restart() {
    // The day's time has passed (00:00 UTC): the schedule finds today's date due at start-up.
    let world = World::start(
        quiet_sim(300),
        "[schedule]\nat = \"00:00\"\ntime_zone = \"UTC\"\n",
    )
    .await;
    let today = chrono::Utc::now().date_naive();
    let file = world.csv_path(today);

    let mut first = spawn(&world);
    let started = Instant::now();
    while !file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no file for {today} from the schedule"
        );
        if let Ok(Some(status)) = first.try_wait() {
            panic!("esg run ended on its own: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still running, waiting for tomorrow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        first.try_wait().expect("state").is_none(),
        "the schedule exited"
    );
    stop(&mut first);
    let calls = world.sim.stats().esg_requests;
    assert!(calls > 0);
    let rows = read_csv(&file).len();

    // Restarted the same day: no second run of the date, no API call.
    let mut second = spawn(&world);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut second);
    assert_eq!(world.sim.stats().esg_requests, calls);
    assert_eq!(read_csv(&file).len(), rows);
}

/// A fixed-offset time zone where it is now between 06:00 and 18:00, so that a schedule of
/// `00:00` has fired today and one of `23:59` has not.
fn zone_at_midday() -> String {
    use chrono::Timelike;
    let hour = chrono::Utc::now().hour() as i32;
    (-12..=14)
        .find(|offset| (6..=18).contains(&(hour + offset).rem_euclid(24)))
        // Etc/GMT-N is N hours east of UTC (the sign is POSIX's).
        .map(|offset| {
            format!(
                "Etc/GMT{}{}",
                if offset > 0 { "-" } else { "+" },
                offset.abs()
            )
        })
        .expect("some offset is at midday")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_early_pre_flight_alerts_before_the_run_is_due() {
    let (url, got) = common::webhook::receiver().await;
    let zone = zone_at_midday();
    let world = World::start(
        quiet_sim(20),
        &format!(
            "{}\n[schedule]\nat = \"23:59\"\npreflight_at = \"00:00\"\ntime_zone = \"{zone}\"\n",
            common::webhook::alerts_config(&url)
        ),
    )
    .await;
    // The output directory cannot be created: a file stands in its way.
    std::fs::write(world.dir.path().join("out"), b"not a directory").expect("file");
    let mut child = spawn(&world);
    let started = Instant::now();
    while got.lock().expect("alerts").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no alert from the early pre-flight"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("esg run ended on its own: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(&mut child);
    let alerts = got.lock().expect("alerts").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "critical_error");
    let summary = alerts[0]["summary"].as_str().expect("summary");
    assert!(summary.contains("early pre-flight"), "{summary}");
    assert!(summary.contains("output directory writable"), "{summary}");
    assert_eq!(
        world.sim.stats().esg_requests,
        0,
        "the run itself is not due"
    );
}

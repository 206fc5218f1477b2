//! Delivery of the day's files to `[[delivery]]` targets, end to end through the `esg` binary:
//! a run sends its files to a share (ratings last) and records each; a share that is not
//! mounted raises `delivery_failed` at once, is retried, and once mounted takes the files and
//! the alert is resolved; `esg deliver` repeats a delivery and fails loudly when it cannot.
//! The SFTP and S3 targets have their own tests against real servers (delivery/tests/).

mod common;

use common::webhook::{alerts_config, kinds, receiver};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const DAY: &str = "2026-11-23";

fn share_config(path: &Path) -> String {
    format!(
        "[[delivery]]\nkind = \"dir\"\nname = \"compliance-share\"\npath = \"{}\"\n",
        path.display()
    )
}

fn record(world: &World) -> Vec<esg_delivery::RecordEntry> {
    esg_delivery::Record::read(&world.dir.path().join("state").join("deliveries.jsonl"))
        .expect("record")
}

fn sha256(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open");
    esg_delivery::sha256_of(&mut file).expect("hash").0
}

/// Waits (to `deadline`) for the `delivery_failed` alert that says a target is being retried,
/// while `child` runs; returns it.
async fn retrying_alert(
    got: &common::webhook::Received,
    child: &mut std::process::Child,
    deadline: Instant,
) -> serde_json::Value {
    loop {
        let found = got
            .lock()
            .expect("alerts")
            .iter()
            .find(|a| a["kind"] == "delivery_failed" && a["details"]["retrying_until"].is_string())
            .cloned();
        if let Some(alert) = found {
            return alert;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery_failed alert: {:?}",
            kinds(got)
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "esg ended before alerting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_delivers_its_files_to_a_share_ratings_last_and_records_each() {
    let tmp = tempfile::tempdir().expect("tmp");
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).expect("mkdir");
    let world = World::start(quiet_sim(120), &share_config(&share)).await;
    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", DAY])
            .arg("--config")
            .arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");

    let local = names_in(&world.out());
    assert_eq!(names_in(&share), local, "the share holds the day's files");
    for name in &local {
        assert_eq!(
            std::fs::read(share.join(name)).expect("copy"),
            std::fs::read(world.out().join(name)).expect("local"),
            "{name}"
        );
    }
    let entries = record(&world);
    let files: Vec<&str> = entries.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files.len(), local.len(), "{entries:?}");
    assert_eq!(
        files.last().copied(),
        Some("FirmESGRatings_20261123.csv"),
        "the ratings file goes last"
    );
    for e in &entries {
        assert_eq!(e.outcome, "delivered");
        assert_eq!(e.target, "compliance-share");
        assert_eq!(e.run_id, DAY);
        assert_eq!(
            e.sha256.as_deref(),
            Some(sha256(&world.out().join(&e.file)).as_str())
        );
        assert_eq!(
            e.object.as_deref(),
            Some(share.join(&e.file).display().to_string().as_str())
        );
    }

    // A re-run replaces rows of the day's file: the share gets the new file.
    let id = read_csv(&world.csv_path(date(DAY)))[1][0].clone();
    let (code, said) = outcome(
        esg_command([
            "rerun",
            "--business-date",
            DAY,
            "--accounts",
            &id,
            "--config",
        ])
        .arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");
    let csv = "FirmESGRatings_20261123.csv";
    assert_eq!(
        std::fs::read(share.join(csv)).expect("copy"),
        std::fs::read(world.out().join(csv)).expect("local")
    );
    let entries = record(&world);
    let rerun: Vec<&esg_delivery::RecordEntry> =
        entries.iter().filter(|e| e.run_id != DAY).collect();
    assert_eq!(rerun.len(), local.len(), "{entries:?}");
    assert!(
        rerun.iter().all(|e| e.run_id.starts_with("2026-11-23.")),
        "{rerun:?}"
    );

    // A date that is done, asked again: nothing is sent twice.
    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", DAY])
            .arg("--config")
            .arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(record(&world).len(), entries.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_that_is_not_mounted_alerts_at_once_and_takes_the_files_once_it_is() {
    let (url, got) = receiver().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let share = tmp.path().join("share");
    let world = World::start(
        quiet_sim(120),
        &format!("{}\n{}", alerts_config(&url), share_config(&share)),
    )
    .await;
    let mut child = esg_command(["run", "--once", "--business-date", DAY])
        .arg("--config")
        .arg(&world.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("esg starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let alert = retrying_alert(&got, &mut child, deadline).await;
    assert!(
        alert["summary"]
            .as_str()
            .expect("summary")
            .contains("compliance-share"),
        "{alert}"
    );
    // The pre-flight saw it first, at the start of the run, and the run went on.
    let first = got.lock().expect("alerts")[0].clone();
    assert_eq!(first["kind"], "delivery_failed", "{first}");
    assert!(
        first["details"]["found_by"]
            .as_str()
            .is_some_and(|s| s.starts_with("pre-flight")),
        "{first}"
    );
    // The local files are whole while the share is away.
    let local = names_in(&world.out());
    assert!(
        local.contains(&"FirmESGRatings_20261123.csv".to_owned()),
        "{local:?}"
    );

    // The share is mounted: the next attempt delivers, the run ends well, the alert resolves.
    std::fs::create_dir(&share).expect("mount");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "esg did not end after the share came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(names_in(&share), local);
    assert!(
        kinds(&got).contains(&("delivery_failed".into(), "resolved".into())),
        "{:?}",
        kinds(&got)
    );
    let entries = record(&world);
    assert!(entries.iter().any(|e| e.outcome == "failed"
        && e.error
            .as_deref()
            .is_some_and(|m| m.contains("is the share mounted?"))));
    let delivered: Vec<&str> = entries
        .iter()
        .filter(|e| e.outcome == "delivered")
        .map(|e| e.file.as_str())
        .collect();
    assert_eq!(delivered.len(), local.len(), "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esg_deliver_repeats_a_delivery_and_fails_loudly_when_it_cannot() {
    let (url, got) = receiver().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).expect("mkdir");
    let world = World::start(
        quiet_sim(60),
        &format!("{}\n{}", alerts_config(&url), share_config(&share)),
    )
    .await;
    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", DAY])
            .arg("--config")
            .arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");
    // Someone removed a file from the share: `esg deliver` puts the day back.
    std::fs::remove_file(share.join("FirmESGRatings_20261123.csv")).expect("rm");
    let deliver = |extra: &[&str]| {
        let mut c = esg_command(["deliver", "--business-date", DAY]);
        c.args(extra).arg("--config").arg(&world.config_path);
        outcome(&mut c)
    };
    let (code, said) = deliver(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("delivered ") && said.contains("FirmESGRatings_20261123.csv"),
        "{said}"
    );
    assert_eq!(names_in(&share), names_in(&world.out()));

    // The pre-flight reports a target it cannot reach without failing.
    let (code, said) =
        outcome(esg_command(["check-config", "--connect", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("ok   delivery target compliance-share writable"),
        "{said}"
    );

    // An unknown target and a date without files are usage errors that name what is wrong.
    let (code, said) = deliver(&["--target", "elsewhere"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("no delivery target \"elsewhere\"") && said.contains("compliance-share"),
        "{said}"
    );
    let (code, said) = outcome(
        esg_command(["deliver", "--business-date", "2026-11-24", "--config"])
            .arg(&world.config_path),
    );
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("no file of 2026-11-24"), "{said}");

    // The share is gone: a few attempts, exit 1, an alert that says what to run.
    std::fs::remove_dir_all(&share).expect("unmount");
    let (code, said) = deliver(&["--retry-for", "0s"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("FAILED compliance-share"), "{said}");
    let (code, said) =
        outcome(esg_command(["check-config", "--connect", "--config"]).arg(&world.config_path));
    assert_eq!(
        code,
        Some(0),
        "a target that is down does not fail the pre-flight: {said}"
    );
    assert!(
        said.contains("WARN delivery target compliance-share writable"),
        "{said}"
    );
    let alerts = got.lock().expect("alerts").clone();
    let failed: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "delivery_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{alerts:?}");
    assert_eq!(
        failed[0]["details"]["next_step"],
        format!("esg deliver --business-date {DAY}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_a_delivery_is_retried_the_next_run_of_the_date_delivers_what_is_missing() {
    let (url, got) = receiver().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let share = tmp.path().join("share");
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let world = World::start(
        quiet_sim(80),
        &format!(
            "[encryption]\nrecipients = [\"{recipient}\"]\n{}\n{}",
            alerts_config(&url),
            share_config(&share)
        ),
    )
    .await;
    let mut child = esg_command(["run", "--once", "--business-date", DAY])
        .arg("--config")
        .arg(&world.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("esg starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    retrying_alert(&got, &mut child, deadline).await;
    // kill -9 while the share is being retried.
    child.kill().expect("kill");
    child.wait().expect("reaped");
    std::fs::create_dir(&share).expect("mount");

    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", DAY, "--config"]).arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");
    let local = names_in(&world.out());
    assert!(
        !local.is_empty() && local.iter().all(|n| n.ends_with(".age")),
        "{local:?}"
    );
    assert_eq!(
        names_in(&share),
        local,
        "the share holds the encrypted files, nothing else"
    );
    let delivered: Vec<String> = record(&world)
        .into_iter()
        .filter(|e| e.outcome == "delivered")
        .map(|e| e.file)
        .collect();
    assert_eq!(delivered.len(), local.len(), "{delivered:?}");
    assert_eq!(
        delivered.last().map(String::as_str),
        Some("FirmESGRatings_20261123.csv.age")
    );
}

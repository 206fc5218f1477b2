//! The summary's counts are true, end to end on the embedded transport against the simulator:
//! an account failed by the deadline is not carried forward, HTTP requests are counted apart
//! from scoring attempts, requests answered 429 are the 429s the vendor sent (single calls and
//! batches, daily run and re-run), and a re-run's summary keeps the day's totals and lists the
//! re-runs.

mod common;

use common::*;
use esg::runner::Runner;
use esg_assembler::summary::Summary;
use esg_schemas::RunOutcome;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn summary_file(world: &World, day: chrono::NaiveDate) -> std::path::PathBuf {
    world
        .out()
        .join(esg_assembler::output::file_names(day).summary_json)
}

/// The summary as the file beside the ratings file says it.
fn read_summary(world: &World, day: chrono::NaiveDate) -> Summary {
    let path = summary_file(world, day);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("summary parses")
}

/// Rows of the ratings file by Processing Status, and by primary focus.
fn file_counts(
    world: &World,
    day: chrono::NaiveDate,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let rows = read_csv(&world.csv_path(day));
    let (mut status, mut focus) = (BTreeMap::new(), BTreeMap::new());
    for pillar in ["Environmental", "Social", "Governance"] {
        focus.insert(pillar.to_owned(), 0);
    }
    for r in &rows[1..] {
        *status.entry(r[9].clone()).or_default() += 1;
        if r[6] != "N/A" {
            *focus.entry(r[6].clone()).or_default() += 1;
        }
    }
    (status, focus)
}

/// ESG API answers 429 the simulator sent between two of its snapshots (quota, fault and storm).
fn answered_429(before: &esg_simulator::SimStats, after: &esg_simulator::SimStats) -> u64 {
    let of = |s: &esg_simulator::SimStats| s.esg_by_status.get(&429).copied().unwrap_or(0);
    let total = of(after) - of(before);
    let kinds =
        |s: &esg_simulator::SimStats| s.rate_limited + s.fault_rate_limited + s.storm_rate_limited;
    assert_eq!(total, kinds(after) - kinds(before), "{after:?}");
    total
}

fn assert_adds_up(s: &Summary) {
    assert_eq!(s.successful + s.partial + s.failed, s.accounts, "{s:?}");
    assert_eq!(
        s.scored_in_run + s.carried_forward + s.deadline_failed + s.never_scored,
        s.accounts,
        "{s:?}"
    );
    assert!(s.inconsistencies().is_empty(), "{:?}", s.inconsistencies());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_failed_by_the_deadline_are_not_carried_forward() {
    let world = World::start(quiet_sim(120), "").await;
    let day1 = date("2026-11-23");
    run_day(&world, day1).await;
    let active = active_ids(&world.sim).await;

    // Overnight 40 accounts change; the next day the job's own rate limit lets it score only a
    // few before its clock jumps past the deadline.
    let touched: Vec<String> = active.iter().step_by(3).take(40).cloned().collect();
    for id in &touched {
        world.sim.touch(id);
    }
    let mut config = world.config();
    config.esg_api.rate_limit_per_second = 4;
    config.esg_api.burst = Some(1);
    config.esg_api.batch_size = 1;
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock: esg_assembler::Clock =
        Arc::new(move || chrono::Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    let runner = Runner::open(config, clock).await.expect("runner opens");
    let day2 = date("2026-11-24");
    // The jump comes once the run is sealed and a few accounts are scored: by progress, not by
    // a sleep.
    let outcome = runner
        .run_daily(day2, false, CancellationToken::new(), move |p| {
            if p.expected.is_some() && p.scored >= 2 {
                offset.store(2 * 86_400, Ordering::SeqCst);
            }
        })
        .await
        .expect("run ends");
    let report = outcome.report.expect("files written");
    assert_eq!(report.outcome, RunOutcome::TimedOut);
    let s = read_summary(&world, day2);
    assert_eq!(s, report.summary, "the file says what the run reported");

    // Every count against the file itself.
    let rows = read_csv(&world.csv_path(day2));
    let errors = read_csv(&report.errors);
    let deadline_rows = errors[1..].iter().filter(|r| r[2] == "DEADLINE").count() as u64;
    let of_day = |d: &str| rows[1..].iter().filter(|r| r[8] == d).count() as u64;
    assert!(deadline_rows > 0, "the deadline came first");
    assert_eq!(s.deadline_failed, deadline_rows);
    assert_eq!(s.error_codes.get("DEADLINE").copied(), Some(deadline_rows));
    assert_eq!(
        s.scored_in_run,
        of_day("2026-11-24"),
        "rows scored today show today's date"
    );
    assert_eq!(
        s.carried_forward,
        of_day("2026-11-23"),
        "carried rows keep their own date"
    );
    assert_eq!(s.scored_in_run + s.deadline_failed, touched.len() as u64);
    assert_eq!(s.carried_forward, (active.len() - touched.len()) as u64);
    assert_eq!(s.never_scored, 0);
    assert_eq!(s.accounts, active.len() as u64);
    assert_adds_up(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_counted_apart_from_scoring_attempts() {
    // A vendor that answers 5xx now and then and whose quota (30/s) is below the job's rate:
    // retries and 429s make requests beyond one per account.
    let world = World::start(
        esg_simulator::SimConfig {
            transient_error_rate: 0.2,
            rate_limit_per_second: Some(30),
            burst: 5,
            ..quiet_sim(150)
        },
        "",
    )
    .await;
    // Single calls: each account's own retries and 429s.
    world.replace_in_config("max_in_flight = 64", "max_in_flight = 64\nbatch_size = 1");
    let day = date("2026-11-23");
    let before = world.sim.stats();
    let outcome = run_day(&world, day).await;
    let after = world.sim.stats();
    let s = outcome.report.expect("files written").summary;
    let sent = after.esg_requests - before.esg_requests;
    let rate_limited = after.rate_limited - before.rate_limited;

    // Requests: exactly what reached the vendor, and of them exactly those it answered 429.
    assert_eq!(s.api_requests, sent, "{s:?}");
    assert_eq!(s.api_rate_limited, answered_429(&before, &after), "{s:?}");
    assert!(rate_limited > 0, "the quota answered 429: {after:?}");
    assert!(sent > s.accounts, "retries and 429s cost requests: {sent}");
    // Attempts: at least one and at most three per account; a request answered 429 spends no
    // attempt, any other request does (no 401 here).
    assert!(
        s.api_attempts >= s.accounts && s.api_attempts <= 3 * s.accounts,
        "{s:?}"
    );
    assert_eq!(
        s.api_attempts,
        sent - rate_limited,
        "attempts {} requests {sent} of which 429 {rate_limited}",
        s.api_attempts
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary_file(&world, day)).expect("summary"))
            .expect("json");
    assert!(
        json.get("api_calls").is_none(),
        "the old key is gone: {json}"
    );
    assert_eq!(json["api_requests"].as_u64(), Some(sent));
    assert_eq!(json["api_rate_limited"].as_u64(), Some(rate_limited));
    assert_adds_up(&s);
}

/// Guards `api_rate_limited` in batch mode: a batch answered 429 is one request answered 429
/// (the scorer counts it on one account of the batch, not on each), in the daily run (the
/// vendor's first-attempt 429 fault) and in a re-run (a 429 storm), in the summary and in the
/// text `esg run` prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answered_429_are_the_429s_the_vendor_sent_in_batches_too() {
    let world = World::start(
        esg_simulator::SimConfig {
            rate_limited_first_attempt_rate: 0.5,
            fault_retry_after: std::time::Duration::from_secs(1),
            ..quiet_sim(150)
        },
        "",
    )
    .await;
    // Small batches: the fault draws by a batch's first account, so many batches draw often.
    world.replace_in_config("max_in_flight = 64", "max_in_flight = 64\nbatch_size = 5");
    let day = date("2026-11-23");
    let before = world.sim.stats();
    let outcome = run_day(&world, day).await;
    let after = world.sim.stats();
    let s = outcome.report.expect("files written").summary;
    assert!(
        after.batch_requests - before.batch_requests >= 20,
        "batches sent: {after:?}"
    );
    let sent_429 = answered_429(&before, &after);
    assert!(
        after.fault_rate_limited > before.fault_rate_limited,
        "{after:?}"
    );
    assert_eq!(s.api_rate_limited, sent_429, "{s:?}");
    assert_eq!(s.api_requests, after.esg_requests - before.esg_requests);
    assert!(
        s.text()
            .contains(&format!("HTTP requests ({sent_429} answered 429)")),
        "{}",
        s.text()
    );
    assert_eq!(read_summary(&world, day).api_rate_limited, sent_429);
    assert_adds_up(&s);
    let daily_429 = sent_429;

    // A re-run in a storm: every request answered 429 until it ends, then the accounts score.
    world
        .sim
        .update(|c| c.rate_limited_first_attempt_rate = 0.0);
    let active = active_ids(&world.sim).await;
    let ids: Vec<String> = active[..5].to_vec();
    let before = world.sim.stats();
    world.sim.storm(std::time::Duration::from_secs(3));
    let run = rerun(&world, day, &ids).await;
    let after = world.sim.stats();
    let sent_429 = answered_429(&before, &after);
    assert!(
        after.storm_rate_limited > before.storm_rate_limited,
        "{after:?}"
    );
    let s = run.report.expect("files written").summary;
    let entry = s.reruns.last().expect("the re-run is listed");
    assert_eq!(entry.scored, ids.len() as u64, "{entry:?}");
    assert_eq!(entry.api_rate_limited, sent_429, "{entry:?}");
    assert_eq!(entry.api_requests, after.esg_requests - before.esg_requests);
    // The daily run's own count stays the daily run's.
    assert_eq!(s.api_rate_limited, daily_429);
    assert!(
        s.text()
            .contains(&format!("requests ({sent_429} answered 429); finished")),
        "{}",
        s.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_summary_keeps_the_days_totals_and_lists_every_rerun() {
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.05,
            partial_rate: 0.05,
            ..quiet_sim(200)
        },
        "",
    )
    .await;
    let day = date("2026-11-23");
    run_day(&world, day).await;
    let daily = read_summary(&world, day);
    assert!(daily.reruns.is_empty());
    let active = active_ids(&world.sim).await;

    // The vendor re-rates; three accounts are re-run, then two more.
    world.sim.rerate();
    let first: Vec<String> = vec![active[2].clone(), active[50].clone(), active[120].clone()];
    let first_run = rerun(&world, day, &first).await;
    let second: Vec<String> = vec![active[7].clone(), active[8].clone()];
    let second_run = rerun(&world, day, &second).await;

    let s = read_summary(&world, day);
    // The file's totals: every account of the day, counted from the rewritten file.
    let (status, focus) = file_counts(&world, day);
    assert_eq!(s.accounts, active.len() as u64);
    assert_eq!(s.successful, status.get("Successful").copied().unwrap_or(0));
    assert_eq!(s.partial, status.get("Partial").copied().unwrap_or(0));
    assert_eq!(s.failed, status.get("Failed").copied().unwrap_or(0));
    assert_eq!(
        s.primary_focus, focus,
        "the distribution over the whole file"
    );
    assert!(s.average_overall.is_some());
    // The daily run's own facts stay the daily run's.
    assert_eq!(s.run_id, daily.run_id);
    assert_eq!(s.outcome, daily.outcome);
    assert_eq!(s.started_at, daily.started_at);
    assert_eq!(s.finished_at, daily.finished_at);
    assert_eq!(s.duration_seconds, daily.duration_seconds);
    assert_eq!(s.scored_in_run, daily.scored_in_run);
    assert_eq!(s.carried_forward, daily.carried_forward);
    assert_eq!(
        (s.api_attempts, s.api_requests),
        (daily.api_attempts, daily.api_requests)
    );
    assert_adds_up(&s);
    // Each re-run is listed, in order.
    let ids: Vec<&str> = s.reruns.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, [first_run.run_id.as_str(), second_run.run_id.as_str()]);
    let rows = read_csv(&world.csv_path(day));
    let failed_of = |ids: &[String]| {
        rows[1..]
            .iter()
            .filter(|r| ids.contains(&r[0]) && r[9] == "Failed")
            .count() as u64
    };
    for (entry, ids) in s.reruns.iter().zip([&first, &second]) {
        assert_eq!(entry.kind, "Rerun");
        assert_eq!(entry.accounts, ids.len() as u64);
        assert_eq!(entry.scored, ids.len() as u64);
        assert_eq!(entry.failed, failed_of(ids));
        assert_eq!(entry.not_in_file, 0);
        assert!(entry.api_attempts >= ids.len() as u64);
        // A handful of accounts goes out in one batch request.
        assert!(entry.api_requests >= 1);
        assert!(entry.finished_at >= daily.finished_at);
    }
    assert_eq!(
        second_run.report.expect("files").summary,
        s,
        "the re-run reported what the file says"
    );

    // The state store lost (deleted to be rebuilt from the topics): the daily run's facts and
    // the earlier re-runs come back from the previous summary.
    let state = world.dir.path().join("state");
    for name in ["assembler.db", "assembler.db-wal", "assembler.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }
    let third: Vec<String> = vec![active[9].clone()];
    let third_run = rerun(&world, day, &third).await;
    let s3 = read_summary(&world, day);
    assert_eq!(s3.scored_in_run, daily.scored_in_run);
    assert!(!s3.daily_facts_lost);
    let ids: Vec<&str> = s3.reruns.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            first_run.run_id.as_str(),
            second_run.run_id.as_str(),
            third_run.run_id.as_str()
        ]
    );
    assert_adds_up(&s3);

    // And with the summary unreadable as well: the file's totals are still true, the lost
    // daily counts are flagged, not invented.
    for name in ["assembler.db", "assembler.db-wal", "assembler.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }
    std::fs::write(summary_file(&world, day), b"{ truncated").expect("write");
    let fourth: Vec<String> = vec![active[11].clone()];
    let fourth_run = rerun(&world, day, &fourth).await;
    let s4 = read_summary(&world, day);
    assert!(s4.daily_facts_lost);
    assert_eq!(
        s4.run_id, daily.run_id,
        "the daily run's id from the runs it replayed"
    );
    assert_eq!(s4.accounts, active.len() as u64);
    let (status, _) = file_counts(&world, day);
    assert_eq!(s4.failed, status.get("Failed").copied().unwrap_or(0));
    assert_eq!(s4.successful + s4.partial + s4.failed, s4.accounts);
    assert_eq!(
        s4.reruns.last().map(|r| r.run_id.as_str()),
        Some(fourth_run.run_id.as_str())
    );
}

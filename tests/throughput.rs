//! The vendor at its limits, end to end on the embedded log: a 429 storm ridden out, a share of
//! first attempts answered 429 while the run keeps near the quota, a tenant without the batch
//! endpoint, and conditional requests that keep the stored analysis on a 304.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Rows of the day's file by account id (header left out).
fn rows(world: &World, day: chrono::NaiveDate) -> HashMap<String, Vec<String>> {
    read_csv(&world.csv_path(day))
        .into_iter()
        .skip(1)
        .map(|r| (r[0].clone(), r))
        .collect()
}

fn statuses(rows: &HashMap<String, Vec<String>>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in rows.values() {
        *counts.entry(r[9].clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_second_429_storm_is_ridden_out_with_nothing_failed() {
    let world = World::start(quiet_sim(300), "").await;
    // Single calls: every account meets the storm on its own.
    world.replace_in_config("max_in_flight = 64", "max_in_flight = 16\nbatch_size = 1");
    let day = date("2026-11-23");
    let started = Instant::now();
    world.sim.storm(Duration::from_secs(20));
    let outcome = run_day(&world, day).await;
    let elapsed = started.elapsed();
    let stats = world.sim.stats();
    assert!(stats.storm_rate_limited > 0, "{stats:?}");
    assert!(
        elapsed >= Duration::from_secs(19),
        "the run cannot end inside the storm: {elapsed:?}"
    );
    let rows = rows(&world, day);
    assert_eq!(rows.len(), active_ids(&world.sim).await.len());
    assert_eq!(statuses(&rows).get("Failed"), None, "{:?}", statuses(&rows));
    let summary = outcome.report.expect("files").summary;
    assert_eq!(summary.failed, 0);
    // 429s are not attempts: one attempt per account, whatever the storm cost in requests.
    assert_eq!(summary.api_attempts, summary.accounts, "{summary:?}");
    assert!(summary.api_requests > summary.accounts, "{summary:?}");
    // The group paused rather than hammering: far fewer 429s than 300 accounts × 20 s.
    assert!(
        stats.storm_rate_limited < 300 * 20,
        "{} answers 429 in the storm",
        stats.storm_rate_limited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_share_of_first_attempts_answered_429_the_run_keeps_near_the_quota() {
    let quota = 200;
    let world = World::start(
        esg_simulator::SimConfig {
            rate_limit_per_second: Some(quota),
            burst: quota,
            rate_limited_first_attempt_rate: 0.08,
            ..quiet_sim(2500)
        },
        "",
    )
    .await;
    world.replace_in_config(
        "rate_limit_per_second = 1000",
        &format!("rate_limit_per_second = {quota}"),
    );
    world.replace_in_config("max_in_flight = 64", "max_in_flight = 64\nbatch_size = 1");
    let day = date("2026-11-23");
    let outcome = run_day(&world, day).await;
    let stats = world.sim.stats();
    let summary = outcome.report.expect("files").summary;
    assert_eq!(summary.failed, 0, "no account fails for a 429");
    assert!(stats.fault_rate_limited > 100, "{stats:?}");
    // The exact figure is in docs/benchmarks.md; the test keeps loose bounds.
    let rate = stats.esg_requests_per_second();
    assert!(
        rate >= 0.8 * f64::from(quota),
        "{rate:.0} requests/s of a {quota}/s quota; {stats:?}"
    );
    assert!(rate <= 1.1 * f64::from(quota), "{rate:.0} requests/s");
    assert_eq!(
        summary.api_attempts, summary.accounts,
        "429s spend no attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_the_batch_endpoint_is_scored_with_single_calls() {
    let batch_day = World::start(quiet_sim(400), "").await;
    let day = date("2026-11-23");
    run_day(&batch_day, day).await;
    let with_batches = batch_day.sim.stats();

    let world = World::start(
        esg_simulator::SimConfig {
            batch_endpoint: false,
            ..quiet_sim(400)
        },
        "",
    )
    .await;
    let outcome = run_day(&world, day).await;
    let stats = world.sim.stats();
    let active = active_ids(&world.sim).await.len() as u64;
    assert_eq!(stats.batch_requests, 1, "the endpoint is tried once");
    assert_eq!(stats.esg_requests, 1 + active, "then one call per account");
    assert_eq!(
        std::fs::read(world.csv_path(day)).expect("file"),
        std::fs::read(batch_day.csv_path(day)).expect("file"),
        "the same file either way"
    );
    let summary = outcome.report.expect("files").summary;
    assert_eq!(summary.api_attempts, summary.accounts);
    assert_eq!(summary.api_requests, stats.esg_requests);
    // With the endpoint: batches of up to 100, one request each.
    assert_eq!(with_batches.esg_requests, with_batches.batch_requests);
    assert!(with_batches.batch_requests <= active.div_ceil(100) + 2);
    assert_eq!(with_batches.batch_accounts, active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_account_is_asked_with_its_etag_and_a_304_keeps_the_stored_analysis() {
    let world = World::start(quiet_sim(120), "").await;
    // ETags come with single calls only.
    world.replace_in_config("max_in_flight = 64", "max_in_flight = 64\nbatch_size = 1");
    let day = date("2026-11-23");
    run_day(&world, day).await;
    let before = rows(&world, day);
    let active = active_ids(&world.sim).await;

    // Nothing changed at the vendor: the re-run's calls are answered 304.
    let unchanged: Vec<String> = active[..10].to_vec();
    rerun(&world, day, &unchanged).await;
    let stats = world.sim.stats();
    assert_eq!(stats.not_modified, 10, "{stats:?}");
    let after = rows(&world, day);
    for id in &unchanged {
        assert_eq!(after[id], before[id], "{id}: the stored analysis is kept");
    }
    assert_eq!(after, before);

    // The vendor re-rates: the ETags no longer match, fresh analyses replace the stored ones.
    world.sim.rerate();
    let changed: Vec<String> = active[10..20].to_vec();
    rerun(&world, day, &changed).await;
    assert_eq!(
        world.sim.stats().not_modified,
        10,
        "no 304 after a re-rating"
    );
    let later = rows(&world, day);
    let differ = changed
        .iter()
        .filter(|id| later[*id] != before[*id])
        .count();
    assert!(differ >= 8, "only {differ} of 10 re-rated rows changed");
    for id in &changed {
        assert_eq!(later[id][9], "Successful", "{id}");
    }

    // And the 304 after a re-rating works again from the new ETags.
    rerun(&world, day, &changed).await;
    assert_eq!(world.sim.stats().not_modified, 20);
    assert_eq!(rows(&world, day), later);
}

//! The whole daily job on the embedded transport, in-process, against the simulator.

mod common;

use common::*;
use esg::runner::Runner;
use esg_schemas::RunOutcome;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const HEADER: &str = "Account ID,Account Name,Overall ESG Score,Environmental Score,Social Score,Governance Score,Primary ESG Focus,Primary Focus Score,Analysis Date,Processing Status";

async fn run_day(world: &World, day: chrono::NaiveDate, full: bool) -> esg::runner::Outcome {
    let pipeline = Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("pipeline opens");
    pipeline
        .run_daily(day, full, CancellationToken::new(), |_| {})
        .await
        .expect("run completes")
}

fn is_score_cell(s: &str) -> bool {
    s == "N/A"
        || (s.len() >= 4
            && s.split_once('.').is_some_and(|(i, f)| {
                f.len() == 2
                    && !i.is_empty()
                    && i.chars().chain(f.chars()).all(|c| c.is_ascii_digit())
            }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_day_rates_every_active_account_once() {
    let world = World::start(
        esg_simulator::SimConfig {
            accounts: 600,
            transient_error_rate: 0.05,
            permanent_error_rate: 0.02,
            partial_rate: 0.03,
            out_of_contract_rate: 0.01,
            malformed_record_rate: 0.01,
            duplicate_rate: 0.02,
            rate_limit_per_second: Some(400),
            burst: 50,
            ..Default::default()
        },
        "",
    )
    .await;
    // The job's share of the quota equals the vendor's quota.
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    let text = text.replace(
        "rate_limit_per_second = 1000",
        "rate_limit_per_second = 400\nburst = 50",
    );
    std::fs::write(&world.config_path, text).expect("config");
    let day = date("2026-11-23");
    let outcome = run_day(&world, day, false).await;
    let report = outcome.report.expect("assembled now");
    assert_ne!(report.outcome, RunOutcome::TimedOut);

    // The header, byte for byte, with CRLF line ends.
    let bytes = std::fs::read(world.csv_path(day)).expect("file");
    assert!(bytes.starts_with(format!("{HEADER}\r\n").as_bytes()));

    let rows = read_csv(&world.csv_path(day));
    let ids: Vec<String> = rows[1..].iter().map(|r| r[0].clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "sorted by id, no duplicates");
    assert_eq!(
        ids,
        active_ids(&world.sim).await,
        "every active account, nothing else"
    );

    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows[1..] {
        assert_eq!(r.len(), 10);
        for cell in [&r[2], &r[3], &r[4], &r[5], &r[7]] {
            assert!(is_score_cell(cell), "score cell {cell:?} in {r:?}");
        }
        *statuses.entry(r[9].clone()).or_default() += 1;
        match r[9].as_str() {
            "Failed" => assert!(r[2..9].iter().all(|c| c == "N/A"), "{r:?}"),
            "Successful" => {
                assert!(r[2..9].iter().all(|c| c != "N/A"), "{r:?}");
                assert!(["Environmental", "Social", "Governance"].contains(&r[6].as_str()));
                assert_eq!(r[8], "2026-11-23", "analysis date as of the business date");
            }
            "Partial" => assert!(
                r[2..9].iter().any(|c| c == "N/A") && r[2..9].iter().any(|c| c != "N/A"),
                "{r:?}"
            ),
            other => panic!("status {other:?}"),
        }
        // Formula neutralisation of names.
        let name = &r[1];
        assert!(
            !name.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "name not neutralised: {name:?}"
        );
    }
    assert!(
        statuses.get("Failed").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        statuses.get("Partial").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        rows[1..].iter().any(|r| r[1].starts_with('\'')),
        "some hostile names were neutralised"
    );
    assert!(
        rows[1..]
            .iter()
            .any(|r| r[1].contains('\n') || r[1].contains(',')),
        "names with commas or line breaks survive"
    );

    // The errors file lists exactly the rows that are not Successful.
    let errors = read_csv(&report.errors);
    assert_eq!(
        errors[0],
        vec![
            "Account ID",
            "Processing Status",
            "Error Code",
            "Error Message",
            "Attempts",
            "Last Attempt Time"
        ]
    );
    let not_ok: BTreeSet<&str> = rows[1..]
        .iter()
        .filter(|r| r[9] != "Successful")
        .map(|r| r[0].as_str())
        .collect();
    let listed: BTreeSet<&str> = errors[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(not_ok, listed);
    assert!(errors[1..]
        .iter()
        .any(|r| r[2] == "HTTP_404" || r[2] == "HTTP_422"));
    assert!(errors[1..].iter().any(|r| r[2] == "OUT_OF_CONTRACT"));

    // The summary agrees with the file.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.summary_path).expect("summary"))
            .expect("json");
    assert_eq!(summary["accounts"].as_u64(), Some(ids.len() as u64));
    assert_eq!(summary["failed"].as_u64(), statuses.get("Failed").copied());
    assert_eq!(
        summary["scored_in_run"].as_u64(),
        Some(ids.len() as u64),
        "first day scores all"
    );
    assert!(summary["malformed_records"].as_u64().unwrap_or(0) > 0);
    assert!(summary["api_attempts"].as_u64().unwrap_or(0) >= ids.len() as u64);

    // Every account was called, retries aside, and none more than 3 times.
    assert!(world.sim.accounts_called_at_least(4).is_empty());

    // Running the same day again does nothing.
    world.sim.reset_call_counts();
    let again = run_day(&world, day, false).await;
    assert!(again.report.is_none(), "a completed run is not run again");
    assert!(world.sim.accounts_called_at_least(1).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_day_scores_only_what_changed() {
    let world = World::start(
        esg_simulator::SimConfig {
            accounts: 300,
            permanent_error_rate: 0.02,
            partial_rate: 0.02,
            ..quiet_sim(300)
        },
        "",
    )
    .await;
    let day1 = date("2026-11-23");
    run_day(&world, day1, false).await;
    let rows1 = read_csv(&world.csv_path(day1));
    let retry: BTreeSet<String> = rows1[1..]
        .iter()
        .filter(|r| r[9] != "Successful")
        .map(|r| r[0].clone())
        .collect();
    assert!(!retry.is_empty());
    let active = active_ids(&world.sim).await;

    // Overnight: two accounts change, one closes, three are opened.
    let touched = [active[3].clone(), active[10].clone()];
    for id in &touched {
        world.sim.touch(id);
    }
    let closed = active[20].clone();
    world.sim.set_status(&closed, "CLOSED");
    world.sim.add_accounts(3);
    world.sim.reset_call_counts();

    let day2 = date("2026-11-24");
    let report = run_day(&world, day2, false)
        .await
        .report
        .expect("assembled");
    let after = active_ids(&world.sim).await;
    let new: BTreeSet<String> = after
        .iter()
        .filter(|id| !active.contains(id))
        .cloned()
        .collect();
    assert_eq!(new.len(), 3);

    let mut expected: BTreeSet<String> =
        retry.iter().filter(|id| **id != closed).cloned().collect();
    expected.extend(touched.iter().cloned());
    expected.extend(new.iter().cloned());
    let called: BTreeSet<String> = world.sim.accounts_called_at_least(1).into_iter().collect();
    assert_eq!(
        called, expected,
        "only new, changed and previously failed/partial accounts are called"
    );

    let rows2 = read_csv(&world.csv_path(day2));
    let ids2: Vec<String> = rows2[1..].iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids2, after, "closed account gone, new accounts in");
    // Carried-forward rows keep their own analysis date.
    let by_id1: BTreeMap<&str, &Vec<String>> =
        rows1[1..].iter().map(|r| (r[0].as_str(), r)).collect();
    for r in &rows2[1..] {
        if !expected.contains(&r[0]) {
            assert_eq!(
                Some(&r),
                by_id1.get(r[0].as_str()),
                "carried forward unchanged"
            );
            assert_eq!(r[8], "2026-11-23");
        } else if r[9] == "Successful" {
            assert_eq!(r[8], "2026-11-24");
        }
    }
    let s = &report.summary;
    assert_eq!(s.scored_in_run, expected.len() as u64);

    // The stores keep no per-account bookkeeping of finished runs: they do not grow every day.
    let state = world.dir.path().join("state");
    let count = |db: &str, table: &str| -> i64 {
        let c = rusqlite::Connection::open(state.join(db)).expect("open store");
        c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    };
    for (db, table) in [
        ("producer.db", "listing"),
        ("producer.db", "pending"),
        ("producer.db", "roster_changes"),
        ("assembler.db", "expected"),
        ("assembler.db", "run_scored"),
    ] {
        assert_eq!(count(db, table), 0, "{db} {table}");
    }
    assert_eq!(count("assembler.db", "roster") as usize, after.len());
    assert_eq!(s.carried_forward, (after.len() - expected.len()) as u64);
    assert_eq!(s.new_accounts, 3);
    assert_eq!(s.gone_accounts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_scores_everything_and_stale_scores_are_refreshed() {
    let world = World::start(quiet_sim(100), "[producer]\nrefresh_after = \"7days\"").await;
    run_day(&world, date("2026-11-01"), false).await;
    world.sim.reset_call_counts();
    // Five days later nothing is stale yet.
    run_day(&world, date("2026-11-06"), false).await;
    assert!(world.sim.accounts_called_at_least(1).is_empty());
    // Nine days after the first scores, every account is stale.
    run_day(&world, date("2026-11-10"), false).await;
    let active = active_ids(&world.sim).await;
    assert_eq!(world.sim.accounts_called_at_least(1), active);
    world.sim.reset_call_counts();
    run_day(&world, date("2026-11-11"), true).await;
    assert_eq!(
        world.sim.accounts_called_at_least(1),
        active,
        "--full scores all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_replaces_only_the_chosen_rows() {
    let world = World::start(quiet_sim(200), "").await;
    let day = date("2026-11-23");
    run_day(&world, day, false).await;
    let before = std::fs::read_to_string(world.csv_path(day)).expect("file");
    let active = active_ids(&world.sim).await;
    let chosen = vec![active[1].clone(), active[7].clone()];

    world.sim.rerate(); // the vendor re-rates: every score would change
    world.sim.reset_call_counts();
    let pipeline = Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("opens");
    let outcome = pipeline
        .rerun(
            day,
            esg::runner::Selection::Accounts(chosen.clone()),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("rerun");
    assert_eq!(outcome.run_id, "2026-11-23.1");
    assert_eq!(world.sim.accounts_called_at_least(1), chosen);

    let after = std::fs::read_to_string(world.csv_path(day)).expect("file");
    let b: Vec<&str> = before.split("\r\n").collect();
    let a: Vec<&str> = after.split("\r\n").collect();
    assert_eq!(a.len(), b.len());
    let mut changed = Vec::new();
    for (x, y) in b.iter().zip(&a) {
        if x != y {
            changed.push(y.split(',').next().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(changed, chosen, "only the chosen rows changed");

    // A day without a file cannot be re-run into.
    let err = pipeline
        .rerun(
            date("2026-11-20"),
            esg::runner::Selection::Accounts(chosen.clone()),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("no file for that day");
    assert!(format!("{err:#}").contains("run the day first"), "{err:#}");

    // An account that is not active is refused with its id named.
    let err = pipeline
        .rerun(
            day,
            esg::runner::Selection::Accounts(vec!["NOPE-1".into()]),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("unknown account");
    assert!(format!("{err:#}").contains("NOPE-1"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_pending_accounts_fail_and_the_file_is_written() {
    // A slow vendor: 5 requests/s for 80 accounts cannot finish in time.
    let world = World::start(
        esg_simulator::SimConfig {
            rate_limit_per_second: Some(5),
            burst: 5,
            ..quiet_sim(80)
        },
        "",
    )
    .await;
    let mut config = world.config();
    config.esg_api.rate_limit_per_second = 5;
    config.esg_api.burst = Some(5);
    config.esg_api.batch_size = 1;
    // The clock jumps a day ahead once the run is under way.
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock: esg_assembler::Clock =
        Arc::new(move || chrono::Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    let pipeline = Runner::open(config, clock).await.expect("opens");
    let day = date("2026-11-23");
    let jump = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        offset.store(86_400, Ordering::SeqCst);
    });
    let outcome = pipeline
        .run_daily(day, false, CancellationToken::new(), |_| {})
        .await
        .expect("run ends");
    jump.await.expect("join");
    let report = outcome.report.expect("assembled");
    assert_eq!(report.outcome, RunOutcome::TimedOut);
    let rows = read_csv(&world.csv_path(day));
    assert_eq!(
        rows.len() - 1,
        active_ids(&world.sim).await.len(),
        "every account has a row"
    );
    let errors = read_csv(&report.errors);
    let deadline = errors[1..].iter().filter(|r| r[2] == "DEADLINE").count();
    assert!(deadline > 0, "pending accounts failed with DEADLINE");
    assert!(
        rows[1..].iter().any(|r| r[9] == "Successful"),
        "scored accounts kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_output_fails_the_run_clearly_and_loses_nothing() {
    let world = World::start(quiet_sim(120), "").await;
    let day = date("2026-11-23");
    // The output "directory" is a file: creating the ratings file fails like a full disk would.
    let blocked = world.dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").expect("write");
    let mut config = world.config();
    config.output.dir = blocked.clone();
    let pipeline = Runner::open(config, esg_assembler::system_clock())
        .await
        .expect("opens");
    let err = pipeline
        .run_daily(day, false, CancellationToken::new(), |_| {})
        .await
        .expect_err("the files cannot be written");
    let text = format!("{err:#}");
    assert!(text.contains("blocked"), "the error names the path: {text}");
    // Found by the pre-flight: no quota spent on a day that could not be delivered.
    assert!(text.contains("pre-flight failed"), "{text}");
    assert_eq!(world.sim.stats().esg_requests, 0);
    drop(pipeline);

    // Fixed: the same command runs the day.
    let outcome = run_day(&world, day, false).await;
    assert!(outcome.report.is_some());
    let rows = read_csv(&world.csv_path(day));
    assert_eq!(rows.len() - 1, active_ids(&world.sim).await.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_assembler_state_is_rebuilt_from_the_log() {
    let world = World::start(quiet_sim(150), "").await;
    let day1 = date("2026-11-23");
    run_day(&world, day1, false).await;
    let state = world.dir.path().join("state");
    for name in ["assembler.db", "assembler.db-wal", "assembler.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }
    world.sim.reset_call_counts();
    // Nothing changed overnight: the next file carries every score forward from the rebuilt state.
    let day2 = date("2026-11-24");
    let report = run_day(&world, day2, false)
        .await
        .report
        .expect("assembled");
    assert!(world.sim.accounts_called_at_least(1).is_empty());
    let day1_bytes = std::fs::read(world.csv_path(day1)).expect("day 1");
    let day2_bytes = std::fs::read(world.csv_path(day2)).expect("day 2");
    assert_eq!(day1_bytes, day2_bytes, "same rows, same analysis dates");
    assert_eq!(report.summary.carried_forward, report.summary.accounts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_system_that_stays_down_fails_the_run_with_the_cause() {
    let world = World::start(
        esg_simulator::SimConfig {
            accounts_transient_error_rate: 1.0,
            ..quiet_sim(50)
        },
        "",
    )
    .await;
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    let text = text.replace(
        "client_secret = \"accounts-secret\"",
        "client_secret = \"accounts-secret\"\nmax_attempts = 2\nbackoff_base = \"5ms\"\nbackoff_cap = \"10ms\"",
    );
    std::fs::write(&world.config_path, text).expect("config");
    let pipeline = Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("opens");
    let err = pipeline
        .run_daily(date("2026-11-23"), false, CancellationToken::new(), |_| {})
        .await
        .expect_err("cannot list accounts");
    let text = format!("{err:#}");
    assert!(text.contains("account system answers"), "{text}");
    assert!(text.contains("/v1/accounts"), "names the URL: {text}");
    assert!(!world.csv_path(date("2026-11-23")).exists());
    assert!(
        world.sim.accounts_called_at_least(1).is_empty(),
        "nothing scored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_state_is_refused() {
    let world = World::start(quiet_sim(10), "").await;
    let first = Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("opens");
    let err = Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .err()
        .expect("second one refused");
    assert!(
        format!("{err:#}").contains("another esg process"),
        "{err:#}"
    );
    drop(first);
    Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("free again once the first is gone");
}

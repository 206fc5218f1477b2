//! The one run path on a bad day, on the embedded log: a collapsed listing, a pre-flight that
//! fails, a date run again with other settings, a re-run with ids that do not exist, a re-run of
//! every account not Successful that resolves the failure-ratio incident, and `esg status`.

mod common;

use common::webhook::{alerts_config, kinds, receiver};
use common::*;
use esg::runner::{DailyRequest, Outcome, Refused, Runner, Selection};
use esg_bus::runs::RunBook;
use esg_producer::ProducerError;
use tokio_util::sync::CancellationToken;

async fn open(world: &World) -> Runner {
    Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("runner opens")
}

async fn daily(runner: &Runner, day: &str, full: bool, accept: bool) -> anyhow::Result<Outcome> {
    let request = DailyRequest {
        business_date: date(day),
        full,
        accept_roster_change: accept,
    };
    runner
        .daily(request, true, CancellationToken::new(), |_| {})
        .await
}

fn refused(e: &anyhow::Error) -> Option<&Refused> {
    e.downcast_ref::<Refused>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collapsed_listing_fails_the_run_before_anything_is_published() {
    let (url, got) = receiver().await;
    let world = World::start(quiet_sim(80), &alerts_config(&url)).await;
    let runner = open(&world).await;
    let first = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day one");
    let rows = read_csv(&world.csv_path(date("2026-11-23"))).len() - 1;
    assert_eq!(Some(rows as i64), first.completed.as_ref().map(|c| c.rows));
    let day_one = std::fs::read(world.csv_path(date("2026-11-23"))).expect("file");

    // The account system loses half its accounts overnight.
    let active = active_ids(&world.sim).await;
    for id in active.iter().take(active.len() / 2 + 1) {
        world.sim.set_status(id, "CLOSED");
    }
    let accounts_end = runner
        .bus
        .transport
        .end_offsets(&runner.bus.topics.accounts)
        .await
        .expect("ends");
    let err = daily(&runner, "2026-11-24", false, false)
        .await
        .expect_err("the roster guard stops the run");
    let guard = err
        .chain()
        .find_map(|c| c.downcast_ref::<ProducerError>())
        .expect("a producer error");
    assert!(
        matches!(guard, ProducerError::RosterCollapsed { listed, previous, .. }
            if *previous == rows as u64 && *listed < *previous),
        "{err:#}"
    );
    assert!(
        format!("{err:#}").contains("--accept-roster-change"),
        "{err:#}"
    );
    // Nothing published: no tombstone, no file of the day, the previous file untouched.
    let after = runner
        .bus
        .transport
        .end_offsets(&runner.bus.topics.accounts)
        .await
        .expect("ends");
    assert_eq!(accounts_end, after, "no roster change was published");
    assert!(!world.csv_path(date("2026-11-24")).exists());
    assert_eq!(
        std::fs::read(world.csv_path(date("2026-11-23"))).expect("file"),
        day_one
    );
    assert_eq!(
        kinds(&got),
        vec![("critical_error".to_owned(), "firing".to_owned())]
    );

    // A person checked: the same run goes on and the file holds the accounts left.
    let accepted = daily(&runner, "2026-11-24", false, true)
        .await
        .expect("accepted");
    assert_eq!(accepted.run_id, "2026-11-24");
    let left = active_ids(&world.sim).await.len();
    assert_eq!(
        read_csv(&world.csv_path(date("2026-11-24"))).len() - 1,
        left
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_collapsed_for_a_while_is_listed_again_by_the_next_run() {
    let world = World::start(quiet_sim(80), "").await;
    let runner = open(&world).await;
    daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day one");
    // The account system's listing loses half its accounts for a while (found by the soak:
    // the refused listing was kept, so every later run of the date refused it again, and an
    // accepted change delivered the collapsed roster).
    world.sim.update(|c| c.listing_hidden_share = 0.5);
    daily(&runner, "2026-11-24", false, false)
        .await
        .expect_err("the roster guard stops the run");
    world.sim.update(|c| c.listing_hidden_share = 0.0);
    let repaired = daily(&runner, "2026-11-24", false, false)
        .await
        .expect("listed again, nothing collapsed");
    assert_eq!(repaired.run_id, "2026-11-24");
    assert_eq!(
        read_csv(&world.csv_path(date("2026-11-24"))).len() - 1,
        active_ids(&world.sim).await.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_active_accounts_on_the_first_day_is_refused_too() {
    let world = World::start(quiet_sim(5), "").await;
    for id in active_ids(&world.sim).await {
        world.sim.set_status(&id, "SUSPENDED");
    }
    let runner = open(&world).await;
    let err = daily(&runner, "2026-11-23", false, false)
        .await
        .expect_err("nothing listed");
    assert!(
        format!("{err:#}").contains("no active accounts at all"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pre_flight_spends_no_vendor_quota() {
    let (url, got) = receiver().await;
    let world = World::start(quiet_sim(40), &alerts_config(&url)).await;
    // The output directory cannot be made: a regular file stands where its parent should be.
    std::fs::write(world.dir.path().join("blocker"), b"x").expect("file");
    let blocked = world.dir.path().join("blocker").join("out");
    world.replace_in_config(
        &format!("dir = \"{}\"", world.out().display()),
        &format!("dir = \"{}\"", blocked.display()),
    );
    let runner = open(&world).await;
    let err = daily(&runner, "2026-11-23", false, false)
        .await
        .expect_err("pre-flight fails");
    let text = format!("{err:#}");
    assert!(text.contains("output directory writable"), "{text}");
    assert!(text.contains("blocker/out"), "{text}");
    assert_eq!(world.sim.stats().esg_requests, 0, "no vendor call");
    assert_eq!(
        kinds(&got),
        vec![("critical_error".to_owned(), "firing".to_owned())]
    );
    let report = runner.preflight().await.expect("pre-flight");
    assert!(!report.ok());
    assert_eq!(
        report
            .failures()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["output directory writable", "free space for the file"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_over_a_completed_day_is_a_new_run_that_replaces_its_files() {
    let (url, got) = receiver().await;
    let world = World::start(quiet_sim(60), &alerts_config(&url)).await;
    let runner = open(&world).await;
    daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day");
    let again = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("again");
    assert!(again.already_completed);
    assert_eq!(again.exit_code(), 0);

    world.sim.reset_call_counts();
    let full = daily(&runner, "2026-11-23", true, false)
        .await
        .expect("full");
    assert_eq!(full.run_id, "2026-11-23.1");
    assert!(!full.already_completed);
    let rows = read_csv(&world.csv_path(date("2026-11-23"))).len() - 1;
    assert_eq!(world.sim.accounts_called_at_least(1).len(), rows);
    // Nothing went wrong: no alert.
    assert!(kinds(&got).is_empty(), "{:?}", kinds(&got));
    let book = RunBook::read(&runner.bus).await.expect("book");
    assert_eq!(
        book.delivered_daily(date("2026-11-23"))
            .map(|r| r.run_id.as_str()),
        Some("2026-11-23.1")
    );
    // And once more with --full: that date is done with --full now.
    assert!(
        daily(&runner, "2026-11-23", true, false)
            .await
            .expect("full again")
            .already_completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_checks_its_ids_before_it_creates_a_run() {
    let world = World::start(quiet_sim(30), "").await;
    let runner = open(&world).await;
    daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day");
    let ids = active_ids(&world.sim).await;
    let err = runner
        .rerun(
            date("2026-11-23"),
            Selection::Accounts(vec![
                format!("  {}  ", ids[0]),
                "NOPE-1".into(),
                "NOPE-2".into(),
                "".into(),
            ]),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("unknown ids");
    assert!(matches!(refused(&err), Some(Refused::Usage(_))), "{err:#}");
    assert_eq!(refused(&err).map(Refused::exit_code), Some(2));
    let text = err.to_string();
    assert!(text.contains("NOPE-1,NOPE-2"), "{text}");
    assert!(!text.contains(&ids[0]), "{text}");
    let book = RunBook::read(&runner.bus).await.expect("book");
    assert_eq!(book.of_date(date("2026-11-23")).len(), 1, "no run created");

    // Trimmed ids are taken; the run gets the next id of the date.
    world.sim.reset_call_counts();
    let outcome = runner
        .rerun(
            date("2026-11-23"),
            Selection::Accounts(vec![format!(" {} ", ids[0]), ids[1].clone()]),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("rerun");
    assert_eq!(outcome.run_id, "2026-11-23.1");
    assert_eq!(
        world.sim.accounts_called_at_least(1),
        vec![ids[0].clone(), ids[1].clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_failed_rescores_the_rest_and_resolves_the_incident() {
    let (url, got) = receiver().await;
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.25,
            ..quiet_sim(120)
        },
        &alerts_config(&url),
    )
    .await;
    let runner = open(&world).await;
    daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day");
    let failed_before: Vec<String> = read_csv(&world.csv_path(date("2026-11-23")))
        .into_iter()
        .skip(1)
        .filter(|r| r[9] != "Successful")
        .map(|r| r[0].clone())
        .collect();
    assert!(!failed_before.is_empty());
    assert_eq!(
        kinds(&got),
        vec![("failure_ratio".to_owned(), "firing".to_owned())]
    );

    // The vendor fixed its coverage: --failed re-scores exactly the accounts not Successful.
    world.sim.update(|c| c.permanent_error_rate = 0.0);
    world.sim.reset_call_counts();
    let outcome = runner
        .rerun(
            date("2026-11-23"),
            Selection::NotSuccessful,
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("rerun --failed");
    assert_eq!(outcome.exit_code(), 0);
    assert_eq!(world.sim.accounts_called_at_least(1), failed_before);
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    assert!(rows.iter().skip(1).all(|r| r[9] != "Failed"), "{rows:?}");
    let got_now = got.lock().expect("alerts").clone();
    assert_eq!(got_now.len(), 2, "{got_now:?}");
    assert_eq!(got_now[1]["kind"], "failure_ratio");
    assert_eq!(got_now[1]["status"], "resolved");
    // The same incident: the business date, whichever run raised or resolved it.
    assert_eq!(got_now[0]["run_id"], "2026-11-23");
    assert_eq!(got_now[1]["run_id"], "2026-11-23");

    // Nothing left to re-run: refused, nothing created.
    let err = runner
        .rerun(
            date("2026-11-23"),
            Selection::NotSuccessful,
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("nothing to do");
    assert!(err.to_string().contains("nothing to re-run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_run_and_its_files() {
    let world = World::start(quiet_sim(50), "").await;
    let runner = open(&world).await;
    let outcome = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day");
    let expected = outcome
        .sealed
        .as_ref()
        .map(|s| s.expected_accounts as u64)
        .expect("sealed");
    let status = esg::status::read(&world.config(), Some(date("2026-11-23")))
        .await
        .expect("status");
    assert_eq!(status.run_id, "2026-11-23");
    assert_eq!(status.phase, "completed");
    assert_eq!(status.expected, Some(expected));
    assert_eq!(status.scored, expected);
    assert_eq!(status.eta_seconds, None);
    assert!(status.files.iter().all(|f| f.bytes.is_some()), "{status:?}");
    let text = status.to_string();
    assert!(
        text.contains(&format!("scored {expected} of {expected}")),
        "{text}"
    );
    let err = esg::status::read(&world.config(), Some(date("2026-11-01")))
        .await
        .expect_err("no such run");
    assert!(err.to_string().contains("no run of 2026-11-01"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_cut_short_by_the_deadline_delivers_nothing_until_the_day_is_run_again() {
    let (url, got) = receiver().await;
    // A past date: the run's deadline is its start plus run.max_duration.
    let world = World::start(
        esg_simulator::SimConfig {
            page_delay: std::time::Duration::from_millis(200),
            ..quiet_sim(400)
        },
        &format!("{}\n[run]\nmax_duration = \"3s\"\n", alerts_config(&url)),
    )
    .await;
    world.add_accounts_keys("page_size = 10");
    let runner = open(&world).await;
    let started = std::time::Instant::now();
    let outcome = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("the run ends at its deadline");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the listing was bounded by the deadline"
    );
    let done = outcome.completed.as_ref().expect("completed");
    assert_eq!(done.outcome, esg_schemas::RunOutcome::TimedOut);
    assert!(done.output_file.is_empty(), "no file: {done:?}");
    assert_eq!(outcome.exit_code(), 3);
    assert!(outcome.report.is_none());
    assert!(
        !world.csv_path(date("2026-11-23")).exists(),
        "no header-only file"
    );
    assert_eq!(world.sim.stats().esg_requests, 0);
    assert_eq!(
        kinds(&got),
        vec![("over_window".to_owned(), "firing".to_owned())]
    );

    // The account system is healthy again: the same command delivers the whole file.
    world
        .sim
        .update(|c| c.page_delay = std::time::Duration::ZERO);
    let again = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("the day again");
    assert!(!again.already_completed);
    assert_eq!(again.run_id, "2026-11-23.1");
    assert_eq!(again.exit_code(), 0);
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    assert_eq!(rows.len() - 1, active_ids(&world.sim).await.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_that_cycle_end_the_listing_as_an_error() {
    let (url, got) = receiver().await;
    let world = World::start(
        esg_simulator::SimConfig {
            page_token_cycle_after: 4,
            ..quiet_sim(300)
        },
        &alerts_config(&url),
    )
    .await;
    world.add_accounts_keys("page_size = 20");
    let runner = open(&world).await;
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        daily(&runner, "2026-11-23", false, false),
    )
    .await
    .expect("the listing ends")
    .expect_err("a cycle is an error");
    assert!(format!("{err:#}").contains("page token"), "{err:#}");
    assert!(!world.csv_path(date("2026-11-23")).exists());
    assert_eq!(
        kinds(&got),
        vec![("critical_error".to_owned(), "firing".to_owned())]
    );
    // Fixed: the same command resumes the run and delivers the file.
    world.sim.update(|c| c.page_token_cycle_after = 0);
    let outcome = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("day");
    assert_eq!(outcome.run_id, "2026-11-23");
    assert_eq!(outcome.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_rejects_every_token_opens_the_breaker_and_the_run_resumes_once_fixed() {
    let (url, got) = receiver().await;
    let world = World::start(quiet_sim(200), &alerts_config(&url)).await;
    // A token the vendor refuses: issued for the account system's scope.
    let secret = "client_secret = \"scorer-secret\"";
    let wrong = format!("{secret}\nscope = \"accounts.read\"");
    world.replace_in_config(secret, &wrong);
    let runner = open(&world).await;
    let err = daily(&runner, "2026-11-23", false, false)
        .await
        .expect_err("the breaker stops scoring");
    let message = format!("{err:#}");
    assert!(message.contains("scorer"), "{message}");
    assert!(!world.csv_path(date("2026-11-23")).exists());
    let requests = world.sim.stats().esg_requests;
    // Far fewer than 4 requests for each of the accounts.
    assert!(
        requests < 200,
        "{requests} requests against a vendor that refuses them all"
    );
    assert_eq!(
        kinds(&got),
        vec![("critical_error".to_owned(), "firing".to_owned())]
    );
    drop(runner);

    // Credentials fixed: the same command resumes the same run and scores every account.
    world.replace_in_config(&wrong, secret);
    let runner = open(&world).await;
    let outcome = daily(&runner, "2026-11-23", false, false)
        .await
        .expect("resumed");
    assert_eq!(outcome.run_id, "2026-11-23");
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    assert_eq!(rows.len() - 1, active_ids(&world.sim).await.len());
    assert!(
        rows.iter().skip(1).all(|r| r[9] == "Successful"),
        "{rows:?}"
    );
}

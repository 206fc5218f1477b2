//! Kafka mode as it is deployed: `esg producer`, two `esg scorer`s and `esg assembler` as
//! separate processes on a real broker. The scorers share the partitions and the tenant rate
//! limit; a scorer killed with SIGKILL loses no account; an assembler killed and restarted with
//! its state gone rebuilds it from the scores topic.

mod common;

use common::kafka::{deterministic_faults, services, set_job_rate, unique, use_kafka};
use common::*;
use esg::runner::Runner;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DAY: &str = "2026-11-23";

/// The tests of this file run one at a time: each runs four processes and measures a rate.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spawn(world: &World, args: &[&str], log: &str) -> Child {
    let log = std::fs::File::create(world.dir.path().join(log)).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(args)
        .arg("--config")
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("esg starts")
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_of(world: &World, name: &str) -> String {
    std::fs::read_to_string(world.dir.path().join(name)).unwrap_or_default()
}

/// Events the scorer handled, from its closing line.
fn scored_by(log: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix("scorer stopped: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no closing line in scorer log:\n{log}"))
}

async fn produce_and_wait(world: &World) {
    let mut producer = spawn(
        world,
        &["producer", "--wait", "--business-date", DAY],
        "producer.log",
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = producer.try_wait().expect("producer") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "producer --wait did not return: {}",
            log_of(world, "producer.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "producer failed: {}",
        log_of(world, "producer.log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scorer_processes_share_the_partitions_and_the_tenant_rate_limit() {
    let _serial = SERIAL.lock().await;
    let quota = 200;
    let world = World::start(
        esg_simulator::SimConfig {
            accounts: 1600,
            latency: Duration::from_millis(20),
            rate_limit_per_second: Some(quota),
            burst: quota,
            ..Default::default()
        },
        "",
    )
    .await;
    // Each process is configured with the whole tenant quota: the group must share it. Single
    // calls, so that the day is long enough for the rate to be measured.
    set_job_rate(&world.config_path, quota);
    let s = services();
    let ns = unique("share");
    use_kafka(&world.config_path, &s.bootstrap, &s.registry, &ns);

    let mut assembler = spawn(&world, &["assembler"], "assembler.log");
    let mut scorers = [
        spawn(&world, &["scorer"], "scorer-1.log"),
        spawn(&world, &["scorer"], "scorer-2.log"),
    ];
    // Scorers run before the day starts, as in production: the group has settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    produce_and_wait(&world).await;
    let stats = world.sim.stats();

    // An operator replays the first five events of partition 3 through the running services.
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["replay", "--topic", "account-events", "--partition", "3"])
        .args(["--from", "0", "--to", "5", "--config"])
        .arg(&world.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("esg replay runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("replaying 5 accounts of 2026-11-23"),
        "{said}"
    );
    assert!(said.contains("run 2026-11-23.1 Completed"), "{said}");

    for s in &mut scorers {
        terminate(s);
    }
    terminate(&mut assembler);

    let rows = read_csv(&world.csv_path(date(DAY)));
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, active_ids(&world.sim).await);
    assert!(rows[1..].iter().all(|r| r[9] == "Successful"));

    let (a, b) = (
        scored_by(&log_of(&world, "scorer-1.log")),
        scored_by(&log_of(&world, "scorer-2.log")),
    );
    // At-least-once: an account is scored twice only if its partition moved while its call was
    // in flight; the group settled before the day, so (almost) none are.
    let n = ids.len() as u64;
    assert!(
        a + b >= n && a + b <= n + n / 100,
        "{a} + {b} events for {n} accounts"
    );
    assert!(a > 0 && b > 0, "both scorers worked: {a} and {b}");

    // The group kept to the tenant quota (a burst of `quota` requests, then `quota` per second):
    // two processes at the full quota each would have sent twice as much and been refused (429)
    // by the vendor. (Figures of the day, before the replay.)
    let rate = stats.esg_requests_per_second();
    let requests = stats.esg_requests as f64;
    let ceiling = f64::from(quota) * requests / (requests - f64::from(quota));
    assert!(
        rate <= ceiling * 1.05,
        "{rate:.0}/s for a quota of {quota}/s with a burst of {quota} (at most {ceiling:.0}/s on average)"
    );
    assert!(
        rate >= f64::from(quota) * 0.6,
        "{rate:.0}/s: the group should use its quota"
    );
    // The day opens with the vendor's whole burst spent at once (each member's share of it),
    // which leaves the vendor's bucket empty: from then on a request that arrives a millisecond
    // early (network jitter) is refused, one cell at a time. Such stray 429s cost no attempt
    // and cut no rate; 1.7% of a day's requests have been seen. Two members at the full quota
    // each would see about half of their requests refused.
    assert!(
        stats.rate_limited * 20 < stats.esg_requests,
        "{} of {} requests refused with 429",
        stats.rate_limited,
        stats.esg_requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scorer_and_a_restarted_assembler_lose_nothing() {
    let _serial = SERIAL.lock().await;
    // The reference: the same day on the embedded log.
    let reference = World::start(deterministic_faults(11), "").await;
    set_job_rate(&reference.config_path, 250);
    Runner::open(reference.config(), esg_assembler::system_clock())
        .await
        .expect("opens")
        .run_daily(date(DAY), false, CancellationToken::new(), |_| {})
        .await
        .expect("reference run");

    let world = World::start(deterministic_faults(11), "").await;
    set_job_rate(&world.config_path, 250);
    let s = services();
    let ns = unique("kill");
    use_kafka(&world.config_path, &s.bootstrap, &s.registry, &ns);

    let mut assembler = spawn(&world, &["assembler"], "assembler-1.log");
    let mut victim = spawn(&world, &["scorer"], "scorer-victim.log");
    let mut survivor = spawn(&world, &["scorer"], "scorer-survivor.log");
    let mut producer = spawn(
        &world,
        &["producer", "--wait", "--business-date", DAY],
        "producer.log",
    );

    // A third of the way: SIGKILL one scorer. Half way: SIGKILL the assembler, throw its state
    // away, and start a new one.
    let total = active_ids(&world.sim).await.len() as u64;
    let started = Instant::now();
    while world.sim.stats().esg_requests < total / 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "run did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill().expect("SIGKILL scorer");
    victim.wait().expect("reaped");
    while world.sim.stats().esg_requests < total / 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the survivor did not take over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assembler.kill().expect("SIGKILL assembler");
    assembler.wait().expect("reaped");
    std::fs::remove_file(world.dir.path().join("state/assembler.db")).expect("state removed");
    for extra in ["state/assembler.db-wal", "state/assembler.db-shm"] {
        let _ = std::fs::remove_file(world.dir.path().join(extra));
    }
    let mut assembler = spawn(&world, &["assembler"], "assembler-2.log");

    let status = loop {
        if let Some(s) = producer.try_wait().expect("producer") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "run did not complete: {}",
            log_of(&world, "producer.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{}", log_of(&world, "producer.log"));
    terminate(&mut survivor);
    terminate(&mut assembler);

    let names = esg_assembler::output::file_names(date(DAY));
    let expected = std::fs::read(reference.out().join(&names.csv)).expect("reference file");
    let got = std::fs::read(world.out().join(&names.csv)).expect("kafka file");
    assert!(
        expected == got,
        "the file after a killed scorer and a restarted assembler differs from an undisturbed run"
    );
    // No account was left to the deadline.
    let errors = read_csv(&world.out().join(&names.errors));
    assert!(errors.iter().all(|r| r[2] != "DEADLINE"), "{errors:?}");
}

//! The right to erasure on Kafka end to end: a whole day on the real broker, the services
//! stopped, then the `esg erase` binary. Afterwards no byte of the account's name is left in the
//! broker's partition files of the run's topics (within the configured `[bus] compaction_lag`
//! and `tombstone_retention`, while other records keep the segments rolling), in the state
//! directory or in the output directory; and an assembler elsewhere (its own state directory,
//! caught up before the erasure) that reads the score tombstone keeps no row of the account.
//!
//! Like `kafka_compaction.rs` these tests read the broker's disk, so they need the broker's
//! `log.dirs` (`ESG_TEST_KAFKA_LOG_DIRS`, which `ops/test-all.sh` sets from
//! `ops/services/up.sh`); with the container services the broker's disk is out of reach and
//! they say they are skipped.
//!
//! The producer compresses with lz4 (a setting of the job that `[kafka.properties]` cannot
//! change), which stores a run of four or more bytes seen earlier in the same batch as a
//! back-reference: a name is only certain to be on disk byte for byte when nothing else of its
//! batch repeats part of it. The account erased is chosen so, and the test checks the name is on
//! the broker's disk before the erasure, so that its absence afterwards means something.

mod common;

use common::kafka::{
    files_holding, filler_keys, partition_dirs, readable_log_dirs, run_day_on_kafka, services,
    unique, use_kafka,
};
use common::*;
use esg_bus::{partition_for, EventBus};
use esg_schemas::{AccountEntry, EsgScore, Event};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A handful of accounts over a few partitions: every non-empty partition costs the runner's
/// and the assemblers' catch-up a read.
const ACCOUNTS: u64 = 8;
const PARTITIONS: i32 = 4;

/// How long the broker gets to drop the name after the erasure (the bounds are 2 s each; the
/// cleaner wakes every second on the project's broker).
const BROKER_DEADLINE: Duration = Duration::from_secs(120);

/// True when no four bytes of `name` occur twice in it or anywhere in `others`: lz4 then has
/// nothing to replace part of it with.
fn verbatim_under_lz4(name: &str, others: &[&str]) -> bool {
    let n = name.as_bytes();
    n.windows(4).enumerate().all(|(i, w)| {
        !n[i + 1..].windows(4).any(|x| x == w)
            && !others
                .iter()
                .any(|o| o.as_bytes().windows(4).any(|x| x == w))
    })
}

/// One record on every partition of `esg.accounts` and `esg.scores` (compaction never touches a
/// partition's open segment; a new record rolls it once it is `segment.ms` old).
async fn publish_fillers(bus: &EventBus, keys: &[String]) {
    let now = chrono::Utc::now();
    let entries: Vec<(String, Event)> = keys
        .iter()
        .map(|k| {
            let entry = AccountEntry {
                account_id: k.clone(),
                account_name: "filler".into(),
                version: 1,
                updated_at: now,
                run_id: "filler".into(),
            };
            (k.clone(), Event::AccountEntry(entry))
        })
        .collect();
    let scores: Vec<(String, Event)> = keys
        .iter()
        .map(|k| {
            let score = EsgScore::failed("filler", k, 1, 1, "FILLER", "filler".into(), now);
            (k.clone(), Event::EsgScore(score))
        })
        .collect();
    bus.publish(&bus.topics.accounts, &entries)
        .await
        .expect("fillers published on esg.accounts");
    bus.publish(&bus.topics.scores, &scores)
        .await
        .expect("fillers published on esg.scores");
}

fn count(db: &Path, sql: &str, id: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("assembler.db opens");
    c.query_row(sql, [id], |r| r.get(0)).expect(sql)
}

/// A day on Kafka with an account to erase, and an assembler elsewhere that read it.
struct Day {
    world: World,
    config: esg::config::Config,
    /// The run's topic prefix (with its dot).
    prefix: String,
    log_dirs: Vec<PathBuf>,
    /// The day's ratings file, header first.
    rows: Vec<Vec<String>>,
    day: chrono::NaiveDate,
    id: String,
    name: String,
    standby: Standby,
}

/// An assembler with a state directory of its own, on the day's topics.
struct Standby {
    _dir: tempfile::TempDir,
    config: esg::config::Config,
    bus: EventBus,
    assembler: esg_assembler::Assembler,
}

impl Standby {
    async fn start(config: &esg::config::Config) -> Standby {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config.clone();
        config.state.dir = dir.path().join("state");
        config.output.dir = dir.path().join("out");
        let (bus, _) = esg::pipeline::connect_bus(&config).await.expect("connects");
        let assembler = esg::pipeline::assembler(&config, &bus, esg_assembler::system_clock())
            .expect("assembler opens");
        Standby {
            _dir: dir,
            config,
            bus,
            assembler,
        }
    }

    async fn catch_up(&self) {
        self.assembler.catch_up().await.expect("catches up");
    }

    /// Rows of `table` for `id` (`=`) or for the other accounts (`<>`).
    fn rows(&self, table: &str, op: &str, id: &str) -> i64 {
        let db = self.config.state.dir.join("assembler.db");
        count(
            &db,
            &format!("SELECT COUNT(*) FROM {table} WHERE account_id {op} ?1"),
            id,
        )
    }
}

/// The day, its account to erase (its name checked to be on the broker's disk, in the state
/// directory and in the output directory), and a standby assembler caught up; `None` when the
/// broker's disk cannot be read.
async fn a_day_with_an_account_to_erase(name: &str) -> Option<Day> {
    let s = services();
    let log_dirs = readable_log_dirs()?;
    let ns = unique(name);
    let world = World::start(
        quiet_sim(ACCOUNTS),
        &format!(
            "[bus]\npartitions = {PARTITIONS}\ncompaction_lag = \"2s\"\n\
             tombstone_retention = \"2s\"\n"
        ),
    )
    .await;
    use_kafka(&world.config_path, &s.bootstrap, &s.registry, &ns);
    let config = world.config();
    assert_eq!(config.bus.partitions, PARTITIONS);
    let day = date("2026-11-23");
    let run = run_day_on_kafka(config.clone(), day).await;
    assert!(run.completed.is_some(), "{run:?}");

    // The account to erase: Successful, a name no other account's name contains or is part
    // of, and written verbatim by lz4 (no four bytes of it repeated in its record or in any
    // other record of its partition of esg.accounts, which may share its batch); the longest.
    let rows = read_csv(&world.csv_path(day));
    let accounts = &rows[1..];
    let partition = |id: &str| partition_for(id, PARTITIONS);
    let (id, name) = accounts
        .iter()
        .filter(|r| {
            let (id, name) = (r[0].as_str(), r[1].as_str());
            let unique = accounts
                .iter()
                .filter(|o| o[1].contains(name) || name.contains(o[1].as_str()))
                .count()
                == 1;
            let mut batch = vec![id, run.run_id.as_str()];
            batch.extend(
                accounts
                    .iter()
                    .filter(|o| o[0] != id && partition(&o[0]) == partition(id))
                    .flat_map(|o| [o[0].as_str(), o[1].as_str()]),
            );
            r[9] == "Successful" && unique && verbatim_under_lz4(name, &batch)
        })
        .max_by_key(|r| r[1].len())
        .map(|r| (r[0].clone(), r[1].clone()))
        .expect("a Successful account with a name of its own that lz4 leaves as it is");

    let prefix = format!("{ns}.");
    // Acknowledged means written to the partition's file: the name is on disk now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_holding(&partition_dirs(&log_dirs, &prefix), name.as_bytes()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the name {name:?} never showed in {log_dirs:?}/{prefix}*: the test would prove \
             nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for dir in [world.dir.path().join("state"), world.out()] {
        assert!(
            !files_holding(std::slice::from_ref(&dir), name.as_bytes()).is_empty(),
            "the name {name:?} is not in {} before the erasure: the test would prove nothing",
            dir.display()
        );
    }
    // An assembler elsewhere that has the account, as a standby or another team's would.
    let standby = Standby::start(&config).await;
    standby.catch_up().await;
    assert_eq!(standby.rows("scores", "=", &id), 1);
    assert_eq!(standby.rows("roster", "=", &id), 1);
    Some(Day {
        world,
        config,
        prefix,
        log_dirs,
        rows,
        day,
        id,
        name,
        standby,
    })
}

/// `esg erase --account ID --reason DSR-1` on the day's configuration: exit 0, and it says it
/// wrote both tombstones.
fn erase(d: &Day) {
    let (code, said) = outcome(
        esg_command(["erase", "--config"])
            .arg(&d.world.config_path)
            .args(["--account", &d.id, "--reason", "DSR-1"]),
    );
    assert_eq!(code, Some(0), "{said}");
    let topics = esg_bus::Topics::new(&d.config.topics());
    for topic in [&topics.scores, &topics.accounts] {
        let line = format!("{topic}: tombstone written");
        assert!(said.contains(&line), "{line:?} missing from: {said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_account_leaves_the_brokers_disk_the_state_and_the_files_and_assemblers_forget_it(
) {
    let started = Instant::now();
    let Some(d) = a_day_with_an_account_to_erase("erasure").await else {
        return;
    };
    let needle = d.name.as_bytes();
    // The services of the day are stopped (run_day_on_kafka waited for them): the state
    // directory's locks are free for the binary.
    let erased_at = Instant::now();
    erase(&d);

    for dir in [d.world.dir.path().join("state"), d.world.out()] {
        let left = files_holding(std::slice::from_ref(&dir), needle);
        assert!(left.is_empty(), "the name survives in {left:?}");
    }
    let rows = read_csv(&d.world.csv_path(d.day));
    assert_eq!(rows.len(), d.rows.len() - 1, "only the account's row went");
    assert!(rows.iter().all(|r| r[0] != d.id));

    // The standby reads the tombstones: the account's rows go, the others stay.
    d.standby.catch_up().await;
    let others = d.rows.len() as i64 - 2;
    for table in ["scores", "roster"] {
        assert_eq!(d.standby.rows(table, "=", &d.id), 0, "{table} keeps it");
        assert_eq!(d.standby.rows(table, "<>", &d.id), others, "{table}");
    }

    // The broker: the name leaves every partition file of the run's topics once compaction has
    // run over the tombstone, which needs the segments to keep rolling: one filler record per
    // partition of esg.accounts and esg.scores a second (the pace of the writes; the wait
    // itself is the deadline).
    let keys = filler_keys(PARTITIONS);
    let fillers_from = Instant::now();
    loop {
        let left = files_holding(&partition_dirs(&d.log_dirs, &d.prefix), needle);
        if left.is_empty() {
            break;
        }
        assert!(
            erased_at.elapsed() < BROKER_DEADLINE,
            "the name is still on the broker's disk {:?} after the erasure: {left:?}",
            erased_at.elapsed()
        );
        publish_fillers(&d.standby.bus, &keys).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "compaction_lag 2s, tombstone_retention 2s: the name left the broker's disk {:.1} s \
         after the erasure, {:.1} s after the first filler records; {:.1} s in all",
        erased_at.elapsed().as_secs_f64(),
        fillers_from.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Guards what the erasure promises of every assembler that reads the score tombstone: not
/// only no row, no byte of the name in its store either (the unused space of its pages, its
/// write-ahead log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assembler_that_reads_an_erasure_keeps_no_byte_of_the_name_in_its_store() {
    let Some(d) = a_day_with_an_account_to_erase("erasure-store").await else {
        return;
    };
    erase(&d);
    d.standby.catch_up().await;
    let Day { standby, name, .. } = d;
    let Standby {
        assembler,
        config,
        _dir: kept,
        ..
    } = standby;
    // Closed, as a stopped or restarted service is: its write-ahead log is checkpointed.
    drop(assembler);
    let left = files_holding(std::slice::from_ref(&config.state.dir), name.as_bytes());
    assert!(left.is_empty(), "the name survives in {left:?}");
    drop(kept);
}

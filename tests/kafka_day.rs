//! The whole day on a real Apache Kafka broker with a schema registry: the same file as on the
//! embedded log, scores any other team can read, and replay of a range of account events.

mod common;

use common::kafka::{services, unique, use_kafka};
use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn sim() -> esg_simulator::SimConfig {
    esg_simulator::SimConfig {
        accounts: 700,
        seed: 7,
        latency: Duration::from_millis(2),
        rate_limit_per_second: None,
        permanent_error_rate: 0.02,
        partial_rate: 0.03,
        out_of_contract_rate: 0.01,
        malformed_record_rate: 0.01,
        duplicate_rate: 0.02,
        ..Default::default()
    }
}

async fn run_day(world: &World, day: chrono::NaiveDate) -> esg::runner::Outcome {
    if world.config().bus.kind == esg::config::BusKind::Kafka {
        return common::kafka::run_day_on_kafka(world.config(), day).await;
    }
    esg::runner::Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("runner opens")
        .run_daily(day, false, CancellationToken::new(), |_| {})
        .await
        .expect("run completes")
}

async fn kafka_world(ns: &str) -> World {
    let s = services();
    let world = World::start(sim(), "").await;
    use_kafka(&world.config_path, &s.bootstrap, &s.registry, ns);
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_mode_writes_the_same_file_as_the_embedded_log() {
    let day = date("2026-11-23");
    let embedded = World::start(sim(), "").await;
    run_day(&embedded, day).await;

    let ns = unique("same-file");
    let kafka = kafka_world(&ns).await;
    let outcome = run_day(&kafka, day).await;
    let done = outcome.completed.expect("completed");
    assert!(done.rows > 600, "{done:?}");

    let names = esg_assembler::output::file_names(day);
    let a = std::fs::read(embedded.out().join(&names.csv)).expect("embedded file");
    let b = std::fs::read(kafka.out().join(&names.csv)).expect("kafka file");
    assert!(
        a == b,
        "the ratings file differs between the embedded log and Kafka"
    );
    // The errors file too, but for the time of each account's last attempt.
    let without_time = |w: &World| -> Vec<Vec<String>> {
        read_csv(&w.out().join(&names.errors))
            .into_iter()
            .map(|mut r| {
                r.pop();
                r
            })
            .collect()
    };
    let errors = without_time(&embedded);
    assert!(errors.len() > 10, "the day had failures to compare");
    assert_eq!(errors, without_time(&kafka));
    // And the file holds every active account once.
    let rows = read_csv(&kafka.csv_path(day));
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, active_ids(&kafka.sim).await);
    // The assembler keeps the run's history on both transports, alike.
    let history = |w: &World| {
        let c = rusqlite::Connection::open(w.dir.path().join("state").join("assembler.db"))
            .expect("assembler store");
        let rows = esg_assembler::history::runs(&c, None).expect("history");
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = rows[0].clone();
        (
            r.run_id,
            r.kind,
            r.accounts,
            r.failed,
            r.score_sums,
            r.primary_focus,
        )
    };
    assert_eq!(history(&kafka), history(&embedded));
}

/// The latest score per account as another team reads `esg.scores`: its own consumer group,
/// values decoded through the schema registry with schema_registry_converter.
async fn latest_scores_via_registry(
    bootstrap: &str,
    registry: &str,
    topic: &str,
) -> BTreeMap<String, apache_avro::types::Value> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-downstream"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let decoder = AvroDecoder::new(SrSettings::new(registry.to_owned()));
    let mut latest = BTreeMap::new();
    let mut idle = 0;
    while idle < 3 {
        match tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            Err(_) => idle += 1,
            Ok(m) => {
                idle = 0;
                let m = m.expect("message");
                let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf-8 key");
                let value = decoder.decode(m.payload()).await.expect("decodes");
                assert_eq!(value.name.as_ref().map(|n| n.name()), Some("EsgScore"));
                latest.insert(key, value.value);
            }
        }
    }
    latest
}

fn field<'a>(record: &'a apache_avro::types::Value, name: &str) -> &'a apache_avro::types::Value {
    match record {
        apache_avro::types::Value::Record(fields) => fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no field {name}")),
        other => panic!("not a record: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_readers_see_every_accounts_latest_score() {
    let day = date("2026-11-23");
    let ns = unique("readers");
    let world = kafka_world(&ns).await;
    run_day(&world, day).await;
    let rows = read_csv(&world.csv_path(day));
    let file: BTreeMap<String, Vec<String>> = rows[1..]
        .iter()
        .map(|r| (r[0].clone(), r.clone()))
        .collect();
    let topic = format!("{ns}.esg.scores");
    let s = services();

    // Any Kafka tool: kcat lists the topic and reads every key where murmur2 put it.
    let out = std::process::Command::new("kcat")
        .args(["-C", "-b", &s.bootstrap, "-t", &topic, "-e", "-q"])
        .args(["-f", "%k\t%p\t%o\t%S\n"])
        .output()
        .expect("kcat runs (Debian package kcat)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kcat output");
    let mut seen: BTreeMap<String, (i32, i64, usize)> = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        assert_eq!(parts.len(), 4, "{line}");
        let (p, o, size): (i32, i64, usize) = (
            parts[1].parse().expect("partition"),
            parts[2].parse().expect("offset"),
            parts[3].parse().expect("size"),
        );
        assert_eq!(p, esg_bus::partition_for(parts[0], 12), "{line}");
        assert!(
            size > 5,
            "a score is at least the wire-format header: {line}"
        );
        seen.insert(parts[0].to_owned(), (p, o, size));
    }
    for id in file.keys() {
        assert!(seen.contains_key(id), "kcat does not see {id}");
    }

    // Another team's consumer group decoding Avro through the registry.
    let latest = latest_scores_via_registry(&s.bootstrap, &s.registry, &topic).await;
    for (id, row) in &file {
        let score = latest
            .get(id)
            .unwrap_or_else(|| panic!("no score for {id}"));
        let status = match field(score, "status") {
            apache_avro::types::Value::Enum(_, s) => s.clone(),
            other => panic!("status {other:?}"),
        };
        assert_eq!(row[9], status, "{id}");
        if status == "Successful" {
            // The file's overall score is the decimal on the topic, rounded to two places.
            let overall = match field(score, "overall") {
                apache_avro::types::Value::Union(_, v) => match v.as_ref() {
                    apache_avro::types::Value::Decimal(d) => {
                        let unscaled: num_like::Unscaled = d.try_into().expect("decimal bytes");
                        unscaled.with_scale(4)
                    }
                    other => panic!("overall {other:?}"),
                },
                other => panic!("overall {other:?}"),
            };
            assert_eq!(row[2], overall, "{id}");
        }
    }
}

mod num_like {
    //! The unscaled big-endian two's-complement integer of an Avro decimal, printed with two
    //! places rounded half away from zero, as the file does.
    use rust_decimal::{Decimal, RoundingStrategy};

    pub struct Unscaled(i128);

    impl TryFrom<&apache_avro::Decimal> for Unscaled {
        type Error = String;
        fn try_from(d: &apache_avro::Decimal) -> Result<Self, String> {
            let bytes: Vec<u8> = d.try_into().map_err(|e| format!("{e:?}"))?;
            let mut v: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                -1
            } else {
                0
            };
            for b in bytes {
                v = (v << 8) | i128::from(b);
            }
            Ok(Unscaled(v))
        }
    }

    impl Unscaled {
        pub fn with_scale(&self, scale: u32) -> String {
            let d = Decimal::from_i128_with_scale(self.0, scale);
            format!(
                "{:.2}",
                d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_range_is_scored_again_and_its_rows_replaced() {
    let day = date("2026-11-23");
    let ns = unique("replay");
    let world = kafka_world(&ns).await;
    // The vendor API fails every call during the day: every account ends Failed.
    world.sim.update(|c| c.transient_error_rate = 1.0);
    let before = chrono::Utc::now();
    run_day(&world, day).await;
    let after = chrono::Utc::now();
    let rows = read_csv(&world.csv_path(day));
    assert!(rows[1..].iter().all(|r| r[9] == "Failed"));

    // The API is back: replay the run's events by time, over every partition.
    world.sim.update(|c| c.transient_error_rate = 0.0);
    let config = world.config();
    let services = common::kafka::InProcess::start(&config);
    let runner = esg::runner::Runner::open(config, esg_assembler::system_clock())
        .await
        .expect("runner opens");
    let book = esg_bus::runs::RunBook::read(&runner.bus)
        .await
        .expect("book");
    let by_date = esg::pipeline::replay_accounts(
        &runner.bus,
        &book,
        None,
        esg::pipeline::ReplayBound::Time(before),
        esg::pipeline::ReplayBound::Time(after + chrono::Duration::seconds(1)),
    )
    .await
    .expect("range read");
    let accounts = by_date.get(&day).expect("events of the day").clone();
    assert_eq!(
        accounts.len(),
        rows.len() - 1,
        "every account's event is in the range"
    );
    let outcomes = runner
        .replay(
            None,
            esg::pipeline::ReplayBound::Time(before),
            esg::pipeline::ReplayBound::Time(after + chrono::Duration::seconds(1)),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("replay completes");
    services.stop().await;
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert_eq!(outcome.run_id, "2026-11-23.1");
    assert_eq!(
        outcome
            .sealed
            .as_ref()
            .map(|s| s.expected_accounts as usize),
        Some(accounts.len())
    );
    let rows = read_csv(&world.csv_path(day));
    let failed = rows[1..].iter().filter(|r| r[9] == "Failed").count();
    // Only the vendor's permanent refusals and out-of-contract answers stay Failed.
    assert!(failed < rows.len() / 10, "{failed} still failed");
    assert!(rows[1..].iter().any(|r| r[9] == "Successful"));
}

/// The day-two changes of the stateless-producer test: three accounts touched overnight.
fn touch_three(world: &World, ids: &[String]) -> Vec<String> {
    let touched: Vec<String> = ids.iter().step_by(97).take(3).cloned().collect();
    for id in &touched {
        world.sim.touch(id);
    }
    touched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_keeps_no_state_of_its_own_on_kafka() {
    let (day1, day2) = (date("2026-11-23"), date("2026-11-24"));
    let embedded = World::start(sim(), "").await;
    run_day(&embedded, day1).await;
    let ids = active_ids(&embedded.sim).await;
    touch_three(&embedded, &ids);
    run_day(&embedded, day2).await;

    let kafka = kafka_world(&unique("stateless")).await;
    run_day(&kafka, day1).await;
    // The producer's host is lost: its state directory goes, the topics stay.
    let state = kafka.dir.path().join("state");
    for name in ["producer.db", "producer.db-wal", "producer.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }
    let mut touched = touch_three(&kafka, &ids);
    touched.sort();
    kafka.sim.reset_call_counts();
    let outcome = run_day(&kafka, day2).await;
    assert_eq!(outcome.run_id, "2026-11-24");
    // Still incremental: the roster and the last scores came back from the topics, so only the
    // touched accounts and those not Successful the day before were scored.
    let called = kafka.sim.accounts_called_at_least(1);
    let day1_rows = read_csv(&kafka.csv_path(day1));
    let not_successful: Vec<String> = day1_rows[1..]
        .iter()
        .filter(|r| r[9] != "Successful")
        .map(|r| r[0].clone())
        .collect();
    assert!(touched.iter().all(|id| called.contains(id)), "{called:?}");
    assert!(
        called
            .iter()
            .all(|id| touched.contains(id) || not_successful.contains(id)),
        "only changed or not successful accounts were scored: {called:?}"
    );
    let names = esg_assembler::output::file_names(day2);
    assert!(
        std::fs::read(embedded.out().join(&names.csv)).expect("embedded")
            == std::fs::read(kafka.out().join(&names.csv)).expect("kafka"),
        "day two on Kafka without the producer's state differs from the embedded log"
    );

    // A re-run from another host: its own, empty state directory; the services as before.
    let other = tempfile::tempdir().expect("tempdir");
    let mut elsewhere = kafka.config();
    elsewhere.state.dir = other.path().to_path_buf();
    let services = common::kafka::InProcess::start(&kafka.config());
    let runner = esg::runner::Runner::open(elsewhere, esg_assembler::system_clock())
        .await
        .expect("runner opens elsewhere");
    kafka.sim.reset_call_counts();
    let rerun = runner
        .rerun(
            day2,
            esg::runner::Selection::Accounts(vec![ids[1].clone()]),
            true,
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("re-run from another state directory");
    services.stop().await;
    assert_eq!(
        rerun.run_id, "2026-11-24.1",
        "the run sequence is the topic's"
    );
    assert_eq!(kafka.sim.accounts_called_at_least(1), vec![ids[1].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assembler_retries_a_delivery_beside_the_next_run_and_once_restarted_sends_what_was_cut_short(
) {
    let tmp = tempfile::tempdir().expect("tmp");
    let share = tmp.path().join("share");
    let s = services();
    let world = World::start(
        quiet_sim(200),
        &format!(
            "[[delivery]]\nkind = \"dir\"\nname = \"share\"\npath = \"{}\"\n",
            share.display()
        ),
    )
    .await;
    use_kafka(
        &world.config_path,
        &s.bootstrap,
        &s.registry,
        &unique("deliver"),
    );
    let day = date("2026-11-23");
    let config = world.config();
    let runner = esg::runner::Runner::open(config.clone(), esg_assembler::system_clock())
        .await
        .expect("runner opens");
    let services = common::kafka::InProcess::start(&config);
    // The share is not mounted: the file is written, and the assembler retries the share in
    // the background while it goes on with the next run: a re-run of the day completes.
    let outcome = runner
        .run_daily(day, false, CancellationToken::new(), |_| {})
        .await
        .expect("run completes");
    assert!(outcome.completed.is_some(), "{outcome:?}");
    let id = read_csv(&world.csv_path(day))[1][0].clone();
    let rerun = tokio::time::timeout(
        Duration::from_secs(120),
        runner.rerun(
            day,
            esg::runner::Selection::Accounts(vec![id]),
            true,
            CancellationToken::new(),
            |_| {},
        ),
    )
    .await
    .expect("the re-run is not held up by the delivery being retried")
    .expect("re-run completes");
    assert!(rerun.completed.is_some(), "{rerun:?}");
    services.stop().await;
    let local = names_in(&world.out());
    assert!(
        local.contains(&"FirmESGRatings_20261123.csv".to_owned()),
        "{local:?}"
    );
    assert!(!share.exists());

    // Mounted, and the assembler started again: it sends the day's files on its own.
    std::fs::create_dir(&share).expect("mount");
    let services = common::kafka::InProcess::start(&world.config());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while names_in(&share) != local {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted assembler did not deliver: {:?}",
            names_in(&share)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    services.stop().await;
    for name in &local {
        assert_eq!(
            std::fs::read(share.join(name)).expect("copy"),
            std::fs::read(world.out().join(name)).expect("local"),
            "{name}"
        );
    }
}

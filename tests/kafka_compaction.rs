//! Erasure on Kafka: a tombstone on a compacted topic removes the account's record from the
//! broker's disk within the configured bounds (`bus.compaction_lag`, `bus.tombstone_retention`),
//! because the job creates its compacted topics with `max.compaction.lag.ms`, `segment.ms` and
//! `delete.retention.ms`; and start-up refuses an existing compacted topic that lacks them.
//!
//! The first test reads the broker's partition files, so it needs the broker's `log.dirs`:
//! `ESG_TEST_KAFKA_LOG_DIRS` next to `ESG_TEST_KAFKA_BOOTSTRAP` (`ops/test-all.sh` sets both
//! from `ops/services/up.sh`), or up.sh's own output when the tests start the services. With the
//! container services (a Docker engine and no `ESG_TEST_KAFKA_BOOTSTRAP`) the broker's disk is
//! out of reach, and that test says it is skipped.

mod common;

use common::kafka::{
    files_holding, filler_keys, partition_dirs, readable_log_dirs, services, unique,
};
use esg::config::Config;
use esg_bus::EventBus;
use esg_schemas::{AccountEntry, Event};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 2;

/// The job's configuration on the test broker, topics under `ns.`, with `bus_extra` in `[bus]`
/// (and the temporary directory its output and state directories are in).
fn config(ns: &str, bus_extra: &str) -> (Config, tempfile::TempDir) {
    let s = services();
    let dir = tempfile::tempdir().expect("tmp");
    let mut text = esg::config::example(
        "http://127.0.0.1:9",
        &dir.path().join("out"),
        &dir.path().join("state"),
    );
    text.push_str(&format!(
        "\n[bus]\nkind = \"kafka\"\ntopic_prefix = \"{ns}.\"\npartitions = {PARTITIONS}\n{bus_extra}\n\
         [kafka]\nbootstrap_servers = \"{}\"\n[kafka.schema_registry]\nurl = \"{}\"\n",
        s.bootstrap, s.registry
    ));
    let config = Config::parse(&text, "esg.toml", Vec::new()).expect("configuration");
    (config, dir)
}

/// A name no other bytes of its record share four bytes with (the producer compresses with
/// lz4, which would otherwise encode part of it as a back-reference).
fn unmistakable_name(seed: u64) -> String {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("Vanishing Holdings {:016x}", z ^ (z >> 31))
}

fn entry(id: &str, name: &str) -> Event {
    Event::AccountEntry(AccountEntry {
        account_id: id.into(),
        account_name: name.into(),
        version: 1,
        updated_at: chrono::Utc::now(),
        run_id: "2026-01-05.1".into(),
    })
}

/// Publishes one record to every partition each second until `done` holds (compaction never
/// touches a partition's open segment; a new record rolls it once it is `segment.ms` old), or
/// fails at `deadline`.
async fn keep_writing_until(
    bus: &EventBus,
    deadline: Instant,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    let fillers: Vec<(String, Event)> = filler_keys(PARTITIONS)
        .into_iter()
        .map(|k| (k.clone(), entry(&k, "filler")))
        .collect();
    loop {
        if done() {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what} after {:?}",
            started.elapsed()
        );
        bus.publish(&bus.topics.accounts, &fillers)
            .await
            .expect("fillers published");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_erases_the_account_from_the_brokers_disk_within_the_configured_bounds() {
    let Some(log_dirs) = readable_log_dirs() else {
        return;
    };
    let ns = unique("erase");
    let (config, _dir) = config(&ns, "compaction_lag = \"2s\"\ntombstone_retention = \"2s\"");
    // The job's own start-up creates the topics.
    let (bus, _) = esg::pipeline::connect_bus(&config)
        .await
        .expect("topics created");
    let topic = bus.topics.accounts.clone();
    let seed =
        std::process::id() as u64 ^ chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
    let name = unmistakable_name(seed);
    let id = format!("ERASE-{ns}");

    bus.publish(&topic, &[(id.clone(), entry(&id, &name))])
        .await
        .expect("entry published");
    // Acknowledged means written to the partition's file: the name is on disk now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_holding(
        &partition_dirs(&log_dirs, &format!("{topic}-")),
        name.as_bytes(),
    )
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the name never showed in {log_dirs:?}/{topic}-*: the test would prove nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let erased_at = Instant::now();
    bus.tombstones(&topic, std::slice::from_ref(&id))
        .await
        .expect("tombstone published");
    let deadline = erased_at + Duration::from_secs(120);
    let name_gone = keep_writing_until(
        &bus,
        deadline,
        "the name is still on the broker's disk",
        || {
            files_holding(
                &partition_dirs(&log_dirs, &format!("{topic}-")),
                name.as_bytes(),
            )
            .is_empty()
        },
    )
    .await;
    // Then the tombstone itself (the only record left with the id) once tombstone_retention
    // has passed since compaction reached it.
    let id_gone = keep_writing_until(
        &bus,
        deadline,
        "the tombstone is still on the broker's disk",
        || {
            files_holding(
                &partition_dirs(&log_dirs, &format!("{topic}-")),
                id.as_bytes(),
            )
            .is_empty()
        },
    )
    .await;
    eprintln!(
        "compaction_lag 2s, tombstone_retention 2s: the name left the disk {:.1} s after the \
         tombstone, the tombstone {:.1} s after that",
        name_gone.as_secs_f64(),
        id_gone.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_compacted_topic_without_max_compaction_lag_and_starts_once_fixed() {
    let s = services();
    let ns = unique("unbounded");
    let topic = format!("{ns}.esg.accounts");
    // Made by someone else: compacted, with every bound but max.compaction.lag.ms.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "60000")
        .set("delete.retention.ms", "60000");
    for r in admin.create_topics([&new], &opts).await.expect("create") {
        r.expect("topic created");
    }

    let (config, _dir) = config(
        &ns,
        "compaction_lag = \"1min\"\ntombstone_retention = \"1min\"",
    );
    let err = esg::pipeline::connect_bus(&config)
        .await
        .map(|_| ())
        .expect_err("an unbounded compacted topic is refused");
    let s = format!("{err:#}");
    for part in [
        format!("topic {topic} has max.compaction.lag.ms unset (the broker's default 9223372036854775807 applies), the pipeline needs at most 60000 (bus.compaction_lag = 1m)"),
        format!("--alter --entity-type topics --entity-name {topic} --add-config max.compaction.lag.ms=60000`"),
    ] {
        assert!(s.contains(&part), "{part:?} missing from: {s}");
    }
    // The settings the topic has, equal to the configured ones, are not reported.
    assert!(
        !s.contains("segment.ms") && !s.contains("delete.retention.ms"),
        "{s}"
    );

    // What the message says to do (AlterConfigs replaces the topic's settings: all four given).
    let fix = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "60000")
        .set("delete.retention.ms", "30000")
        .set("max.compaction.lag.ms", "60000");
    for r in admin.alter_configs([&fix], &opts).await.expect("alter") {
        r.expect("topic altered");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match esg::pipeline::connect_bus(&config).await {
            Ok(_) => break,
            // The brokers apply an altered config a moment later.
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("still refused after the fix: {e:#}"),
        }
    }
}

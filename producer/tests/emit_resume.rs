//! A producer that stops between publishing a batch of `AccountChanged` and recording it asks
//! for no account twice when it resumes; one that stops while publishing the roster changes
//! (which go out after the events) publishes them all, and no event again.

use async_trait::async_trait;
use esg_auth::{Secret, TokenSource};
use esg_bus::embedded::EmbeddedLog;
use esg_bus::{
    BusError, CommitOffset, Committed, Consumer, EventBus, Message, Position, Record,
    SharedTransport, TopicSpec, TopicsConfig, Transport,
};
use esg_producer::accounts::{AccountsClient, AccountsClientConfig};
use esg_producer::{Producer, ProducerConfig, RunRequest};
use esg_schemas::RunKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Delegates to the embedded log, but after the N-th publish to the account-events topic has
/// durably succeeded it reports a failure, as a process killed at that instant would never
/// have seen the acknowledgement.
struct CrashAfterPublish {
    inner: EmbeddedLog,
    topic: String,
    publishes: AtomicUsize,
    crash_on: usize,
}

#[async_trait]
impl Transport for CrashAfterPublish {
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> esg_bus::Result<()> {
        self.inner.ensure_topics(topics).await
    }
    async fn publish(&self, topic: &str, records: Vec<Record>) -> esg_bus::Result<Vec<Position>> {
        let positions = self.inner.publish(topic, records).await?;
        if topic == self.topic && self.publishes.fetch_add(1, Ordering::SeqCst) + 1 == self.crash_on
        {
            return Err(BusError::Other("injected: stopped after publishing".into()));
        }
        Ok(positions)
    }
    async fn partitions(&self, topic: &str) -> esg_bus::Result<i32> {
        self.inner.partitions(topic).await
    }
    async fn end_offsets(&self, topic: &str) -> esg_bus::Result<Vec<i64>> {
        self.inner.end_offsets(topic).await
    }
    async fn start_offsets(&self, topic: &str) -> esg_bus::Result<Vec<i64>> {
        self.inner.start_offsets(topic).await
    }
    async fn read(
        &self,
        topic: &str,
        p: i32,
        from: i64,
        max: usize,
    ) -> esg_bus::Result<Vec<Message>> {
        self.inner.read(topic, p, from, max).await
    }
    async fn offset_for_time(&self, topic: &str, p: i32, ts: i64) -> esg_bus::Result<i64> {
        self.inner.offset_for_time(topic, p, ts).await
    }
    async fn committed(&self, g: &str, t: &str) -> esg_bus::Result<Vec<Option<Committed>>> {
        self.inner.committed(g, t).await
    }
    async fn commit(&self, g: &str, t: &str, o: &[CommitOffset]) -> esg_bus::Result<()> {
        self.inner.commit(g, t, o).await
    }
    async fn subscribe(&self, g: &str, t: &str) -> esg_bus::Result<Box<dyn Consumer>> {
        self.inner.subscribe(g, t).await
    }
}

/// Runs a day of 450 accounts whose producer stops once its `crash_on`-th publish to the
/// topic `crash_topic` picks has succeeded, resumes it on the plain log to the seal, and
/// returns the log, the bus and the seal.
async fn stopped_and_resumed(
    crash_topic: fn(&esg_bus::Topics) -> String,
    crash_on: usize,
) -> (
    tempfile::TempDir,
    EmbeddedLog,
    EventBus,
    esg_schemas::RunSealed,
) {
    let sim = esg_simulator::start(
        esg_simulator::SimConfig {
            accounts: 450,
            rate_limit_per_second: None,
            ..Default::default()
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tmp");
    let log = EmbeddedLog::open(dir.path().join("bus.db")).expect("log");
    let topics = TopicsConfig::default();
    let crashing: SharedTransport = Arc::new(CrashAfterPublish {
        inner: log.clone(),
        topic: crash_topic(&esg_bus::Topics::new(&topics)),
        publishes: AtomicUsize::new(0),
        crash_on,
    });
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        sim.token_url(),
        "esg-accounts",
        Secret::new("accounts-secret"),
        Some("accounts.read".into()),
    ));
    let client = || {
        AccountsClient::new(
            http.clone(),
            AccountsClientConfig::new(sim.url()),
            tokens.clone(),
        )
    };
    let config = ProducerConfig {
        emit_batch: 100,
        ..Default::default()
    };
    let store_path = dir.path().join("producer.db");
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let req = RunRequest {
        run_id: "2026-11-23".into(),
        business_date: day,
        kind: RunKind::Daily,
        full: false,
        deadline: chrono::Utc::now() + chrono::Duration::hours(4),
        forced: Vec::new(),
        min_active_ratio: None,
    };

    let bus = EventBus::connect(crashing, &topics).await.expect("bus");
    let producer = Producer::new(
        bus,
        esg_producer::store::open(&store_path).expect("store"),
        Some(client()),
        config.clone(),
    );
    let err = producer
        .run(&req, &CancellationToken::new())
        .await
        .expect_err("stops at the injected publish");
    assert!(err.to_string().contains("injected"), "{err}");
    drop(producer);

    // Resume on the plain log.
    let bus = EventBus::connect(Arc::new(log.clone()), &topics)
        .await
        .expect("bus");
    let producer = Producer::new(
        bus.clone(),
        esg_producer::store::open(&store_path).expect("store"),
        Some(client()),
        config,
    );
    let sealed = producer
        .run(&req, &CancellationToken::new())
        .await
        .expect("resumes to the seal");
    sim.shutdown();
    (dir, log, bus, sealed)
}

/// How many records of each key `topic` holds.
async fn records_per_key(log: &EmbeddedLog, topic: &str) -> HashMap<String, u32> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let ends = log.end_offsets(topic).await.expect("ends");
    for (p, end) in ends.iter().enumerate() {
        for m in log
            .read(topic, p as i32, 0, *end as usize + 1)
            .await
            .expect("read")
        {
            *seen.entry(m.key).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_is_emitted_twice_after_a_stop_mid_batch() {
    let (_dir, log, bus, sealed) = stopped_and_resumed(|t| t.account_events.clone(), 3).await;
    let seen = records_per_key(&log, &bus.topics.account_events).await;
    assert_eq!(seen.len() as i64, sealed.expected_accounts);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "emitted twice: {twice:?}");
    assert_eq!(
        sealed.new_accounts, sealed.expected_accounts,
        "first day: all new"
    );
    assert!(sealed.expected_accounts > 300);
}

/// The events go out before the roster changes: a producer stopped while publishing the roster
/// resumes with the roster and publishes no event again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_publishing_the_roster_publishes_every_entry_and_no_event_again() {
    let (_dir, log, bus, sealed) = stopped_and_resumed(|t| t.accounts.clone(), 2).await;
    let events = records_per_key(&log, &bus.topics.account_events).await;
    assert_eq!(events.len() as i64, sealed.expected_accounts);
    assert!(events.values().all(|n| *n == 1), "an event published twice");
    let roster = records_per_key(&log, &bus.topics.accounts).await;
    assert_eq!(roster.len() as i64, sealed.active_accounts);
    assert!(
        roster.values().all(|n| *n <= 2),
        "an entry is published again at most once"
    );
    assert!(sealed.active_accounts > 300);
}

//! The Kafka transport against a real broker: the same contract as the embedded log.
//! The broker comes from `ESG_TEST_KAFKA_BOOTSTRAP` (set by `ops/test-all.sh`, which starts one
//! with `ops/services/up.sh`); without it, `ops/services/up.sh` is run here.

use esg_bus::kafka::{KafkaConfig, KafkaTransport};
use esg_bus::{Cleanup, CommitOffset, Delivery, Record, TopicSpec, Transport};
use std::collections::BTreeMap;
use std::time::Duration;

fn bootstrap() -> String {
    if let Ok(b) = std::env::var("ESG_TEST_KAFKA_BOOTSTRAP") {
        return b;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/services/kafka.sh");
    let out = std::process::Command::new(script)
        .args(["start", "--nodes", "1"])
        .output()
        .expect("kafka.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
        .expect("KAFKA_BOOTSTRAP line")
        .to_owned()
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    format!("bus-{name}-{}-{n}", std::process::id())
}

async fn transport() -> KafkaTransport {
    KafkaTransport::connect(KafkaConfig {
        bootstrap_servers: bootstrap(),
        session_timeout: Duration::from_secs(6),
        ..Default::default()
    })
    .await
    .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_receives_every_record_of_every_partition() {
    let t = transport().await;
    let topic = unique("group");
    t.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 12,
        cleanup: Cleanup::Delete {
            retention: Duration::from_secs(3600),
        },
    }])
    .await
    .expect("topic");
    let records: Vec<Record> = (0..500)
        .map(|i| Record::new(format!("ACC-{i:05}"), vec![i as u8]))
        .collect();
    let positions = t.publish(&topic, records).await.expect("published");
    let mut expected: BTreeMap<i32, usize> = BTreeMap::new();
    for (i, p) in positions.iter().enumerate() {
        assert_eq!(
            p.partition,
            esg_bus::partition_for(&format!("ACC-{i:05}"), 12)
        );
        *expected.entry(p.partition).or_default() += 1;
    }
    let ends = t.end_offsets(&topic).await.expect("ends");
    let starts = t.start_offsets(&topic).await.expect("starts");
    assert_eq!(starts, vec![0; 12]);
    for (p, n) in &expected {
        assert_eq!(ends[*p as usize], *n as i64, "end of partition {p}");
    }
    // Offsets by time: before everything is the start, after everything is the end.
    assert_eq!(t.offset_for_time(&topic, 3, 0).await.expect("by time"), 0);
    let later = chrono_now_ms() + 60_000;
    assert_eq!(
        t.offset_for_time(&topic, 3, later).await.expect("by time"),
        ends[3]
    );

    let group = unique("g");
    let mut consumer = t.subscribe(&group, &topic).await.expect("subscribed");
    let mut got: BTreeMap<i32, usize> = BTreeMap::new();
    let mut owned = Vec::new();
    let started = std::time::Instant::now();
    while got.values().sum::<usize>() < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "got {got:?} of {expected:?}"
        );
        match consumer
            .next(64, Duration::from_millis(300))
            .await
            .expect("next")
        {
            Some(Delivery::Assigned(parts)) => owned.extend(parts.into_iter().map(|(p, _)| p)),
            Some(Delivery::Revoked(_)) => panic!("nothing should be revoked"),
            Some(Delivery::Messages(ms)) => {
                for m in ms {
                    assert!(
                        owned.contains(&m.partition),
                        "message before its partition's assignment"
                    );
                    *got.entry(m.partition).or_default() += 1;
                }
            }
            None => {}
        }
    }
    assert_eq!(got, expected);
    consumer
        .commit(&[CommitOffset {
            partition: 3,
            offset: expected[&3] as i64,
            metadata: "scores_from=7".into(),
        }])
        .await
        .expect("commit");
    consumer.close().await.expect("close");
    let committed = t.committed(&group, &topic).await.expect("committed");
    let c3 = committed[3].as_ref().expect("partition 3 committed");
    assert_eq!(
        (c3.offset, c3.metadata.as_str()),
        (expected[&3] as i64, "scores_from=7")
    );

    // Range reads see the same records, in batches, and stop at the end.
    let mut read = 0;
    let mut from = 0;
    loop {
        let batch = t.read(&topic, 3, from, 7).await.expect("read");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 7);
        from = batch.last().expect("last").offset + 1;
        read += batch.len();
    }
    assert_eq!(read, expected[&3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_published_while_a_member_consumes_all_arrive() {
    let t = transport().await;
    let topic = unique("live");
    t.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 12,
        cleanup: Cleanup::compact(),
    }])
    .await
    .expect("topic");
    let group = unique("g");
    let mut consumer = t.subscribe(&group, &topic).await.expect("subscribed");
    // Join the group before anything is published.
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never assigned"
        );
        if let Some(Delivery::Assigned(_)) = consumer
            .next(64, Duration::from_millis(200))
            .await
            .expect("next")
        {
            break;
        }
    }
    let publisher = {
        let t = t.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for batch in 0..4 {
                let records: Vec<Record> = (0..100)
                    .map(|i| Record::new(format!("K-{batch}-{i}"), vec![1]))
                    .collect();
                t.publish(&topic, records).await.expect("published");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut got = 0;
    let started = std::time::Instant::now();
    while got < 400 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "got {got} of 400"
        );
        if let Some(Delivery::Messages(ms)) = consumer
            .next(64, Duration::from_millis(200))
            .await
            .expect("next")
        {
            got += ms.len();
            // Commit as a scorer does, while records keep coming.
            let last = ms.last().expect("one");
            consumer
                .commit(&[CommitOffset {
                    partition: last.partition,
                    offset: last.offset + 1,
                    metadata: String::new(),
                }])
                .await
                .expect("commit");
        }
    }
    publisher.await.expect("publisher");
    assert_eq!(got, 400);
}

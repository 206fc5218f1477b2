//! `kill -9` while publishing and committing: nothing acknowledged is lost, nothing committed
//! runs past the records, and the log reopens clean.
//!
//! The test re-runs its own binary as the child (`ESG_BUS_CHILD` set), which publishes and
//! commits in a loop and prints each acknowledgement; the parent kills it mid-way.

use esg_bus::embedded::EmbeddedLog;
use esg_bus::{Cleanup, CommitOffset, Record, TopicSpec, Transport};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const TOPIC: &str = "crash";

fn spec() -> TopicSpec {
    TopicSpec {
        name: TOPIC.into(),
        partitions: 4,
        cleanup: Cleanup::Delete {
            retention: Duration::from_secs(3600),
        },
    }
}

fn value(batch: u64, i: u64) -> Vec<u8> {
    format!("value-{batch}-{i}").into_bytes()
}

/// The child: publish batches forever, commit the group to the end every third batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of kill_9_loses_nothing_acknowledged, started by it"]
async fn child_publisher() {
    let path =
        std::env::var("ESG_BUS_CHILD").expect("started by kill_9_loses_nothing_acknowledged");
    let log = EmbeddedLog::open(&path).expect("open");
    log.ensure_topics(&[spec()]).await.expect("topics");
    for batch in 0u64.. {
        let records = (0..10)
            .map(|i| Record::new(format!("k{batch}-{i}"), value(batch, i)))
            .collect();
        let positions = log.publish(TOPIC, records).await.expect("publish");
        let list: Vec<String> = positions
            .iter()
            .map(|p| format!("{}:{}", p.partition, p.offset))
            .collect();
        println!("acked {batch} {}", list.join(","));
        if batch % 3 == 2 {
            let ends = log.end_offsets(TOPIC).await.expect("ends");
            let commits: Vec<CommitOffset> = ends
                .iter()
                .enumerate()
                .map(|(p, o)| CommitOffset {
                    partition: p as i32,
                    offset: *o,
                    metadata: format!("batch={batch}"),
                })
                .collect();
            log.commit("g", TOPIC, &commits).await.expect("commit");
            println!("committed {batch}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    for round in 0..3u64 {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bus.db");
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "child_publisher",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ESG_BUS_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked: Vec<(u64, Vec<(i32, i64)>)> = Vec::new();
        let kill_after = 40 + round * 37;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if let Some(rest) = line.strip_prefix("acked ") {
                let (batch, positions) = rest.split_once(' ').expect("format");
                let positions = positions
                    .split(',')
                    .map(|p| {
                        let (a, b) = p.split_once(':').expect("p:o");
                        (a.parse().expect("p"), b.parse().expect("o"))
                    })
                    .collect();
                acked.push((batch.parse().expect("batch"), positions));
                if acked.len() as u64 >= kill_after {
                    break;
                }
            }
        }
        child.kill().expect("kill -9");
        child.wait().expect("reaped");

        let log = EmbeddedLog::open(&path).expect("reopens after kill -9");
        let ends = log.end_offsets(TOPIC).await.expect("ends");
        for (batch, positions) in &acked {
            for (i, (p, o)) in positions.iter().enumerate() {
                let m = log.read(TOPIC, *p, *o, 1).await.expect("read");
                assert_eq!(m.len(), 1, "acknowledged record {batch}/{i} lost");
                assert_eq!(m[0].offset, *o);
                assert_eq!(m[0].key, format!("k{batch}-{i}"));
                assert_eq!(
                    m[0].value.as_deref(),
                    Some(value(*batch, i as u64).as_slice())
                );
            }
        }
        // Offsets are dense and commits never run past the records.
        for (p, end) in ends.iter().enumerate() {
            let all = log.read(TOPIC, p as i32, 0, 1_000_000).await.expect("read");
            assert_eq!(all.len() as i64, *end, "partition {p} has holes");
        }
        let committed = log.committed("g", TOPIC).await.expect("committed");
        for (p, c) in committed.iter().enumerate() {
            if let Some(c) = c {
                assert!(c.offset <= ends[p], "commit past the end of partition {p}");
            }
        }
        // And the log takes writes again.
        log.publish(TOPIC, vec![Record::new("after", vec![1])])
            .await
            .expect("publish after reopen");
    }
}

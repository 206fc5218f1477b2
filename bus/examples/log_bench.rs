//! Throughput of the embedded log: publishes `N` records (default 1,000,000; 150-byte values,
//! keys like account ids) in batches of `B` (default 1,000) to a 12-partition topic, reads them
//! all back partition by partition in batches of 5,000, then compacts the topic once every key
//! has a second record. Prints records/s of each step and the file's size.
//!
//! ```sh
//! cargo run --release -p esg-bus --example log_bench [N] [B]
//! ```

use esg_bus::embedded::EmbeddedLog;
use esg_bus::{Cleanup, RangeReader, Record, TopicSpec, Transport};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let dir = tempfile::tempdir()?;
    let log = EmbeddedLog::open(dir.path().join("bus.db"))?;
    let topic = "esg.scores";
    log.ensure_topics(&[TopicSpec {
        name: topic.into(),
        partitions: 12,
        cleanup: Cleanup::compact(),
    }])
    .await?;
    let value = vec![0x5Au8; 150];
    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();

    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
        let records = chunk
            .iter()
            .map(|i| Record::new(format!("ACC-{i:07}"), value.clone()))
            .collect();
        log.publish(topic, records).await?;
    }
    let publish = started.elapsed();
    println!(
        "publish  {n} records in batches of {batch}: {:.1} s, {:.0} records/s",
        publish.as_secs_f64(),
        rate(n, publish)
    );

    let started = Instant::now();
    let ends = log.end_offsets(topic).await?;
    let mut read = 0usize;
    for (p, end) in ends.iter().enumerate() {
        let mut range = RangeReader::new(&log, topic, p as i32, 0, *end, 5000);
        while let Some(batch) = range.next_batch().await? {
            read += batch.len();
        }
    }
    let reading = started.elapsed();
    println!(
        "read     {read} records in batches of 5,000: {:.1} s, {:.0} records/s",
        reading.as_secs_f64(),
        rate(read, reading)
    );

    // Every key a second time, then one compaction removes the first records.
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
        let records = chunk
            .iter()
            .map(|i| Record::new(format!("ACC-{i:07}"), value.clone()))
            .collect();
        log.publish(topic, records).await?;
    }
    let started = Instant::now();
    let done = log.maintain(Duration::from_secs(3600)).await?;
    let maintain = started.elapsed();
    println!(
        "compact  {} superseded of {} records: {:.1} s",
        done.compacted,
        2 * n,
        maintain.as_secs_f64()
    );
    let size: u64 = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("files    {:.0} MB (bus.db with its WAL)", size as f64 / 1e6);
    Ok(())
}

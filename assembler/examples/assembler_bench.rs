//! The assembler alone on a day of `N` accounts (default 1,000,000): an embedded log holding a
//! daily run (its trigger, `N` roster entries, `N` account events, `N` scores and the seal) is
//! read into the assembler's store (`catch_up`), then the run is assembled (the ratings file,
//! its errors file and the summary). Prints the time of each step.
//!
//! ```sh
//! cargo run --release -p esg-assembler --example assembler_bench [N]
//! ```

use chrono::{NaiveDate, Utc};
use esg_assembler::{system_clock, Assembler, AssemblerConfig};
use esg_bus::embedded::EmbeddedLog;
use esg_bus::{EventBus, TopicsConfig};
use esg_schemas::{
    AccountChanged, AccountEntry, ChangeReason, DailyTrigger, EsgScore, EsgValues, Event, Pillar,
    RunKind, RunSealed, ScoreStatus,
};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const RUN: &str = "2026-11-23";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let log = EmbeddedLog::open(dir.path().join("bus.db"))?;
    let bus = EventBus::connect(Arc::new(log), &TopicsConfig::default()).await?;
    let date = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default();
    let now = Utc::now();
    let topics = bus.topics.clone();
    bus.publish(
        &topics.triggers,
        &[(
            RUN.into(),
            Event::DailyTrigger(DailyTrigger {
                run_id: RUN.into(),
                business_date: date,
                kind: RunKind::Daily,
                full: false,
                deadline: now + chrono::Duration::hours(4),
                triggered_at: now,
            }),
        )],
    )
    .await?;
    let values = EsgValues {
        overall: Some(Decimal::new(723_456, 4)),
        environmental: Some(Decimal::new(55, 0)),
        social: Some(Decimal::new(6_012, 2)),
        governance: Some(Decimal::new(4_120, 2)),
        primary_focus: Some(Pillar::Social),
        primary_focus_score: Some(Decimal::new(6_012, 2)),
        analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
    };
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let id = |i: &usize| format!("ACC-{i:07}");
        let entries: Vec<_> = chunk
            .iter()
            .map(|i| {
                let e = AccountEntry {
                    account_id: id(i),
                    account_name: format!("Account number {i}"),
                    version: 1,
                    updated_at: now,
                    run_id: RUN.into(),
                };
                (id(i), Event::AccountEntry(e))
            })
            .collect();
        bus.publish(&topics.accounts, &entries).await?;
        let changed: Vec<_> = chunk
            .iter()
            .map(|i| {
                let e = AccountChanged {
                    run_id: RUN.into(),
                    account_id: id(i),
                    version: 1,
                    reason: ChangeReason::New,
                    emitted_at: now,
                    prior: None,
                };
                (id(i), Event::AccountChanged(e))
            })
            .collect();
        bus.publish(&topics.account_events, &changed).await?;
        let scores: Vec<_> = chunk
            .iter()
            .map(|i| {
                let s = EsgScore {
                    run_id: RUN.into(),
                    account_id: id(i),
                    account_version: 1,
                    status: ScoreStatus::Successful,
                    values,
                    attempts: 1,
                    error_code: None,
                    error_message: None,
                    scored_at: now,
                    source_partition: 0,
                    source_offset: *i as i64,
                    requests: 1,
                    etag: None,
                    rate_limited_requests: 0,
                };
                (id(i), Event::EsgScore(s))
            })
            .collect();
        bus.publish(&topics.scores, &scores).await?;
    }
    bus.publish(
        &topics.triggers,
        &[(
            RUN.into(),
            Event::RunSealed(RunSealed {
                run_id: RUN.into(),
                business_date: date,
                expected_accounts: n as i64,
                active_accounts: n as i64,
                new_accounts: n as i64,
                sealed_at: now,
                ..Default::default()
            }),
        )],
    )
    .await?;
    println!(
        "log filled with 3 × {n} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let store = esg_assembler::state::open(&dir.path().join("assembler.db"))?;
    let assembler = Assembler::new(
        bus,
        store,
        AssemblerConfig {
            output_dir: dir.path().join("out"),
            poll_interval: Duration::from_millis(200),
            protection: Default::default(),
            parquet: false,
        },
        system_clock(),
    );
    let started = Instant::now();
    let read = assembler.catch_up().await?;
    let catch_up = started.elapsed().as_secs_f64();
    println!(
        "catch_up  {read} records into the store: {catch_up:.1} s ({:.0} records/s)",
        read as f64 / catch_up
    );
    let started = Instant::now();
    let reports = assembler
        .run(CancellationToken::new(), Some(RUN.into()))
        .await?;
    let assemble = started.elapsed().as_secs_f64();
    let size = reports
        .first()
        .and_then(|r| std::fs::metadata(&r.csv).ok())
        .map_or(0, |m| m.len());
    println!(
        "assemble  {} rows, {:.0} MB file: {assemble:.1} s ({:.0} rows/s)",
        reports.first().map_or(0, |r| r.summary.accounts),
        size as f64 / 1e6,
        n as f64 / assemble
    );
    Ok(())
}

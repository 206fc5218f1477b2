//! Throughput of the Avro codec on the pipeline's three per-account records: encodes and
//! decodes `N` (default 1,000,000) of each, single-object encoding, and prints records/s.
//!
//! ```sh
//! cargo run --release -p esg-bus --example codec_bench [N]
//! ```

use chrono::{DateTime, NaiveDate};
use esg_schemas::{
    AccountChanged, AccountEntry, ChangeReason, Codec, EsgScore, EsgValues, Event, Pillar,
    PriorAnalysis, ScoreStatus,
};
use rust_decimal::Decimal;
use std::time::Instant;

/// A record kind: its name and how to make its `i`-th event.
type Sample = (&'static str, Box<dyn Fn(usize) -> Event>);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let codec = Codec::new()?;
    let at = DateTime::from_timestamp_millis(1_763_900_000_123).unwrap_or_default();
    let values = EsgValues {
        overall: Some(Decimal::new(723_456, 4)),
        environmental: Some(Decimal::new(55, 0)),
        social: Some(Decimal::new(6_012, 2)),
        governance: None,
        primary_focus: Some(Pillar::Social),
        primary_focus_score: Some(Decimal::new(9_999, 2)),
        analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
    };
    let samples: [Sample; 4] = [
        (
            "AccountEntry",
            Box::new(move |i| {
                Event::AccountEntry(AccountEntry {
                    account_id: format!("ACC-{i:07}"),
                    account_name: format!("Account number {i}"),
                    version: 3,
                    updated_at: at,
                    run_id: "2026-11-23".into(),
                })
            }),
        ),
        (
            "AccountChanged",
            Box::new(move |i| {
                Event::AccountChanged(AccountChanged {
                    run_id: "2026-11-23".into(),
                    account_id: format!("ACC-{i:07}"),
                    version: 3,
                    reason: ChangeReason::New,
                    emitted_at: at,
                    prior: None,
                })
            }),
        ),
        (
            "AccountChanged+prior",
            Box::new(move |i| {
                Event::AccountChanged(AccountChanged {
                    run_id: "2026-11-23".into(),
                    account_id: format!("ACC-{i:07}"),
                    version: 3,
                    reason: ChangeReason::Stale,
                    emitted_at: at,
                    prior: Some(PriorAnalysis {
                        etag: "\"v3-2026-11-20\"".into(),
                        values,
                    }),
                })
            }),
        ),
        (
            "EsgScore",
            Box::new(move |i| {
                Event::EsgScore(EsgScore {
                    run_id: "2026-11-23".into(),
                    account_id: format!("ACC-{i:07}"),
                    account_version: 3,
                    status: ScoreStatus::Partial,
                    values,
                    attempts: 1,
                    error_code: None,
                    error_message: None,
                    scored_at: at,
                    source_partition: 7,
                    source_offset: i as i64,
                    requests: 1,
                    etag: None,
                    rate_limited_requests: 0,
                })
            }),
        ),
    ];
    println!("{n} records of each kind, one core");
    for (name, make) in &samples {
        let events: Vec<Event> = (0..n).map(make).collect();
        let started = Instant::now();
        let mut encoded = Vec::with_capacity(n);
        for e in &events {
            encoded.push(codec.encode(e)?);
        }
        let encode = started.elapsed();
        let started = Instant::now();
        for (bytes, e) in encoded.iter().zip(&events) {
            let back = codec.decode(bytes)?;
            if &back != e {
                return Err(format!("{name}: decoded record differs").into());
            }
        }
        let decode = started.elapsed();
        let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
        println!(
            "{name:<22} {:>4} bytes  encode {:>9.0}/s ({:.2} µs)  decode {:>9.0}/s ({:.2} µs)",
            encoded[0].len(),
            rate(encode),
            encode.as_secs_f64() * 1e6 / n as f64,
            rate(decode),
            decode.as_secs_f64() * 1e6 / n as f64,
        );
    }
    Ok(())
}

//! The producer alone on a day of `N` accounts (default 1,000,000): the simulated account
//! system in this process, an embedded log and a producer store in a temporary directory, one
//! daily run from the trigger to the seal (listing, planning, the roster published to
//! `esg.accounts`, one `AccountChanged` per active account). Nothing consumes the events.
//! Prints the producer's log (its phases, with the time since start) and the total.
//!
//! ```sh
//! cargo run --release -p esg-producer --example producer_bench [N]
//! ```

use esg_auth::{Secret, TokenSource};
use esg_bus::embedded::EmbeddedLog;
use esg_bus::{EventBus, TopicsConfig, Transport};
use esg_producer::accounts::{AccountsClient, AccountsClientConfig};
use esg_producer::{Producer, ProducerConfig, RunRequest};
use esg_schemas::RunKind;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let accounts: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    tracing_subscriber::fmt()
        .with_env_filter("esg_producer=info")
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
    let sim = esg_simulator::start(
        esg_simulator::SimConfig {
            accounts,
            rate_limit_per_second: None,
            track_calls: false,
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let log = EmbeddedLog::open(dir.path().join("bus.db"))?;
    let bus = EventBus::connect(Arc::new(log.clone()), &TopicsConfig::default()).await?;
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        sim.token_url(),
        "esg-accounts",
        Secret::new("accounts-secret"),
        Some("accounts.read".into()),
    ));
    let client = AccountsClient::new(http, AccountsClientConfig::new(sim.url()), tokens);
    let producer = Producer::new(
        bus.clone(),
        esg_producer::store::open(&dir.path().join("producer.db"))?,
        Some(client),
        ProducerConfig::default(),
    );
    let req = RunRequest {
        run_id: "2026-11-23".into(),
        business_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default(),
        kind: RunKind::Daily,
        full: false,
        deadline: chrono::Utc::now() + chrono::Duration::hours(4),
        forced: Vec::new(),
        min_active_ratio: None,
    };
    let started = Instant::now();
    let sealed = producer.run(&req, &CancellationToken::new()).await?;
    let took = started.elapsed().as_secs_f64();
    let events: i64 = log
        .end_offsets(&bus.topics.account_events)
        .await?
        .iter()
        .sum();
    println!(
        "{accounts} accounts, {} active, {events} account events: trigger to seal {took:.1} s ({:.0} accounts/s)",
        sealed.active_accounts,
        sealed.active_accounts as f64 / took
    );
    sim.shutdown();
    Ok(())
}

//! The building blocks of a run, built from the configuration: the state locks, the bus with
//! its topics, the API clients with their token sources, and the three stages. The run path
//! itself (which stage runs where, waiting for a run, its alerts) is [`crate::runner`].

use crate::config::{BusKind, Config};
use anyhow::{bail, Context, Result};
use chrono::{NaiveDate, Utc};
use esg_assembler::encryption::Protection;
use esg_assembler::{Assembler, AssemblerConfig, Clock};
use esg_auth::tls::{ClientTls, TlsFiles};
use esg_auth::TokenSource;
use esg_bus::embedded::EmbeddedLog;
use esg_bus::kafka::KafkaTransport;
use esg_bus::runs::RunBook;
use esg_bus::{EventBus, RangeReader, SharedTransport};
use esg_producer::accounts::AccountsClient;
use esg_producer::Producer;
use esg_schemas::Event;
use esg_scorer::api::EsgApiClient;
use esg_scorer::limiter::RateLimiter;
use std::fs::File;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Holds a lock file in the state directory: two processes of the same role on the same state
/// would consume the same partitions, or write the same files, twice.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes `<state.dir>/<name>.lock`, or says which process holds it.
    pub fn acquire(config: &Config, name: &str) -> Result<Self> {
        // 0700 from the start: the stores opened in it next would tighten it anyway.
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(&config.state.dir)
            .with_context(|| format!("creating state dir {}", config.state.dir.display()))?;
        let path = config.state.dir.join(format!("{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(crate::runner::Refused::LockHeld(format!(
                "another esg process is using the state directory {} (lock {}); wait for it to finish",
                config.state.dir.display(),
                path.display()
            ))
            .into()),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// An HTTP client for one API: connect timeout, no redirects (a token must not follow one),
/// TLS 1.2 or newer with the client's TLS files (private CA, client certificate).
pub fn http_client(timeout: Duration, tls: &TlsFiles<'_>) -> Result<reqwest::Client> {
    let tls = ClientTls::load(tls).map_err(|e| anyhow::anyhow!("{e}"))?;
    tls.apply(reqwest::Client::builder())
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .build()
        .context("building the HTTP client")
}

/// The HTTP client of the token endpoint, with `[auth]`'s TLS files; `timeout` is the API's
/// whose tokens it fetches.
pub fn auth_http_client(config: &Config, timeout: Duration) -> Result<reqwest::Client> {
    http_client(timeout, &config.auth.tls_files()).context("the token endpoint's client")
}

/// The configured transport with the pipeline's topics created (and, on Kafka, the value
/// schemas registered). The embedded log is returned too, for its housekeeping.
pub async fn connect_bus(config: &Config) -> Result<(EventBus, Option<EmbeddedLog>)> {
    match config.bus.kind {
        BusKind::Embedded => {
            let log = EmbeddedLog::open_keyed(config.bus_path(), config.state.key.as_ref())
                .with_context(|| {
                    format!("opening the embedded log {}", config.bus_path().display())
                })?;
            let transport: SharedTransport = Arc::new(log.clone());
            let bus = EventBus::connect(transport, &config.topics())
                .await
                .context("creating topics")?;
            Ok((bus, Some(log)))
        }
        BusKind::Kafka => {
            let kafka = KafkaTransport::connect(config.kafka.clone())
                .await
                .with_context(|| {
                    format!("connecting to Kafka at {}", config.kafka.bootstrap_servers)
                })?;
            let transport: SharedTransport = Arc::new(kafka);
            let bus = EventBus::connect_with(
                transport,
                &config.topics(),
                Some(&config.kafka.schema_registry),
            )
            .await
            .context("creating topics and registering schemas")?;
            Ok((bus, None))
        }
    }
}

/// The vendor API's token source.
pub fn esg_tokens(config: &Config, http: reqwest::Client) -> TokenSource {
    TokenSource::new(
        http,
        &config.auth.token_url,
        &config.esg_api.client_id,
        config.esg_api.client_secret.clone(),
        Some(config.esg_api.scope.clone()),
    )
}

/// The account system's token source.
pub fn accounts_tokens(config: &Config, http: reqwest::Client) -> TokenSource {
    TokenSource::new(
        http,
        &config.auth.token_url,
        &config.accounts.client_id,
        config.accounts.client_secret.clone(),
        Some(config.accounts.scope.clone()),
    )
}

/// The ESG API client with the tenant rate limiter.
pub fn api_client(config: &Config) -> Result<Arc<EsgApiClient>> {
    let api_http = http_client(config.esg_api.timeout, &config.esg_api.tls_files())?;
    let auth_http = auth_http_client(config, config.esg_api.timeout)?;
    let api_tokens = Arc::new(esg_tokens(config, auth_http));
    let rate = NonZeroU32::new(config.esg_api.rate_limit_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = config
        .esg_api
        .burst
        .and_then(NonZeroU32::new)
        .unwrap_or(rate);
    let limiter = Arc::new(RateLimiter::new(rate, burst));
    Ok(Arc::new(EsgApiClient::new(
        api_http,
        config.esg_api.clone(),
        api_tokens,
        limiter,
    )))
}

/// The producer, its store in the state directory (a cache of the topics, see
/// `esg_producer::store`).
pub fn producer(config: &Config, bus: &EventBus) -> Result<Producer> {
    let producer_store =
        esg_producer::store::open_keyed(&config.producer_store_path(), config.state.key.as_ref())?;
    let accounts_http = http_client(config.accounts.timeout, &config.accounts.tls_files())?;
    let auth_http = auth_http_client(config, config.accounts.timeout)?;
    let accounts_tokens = Arc::new(accounts_tokens(config, auth_http));
    let accounts = AccountsClient::new(accounts_http, config.accounts.clone(), accounts_tokens);
    Ok(Producer::new(
        bus.clone(),
        producer_store,
        Some(accounts),
        config.producer.clone(),
    ))
}

/// The assembler, its store in the state directory.
pub fn assembler(config: &Config, bus: &EventBus, clock: Clock) -> Result<Assembler> {
    let assembler_store = esg_assembler::state::open_keyed(
        &config.assembler_store_path(),
        config.state.key.as_ref(),
    )?;
    let protection = config
        .protection()
        .map_err(|(key, message)| anyhow::anyhow!("key `{key}`: {message}"))?;
    let gid = config
        .output
        .gid()
        .map_err(|message| anyhow::anyhow!("key `output.group`: {message}"))?;
    // Only with a group: otherwise the directory is made when the first file is written, and an
    // unwritable one is the pre-flight's to report (with its alert), not a start-up failure.
    if gid.is_some() {
        esg_assembler::output::prepare_dir(&config.output.dir, gid)
            .with_context(|| format!("output directory {}", config.output.dir.display()))?;
    }
    match &protection {
        Protection::Plaintext => tracing::warn!(
            dir = %config.output.dir.display(),
            "output files are written in PLAINTEXT: there is no [encryption] section, so whoever can read the output directory can read the ratings"
        ),
        Protection::Age(recipients) => tracing::info!(
            recipients = recipients.len(),
            "output files are age-encrypted (*.age) to the configured recipients"
        ),
    }
    Ok(Assembler::new(
        bus.clone(),
        assembler_store,
        AssemblerConfig {
            output_dir: config.output.dir.clone(),
            poll_interval: Duration::from_millis(200),
            protection,
            parquet: config.output.parquet,
        },
        clock,
    ))
}

/// The business date of "today" in the configured time zone.
pub fn today(config: &Config) -> NaiveDate {
    let tz = config.time_zone();
    Utc::now().with_timezone(&tz).date_naive()
}

/// Where a replay starts or ends: an offset, or the first record at or after a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayBound {
    Offset(i64),
    Time(chrono::DateTime<Utc>),
}

impl std::str::FromStr for ReplayBound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(o) = s.parse::<i64>() {
            return if o >= 0 {
                Ok(ReplayBound::Offset(o))
            } else {
                Err(format!("offset {o} is negative"))
            };
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| ReplayBound::Time(t.with_timezone(&Utc)))
            .map_err(|e| {
                format!("{s:?} is neither an offset nor an RFC 3339 time (2026-11-23T05:00:00-06:00): {e}")
            })
    }
}

/// The accounts whose events lie in `[from, to)` of the account-events topic (one partition or
/// all), grouped by the business date of the run that emitted them.
pub async fn replay_accounts(
    bus: &EventBus,
    book: &RunBook,
    partition: Option<i32>,
    from: ReplayBound,
    to: ReplayBound,
) -> Result<std::collections::BTreeMap<NaiveDate, Vec<String>>> {
    let topic = bus.topics.account_events.clone();
    let partitions = bus.transport.partitions(&topic).await?;
    let chosen: Vec<i32> = match partition {
        Some(p) if (0..partitions).contains(&p) => vec![p],
        Some(p) => bail!(
            "topic {topic} has partitions 0..{}, not {p}",
            partitions - 1
        ),
        None => {
            if matches!(from, ReplayBound::Offset(_)) || matches!(to, ReplayBound::Offset(_)) {
                bail!("offsets are per partition: give --partition with --from/--to offsets, or use times");
            }
            (0..partitions).collect()
        }
    };
    let starts = bus.transport.start_offsets(&topic).await?;
    let ends = bus.transport.end_offsets(&topic).await?;
    let mut by_date: std::collections::BTreeMap<NaiveDate, std::collections::BTreeSet<String>> =
        Default::default();
    for p in chosen {
        let resolve = |b: ReplayBound| {
            let bus = bus.clone();
            let topic = topic.clone();
            async move {
                Ok::<i64, anyhow::Error>(match b {
                    ReplayBound::Offset(o) => o,
                    ReplayBound::Time(t) => {
                        bus.transport
                            .offset_for_time(&topic, p, t.timestamp_millis())
                            .await?
                    }
                })
            }
        };
        let start = resolve(from).await?.max(starts[p as usize]);
        let end = resolve(to).await?.min(ends[p as usize]);
        if start >= end {
            continue;
        }
        let mut reader = RangeReader::new(bus.transport.as_ref(), &topic, p, start, end, 1000);
        while let Some(batch) = reader.next_batch().await? {
            for m in batch.into_iter().filter(|m| m.offset < end) {
                match bus.decode(m.value.as_deref()) {
                    Ok(Some(Event::AccountChanged(e))) => match book.get(&e.run_id) {
                        Some(run) => {
                            by_date
                                .entry(run.business_date)
                                .or_default()
                                .insert(e.account_id);
                        }
                        None => {
                            tracing::warn!(partition = p, offset = m.offset, run_id = %e.run_id,
                                "skipping an account event of a run no longer on the triggers topic")
                        }
                    },
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(partition = p, offset = m.offset, error = %err, "skipping an undecodable account event")
                    }
                }
            }
        }
    }
    Ok(by_date
        .into_iter()
        .map(|(d, ids)| (d, ids.into_iter().collect()))
        .collect())
}

//! Wiring of the three stages over the configured transport.
//!
//! - [`Pipeline`]: producer, scorer and assembler as tasks of one process (`esg run --once`,
//!   `esg demo`, and `esg rerun`/`esg replay` on the embedded log), exactly the events and
//!   guarantees they have as separate processes.
//! - [`ProducerService`], [`scorer_service`], [`assembler_service`]: one stage each, for
//!   `esg producer`, `esg scorer` and `esg assembler` on Kafka, where they run as separate
//!   processes (scorers on several machines).

use crate::config::{BusKind, Config};
use anyhow::{bail, Context, Result};
use chrono::{NaiveDate, Utc};
use esg_assembler::{Assembler, AssemblerConfig, Clock, Progress, RunReport};
use esg_auth::TokenSource;
use esg_bus::embedded::EmbeddedLog;
use esg_bus::kafka::KafkaTransport;
use esg_bus::{EventBus, RangeReader, SharedTransport};
use esg_producer::accounts::AccountsClient;
use esg_producer::{Producer, RunRequest};
use esg_schemas::{Event, RunCompleted, RunKind};
use esg_scorer::api::EsgApiClient;
use esg_scorer::limiter::RateLimiter;
use esg_scorer::Scorer;
use std::fs::File;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Holds a lock file in the state directory: two processes of the same role on the same state
/// would consume the same partitions, or write the same files, twice.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes `<state.dir>/<name>.lock`, or says which process holds it.
    pub fn acquire(config: &Config, name: &str) -> Result<Self> {
        std::fs::create_dir_all(&config.state.dir)
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
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another esg process is using the state directory {} (lock {}); wait for it to finish",
                config.state.dir.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .build()
        .context("building the HTTP client")
}

/// The configured transport with the pipeline's topics created (and, on Kafka, the value
/// schemas registered). The embedded log is returned too, for its housekeeping.
pub async fn connect_bus(config: &Config) -> Result<(EventBus, Option<EmbeddedLog>)> {
    match config.bus.kind {
        BusKind::Embedded => {
            let log = EmbeddedLog::open(config.bus_path()).with_context(|| {
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

/// The ESG API client with the tenant rate limiter.
pub fn api_client(config: &Config) -> Result<Arc<EsgApiClient>> {
    let api_http = http_client(config.esg_api.timeout)?;
    let api_tokens = Arc::new(TokenSource::new(
        api_http.clone(),
        &config.auth.token_url,
        &config.esg_api.client_id,
        config.esg_api.client_secret.clone(),
        Some(config.esg_api.scope.clone()),
    ));
    let rate = NonZeroU32::new(config.esg_api.rate_limit_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = config
        .esg_api
        .burst
        .and_then(NonZeroU32::new)
        .unwrap_or(rate);
    let limiter = Arc::new(RateLimiter::new(rate, burst));
    Ok(Arc::new(EsgApiClient::new(
        api_http,
        config.esg_api_client_config(),
        api_tokens,
        limiter,
    )))
}

fn producer(config: &Config, bus: &EventBus) -> Result<Producer> {
    let producer_store = esg_producer::store::open(&config.state.dir.join("producer.db"))?;
    let accounts_http = http_client(config.accounts.timeout)?;
    let accounts_tokens = Arc::new(TokenSource::new(
        accounts_http.clone(),
        &config.auth.token_url,
        &config.accounts.client_id,
        config.accounts.client_secret.clone(),
        Some(config.accounts.scope.clone()),
    ));
    let accounts = AccountsClient::new(
        accounts_http,
        config.accounts_client_config(),
        accounts_tokens,
    );
    Ok(Producer::new(
        bus.clone(),
        producer_store,
        Some(accounts),
        config.producer.clone(),
    ))
}

fn assembler(config: &Config, bus: &EventBus, clock: Clock) -> Result<Arc<Assembler>> {
    let assembler_store = esg_assembler::state::open(&config.state.dir.join("assembler.db"))?;
    Ok(Arc::new(Assembler::new(
        bus.clone(),
        assembler_store,
        AssemblerConfig {
            output_dir: config.output.dir.clone(),
            poll_interval: Duration::from_millis(200),
        },
        clock,
    )))
}

fn today(config: &Config) -> NaiveDate {
    let tz = config.time_zone().unwrap_or(chrono_tz::America::Chicago);
    Utc::now().with_timezone(&tz).date_naive()
}

fn daily_request(config: &Config, business_date: NaiveDate, full: bool) -> RunRequest {
    RunRequest {
        run_id: business_date.to_string(),
        business_date,
        kind: RunKind::Daily,
        full,
        deadline: config.deadline_for(business_date, Utc::now()),
        forced: Vec::new(),
    }
}

async fn rerun_request(
    config: &Config,
    producer: &Producer,
    business_date: NaiveDate,
    kind: RunKind,
    accounts: Vec<String>,
) -> Result<RunRequest> {
    Ok(RunRequest {
        run_id: producer.next_rerun_id(business_date).await?,
        business_date,
        kind,
        full: false,
        deadline: Utc::now() + chrono::Duration::from_std(config.run.max_duration)?,
        forced: accounts,
    })
}

/// Everything a run needs, built once from the configuration.
pub struct Pipeline {
    pub config: Config,
    pub bus: EventBus,
    pub log: Option<EmbeddedLog>,
    pub producer: Producer,
    pub assembler: Arc<Assembler>,
    pub api: Arc<EsgApiClient>,
    _locks: Vec<StateLock>,
}

impl Pipeline {
    /// Opens the log and the stores and builds the clients.
    pub async fn open(config: Config, clock: Clock) -> Result<Self> {
        let locks = vec![
            StateLock::acquire(&config, "esg")?,
            StateLock::acquire(&config, "producer")?,
            StateLock::acquire(&config, "assembler")?,
        ];
        let (bus, log) = connect_bus(&config).await?;
        let producer = producer(&config, &bus)?;
        let assembler = assembler(&config, &bus, clock)?;
        let api = api_client(&config)?;
        Ok(Pipeline {
            config,
            bus,
            log,
            producer,
            assembler,
            api,
            _locks: locks,
        })
    }

    /// The business date of "today" in the configured time zone.
    pub fn today(&self) -> NaiveDate {
        today(&self.config)
    }

    /// The daily run of `business_date`, from trigger to files, resuming if it was started before.
    pub async fn run_daily(
        &self,
        business_date: NaiveDate,
        full: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let req = daily_request(&self.config, business_date, full);
        self.execute(req, shutdown, progress).await
    }

    /// The manual override: re-scores `accounts` and replaces their rows in `business_date`'s
    /// file. `kind` is [`RunKind::Rerun`] (chosen accounts) or [`RunKind::Replay`] (the accounts
    /// of a range of the account events).
    pub async fn rerun(
        &self,
        business_date: NaiveDate,
        kind: RunKind,
        accounts: Vec<String>,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let names = esg_assembler::output::file_names(business_date);
        let file = self.config.output.dir.join(&names.csv);
        if !file.exists() {
            bail!(
                "there is no file for {business_date} to re-run accounts in ({} does not exist); run the day first",
                file.display()
            );
        }
        let req =
            rerun_request(&self.config, &self.producer, business_date, kind, accounts).await?;
        self.execute(req, shutdown, progress).await
    }

    async fn execute(
        &self,
        req: RunRequest,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let run_id = req.run_id.clone();
        // Housekeeping of the embedded log before the day starts: retention and compaction
        // (Kafka's brokers do their own).
        if let Some(log) = &self.log {
            let maintained = log.maintain(Duration::from_secs(24 * 3600)).await?;
            tracing::debug!(
                expired = maintained.expired,
                compacted = maintained.compacted,
                "log maintained"
            );
        }

        let stop_scorer = shutdown.child_token();
        let scorer = Scorer::new(
            self.bus.clone(),
            self.api.clone(),
            self.config.scorer.clone(),
            self.config.esg_api.max_in_flight,
        );
        let scorer_task = tokio::spawn(scorer.run(stop_scorer.clone()));

        let stop_assembler = shutdown.child_token();
        let assembler = self.assembler.clone();
        let until = Some(run_id.clone());
        let assembler_task = {
            let stop = stop_assembler.clone();
            tokio::spawn(async move { assembler.run(stop, until).await })
        };

        let progress_task = {
            let assembler = self.assembler.clone();
            let id = run_id.clone();
            let stop = stop_assembler.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(p) = assembler.progress(&id).await {
                        progress(&p);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            })
        };

        // The producer runs to the seal, then the assembler to the run's end; a scorer or an
        // assembler that stops early (the bus failing, a full disk) ends the run with its error
        // instead of leaving it waiting for the deadline.
        let mut scorer_task = scorer_task;
        let mut assembler_task = assembler_task;
        let mut scorer_result = None;
        let work = async {
            let sealed =
                self.producer.run(&req, &shutdown).await.map_err(|e| {
                    anyhow::Error::new(e).context(format!("producer of run {run_id}"))
                })?;
            tracing::info!(run_id = %run_id, expected = sealed.expected_accounts, "waiting for the run to complete");
            match (&mut assembler_task).await {
                Ok(Ok(reports)) => Ok(reports),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("assembler")),
                Err(e) => Err(anyhow::anyhow!("assembler task failed: {e}")),
            }
        };
        let result = tokio::select! {
            r = work => r,
            s = &mut scorer_task => {
                let err = match &s {
                    Ok(Ok(_)) => anyhow::anyhow!("scorer stopped before the run completed"),
                    Ok(Err(e)) => anyhow::anyhow!("scorer: {e}"),
                    Err(e) => anyhow::anyhow!("scorer task failed: {e}"),
                };
                scorer_result = Some(s);
                Err(err)
            }
        };
        stop_assembler.cancel();
        stop_scorer.cancel();
        let _ = progress_task.await;
        if !assembler_task.is_finished() {
            let _ = assembler_task.await;
        }
        let scorer_result = match scorer_result {
            Some(r) => r,
            None => scorer_task.await,
        };
        let scorer_stats = match scorer_result {
            Ok(Ok(stats)) => Some(stats),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scorer failed");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "scorer task failed");
                None
            }
        };
        let reports = result?;
        if shutdown.is_cancelled() && !self.assembler.is_completed(&run_id).await? {
            bail!("stopped before run {run_id} completed; run the same command again to resume");
        }
        let report = reports.into_iter().find(|r| r.run_id == run_id);
        Ok(Outcome {
            run_id,
            report,
            scorer: scorer_stats,
            api: self.api.stats(),
        })
    }
}

/// The result of one command.
#[derive(Debug)]
pub struct Outcome {
    pub run_id: String,
    /// `None` when the run had been completed before (nothing written this time).
    pub report: Option<RunReport>,
    pub scorer: Option<esg_scorer::ScorerStats>,
    pub api: esg_scorer::api::ApiStats,
}

/// The producer alone (`esg producer`, and `esg rerun`/`esg replay` on Kafka): publishes a run's
/// events and its seal; the scorers and the assembler are other processes.
pub struct ProducerService {
    pub config: Config,
    pub bus: EventBus,
    producer: Producer,
    _lock: StateLock,
}

impl ProducerService {
    pub async fn open(config: Config) -> Result<Self> {
        let lock = StateLock::acquire(&config, "producer")?;
        let (bus, _) = connect_bus(&config).await?;
        let producer = producer(&config, &bus)?;
        Ok(ProducerService {
            config,
            bus,
            producer,
            _lock: lock,
        })
    }

    /// The business date of "today" in the configured time zone.
    pub fn today(&self) -> NaiveDate {
        today(&self.config)
    }

    /// Publishes the daily run of `business_date` (resuming it if it was started before).
    pub async fn daily(
        &self,
        business_date: NaiveDate,
        full: bool,
        shutdown: &CancellationToken,
    ) -> Result<esg_schemas::RunSealed> {
        let req = daily_request(&self.config, business_date, full);
        self.producer
            .run(&req, shutdown)
            .await
            .with_context(|| format!("producer of run {}", req.run_id))
    }

    /// Publishes a re-run (or replay) of `accounts` of `business_date`; returns its seal.
    pub async fn rerun(
        &self,
        business_date: NaiveDate,
        kind: RunKind,
        accounts: Vec<String>,
        shutdown: &CancellationToken,
    ) -> Result<esg_schemas::RunSealed> {
        let req =
            rerun_request(&self.config, &self.producer, business_date, kind, accounts).await?;
        self.producer
            .run(&req, shutdown)
            .await
            .with_context(|| format!("producer of run {}", req.run_id))
    }
}

/// Reads the triggers topic from `from` to its current end for the first record keyed
/// `run_id` that `pick` accepts. Returns it, if any, and the offset to read on from.
async fn find_trigger<T>(
    bus: &EventBus,
    run_id: &str,
    from: i64,
    pick: impl Fn(Event) -> Option<T>,
) -> Result<(Option<T>, i64)> {
    let topic = &bus.topics.triggers;
    let end = bus.transport.end_offsets(topic).await?[0];
    let mut reader = RangeReader::new(bus.transport.as_ref(), topic, 0, from, end, 500);
    while let Some(batch) = reader.next_batch().await? {
        for m in batch {
            if m.key != run_id {
                continue;
            }
            if let Some(found) = bus
                .decode(m.value.as_deref())
                .ok()
                .flatten()
                .and_then(&pick)
            {
                return Ok((Some(found), m.offset + 1));
            }
        }
    }
    Ok((None, reader.position()))
}

/// Waits until the assembler announces `run_id` completed on the triggers topic (or `shutdown`,
/// or `timeout`). Calls `tick` with the time waited every few seconds.
pub async fn wait_completed(
    bus: &EventBus,
    run_id: &str,
    shutdown: &CancellationToken,
    timeout: Duration,
    tick: impl Fn(Duration),
) -> Result<RunCompleted> {
    let started = std::time::Instant::now();
    let mut next = bus.transport.start_offsets(&bus.topics.triggers).await?[0];
    loop {
        let (done, position) = find_trigger(bus, run_id, next, |e| match e {
            Event::RunCompleted(done) if done.run_id == run_id => Some(done),
            _ => None,
        })
        .await?;
        if let Some(done) = done {
            return Ok(done);
        }
        next = position;
        if started.elapsed() >= timeout {
            bail!(
                "run {run_id} did not complete within {}; check that the scorers and the assembler are running (esg scorer, esg assembler)",
                humantime_serde::re::humantime::format_duration(timeout)
            );
        }
        tick(started.elapsed());
        tokio::select! {
            _ = shutdown.cancelled() => bail!("stopped while waiting for run {run_id}; it goes on without this command"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// True when a `DailyTrigger` of `run_id` is on the triggers topic (the run was started).
pub async fn run_triggered(bus: &EventBus, run_id: &str) -> Result<bool> {
    let start = bus.transport.start_offsets(&bus.topics.triggers).await?[0];
    let (found, _) = find_trigger(bus, run_id, start, |e| {
        matches!(e, Event::DailyTrigger(_)).then_some(())
    })
    .await?;
    Ok(found.is_some())
}

/// One scorer of the group (`esg scorer`): scores until `shutdown`.
pub async fn scorer_service(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<esg_scorer::ScorerStats> {
    if config.bus.kind != BusKind::Kafka {
        bail!("`esg scorer` runs on Kafka (bus.kind = \"kafka\"); with the embedded log, `esg run` runs the scorer in-process");
    }
    let (bus, _) = connect_bus(config).await?;
    let api = api_client(config)?;
    let scorer = Scorer::new(
        bus,
        api,
        config.scorer.clone(),
        config.esg_api.max_in_flight,
    );
    Ok(scorer.run(shutdown).await?)
}

/// The assembler alone (`esg assembler`): materialises scores and writes each run's files when
/// it completes or at its deadline, until `shutdown`.
pub async fn assembler_service(
    config: &Config,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<Vec<RunReport>> {
    if config.bus.kind != BusKind::Kafka {
        bail!("`esg assembler` runs on Kafka (bus.kind = \"kafka\"); with the embedded log, `esg run` runs the assembler in-process");
    }
    let _lock = StateLock::acquire(config, "assembler")?;
    let (bus, _) = connect_bus(config).await?;
    let assembler = assembler(config, &bus, clock)?;
    Ok(assembler.run(shutdown, None).await?)
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
                    Ok(Some(Event::AccountChanged(e))) => {
                        if let Some(date) = esg_schemas::business_date_of_run(&e.run_id) {
                            by_date.entry(date).or_default().insert(e.account_id);
                        }
                    }
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

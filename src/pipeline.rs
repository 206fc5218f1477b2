//! Wiring of the three stages over the embedded transport, for `esg run --once`, `esg rerun`
//! and `esg demo`: producer, scorer and assembler run as tasks of one process on one durable
//! log, exactly the events and guarantees they have on Kafka.

use crate::config::Config;
use anyhow::{bail, Context, Result};
use chrono::{NaiveDate, Utc};
use esg_assembler::{Assembler, AssemblerConfig, Clock, Progress, RunReport};
use esg_auth::TokenSource;
use esg_bus::embedded::EmbeddedLog;
use esg_bus::{EventBus, SharedTransport};
use esg_producer::accounts::AccountsClient;
use esg_producer::{Producer, RunRequest};
use esg_schemas::RunKind;
use esg_scorer::api::EsgApiClient;
use esg_scorer::limiter::RateLimiter;
use esg_scorer::Scorer;
use std::fs::File;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Holds the state directory for this process: a second `esg` on the same state would consume
/// the same partitions twice.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub fn acquire(config: &Config) -> Result<Self> {
        std::fs::create_dir_all(&config.state.dir)
            .with_context(|| format!("creating state dir {}", config.state.dir.display()))?;
        let path = config.state.dir.join("esg.lock");
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

/// Everything a run needs, built once from the configuration.
pub struct Pipeline {
    pub config: Config,
    pub bus: EventBus,
    pub log: EmbeddedLog,
    pub producer: Producer,
    pub assembler: Arc<Assembler>,
    pub api: Arc<EsgApiClient>,
    _lock: StateLock,
}

fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .build()
        .context("building the HTTP client")
}

impl Pipeline {
    /// Opens the log and the stores and builds the clients.
    pub async fn open(config: Config, clock: Clock) -> Result<Self> {
        let lock = StateLock::acquire(&config)?;
        let log = EmbeddedLog::open(config.bus_path())
            .with_context(|| format!("opening the embedded log {}", config.bus_path().display()))?;
        let transport: SharedTransport = Arc::new(log.clone());
        let bus = EventBus::connect(transport, &config.topics())
            .await
            .context("creating topics")?;
        let producer_store = esg_producer::store::open(&config.state.dir.join("producer.db"))?;
        let assembler_store = esg_assembler::state::open(&config.state.dir.join("assembler.db"))?;

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
        let api = Arc::new(EsgApiClient::new(
            api_http,
            config.esg_api_client_config(),
            api_tokens,
            limiter,
        ));

        let producer = Producer::new(
            bus.clone(),
            producer_store,
            Some(accounts),
            config.producer.clone(),
        );
        let assembler = Arc::new(Assembler::new(
            bus.clone(),
            assembler_store,
            AssemblerConfig {
                output_dir: config.output.dir.clone(),
                poll_interval: Duration::from_millis(200),
            },
            clock,
        ));
        Ok(Pipeline {
            config,
            bus,
            log,
            producer,
            assembler,
            api,
            _lock: lock,
        })
    }

    /// The business date of "today" in the configured time zone.
    pub fn today(&self) -> NaiveDate {
        let tz = self
            .config
            .time_zone()
            .unwrap_or(chrono_tz::America::Chicago);
        Utc::now().with_timezone(&tz).date_naive()
    }

    /// The daily run of `business_date`, from trigger to files, resuming if it was started before.
    pub async fn run_daily(
        &self,
        business_date: NaiveDate,
        full: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let now = Utc::now();
        let req = RunRequest {
            run_id: business_date.to_string(),
            business_date,
            kind: RunKind::Daily,
            full,
            deadline: self.config.deadline_for(business_date, now),
            forced: Vec::new(),
        };
        self.execute(req, shutdown, progress).await
    }

    /// The manual override: re-scores `accounts` and replaces their rows in `business_date`'s file.
    pub async fn rerun(
        &self,
        business_date: NaiveDate,
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
        let now = Utc::now();
        let req = RunRequest {
            run_id: self.producer.next_rerun_id(business_date).await?,
            business_date,
            kind: RunKind::Rerun,
            full: false,
            deadline: now + chrono::Duration::from_std(self.config.run.max_duration)?,
            forced: accounts,
        };
        self.execute(req, shutdown, progress).await
    }

    async fn execute(
        &self,
        req: RunRequest,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let run_id = req.run_id.clone();
        // Housekeeping of the log before the day starts: retention and compaction.
        let maintained = self.log.maintain(Duration::from_secs(24 * 3600)).await?;
        tracing::debug!(
            expired = maintained.expired,
            compacted = maintained.compacted,
            "log maintained"
        );

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

//! The one run path. Every command that runs a business date (`esg run`, `esg producer`,
//! `esg rerun`, `esg replay`, `esg demo`) goes through [`Runner`], on either transport:
//!
//! 1. the run's identity is decided from the triggers topic ([`RunBook`]): resume the open run
//!    of the date, start the next one (`DATE`, then `DATE.N`), say the date is done, or refuse
//!    with the command to use (exit 2);
//! 2. the pre-flight ([`crate::preflight`]) checks directories, free space, tokens and both
//!    APIs before any vendor call;
//! 3. the producer publishes the run (trigger, roster changes, account events, seal);
//! 4. the run is waited for until the assembler announces `RunCompleted` on the triggers topic.
//!
//! On the embedded log the scorer and the assembler run as tasks of this process for the
//! run's length; on Kafka they are services of their own (`esg scorer`, `esg assembler`) and
//! the runner only publishes and waits. Run-end alerts (deadline, failure ratio and its
//! resolution) are decided by the assembler where the run ends ([`Alerts::run_end_hook`]);
//! the runner raises the critical error of a run it could not take to its end.

use crate::alerting::Alerts;
use crate::auditing::Audit;
use crate::config::{BusKind, Config};
use crate::delivering::Delivery;
use crate::pipeline::{self, ReplayBound, StateLock};
use crate::preflight;
use anyhow::{anyhow, Result};
use chrono::{DateTime, NaiveDate, Utc};
use esg_assembler::{Assembler, Clock, Progress, RunReport};
use esg_bus::embedded::EmbeddedLog;
use esg_bus::runs::{RunBook, RunFacts};
use esg_bus::EventBus;
use esg_producer::{Producer, ProducerError, RunRequest};
use esg_schemas::{RunCompleted, RunKind, RunOutcome, RunSealed};
use esg_scorer::api::EsgApiClient;
use esg_scorer::Scorer;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A command refused or cut short for a reason that is not a failure of the run: each has its
/// own exit code (see the README's table).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The command cannot be carried out as given; the message says what to run instead.
    #[error("{0}")]
    Usage(String),
    /// Another process holds the state directory.
    #[error("{0}")]
    LockHeld(String),
    /// A signal asked the command to stop; running it again resumes.
    #[error("{0}")]
    Stopped(String),
}

impl Refused {
    /// The process exit code: 2 usage, 4 stopped by a signal, 5 lock held.
    pub fn exit_code(&self) -> u8 {
        match self {
            Refused::Usage(_) => 2,
            Refused::Stopped(_) => 4,
            Refused::LockHeld(_) => 5,
        }
    }
}

/// How long the runner waits for `RunCompleted` past the run's deadline before it says the
/// assembler is not answering (the assembler ends every run at its deadline).
const COMPLETION_GRACE: Duration = Duration::from_secs(300);

/// A daily run to start or resume.
#[derive(Debug, Clone, Copy)]
pub struct DailyRequest {
    pub business_date: NaiveDate,
    /// Score every active account (`--full`).
    pub full: bool,
    /// A person has checked a collapsed listing and accepts it (`--accept-roster-change`).
    pub accept_roster_change: bool,
}

/// Which accounts a re-run scores.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These ids (trimmed; duplicates and empty entries dropped).
    Accounts(Vec<String>),
    /// Every account of the day whose row is not `Successful` (`--failed`).
    NotSuccessful,
}

/// What one run came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: String,
    pub business_date: NaiveDate,
    /// The producer's seal (`None` when nothing was published: the date was done already).
    pub sealed: Option<RunSealed>,
    /// The assembler's last word (`None` when the command did not wait for it).
    pub completed: Option<RunCompleted>,
    /// The files, when this process wrote them (the embedded log).
    pub report: Option<RunReport>,
    /// The date's run had completed before: nothing was run this time.
    pub already_completed: bool,
}

impl Outcome {
    /// The exit code of a command that ran this: 0, 3 when the deadline came first, 1 when the
    /// run was aborted; 0 when the date was done before (nothing ran this time).
    pub fn exit_code(&self) -> u8 {
        if self.already_completed {
            return 0;
        }
        match self.completed.as_ref().map(|c| c.outcome) {
            Some(RunOutcome::TimedOut) => 3,
            Some(RunOutcome::Aborted) => 1,
            _ => 0,
        }
    }
}

/// The stages that run in this process on the embedded log.
struct Local {
    bus: EventBus,
    assembler: Arc<Assembler>,
    api: Arc<EsgApiClient>,
}

/// Everything a run needs, built once from the configuration.
pub struct Runner {
    pub config: Config,
    pub bus: EventBus,
    log: Option<EmbeddedLog>,
    producer: Producer,
    local: Option<Local>,
    alerts: Arc<Alerts>,
    /// The audit trail.
    audit: Arc<Audit>,
    /// `[[delivery]]` targets; `None` when there are none.
    delivery: Option<Arc<Delivery>>,
    _locks: Vec<StateLock>,
}

impl Runner {
    /// Takes the state locks, opens the bus and the stores, builds the clients. On the embedded
    /// log the scorer and the assembler will run here; on Kafka they are other processes.
    pub async fn open(config: Config, clock: Clock) -> Result<Self> {
        let embedded = config.bus.kind == BusKind::Embedded;
        let mut locks = vec![StateLock::acquire(&config, "producer")?];
        if embedded {
            locks.push(StateLock::acquire(&config, "esg")?);
            locks.push(StateLock::acquire(&config, "assembler")?);
        }
        let (bus, log) = pipeline::connect_bus(&config).await?;
        let producer = pipeline::producer(&config, &bus)?;
        let alerts = Arc::new(Alerts::new(&config)?);
        let audit = Audit::new(&config);
        let delivery = Delivery::new(&config, alerts.clone(), audit.clone())?;
        let local = if embedded {
            let assembler =
                pipeline::assembler(&config, &bus, clock)?.with_run_end_hook(alerts.run_end_hook(
                    bus.clone(),
                    audit.clone(),
                    protection(&config)?,
                    delivery.clone(),
                ));
            Some(Local {
                bus: bus.clone(),
                assembler: Arc::new(assembler),
                api: pipeline::api_client(&config)?,
            })
        } else {
            None
        };
        Ok(Runner {
            config,
            bus,
            log,
            producer,
            local,
            alerts,
            audit,
            delivery,
            _locks: locks,
        })
    }

    /// The business date of "today" in the configured time zone.
    pub fn today(&self) -> NaiveDate {
        pipeline::today(&self.config)
    }

    /// The job's alerts.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The daily run of `business_date` with default options, waiting for its files.
    pub async fn run_daily(
        &self,
        business_date: NaiveDate,
        full: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let request = DailyRequest {
            business_date,
            full,
            accept_roster_change: false,
        };
        self.daily(request, true, shutdown, progress).await
    }

    /// The daily run of a date: resumes the date's open daily run, or starts the next one, or
    /// says the date is done. `--full` on a date completed without it starts a new run of the
    /// date that replaces its files; `--full` (or not) against an open run of the other kind is
    /// refused with the command to use. With `wait`, waits for the run's files.
    pub async fn daily(
        &self,
        request: DailyRequest,
        wait: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let date = request.business_date;
        let book = RunBook::read(&self.bus).await?;
        let min_active_ratio =
            (!request.accept_roster_change).then_some(self.config.accounts.min_active_ratio);
        if let Some(open) = book.latest_daily(date).filter(|r| r.completed.is_none()) {
            if open.full != request.full {
                let flag = |full: bool| if full { " --full" } else { "" };
                return Err(Refused::Usage(format!(
                    "run {} of {date} is under way{}; resume it first with `esg run --once --business-date {date}{}`, then `esg run --once --business-date {date}{}` starts a new run of the date",
                    open.run_id,
                    if open.full { " with --full" } else { " without --full" },
                    flag(open.full),
                    flag(request.full),
                ))
                .into());
            }
            let req = RunRequest {
                run_id: open.run_id.clone(),
                business_date: open.business_date,
                kind: RunKind::Daily,
                full: open.full,
                deadline: open.deadline,
                forced: Vec::new(),
                min_active_ratio,
            };
            let sealed = open.sealed.clone();
            return self.execute(req, sealed, wait, shutdown, progress).await;
        }
        if let Some(done) = book.delivered_daily(date) {
            if done.full || !request.full {
                self.finish_delivery(date, &shutdown).await;
                return Ok(already(done));
            }
        }
        let req = RunRequest {
            run_id: book.next_run_id(date),
            business_date: date,
            kind: RunKind::Daily,
            full: request.full,
            deadline: self.config.deadline_for(date, Utc::now()),
            forced: Vec::new(),
            min_active_ratio,
        };
        self.execute(req, None, wait, shutdown, progress).await
    }

    /// A date whose files were written before: sends what some target has not taken yet (the
    /// process was stopped while it delivered, say). On the embedded log only, where the files
    /// are this host's; on Kafka `esg assembler` does it when it starts.
    async fn finish_delivery(&self, date: NaiveDate, shutdown: &CancellationToken) {
        let (Some(delivery), Some(_)) = (&self.delivery, &self.local) else {
            return;
        };
        delivery.stop_with(shutdown);
        delivery.finish(date).await;
    }

    /// The manual override: re-scores the selected accounts and replaces their rows in the
    /// date's file. The accounts are checked before a run is created: an unknown id creates
    /// nothing and is refused (exit 2) with every unknown id listed.
    pub async fn rerun(
        &self,
        business_date: NaiveDate,
        selection: Selection,
        wait: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let book = RunBook::read(&self.bus).await?;
        if book.delivered_daily(business_date).is_none() {
            return Err(Refused::Usage(format!(
                "there is no file of {business_date} to re-run accounts in: its daily run has not delivered one; run the day first (`esg run --once --business-date {business_date}`)"
            ))
            .into());
        }
        let accounts = match selection {
            Selection::Accounts(ids) => {
                let mut ids: Vec<String> = ids
                    .iter()
                    .map(|id| id.trim().to_owned())
                    .filter(|id| !id.is_empty())
                    .collect();
                ids.sort();
                ids.dedup();
                if ids.is_empty() {
                    return Err(Refused::Usage("no account ids given".into()).into());
                }
                let unknown = self.producer.unknown_accounts(&ids).await?;
                if !unknown.is_empty() {
                    return Err(Refused::Usage(format!(
                        "{} of the {} accounts are not active accounts of the roster, nothing was run: {}",
                        unknown.len(),
                        ids.len(),
                        unknown.join(",")
                    ))
                    .into());
                }
                ids
            }
            Selection::NotSuccessful => self.producer.not_successful().await?,
        };
        if accounts.is_empty() {
            return Err(Refused::Usage(format!(
                "every account of {business_date} is Successful: nothing to re-run"
            ))
            .into());
        }
        let req = self.rerun_request(&book, business_date, RunKind::Rerun, accounts)?;
        self.execute(req, None, wait, shutdown, progress).await
    }

    /// Re-runs the accounts whose events lie in `[from, to)` of the account-events topic, one
    /// re-run per business date found, events marked Replay.
    pub async fn replay(
        &self,
        partition: Option<i32>,
        from: ReplayBound,
        to: ReplayBound,
        wait: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Vec<Outcome>> {
        let progress = Arc::new(progress);
        let mut book = RunBook::read(&self.bus).await?;
        let by_date = pipeline::replay_accounts(&self.bus, &book, partition, from, to).await?;
        let mut outcomes = Vec::new();
        for (date, accounts) in by_date {
            if book.delivered_daily(date).is_none() {
                tracing::warn!(business_date = %date, accounts = accounts.len(),
                    "replay: the date has no delivered file; its accounts are not replayed");
                continue;
            }
            tracing::info!(business_date = %date, accounts = accounts.len(), "replaying");
            // The replay of the date before is a run of the topic now: the next id follows it.
            book.refresh(&self.bus).await?;
            let req = self.rerun_request(&book, date, RunKind::Replay, accounts)?;
            let progress = progress.clone();
            let progress = move |p: &Progress| progress(p);
            outcomes.push(
                self.execute(req, None, wait, shutdown.clone(), progress)
                    .await?,
            );
        }
        Ok(outcomes)
    }

    fn rerun_request(
        &self,
        book: &RunBook,
        business_date: NaiveDate,
        kind: RunKind,
        forced: Vec<String>,
    ) -> Result<RunRequest> {
        if self.config.encryption.is_some() {
            // Encrypted files are not read back (the job holds no private key): a re-run
            // rebuilds the day's files from the state, which holds the latest day's rows only.
            let latest = book.latest_completed_daily();
            if !latest.is_some_and(|r| r.business_date == business_date && r.delivered()) {
                let latest = latest
                    .map(|r| r.business_date.to_string())
                    .unwrap_or_else(|| "none".into());
                return Err(Refused::Usage(format!(
                    "the files of {business_date} are encrypted and cannot be read back, so a re-run rebuilds them from the job's state, which holds the rows of the latest day only (latest daily run: {latest}); re-run accounts of that day, or run {business_date} again whole (`esg run --once --full --business-date {business_date}`)"
                ))
                .into());
            }
        }
        Ok(RunRequest {
            run_id: book.next_run_id(business_date),
            business_date,
            kind,
            full: false,
            deadline: Utc::now() + chrono::Duration::from_std(self.config.run.max_duration)?,
            forced,
            min_active_ratio: None,
        })
    }

    /// The pre-flight of this process's part of a run.
    pub async fn preflight(&self) -> Result<preflight::Report> {
        let expected_rows = self.producer.roster_size().await?;
        Ok(preflight::run(
            &self.config,
            &preflight::Scope {
                output: self.local.is_some(),
                expected_rows,
            },
        )
        .await)
    }

    /// Runs `req` to its end; a failure that is not a refusal or a stop raises the critical
    /// alert. `sealed_before`: the seal of a run being resumed, when the triggers topic holds
    /// one (the producer's part is done, and the pre-flight is not run again).
    async fn execute(
        &self,
        req: RunRequest,
        sealed_before: Option<RunSealed>,
        wait: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let (run_id, date) = (req.run_id.clone(), req.business_date);
        if let Some(d) = &self.delivery {
            d.stop_with(&shutdown);
        }
        self.audit.run_started(&self.config, &run_id, date);
        // Retention first: what the policy says is too old goes before a new day is added.
        crate::retention::purge(
            &self.config,
            pipeline::today(&self.config),
            false,
            &self.alerts,
            &self.audit,
            self.delivery.as_deref(),
        )
        .await;
        let span = tracing::info_span!("run", run_id = %run_id);
        let result = tracing::Instrument::instrument(
            self.execute_inner(req, sealed_before, wait, shutdown.clone(), progress),
            span,
        )
        .await;
        if let Err(e) = &result {
            if e.downcast_ref::<Refused>().is_none() && !shutdown.is_cancelled() {
                tracing::error!(run_id = %run_id, error = %format!("{e:#}"), "run ended on a critical error");
                self.alerts.critical_error(&run_id, date, e).await;
            }
        }
        result
    }

    async fn execute_inner(
        &self,
        req: RunRequest,
        sealed_before: Option<RunSealed>,
        wait: bool,
        shutdown: CancellationToken,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Result<Outcome> {
        let run_id = req.run_id.clone();
        if sealed_before.is_none() {
            let report = self.preflight().await?;
            let report = report.into_result()?;
            tracing::info!(checks = report.checks.len(), "pre-flight passed");
            let warnings: Vec<(String, String)> = report
                .warnings()
                .map(|c| (c.name.clone(), c.detail.clone()))
                .collect();
            if let (Some(delivery), false) = (&self.delivery, warnings.is_empty()) {
                for (name, detail) in &warnings {
                    tracing::warn!(check = %name, detail = %detail, "pre-flight: a delivery target is not reachable; the run goes on, the files will be delivered when it is");
                }
                delivery
                    .preflight_failed(&run_id, req.business_date, &warnings)
                    .await;
            }
        }
        if let Some(log) = &self.log {
            // Housekeeping of the embedded log before the day starts: retention and compaction
            // (Kafka's brokers do their own).
            let maintained = log.maintain(self.config.bus.tombstone_retention).await?;
            tracing::debug!(
                expired = maintained.expired,
                compacted = maintained.compacted,
                "log maintained"
            );
        }
        let stages = self
            .local
            .as_ref()
            .map(|l| LocalTasks::start(l, &self.config, &shutdown, &run_id, progress));

        let work = async {
            let sealed = match sealed_before {
                Some(s) => Some(s),
                None => match self.producer.run(&req, &shutdown).await {
                    Ok(s) => Some(s),
                    Err(ProducerError::Cancelled) => {
                        return Err(Refused::Stopped(format!(
                            "stopped before run {run_id} was published; run the same command again to resume"
                        ))
                        .into())
                    }
                    // A listing the deadline cut short: the assembler ends the run TimedOut at
                    // its deadline, with no file; wait for that.
                    Err(e @ ProducerError::ListingDeadline(_)) => {
                        tracing::error!(error = %e, "the run was not published by its deadline");
                        None
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!("producer of run {run_id}")))
                    }
                },
            };
            if let Some(s) = &sealed {
                tracing::info!(
                    expected = s.expected_accounts,
                    active = s.active_accounts,
                    "run published"
                );
            }
            if !wait && sealed.is_some() {
                return Ok((sealed, None));
            }
            let completed = wait_completed(&self.bus, &run_id, req.deadline, &shutdown).await?;
            Ok((sealed, Some(completed)))
        };
        let result = match stages {
            Some(mut tasks) => {
                let r = tokio::select! {
                    r = work => r,
                    e = tasks.failed() => Err(e),
                };
                let report = tasks.stop(&run_id).await;
                r.map(|(sealed, completed)| (sealed, completed, report))
            }
            None => work.await.map(|(s, c)| (s, c, None)),
        };
        let (sealed, completed, report) = match result {
            Ok(done) => done,
            // A stage that stopped because a signal asked it to: the run is resumable.
            Err(e) if shutdown.is_cancelled() && e.downcast_ref::<Refused>().is_none() => {
                tracing::info!(error = %format!("{e:#}"), "stopped by a signal");
                return Err(Refused::Stopped(format!(
                    "stopped before run {run_id} completed; run the same command again to resume"
                ))
                .into());
            }
            Err(e) => return Err(e),
        };
        Ok(Outcome {
            run_id,
            business_date: req.business_date,
            sealed,
            completed,
            report,
            already_completed: false,
        })
    }
}

fn already(done: &RunFacts) -> Outcome {
    Outcome {
        run_id: done.run_id.clone(),
        business_date: done.business_date,
        sealed: done.sealed.clone(),
        completed: done.completed.clone(),
        report: None,
        already_completed: true,
    }
}

/// The scorer and the assembler as tasks of this process, for one run.
struct LocalTasks {
    stop: CancellationToken,
    scorer: Option<
        tokio::task::JoinHandle<Result<esg_scorer::ScorerStats, esg_scorer::worker::ScorerError>>,
    >,
    assembler:
        Option<tokio::task::JoinHandle<Result<Vec<RunReport>, esg_assembler::AssemblerError>>>,
    progress: tokio::task::JoinHandle<()>,
    reports: Vec<RunReport>,
}

impl LocalTasks {
    fn start(
        local: &Local,
        config: &Config,
        shutdown: &CancellationToken,
        run_id: &str,
        progress: impl Fn(&Progress) + Send + Sync + 'static,
    ) -> Self {
        let stop = shutdown.child_token();
        let scorer = Scorer::new(
            local.bus.clone(),
            local.api.clone(),
            config.scorer.clone(),
            config.esg_api.max_in_flight,
        );
        let scorer = tokio::spawn(scorer.run(stop.clone()));
        let assembler = {
            let (a, stop, id) = (local.assembler.clone(), stop.clone(), run_id.to_owned());
            tokio::spawn(async move { a.run(stop, Some(id)).await })
        };
        let progress = {
            let (a, stop, id) = (local.assembler.clone(), stop.clone(), run_id.to_owned());
            tokio::spawn(async move {
                loop {
                    if let Ok(p) = a.progress(&id).await {
                        progress(&p);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            })
        };
        LocalTasks {
            stop,
            scorer: Some(scorer),
            assembler: Some(assembler),
            progress,
            reports: Vec::new(),
        }
    }

    /// Resolves when the scorer or the assembler stops on an error (a breaker, a full disk, the
    /// bus failing) or before the run completed; pending otherwise.
    async fn failed(&mut self) -> anyhow::Error {
        let (Some(scorer), Some(assembler)) = (&mut self.scorer, &mut self.assembler) else {
            return std::future::pending().await;
        };
        tokio::select! {
            r = scorer => {
                self.scorer = None;
                match r {
                    Ok(Ok(_)) => anyhow!("the scorer stopped before the run completed"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("scorer"),
                    Err(e) => anyhow!("scorer task failed: {e}"),
                }
            }
            r = assembler => {
                self.assembler = None;
                match r {
                    // The run completed: `wait_completed` sees it next.
                    Ok(Ok(reports)) => {
                        self.reports = reports;
                        std::future::pending().await
                    }
                    Ok(Err(e)) => anyhow::Error::new(e).context("assembler"),
                    Err(e) => anyhow!("assembler task failed: {e}"),
                }
            }
        }
    }

    /// Stops both tasks (the scorer lets in-flight calls finish) and returns the run's report.
    async fn stop(mut self, run_id: &str) -> Option<RunReport> {
        self.stop.cancel();
        let _ = self.progress.await;
        if let Some(a) = self.assembler.take() {
            match a.await {
                Ok(Ok(reports)) => self.reports.extend(reports),
                Ok(Err(e)) => tracing::error!(error = %e, "assembler failed"),
                Err(e) => tracing::error!(error = %e, "assembler task failed"),
            }
        }
        if let Some(s) = self.scorer.take() {
            match s.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "scorer failed"),
                Err(e) => tracing::error!(error = %e, "scorer task failed"),
            }
        }
        self.reports.into_iter().find(|r| r.run_id == run_id)
    }
}

/// Waits until the assembler announces `run_id` completed on the triggers topic. The assembler
/// ends every run at its deadline, so a run not completed by then plus a grace period means
/// no assembler is running.
pub async fn wait_completed(
    bus: &EventBus,
    run_id: &str,
    deadline: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> Result<RunCompleted> {
    let give_up = deadline + chrono::Duration::from_std(COMPLETION_GRACE)?;
    let mut book = RunBook::new();
    loop {
        book.refresh(bus).await?;
        if let Some(done) = book.get(run_id).and_then(|r| r.completed.clone()) {
            return Ok(done);
        }
        if Utc::now() > give_up {
            anyhow::bail!(
                "run {run_id} did not complete by its deadline {deadline} plus {}: check that the assembler is running (`esg assembler` on Kafka)",
                humantime_serde::re::humantime::format_duration(COMPLETION_GRACE)
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                return Err(Refused::Stopped(format!(
                    "stopped while waiting for run {run_id}; run the same command again to resume"
                ))
                .into())
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// True when a `DailyTrigger` of a daily run of `date` is on the triggers topic (its run was
/// started).
pub async fn run_triggered(bus: &EventBus, date: NaiveDate) -> Result<bool> {
    Ok(RunBook::read(bus).await?.latest_daily(date).is_some())
}

/// Refuses (exit 2) a command that exists for Kafka mode only, saying what to run instead on
/// the embedded log.
pub fn kafka_only(config: &Config, command: &str, instead: &str) -> Result<()> {
    if config.bus.kind == BusKind::Kafka {
        return Ok(());
    }
    Err(Refused::Usage(format!(
        "`{command}` runs on Kafka (bus.kind = \"kafka\"); with the embedded log, {instead}"
    ))
    .into())
}

/// One scorer of the group (`esg scorer` on Kafka): scores until `shutdown`. A scorer that stops
/// on an error (the breaker, the bus) raises the critical alert.
pub async fn scorer_service(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<esg_scorer::ScorerStats> {
    kafka_only(config, "esg scorer", "`esg run` runs the scorer in-process")?;
    let (bus, _) = pipeline::connect_bus(config).await?;
    let api = pipeline::api_client(config)?;
    let scorer = Scorer::new(
        bus.clone(),
        api,
        config.scorer.clone(),
        config.esg_api.max_in_flight,
    );
    match scorer.run(shutdown.clone()).await {
        Ok(stats) => Ok(stats),
        Err(e) => {
            let e = anyhow::Error::new(e).context("scorer");
            if !shutdown.is_cancelled() {
                let open = RunBook::read(&bus)
                    .await
                    .ok()
                    .and_then(|b| b.open().last().map(|r| (r.run_id.clone(), r.business_date)));
                let (run_id, date) =
                    open.unwrap_or_else(|| ("scorer".into(), pipeline::today(config)));
                Alerts::new(config)?.critical_error(&run_id, date, &e).await;
            }
            Err(e)
        }
    }
}

/// The assembler alone (`esg assembler` on Kafka): materialises scores and writes each run's
/// files when it completes or at its deadline, raising the run-end alerts, until `shutdown`.
pub async fn assembler_service(
    config: &Config,
    clock: Clock,
    shutdown: CancellationToken,
    after_lock: impl FnOnce() -> Result<()>,
) -> Result<Vec<RunReport>> {
    kafka_only(
        config,
        "esg assembler",
        "`esg run` runs the assembler in-process",
    )?;
    let _lock = StateLock::acquire(config, "assembler")?;
    after_lock()?;
    let (bus, _) = pipeline::connect_bus(config).await?;
    let alerts = Arc::new(Alerts::new(config)?);
    // A service: retries of a target go on beside the next runs' assembly.
    let audit = Audit::new(config);
    let delivery =
        Delivery::new(config, alerts.clone(), audit.clone())?.map(Delivery::in_background);
    if let Some(d) = &delivery {
        d.stop_with(&shutdown);
    }
    if let Some(d) = &delivery {
        // A delivery cut short by a restart (kill, crash, deploy): the latest day's files that
        // some target lacks go out now, beside the service.
        if let Some(date) = RunBook::read(&bus)
            .await?
            .latest_completed_daily()
            .map(|r| r.business_date)
        {
            let d = d.clone();
            tokio::spawn(async move { d.finish(date).await });
        }
    }
    let assembler = pipeline::assembler(config, &bus, clock)?
        .with_run_end_hook(alerts.run_end_hook(bus.clone(), audit, protection(config)?, delivery));
    match assembler.run(shutdown.clone(), None).await {
        Ok(reports) => Ok(reports),
        Err(e) => {
            let e = anyhow::Error::new(e).context("assembler");
            if !shutdown.is_cancelled() {
                alerts
                    .critical_error("assembler", pipeline::today(config), &e)
                    .await;
            }
            Err(e)
        }
    }
}

/// `esg deliver`: sends the files of `business_date` to every `[[delivery]]` target (or the one
/// named `only`) again, retrying a failed target for `retry_for`.
pub async fn deliver(
    config: &Config,
    business_date: NaiveDate,
    only: Option<&str>,
    retry_for: Duration,
    shutdown: &CancellationToken,
) -> Result<esg_delivery::Report> {
    let alerts = Arc::new(Alerts::new(config)?);
    let Some(delivery) = Delivery::new(config, alerts, Audit::new(config))? else {
        return Err(Refused::Usage(
            "there is no [[delivery]] target in the configuration: nothing to deliver to".into(),
        )
        .into());
    };
    delivery.stop_with(shutdown);
    let deadline = Utc::now()
        + chrono::Duration::from_std(retry_for).unwrap_or_else(|_| chrono::Duration::minutes(10));
    delivery.deliver_date(business_date, only, deadline).await
}

/// The outputs' protection of `config` (checked when it was loaded).
fn protection(config: &Config) -> Result<esg_assembler::encryption::Protection> {
    config
        .protection()
        .map_err(|(key, message)| anyhow!("key `{key}`: {message}"))
}

/// `esg purge`: removes (or, `dry_run`, lists) what `[retention]` says is too old, locally and
/// on every delivery target.
pub async fn purge(config: &Config, dry_run: bool) -> Result<crate::retention::Purged> {
    if config.retention.is_empty() {
        return Err(Refused::Usage(
            "there is no [retention] policy (files, logs, audit, history, departed) in the configuration: nothing is ever purged".into(),
        )
        .into());
    }
    let alerts = Arc::new(Alerts::new(config)?);
    let audit = Audit::new(config);
    let delivery = Delivery::new(config, alerts.clone(), audit.clone())?;
    Ok(crate::retention::purge(
        config,
        pipeline::today(config),
        dry_run,
        &alerts,
        &audit,
        delivery.as_deref(),
    )
    .await)
}

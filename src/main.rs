//! `esg`: the daily ESG ratings job.

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use esg::alerting::Alerts;
use esg::config::BusKind;
use esg::config::{self, Config};
use esg::pipeline::{self, Outcome, Pipeline, ProducerService, ReplayBound};
use esg_assembler::Progress;
use esg_schemas::{RunKind, RunOutcome, RunSealed};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rates every active account of the firm through the vendor's ESG Portfolio Analysis API and
/// writes FirmESGRatings_YYYYMMDD.csv, its errors file and a summary.
///
/// Start with `esg demo`: it runs a whole business day against the built-in simulator of the
/// firm's account system and the vendor API, with nothing to configure.
#[derive(Parser)]
#[command(name = "esg", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one full business day against the simulator, then show where the files are.
    Demo(DemoArgs),
    /// Run the daily job (today's business date in the configured time zone).
    ///
    /// Without --once: long-running, a run every day at `[schedule] at` in `[schedule]
    /// time_zone` (05:00 America/Chicago), correct across daylight-saving changes; started after
    /// today's time it resumes (or first starts) today's run. With --once: one run now, resuming
    /// it if it was started before and stopped (killed, crashed); a run that already completed is
    /// not run again. Exit code 0 when the file was
    /// written, 3 when the deadline came first (the file is written, pending accounts Failed),
    /// 1 on any error, 2 on a configuration error.
    Run(RunArgs),
    /// Re-score chosen accounts and replace their rows in that day's file (manual override).
    ///
    /// On the embedded log this runs the whole re-run here. On Kafka it publishes the re-run for
    /// the running scorers and assembler and waits until the assembler has written the file.
    Rerun(RerunArgs),
    /// Re-run the accounts of a range of the account-events topic through the scorers (after an
    /// outage of the vendor API, say) and replace their rows in their day's file.
    ///
    /// The range is [--from, --to): offsets of one partition (with --partition), or times
    /// (RFC 3339) over every partition. Each business date found in the range becomes one
    /// re-run of that date, its events marked Replay. Example, the first hour of a run:
    ///
    ///   esg replay -c esg.toml --topic account-events
    ///     --from 2026-11-23T05:00:00-06:00 --to 2026-11-23T06:00:00-06:00
    Replay(ReplayArgs),
    /// Kafka mode: publish today's daily run (trigger, account events, seal) and exit.
    ///
    /// The scorers and the assembler, running as services, score it and write the file. Run it
    /// at 05:00 America/Chicago from the scheduler (systemd timer, Kubernetes CronJob); run again
    /// after a failure, it resumes the same run. With --wait it also waits for the file.
    Producer(ProducerArgs),
    /// Kafka mode: one scorer of the consumer group; runs until SIGTERM. Start as many as the
    /// API quota and the partitions allow: they share the partitions and the tenant rate limit.
    Scorer(ServiceArgs),
    /// Kafka mode: the assembler; runs until SIGTERM, writing each run's files when it
    /// completes or at its deadline.
    Assembler(ServiceArgs),
    /// Serve the simulator of the account system and the ESG API (for trials and tests).
    Simulator(SimulatorArgs),
    /// Check a configuration file and print it with secrets hidden.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short, env = "ESG_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The TOML configuration file (see README, "Configuration").
    #[arg(long, short, env = "ESG_CONFIG")]
    config: PathBuf,
    /// Run once now and exit. Without it, `esg run` stays up and runs every business date at
    /// `[schedule] at` (05:00 America/Chicago by default), resuming today's run if it was started.
    #[arg(long)]
    once: bool,
    /// Business date to run (YYYY-MM-DD); default today in the configured time zone.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Score every active account, not only those that changed.
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
struct RerunArgs {
    /// The TOML configuration file.
    #[arg(long, short, env = "ESG_CONFIG")]
    config: PathBuf,
    /// Accounts to re-score, comma separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "ID,ID,...")]
    accounts: Vec<String>,
    /// Whose file to update (YYYY-MM-DD); default today in the configured time zone.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Kafka mode: publish and exit without waiting for the file.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// The TOML configuration file.
    #[arg(long, short, env = "ESG_CONFIG")]
    config: PathBuf,
    /// The topic to replay (only account-events can be replayed; the configured prefix is
    /// added).
    #[arg(long, default_value = "account-events")]
    topic: String,
    /// Start of the range (inclusive): an offset, or an RFC 3339 time.
    #[arg(long, value_name = "OFFSET|TIME")]
    from: ReplayBound,
    /// End of the range (exclusive): an offset, or an RFC 3339 time.
    #[arg(long, value_name = "OFFSET|TIME")]
    to: ReplayBound,
    /// Only this partition (needed when --from/--to are offsets).
    #[arg(long)]
    partition: Option<i32>,
    /// Kafka mode: publish and exit without waiting for the file.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args)]
struct ProducerArgs {
    /// The TOML configuration file.
    #[arg(long, short, env = "ESG_CONFIG")]
    config: PathBuf,
    /// Business date to run (YYYY-MM-DD); default today in the configured time zone.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Score every active account, not only those that changed.
    #[arg(long)]
    full: bool,
    /// Wait until the assembler has written the run's file (exit code as `esg run --once`).
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct ServiceArgs {
    /// The TOML configuration file.
    #[arg(long, short, env = "ESG_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// Accounts in the simulated account system.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Directory for the demo's configuration, state and output (emptied first).
    #[arg(long, default_value = "esg-demo")]
    dir: PathBuf,
    /// The simulated vendor's rate limit (requests/s); the job is configured to use all of it.
    #[arg(long, default_value_t = 200)]
    rate_limit: u32,
    /// Latency of each simulated API call, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// API calls in flight at once.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Seed of the simulated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of API calls that fail transiently (retried).
    #[arg(long, default_value_t = 0.02)]
    transient_error_rate: f64,
    /// Share of accounts the vendor cannot analyse (404/422, Failed in the file).
    #[arg(long, default_value_t = 0.005)]
    permanent_error_rate: f64,
    /// Share of accounts with a missing pillar or focus (Partial in the file).
    #[arg(long, default_value_t = 0.01)]
    partial_rate: f64,
    /// Business date to run; default today (America/Chicago).
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Lift the simulated vendor's rate limit (for throughput benchmarks).
    #[arg(long)]
    unlimited: bool,
    /// Do not count calls per account in the simulator (memory benchmarks at a million accounts).
    #[arg(long)]
    no_call_tracking: bool,
}

#[derive(Args)]
struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Simulator settings as TOML (keys of the simulator's SimConfig); flags below override.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accounts in the simulated account system.
    #[arg(long)]
    accounts: Option<u64>,
    /// Seed of the simulated data.
    #[arg(long)]
    seed: Option<u64>,
    /// Rate limit of the simulated vendor API (requests/s); 0 lifts it.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Latency of each API call in milliseconds.
    #[arg(long)]
    latency_ms: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // State stores and the embedded log serialise on one connection each, so more blocking
    // threads than this only wait on a mutex (and cost memory).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let is_config = e.downcast_ref::<config::ConfigError>().is_some();
            ExitCode::from(if is_config { 2 } else { 1 })
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Run(args) => {
            let config = Config::load(&args.config)?;
            let _log = esg::telemetry::init(&config.log);
            esg::telemetry::serve_metrics(&config.metrics)?;
            let shutdown = shutdown_on_signal();
            if !args.once {
                return scheduled(config, args.full, shutdown).await;
            }
            let pipeline = Pipeline::open(config, esg_assembler::system_clock()).await?;
            let alerts = Alerts::new(&pipeline.config)?;
            let date = args.business_date.unwrap_or_else(|| pipeline.today());
            let deadline = pipeline.config.deadline_for(date, chrono::Utc::now());
            let bar = progress_bar(&format!("run {date}"));
            let outcome = pipeline
                .run_daily(date, args.full, shutdown.clone(), progress_fn(bar.clone()))
                .await;
            bar.finish_and_clear();
            alert_on(&alerts, date, deadline, &outcome, &shutdown).await;
            report(&pipeline, outcome?)
        }
        Command::Rerun(args) => {
            let config = Config::load(&args.config)?;
            let _log = esg::telemetry::init(&config.log);
            esg::telemetry::serve_metrics(&config.metrics)?;
            let shutdown = shutdown_on_signal();
            if config.bus.kind == BusKind::Kafka {
                let service = ProducerService::open(config).await?;
                let date = args.business_date.unwrap_or_else(|| service.today());
                let sealed = service
                    .rerun(date, RunKind::Rerun, args.accounts, &shutdown)
                    .await?;
                return published(&service, sealed, !args.no_wait, &shutdown).await;
            }
            let pipeline = Pipeline::open(config, esg_assembler::system_clock()).await?;
            let date = args.business_date.unwrap_or_else(|| pipeline.today());
            let bar = progress_bar(&format!("re-run {date}"));
            let outcome = pipeline
                .rerun(
                    date,
                    RunKind::Rerun,
                    args.accounts,
                    shutdown,
                    progress_fn(bar.clone()),
                )
                .await;
            bar.finish_and_clear();
            report(&pipeline, outcome?)
        }
        Command::Replay(args) => replay(args).await,
        Command::Producer(args) => {
            let config = Config::load(&args.config)?;
            let _log = esg::telemetry::init(&config.log);
            esg::telemetry::serve_metrics(&config.metrics)?;
            if config.bus.kind != BusKind::Kafka {
                bail!("`esg producer` runs on Kafka (bus.kind = \"kafka\"); with the embedded log, `esg run --once` runs the whole day");
            }
            let shutdown = shutdown_on_signal();
            let service = ProducerService::open(config).await?;
            let date = args.business_date.unwrap_or_else(|| service.today());
            let sealed = match service.daily(date, args.full, &shutdown).await {
                Ok(sealed) => sealed,
                Err(e) => {
                    if !shutdown.is_cancelled() {
                        Alerts::new(&service.config)?
                            .critical_error(&date.to_string(), date, &e)
                            .await;
                    }
                    return Err(e);
                }
            };
            published(&service, sealed, args.wait, &shutdown).await
        }
        Command::Scorer(args) => {
            let config = Config::load(&args.config)?;
            let _log = esg::telemetry::init(&config.log);
            esg::telemetry::serve_metrics(&config.metrics)?;
            let shutdown = shutdown_on_signal();
            let stats = pipeline::scorer_service(&config, shutdown).await?;
            println!(
                "scorer stopped: {} events, {} scored ({} successful, {} partial, {} failed)",
                stats.events, stats.scored, stats.successful, stats.partial, stats.failed
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Assembler(args) => {
            let config = Config::load(&args.config)?;
            let _log = esg::telemetry::init(&config.log);
            esg::telemetry::serve_metrics(&config.metrics)?;
            let shutdown = shutdown_on_signal();
            let reports =
                pipeline::assembler_service(&config, esg_assembler::system_clock(), shutdown)
                    .await?;
            println!("assembler stopped after writing {} run(s)", reports.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulator(args) => simulator(args).await,
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            println!("{config:#?}");
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `esg run` without `--once`: a run of every business date at the scheduled time, until a
/// signal. One process, the pipeline opened once.
async fn scheduled(config: Config, full: bool, shutdown: CancellationToken) -> Result<ExitCode> {
    let schedule = config
        .schedule()
        .map_err(|(key, m)| anyhow::anyhow!("{key}: {m}"))?;
    let pipeline = Pipeline::open(config, esg_assembler::system_clock()).await?;
    let (next_date, next_at) = schedule.next_after(chrono::Utc::now());
    tracing::info!(at = %schedule.at, time_zone = %schedule.tz, next_business_date = %next_date, next_run_at = %next_at,
        "scheduled: a run every day");
    let alerts = Alerts::new(&pipeline.config)?;
    let grace = chrono::Duration::from_std(alerts.config().missed_start_grace)?;
    let (pipeline, alerts) = (&pipeline, &alerts);
    let stop = shutdown.clone();
    esg::schedule::run_daily(
        schedule,
        chrono::Utc::now,
        tokio::time::sleep,
        Duration::from_secs(60),
        shutdown,
        move |date| {
            let stop = stop.clone();
            async move {
                let start_by = schedule.fire_time(date) + grace;
                if chrono::Utc::now() > start_by
                    && !pipeline::run_triggered(&pipeline.bus, &date.to_string()).await?
                {
                    alerts.started_late(date, start_by).await;
                }
                let deadline = pipeline.config.deadline_for(date, chrono::Utc::now());
                let outcome = pipeline
                    .run_daily(date, full, stop.clone(), progress_fn(ProgressBar::hidden()))
                    .await;
                alert_on(alerts, date, deadline, &outcome, &stop).await;
                let outcome = outcome?;
                match &outcome.report {
                    Some(r) => tracing::info!(run_id = %r.run_id, outcome = %r.outcome, file = %r.csv.display(), "scheduled run ended"),
                    None => tracing::info!(run_id = %outcome.run_id, "run had already completed"),
                }
                Ok(())
            }
        },
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

/// The alerts a run's end calls for: a critical error (not a stop asked for by a signal), a
/// deadline that came first, too many failed accounts.
async fn alert_on(
    alerts: &Alerts,
    date: NaiveDate,
    deadline: chrono::DateTime<chrono::Utc>,
    outcome: &Result<Outcome>,
    shutdown: &CancellationToken,
) {
    match outcome {
        Err(e) if !shutdown.is_cancelled() => {
            alerts.critical_error(&date.to_string(), date, e).await
        }
        Err(_) => {}
        Ok(o) => {
            if let Some(r) = &o.report {
                alerts.run_written(r, Some(deadline)).await;
            }
        }
    }
}

/// After the producer published a run on Kafka: says so and, with `wait`, waits for the
/// assembler's `RunCompleted` (exit code 3 when the deadline came first).
async fn published(
    service: &ProducerService,
    sealed: RunSealed,
    wait: bool,
    shutdown: &CancellationToken,
) -> Result<ExitCode> {
    println!(
        "run {} published: {} accounts to score ({} active)",
        sealed.run_id, sealed.expected_accounts, sealed.active_accounts
    );
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let bar = ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_message(format!(
        "waiting for the assembler to complete run {}",
        sealed.run_id
    ));
    let done = pipeline::wait_completed(
        &service.bus,
        &sealed.run_id,
        shutdown,
        service.config.run.max_duration,
        |_| bar.tick(),
    )
    .await;
    bar.finish_and_clear();
    let alerts = Alerts::new(&service.config)?;
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            if !shutdown.is_cancelled() {
                let date = esg_schemas::business_date_of_run(&sealed.run_id).unwrap_or_default();
                alerts.critical_error(&sealed.run_id, date, &e).await;
            }
            return Err(e);
        }
    };
    alerts.run_completed(&done).await;
    println!(
        "run {} {}: {} rows, {} successful, {} partial, {} failed; file {}",
        done.run_id,
        done.outcome,
        done.rows,
        done.successful,
        done.partial,
        done.failed,
        done.output_file
    );
    Ok(if done.outcome == RunOutcome::TimedOut {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let _log = esg::telemetry::init(&config.log);
    esg::telemetry::serve_metrics(&config.metrics)?;
    let topic = args.topic.trim_start_matches(&config.bus.topic_prefix);
    if topic != "account-events" && topic != "esg.account-events" {
        bail!(
            "only the account-events topic can be replayed through the scorers, not {:?}",
            args.topic
        );
    }
    let shutdown = shutdown_on_signal();
    if config.bus.kind == BusKind::Kafka {
        let service = ProducerService::open(config).await?;
        let by_date =
            pipeline::replay_accounts(&service.bus, args.partition, args.from, args.to).await?;
        if by_date.is_empty() {
            println!("no account events in that range; nothing to replay");
            return Ok(ExitCode::SUCCESS);
        }
        let mut code = ExitCode::SUCCESS;
        for (date, accounts) in by_date {
            println!("replaying {} accounts of {date}", accounts.len());
            let sealed = service
                .rerun(date, RunKind::Replay, accounts, &shutdown)
                .await?;
            let c = published(&service, sealed, !args.no_wait, &shutdown).await?;
            if c != ExitCode::SUCCESS {
                code = c;
            }
        }
        return Ok(code);
    }
    let pipeline = Pipeline::open(config, esg_assembler::system_clock()).await?;
    let by_date =
        pipeline::replay_accounts(&pipeline.bus, args.partition, args.from, args.to).await?;
    if by_date.is_empty() {
        println!("no account events in that range; nothing to replay");
        return Ok(ExitCode::SUCCESS);
    }
    let mut code = ExitCode::SUCCESS;
    for (date, accounts) in by_date {
        println!("replaying {} accounts of {date}", accounts.len());
        let bar = progress_bar(&format!("replay {date}"));
        let outcome = pipeline
            .rerun(
                date,
                RunKind::Replay,
                accounts,
                shutdown.clone(),
                progress_fn(bar.clone()),
            )
            .await;
        bar.finish_and_clear();
        let c = report(&pipeline, outcome?)?;
        if c != ExitCode::SUCCESS {
            code = c;
        }
    }
    Ok(code)
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::warn!(
            "stop requested: finishing in-flight work; run the same command again to resume"
        );
        t.cancel();
    });
    token
}

fn progress_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} accounts scored ({percent}%, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_owned());
    bar
}

fn progress_fn(bar: ProgressBar) -> impl Fn(&Progress) + Send + Sync + 'static {
    let last_log = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    move |p: &Progress| {
        if let Some(n) = p.expected {
            bar.set_length(n);
        }
        bar.set_position(p.scored);
        if p.failed > 0 {
            bar.set_message(format!("{} failed", p.failed));
        }
        // Without a terminal, a log line every 10 s instead of a bar.
        if bar.is_hidden() {
            if let Ok(mut last) = last_log.lock() {
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = std::time::Instant::now();
                    tracing::info!(run_id = %p.run_id, scored = p.scored, expected = ?p.expected, failed = p.failed, "progress");
                }
            }
        }
    }
}

fn report(pipeline: &Pipeline, outcome: Outcome) -> Result<ExitCode> {
    let Some(report) = outcome.report else {
        println!(
            "run {} had already completed; its files are in {}",
            outcome.run_id,
            pipeline.config.output.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let s = &report.summary;
    println!("run {} {}", report.run_id, report.outcome);
    println!("  ratings file  {}", report.csv.display());
    println!("  errors file   {}", report.errors.display());
    println!("  summary       {}", report.summary_path.display());
    println!(
        "  accounts {}: {} successful, {} partial, {} failed (success rate {}%)",
        s.accounts, s.successful, s.partial, s.failed, s.success_rate_percent
    );
    println!(
        "  scored in this run {}, carried forward {}, new {}, gone {}, malformed records skipped {}",
        s.scored_in_run, s.carried_forward, s.new_accounts, s.gone_accounts, s.malformed_records
    );
    println!("  API calls {} in {} s", s.api_calls, s.duration_seconds);
    Ok(if report.outcome == RunOutcome::TimedOut {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn demo(args: DemoArgs) -> Result<ExitCode> {
    // The progress bar and the report tell the story; accounts that failed are in the errors
    // file. RUST_LOG=info shows the job's log.
    let _log = esg::telemetry::init_text("error");
    let dir = &args.dir;
    for sub in ["state", "out"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let sim_config = esg_simulator::SimConfig {
        seed: args.seed,
        accounts: args.accounts,
        latency: Duration::from_millis(args.latency_ms),
        rate_limit_per_second: (!args.unlimited).then_some(args.rate_limit),
        burst: args.rate_limit.max(1),
        transient_error_rate: args.transient_error_rate,
        permanent_error_rate: args.permanent_error_rate,
        partial_rate: args.partial_rate,
        track_calls: !args.no_call_tracking,
        ..Default::default()
    };
    let sim = esg_simulator::start(sim_config, "127.0.0.1:0".parse()?)
        .await
        .context("starting the simulator")?;
    let config_path = dir.join("esg.toml");
    let rate = if args.unlimited {
        1_000_000
    } else {
        args.rate_limit
    };
    let text = config::example(&sim.url(), &dir.join("out"), &dir.join("state"))
        .replace(
            "rate_limit_per_second = 50",
            &format!("rate_limit_per_second = {rate}"),
        )
        .replace(
            "max_in_flight = 64",
            &format!("max_in_flight = {}", args.max_in_flight),
        );
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    println!(
        "simulator at {} with {} accounts; configuration written to {}",
        sim.url(),
        args.accounts,
        config_path.display()
    );
    let shutdown = shutdown_on_signal();
    let pipeline = Pipeline::open(config, esg_assembler::system_clock()).await?;
    let date = args.business_date.unwrap_or_else(|| pipeline.today());
    let bar = progress_bar(&format!("demo {date}"));
    let started = std::time::Instant::now();
    let outcome = pipeline
        .run_daily(date, false, shutdown, progress_fn(bar.clone()))
        .await;
    bar.finish_and_clear();
    let outcome = outcome?;
    let elapsed = started.elapsed();
    let code = report(&pipeline, outcome)?;
    let stats = sim.stats();
    let rate = stats.esg_requests_per_second();
    let share = if args.unlimited {
        String::new()
    } else {
        format!(
            ", {:.1}% of the {}/s limit",
            100.0 * rate / f64::from(args.rate_limit.max(1)),
            args.rate_limit
        )
    };
    println!(
        "  wall time {:.1} s; simulator answered {} API requests at {rate:.0}/s while scoring{share}; {} rate limited (429)",
        elapsed.as_secs_f64(),
        stats.esg_requests,
        stats.rate_limited
    );
    print_peek(&pipeline.config.output.dir, date);
    sim.shutdown();
    Ok(code)
}

fn print_peek(dir: &Path, date: NaiveDate) {
    let path = dir.join(esg_assembler::output::file_names(date).csv);
    // Only the first lines: the file of a large firm is hundreds of megabytes.
    if let Ok(file) = std::fs::File::open(&path) {
        use std::io::BufRead;
        println!("\nfirst lines of {}:", path.display());
        for line in std::io::BufReader::new(file)
            .lines()
            .take(6)
            .map_while(Result::ok)
        {
            println!("  {line}");
        }
    }
}

async fn simulator(args: SimulatorArgs) -> Result<ExitCode> {
    let _log = esg::telemetry::init_text("info");
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<esg_simulator::SimConfig>(&text)
                .with_context(|| format!("simulator config {}", path.display()))?
        }
        None => esg_simulator::SimConfig::default(),
    };
    if let Some(n) = args.accounts {
        config.accounts = n;
    }
    if let Some(s) = args.seed {
        config.seed = s;
    }
    if let Some(r) = args.rate_limit {
        config.rate_limit_per_second = (r > 0).then_some(r);
    }
    if let Some(ms) = args.latency_ms {
        config.latency = Duration::from_millis(ms);
    }
    let sim = esg_simulator::start(config, args.listen)
        .await
        .context("starting the simulator")?;
    println!(
        "simulator listening on {} (token endpoint {})",
        sim.url(),
        sim.token_url()
    );
    let shutdown = shutdown_on_signal();
    shutdown.cancelled().await;
    sim.shutdown();
    Ok(ExitCode::SUCCESS)
}

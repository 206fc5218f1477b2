//! `esg`: the daily ESG ratings job. This file parses the command line, runs one start-up
//! prologue (configuration, logs, signals, state lock, then the metrics port) and dispatches
//! to the library: every command's work is in `esg::runner` and its neighbours.

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use esg::config::{self, Config};
use esg::pipeline::ReplayBound;
use esg::runner::{DailyRequest, Outcome, Refused, Runner, Selection};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rates every active account of the firm through the vendor's ESG Portfolio Analysis API and
/// writes FirmESGRatings_YYYYMMDD.csv, its errors file and a summary.
///
/// Start with `esg demo`: it runs a whole business day against the built-in simulator of the
/// firm's account system and the vendor API, with nothing to configure.
///
/// Exit codes: 0 done; 1 the run failed (the error says why; a critical alert went out);
/// 2 usage or configuration error (nothing was run); 3 the deadline came first (the file is
/// written, pending accounts Failed); 4 stopped by a signal (run the same command again to
/// resume); 5 another esg process holds the state directory.
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
    /// the date's run if it was started before and stopped (killed, crashed); a date whose file
    /// was delivered is not run again (with --full over a run without it, a new run of the date
    /// replaces its files). On Kafka the scorers and the assembler are services (`esg scorer`,
    /// `esg assembler`): this publishes the run and waits for its file.
    Run(RunArgs),
    /// Re-score chosen accounts and replace their rows in that day's file (manual override).
    ///
    /// The accounts are checked first: an unknown id runs nothing (exit 2, every unknown id
    /// listed). On Kafka it publishes the re-run for the running scorers and assembler and
    /// waits until the assembler has written the file.
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
    /// Where a run stands, read-only, while it runs or after: phase, accounts scored of those
    /// expected, failed so far, the API rate, an ETA, the files written.
    Status(StatusArgs),
    /// The runs kept for trends: per business date, the latest daily run and the re-runs after
    /// it (--all: every run), with the file's counts, the four averages (and exact sums), the
    /// focus split, the run's scoring, new and gone accounts, API requests and 429s, and
    /// whether it met its deadline. Read-only; `esg history import DIR` rebuilds it from the
    /// day summaries.
    History(HistoryArgs),
    /// Serve the read-only dashboard: trend charts of the runs (success and failure rate, the
    /// four averages, the focus split, duration against the deadline, API requests and 429s, new
    /// and gone accounts) over 30, 90, 365 days or all, the runs by outcome, each run's history
    /// row, and the latest run's live progress; /api/daily.json, /api/runs.csv and /healthz for
    /// machines.
    ///
    /// Read-only: it answers GET and HEAD only, opens the history store read-only and reads the
    /// live status as `esg status` does (no lock: beside a running job). No page holds an
    /// account name. It binds loopback (127.0.0.1:8088) by default and authenticates nobody:
    /// access control is the job of the firm's SSO proxy in front of it (docs/operations.md,
    /// "Putting the dashboard behind the firm's SSO"); bound to another address it warns in its
    /// log. The address it listens on is printed on stdout (port 0 takes a free one).
    Serve(ServeArgs),
    /// Kafka mode: publish today's daily run (trigger, account events, seal) and exit.
    ///
    /// The scorers and the assembler, running as services, score it and write the file. Run it
    /// at 05:00 America/Chicago from the scheduler (systemd timer, Kubernetes CronJob), from any
    /// host with the configuration; run again after a failure, it resumes the same run. With
    /// --wait it also waits for the file (exit codes as `esg run --once`).
    Producer(ProducerArgs),
    /// Kafka mode: one scorer of the consumer group; runs until SIGTERM. Start as many as the
    /// API quota and the partitions allow: they share the partitions and the tenant rate limit.
    Scorer(ServiceArgs),
    /// Kafka mode: the assembler; runs until SIGTERM, writing each run's files when it
    /// completes or at its deadline, and raising the run-end alerts.
    Assembler(ServiceArgs),
    /// Serve the simulator of the account system and the ESG API (for trials and tests).
    Simulator(SimulatorArgs),
    /// Check a configuration file and print the effective configuration (secrets masked).
    CheckConfig(CheckConfigArgs),
    /// Re-encrypt kept encrypted outputs (*.age) to the current `[encryption]` recipients,
    /// after a recipients change (a new officer, a key withdrawn).
    ///
    /// Each file is decrypted with --identity (an age identity file of a current recipient of
    /// that file) and encrypted again as it streams into a temporary file that replaces the
    /// original: no plaintext touches the disk, and a file that fails is left as it was. Takes
    /// the assembler's lock: not while a run is writing. Exit 1 when any file failed.
    Reencrypt(ReencryptArgs),
    /// Send a day's files to the `[[delivery]]` targets again (after a `delivery_failed` alert,
    /// once the target is fixed).
    ///
    /// Every file of the date in the output directory (ratings last) goes to every target, or
    /// to --target only, replacing what the target holds under those names; a failed target is
    /// tried again with backoff for --retry-for. Each file delivered is a line of the delivery
    /// record (`<state.dir>/deliveries.jsonl`). Exit 0 when every target took every file, 1
    /// otherwise (a `delivery_failed` alert went out).
    Deliver(DeliverArgs),
    /// Remove the day files and logs older than `[retention]` allows, locally and on every
    /// delivery target (also done at the start of each run).
    ///
    /// A file's age is the business date in its name. Each removal is recorded in the audit
    /// trail; a removal the store refuses (Object Lock, a read-only share) is printed, alerted
    /// (`purge_refused`) and makes the exit code 1.
    Purge(PurgeArgs),
    /// Erase one account (a data subject's erasure request, GDPR art. 17 / CCPA deletion):
    /// its name and scores leave every store, the embedded log or the Kafka topics, and the kept
    /// day files.
    ///
    /// The stores and the embedded log are rebuilt so no copy survives in free pages or the
    /// write-ahead log; on Kafka, tombstones go to esg.scores and esg.accounts and the broker
    /// drops the records within `[bus] compaction_lag`. Every day file in the output directory
    /// that holds the account is rewritten without it (encrypted files are opened with
    /// --identity and encrypted again to the current recipients) and delivered again; with
    /// --legal-hold the published files are kept as they are. The audit trail records the
    /// erasure under an HMAC of the id, never the id. Needs every esg process of this state
    /// directory stopped. If the account system still lists the account, a later run scores it
    /// again as a new account. Exit 0 when done, 1 when a file or a delivery failed (run again
    /// once fixed: erasure is idempotent).
    Erase(EraseArgs),
    /// The audit trail: verify it, list it, make its signing key.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Decrypt an encrypted output for a person to read (to stdout or --out), and record who
    /// opened it in the audit trail: the supported way to read a `.age` file.
    ///
    /// Needs only `[audit] dir` (or `[state] dir`) of the configuration, and the right to append
    /// to that audit log: no client secret. The opening is recorded before any plaintext is
    /// written; when it cannot be, nothing is decrypted.
    Open(OpenArgs),
}

#[derive(Args)]
struct EraseArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The account id to erase.
    #[arg(long, value_name = "ID")]
    account: String,
    /// Why: the request's reference (never the name), kept in the audit trail.
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// An age identity file that decrypts the kept (encrypted) day files, to rewrite them.
    #[arg(long, short, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Keep the published day files as they are (a legal hold on them): only the stores, the
    /// log and the topics are erased.
    #[arg(long)]
    legal_hold: bool,
}

#[derive(Args)]
struct PurgeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log: its hash chain, its latest signed checkpoint, and any checkpoint
    /// given (a copy the firm holds, delivered with the files). Exit 0 when all hold; 1 naming
    /// the first bad entry.
    Verify(AuditVerifyArgs),
    /// List the audit log's entries.
    Show(AuditShowArgs),
    /// Make a new Ed25519 key for `[audit] signing_key_file` (mode 0600, never over an existing
    /// file) and print its verifier key, to hand to whoever checks the checkpoints.
    Keygen(AuditKeygenArgs),
}

#[derive(Args)]
struct AuditVerifyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// A signed checkpoint to check the log against (e.g. the copy on a delivery target);
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    checkpoint: Vec<PathBuf>,
    /// Check signatures with this verifier key (its text, as `esg audit keygen` printed it)
    /// instead of the public half of `[audit] signing_key_file`.
    #[arg(long, value_name = "KEY")]
    verifier_key: Option<String>,
}

#[derive(Args)]
struct AuditShowArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only entries of this day (UTC) and later.
    #[arg(long, value_name = "YYYY-MM-DD")]
    since: Option<NaiveDate>,
    /// One JSON object a line, as stored.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AuditKeygenArgs {
    /// The key's name, and the checkpoints' origin: a schema-less URL, e.g.
    /// `esg.firm.example/audit`.
    #[arg(long)]
    name: String,
    /// Where to write the key.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct OpenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The encrypted output (`FirmESGRatings_YYYYMMDD.csv.age`, …).
    file: PathBuf,
    /// Your age identity file (`age-keygen` output).
    #[arg(long, short, value_name = "FILE")]
    identity: PathBuf,
    /// Write the plaintext here (created 0600, never over an existing file) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ConfigArg {
    /// The TOML configuration file (see README, "Configuration", and esg.example.toml).
    #[arg(long, short, env = "ESG_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
struct DailyArgs {
    /// Business date to run (YYYY-MM-DD); default today in the configured time zone.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Score every active account, not only those that changed.
    #[arg(long)]
    full: bool,
    /// Go on although the account system listed far fewer active accounts than the last run
    /// (below `[accounts] min_active_ratio`, or none): only after a person has checked.
    #[arg(long)]
    accept_roster_change: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Run once now and exit. Without it, `esg run` stays up and runs every business date at
    /// `[schedule] at` (05:00 America/Chicago by default), resuming today's run if it was started.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    daily: DailyArgs,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Chosen {
    /// Accounts to re-score, comma separated.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,...")]
    accounts: Option<Vec<String>>,
    /// A file of account ids to re-score: one per line (or comma separated); blank lines and
    /// lines starting with # are skipped.
    #[arg(long, value_name = "FILE")]
    accounts_file: Option<PathBuf>,
    /// Every account of the day whose row is not Successful (Partial or Failed).
    #[arg(long)]
    failed: bool,
}

#[derive(Args)]
struct RerunArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    chosen: Chosen,
    /// Whose file to update (YYYY-MM-DD); default today in the configured time zone.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Kafka mode: publish and exit without waiting for the file.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
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
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The business date whose latest run to show; default the latest run of all.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The address to listen on: loopback by default, for the SSO proxy on the same host.
    #[arg(long, value_name = "ADDR", default_value = esg::serving::DEFAULT_LISTEN)]
    listen: SocketAddr,
}

#[derive(Args)]
struct HistoryArgs {
    #[command(subcommand)]
    command: Option<HistoryCommand>,
    /// The TOML configuration file (see README, "Configuration", and esg.example.toml).
    #[arg(long, short, env = "ESG_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Only business dates from this one on.
    #[arg(long, value_name = "YYYY-MM-DD")]
    since: Option<NaiveDate>,
    /// Every run, superseded daily runs of a date included, instead of the per-day view.
    #[arg(long)]
    all: bool,
    /// JSON instead of text (the per-day view: one object a date, its daily run and re-runs).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV, one line a run, for a spreadsheet or the warehouse.
    #[arg(long)]
    csv: bool,
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Add to the history every run the day summaries in DIR tell of (each summary holds its
    /// daily run and every re-run of the day); runs it holds already are left as they are.
    Import(HistoryImportArgs),
}

#[derive(Args)]
struct HistoryImportArgs {
    /// The directory of `FirmESGRatings_YYYYMMDD_summary.json(.age)` files.
    dir: PathBuf,
    /// An age identity that decrypts encrypted summaries (each opening is audited).
    #[arg(long, short, value_name = "FILE")]
    identity: Option<PathBuf>,
}

#[derive(Args)]
struct ReencryptArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// An age identity file (`age-keygen` output) that decrypts the kept files.
    #[arg(long, short, value_name = "FILE")]
    identity: PathBuf,
    /// Only the outputs of this business date; repeatable. Default: every encrypted output in
    /// the output directory.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Vec<NaiveDate>,
}

#[derive(Args)]
struct DeliverArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The business date whose files to send.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: NaiveDate,
    /// Only this target (its `name`, or the name `esg check-config` shows for it).
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// How long a failed target is tried again, with backoff (at least three attempts).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime_serde::re::humantime::parse_duration)]
    retry_for: std::time::Duration,
}

#[derive(Args)]
struct ProducerArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    daily: DailyArgs,
    /// Wait until the assembler has written the run's file (exit code as `esg run --once`).
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct ServiceArgs {
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Args)]
struct CheckConfigArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also run the pre-flight: directories writable, free space, both token endpoints, both
    /// APIs (no vendor quota spent). Exit 1 when a check fails.
    #[arg(long)]
    connect: bool,
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
    /// API requests in flight at once (a batch request is one).
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Accounts per batch request (`esg_api.batch_size`, 1 to 100); 1 sends one call per account.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100))]
    batch_size: u64,
    /// Make the simulated vendor a tenant without the batch endpoint (it answers 404 there).
    #[arg(long)]
    no_batch_endpoint: bool,
    /// Share of accounts whose first call the simulated vendor answers 429 whatever the rate.
    #[arg(long, default_value_t = 0.0)]
    rate_limited_share: f64,
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
    /// Business date to run; default today (America/Chicago). With --days, the last one.
    #[arg(long, value_name = "YYYY-MM-DD")]
    business_date: Option<NaiveDate>,
    /// Business days to run, one after the other, ending at the business date: a history of
    /// runs for the dashboard (`esg serve`) to show trends. Between days the simulated firm
    /// changes (seeded): about 6% of accounts get new holdings and so new scores, a few close,
    /// a few open, and the vendor's error rates drift.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3660))]
    days: u32,
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
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key", conflicts_with = "tls_generate")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate issued by a CA of this PEM bundle (mutual TLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Serve HTTPS with a new throwaway CA and certificates written to DIR (ca.pem for the
    /// job's tls_ca_file, client.pem and client.key for mutual TLS); for stands and tests.
    #[arg(long, value_name = "DIR")]
    tls_generate: Option<PathBuf>,
    /// A host name the generated server certificate is also valid for (loopback always is);
    /// repeatable.
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls_generate")]
    tls_names: Vec<String>,
    /// With --tls-generate: require the generated client certificate (mutual TLS).
    #[arg(long, requires = "tls_generate")]
    tls_require_client_cert: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Whatever the umask the job is started with, nothing it creates is writable by its group or
    // open to others: log files 0640, directories at most 0750 (outputs and stores set their
    // own, closer modes on top).
    #[cfg(unix)]
    {
        use rustix::fs::Mode;
        let inherited = rustix::process::umask(Mode::from_raw_mode(0o027));
        rustix::process::umask(inherited | Mode::from_raw_mode(0o027));
    }
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
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a command that failed (see the `esg --help` table).
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(refused) = e.downcast_ref::<Refused>() {
        return refused.exit_code();
    }
    if e.downcast_ref::<config::ConfigError>().is_some() {
        return 2;
    }
    1
}

/// Prints a line on stdout; a closed stdout (`esg status | head -1`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// What every command that runs the job does first: the configuration, the logs, the signals.
struct Prologue {
    config: Config,
    shutdown: CancellationToken,
    _log: esg::telemetry::LogGuard,
}

impl Prologue {
    fn start(args: &ConfigArg) -> Result<Prologue> {
        let config = Config::load(&args.config)?;
        let log = esg::telemetry::init(&config.log);
        Ok(Prologue {
            config,
            shutdown: shutdown_on_signal(),
            _log: log,
        })
    }

    /// Takes the state lock (before any port is opened), then serves the metrics.
    async fn runner(&self) -> Result<Runner> {
        let runner = Runner::open(self.config.clone(), esg_assembler::system_clock()).await?;
        esg::telemetry::serve_metrics(&self.config.metrics)?;
        Ok(runner)
    }
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Demo(args) => demo(args).await,
        Command::Run(args) => {
            let p = Prologue::start(&args.config)?;
            let runner = p.runner().await?;
            let request = daily_request(&runner, &args.daily);
            if !args.once {
                return scheduled(&runner, request, p.shutdown.clone()).await;
            }
            let bar = esg::progress::Progress::new(&format!("run {}", request.business_date));
            let outcome = runner
                .daily(request, true, p.shutdown.clone(), bar.callback())
                .await;
            bar.finish();
            report(&runner, &outcome?)
        }
        Command::Producer(args) => {
            let p = Prologue::start(&args.config)?;
            esg::runner::kafka_only(
                &p.config,
                "esg producer",
                "`esg run --once` runs the whole day",
            )?;
            let runner = p.runner().await?;
            let request = daily_request(&runner, &args.daily);
            let outcome = runner
                .daily(request, args.wait, p.shutdown.clone(), |_| {})
                .await?;
            report(&runner, &outcome)
        }
        Command::Rerun(args) => {
            let p = Prologue::start(&args.config)?;
            let selection = selection(&args.chosen)?;
            let runner = p.runner().await?;
            let date = args.business_date.unwrap_or_else(|| runner.today());
            let bar = esg::progress::Progress::new(&format!("re-run {date}"));
            let outcome = runner
                .rerun(
                    date,
                    selection,
                    !args.no_wait,
                    p.shutdown.clone(),
                    bar.callback(),
                )
                .await;
            bar.finish();
            report(&runner, &outcome?)
        }
        Command::Replay(args) => {
            let p = Prologue::start(&args.config)?;
            let topic = args.topic.trim_start_matches(&p.config.bus.topic_prefix);
            if topic != "account-events" && topic != "esg.account-events" {
                return Err(Refused::Usage(format!(
                    "only the account-events topic can be replayed through the scorers, not {:?}",
                    args.topic
                ))
                .into());
            }
            let runner = p.runner().await?;
            let bar = esg::progress::Progress::new("replay");
            let outcomes = runner
                .replay(
                    args.partition,
                    args.from,
                    args.to,
                    !args.no_wait,
                    p.shutdown.clone(),
                    bar.callback(),
                )
                .await;
            bar.finish();
            let outcomes = outcomes?;
            if outcomes.is_empty() {
                say!("no account events of a delivered day in that range; nothing to replay");
            }
            let mut code = 0;
            for outcome in &outcomes {
                if let Some(s) = &outcome.sealed {
                    say!(
                        "replaying {} accounts of {}",
                        s.expected_accounts,
                        outcome.business_date
                    );
                }
                code = code.max(report(&runner, outcome)?);
            }
            Ok(code)
        }
        Command::Reencrypt(args) => reencrypt(args),
        Command::Purge(args) => {
            let config = Config::load(&args.config.config)?;
            let _log = esg::telemetry::init_text("warn");
            let purged = esg::runner::purge(&config, args.dry_run).await?;
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for item in &purged.removed {
                say!("{verb} {item}");
            }
            for item in &purged.refused {
                say!("REFUSED {item}");
            }
            if purged.removed.is_empty() && purged.refused.is_empty() {
                say!("nothing is past retention");
            }
            Ok(if purged.refused.is_empty() { 0 } else { 1 })
        }
        Command::Erase(args) => {
            let config = Config::load(&args.config.config)?;
            let _log = esg::telemetry::init_text("warn");
            let request = esg::erasing::Request {
                account: args.account,
                reason: args.reason,
                identity: args.identity,
                legal_hold: args.legal_hold,
            };
            let erased = esg::erasing::erase(&config, &request).await?;
            for (path, rows) in &erased.stores {
                say!("{}: {rows} row(s) deleted, file rebuilt", path.display());
            }
            for topic in &erased.tombstones {
                say!("{topic}: tombstone written");
            }
            for (path, rows) in &erased.files {
                say!(
                    "{}: rewritten without the account ({rows} row(s))",
                    path.display()
                );
            }
            if request.legal_hold {
                say!("day files kept as published (legal hold)");
            }
            for date in &erased.redelivered {
                say!("files of {date} delivered again");
            }
            for failure in &erased.delivery_failures {
                say!("DELIVERY FAILED {failure}");
            }
            say!(
                "account erased; the audit trail names it as {}",
                erased.pseudonym
            );
            Ok(if erased.delivery_failures.is_empty() {
                0
            } else {
                1
            })
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            let config = Config::load(&args.config.config)?;
            let _log = esg::telemetry::init_text("warn");
            match esg::auditing::verify(&config, args.verifier_key.as_deref(), &args.checkpoint)? {
                Ok(summary) => {
                    say!("{summary}");
                    Ok(0)
                }
                Err(broken) => {
                    eprintln!("audit log NOT intact: {broken}");
                    Ok(1)
                }
            }
        }
        Command::Audit(AuditCommand::Show(args)) => {
            let config = Config::load(&args.config.config)?;
            let _log = esg::telemetry::init_text("warn");
            for line in esg::auditing::show(&config, args.since, args.json)? {
                say!("{line}");
            }
            Ok(0)
        }
        Command::Audit(AuditCommand::Keygen(args)) => {
            let verifier = esg::auditing::keygen(&args.name, &args.out)?;
            say!(
                "signing key written to {} (mode 0600): set [audit] signing_key_file to it",
                args.out.display()
            );
            say!("verifier key, for whoever checks the checkpoints (esg audit verify --verifier-key):");
            say!("{verifier}");
            Ok(0)
        }
        Command::Open(args) => {
            let _log = esg::telemetry::init_text("warn");
            let audit_dir = esg::auditing::audit_dir_of(&args.config.config)?;
            let mut stdout = std::io::stdout().lock();
            let bytes = esg::auditing::open(
                &audit_dir,
                &args.file,
                &args.identity,
                args.out.as_deref(),
                &mut stdout,
            )?;
            if let Some(out) = &args.out {
                eprintln!(
                    "{bytes} bytes decrypted to {} (the opening is in the audit trail)",
                    out.display()
                );
            }
            Ok(0)
        }
        Command::Deliver(args) => {
            let config = Config::load(&args.config.config)?;
            let _log = esg::telemetry::init_text("warn");
            let shutdown = shutdown_on_signal();
            let report = esg::runner::deliver(
                &config,
                args.business_date,
                args.target.as_deref(),
                args.retry_for,
                &shutdown,
            )
            .await?;
            for d in &report.delivered {
                say!(
                    "delivered {} ({} bytes, sha256 {}) to {}",
                    d.object,
                    d.size,
                    d.sha256,
                    d.target
                );
            }
            for f in &report.failed {
                say!("FAILED {f}");
            }
            Ok(if report.is_complete() { 0 } else { 1 })
        }
        Command::History(args) => {
            let _log = esg::telemetry::init_text("warn");
            let Some(path) = &args.config else {
                return Err(Refused::Usage(
                    "give the configuration file: --config FILE (or ESG_CONFIG)".into(),
                )
                .into());
            };
            if let Some(HistoryCommand::Import(import)) = args.command {
                let config = Config::load(path)?;
                let done = esg::history::import(&config, &import.dir, import.identity.as_deref())?;
                say!(
                    "{} summaries read: {} runs added to the history, {} it held already",
                    done.summaries,
                    done.added,
                    done.present
                );
                return Ok(0);
            }
            let config = Config::load(path)?;
            let rows = esg::history::read(&config, args.since)?;
            if args.json {
                say!("{}", esg::history::json(rows, args.all)?);
            } else if args.csv {
                print!("{}", esg::history::csv(rows, args.all)?);
            } else {
                for line in esg::history::text(rows, args.all) {
                    say!("{line}");
                }
            }
            Ok(0)
        }
        Command::Serve(args) => {
            let p = Prologue::start(&args.config)?;
            esg::serving::serve(p.config.clone(), args.listen, p.shutdown.clone()).await?;
            Ok(0)
        }
        Command::Status(args) => {
            let config = Config::load(&args.config.config)?;
            let _log = esg::telemetry::init_text("warn");
            let status = esg::status::read(&config, args.business_date).await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                say!("{status}");
            }
            Ok(0)
        }
        Command::Scorer(args) => {
            let p = Prologue::start(&args.config)?;
            esg::telemetry::serve_metrics(&p.config.metrics)?;
            let stats = esg::runner::scorer_service(&p.config, p.shutdown.clone()).await?;
            say!(
                "scorer stopped: {} events, {} scored ({} successful, {} partial, {} failed)",
                stats.events,
                stats.scored,
                stats.successful,
                stats.partial,
                stats.failed
            );
            Ok(0)
        }
        Command::Assembler(args) => {
            let p = Prologue::start(&args.config)?;
            let reports = esg::runner::assembler_service(
                &p.config,
                esg_assembler::system_clock(),
                p.shutdown.clone(),
                || esg::telemetry::serve_metrics(&p.config.metrics),
            )
            .await?;
            say!("assembler stopped after writing {} run(s)", reports.len());
            Ok(0)
        }
        Command::Simulator(args) => simulator(args).await,
        Command::CheckConfig(args) => {
            let config = Config::load(&args.config.config)?;
            say!("{}", config.to_masked_toml());
            if !config.secret_sources.is_empty() {
                say!("# secrets (values never shown), each from:");
                for s in &config.secret_sources {
                    say!("#   {} <- {}", s.key, s.from);
                }
            }
            say!("# configuration OK");
            if !args.connect {
                return Ok(0);
            }
            let _log = esg::telemetry::init_text("warn");
            let report = esg::preflight::run(
                &config,
                &esg::preflight::Scope {
                    output: true,
                    expected_rows: 0,
                },
            )
            .await;
            say!("pre-flight:\n{report}");
            Ok(if report.ok() { 0 } else { 1 })
        }
    }
}

fn daily_request(runner: &Runner, args: &DailyArgs) -> DailyRequest {
    DailyRequest {
        business_date: args.business_date.unwrap_or_else(|| runner.today()),
        full: args.full,
        accept_roster_change: args.accept_roster_change,
    }
}

/// The accounts `esg rerun` was given.
fn selection(chosen: &Chosen) -> Result<Selection> {
    if chosen.failed {
        return Ok(Selection::NotSuccessful);
    }
    if let Some(ids) = &chosen.accounts {
        return Ok(Selection::Accounts(ids.clone()));
    }
    let Some(path) = &chosen.accounts_file else {
        return Err(Refused::Usage("give --accounts, --accounts-file or --failed".into()).into());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Refused::Usage(format!(
            "cannot read the accounts file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Selection::Accounts(parse_accounts_file(&text)))
}

/// Ids of an accounts file: one per line or comma separated; blank lines and `#` comments
/// skipped.
fn parse_accounts_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .collect()
}

/// `esg run` without `--once`: a run of every business date at the scheduled time (and the
/// pre-flight at `[schedule] preflight_at`), until a signal.
async fn scheduled(
    runner: &Runner,
    request: DailyRequest,
    shutdown: CancellationToken,
) -> Result<u8> {
    let schedule = runner.config.schedule();
    let (next_date, next_at) = schedule.next_after(chrono::Utc::now());
    tracing::info!(at = %schedule.at, time_zone = %schedule.tz, next_business_date = %next_date, next_run_at = %next_at,
        "scheduled: a run every day");
    let grace = chrono::Duration::from_std(runner.alerts().config().missed_start_grace)?;
    let preflight = async {
        let Some(early) = runner.config.preflight_schedule() else {
            return;
        };
        esg::schedule::run_daily(
            early,
            chrono::Utc::now,
            tokio::time::sleep,
            Duration::from_secs(60),
            shutdown.clone(),
            |date| async move {
                let report = runner.preflight().await?;
                if let Err(failed) = report.into_result() {
                    let e = anyhow::Error::new(failed)
                        .context(format!("early pre-flight for the run of {date}"));
                    tracing::error!(business_date = %date, error = %format!("{e:#}"), "early pre-flight failed");
                    runner.alerts().critical_error(&date.to_string(), date, &e).await;
                }
                Ok(())
            },
        )
        .await;
    };
    let daily = esg::schedule::run_daily(
        schedule,
        chrono::Utc::now,
        tokio::time::sleep,
        Duration::from_secs(60),
        shutdown.clone(),
        |date| {
            let stop = shutdown.clone();
            async move {
                let start_by = schedule.fire_time(date) + grace;
                if chrono::Utc::now() > start_by
                    && !esg::runner::run_triggered(&runner.bus, date).await?
                {
                    runner.alerts().started_late(date, start_by).await;
                }
                let request = DailyRequest {
                    business_date: date,
                    ..request
                };
                let progress = esg::progress::Progress::log_only();
                let outcome = runner.daily(request, true, stop, progress.callback()).await;
                progress.finish();
                let outcome = outcome?;
                match &outcome.completed {
                    Some(c) => {
                        tracing::info!(run_id = %c.run_id, outcome = %c.outcome, file = %c.output_file, "scheduled run ended")
                    }
                    None => tracing::info!(run_id = %outcome.run_id, "scheduled run published"),
                }
                Ok(())
            }
        },
    );
    tokio::join!(preflight, daily);
    Ok(0)
}

/// Prints what a run came to; returns its exit code.
fn report(runner: &Runner, outcome: &Outcome) -> Result<u8> {
    if outcome.already_completed {
        say!(
            "run {} of {} had already completed; its files are in {}",
            outcome.run_id,
            outcome.business_date,
            runner.config.output.dir.display()
        );
        return Ok(0);
    }
    let Some(done) = &outcome.completed else {
        match &outcome.sealed {
            Some(s) => say!(
                "run {} published: {} accounts to score ({} active)",
                s.run_id,
                s.expected_accounts,
                s.active_accounts
            ),
            None => say!("run {} published", outcome.run_id),
        }
        return Ok(0);
    };
    say!("run {} {}", done.run_id, done.outcome);
    match &outcome.report {
        Some(report) => {
            let s = &report.summary;
            say!("  ratings file  {}", report.csv.display());
            say!("  errors file   {}", report.errors.display());
            say!("  summary       {}", report.summary_path.display());
            say!("  summary page  {}", report.summary_html.display());
            // The summary's own text: the same numbers as the JSON beside the file.
            for line in s.text().lines() {
                say!("{line}");
            }
        }
        None if done.output_file.is_empty() => {
            say!("  no file written: the previous files are untouched")
        }
        None => say!(
            "  {} rows, {} successful, {} partial, {} failed; file {}",
            done.rows,
            done.successful,
            done.partial,
            done.failed,
            done.output_file
        ),
    }
    Ok(outcome.exit_code())
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

async fn demo(args: DemoArgs) -> Result<u8> {
    // The progress bar and the report tell the story; accounts that failed are in the errors
    // file. RUST_LOG=info shows the job's log.
    let _log = esg::telemetry::init_text("error");
    let dir = &args.dir;
    prepare_demo_dir(dir)?;
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
        batch_endpoint: !args.no_batch_endpoint,
        rate_limited_first_attempt_rate: args.rate_limited_share,
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
            &format!(
                "max_in_flight = {}\nbatch_size = {}",
                args.max_in_flight, args.batch_size
            ),
        );
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    say!(
        "simulator at {} with {} accounts; configuration written to {}",
        sim.url(),
        args.accounts,
        config_path.display()
    );
    let shutdown = shutdown_on_signal();
    let runner = Runner::open(config, esg_assembler::system_clock()).await?;
    let date = args.business_date.unwrap_or_else(|| runner.today());
    if args.days > 1 {
        demo_history(&runner, &sim, &args, date, &shutdown).await?;
    }
    let bar = esg::progress::Progress::new(&format!("demo {date}"));
    let started = std::time::Instant::now();
    let outcome = runner
        .run_daily(date, false, shutdown, bar.callback())
        .await;
    bar.finish();
    let outcome = outcome?;
    let elapsed = started.elapsed();
    let code = report(&runner, &outcome)?;
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
    say!(
        "  wall time {:.1} s; simulator answered {} API requests ({} of them batches of {} accounts in all) at {rate:.0}/s while scoring{share}; {} rate limited (429) by the quota, {} by the first-attempt fault",
        elapsed.as_secs_f64(),
        stats.esg_requests,
        stats.batch_requests,
        stats.batch_accounts,
        stats.rate_limited,
        stats.fault_rate_limited
    );
    print_peek(&runner.config.output.dir, date);
    sim.shutdown();
    Ok(code)
}

/// `esg demo --days N`: the N - 1 business days before `last`, each run to its end after a
/// day of change at the simulated firm, one line a day; the caller runs `last` itself.
async fn demo_history(
    runner: &Runner,
    sim: &esg_simulator::SimHandle,
    args: &DemoArgs,
    last: NaiveDate,
    shutdown: &CancellationToken,
) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let first = last - chrono::Duration::days(i64::from(args.days) - 1);
    say!(
        "building {} days of history, {first} to {last} (the last one is shown below)",
        args.days
    );
    let mut day = first;
    let mut index = 0u64;
    while day <= last {
        if index > 0 {
            // A day at the firm: new holdings for some accounts, some close, some open.
            let opened = (args.accounts / 300).max(u64::from(rng.random_bool(0.5)));
            sim.churn(args.seed ^ index, 0.06, 0.002, opened);
            // The vendor has better and worse days.
            let transient = args.transient_error_rate * rng.random_range(0.2..2.5);
            let permanent = args.permanent_error_rate * rng.random_range(0.3..3.0);
            sim.update(|c| {
                c.transient_error_rate = transient.min(0.5);
                c.permanent_error_rate = permanent.min(0.5);
            });
        }
        if day == last {
            break;
        }
        if shutdown.is_cancelled() {
            anyhow::bail!("stopped before {day}");
        }
        let started = std::time::Instant::now();
        let outcome = runner
            .run_daily(day, false, shutdown.clone(), |_| {})
            .await
            .with_context(|| format!("the run of {day}"))?;
        match &outcome.report {
            Some(report) => {
                let s = &report.summary;
                say!(
                    "  {day} {}: {} accounts, {}% successful, {} failed, {} scored, {} carried forward ({:.1} s)",
                    s.outcome,
                    s.accounts,
                    s.success_rate_percent,
                    s.failed,
                    s.scored_in_run,
                    s.carried_forward,
                    started.elapsed().as_secs_f64()
                );
            }
            None => say!("  {day}: no file (see the log)"),
        }
        day += chrono::Duration::days(1);
        index += 1;
    }
    Ok(())
}

/// The marker `esg demo` leaves in a directory it made its own.
const DEMO_MARKER: &str = ".esg-demo";

/// `esg demo --dir`: a new or empty directory becomes the demo's (marked); one the demo made
/// before is reused; any other non-empty directory is refused, so the demo never clears files
/// it did not write.
fn prepare_demo_dir(dir: &Path) -> Result<()> {
    if dir.join(DEMO_MARKER).exists() {
        return Ok(());
    }
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(Refused::Usage(format!(
                "{} is not empty and was not made by `esg demo`: give --dir a new or empty directory",
                dir.display()
            ))
            .into());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(DEMO_MARKER),
        "made by `esg demo`: it may clear state/ and out/ here\n",
    )
    .with_context(|| format!("writing {}", dir.join(DEMO_MARKER).display()))?;
    Ok(())
}

fn print_peek(dir: &Path, date: NaiveDate) {
    let path = dir.join(esg_assembler::output::file_names(date).csv);
    // Only the first lines: the file of a large firm is hundreds of megabytes.
    if let Ok(file) = std::fs::File::open(&path) {
        use std::io::BufRead;
        say!("\nfirst lines of {}:", path.display());
        for line in std::io::BufReader::new(file)
            .lines()
            .take(6)
            .map_while(Result::ok)
        {
            say!("  {line}");
        }
    }
}

async fn simulator(args: SimulatorArgs) -> Result<u8> {
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
    let tls = simulator_tls(&args)?;
    let sim = match tls {
        None => esg_simulator::start(config, args.listen).await,
        Some(tls) => esg_simulator::start_tls(config, args.listen, tls).await,
    }
    .context("starting the simulator")?;
    say!(
        "simulator listening on {} (token endpoint {})",
        sim.url(),
        sim.token_url()
    );
    let shutdown = shutdown_on_signal();
    shutdown.cancelled().await;
    sim.shutdown();
    Ok(0)
}

/// `esg reencrypt`: every kept encrypted output (or those of the dates asked for) to the current
/// recipients.
fn reencrypt(args: ReencryptArgs) -> Result<u8> {
    let config = Config::load(&args.config.config)?;
    let _log = esg::telemetry::init_text("warn");
    let protection = config
        .protection()
        .map_err(|(key, message)| anyhow::anyhow!("key `{key}`: {message}"))?;
    if !protection.is_encrypted() {
        anyhow::bail!(
            "there is no [encryption] section in {}: no recipients to re-encrypt to",
            args.config.config.display()
        );
    }
    let identities = age::IdentityFile::from_file(args.identity.display().to_string())
        .map_err(|e| anyhow::anyhow!("identity file {}: {e}", args.identity.display()))?
        .into_identities()
        .map_err(|e| anyhow::anyhow!("identity file {}: {e}", args.identity.display()))?;
    let _lock = esg::pipeline::StateLock::acquire(&config, "assembler")?;
    let dir = &config.output.dir;
    // The day's outputs by their names, encrypted; without dates every encrypted output here.
    let wanted: Vec<String> = args
        .business_date
        .iter()
        .flat_map(|d| {
            let n = esg_assembler::output::file_names(*d);
            [n.csv, n.errors, n.summary_json, n.summary_html]
        })
        .map(|name| protection.file_name(&name))
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the output directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                if wanted.is_empty() {
                    n.starts_with("FirmESGRatings_")
                        && n.ends_with(esg_assembler::encryption::AGE_SUFFIX)
                } else {
                    wanted.iter().any(|w| w == n)
                }
            })
        })
        .collect();
    // The days' Parquet, in their partitions.
    files.extend(
        esg_assembler::parquet::day_files(dir)
            .into_iter()
            .filter(|p| {
                let encrypted = p.extension().is_some_and(|e| {
                    e == esg_assembler::encryption::AGE_SUFFIX.trim_start_matches('.')
                });
                let asked = args.business_date.is_empty()
                    || args
                        .business_date
                        .iter()
                        .any(|d| *p == esg_assembler::parquet::path(dir, *d, &protection));
                encrypted && asked
            }),
    );
    files.sort();
    if files.is_empty() {
        say!("no encrypted outputs to re-encrypt in {}", dir.display());
        return Ok(if wanted.is_empty() { 0 } else { 1 });
    }
    let recipients = match &protection {
        esg_assembler::encryption::Protection::Age(r) => r.len(),
        esg_assembler::encryption::Protection::Plaintext => 0,
    };
    let (mut done, mut failed) = (0, 0);
    for (i, path) in files.iter().enumerate() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        match esg_assembler::output::reencrypt(path, &identities, &protection) {
            Ok(bytes) => {
                done += 1;
                say!(
                    "[{}/{}] re-encrypted {name} ({bytes} bytes)",
                    i + 1,
                    files.len()
                );
            }
            Err(e) => {
                failed += 1;
                say!("[{}/{}] FAILED {name}: {e}", i + 1, files.len());
            }
        }
    }
    say!(
        "re-encrypted {done} of {} file(s) to {recipients} recipient(s){}",
        files.len(),
        if failed > 0 {
            format!("; {failed} failed and were left as they were")
        } else {
            String::new()
        }
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The simulator's HTTPS settings from its flags, if any.
fn simulator_tls(args: &SimulatorArgs) -> Result<Option<esg_simulator::tls::TlsServerConfig>> {
    use esg_simulator::tls::{TestPki, TlsServerConfig};
    if let Some(dir) = &args.tls_generate {
        let pki = TestPki::generate("esg simulator CA", &args.tls_names)?;
        let files = pki.write(dir).with_context(|| {
            format!("writing the simulator's certificates to {}", dir.display())
        })?;
        say!(
            "simulator certificates in {} (trust {})",
            dir.display(),
            files.ca.display()
        );
        let mut server = pki.server(args.tls_require_client_cert);
        if let Some(ca) = &args.tls_client_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            server.client_ca_pem = Some(pem);
        }
        return Ok(Some(server));
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsServerConfig::from_files(
            cert,
            key,
            args.tls_client_ca.as_deref(),
        )?)),
        _ if args.tls_client_ca.is_some() => {
            anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key, or --tls-generate")
        }
        _ => Ok(None),
    }
}

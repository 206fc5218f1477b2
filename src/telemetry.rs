//! Logging set-up: tracing as text on stderr for a person, or JSON lines on stdout for the log
//! shipper, and, when `[log] dir` is set, JSON lines in a daily-rotating file there as well (for
//! the firm's central log system; `[log] keep_files` files are kept). One message style
//! throughout: a short lower-case sentence, the facts as key/value fields (`run_id`,
//! `account_id`, `attempt`, `error_code`, ...), never an account name or a secret.

use crate::config::LogSection;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the file writer flushing; hold it for the life of the process.
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// Installs the global subscriber from `[log]`. `RUST_LOG` overrides the level. A file that
/// cannot be opened is reported on stderr and logging goes on without it.
pub fn init(config: &LogSection) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let console = if config.format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_target(false)
            .with_writer(std::io::stdout)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let mut guard = None;
    let file = config.dir.as_ref().and_then(|dir| {
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("esg")
            .filename_suffix("log")
            .max_log_files(config.keep_files.max(1))
            .build(dir);
        match appender {
            Ok(appender) => {
                let (writer, g) = tracing_appender::non_blocking(appender);
                guard = Some(g);
                Some(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_target(false)
                        .with_ansi(false)
                        .with_writer(writer)
                        .boxed(),
                )
            }
            Err(e) => {
                eprintln!("warning: cannot write logs to {}: {e}", dir.display());
                None
            }
        }
    });
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(file)
        .try_init();
    LogGuard { _file: guard }
}

/// Text on stderr at `level` (the demo, the simulator).
pub fn init_text(level: &str) -> LogGuard {
    init(&LogSection {
        format: "text".into(),
        level: level.into(),
        ..LogSection::default()
    })
}

/// Serves the Prometheus exposition of every `esg_*` metric on `[metrics] listen`, if set.
/// Metric names follow Prometheus conventions (base units, `_total` counters) and every label
/// has a bounded set of values (no account or run ids).
pub fn serve_metrics(config: &crate::config::MetricsSection) -> anyhow::Result<()> {
    let Some(addr) = config.listen else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("esg_api_request_duration_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
    describe();
    tracing::info!(listen = %addr, "metrics served at /metrics");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "esg_run_start_timestamp_seconds",
        Unit::Seconds,
        "Unix time the latest run of the kind started."
    );
    describe_gauge!(
        "esg_run_end_timestamp_seconds",
        Unit::Seconds,
        "Unix time the latest run of the kind ended, by outcome."
    );
    describe_gauge!(
        "esg_last_successful_run_timestamp_seconds",
        Unit::Seconds,
        "Unix time the latest daily run wrote its file."
    );
    describe_gauge!(
        "esg_run_in_progress",
        "1 while a run of the kind is in progress."
    );
    describe_gauge!(
        "esg_run_duration_seconds",
        Unit::Seconds,
        "Duration of the latest ended run of the kind."
    );
    describe_counter!("esg_runs_total", "Runs ended, by kind and outcome.");
    describe_gauge!(
        "esg_run_accounts",
        "Accounts of the latest daily file, by status."
    );
    describe_gauge!(
        "esg_run_failure_ratio",
        "Failed accounts over all accounts of the latest daily file."
    );
    describe_counter!("esg_api_requests_total", "ESG API requests, by outcome.");
    describe_histogram!(
        "esg_api_request_duration_seconds",
        Unit::Seconds,
        "ESG API request latency."
    );
    describe_counter!(
        "esg_api_retries_total",
        "ESG API attempts that failed and were tried again."
    );
    describe_counter!(
        "esg_rate_limiter_waits_total",
        "API calls that waited for the rate limiter."
    );
    describe_gauge!(
        "esg_api_in_flight",
        "ESG API calls in flight in this process."
    );
    describe_gauge!(
        "esg_scorer_consumer_lag_records",
        "Account events of this scorer's partitions not yet scored."
    );
}

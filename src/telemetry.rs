//! Logging set-up: tracing as text on stderr for a person, or JSON lines on stdout for the log
//! shipper, and, when `[log] dir` is set, JSON lines in a daily-rotating file there as well (for
//! the firm's central log system; `[log] keep_files` files are kept). One message style
//! throughout: a short lower-case sentence, the facts as key/value fields (`run_id`,
//! `account_id`, `attempt`, `error_code`, ...), never an account name or a secret.
//!
//! Colour (ANSI escape codes) only on a terminal: never in a file, a pipe or journald, and not
//! when `NO_COLOR` is set. Console lines step around the progress bar ([`crate::progress`]).

use crate::config::{LogFormat, LogSection};
use crate::progress::LogWriter;
use std::io::IsTerminal;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the file writer flushing; hold it for the life of the process.
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// True when text written to stderr may carry colour: stderr is a terminal and `NO_COLOR` is
/// not set.
pub fn stderr_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Installs the global subscriber from `[log]`. `RUST_LOG` overrides the level. A file that
/// cannot be opened is reported on stderr and logging goes on without it.
pub fn init(config: &LogSection) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let console = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_target(false)
            .with_ansi(false)
            .with_writer(LogWriter::stdout())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(stderr_colour())
            .with_writer(LogWriter::stderr())
            .boxed(),
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
        format: LogFormat::Text,
        level: level.into(),
        ..LogSection::default()
    })
}

/// Serves the Prometheus exposition of every `esg_*` metric at `/metrics` on `[metrics] listen`,
/// if set. Port 0 in the configuration takes a free port; the log line `metrics served at
/// /metrics` says which (`listen`). See [`serve_metrics_on`].
pub fn serve_metrics(config: &crate::config::MetricsSection) -> anyhow::Result<()> {
    serve_metrics_on(config).map(|_| ())
}

/// [`serve_metrics`], returning the address it listens on. The port is bound before this
/// returns: a port in use is an error here, not a log line later. Call it inside the Tokio
/// runtime.
///
/// Metric names follow Prometheus conventions (base units, `_total` counters) and every label
/// has a bounded set of values (no account or run ids).
pub fn serve_metrics_on(
    config: &crate::config::MetricsSection,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    use anyhow::Context as _;
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("serving metrics on {addr}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("serving metrics on {addr}"))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .with_context(|| format!("serving metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                esg_metrics::API_REQUEST_DURATION_SECONDS.into(),
            ),
            esg_metrics::API_REQUEST_DURATION_BUCKETS,
        )
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
    esg_metrics::describe_all();
    // Histograms are drained into their buckets by the upkeep; without it they grow.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(listen = %bound, "metrics served at /metrics");
    Ok(Some(bound))
}

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

//! The operator's configuration: one TOML file, every key also settable from the environment.
//!
//! Parse raw, then validate: [`Config::load`] reads the file, applies environment overrides
//! (`ESG__SECTION__KEY=value`, e.g. `ESG__ESG_API__CLIENT_SECRET=...`), deserialises with unknown
//! keys refused, and checks every value once, with errors that name the key. Secrets are
//! [`Secret`]s: they never print.

use chrono::{NaiveTime, TimeZone};
use chrono_tz::Tz;
use esg_auth::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "ESG__";

/// A configuration problem, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Key {
        path: String,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// `[auth]`: the firm's authentication system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// OAuth 2.0 token endpoint (client credentials) for both APIs.
    pub token_url: String,
}

/// `[accounts]`: the firm's account system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSection {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default = "default_accounts_scope")]
    pub scope: String,
    #[serde(default = "esg_producer::accounts::default_page_size")]
    pub page_size: u32,
    #[serde(
        default = "esg_producer::accounts::default_timeout",
        with = "humantime_serde"
    )]
    pub timeout: Duration,
    #[serde(default = "esg_producer::accounts::default_max_attempts")]
    pub max_attempts: u32,
    #[serde(
        default = "esg_producer::accounts::default_backoff_base",
        with = "humantime_serde"
    )]
    pub backoff_base: Duration,
    #[serde(
        default = "esg_producer::accounts::default_backoff_cap",
        with = "humantime_serde"
    )]
    pub backoff_cap: Duration,
    #[serde(default = "esg_producer::accounts::default_max_restarts")]
    pub max_restarts: u32,
}

fn default_accounts_scope() -> String {
    "accounts.read".into()
}

/// `[esg_api]`: the vendor's ESG Portfolio Analysis API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsgApiSection {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default = "default_esg_scope")]
    pub scope: String,
    /// This process's share of the tenant quota (the vendor's default quota is 50/s).
    pub rate_limit_per_second: u32,
    /// Requests allowed at once above the rate (GCRA burst); default: one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Most API calls in flight at once in this process.
    pub max_in_flight: usize,
    #[serde(default = "esg_scorer::api::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "esg_scorer::api::default_max_attempts")]
    pub max_attempts: u32,
    #[serde(
        default = "esg_scorer::api::default_backoff_base",
        with = "humantime_serde"
    )]
    pub backoff_base: Duration,
    #[serde(
        default = "esg_scorer::api::default_backoff_cap",
        with = "humantime_serde"
    )]
    pub backoff_cap: Duration,
    #[serde(
        default = "esg_scorer::api::default_max_retry_after",
        with = "humantime_serde"
    )]
    pub max_retry_after: Duration,
}

fn default_esg_scope() -> String {
    "esg.read".into()
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Where the day's files are written.
    pub dir: PathBuf,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Where the stages keep their state (and the embedded log, unless `[bus] path` says otherwise).
    pub dir: PathBuf,
}

/// Which transport carries the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// One SQLite file on this machine.
    #[default]
    Embedded,
    /// Apache Kafka.
    Kafka,
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSection {
    #[serde(default)]
    pub kind: BusKind,
    /// The embedded log's file; default `<state.dir>/bus.db`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_events_retention", with = "humantime_serde")]
    pub account_events_retention: Duration,
    #[serde(default = "default_triggers_retention", with = "humantime_serde")]
    pub triggers_retention: Duration,
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection {
            kind: BusKind::Embedded,
            path: None,
            topic_prefix: default_topic_prefix(),
            partitions: default_partitions(),
            account_events_retention: default_events_retention(),
            triggers_retention: default_triggers_retention(),
        }
    }
}

fn default_topic_prefix() -> String {
    String::new()
}
fn default_partitions() -> i32 {
    12
}
fn default_events_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_triggers_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address to serve `/metrics` on, e.g. `0.0.0.0:9898`; none: no endpoint.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[schedule]`: when `esg run` (without `--once`) starts each day's run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Local wall-clock time of the daily run (`HH:MM`).
    pub at: String,
    /// IANA time zone of `at`.
    pub time_zone: String,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            at: "05:00".into(),
            time_zone: "America/Chicago".into(),
        }
    }
}

/// `[run]`: when a run must be done.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Time zone of business dates, the schedule and the deadline.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Local time by which a day's file must be written (`HH:MM`).
    #[serde(default = "default_deadline")]
    pub deadline: String,
    /// Longest a run may take when started late (a catch-up or a re-run): its deadline is then
    /// the start plus this.
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    pub max_duration: Duration,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            time_zone: default_time_zone(),
            deadline: default_deadline(),
            max_duration: default_max_duration(),
        }
    }
}

fn default_time_zone() -> String {
    "America/Chicago".into()
}
fn default_deadline() -> String {
    "09:00".into()
}
fn default_max_duration() -> Duration {
    Duration::from_secs(4 * 3600)
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (for a person) or `json` (one object per line, for the log system).
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter, e.g. `info` or `info,esg_scorer=debug`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Also write JSON lines to a daily-rotating file `esg.YYYY-MM-DD.log` in this directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Rotated files kept in `dir`.
    #[serde(default = "default_keep_files")]
    pub keep_files: usize,
}

fn default_keep_files() -> usize {
    30
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: default_log_format(),
            level: default_log_level(),
            dir: None,
            keep_files: default_keep_files(),
        }
    }
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub auth: AuthSection,
    pub accounts: AccountsSection,
    pub esg_api: EsgApiSection,
    pub output: OutputSection,
    pub state: StateSection,
    #[serde(default)]
    pub bus: BusSection,
    /// `[kafka]`: used when `bus.kind = "kafka"`.
    #[serde(default)]
    pub kafka: esg_bus::kafka::KafkaConfig,
    #[serde(default)]
    pub run: RunSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[alerts]`: email, PagerDuty and webhook; no channel table, no alerts from the job.
    #[serde(default)]
    pub alerts: esg_alerts::AlertsConfig,
    #[serde(default)]
    pub producer: esg_producer::ProducerConfig,
    #[serde(default)]
    pub scorer: esg_scorer::ScorerConfig,
    #[serde(default)]
    pub log: LogSection,
}

impl Config {
    /// Reads, overrides from the environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text` (named `origin` in errors) with the given environment.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
        apply_env(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner().to_string();
                // Unknown keys are reported by serde on the table that holds them: name the key.
                let key = match unknown_field(&inner) {
                    Some(field) if key == "." => field,
                    Some(field) => format!("{key}.{field}"),
                    None => key,
                };
                ConfigError::Key {
                    path: origin.to_owned(),
                    key,
                    message: inner,
                }
            })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Key {
            path: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        for (key, url) in [
            ("auth.token_url", &self.auth.token_url),
            ("accounts.url", &self.accounts.url),
            ("esg_api.url", &self.esg_api.url),
        ] {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| bad(key, format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad(key, format!("{url:?} must be http or https")));
            }
        }
        if self.esg_api.rate_limit_per_second == 0 {
            return Err(bad(
                "esg_api.rate_limit_per_second",
                "must be at least 1".into(),
            ));
        }
        if self.esg_api.burst == Some(0) {
            return Err(bad("esg_api.burst", "must be at least 1".into()));
        }
        if self.esg_api.max_in_flight == 0 || self.esg_api.max_in_flight > 10_000 {
            return Err(bad(
                "esg_api.max_in_flight",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.esg_api.client_id.is_empty() {
            return Err(bad("esg_api.client_id", "must not be empty".into()));
        }
        if self.accounts.client_id.is_empty() {
            return Err(bad("accounts.client_id", "must not be empty".into()));
        }
        self.esg_api_client_config()
            .validate()
            .map_err(|e| bad("esg_api", e.to_string()))?;
        self.accounts_client_config()
            .validate()
            .map_err(|e| bad("accounts", e.to_string()))?;
        if !(1..=1000).contains(&self.bus.partitions) {
            return Err(bad("bus.partitions", "must be between 1 and 1000".into()));
        }
        if self.bus.kind == BusKind::Kafka {
            let k = &self.kafka;
            if k.bootstrap_servers.trim().is_empty() {
                return Err(bad(
                    "kafka.bootstrap_servers",
                    "must name at least one broker (host:port)".into(),
                ));
            }
            if k.replication_factor == 0 || k.replication_factor < -1 {
                return Err(bad(
                    "kafka.replication_factor",
                    "must be -1 (the broker's default) or at least 1".into(),
                ));
            }
            if k.session_timeout < Duration::from_secs(6)
                || k.session_timeout > Duration::from_secs(300)
            {
                return Err(bad(
                    "kafka.session_timeout",
                    "must be between 6s and 300s (the brokers' default group limits)".into(),
                ));
            }
            if k.operation_timeout.is_zero() {
                return Err(bad(
                    "kafka.operation_timeout",
                    "must be greater than zero".into(),
                ));
            }
            let url = &k.schema_registry.url;
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                bad(
                    "kafka.schema_registry.url",
                    format!("{url:?} is not a URL: {e}"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad(
                    "kafka.schema_registry.url",
                    format!("{url:?} must be http or https"),
                ));
            }
            for key in ["bootstrap.servers", "group.id", "enable.auto.commit"] {
                if k.properties.contains_key(key) {
                    return Err(bad(
                        &format!("kafka.properties.{key}"),
                        "is set by the job itself and cannot be overridden".into(),
                    ));
                }
            }
        }
        self.time_zone().map_err(|m| bad("run.time_zone", m))?;
        self.deadline_time().map_err(|m| bad("run.deadline", m))?;
        self.schedule().map_err(|(key, m)| bad(key, m))?;
        esg_alerts::Alerter::new(self.alerts.clone()).map_err(|e| bad("alerts", e.to_string()))?;
        if self.run.max_duration.is_zero() {
            return Err(bad("run.max_duration", "must be greater than zero".into()));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(bad(
                "log.format",
                format!("{:?}: must be \"text\" or \"json\"", self.log.format),
            ));
        }
        if self.producer.emit_batch == 0 {
            return Err(bad("producer.emit_batch", "must be at least 1".into()));
        }
        if self.scorer.flush_max == 0 {
            return Err(bad("scorer.flush_max", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The ESG API client configuration.
    pub fn esg_api_client_config(&self) -> esg_scorer::api::ApiClientConfig {
        let mut c = esg_scorer::api::ApiClientConfig::new(&self.esg_api.url);
        c.timeout = self.esg_api.timeout;
        c.max_attempts = self.esg_api.max_attempts;
        c.backoff_base = self.esg_api.backoff_base;
        c.backoff_cap = self.esg_api.backoff_cap;
        c.max_retry_after = self.esg_api.max_retry_after;
        c
    }

    /// The account system client configuration.
    pub fn accounts_client_config(&self) -> esg_producer::accounts::AccountsClientConfig {
        esg_producer::accounts::AccountsClientConfig {
            url: self.accounts.url.clone(),
            page_size: self.accounts.page_size,
            timeout: self.accounts.timeout,
            max_attempts: self.accounts.max_attempts,
            backoff_base: self.accounts.backoff_base,
            backoff_cap: self.accounts.backoff_cap,
            max_restarts: self.accounts.max_restarts,
        }
    }

    /// The configured time zone.
    pub fn time_zone(&self) -> Result<Tz, String> {
        self.run
            .time_zone
            .parse::<Tz>()
            .map_err(|e| format!("{:?} is not an IANA time zone: {e}", self.run.time_zone))
    }

    /// The daily schedule of `esg run`; the error names the key.
    pub fn schedule(&self) -> Result<crate::schedule::Schedule, (&'static str, String)> {
        let at = NaiveTime::parse_from_str(&self.schedule.at, "%H:%M").map_err(|e| {
            (
                "schedule.at",
                format!("{:?} is not HH:MM: {e}", self.schedule.at),
            )
        })?;
        let tz = self.schedule.time_zone.parse::<Tz>().map_err(|e| {
            (
                "schedule.time_zone",
                format!(
                    "{:?} is not an IANA time zone: {e}",
                    self.schedule.time_zone
                ),
            )
        })?;
        Ok(crate::schedule::Schedule::new(at, tz))
    }

    /// The configured deadline as a local time.
    pub fn deadline_time(&self) -> Result<NaiveTime, String> {
        NaiveTime::parse_from_str(&self.run.deadline, "%H:%M")
            .map_err(|e| format!("{:?} is not HH:MM: {e}", self.run.deadline))
    }

    /// The embedded log's file.
    pub fn bus_path(&self) -> PathBuf {
        self.bus
            .path
            .clone()
            .unwrap_or_else(|| self.state.dir.join("bus.db"))
    }

    /// The topic settings.
    pub fn topics(&self) -> esg_bus::TopicsConfig {
        esg_bus::TopicsConfig {
            prefix: self.bus.topic_prefix.clone(),
            partitions: self.bus.partitions,
            account_events_retention: self.bus.account_events_retention,
            triggers_retention: self.bus.triggers_retention,
        }
    }

    /// Deadline of a daily run of `business_date` triggered at `now`: the configured local
    /// time on that date, or, for a run started after it (a catch-up), `now + max_duration`.
    pub fn deadline_for(
        &self,
        business_date: chrono::NaiveDate,
        now: chrono::DateTime<chrono::Utc>,
    ) -> chrono::DateTime<chrono::Utc> {
        let late = now + chrono::Duration::from_std(self.run.max_duration).unwrap_or_default();
        let (Ok(tz), Ok(time)) = (self.time_zone(), self.deadline_time()) else {
            return late;
        };
        let local = business_date.and_time(time);
        let configured = tz
            .from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&chrono::Utc));
        match configured {
            Some(d) if d > now => d.min(late),
            _ => late,
        }
    }
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Applies `ESG__SECTION__KEY=value` overrides. The value is read as a TOML value when it is
/// one (`100`, `true`, `"x"`), otherwise as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env {
                var,
                message: "expected ESG__SECTION__KEY (or ESG__SECTION__TABLE__KEY)".into(),
            });
        }
        let mut path = path;
        // librdkafka property names use dots, which environment variable names cannot:
        // ESG__KAFKA__PROPERTIES__SASL_PASSWORD sets kafka.properties."sasl.password".
        if path.len() == 3 && path[0] == "kafka" && path[1] == "properties" {
            path[2] = path[2].replace('_', ".");
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let (key, tables) = path.split_last().unwrap_or((&path[0], &[]));
        let mut section = &mut *table;
        for name in tables {
            let entry = section
                .entry(name.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(inner) = entry.as_table_mut() else {
                return Err(ConfigError::Env {
                    var,
                    message: format!("`{name}` is not a section"),
                });
            };
            section = inner;
        }
        section.insert(key.clone(), value);
    }
    Ok(())
}

/// A complete example configuration for the simulator at `base_url` (used by `esg demo`, the
/// tests, and `docs`).
pub fn example(base_url: &str, output: &Path, state: &Path) -> String {
    format!(
        r#"[auth]
token_url = "{base_url}/oauth2/token"

[accounts]
url = "{base_url}"
client_id = "esg-accounts"
client_secret = "accounts-secret"

[esg_api]
url = "{base_url}"
client_id = "esg-scorer"
client_secret = "scorer-secret"
rate_limit_per_second = 50
max_in_flight = 64

[output]
dir = "{output}"

[state]
dir = "{state}"
"#,
        output = output.display(),
        state = state.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        example(
            "http://127.0.0.1:9",
            Path::new("/tmp/out"),
            Path::new("/tmp/state"),
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "esg.toml", Vec::new())
    }

    #[test]
    fn the_example_parses_with_defaults() {
        let c = parse(&base()).expect("parses");
        assert_eq!(c.esg_api.rate_limit_per_second, 50);
        assert_eq!(c.esg_api.max_in_flight, 64);
        assert_eq!(c.esg_api.max_attempts, 3);
        assert_eq!(c.bus.kind, BusKind::Embedded);
        assert_eq!(c.bus_path(), PathBuf::from("/tmp/state/bus.db"));
        assert_eq!(c.run.time_zone, "America/Chicago");
        assert_eq!(c.producer.refresh_after, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = base().replace("max_in_flight = 64", "max_in_flight = 64\nmax_inflight = 3");
        let err = parse(&text).expect_err("unknown key");
        let s = err.to_string();
        assert!(s.contains("esg_api.max_inflight"), "{s}");
        let err = parse(&format!("{}\n[bogus]\nx = 1\n", base())).expect_err("unknown section");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let text = base().replace("rate_limit_per_second = 50\n", "");
        let err = parse(&text).expect_err("missing");
        assert!(err.to_string().contains("rate_limit_per_second"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, key) in [
            (
                "rate_limit_per_second = 50",
                "rate_limit_per_second = 0",
                "esg_api.rate_limit_per_second",
            ),
            (
                "max_in_flight = 64",
                "max_in_flight = 0",
                "esg_api.max_in_flight",
            ),
            (
                "url = \"http://127.0.0.1:9\"\nclient_id = \"esg-scorer\"",
                "url = \"nope\"\nclient_id = \"esg-scorer\"",
                "esg_api.url",
            ),
            (
                "rate_limit_per_second = 50",
                "rate_limit_per_second = \"fast\"",
                "esg_api.rate_limit_per_second",
            ),
        ] {
            let err = parse(&base().replace(from, to)).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let err = parse(&format!(
            "{}\n[run]\ntime_zone = \"Mars/Olympus\"\n",
            base()
        ))
        .expect_err("tz");
        assert!(err.to_string().contains("run.time_zone"), "{err}");
        let err = parse(&format!("{}\n[run]\ndeadline = \"9am\"\n", base())).expect_err("deadline");
        assert!(err.to_string().contains("run.deadline"), "{err}");
        let err = parse("not toml [").expect_err("syntax");
        assert!(matches!(err, ConfigError::Syntax { .. }));
    }

    #[test]
    fn kafka_mode_is_configured_and_checked() {
        let kafka = format!(
            "{}\n[bus]\nkind = \"kafka\"\n[kafka]\nbootstrap_servers = \"k1:9092,k2:9092\"\nreplication_factor = 3\n[kafka.schema_registry]\nurl = \"http://registry:8081\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
            base()
        );
        let c = parse(&kafka).expect("kafka config");
        assert_eq!(c.bus.kind, BusKind::Kafka);
        assert_eq!(c.kafka.bootstrap_servers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.replication_factor, 3);
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");

        // A librdkafka secret from the environment: underscores become dots, and it never prints.
        let c = Config::parse(
            &kafka,
            "test.toml",
            vec![(
                "ESG__KAFKA__PROPERTIES__SASL_PASSWORD".to_owned(),
                "hunter2".to_owned(),
            )],
        )
        .expect("env override");
        assert_eq!(c.kafka.properties["sasl.password"], "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));

        for (from, to, key) in [
            (
                "replication_factor = 3",
                "replication_factor = 0",
                "kafka.replication_factor",
            ),
            (
                "bootstrap_servers = \"k1:9092,k2:9092\"",
                "bootstrap_servers = \" \"",
                "kafka.bootstrap_servers",
            ),
            (
                "url = \"http://registry:8081\"",
                "url = \"registry\"",
                "kafka.schema_registry.url",
            ),
            (
                "\"security.protocol\" = \"SASL_SSL\"",
                "\"group.id\" = \"mine\"",
                "kafka.properties.group.id",
            ),
        ] {
            let err = parse(&kafka.replace(from, to)).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let err = parse(&kafka.replace(
            "replication_factor = 3\n",
            "replication_factor = 3\nsession_timeout = \"1s\"\n",
        ))
        .expect_err("session timeout");
        assert!(err.to_string().contains("kafka.session_timeout"), "{err}");
    }

    #[test]
    fn the_schedule_defaults_to_five_in_chicago_and_is_checked() {
        let c = parse(&base()).expect("base");
        let s = c.schedule().expect("schedule");
        assert_eq!(s.at, NaiveTime::from_hms_opt(5, 0, 0).expect("t"));
        assert_eq!(s.tz, chrono_tz::America::Chicago);
        let c = parse(&format!(
            "{}\n[schedule]\nat = \"06:30\"\ntime_zone = \"Europe/London\"\n",
            base()
        ))
        .expect("custom");
        assert_eq!(c.schedule().expect("s").tz, chrono_tz::Europe::London);
        let err = parse(&format!("{}\n[schedule]\nat = \"5am\"\n", base())).expect_err("at");
        assert!(err.to_string().contains("schedule.at"), "{err}");
        let err = parse(&format!(
            "{}\n[schedule]\ntime_zone = \"Chicago\"\n",
            base()
        ))
        .expect_err("tz");
        assert!(err.to_string().contains("schedule.time_zone"), "{err}");
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            (
                "ESG__ESG_API__RATE_LIMIT_PER_SECOND".to_owned(),
                "7".to_owned(),
            ),
            (
                "ESG__ESG_API__CLIENT_SECRET".to_owned(),
                "from-env".to_owned(),
            ),
            ("ESG__BUS__TOPIC_PREFIX".to_owned(), "prod.".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let c = Config::parse(&base(), "esg.toml", env).expect("parses");
        assert_eq!(c.esg_api.rate_limit_per_second, 7);
        assert_eq!(c.esg_api.client_secret.expose(), "from-env");
        assert_eq!(c.bus.topic_prefix, "prod.");
        let err = Config::parse(
            &base(),
            "esg.toml",
            vec![("ESG__X".to_owned(), "1".to_owned())],
        )
        .expect_err("bad var");
        assert!(err.to_string().contains("ESG__X"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(&base()).expect("parses");
        let debug = format!("{c:?}");
        assert!(!debug.contains("scorer-secret") && !debug.contains("accounts-secret"));
    }

    #[test]
    fn deadline_is_nine_central_or_start_plus_window_when_late() {
        let c = parse(&base()).expect("parses");
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
        // 05:00 CST = 11:00 UTC; 09:00 CST = 15:00 UTC.
        let at_five = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
            .single()
            .expect("t");
        assert_eq!(
            c.deadline_for(date, at_five),
            chrono::Utc
                .with_ymd_and_hms(2026, 11, 23, 15, 0, 0)
                .single()
                .expect("t")
        );
        // In July (CDT) 09:00 is 14:00 UTC.
        let july = chrono::NaiveDate::from_ymd_opt(2026, 7, 1).expect("date");
        let early = chrono::Utc
            .with_ymd_and_hms(2026, 7, 1, 10, 0, 0)
            .single()
            .expect("t");
        assert_eq!(
            c.deadline_for(july, early),
            chrono::Utc
                .with_ymd_and_hms(2026, 7, 1, 14, 0, 0)
                .single()
                .expect("t")
        );
        // Started after the deadline: four hours from the start.
        let late = chrono::Utc
            .with_ymd_and_hms(2026, 11, 24, 2, 0, 0)
            .single()
            .expect("t");
        assert_eq!(
            c.deadline_for(date, late),
            late + chrono::Duration::hours(4)
        );
    }
}

//! The operator's configuration: one TOML file, every key also settable from the environment.
//!
//! Parse raw, then validate: [`Config::load`] reads the file, applies environment overrides
//! (`ESG__SECTION__KEY=value`, e.g. `ESG__ESG_API__CLIENT_SECRET=...`), deserialises with unknown
//! keys refused, and checks every value once, with errors that name the key (or the environment
//! variable the value came from) in plain words. Times of day and time zones are read once into
//! typed values. Secrets are [`Secret`]s: they never print, and [`Config::to_masked_toml`]
//! shows them as `********`.
//!
//! The sections of the account system and of the ESG API are the library clients' own
//! configurations ([`AccountsClientConfig`], [`ApiClientConfig`]): each key is declared once,
//! where it is used. `esg.example.toml` at the root of the repository documents every key; a
//! test keeps it complete.

mod env;
#[cfg(test)]
mod keys;
mod messages;
mod secrets;
pub use secrets::SecretSource;

pub use env::ENV_PREFIX;
pub use esg_producer::accounts::AccountsClientConfig;
pub use esg_scorer::api::ApiClientConfig;

use chrono::{NaiveTime, TimeZone};
use chrono_tz::Tz;
use esg_auth::Secret;
use messages::Problem;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the file and key, or the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: line {line}, column {column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// OAuth 2.0 token endpoint (client credentials) for both APIs.
    pub token_url: String,
    /// PEM bundle of the CA certificates that sign the token endpoint's certificate (the firm's
    /// private CA); when set only these are trusted, not the system's. None: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the token endpoint (mutual TLS), with
    /// `tls_client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_client_cert_file` (PKCS#8, RSA or EC); readable by the job only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_key_file: Option<PathBuf>,
}

impl AuthSection {
    /// The TLS files of this client, for [`esg_auth::tls::ClientTls::load`].
    pub fn tls_files(&self) -> esg_auth::tls::TlsFiles<'_> {
        esg_auth::tls::TlsFiles {
            ca_file: self.tls_ca_file.as_deref(),
            client_cert_file: self.tls_client_cert_file.as_deref(),
            client_key_file: self.tls_client_key_file.as_deref(),
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Where the day's files are written.
    pub dir: PathBuf,
    /// The group that may read the outputs (a name, or a numeric gid): the output directory is
    /// given to it with the set-group-ID bit, so every file written there is of that group
    /// (mode 0640). Unset: the directory's group as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Also write each day's ratings as Parquet for the warehouse, under
    /// `<dir>/parquet/business_date=YYYY-MM-DD/` (docs/warehouse.md). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parquet: bool,
}

impl OutputSection {
    /// The gid of `group`, looked up through the system's name service (files, LDAP, ...).
    pub fn gid(&self) -> Result<Option<u32>, String> {
        let Some(group) = self.group.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if group.is_empty() {
            return Err("is empty: name a group, or leave the key out".into());
        }
        if let Ok(gid) = group.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
            Ok(None) => Err(format!("no group {group:?} on this machine")),
            Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
        }
    }
}

/// `[encryption]`: the outputs are age-encrypted to these recipients (X25519, `age1…`); without
/// the section they are written in plaintext, and the job says so when it starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// Recipients, as `age-keygen -y KEY` prints them.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of recipients, one a line (`#` comments and blank lines allowed), added to
    /// `recipients`: the form `age-keygen` and the age CLI's `-R` use.
    #[serde(default)]
    pub recipients_file: Option<PathBuf>,
}

impl EncryptionSection {
    /// Every recipient, of the list and of the file, checked; the error names the key.
    pub fn protection(&self) -> Result<esg_assembler::encryption::Protection, (String, String)> {
        let mut all = self.recipients.clone();
        let listed = all.len();
        if let Some(path) = &self.recipients_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                (
                    "encryption.recipients_file".to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        use esg_assembler::encryption::{Protection, RecipientError};
        Protection::age(&all).map_err(|e| match e {
            RecipientError::Missing => (
                "encryption.recipients".to_owned(),
                "the section is there but names no recipient (give `recipients` or `recipients_file`)".to_owned(),
            ),
            RecipientError::Invalid { index, reason } if index <= listed => (
                "encryption.recipients".to_owned(),
                format!("entry {index} is not an age X25519 recipient (age1… as `age-keygen -y` prints it): {reason}"),
            ),
            RecipientError::Invalid { index, reason } => (
                "encryption.recipients_file".to_owned(),
                format!(
                    "recipient {} of the file is not an age X25519 recipient (age1… as `age-keygen -y` prints it): {reason}",
                    index - listed
                ),
            ),
        })
    }
}

/// `[state]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Where the stages keep their state (and the embedded log, unless `[bus] path` says otherwise).
    pub dir: PathBuf,
    /// A file holding the key (64 hex digits) that encrypts the stores and the embedded log
    /// with SQLCipher; relative: in `$CREDENTIALS_DIRECTORY`. Unset: plaintext SQLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_file: Option<PathBuf>,
    /// The key of `encryption_key_file`, read once when the configuration is loaded.
    #[serde(skip)]
    pub key: Option<esg_bus::store::DbKey>,
}

impl StateSection {
    /// Reads and checks the key of `encryption_key_file` (a relative name in
    /// `credentials_dir`); `None` without the key.
    fn read_key(
        &self,
        credentials_dir: Option<&Path>,
    ) -> Result<Option<esg_bus::store::DbKey>, String> {
        let Some(file) = &self.encryption_key_file else {
            return Ok(None);
        };
        let path = secrets::resolve(&file.to_string_lossy(), credentials_dir)?;
        let mut text = secrets::read_secret(&path)?;
        let key =
            esg_bus::store::DbKey::from_hex(&text).map_err(|m| format!("{}: {m}", path.display()));
        zeroize::Zeroize::zeroize(&mut text);
        key.map(Some)
    }
}

/// `[retention]`: how long files are kept; unset, a kind is kept forever.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// The day files (ratings, errors, summaries), locally and on every delivery target, by the
    /// business date in their names, e.g. `"7y"`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub files: Option<Duration>,
    /// The log files of `[log] dir`, by the date in their names, e.g. `"400d"`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub logs: Option<Duration>,
    /// Closed monthly segments of the audit log, by their last entry, e.g. `"7y"`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub audit: Option<Duration>,
    /// The runs the stores remember (phases, listings, counts, the facts of each run), by
    /// business date, e.g. `"400d"`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub history: Option<Duration>,
    /// The last score of an account that left the roster, kept by the compacted topics, the
    /// stores and the embedded log: removed this long after it was scored, e.g. `"400d"`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub departed: Option<Duration>,
}

impl RetentionSection {
    /// True when no kind has a period: nothing is ever purged.
    pub fn is_empty(&self) -> bool {
        [
            self.files,
            self.logs,
            self.audit,
            self.history,
            self.departed,
        ]
        .iter()
        .all(Option::is_none)
    }
}

/// `[audit]`: the audit trail of the files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Where the audit log and its checkpoints are kept; default `<state.dir>/audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The Ed25519 key (`esg audit keygen`) that signs a checkpoint of the log after each run;
    /// relative: in `$CREDENTIALS_DIRECTORY`. Unset: no checkpoints (the chain alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// The key of `signing_key_file`, read once when the configuration is loaded.
    #[serde(skip)]
    pub signer: Option<std::sync::Arc<esg_audit::note::NoteSigner>>,
}

impl AuditSection {
    fn read_key(
        &self,
        credentials_dir: Option<&Path>,
    ) -> Result<Option<std::sync::Arc<esg_audit::note::NoteSigner>>, String> {
        let Some(file) = &self.signing_key_file else {
            return Ok(None);
        };
        let path = secrets::resolve(&file.to_string_lossy(), credentials_dir)?;
        let mut text = secrets::read_secret(&path)?;
        let signer = esg_audit::note::NoteSigner::parse(&text)
            .map_err(|e| format!("{}: {e}", path.display()));
        zeroize::Zeroize::zeroize(&mut text);
        signer.map(|s| Some(std::sync::Arc::new(s)))
    }
}

/// Which transport carries the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// One SQLite file on this machine.
    #[default]
    Embedded,
    /// Apache Kafka.
    Kafka,
}

/// `[bus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Kafka: the compacted topics' (`esg.accounts`, `esg.scores`) `max.compaction.lag.ms` and
    /// `segment.ms`: a record superseded by a newer one or by a tombstone (an account that left,
    /// an erasure) is compacted away at most about this long after it was written. Checked at
    /// start-up on existing topics. Default [`default_compaction_lag`].
    #[serde(default = "default_compaction_lag", with = "humantime_serde")]
    pub compaction_lag: Duration,
    /// Kafka: the compacted topics' `delete.retention.ms`: how long a tombstone is kept once
    /// compaction reached it, then it goes too. The embedded log drops tombstones older than this
    /// at the start of each run. Default [`default_tombstone_retention`].
    #[serde(default = "default_tombstone_retention", with = "humantime_serde")]
    pub tombstone_retention: Duration,
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
            compaction_lag: default_compaction_lag(),
            tombstone_retention: default_tombstone_retention(),
        }
    }
}

/// Default `bus.topic_prefix`: none.
pub fn default_topic_prefix() -> String {
    String::new()
}
/// Default `bus.partitions`: 12.
pub fn default_partitions() -> i32 {
    12
}
/// Default `bus.account_events_retention`: 7 days.
pub fn default_events_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
/// Default `bus.triggers_retention`: 30 days.
pub fn default_triggers_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
/// Default `bus.compaction_lag`: 1 day.
pub fn default_compaction_lag() -> Duration {
    esg_bus::DEFAULT_COMPACTION_LAG
}
/// Default `bus.tombstone_retention`: 1 day.
pub fn default_tombstone_retention() -> Duration {
    esg_bus::DEFAULT_TOMBSTONE_RETENTION
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address to serve `/metrics` on, e.g. `0.0.0.0:9898`; port 0 takes a free port and logs
    /// it; none: no endpoint.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[schedule]`: when `esg run` (without `--once`) starts each day's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// Local wall-clock time of the daily run (`HH:MM`). Default [`default_schedule_at`].
    #[serde(default = "default_schedule_at", with = "time_of_day")]
    pub at: NaiveTime,
    /// IANA time zone of `at` and `preflight_at`. Default [`default_time_zone`].
    #[serde(default = "default_time_zone", with = "time_zone")]
    pub time_zone: Tz,
    /// Local time of an early pre-flight check each day (`HH:MM`, before `at`), which alerts
    /// before the run is due when a destination, a token endpoint or an API is not ready.
    /// None: the pre-flight runs only at the start of each run.
    #[serde(
        default,
        with = "optional_time_of_day",
        skip_serializing_if = "Option::is_none"
    )]
    pub preflight_at: Option<NaiveTime>,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            at: default_schedule_at(),
            time_zone: default_time_zone(),
            preflight_at: None,
        }
    }
}

/// Default `schedule.at`: 05:00.
pub fn default_schedule_at() -> NaiveTime {
    NaiveTime::from_hms_opt(5, 0, 0).unwrap_or_default()
}

/// `[run]`: when a run must be done.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Time zone of business dates and the deadline. Default [`default_time_zone`].
    #[serde(default = "default_time_zone", with = "time_zone")]
    pub time_zone: Tz,
    /// Local time by which a day's file must be written (`HH:MM`). Default [`default_deadline`].
    #[serde(default = "default_deadline", with = "time_of_day")]
    pub deadline: NaiveTime,
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

/// Default `run.time_zone` and `schedule.time_zone`: America/Chicago.
pub fn default_time_zone() -> Tz {
    chrono_tz::America::Chicago
}
/// Default `run.deadline`: 09:00.
pub fn default_deadline() -> NaiveTime {
    NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default()
}
/// Default `run.max_duration`: 4 hours.
pub fn default_max_duration() -> Duration {
    Duration::from_secs(4 * 3600)
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For a person: text on stderr.
    #[default]
    Text,
    /// For the log system: one JSON object per line on stdout.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (for a person) or `json` (one object per line, for the log system).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: a level (`trace`, `debug`, `info`, `warn`, `error`, `off`), optionally
    /// with `target=level` directives, e.g. `info,esg_scorer=debug`. `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Also write JSON lines to a daily-rotating file `esg.YYYY-MM-DD.log` in this directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Rotated files kept in `dir`.
    #[serde(default = "default_keep_files")]
    pub keep_files: usize,
}

/// Default `log.keep_files`: 30.
pub fn default_keep_files() -> usize {
    30
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::default(),
            level: default_log_level(),
            dir: None,
            keep_files: default_keep_files(),
        }
    }
}

/// Default `log.level`: `info`.
pub fn default_log_level() -> String {
    "info".into()
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub auth: AuthSection,
    /// `[accounts]`: the firm's account system.
    pub accounts: AccountsClientConfig,
    /// `[esg_api]`: the vendor's ESG Portfolio Analysis API.
    pub esg_api: ApiClientConfig,
    pub output: OutputSection,
    /// `[encryption]`: absent, the outputs are plaintext.
    #[serde(default)]
    pub encryption: Option<EncryptionSection>,
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
    /// `[audit]`: the audit trail.
    #[serde(default)]
    pub audit: AuditSection,
    /// `[retention]`: how long files and logs are kept.
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[[delivery]]`: where the day's files go once written (none: they stay in `[output]
    /// dir`).
    #[serde(default)]
    pub delivery: Vec<esg_delivery::TargetConfig>,
    /// Where each secret came from (file, environment, configuration file), for
    /// `esg check-config`; never the value.
    #[serde(skip)]
    pub secret_sources: Vec<SecretSource>,
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
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start);
            let (line, column) = line_column(text, start);
            let mut message = e.message().trim().to_owned();
            if bare_word_at(text, start) && !message.contains("quoted") {
                message.push_str(" (text is written in quotes: key = \"value\")");
            }
            ConfigError::Syntax {
                path: origin.to_owned(),
                line,
                column,
                message,
            }
        })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let credentials_dir = env
            .iter()
            .find(|(k, v)| k == "CREDENTIALS_DIRECTORY" && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v));
        let sources = env::apply(&mut table, env)?;
        let files = secrets::read_files(&mut table, credentials_dir.as_deref())
            .map_err(|(key, message)| blame(origin, key, message, &sources))?;
        let mut retyped: Vec<usize> = Vec::new();
        let config = loop {
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table.clone())) {
                Ok(config) => break config,
                Err(e) => {
                    let path = segments(e.path());
                    // A variable read as a number or a boolean where the key wants text (a
                    // numeric password): set it again as the text written, once.
                    let retry = sources
                        .iter()
                        .enumerate()
                        .find(|(i, s)| s.coerced && s.path == path && !retyped.contains(i));
                    if let Some((i, source)) = retry {
                        retyped.push(i);
                        let text = toml::Value::String(source.raw.clone());
                        // The path was set once already, so its tables exist.
                        let _ = env::set(&mut table, &source.path, text);
                        continue;
                    }
                    let (key, message) = describe(path, e.into_inner().message());
                    return Err(blame(origin, key, message, &sources));
                }
            }
        };
        let mut secret_keys = Vec::new();
        secrets::secret_keys(&table, &mut Vec::new(), &mut secret_keys);
        let secret_sources = secret_keys
            .into_iter()
            .map(|key| {
                let from = if let Some((_, file)) = files.iter().find(|(k, _)| *k == key) {
                    format!("file {}", file.display())
                } else if let Some(s) = sources.iter().rev().find(|s| s.covers(&key)) {
                    format!("environment {}", s.var)
                } else {
                    format!("configuration file {origin}")
                };
                SecretSource {
                    key: join_key(&key),
                    from,
                }
            })
            .collect();
        secrets::wipe(&mut table, &mut Vec::new());
        let mut config = config;
        config.secret_sources = secret_sources;
        config
            .validate()
            .map_err(|(key, message)| blame(origin, split_key(&key), message, &sources))?;
        config.state.key =
            config
                .state
                .read_key(credentials_dir.as_deref())
                .map_err(|message| {
                    let key = split_key("state.encryption_key_file");
                    blame(origin, key, message, &sources)
                })?;
        config.audit.signer =
            config
                .audit
                .read_key(credentials_dir.as_deref())
                .map_err(|message| {
                    let key = split_key("audit.signing_key_file");
                    blame(origin, key, message, &sources)
                })?;
        Ok(config)
    }

    /// Checks every value that its type does not already check; the error is the key (dotted)
    /// and what is wrong with it.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((key.to_owned(), message));
        for (section, url, files) in [
            (
                "auth.token_url",
                &self.auth.token_url,
                self.auth.tls_files(),
            ),
            (
                "accounts.url",
                &self.accounts.url,
                self.accounts.tls_files(),
            ),
            ("esg_api.url", &self.esg_api.url, self.esg_api.tls_files()),
        ] {
            let key = section;
            let section = section.split_once('.').map_or(section, |(s, _)| s);
            // The URL itself is not echoed: it may carry credentials in its user-info part.
            let parsed = match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => u,
                Ok(_) => return bad(key, "must be an https:// URL".into()),
                Err(e) => return bad(key, format!("is not a URL: {e}")),
            };
            esg_auth::tls::check_transport(&parsed).map_err(|m| (key.to_owned(), m))?;
            if parsed.scheme() == "http" && files.any() {
                return bad(
                    key,
                    format!("is plain http:// but {section}.tls_* files are set; use https://"),
                );
            }
            // Read and checked now, so that a bad file is a configuration error naming its key.
            esg_auth::tls::ClientTls::load(&files)
                .map_err(|e| (format!("{section}.{}", e.key), e.message))?;
        }
        for (section, client_id, secret) in [
            (
                "accounts",
                &self.accounts.client_id,
                &self.accounts.client_secret,
            ),
            (
                "esg_api",
                &self.esg_api.client_id,
                &self.esg_api.client_secret,
            ),
        ] {
            if client_id.trim().is_empty() {
                return bad(&format!("{section}.client_id"), "must be set".into());
            }
            if secret.expose().is_empty() {
                let var = format!(
                    "{ENV_PREFIX}{}__CLIENT_SECRET",
                    section.to_ascii_uppercase()
                );
                return bad(
                    &format!("{section}.client_secret"),
                    format!(
                        "must be set (as {section}.client_secret_file, a file of mode 0600, \
                         or in the environment as {var})"
                    ),
                );
            }
        }
        self.output
            .gid()
            .map_err(|m| ("output.group".to_owned(), m))?;
        let ratio = self.accounts.min_active_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return bad(
                "accounts.min_active_ratio",
                format!(
                    "must be between 0 and 1 (a share of the last run's accounts), got {ratio}"
                ),
            );
        }
        if let Err(message) = self.accounts.validate() {
            // The client names its key first: `page_size: must be ...`.
            return Err(match message.split_once(": ") {
                Some((key, rest)) if !key.contains(' ') => (format!("accounts.{key}"), rest.into()),
                _ => ("accounts".into(), message),
            });
        }
        if self.esg_api.rate_limit_per_second == 0 {
            return bad("esg_api.rate_limit_per_second", "must be at least 1".into());
        }
        if self.esg_api.burst == Some(0) {
            return bad("esg_api.burst", "must be at least 1".into());
        }
        if self.esg_api.max_in_flight == 0 || self.esg_api.max_in_flight > 10_000 {
            return bad(
                "esg_api.max_in_flight",
                "must be between 1 and 10000".into(),
            );
        }
        if let Err(e) = self.esg_api.validate() {
            return Err(match e {
                esg_scorer::api::ApiConfigError::Invalid { key, reason } => {
                    (format!("esg_api.{key}"), reason)
                }
                other => ("esg_api.url".into(), other.to_string()),
            });
        }
        if !(1..=1000).contains(&self.bus.partitions) {
            return bad("bus.partitions", "must be between 1 and 1000".into());
        }
        // Kafka takes milliseconds: anything shorter than 1ms would be written as 0.
        for (key, value) in [
            ("bus.compaction_lag", self.bus.compaction_lag),
            ("bus.tombstone_retention", self.bus.tombstone_retention),
        ] {
            if value.as_millis() == 0 {
                return bad(key, "must be greater than zero (at least 1ms)".into());
            }
        }
        if self.bus.kind == BusKind::Kafka {
            self.validate_kafka()?;
        }
        if let Err(e) = esg_alerts::Alerter::new(self.alerts.clone()) {
            return Err(match e {
                esg_alerts::AlertConfigError::Invalid { key, reason } => (key, reason),
                other => ("alerts".into(), other.to_string()),
            });
        }
        if self.run.max_duration.is_zero() {
            return bad("run.max_duration", "must be greater than zero".into());
        }
        self.validate_times()?;
        check_log_level(&self.log.level).map_err(|m| ("log.level".to_owned(), m))?;
        if self.producer.emit_batch == 0 {
            return bad("producer.emit_batch", "must be at least 1".into());
        }
        if self.scorer.flush_max == 0 {
            return bad("scorer.flush_max", "must be at least 1".into());
        }
        self.protection()?;
        self.validate_delivery()?;
        Ok(())
    }

    /// Each `[[delivery]]` table (keys named `delivery[N].key`, N from 1): its own checks, a
    /// name no other target has, an S3 endpoint that is https (or loopback), files it names
    /// that can be read.
    fn validate_delivery(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::BTreeSet::new();
        for (i, target) in self.delivery.iter().enumerate() {
            let key = |k: &str| format!("delivery[{}].{k}", i + 1);
            target.validate().map_err(|(k, m)| (key(k), m))?;
            if !names.insert(target.name()) {
                return Err((
                    key("name"),
                    format!(
                        "{:?} names another target too; give each [[delivery]] its own name",
                        target.name()
                    ),
                ));
            }
            if let esg_delivery::TargetConfig::S3(s3) = target {
                if let Some(endpoint) = &s3.endpoint {
                    let parsed = match reqwest::Url::parse(endpoint) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => u,
                        Ok(_) => return Err((key("endpoint"), "must be an https:// URL".into())),
                        Err(e) => return Err((key("endpoint"), format!("is not a URL: {e}"))),
                    };
                    esg_auth::tls::check_transport(&parsed).map_err(|m| (key("endpoint"), m))?;
                }
            }
            // Built now (key and CA files read, no connection made), so that a bad file is a
            // configuration error rather than a failed delivery at 05:40.
            target
                .build()
                .map_err(|e| (key("kind"), e.message.clone()))?;
        }
        Ok(())
    }

    /// The audit log's directory: `[audit] dir`, else `<state.dir>/audit`.
    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.state.dir.join("audit"))
    }

    /// The hash of the configuration in force (its effective TOML, secrets masked), for the
    /// audit trail.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.to_masked_toml().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// How the outputs are kept at rest: plaintext without `[encryption]`, else age-encrypted
    /// to its recipients.
    pub fn protection(&self) -> Result<esg_assembler::encryption::Protection, (String, String)> {
        match &self.encryption {
            None => Ok(esg_assembler::encryption::Protection::Plaintext),
            Some(section) => section.protection(),
        }
    }

    fn validate_kafka(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return bad(
                "kafka.bootstrap_servers",
                "must name at least one broker (host:port)",
            );
        }
        if k.replication_factor == 0 || k.replication_factor < -1 {
            return bad(
                "kafka.replication_factor",
                "must be -1 (the broker's default) or at least 1",
            );
        }
        if k.session_timeout < Duration::from_secs(6)
            || k.session_timeout > Duration::from_secs(300)
        {
            return bad(
                "kafka.session_timeout",
                "must be between 6s and 300s (the brokers' default group limits)",
            );
        }
        if k.operation_timeout.is_zero() {
            return bad("kafka.operation_timeout", "must be greater than zero");
        }
        match reqwest::Url::parse(&k.schema_registry.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                // The registry's credentials (user-info or password) never go out in clear.
                let credentials = !u.username().is_empty()
                    || k.schema_registry.username.is_some()
                    || u.password().is_some()
                    || k.schema_registry.password.is_some();
                if credentials {
                    if let Err(m) = esg_auth::tls::check_transport(&u) {
                        return Err(("kafka.schema_registry.url".into(), m));
                    }
                }
            }
            Ok(_) => return bad("kafka.schema_registry.url", "must be http or https"),
            Err(e) => {
                return Err((
                    "kafka.schema_registry.url".into(),
                    format!("is not a URL: {e}"),
                ))
            }
        }
        for key in ["bootstrap.servers", "group.id", "enable.auto.commit"] {
            if k.properties.contains_key(key) {
                return bad(
                    &format!("kafka.properties.{key}"),
                    "is set by the job itself and cannot be overridden",
                );
            }
        }
        Ok(())
    }

    /// The times of a day in order: the pre-flight before the run, the run before its deadline
    /// (when both are in the same time zone; across zones the order depends on the date).
    fn validate_times(&self) -> Result<(), (String, String)> {
        let (s, r) = (&self.schedule, &self.run);
        if let Some(preflight) = s.preflight_at {
            if preflight >= s.at {
                return Err((
                    "schedule.preflight_at".into(),
                    format!(
                        "{} must come before schedule.at ({}): the pre-flight warns before the run",
                        preflight.format("%H:%M"),
                        s.at.format("%H:%M")
                    ),
                ));
            }
        }
        if s.time_zone == r.time_zone && s.at >= r.deadline {
            return Err((
                "schedule.at".into(),
                format!(
                    "{} must come before run.deadline ({}, same time zone {}): the run would start after its file is due",
                    s.at.format("%H:%M"),
                    r.deadline.format("%H:%M"),
                    r.time_zone.name()
                ),
            ));
        }
        Ok(())
    }

    /// The time zone of business dates and the deadline (`run.time_zone`).
    pub fn time_zone(&self) -> Tz {
        self.run.time_zone
    }

    /// The daily schedule of `esg run`.
    pub fn schedule(&self) -> crate::schedule::Schedule {
        crate::schedule::Schedule::new(self.schedule.at, self.schedule.time_zone)
    }

    /// The daily schedule of the early pre-flight check (`schedule.preflight_at`), if set.
    pub fn preflight_schedule(&self) -> Option<crate::schedule::Schedule> {
        let at = self.schedule.preflight_at?;
        Some(crate::schedule::Schedule::new(at, self.schedule.time_zone))
    }

    /// The configured deadline as a local time (`run.deadline`).
    pub fn deadline_time(&self) -> NaiveTime {
        self.run.deadline
    }

    /// The producer's state store (`<state.dir>/producer.db`).
    pub fn producer_store_path(&self) -> PathBuf {
        self.state.dir.join("producer.db")
    }

    /// The assembler's state store (`<state.dir>/assembler.db`), which holds the history too.
    pub fn assembler_store_path(&self) -> PathBuf {
        self.state.dir.join("assembler.db")
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
            compaction_lag: self.bus.compaction_lag,
            tombstone_retention: self.bus.tombstone_retention,
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
        let local = business_date.and_time(self.run.deadline);
        let configured = self
            .run
            .time_zone
            .from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&chrono::Utc));
        match configured {
            Some(d) if d > now => d.min(late),
            _ => late,
        }
    }

    /// The effective configuration (file, environment and defaults) as TOML, every secret shown
    /// as `********`: client secrets, passwords, routing keys, secret librdkafka properties, the
    /// webhook URL (it often carries a token) and the password part of any URL. What
    /// `esg check-config` prints; it parses back as a configuration.
    pub fn to_masked_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# the configuration cannot be shown as TOML: {e}\n"),
        };
        mask(&mut value, &mut Vec::new());
        toml::to_string(&value)
            .unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"))
    }
}

/// True when the key at `path` holds a secret: its value is never shown, in errors or in
/// [`Config::to_masked_toml`].
fn is_secret_key(path: &[String]) -> bool {
    let strs: Vec<&str> = path.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["kafka", "properties", property] => esg_bus::kafka::is_secret_property(property),
        ["alerts", "webhook", "url"] => true,
        [.., last] => matches!(
            *last,
            "client_secret"
                | "password"
                | "routing_key"
                | "bearer_token"
                | "secret_access_key"
                | "session_token"
                | "private_key_passphrase"
        ),
        [] => false,
    }
}

/// Masks every secret of a serialised configuration in place.
fn mask(value: &mut toml::Value, path: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                path.push(key.clone());
                mask(inner, path);
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                mask(item, path);
            }
        }
        toml::Value::String(text) => {
            if is_secret_key(path) {
                *text = Secret::MASK.to_owned();
            } else if let Ok(mut url) = reqwest::Url::parse(text) {
                if url.password().is_some() && url.set_password(Some(Secret::MASK)).is_ok() {
                    *text = url.to_string();
                }
            }
        }
        _ => {}
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// True when the value at byte `offset` of `text` is a bare word (`kind = kafka`): TOML's own
/// message for it ("invalid boolean") does not say that text wants quotes.
fn bare_word_at(text: &str, offset: usize) -> bool {
    let rest = text.get(offset..).unwrap_or("");
    let word: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'))
        .collect();
    word.chars().next().is_some_and(char::is_alphabetic)
        && !matches!(word.as_str(), "true" | "false" | "inf" | "nan")
}

/// serde_path_to_error's path as keys.
fn segments(path: &serde_path_to_error::Path) -> Vec<String> {
    path.iter()
        .map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => key.clone(),
            serde_path_to_error::Segment::Enum { variant } => variant.clone(),
            serde_path_to_error::Segment::Seq { index } => format!("[{index}]"),
            serde_path_to_error::Segment::Unknown => "?".to_owned(),
        })
        .collect()
}

fn split_key(key: &str) -> Vec<String> {
    key.split('.').map(str::to_owned).collect()
}

fn join_key(key: &[String]) -> String {
    let mut out = String::new();
    for part in key {
        if !out.is_empty() && !part.starts_with('[') {
            out.push('.');
        }
        out.push_str(part);
    }
    out
}

/// The key and the plain-words message of a deserialisation error at `path`. serde reports an
/// unknown or missing key on the table that holds it: the key is named in full.
fn describe(mut path: Vec<String>, serde_message: &str) -> (Vec<String>, String) {
    match messages::problem(serde_message) {
        Problem::UnknownKey { key, known } => {
            // At the top level the path already ends with the unknown name; below, it does not.
            if path.last() != Some(&key) {
                path.push(key);
            }
            let what = if path.len() == 1 { "section" } else { "key" };
            let message = if known.is_empty() {
                format!("unknown {what}")
            } else {
                format!("unknown {what}; the {what}s here are: {}", known.join(", "))
            };
            (path, message)
        }
        Problem::MissingKey { key } => {
            path.push(key);
            (path, "must be set".to_owned())
        }
        Problem::Value(message) => {
            // Never echo a secret that failed to parse.
            let message = if is_secret_key(&path) {
                "is not valid text".to_owned()
            } else {
                message
            };
            (path, message)
        }
    }
}

/// The error of `key`: from the environment variable that set it, if one did, else from the file.
fn blame(
    origin: &str,
    key: Vec<String>,
    message: String,
    sources: &[env::EnvSource],
) -> ConfigError {
    let dotted = join_key(&key);
    match sources.iter().rev().find(|s| s.covers(&key)) {
        Some(source) => ConfigError::Env {
            var: source.shown(),
            message: format!("key `{dotted}`: {message}"),
        },
        None => ConfigError::Key {
            path: origin.to_owned(),
            key: dotted,
            message,
        },
    }
}

/// Refuses a `log.level` that is not a tracing filter of levels: each comma-separated directive
/// is a level or `target=level`. A bare word that is not a level would be taken by tracing as a
/// target name (and silence everything else), so it is refused too.
fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err("must name a level: trace, debug, info, warn, error or off".into());
    }
    for directive in directives {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            return Err(format!(
                "{directive:?} is not a level: use trace, debug, info, warn, error or off, \
                 optionally with target=level directives (\"info,esg_scorer=debug\")"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?} is not a log filter: {e}"))
}

/// `HH:MM` times of day. `HH:MM:00` is taken too (what a TOML local time, `at = 05:00:00`
/// unquoted, reads as).
mod time_of_day {
    use chrono::{NaiveTime, Timelike};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(text: &str) -> Result<NaiveTime, String> {
        let t = text.trim();
        NaiveTime::parse_from_str(t, "%H:%M")
            .ok()
            .or_else(|| {
                NaiveTime::parse_from_str(t, "%H:%M:%S")
                    .ok()
                    .filter(|t| t.second() == 0)
            })
            .ok_or_else(|| format!("{text:?} is not a time of day as HH:MM (such as \"05:00\")"))
    }

    pub fn read<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        read(d)
    }

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:02}:{:02}", t.hour(), t.minute()))
    }
}

/// An optional `HH:MM` time of day.
mod optional_time_of_day {
    use chrono::NaiveTime;
    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveTime>, D::Error> {
        super::time_of_day::read(d).map(Some)
    }

    pub fn serialize<S: Serializer>(t: &Option<NaiveTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::time_of_day::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

/// IANA time zone names (`America/Chicago`, `UTC`).
mod time_zone {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.trim().parse::<Tz>().map_err(|_| {
            serde::de::Error::custom(format!(
                "{name:?} is not an IANA time zone name (such as \"America/Chicago\" or \"UTC\")"
            ))
        })
    }

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }
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

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>();
        Config::parse(text, "esg.toml", env)
    }

    fn hhmm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    #[test]
    fn the_example_parses_with_defaults() {
        let c = parse(&base()).expect("parses");
        assert_eq!(c.esg_api.rate_limit_per_second, 50);
        assert_eq!(c.esg_api.max_in_flight, 64);
        assert_eq!(c.esg_api.max_attempts, 3);
        assert_eq!(c.esg_api.scope, "esg.read");
        assert_eq!(c.accounts.scope, "accounts.read");
        assert_eq!(c.accounts.page_size, 1000);
        assert_eq!(c.accounts.min_active_ratio, 0.8);
        assert_eq!(c.bus.kind, BusKind::Embedded);
        assert_eq!(c.bus_path(), PathBuf::from("/tmp/state/bus.db"));
        assert_eq!(c.time_zone(), chrono_tz::America::Chicago);
        assert_eq!(c.deadline_time(), hhmm(9, 0));
        assert_eq!(c.schedule.preflight_at, None);
        assert!(c.preflight_schedule().is_none());
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.producer.refresh_after, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = base().replace("max_in_flight = 64", "max_in_flight = 64\nmax_inflight = 3");
        let s = parse(&text).expect_err("unknown key").to_string();
        assert!(s.contains("esg_api.max_inflight"), "{s}");
        assert!(
            s.contains("unknown key") && s.contains("max_in_flight"),
            "{s}"
        );
        let err = parse(&format!("{}\n[bogus]\nx = 1\n", base())).expect_err("unknown section");
        let s = err.to_string();
        assert!(
            s.contains("`bogus`") && s.contains("unknown section"),
            "{s}"
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        let err = parse(&base().replace("token_url = ", "# token_url = ")).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "config esg.toml: key `auth.token_url`: must be set"
        );
        let err = parse(&base().replace("client_secret = \"scorer-secret\"\n", ""))
            .expect_err("no secret");
        let s = err.to_string();
        assert!(
            s.contains("esg_api.client_secret") && s.contains("ESG__ESG_API__CLIENT_SECRET"),
            "{s}"
        );
        let err = parse(&base().replace("client_id = \"esg-accounts\"\n", "")).expect_err("id");
        assert!(err.to_string().contains("accounts.client_id"), "{err}");
    }

    #[test]
    fn bad_values_are_named_in_plain_words() {
        for (from, to, key, words) in [
            (
                "rate_limit_per_second = 50",
                "rate_limit_per_second = 0",
                "esg_api.rate_limit_per_second",
                "at least 1",
            ),
            (
                "max_in_flight = 64",
                "max_in_flight = 0",
                "esg_api.max_in_flight",
                "between 1 and 10000",
            ),
            (
                "url = \"http://127.0.0.1:9\"\nclient_id = \"esg-scorer\"",
                "url = \"nope\"\nclient_id = \"esg-scorer\"",
                "esg_api.url",
                "not a URL",
            ),
            (
                "url = \"http://127.0.0.1:9\"\nclient_id = \"esg-scorer\"",
                "url = \"http://esg-api.vendor.example\"\nclient_id = \"esg-scorer\"",
                "esg_api.url",
                "is plain http:// to esg-api.vendor.example",
            ),
            (
                "token_url = \"http://127.0.0.1:9/oauth2/token\"",
                "token_url = \"http://10.1.2.3/oauth2/token\"",
                "auth.token_url",
                "use https://",
            ),
            (
                "url = \"http://127.0.0.1:9\"\nclient_id = \"esg-accounts\"",
                "url = \"ftp://ams\"\nclient_id = \"esg-accounts\"",
                "accounts.url",
                "must be an https:// URL",
            ),
            (
                "client_secret = \"accounts-secret\"",
                "client_secret = \"accounts-secret\"\ntls_ca_file = \"/nonexistent/ca.pem\"",
                "accounts.url",
                "is plain http:// but accounts.tls_* files are set",
            ),
            (
                "url = \"http://127.0.0.1:9\"\nclient_id = \"esg-accounts\"\nclient_secret = \"accounts-secret\"",
                "url = \"https://127.0.0.1:9\"\nclient_id = \"esg-accounts\"\nclient_secret = \"accounts-secret\"\ntls_ca_file = \"/nonexistent/ca.pem\"",
                "accounts.tls_ca_file",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                "url = \"http://127.0.0.1:9\"\nclient_id = \"esg-scorer\"\nclient_secret = \"scorer-secret\"",
                "url = \"https://127.0.0.1:9\"\nclient_id = \"esg-scorer\"\nclient_secret = \"scorer-secret\"\ntls_client_cert_file = \"/nonexistent/c.pem\"",
                "esg_api.tls_client_key_file",
                "must be set with tls_client_cert_file",
            ),
            (
                "rate_limit_per_second = 50",
                "rate_limit_per_second = \"fast\"",
                "esg_api.rate_limit_per_second",
                "expected a whole number, 0 or more, found the text \"fast\"",
            ),
            (
                "max_in_flight = 64",
                "max_in_flight = 64\ntimeout = 10",
                "esg_api.timeout",
                "expected a duration in quotes",
            ),
            (
                "max_in_flight = 64",
                "max_in_flight = 64\nbackoff_base = \"1m\"",
                "esg_api.backoff_base",
                "longer than backoff_cap",
            ),
            (
                "client_secret = \"accounts-secret\"",
                "client_secret = \"accounts-secret\"\npage_size = 0",
                "accounts.page_size",
                "between 1 and 5000",
            ),
            (
                "[auth]\n",
                "[auth]\ntoken_url = 3\n[x]\n",
                "auth.token_url",
                "expected text in quotes, found the number 3",
            ),
        ] {
            let text = base().replace(from, to);
            let err = parse(&text).expect_err(key).to_string();
            assert!(err.contains(key) && err.contains(words), "{key}: {err}");
            for rust in ["u32", "usize", "struct", "Duration", "String"] {
                assert!(!err.contains(rust), "{key}: {err}");
            }
        }
        let err = parse(&format!(
            "{}\n[run]\ntime_zone = \"Mars/Olympus\"\n",
            base()
        ))
        .expect_err("tz");
        let s = err.to_string();
        assert!(s.contains("run.time_zone") && s.contains("IANA"), "{s}");
        let err = parse(&format!("{}\n[run]\ndeadline = \"9am\"\n", base())).expect_err("deadline");
        let s = err.to_string();
        assert!(s.contains("run.deadline") && s.contains("HH:MM"), "{s}");
        let err = parse(&format!("{}\n[bus]\nkind = \"kafkaa\"\n", base())).expect_err("kind");
        let s = err.to_string();
        assert!(
            s.contains("bus.kind") && s.contains("embedded, kafka"),
            "{s}"
        );
    }

    #[test]
    fn toml_syntax_errors_give_line_and_column() {
        let text = base().replace("max_in_flight = 64", "max_in_flight = = 64");
        let line = text
            .lines()
            .position(|l| l.starts_with("max_in_flight"))
            .expect("line")
            + 1;
        match parse(&text).expect_err("syntax") {
            ConfigError::Syntax {
                line: l, column, ..
            } => {
                assert_eq!((l, column), (line, 17));
            }
            other => panic!("{other}"),
        }
        // A bare word: TOML reads `fast` as a misspelt `false`; the message says text wants quotes.
        for word in ["many", "fast"] {
            let err =
                parse(&base().replace("max_in_flight = 64", &format!("max_in_flight = {word}")))
                    .expect_err("bare word");
            let s = err.to_string();
            assert!(s.contains("column 17") && s.contains("quote"), "{s}");
        }
        let err = parse("[auth]\ntoken_url = \"x\"\ntoken_url = \"y\"\n").expect_err("twice");
        let s = err.to_string();
        assert!(s.contains("line 3, column 1"), "{s}");
        assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn the_log_level_and_format_are_checked() {
        for good in [
            "info",
            "WARN",
            "info,esg_scorer=debug",
            "off",
            "esg=trace,warn",
        ] {
            let text = format!("{}\n[log]\nlevel = \"{good}\"\n", base());
            parse(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "verbose",
            "warning",
            "",
            "info,",
            "esg_scorer=loud",
            "info,[=",
        ] {
            let text = format!("{}\n[log]\nlevel = \"{bad}\"\n", base());
            let err = parse(&text).map(|_| ()).err();
            if bad == "info," {
                // An empty directive after the comma is ignored: "info" is the filter.
                assert!(err.is_none(), "{bad}");
                continue;
            }
            let s = err
                .unwrap_or_else(|| panic!("{bad:?} accepted"))
                .to_string();
            assert!(s.contains("log.level"), "{bad}: {s}");
        }
        let err = parse(&format!("{}\n[log]\nformat = \"xml\"\n", base())).expect_err("format");
        let s = err.to_string();
        assert!(s.contains("log.format") && s.contains("text, json"), "{s}");
        let c = parse(&format!("{}\n[log]\nformat = \"json\"\n", base())).expect("json");
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn the_compaction_bounds_default_to_a_day_reach_the_topics_and_zero_is_refused() {
        let c = parse(&base()).expect("defaults");
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            (c.bus.compaction_lag, c.bus.tombstone_retention),
            (day, day)
        );
        let text = format!(
            "{}\n[bus]\ncompaction_lag = \"2s\"\ntombstone_retention = \"1500ms\"\n",
            base()
        );
        let topics = parse(&text).expect("set").topics();
        assert_eq!(topics.compaction_lag, Duration::from_secs(2));
        assert_eq!(topics.tombstone_retention, Duration::from_millis(1500));
        for key in ["compaction_lag", "tombstone_retention"] {
            for zero in ["0s", "500us"] {
                let err =
                    parse(&format!("{}\n[bus]\n{key} = \"{zero}\"\n", base())).expect_err("zero");
                let s = err.to_string();
                assert!(
                    s.contains(&format!("bus.{key}")) && s.contains("greater than zero"),
                    "{s}"
                );
            }
        }
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
        let c = with_env(
            &kafka,
            &[("ESG__KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2")],
        )
        .expect("env override");
        assert_eq!(c.kafka.properties["sasl.password"], "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        // A numeric one is still text.
        let c = with_env(
            &kafka,
            &[("ESG__KAFKA__PROPERTIES__SASL_PASSWORD", "123456")],
        )
        .expect("numeric password");
        assert_eq!(c.kafka.properties["sasl.password"], "123456");

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
    fn times_and_zones_are_typed_once_and_in_order() {
        let c = parse(&base()).expect("base");
        let s = c.schedule();
        assert_eq!(s.at, hhmm(5, 0));
        assert_eq!(s.tz, chrono_tz::America::Chicago);
        let c = parse(&format!(
            "{}\n[schedule]\nat = \"06:30\"\ntime_zone = \"Europe/London\"\npreflight_at = \"04:30\"\n",
            base()
        ))
        .expect("custom");
        assert_eq!(c.schedule().tz, chrono_tz::Europe::London);
        assert_eq!(c.schedule.preflight_at, Some(hhmm(4, 30)));
        let pre = c.preflight_schedule().expect("preflight");
        assert_eq!((pre.at, pre.tz), (hhmm(4, 30), chrono_tz::Europe::London));
        // A TOML local time, unquoted, is a time of day too.
        let c = parse(&format!("{}\n[schedule]\nat = 05:15:00\n", base())).expect("toml time");
        assert_eq!(c.schedule.at, hhmm(5, 15));

        let err = parse(&format!("{}\n[schedule]\nat = \"5am\"\n", base())).expect_err("at");
        assert!(err.to_string().contains("schedule.at"), "{err}");
        let err = parse(&format!(
            "{}\n[schedule]\ntime_zone = \"Chicago\"\n",
            base()
        ))
        .expect_err("tz");
        assert!(err.to_string().contains("schedule.time_zone"), "{err}");
        let err = parse(&format!("{}\n[schedule]\nat = 05:15:30\n", base())).expect_err("secs");
        assert!(err.to_string().contains("schedule.at"), "{err}");

        // The run starts before its deadline (same zone) ...
        let err = parse(&format!("{}\n[schedule]\nat = \"09:30\"\n", base())).expect_err("late");
        let s = err.to_string();
        assert!(
            s.contains("schedule.at") && s.contains("run.deadline") && s.contains("09:00"),
            "{s}"
        );
        // ... but in another zone the order depends on the date: not checked.
        parse(&format!(
            "{}\n[schedule]\nat = \"09:30\"\ntime_zone = \"UTC\"\n",
            base()
        ))
        .expect("other zone");
        // The pre-flight comes before the run.
        let err = parse(&format!(
            "{}\n[schedule]\npreflight_at = \"05:00\"\n",
            base()
        ))
        .expect_err("preflight");
        let s = err.to_string();
        assert!(
            s.contains("schedule.preflight_at") && s.contains("schedule.at"),
            "{s}"
        );
    }

    #[test]
    fn the_roster_guard_ratio_is_a_share() {
        let set = |v: &str| {
            base().replace(
                "client_secret = \"accounts-secret\"",
                &format!("client_secret = \"accounts-secret\"\nmin_active_ratio = {v}"),
            )
        };
        assert_eq!(
            parse(&set("0.5")).expect("0.5").accounts.min_active_ratio,
            0.5
        );
        assert_eq!(parse(&set("0")).expect("0").accounts.min_active_ratio, 0.0);
        for bad in ["1.5", "-0.1", "nan"] {
            let err = parse(&set(bad)).expect_err(bad);
            assert!(
                err.to_string().contains("accounts.min_active_ratio"),
                "{err}"
            );
        }
    }

    #[test]
    fn environment_overrides_keys() {
        let c = with_env(
            &base(),
            &[
                ("ESG__ESG_API__RATE_LIMIT_PER_SECOND", "7"),
                ("ESG__ESG_API__CLIENT_SECRET", "from-env"),
                ("ESG__BUS__TOPIC_PREFIX", "prod."),
                ("ESG__SCHEDULE__PREFLIGHT_AT", "04:30"),
                ("OTHER", "x"),
            ],
        )
        .expect("parses");
        assert_eq!(c.esg_api.rate_limit_per_second, 7);
        assert_eq!(c.esg_api.client_secret.expose(), "from-env");
        assert_eq!(c.bus.topic_prefix, "prod.");
        assert_eq!(c.schedule.preflight_at, Some(hhmm(4, 30)));
        // A numeric secret stays text.
        let c = with_env(&base(), &[("ESG__ACCOUNTS__CLIENT_SECRET", "12345")]).expect("num");
        assert_eq!(c.accounts.client_secret.expose(), "12345");
        let err = with_env(&base(), &[("ESG__X", "1")]).expect_err("bad var");
        assert!(err.to_string().contains("ESG__X"), "{err}");
    }

    #[test]
    fn an_error_from_the_environment_names_the_variable() {
        let err = with_env(&base(), &[("ESG__ESG_API__RATE_LIMIT_PER_SECOND", "fast")])
            .expect_err("fast");
        assert_eq!(
            err.to_string(),
            "environment variable ESG__ESG_API__RATE_LIMIT_PER_SECOND=fast: key \
             `esg_api.rate_limit_per_second`: expected a whole number, 0 or more, found the text \"fast\""
        );
        // A check after parsing, too.
        let err =
            with_env(&base(), &[("ESG__ESG_API__RATE_LIMIT_PER_SECOND", "0")]).expect_err("zero");
        let s = err.to_string();
        assert!(
            s.starts_with("environment variable ESG__ESG_API__RATE_LIMIT_PER_SECOND=0:"),
            "{s}"
        );
        // An unknown key.
        let err = with_env(&base(), &[("ESG__ESG_API__MAX_INFLIGHT", "2")]).expect_err("unknown");
        let s = err.to_string();
        assert!(
            s.contains("ESG__ESG_API__MAX_INFLIGHT") && s.contains("unknown key"),
            "{s}"
        );
        assert!(matches!(err, ConfigError::Env { .. }));
        // The value of a secret is never shown.
        let err = with_env(&base(), &[("ESG__ESG_API__CLIENT_SECRET", "\"\"")]).expect_err("empty");
        let s = err.to_string();
        assert!(
            s.starts_with(
                "environment variable ESG__ESG_API__CLIENT_SECRET: key `esg_api.client_secret`"
            ),
            "{s}"
        );
        // The same bad value in the file names the file's key.
        let err = parse(&base().replace(
            "rate_limit_per_second = 50",
            "rate_limit_per_second = \"fast\"",
        ))
        .expect_err("file");
        assert!(matches!(err, ConfigError::Key { .. }), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(&base()).expect("parses");
        let debug = format!("{c:?}");
        assert!(!debug.contains("scorer-secret") && !debug.contains("accounts-secret"));
    }

    #[test]
    fn the_masked_toml_shows_the_effective_config_without_a_secret() {
        let text = format!(
            "{}\n[kafka]\nbootstrap_servers = \"k1:9092\"\n[kafka.schema_registry]\nurl = \"https://user:registry-pass@registry:8081\"\npassword = \"registry-secret\"\n\
             [kafka.properties]\n\"sasl.password\" = \"kafka-secret\"\n\"security.protocol\" = \"SASL_SSL\"\n\
             [alerts.pagerduty]\nrouting_key = \"0123456789abcdef0123456789abcdef\"\n\
             [alerts.webhook]\nurl = \"https://hooks.example/T0/token-in-url\"\n\
             [schedule]\npreflight_at = \"04:30\"\n",
            base()
        );
        let c = parse(&text).expect("parses");
        let shown = c.to_masked_toml();
        for secret in [
            "scorer-secret",
            "accounts-secret",
            "registry-pass",
            "registry-secret",
            "kafka-secret",
            "0123456789abcdef0123456789abcdef",
            "token-in-url",
        ] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
        assert!(shown.contains("client_secret = \"********\""), "{shown}");
        assert!(
            shown.contains("\"security.protocol\" = \"SASL_SSL\""),
            "{shown}"
        );
        // The effective values, defaults included, in the file's own spelling.
        for line in [
            "time_zone = \"America/Chicago\"",
            "deadline = \"09:00\"",
            "preflight_at = \"04:30\"",
            "max_attempts = 3",
            "timeout = \"10s\"",
            "min_active_ratio = 0.8",
            "kind = \"embedded\"",
            "format = \"text\"",
        ] {
            assert!(shown.contains(line), "{line} not in:\n{shown}");
        }
        // It is TOML ...
        toml::from_str::<toml::Table>(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
        // ... and a configuration: read back, it gives the same settings (the masked secrets
        // aside: a PagerDuty routing key of eight stars is refused, rightly).
        let plain = parse(&base()).expect("base").to_masked_toml();
        let again = parse(&plain).unwrap_or_else(|e| panic!("{e}\n{plain}"));
        assert_eq!(again.to_masked_toml(), plain);
        assert_eq!(again.esg_api.client_secret.expose(), Secret::MASK);
    }

    const EXAMPLE: &str = include_str!("../esg.example.toml");

    #[test]
    fn esg_example_toml_parses() {
        // The example leaves the secrets to the environment, as it advises.
        let c = with_env(
            EXAMPLE,
            &[
                ("ESG__ACCOUNTS__CLIENT_SECRET", "a"),
                ("ESG__ESG_API__CLIENT_SECRET", "b"),
            ],
        )
        .unwrap_or_else(|e| panic!("esg.example.toml: {e}"));
        assert_eq!(c.bus.kind, BusKind::Embedded);
        let err = parse(EXAMPLE).expect_err("no secrets in the example");
        assert!(err.to_string().contains("client_secret"), "{err}");
    }

    /// `section.key` of every key line of `text`, commented out or not, and of every table header.
    fn written_keys(text: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut section = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(header) = line.strip_prefix('[') {
                let name = header.trim_start_matches('[');
                if let Some((name, _)) = name.split_once(']') {
                    if name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                    {
                        section = name.to_owned();
                        out.push((section.clone(), n));
                    }
                }
                continue;
            }
            if let Some((key, _)) = line.split_once(" = ") {
                let key = key.trim();
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.push((format!("{section}.{key}"), n));
                }
            }
        }
        out
    }

    #[test]
    fn esg_example_toml_documents_every_key() {
        let known = keys::leaf_keys::<Config>();
        assert!(known.len() > 60, "{known:?}");
        for key in [
            "esg_api.timeout",
            "alerts.email.recipients.business",
            "kafka.properties",
        ] {
            assert!(known.iter().any(|k| k == key), "{key} not in {known:?}");
        }
        let written = written_keys(EXAMPLE);
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let mut missing = Vec::new();
        for key in &known {
            match written.iter().find(|(k, _)| k == key) {
                None => missing.push(key.clone()),
                Some((_, n)) => {
                    // Documented: the line right above the key is a comment in words.
                    let above = lines[..*n].iter().rev().map(|l| l.trim()).next();
                    assert!(
                        above.is_some_and(|l| l.starts_with("# ") && written_keys(l).is_empty()),
                        "{key} in esg.example.toml has no comment right above it"
                    );
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys missing from esg.example.toml: {missing:?}"
        );
    }

    #[test]
    fn delivery_tables_are_checked_and_their_keys_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, "wJalr-secret\n").expect("write");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let s3 = |endpoint: &str| {
            format!(
                "{}\n[[delivery]]\nkind = \"dir\"\npath = \"/mnt/share\"\n\n[[delivery]]\nkind = \"s3\"\nbucket = \"b\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"AKIA1\"\nsecret_access_key_file = \"{}\"\n",
                base(),
                secret.display()
            )
        };
        let c = parse(&s3("https://s3.firm.example")).expect("parses");
        assert_eq!(c.delivery.len(), 2);
        let source = c
            .secret_sources
            .iter()
            .find(|s| s.key == "delivery[2].secret_access_key")
            .unwrap_or_else(|| panic!("{:?}", c.secret_sources));
        assert!(source.from.contains("s3-secret"), "{source:?}");
        let shown = c.to_masked_toml();
        assert!(!shown.contains("wJalr"), "{shown}");
        assert!(shown.contains("[[delivery]]"), "{shown}");

        let err = parse(&s3("http://s3.firm.example")).expect_err("plain http");
        assert!(err.to_string().contains("`delivery[2].endpoint`"), "{err}");
        assert!(parse(&s3("http://127.0.0.1:8333")).is_ok(), "loopback http");

        let twice = format!(
            "{}\n[[delivery]]\nkind = \"dir\"\npath = \"/a\"\nname = \"x\"\n[[delivery]]\nkind = \"dir\"\npath = \"/b\"\nname = \"x\"\n",
            base()
        );
        let err = parse(&twice).expect_err("same name");
        assert!(err.to_string().contains("`delivery[2].name`"), "{err}");
        let unknown = format!("{}\n[[delivery]]\nkind = \"ftp\"\npath = \"/a\"\n", base());
        let err = parse(&unknown).expect_err("kind");
        assert!(err.to_string().contains("ftp"), "{err}");
        let relative = format!(
            "{}\n[[delivery]]\nkind = \"dir\"\npath = \"share\"\n",
            base()
        );
        let err = parse(&relative).expect_err("relative");
        assert!(err.to_string().contains("`delivery[1].path`"), "{err}");
    }

    #[test]
    fn encryption_recipients_are_checked_and_their_key_named() {
        let good = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let c = parse(&base()).expect("parses");
        assert!(!c.protection().expect("plaintext").is_encrypted());
        let c = parse(&format!(
            "{}\n[encryption]\nrecipients = [\"{good}\"]\n",
            base()
        ))
        .expect("parses");
        assert!(c.protection().expect("age").is_encrypted());

        let err = parse(&format!("{}\n[encryption]\n", base())).expect_err("none");
        let text = err.to_string();
        assert!(
            text.contains("`encryption.recipients`") && text.contains("no recipient"),
            "{text}"
        );

        let err = parse(&format!(
            "{}\n[encryption]\nrecipients = [\"{good}\", \"age1nope\"]\n",
            base()
        ))
        .expect_err("bad");
        let text = err.to_string();
        assert!(
            text.contains("`encryption.recipients`") && text.contains("entry 2"),
            "{text}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# officers\n\n{good}\nssh-rsa AAAA\n")).expect("write");
        let err = parse(&format!(
            "{}\n[encryption]\nrecipients_file = \"{}\"\n",
            base(),
            file.display()
        ))
        .expect_err("bad line");
        let text = err.to_string();
        assert!(
            text.contains("`encryption.recipients_file`")
                && text.contains("recipient 2 of the file"),
            "{text}"
        );
        std::fs::write(&file, format!("# officers\n{good}\n")).expect("write");
        let c = parse(&format!(
            "{}\n[encryption]\nrecipients_file = \"{}\"\n",
            base(),
            file.display()
        ))
        .expect("parses");
        assert!(c.protection().expect("age").is_encrypted());
        let err = parse(&format!(
            "{}\n[encryption]\nrecipients_file = \"{}\"\n",
            base(),
            dir.path().join("missing.txt").display()
        ))
        .expect_err("missing file");
        assert!(err.to_string().contains("cannot read"), "{err}");
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

//! The `[alerts]` configuration: the failure-ratio threshold, the missed-start grace, and one
//! table per channel (`[alerts.email]`, `[alerts.pagerduty]`, `[alerts.webhook]`).
//!
//! A channel is on when its table is present, unless the table says `enabled = false`; a missing
//! table is a channel that is off. Every key has a documented default except the ones a channel
//! cannot guess (SMTP host, sender, routing key, webhook URL). The configuration is checked once,
//! by [`crate::Alerter::new`], with an error that names the key. Secrets (`password`,
//! `routing_key`, `bearer_token`) are [`Secret`]s: `Debug` prints `***`.

use crate::alert::AlertKind;
use rust_decimal::Decimal;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default `failure_ratio_threshold`: 0.05 (more than 5% of accounts failed).
pub fn default_failure_ratio_threshold() -> Decimal {
    Decimal::new(5, 2)
}

/// Default `missed_start_grace`: 15 minutes after the scheduled start.
pub fn default_missed_start_grace() -> Duration {
    Duration::from_secs(15 * 60)
}

/// Default `retry_backoff`: 1 s between the first and the only retry of a channel.
pub fn default_retry_backoff() -> Duration {
    Duration::from_secs(1)
}

/// Default `smtp_port`: 587, the submission port (STARTTLS).
pub fn default_smtp_port() -> u16 {
    587
}

/// Default `timeout` of every channel: 10 s for one attempt, start to end.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Default PagerDuty `url`: the Events API v2 endpoint.
pub fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".to_owned()
}

/// Default email route of the development team: every kind.
pub fn default_development_route() -> Vec<AlertKind> {
    AlertKind::ALL.to_vec()
}

/// Default email route of the business stakeholders: the kinds that affect the day's file
/// (`over_window`, `failure_ratio`).
pub fn default_business_route() -> Vec<AlertKind> {
    vec![AlertKind::OverWindow, AlertKind::FailureRatio]
}

/// Default kinds that page through PagerDuty: every kind.
pub fn default_pagerduty_kinds() -> Vec<AlertKind> {
    AlertKind::ALL.to_vec()
}

fn yes() -> bool {
    true
}

/// Longest `timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest `retry_backoff` accepted.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

/// Longest `missed_start_grace` accepted.
pub const MAX_MISSED_START_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The `[alerts]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A run whose failed accounts are MORE than this share of its expected accounts raises
    /// `failure_ratio`. Between 0 and 1; written as a number (`0.05`) or a string (`"0.05"`),
    /// kept exact.
    #[serde(
        default = "default_failure_ratio_threshold",
        deserialize_with = "deserialize_ratio"
    )]
    pub failure_ratio_threshold: Decimal,
    /// How long after the scheduled start a run that has not started raises `missed_start`.
    #[serde(default = "default_missed_start_grace", with = "humantime_serde")]
    pub missed_start_grace: Duration,
    /// Wait between a channel's failed attempt and its one retry.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// `[alerts.email]`; no table, no email.
    #[serde(default)]
    pub email: Option<EmailConfig>,
    /// `[alerts.pagerduty]`; no table, no paging.
    #[serde(default)]
    pub pagerduty: Option<PagerDutyConfig>,
    /// `[alerts.webhook]`; no table, no webhook.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            failure_ratio_threshold: default_failure_ratio_threshold(),
            missed_start_grace: default_missed_start_grace(),
            retry_backoff: default_retry_backoff(),
            email: None,
            pagerduty: None,
            webhook: None,
        }
    }
}

impl AlertsConfig {
    /// True when `failed` is more than `failure_ratio_threshold` of `expected` (exact decimal
    /// arithmetic; never for a run that expected no account).
    pub fn failure_ratio_exceeded(&self, failed: u64, expected: u64) -> bool {
        expected > 0
            && Decimal::from(failed) > self.failure_ratio_threshold * Decimal::from(expected)
    }
}

/// `[alerts.email]`: SMTP submission with STARTTLS.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Off switch that keeps the rest of the table.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The SMTP server (host name, also the name its certificate must carry).
    pub smtp_host: String,
    /// The SMTP port.
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// STARTTLS required (default): the message and the credentials are never sent in clear;
    /// a server that does not offer STARTTLS fails the channel. `false` sends in clear and is
    /// only accepted without credentials (a local relay).
    #[serde(default = "yes")]
    pub starttls: bool,
    /// A PEM file of extra CA certificates to trust besides the public roots (a firm's own CA,
    /// or a test server's).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// SMTP AUTH user; with `password`, or neither.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP AUTH password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The sender, `esg@firm.example` or `ESG job <esg@firm.example>`.
    pub from: String,
    /// Bound of one attempt, from connecting to the server's answer to the message.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Addresses of each audience.
    #[serde(default)]
    pub recipients: Recipients,
    /// Which kinds each audience receives.
    #[serde(default)]
    pub routes: Routes,
}

/// `[alerts.email.recipients]`: the addresses of each audience.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipients {
    /// The job's development team (and the operators on call, if they read email).
    #[serde(default)]
    pub development: Vec<String>,
    /// The business stakeholders (compliance).
    #[serde(default)]
    pub business: Vec<String>,
}

/// `[alerts.email.routes]`: which kinds each audience receives.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// Default: every kind.
    #[serde(default = "default_development_route")]
    pub development: Vec<AlertKind>,
    /// Default: `over_window` and `failure_ratio`.
    #[serde(default = "default_business_route")]
    pub business: Vec<AlertKind>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            development: default_development_route(),
            business: default_business_route(),
        }
    }
}

impl EmailConfig {
    /// The addresses (as written) that receive `kind`, development first, without repeats.
    pub fn recipients_for(&self, kind: AlertKind) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (route, addresses) in [
            (&self.routes.development, &self.recipients.development),
            (&self.routes.business, &self.recipients.business),
        ] {
            if route.contains(&kind) {
                for address in addresses {
                    if !out.contains(&address.as_str()) {
                        out.push(address);
                    }
                }
            }
        }
        out
    }
}

/// `[alerts.pagerduty]`: PagerDuty Events API v2.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// Off switch that keeps the rest of the table.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The 32-character integration key of the service (Events API v2 integration).
    pub routing_key: Secret,
    /// The enqueue endpoint.
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    /// Bound of one attempt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The kinds that page. Default: every kind.
    #[serde(default = "default_pagerduty_kinds")]
    pub kinds: Vec<AlertKind>,
    /// `payload.source`: where the job runs. Default: this machine's host name.
    #[serde(default)]
    pub source: Option<String>,
}

/// `[alerts.webhook]`: a POST of a JSON document per alert and resolution.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Off switch that keeps the rest of the table.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The http(s) URL. Never logged: webhook URLs often carry a token.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Bound of one attempt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A secret that is never printed (`Debug` and `Display` show `***`): the one type of the job.
pub use esg_auth::Secret;

/// A configuration the alerter cannot work with. Fatal at start-up: fix the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AlertConfigError {
    /// A key is missing, out of range or does not parse.
    #[error("alerts config key `{key}` {reason}")]
    Invalid {
        /// The full key, e.g. `alerts.email.recipients.business[1]`.
        key: String,
        /// What is wrong with it (never the value of a secret).
        reason: String,
    },
    /// `alerts.email.tls_ca_file` cannot be read.
    #[error("alerts config key `alerts.email.tls_ca_file`: cannot read {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client of PagerDuty and the webhook cannot be built (TLS set-up).
    #[error("alerts: cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

impl AlertConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        AlertConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a duration key: more than zero and at most `max`.
pub(crate) fn check_duration(
    key: &str,
    value: Duration,
    max: Duration,
) -> Result<(), AlertConfigError> {
    if value.is_zero() {
        return Err(AlertConfigError::invalid(key, "must be greater than zero"));
    }
    if value > max {
        return Err(AlertConfigError::invalid(
            key,
            format!("is {value:?}, more than the limit {max:?}"),
        ));
    }
    Ok(())
}

/// Parses an https URL with a host (http only to this host: an alert carries the run's figures,
/// and a webhook URL often its token).
pub(crate) fn check_http_url(key: &str, url: &str) -> Result<reqwest::Url, AlertConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| AlertConfigError::invalid(key, format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(AlertConfigError::invalid(
            key,
            format!("has scheme `{}`; only http and https", parsed.scheme()),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(AlertConfigError::invalid(key, "has no host"));
    }
    esg_auth::tls::check_transport(&parsed).map_err(|m| AlertConfigError::invalid(key, m))?;
    Ok(parsed)
}

impl AlertsConfig {
    /// Checks the keys that belong to no channel.
    pub(crate) fn check_common(&self) -> Result<(), AlertConfigError> {
        if self.failure_ratio_threshold < Decimal::ZERO
            || self.failure_ratio_threshold > Decimal::ONE
        {
            return Err(AlertConfigError::invalid(
                "alerts.failure_ratio_threshold",
                format!(
                    "is {}; must be between 0 and 1 (0.05 is 5%)",
                    self.failure_ratio_threshold
                ),
            ));
        }
        check_duration(
            "alerts.missed_start_grace",
            self.missed_start_grace,
            MAX_MISSED_START_GRACE,
        )?;
        check_duration(
            "alerts.retry_backoff",
            self.retry_backoff,
            MAX_RETRY_BACKOFF,
        )?;
        Ok(())
    }
}

/// Reads a ratio written as a TOML/JSON number or a string, exactly: a number goes through its
/// shortest decimal representation (`0.05` stays `0.05`, not `0.05000000000000000277`).
fn deserialize_ratio<'de, D>(deserializer: D) -> Result<Decimal, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(f64),
        Text(String),
    }
    let text = match <Written as serde::Deserialize>::deserialize(deserializer)? {
        Written::Number(n) if n.is_finite() => n.to_string(),
        Written::Number(n) => return Err(serde::de::Error::custom(format!("{n} is not a ratio"))),
        Written::Text(s) => s,
    };
    Decimal::from_str(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a decimal ratio: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Root {
        alerts: AlertsConfig,
    }

    fn parse(text: &str) -> Result<AlertsConfig, toml::de::Error> {
        toml::from_str::<Root>(text).map(|r| r.alerts)
    }

    #[test]
    fn empty_table_gives_documented_defaults() {
        let config = parse("[alerts]\n").expect("parse");
        assert_eq!(config, AlertsConfig::default());
        assert_eq!(config.failure_ratio_threshold.to_string(), "0.05");
        assert_eq!(config.missed_start_grace, Duration::from_secs(900));
        assert!(config.email.is_none() && config.pagerduty.is_none() && config.webhook.is_none());
    }

    #[test]
    fn full_configuration_parses() {
        let config = parse(
            r#"
            [alerts]
            failure_ratio_threshold = 0.1
            missed_start_grace = "20m"
            retry_backoff = "250ms"
            [alerts.email]
            smtp_host = "smtp.firm.example"
            username = "esg"
            password = "hunter2"
            from = "ESG job <esg@firm.example>"
            timeout = "5s"
            tls_ca_file = "/etc/firm/ca.pem"
            [alerts.email.recipients]
            development = ["dev@firm.example"]
            business = ["compliance@firm.example"]
            [alerts.email.routes]
            business = ["failure_ratio"]
            [alerts.pagerduty]
            routing_key = "0123456789abcdef0123456789abcdef"
            kinds = ["missed_start", "critical_error"]
            [alerts.webhook]
            url = "https://hooks.firm.example/esg"
            bearer_token = "tok"
            enabled = false
            "#,
        )
        .expect("parse");
        assert_eq!(config.failure_ratio_threshold, Decimal::new(1, 1));
        assert_eq!(config.retry_backoff, Duration::from_millis(250));
        let email = config.email.expect("email");
        assert!(email.enabled && email.starttls);
        assert_eq!(email.smtp_port, 587);
        assert_eq!(email.timeout, Duration::from_secs(5));
        assert_eq!(email.routes.development, AlertKind::ALL.to_vec());
        assert_eq!(email.routes.business, vec![AlertKind::FailureRatio]);
        let pagerduty = config.pagerduty.expect("pagerduty");
        assert_eq!(pagerduty.url, "https://events.pagerduty.com/v2/enqueue");
        assert_eq!(pagerduty.timeout, Duration::from_secs(10));
        assert_eq!(pagerduty.kinds.len(), 2);
        let webhook = config.webhook.expect("webhook");
        assert!(!webhook.enabled);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = parse("[alerts]\nfailure_ratio = 0.1\n").expect_err("unknown key");
        assert!(err.to_string().contains("failure_ratio"), "{err}");
        let err = parse(
            "[alerts.email]\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\n[alerts.email.recipients]\nops = []\n",
        )
        .expect_err("unknown audience");
        assert!(err.to_string().contains("ops"), "{err}");
        let err = parse("[alerts.pagerduty]\nrouting_key = \"k\"\nkinds = [\"late\"]\n")
            .expect_err("unknown kind");
        assert!(err.to_string().contains("late"), "{err}");
    }

    #[test]
    fn threshold_is_exact_whether_number_or_string() {
        for text in ["0.05", "\"0.05\""] {
            let config =
                parse(&format!("[alerts]\nfailure_ratio_threshold = {text}\n")).expect("parse");
            assert_eq!(config.failure_ratio_threshold, Decimal::new(5, 2));
        }
        let config = parse("[alerts]\nfailure_ratio_threshold = 0\n").expect("integer");
        assert_eq!(config.failure_ratio_threshold, Decimal::ZERO);
    }

    #[test]
    fn failure_ratio_is_strictly_more_than_the_threshold() {
        let config = AlertsConfig::default();
        assert!(
            !config.failure_ratio_exceeded(5, 100),
            "exactly 5% is not more"
        );
        assert!(config.failure_ratio_exceeded(6, 100));
        assert!(!config.failure_ratio_exceeded(50, 1001));
        assert!(config.failure_ratio_exceeded(51, 1001));
        assert!(!config.failure_ratio_exceeded(0, 0));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let config = parse(
            r#"
            [alerts.email]
            smtp_host = "smtp.firm.example"
            username = "esg"
            password = "hunter2"
            from = "esg@firm.example"
            [alerts.pagerduty]
            routing_key = "R0UTINGKEYR0UTINGKEYR0UTINGKEY12"
            [alerts.webhook]
            url = "https://hooks.firm.example/esg"
            bearer_token = "B3ARER"
            "#,
        )
        .expect("parse");
        let debug = format!("{config:?}");
        for secret in ["hunter2", "R0UTINGKEY", "B3ARER"] {
            assert!(!debug.contains(secret), "{secret} printed in {debug}");
        }
        assert!(debug.contains("***"));
    }

    #[test]
    fn recipients_follow_routes_without_repeats() {
        let email = EmailConfig {
            enabled: true,
            smtp_host: "h".into(),
            smtp_port: 587,
            starttls: true,
            tls_ca_file: None,
            username: None,
            password: None,
            from: "esg@firm.example".into(),
            timeout: default_timeout(),
            recipients: Recipients {
                development: vec!["dev@firm.example".into(), "both@firm.example".into()],
                business: vec!["biz@firm.example".into(), "both@firm.example".into()],
            },
            routes: Routes::default(),
        };
        assert_eq!(
            email.recipients_for(AlertKind::MissedStart),
            ["dev@firm.example", "both@firm.example"]
        );
        assert_eq!(
            email.recipients_for(AlertKind::FailureRatio),
            ["dev@firm.example", "both@firm.example", "biz@firm.example"]
        );
    }

    #[test]
    fn common_keys_are_range_checked() {
        let mut config = AlertsConfig {
            failure_ratio_threshold: Decimal::new(15, 1),
            ..AlertsConfig::default()
        };
        let err = config.check_common().expect_err("1.5");
        assert!(
            err.to_string().contains("alerts.failure_ratio_threshold"),
            "{err}"
        );
        config.failure_ratio_threshold = Decimal::ONE;
        config.retry_backoff = Duration::ZERO;
        let err = config.check_common().expect_err("zero backoff");
        assert!(err.to_string().contains("alerts.retry_backoff"), "{err}");
    }

    #[test]
    fn urls_must_be_https_with_a_host() {
        assert!(check_http_url("k", "https://events.pagerduty.com/v2/enqueue").is_ok());
        assert!(check_http_url("k", "http://127.0.0.1:9/x").is_ok());
        for bad in [
            "ftp://host/x",
            "not a url",
            "file:///etc/passwd",
            "mailto:a@b.c",
            "http://hooks.firm.example/T0/secret",
        ] {
            let err = check_http_url("alerts.webhook.url", bad).expect_err(bad);
            assert!(err.to_string().contains("alerts.webhook.url"), "{err}");
            assert!(
                !err.to_string().contains("secret"),
                "the URL is not echoed: {err}"
            );
        }
    }
}

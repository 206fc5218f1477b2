//! The simulator's configuration: how much data, which credentials, and which faults at what rate.
//!
//! Every key has a documented default (see [`SimConfig::default`]); [`SimConfig::validate`]
//! checks the whole configuration once, at start-up and on every [`crate::SimHandle::update`],
//! and names the key that is wrong.

use std::fmt;
use std::time::Duration;

use crate::SimError;

/// Configuration of the simulator. Deserializable from TOML/JSON with unknown keys refused;
/// durations are written the humantime way (`"1h"`, `"15min"`, `"250ms"`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of every generated value (default 42).
    pub seed: u64,
    /// Accounts in the account system, all statuses (default 1000).
    pub accounts: u64,
    /// Share of accounts that are CLOSED or SUSPENDED, chosen by id (default 0.05).
    pub inactive_share: f64,
    /// Client credentials the token endpoint accepts (default: `esg-accounts`/`accounts.read`
    /// and `esg-scorer`/`esg.read`).
    pub credentials: Vec<Credential>,
    /// Lifetime of an access token; an expired token answers 401 (default 1h).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Lifetime of a page token; an expired one answers 410 (default 15min).
    #[serde(with = "humantime_serde")]
    pub page_token_ttl: Duration,
    /// Delay added to every ESG API call (default 0).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Tenant quota of the ESG API in requests per second; `None` (or 0, which TOML can
    /// express where it cannot express null) means unlimited (default `Some(50)`). A batch is
    /// one request.
    #[serde(deserialize_with = "quota")]
    pub rate_limit_per_second: Option<u32>,
    /// Burst allowed above the quota (default 100).
    pub burst: u32,
    /// Chance that an ESG call answers 500, 502, 503 or 504 (default 0).
    pub transient_error_rate: f64,
    /// Chance that an ESG call stalls for `stall` before answering (default 0).
    pub timeout_rate: f64,
    /// How long a stalled call stalls (default 30s).
    #[serde(with = "humantime_serde")]
    pub stall: Duration,
    /// Share of accounts whose first attempt is answered 429 whatever the quota, chosen by id
    /// (default 0). "First attempt" is the first call of the account that gets past the token
    /// and the quota; the retry is answered normally. A batch draws by its first account, for
    /// the whole batch.
    pub rate_limited_first_attempt_rate: f64,
    /// `Retry-After` of the 429s of `rate_limited_first_attempt_rate`, sent in whole seconds
    /// rounded up, at least 1 (default 1s).
    #[serde(with = "humantime_serde")]
    pub fault_retry_after: Duration,
    /// The batch endpoint for every client (default true). When false, or when the calling
    /// client's [`Credential::batch_endpoint`] is false, `POST /v1/esg-analysis:batch` answers
    /// `batch_disabled_status`.
    pub batch_endpoint: bool,
    /// What a batch request answers where the batch endpoint is off: 404 (default) or 405.
    pub batch_disabled_status: u16,
    /// Share of accounts that always answer 404 or 422, chosen by id (default 0).
    pub permanent_error_rate: f64,
    /// Share of accounts whose analysis has a null pillar, overall or primary focus (default 0).
    pub partial_rate: f64,
    /// Share of accounts whose 200 answer breaks the contract (default 0).
    pub out_of_contract_rate: f64,
    /// Extra malformed records mixed into the listing, per account listed (default 0).
    pub malformed_record_rate: f64,
    /// Share of accounts listed twice, once with an older version (default 0).
    pub duplicate_rate: f64,
    /// Chance that a listing page answers 429 (`Retry-After: 1`) or 503 (two fifths each) or
    /// 500 (one fifth) (default 0).
    pub accounts_transient_error_rate: f64,
    /// Extra listing records whose `accountName` holds bytes that are not UTF-8, per account
    /// listed (default 0).
    pub invalid_utf8_record_rate: f64,
    /// Extra listing records whose `accountName` holds a lone surrogate escape (`\ud800`), which
    /// no JSON string decoder can turn into a character, per account listed (default 0).
    pub lone_surrogate_record_rate: f64,
    /// Extra listing records with a field of the wrong JSON type (a number for a string, a
    /// string for the version, ...), per account listed (default 0).
    pub wrong_type_record_rate: f64,
    /// When at least 2: the answer to page N of a listing hands out the page token of page 2
    /// again, so a client that follows the tokens goes round pages 2..=N for ever. Only a
    /// listing longer than N pages cycles. 0 (default) turns it off.
    pub page_token_cycle_after: u32,
    /// Share of accounts the listing leaves out, chosen by id (default 0): an account system
    /// whose listing collapsed (1 lists no account at all). `totalCount` agrees with it.
    pub listing_hidden_share: f64,
    /// The token endpoint is down (default false): every token request answers 503
    /// `temporarily_unavailable`.
    pub token_unavailable: bool,
    /// How long the token endpoint waits before it answers (default 0). Longer than a client's
    /// timeout, it is a token endpoint that accepts the connection and never answers.
    #[serde(with = "humantime_serde")]
    pub token_delay: Duration,
    /// How long each page of the account listing takes to answer (default 0): a slow account
    /// system, for listings that do not finish by the run's deadline.
    #[serde(with = "humantime_serde")]
    pub page_delay: Duration,
    /// Count ESG calls per account (default true). Turn off for very large account counts:
    /// the counters are the only memory that grows with the number of accounts called.
    pub track_calls: bool,
    /// The date of an analysis when no `asOf` is given; `None` = today in UTC.
    pub today: Option<chrono::NaiveDate>,
}

/// One client the token endpoint knows. `Debug` never shows the secret.
#[derive(Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Space-separated scopes granted to this client.
    pub scope: String,
    /// Whether this client may use the batch endpoint (default true); when false its batch
    /// requests answer [`SimConfig::batch_disabled_status`].
    #[serde(default = "default_true")]
    pub batch_endpoint: bool,
}

fn default_true() -> bool {
    true
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("scope", &self.scope)
            .field("batch_endpoint", &self.batch_endpoint)
            .finish()
    }
}

impl Credential {
    /// A credential from its three parts, with the batch endpoint on.
    pub fn new(client_id: &str, client_secret: &str, scope: &str) -> Self {
        Credential {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            scope: scope.to_owned(),
            batch_endpoint: true,
        }
    }

    /// The same credential with the batch endpoint on or off.
    pub fn with_batch_endpoint(mut self, on: bool) -> Self {
        self.batch_endpoint = on;
        self
    }
}

/// Scope the account system requires.
pub const ACCOUNTS_SCOPE: &str = "accounts.read";
/// Scope the ESG API requires.
pub const ESG_SCOPE: &str = "esg.read";

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            accounts: 1000,
            inactive_share: 0.05,
            credentials: vec![
                Credential::new("esg-accounts", "accounts-secret", ACCOUNTS_SCOPE),
                Credential::new("esg-scorer", "scorer-secret", ESG_SCOPE),
            ],
            token_ttl: Duration::from_secs(3600),
            page_token_ttl: Duration::from_secs(15 * 60),
            latency: Duration::ZERO,
            rate_limit_per_second: Some(50),
            burst: 100,
            transient_error_rate: 0.0,
            timeout_rate: 0.0,
            stall: Duration::from_secs(30),
            rate_limited_first_attempt_rate: 0.0,
            fault_retry_after: Duration::from_secs(1),
            batch_endpoint: true,
            batch_disabled_status: 404,
            permanent_error_rate: 0.0,
            partial_rate: 0.0,
            out_of_contract_rate: 0.0,
            malformed_record_rate: 0.0,
            duplicate_rate: 0.0,
            accounts_transient_error_rate: 0.0,
            invalid_utf8_record_rate: 0.0,
            lone_surrogate_record_rate: 0.0,
            wrong_type_record_rate: 0.0,
            page_token_cycle_after: 0,
            listing_hidden_share: 0.0,
            token_unavailable: false,
            token_delay: Duration::ZERO,
            page_delay: Duration::ZERO,
            track_calls: true,
            today: None,
        }
    }
}

/// Largest account count: ids are `ACC` + at least 8 digits and must stay well inside the
/// 64-character id pattern.
pub const MAX_ACCOUNTS: u64 = 1_000_000_000_000;

impl SimConfig {
    /// Checks every key; the error names the first key that is wrong.
    pub fn validate(&self) -> Result<(), SimError> {
        let rates = [
            ("inactive_share", self.inactive_share),
            ("transient_error_rate", self.transient_error_rate),
            ("timeout_rate", self.timeout_rate),
            (
                "rate_limited_first_attempt_rate",
                self.rate_limited_first_attempt_rate,
            ),
            ("permanent_error_rate", self.permanent_error_rate),
            ("partial_rate", self.partial_rate),
            ("out_of_contract_rate", self.out_of_contract_rate),
            ("malformed_record_rate", self.malformed_record_rate),
            ("duplicate_rate", self.duplicate_rate),
            (
                "accounts_transient_error_rate",
                self.accounts_transient_error_rate,
            ),
            ("invalid_utf8_record_rate", self.invalid_utf8_record_rate),
            (
                "lone_surrogate_record_rate",
                self.lone_surrogate_record_rate,
            ),
            ("wrong_type_record_rate", self.wrong_type_record_rate),
            ("listing_hidden_share", self.listing_hidden_share),
        ];
        for (key, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(
                    key,
                    format!("{rate} is not a share between 0 and 1"),
                ));
            }
        }
        let per_account = self.permanent_error_rate + self.partial_rate + self.out_of_contract_rate;
        if per_account > 1.0 + 1e-9 {
            return Err(invalid(
                "permanent_error_rate",
                format!(
                    "permanent_error_rate + partial_rate + out_of_contract_rate = {per_account} exceeds 1"
                ),
            ));
        }
        if self.transient_error_rate + self.timeout_rate > 1.0 + 1e-9 {
            return Err(invalid(
                "timeout_rate",
                "transient_error_rate + timeout_rate exceeds 1".to_owned(),
            ));
        }
        if self.accounts > MAX_ACCOUNTS {
            return Err(invalid(
                "accounts",
                format!("{} is more than {MAX_ACCOUNTS}", self.accounts),
            ));
        }
        if self.page_token_cycle_after == 1 {
            return Err(invalid(
                "page_token_cycle_after",
                "must be 0 (off) or at least 2: page 1 has no page token to hand out again"
                    .to_owned(),
            ));
        }
        if !matches!(self.batch_disabled_status, 404 | 405) {
            return Err(invalid(
                "batch_disabled_status",
                format!("{} is neither 404 nor 405", self.batch_disabled_status),
            ));
        }
        if self.burst == 0 {
            return Err(invalid("burst", "must be at least 1".to_owned()));
        }
        if self.token_ttl.is_zero() {
            return Err(invalid("token_ttl", "must be longer than 0".to_owned()));
        }
        if self.page_token_ttl.is_zero() {
            return Err(invalid(
                "page_token_ttl",
                "must be longer than 0".to_owned(),
            ));
        }
        for (i, c) in self.credentials.iter().enumerate() {
            if c.client_id.is_empty() || c.client_secret.is_empty() {
                return Err(invalid(
                    "credentials",
                    format!("entry {i} has an empty client_id or client_secret"),
                ));
            }
        }
        Ok(())
    }
}

/// `rate_limit_per_second`: a number, 0 or null (both unlimited).
fn quota<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value: Option<u32> = serde::Deserialize::deserialize(d)?;
    Ok(value.filter(|n| *n > 0))
}

fn invalid(key: &'static str, reason: String) -> SimError {
    SimError::InvalidConfig { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = SimConfig::default();
        assert_eq!(c.seed, 42);
        assert_eq!(c.accounts, 1000);
        assert_eq!(c.rate_limit_per_second, Some(50));
        assert_eq!(c.burst, 100);
        assert_eq!(c.token_ttl, Duration::from_secs(3600));
        assert_eq!(c.page_token_ttl, Duration::from_secs(900));
        assert_eq!(c.stall, Duration::from_secs(30));
        assert!(c.track_calls);
        assert_eq!(c.credentials.len(), 2);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn deserializes_humantime_and_refuses_unknown_keys() {
        let c: SimConfig = serde_json::from_str(
            r#"{"seed":7,"latency":"250ms","stall":"2s","today":"2026-11-23","rate_limit_per_second":null}"#,
        )
        .expect("valid config");
        assert_eq!(c.seed, 7);
        assert_eq!(c.latency, Duration::from_millis(250));
        assert_eq!(c.stall, Duration::from_secs(2));
        assert_eq!(c.rate_limit_per_second, None);
        assert_eq!(c.accounts, 1000, "missing keys take their default");
        assert!(serde_json::from_str::<SimConfig>(r#"{"sead":7}"#).is_err());
        let zero: SimConfig =
            serde_json::from_str(r#"{"rate_limit_per_second":0}"#).expect("valid config");
        assert_eq!(zero.rate_limit_per_second, None, "0 means unlimited");
        let some: SimConfig =
            serde_json::from_str(r#"{"rate_limit_per_second":20}"#).expect("valid config");
        assert_eq!(some.rate_limit_per_second, Some(20));
    }

    #[test]
    fn validation_names_the_wrong_key() {
        let c = SimConfig {
            partial_rate: 1.5,
            ..SimConfig::default()
        };
        match c.validate() {
            Err(SimError::InvalidConfig { key, .. }) => assert_eq!(key, "partial_rate"),
            other => panic!("expected invalid partial_rate, got {other:?}"),
        }
        let c = SimConfig {
            permanent_error_rate: 0.6,
            partial_rate: 0.6,
            ..SimConfig::default()
        };
        assert!(c.validate().is_err());
        let c = SimConfig {
            burst: 0,
            ..SimConfig::default()
        };
        assert!(c.validate().is_err());
        let c = SimConfig {
            wrong_type_record_rate: -0.1,
            ..SimConfig::default()
        };
        match c.validate() {
            Err(SimError::InvalidConfig { key, .. }) => assert_eq!(key, "wrong_type_record_rate"),
            other => panic!("expected invalid wrong_type_record_rate, got {other:?}"),
        }
        let c = SimConfig {
            page_token_cycle_after: 1,
            ..SimConfig::default()
        };
        match c.validate() {
            Err(SimError::InvalidConfig { key, .. }) => assert_eq!(key, "page_token_cycle_after"),
            other => panic!("expected invalid page_token_cycle_after, got {other:?}"),
        }
        for ok in [0, 2, 7] {
            let c = SimConfig {
                page_token_cycle_after: ok,
                ..SimConfig::default()
            };
            assert!(c.validate().is_ok(), "{ok}");
        }
    }

    #[test]
    fn listing_and_token_faults_are_off_by_default_and_read_from_json() {
        let c = SimConfig::default();
        assert_eq!(
            (
                c.invalid_utf8_record_rate,
                c.lone_surrogate_record_rate,
                c.wrong_type_record_rate
            ),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(
            (c.page_token_cycle_after, c.token_delay),
            (0, Duration::ZERO)
        );
        let c: SimConfig = serde_json::from_str(
            r#"{"invalid_utf8_record_rate":0.1,"lone_surrogate_record_rate":0.2,"wrong_type_record_rate":0.3,"page_token_cycle_after":4,"token_delay":"1h"}"#,
        )
        .expect("valid config");
        assert_eq!(c.invalid_utf8_record_rate, 0.1);
        assert_eq!(c.lone_surrogate_record_rate, 0.2);
        assert_eq!(c.wrong_type_record_rate, 0.3);
        assert_eq!(c.page_token_cycle_after, 4);
        assert_eq!(c.token_delay, Duration::from_secs(3600));
    }

    #[test]
    fn first_attempt_and_batch_keys_default_validate_and_read_from_json() {
        let c = SimConfig::default();
        assert_eq!(c.rate_limited_first_attempt_rate, 0.0);
        assert_eq!(c.fault_retry_after, Duration::from_secs(1));
        assert!(c.batch_endpoint);
        assert_eq!(c.batch_disabled_status, 404);
        assert!(c.credentials.iter().all(|c| c.batch_endpoint));
        let c: SimConfig = serde_json::from_str(
            r#"{"rate_limited_first_attempt_rate":0.25,"fault_retry_after":"2500ms",
                "batch_endpoint":false,"batch_disabled_status":405,
                "credentials":[{"client_id":"a","client_secret":"s","scope":"esg.read"},
                  {"client_id":"b","client_secret":"t","scope":"esg.read","batch_endpoint":false}]}"#,
        )
        .expect("valid config");
        assert_eq!(c.rate_limited_first_attempt_rate, 0.25);
        assert_eq!(c.fault_retry_after, Duration::from_millis(2500));
        assert!(!c.batch_endpoint);
        assert_eq!(c.batch_disabled_status, 405);
        assert_eq!(
            c.credentials
                .iter()
                .map(|c| c.batch_endpoint)
                .collect::<Vec<_>>(),
            [true, false],
            "batch_endpoint defaults to true per credential"
        );
        assert!(c.validate().is_ok());
        for (c, key) in [
            (
                SimConfig {
                    batch_disabled_status: 403,
                    ..SimConfig::default()
                },
                "batch_disabled_status",
            ),
            (
                SimConfig {
                    rate_limited_first_attempt_rate: 1.5,
                    ..SimConfig::default()
                },
                "rate_limited_first_attempt_rate",
            ),
        ] {
            match c.validate() {
                Err(SimError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn collapse_and_token_outage_are_off_by_default_read_from_json_and_validated() {
        let c = SimConfig::default();
        assert_eq!((c.listing_hidden_share, c.token_unavailable), (0.0, false));
        let c: SimConfig =
            serde_json::from_str(r#"{"listing_hidden_share":0.5,"token_unavailable":true}"#)
                .expect("valid config");
        assert_eq!((c.listing_hidden_share, c.token_unavailable), (0.5, true));
        let c = SimConfig {
            listing_hidden_share: 1.5,
            ..SimConfig::default()
        };
        match c.validate() {
            Err(SimError::InvalidConfig { key, .. }) => assert_eq!(key, "listing_hidden_share"),
            other => panic!("expected invalid listing_hidden_share, got {other:?}"),
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", SimConfig::default());
        assert!(!text.contains("scorer-secret"), "{text}");
        assert!(text.contains("esg-scorer"));
    }
}

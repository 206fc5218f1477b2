//! Every metric the job exposes: its name, kind, unit and description, declared once.
//!
//! The stages and the binary record metrics through the `metrics` facade with these constants,
//! never with a name written out; [`describe_all`] gives the exporter the descriptions (the
//! `# HELP` lines). Names follow Prometheus conventions: `esg_` prefix, base units
//! (`_seconds`), `_total` for counters; labels take values from closed sets (never an account
//! id or a run id). The alert rules in `ops/prometheus/` and the dashboard in `ops/grafana/`
//! use these names: renaming one is a breaking change for them (a test here checks that every
//! name they use is declared).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

// ---- runs (the assembler, when a run's file is written) -------------------------------------

/// Gauge, label `kind` (`daily`, `rerun`, `replay`): Unix time the latest run of the kind started.
pub const RUN_START_TIMESTAMP_SECONDS: &str = "esg_run_start_timestamp_seconds";
/// Gauge, labels `kind`, `outcome`: Unix time the latest run of the kind ended.
pub const RUN_END_TIMESTAMP_SECONDS: &str = "esg_run_end_timestamp_seconds";
/// Gauge: Unix time the latest daily run wrote its file.
pub const LAST_SUCCESSFUL_RUN_TIMESTAMP_SECONDS: &str = "esg_last_successful_run_timestamp_seconds";
/// Gauge, label `kind`: 1 while a run of the kind is in progress.
pub const RUN_IN_PROGRESS: &str = "esg_run_in_progress";
/// Gauge, label `kind`: duration of the latest ended run of the kind.
pub const RUN_DURATION_SECONDS: &str = "esg_run_duration_seconds";
/// Counter, labels `kind`, `outcome`: runs ended.
pub const RUNS_TOTAL: &str = "esg_runs_total";
/// Gauge, label `status` (`successful`, `partial`, `failed`): accounts of the latest daily file.
pub const RUN_ACCOUNTS: &str = "esg_run_accounts";
/// Gauge: failed accounts over all accounts of the latest daily file.
pub const RUN_FAILURE_RATIO: &str = "esg_run_failure_ratio";

// ---- the ESG API (the scorer) ---------------------------------------------------------------

/// Counter, label `outcome` (`ok`, `client_error`, `rate_limited`, `server_error`, `timeout`,
/// `transport_error`, `out_of_contract`): ESG API requests.
pub const API_REQUESTS_TOTAL: &str = "esg_api_requests_total";
/// Histogram, seconds: ESG API request latency; buckets [`API_REQUEST_DURATION_BUCKETS`].
pub const API_REQUEST_DURATION_SECONDS: &str = "esg_api_request_duration_seconds";
/// Counter: ESG API attempts that failed and were tried again.
pub const API_RETRIES_TOTAL: &str = "esg_api_retries_total";
/// Counter: API calls that waited for the rate limiter.
pub const RATE_LIMITER_WAITS_TOTAL: &str = "esg_rate_limiter_waits_total";
/// Gauge: ESG API calls in flight in this process.
pub const API_IN_FLIGHT: &str = "esg_api_in_flight";
/// Gauge, requests per second: the ESG API send rate in force in this process (the adaptive
/// rate controller's, at most this process's share of the tenant quota).
pub const API_SEND_RATE: &str = "esg_api_send_rate";
/// Counter: ESG API answers 429 (rate limited); they are not attempts.
pub const API_RATE_LIMITED_TOTAL: &str = "esg_api_rate_limited_total";
/// Counter: times every caller of this process was paused because most recent answers were 429.
pub const API_PAUSES_TOTAL: &str = "esg_api_pauses_total";
/// Histogram: accounts per batch request sent to `POST /v1/esg-analysis:batch`.
pub const API_BATCH_ACCOUNTS: &str = "esg_api_batch_accounts";
/// Counter: single calls answered 304 Not Modified (the stored analysis is kept).
pub const API_NOT_MODIFIED_TOTAL: &str = "esg_api_not_modified_total";
/// Gauge: account events of this scorer's partitions not yet scored.
pub const SCORER_CONSUMER_LAG_RECORDS: &str = "esg_scorer_consumer_lag_records";

// ---- alerts (the binary) --------------------------------------------------------------------

/// Counter, labels `channel` (`email`, `pagerduty`, `webhook`), `kind`: alerts delivered.
pub const ALERTS_SENT_TOTAL: &str = "esg_alerts_sent_total";
/// Counter, label `channel`: alert deliveries that failed.
pub const ALERT_FAILURES_TOTAL: &str = "esg_alert_failures_total";

// ---- delivery (the assembler, after a run's files are written; `esg deliver`) ---------------

/// Counter, labels `target` (the `[[delivery]]` names), `outcome` (`delivered`, `failed`):
/// files delivered, and files a target gave up on.
pub const DELIVERIES_TOTAL: &str = "esg_deliveries_total";
/// Counter, label `target`: bytes delivered.
pub const DELIVERY_BYTES_TOTAL: &str = "esg_delivery_bytes_total";
/// Counter, label `target`: failed delivery attempts that were tried again.
pub const DELIVERY_RETRIES_TOTAL: &str = "esg_delivery_retries_total";
/// Counter: lines the delivery record could not take.
pub const DELIVERY_RECORD_FAILURES_TOTAL: &str = "esg_delivery_record_failures_total";

// ---- audit (the binary) ----------------------------------------------------------------------

/// Counter: audit entries or checkpoints that could not be written.
pub const AUDIT_FAILURES_TOTAL: &str = "esg_audit_failures_total";
/// Counter: files past retention that could not be removed (Object Lock, a read-only share).
pub const PURGE_REFUSED_TOTAL: &str = "esg_purge_refused_total";

/// Upper bounds (seconds) of the buckets of [`API_REQUEST_DURATION_SECONDS`].
pub const API_REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric name above.
pub const ALL: &[&str] = &[
    RUN_START_TIMESTAMP_SECONDS,
    RUN_END_TIMESTAMP_SECONDS,
    LAST_SUCCESSFUL_RUN_TIMESTAMP_SECONDS,
    RUN_IN_PROGRESS,
    RUN_DURATION_SECONDS,
    RUNS_TOTAL,
    RUN_ACCOUNTS,
    RUN_FAILURE_RATIO,
    API_REQUESTS_TOTAL,
    API_REQUEST_DURATION_SECONDS,
    API_RETRIES_TOTAL,
    RATE_LIMITER_WAITS_TOTAL,
    API_IN_FLIGHT,
    API_SEND_RATE,
    API_RATE_LIMITED_TOTAL,
    API_PAUSES_TOTAL,
    API_BATCH_ACCOUNTS,
    API_NOT_MODIFIED_TOTAL,
    SCORER_CONSUMER_LAG_RECORDS,
    ALERTS_SENT_TOTAL,
    ALERT_FAILURES_TOTAL,
    DELIVERIES_TOTAL,
    DELIVERY_BYTES_TOTAL,
    DELIVERY_RETRIES_TOTAL,
    DELIVERY_RECORD_FAILURES_TOTAL,
    AUDIT_FAILURES_TOTAL,
    PURGE_REFUSED_TOTAL,
];

/// Registers the description (and unit) of every metric with the installed recorder. Call
/// once, after installing the exporter; without a recorder it does nothing.
pub fn describe_all() {
    describe_gauge!(
        RUN_START_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time the latest run of the kind started."
    );
    describe_gauge!(
        RUN_END_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time the latest run of the kind ended, by outcome."
    );
    describe_gauge!(
        LAST_SUCCESSFUL_RUN_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time the latest daily run wrote its file."
    );
    describe_gauge!(RUN_IN_PROGRESS, "1 while a run of the kind is in progress.");
    describe_gauge!(
        RUN_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of the latest ended run of the kind."
    );
    describe_counter!(RUNS_TOTAL, "Runs ended, by kind and outcome.");
    describe_gauge!(
        RUN_ACCOUNTS,
        "Accounts of the latest daily file, by status."
    );
    describe_gauge!(
        RUN_FAILURE_RATIO,
        "Failed accounts over all accounts of the latest daily file."
    );
    describe_counter!(API_REQUESTS_TOTAL, "ESG API requests, by outcome.");
    describe_histogram!(
        API_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "ESG API request latency."
    );
    describe_counter!(
        API_RETRIES_TOTAL,
        "ESG API attempts that failed and were tried again."
    );
    describe_counter!(
        RATE_LIMITER_WAITS_TOTAL,
        "API calls that waited for the rate limiter."
    );
    describe_gauge!(API_IN_FLIGHT, "ESG API calls in flight in this process.");
    describe_gauge!(
        API_SEND_RATE,
        "ESG API send rate in force (requests per second), at most this process's share of the quota."
    );
    describe_counter!(
        API_RATE_LIMITED_TOTAL,
        "ESG API answers 429; they are not attempts."
    );
    describe_counter!(
        API_PAUSES_TOTAL,
        "Pauses of every caller because most recent ESG API answers were 429."
    );
    describe_counter!(
        DELIVERIES_TOTAL,
        "Files delivered to a delivery target, and files a target gave up on, by outcome."
    );
    describe_counter!(
        DELIVERY_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes delivered to a delivery target."
    );
    describe_counter!(
        DELIVERY_RETRIES_TOTAL,
        "Failed delivery attempts that were tried again."
    );
    describe_counter!(
        DELIVERY_RECORD_FAILURES_TOTAL,
        "Lines the delivery record could not take."
    );
    describe_counter!(
        PURGE_REFUSED_TOTAL,
        "Files past retention that could not be removed."
    );
    describe_counter!(
        AUDIT_FAILURES_TOTAL,
        "Audit entries or checkpoints that could not be written."
    );
    describe_histogram!(API_BATCH_ACCOUNTS, "Accounts per ESG API batch request.");
    describe_counter!(
        API_NOT_MODIFIED_TOTAL,
        "ESG API single calls answered 304 Not Modified."
    );
    describe_gauge!(
        SCORER_CONSUMER_LAG_RECORDS,
        "Account events of this scorer's partitions not yet scored."
    );
    describe_counter!(ALERTS_SENT_TOTAL, "Alerts delivered, by channel and kind.");
    describe_counter!(
        ALERT_FAILURES_TOTAL,
        "Alert deliveries that failed, by channel."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let unique: BTreeSet<&str> = ALL.iter().copied().collect();
        assert_eq!(unique.len(), ALL.len(), "a name is declared twice");
        for name in ALL {
            assert!(name.starts_with("esg_"), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            for suffix in ["_bucket", "_sum", "_count"] {
                assert!(
                    !name.ends_with(suffix),
                    "{name} ends with a reserved suffix"
                );
            }
        }
        assert!(API_REQUEST_DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    /// Every `esg_…` metric the alert rules, their tests and the dashboard name is declared
    /// here (a histogram's `_bucket`, `_sum` and `_count` series count as its name).
    #[test]
    fn every_metric_the_ops_files_use_is_declared() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let declared: BTreeSet<&str> = ALL.iter().copied().collect();
        let mut used = BTreeSet::new();
        for file in [
            "ops/prometheus/esg-rules.yml",
            "ops/prometheus/esg-rules.test.yml",
            "ops/grafana/esg-dashboard.json",
        ] {
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("reading {file}: {e}"));
            used.extend(metric_names(&text));
        }
        assert!(used.len() > 5, "{used:?}");
        for name in &used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(b)))
                .unwrap_or(name);
            assert!(
                declared.contains(base),
                "{name} is used in ops/ but not declared"
            );
        }
    }

    /// The `esg_[a-z_]+` words of `text`, leaving out config keys (`esg_api.url`) and the
    /// bare prefix of a pattern (`esg_*`).
    fn metric_names(text: &str) -> BTreeSet<String> {
        let bytes = text.as_bytes();
        let mut names = BTreeSet::new();
        let mut i = 0;
        while let Some(found) = text[i..].find("esg_") {
            let start = i + found;
            let word_start = start == 0 || !is_word(bytes[start - 1]);
            let mut end = start + 4;
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            let next = bytes.get(end).copied();
            let config_key = next == Some(b'.');
            let pattern = next == Some(b'*') || end == start + 4;
            if word_start && !config_key && !pattern {
                names.insert(text[start..end].to_owned());
            }
            i = end;
        }
        names
    }

    fn is_word(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b == b'_'
    }
}

//! HTTP helpers shared by the job's API clients (the account system's and the ESG vendor's):
//! reading `Retry-After`, formatting an error with its causes, and the contracts' account id
//! pattern.
//!
//! Responsible for: the rules both contracts share, written once. Not responsible for: what a
//! client does with them (how long it waits, whether it retries); each client decides that.

use std::time::{Duration, SystemTime};

/// Longest account id the contracts' pattern allows, in bytes (all of it ASCII).
pub const MAX_ACCOUNT_ID_LEN: usize = 64;

/// Causes of an error followed by [`error_chain`]; deeper ones are left out, so a chain that
/// loops cannot make the text grow without end.
pub const MAX_CHAIN_SOURCES: usize = 5;

/// The contracts' pattern for account ids, `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, without a regex
/// engine.
pub fn is_valid_account_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_ACCOUNT_ID_LEN
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

/// An error and its causes, `a: b: c` (at most [`MAX_CHAIN_SOURCES`] causes). reqwest keeps the
/// useful part of a failure ("connection refused", "operation timed out") in the causes, which
/// its own `Display` leaves out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    for _ in 0..MAX_CHAIN_SOURCES {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A `Retry-After` value as a wait from `now`: delta-seconds, or an HTTP-date (a date in the
/// past is no wait). `None` when it is neither. Not capped: more seconds than a `u64` holds
/// give [`Duration::MAX`], and the caller caps (or use [`retry_after`]).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: parsing fails on overflow alone, which means "very long".
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` header of an answer as a wait from `now`, at most `cap`; `None` when the
/// header is absent or unreadable.
pub fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: SystemTime,
    cap: Duration,
) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now).map(|wait| wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn account_id_pattern() {
        for id in ["a", "Z", "0", "A1._-b", "ACC00000001", &"x".repeat(64)] {
            assert!(is_valid_account_id(id), "{id}");
        }
        for id in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a\n",
            "a/b",
            "é",
            "aé",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_account_id(id), "{id:?}");
        }
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    fn layers(names: &[&'static str]) -> Layer {
        names
            .iter()
            .rev()
            .fold(None, |inner, name| Some(Layer(name, inner.map(Box::new))))
            .expect("at least one layer")
    }

    #[test]
    fn error_chain_joins_the_causes_and_stops_after_five() {
        assert_eq!(error_chain(&layers(&["alone"])), "alone");
        assert_eq!(
            error_chain(&layers(&[
                "request failed",
                "connect",
                "connection refused"
            ])),
            "request failed: connect: connection refused"
        );
        let deep = layers(&["0", "1", "2", "3", "4", "5", "6", "7"]);
        assert_eq!(error_chain(&deep), "0: 1: 2: 3: 4: 5");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::MAX),
            "overflow is very long, not unreadable"
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        for unreadable in ["soon", "-5", "", "1.5", "+3"] {
            assert_eq!(parse_retry_after(unreadable, now), None, "{unreadable:?}");
        }
    }

    #[test]
    fn retry_after_header_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = Duration::from_secs(600);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("header value"));
            h
        };
        assert_eq!(
            retry_after(&with("7"), now, cap),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(&with("86400"), now, cap), Some(cap));
        assert_eq!(
            retry_after(&with("99999999999999999999"), now, cap),
            Some(cap)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        assert_eq!(retry_after(&with(&later), now, cap), Some(cap));
        assert_eq!(retry_after(&with("soon"), now, cap), None);
        assert_eq!(retry_after(&HeaderMap::new(), now, cap), None);
        let mut not_text = HeaderMap::new();
        not_text.insert(
            RETRY_AFTER,
            HeaderValue::from_bytes(b"\xff").expect("opaque header value"),
        );
        assert_eq!(retry_after(&not_text, now, cap), None);
    }
}

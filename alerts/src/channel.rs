//! The channels an alert goes out through, and how one delivery attempt fails.

use std::fmt;

/// A way of telling people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// SMTP, to the development team and the business stakeholders by route.
    Email,
    /// PagerDuty Events API v2, to the operator on call.
    #[serde(rename = "pagerduty")]
    PagerDuty,
    /// A POST of JSON to a URL (chat, ticketing, the firm's own monitoring).
    Webhook,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::PagerDuty, Channel::Webhook];

    /// `email`, `pagerduty` or `webhook`: the log field and metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::PagerDuty => "pagerduty",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one attempt on one channel failed. The message never carries a secret or a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttemptError {
    /// True when the same attempt a moment later may succeed (connection refused, timeout,
    /// SMTP 4xx, HTTP 429/5xx); false when it will fail the same way (SMTP 5xx such as a refused
    /// password, HTTP 400, a TLS certificate that does not verify).
    pub(crate) retryable: bool,
    /// What went wrong.
    pub(crate) message: String,
}

impl AttemptError {
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        AttemptError {
            retryable: true,
            message: message.into(),
        }
    }

    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        AttemptError {
            retryable: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

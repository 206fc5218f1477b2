//! The one HTTP request shape PagerDuty and the webhook share: POST a JSON document, read at most
//! a few kilobytes of the answer, and sort the outcome into delivered, retryable or permanent.

use crate::channel::AttemptError;
use crate::config::AlertConfigError;
use reqwest::StatusCode;
use std::time::Duration;

/// Bytes of an error answer kept for the failure message.
const MAX_ERROR_BODY_BYTES: usize = 2048;

/// Characters of an error answer quoted in the failure message.
const MAX_QUOTED_CHARS: usize = 300;

/// The HTTP client of the alerter: no redirects (a POST carrying a routing key or a bearer token
/// is never sent somewhere else), `User-Agent: esg-alerts/<version>`. Timeouts are per request.
pub(crate) fn client() -> Result<reqwest::Client, AlertConfigError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("esg-alerts/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(AlertConfigError::HttpClient)
}

/// POSTs `body` as JSON. Delivered on a 2xx answer; 408, 429 and 5xx answers, timeouts and
/// connection failures are retryable; any other answer is permanent. Error messages carry the
/// status and the start of the answer, never the URL (a webhook URL may carry a token).
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    bearer_token: Option<&str>,
    timeout: Duration,
    body: &serde_json::Value,
) -> Result<StatusCode, AttemptError> {
    let mut request = client.post(url.clone()).timeout(timeout).json(body);
    if let Some(token) = bearer_token {
        request = request.bearer_auth(token);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| AttemptError::retryable(describe(e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(status);
    }
    let mut answer = Vec::new();
    while answer.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    answer.truncate(MAX_ERROR_BODY_BYTES);
    let quoted = crate::alert::one_line(&String::from_utf8_lossy(&answer), MAX_QUOTED_CHARS);
    let message = if quoted.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {quoted}")
    };
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Err(AttemptError::retryable(message))
    } else {
        Err(AttemptError::permanent(message))
    }
}

/// A transport error without its URL, with its cause chain.
fn describe(error: reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut message = format!("{what}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

//! OAuth 2.0 client-credentials tokens for the firm's authentication system.
//!
//! Both external APIs (the account system and the ESG vendor) take a bearer token from the same
//! `token_url` with their own client id, secret and scope. [`TokenSource`] fetches one token,
//! shares it between every concurrent caller, renews it shortly before `expires_in` runs out, and
//! drops it when a caller reports a 401 ([`TokenSource::invalidate`]), so that only one request
//! for a new token is ever in flight per source. Every token request is bounded by a timeout
//! ([`DEFAULT_TOKEN_TIMEOUT`], or [`TokenSource::with_timeout`]): a token endpoint that accepts
//! the connection and never answers is [`AuthError::Unavailable`] once it runs out, never a
//! caller waiting forever.
//!
//! Module [`http`] holds the HTTP helpers both API clients share (`Retry-After`, error chains,
//! the account id pattern); module [`tls`] the transport rules (https except to this machine) and
//! a client's TLS files (private CA, client certificate).

pub mod http;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A secret that is never printed: `Debug` and `Display` show `***`; its memory is overwritten
/// when it is dropped.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, zeroize::ZeroizeOnDrop)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What a secret serialises as.
    pub const MASK: &'static str = "********";

    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Serialises as `"********"`, never the secret: a configuration written out (`esg check-config`)
/// shows that a secret is set, not what it is.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Secret::MASK)
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credentials were refused (HTTP 400/401/403): fatal, retrying will not help.
    #[error("token endpoint {url} refused client {client_id}: HTTP {status} {error}")]
    Refused {
        url: String,
        client_id: String,
        status: u16,
        error: String,
    },
    /// The endpoint could not be reached or answered 5xx/429: transient.
    #[error("token endpoint {url} unavailable: {detail}")]
    Unavailable { url: String, detail: String },
    /// The endpoint answered 200 with a body outside the contract.
    #[error("token endpoint {url} answered outside the contract: {detail}")]
    BadResponse { url: String, detail: String },
}

impl AuthError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Unavailable { .. })
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: i64,
}

/// Longest time a token request may take, answer included, unless
/// [`TokenSource::with_timeout`] says otherwise.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

struct Cached {
    token: Arc<str>,
    renew_at: Instant,
}

/// Fetches and caches client-credentials tokens. Share it behind an `Arc`.
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
    timeout: Duration,
    cached: Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A source for `client_id` at `token_url`; each token request is bounded by
    /// [`DEFAULT_TOKEN_TIMEOUT`].
    pub fn new(
        http: reqwest::Client,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
        scope: Option<String>,
    ) -> Self {
        TokenSource {
            http,
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret,
            scope,
            timeout: DEFAULT_TOKEN_TIMEOUT,
            cached: Mutex::new(None),
        }
    }

    /// The same source with each token request bounded by `timeout` (connection, request and
    /// answer together). A zero timeout is taken as the default.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = if timeout.is_zero() {
            DEFAULT_TOKEN_TIMEOUT
        } else {
            timeout
        };
        self
    }

    /// A valid bearer token, fetched only when none is cached or it is about to expire.
    pub async fn token(&self) -> Result<Arc<str>, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.renew_at {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `token` after the API answered 401 with it. A token already replaced by a
    /// concurrent caller is left alone, so a burst of 401s causes one refresh, not many.
    pub async fn invalidate(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &*c.token == token) {
            *cached = None;
        }
    }

    /// One token request, bounded by the timeout.
    async fn fetch(&self) -> Result<Cached, AuthError> {
        match tokio::time::timeout(self.timeout, self.fetch_unbounded()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(AuthError::Unavailable {
                url: self.token_url.clone(),
                detail: format!("no complete answer within {:?} (timeout)", self.timeout),
            }),
        }
    }

    async fn fetch_unbounded(&self) -> Result<Cached, AuthError> {
        let url = self.token_url.clone();
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let started = Instant::now();
        let resp =
            self.http
                .post(&url)
                .form(&form)
                .send()
                .await
                .map_err(|e| AuthError::Unavailable {
                    url: url.clone(),
                    detail: http::error_chain(&e.without_url()),
                })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| AuthError::Unavailable {
            url: url.clone(),
            detail: http::error_chain(&e.without_url()),
        })?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(AuthError::Unavailable {
                url,
                detail: format!("HTTP {}", status.as_u16()),
            });
        }
        if !status.is_success() {
            let error = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_default();
            return Err(AuthError::Refused {
                url,
                client_id: self.client_id.clone(),
                status: status.as_u16(),
                error,
            });
        }
        let parsed: TokenResponse =
            serde_json::from_str(&body).map_err(|e| AuthError::BadResponse {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        if !parsed.token_type.eq_ignore_ascii_case("bearer") || parsed.access_token.is_empty() {
            return Err(AuthError::BadResponse {
                url,
                detail: format!("token_type {:?}", parsed.token_type),
            });
        }
        // Renew at 90% of the lifetime (at most 60 s early) so no request goes out with a token
        // that expires on the way.
        let ttl = Duration::from_secs(parsed.expires_in.max(0) as u64);
        let margin = (ttl / 10).min(Duration::from_secs(60));
        tracing::debug!(client_id = %self.client_id, ttl_s = ttl.as_secs(), "token fetched");
        Ok(Cached {
            token: parsed.access_token.into(),
            renew_at: started + ttl.saturating_sub(margin),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{extract::State, routing::post, Form, Json, Router};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/oauth2/token")
    }

    async fn token_endpoint(
        State(calls): State<Arc<AtomicUsize>>,
        Form(form): Form<HashMap<String, String>>,
    ) -> Result<Json<serde_json::Value>, (axum::http::StatusCode, Json<serde_json::Value>)> {
        if form.get("client_secret").map(String::as_str) != Some("s3cret")
            || form.get("grant_type").map(String::as_str) != Some("client_credentials")
        {
            return Err((
                axum::http::StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({"error": "invalid_client"})),
            ));
        }
        let n = calls.fetch_add(1, Ordering::SeqCst);
        Ok(Json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": form.get("scope"),
        })))
    }

    #[tokio::test]
    async fn caches_until_invalidated_and_refreshes_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let url = serve(
            Router::new()
                .route("/oauth2/token", post(token_endpoint))
                .with_state(calls.clone()),
        )
        .await;
        let source = Arc::new(TokenSource::new(
            reqwest::Client::new(),
            url,
            "scorer",
            Secret::new("s3cret"),
            Some("esg.read".into()),
        ));
        let t1 = source.token().await.expect("token");
        assert_eq!(&*t1, "tok-0");
        assert_eq!(&*source.token().await.expect("token"), "tok-0");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Many callers see a 401 with the same token: one refresh.
        let mut handles = Vec::new();
        for _ in 0..10 {
            let s = source.clone();
            let t = t1.clone();
            handles.push(tokio::spawn(async move {
                s.invalidate(&t).await;
                s.token().await.expect("token")
            }));
        }
        for h in handles {
            assert_eq!(&*h.await.expect("join"), "tok-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_credentials_are_fatal_and_name_the_client() {
        let calls = Arc::new(AtomicUsize::new(0));
        let url = serve(
            Router::new()
                .route("/oauth2/token", post(token_endpoint))
                .with_state(calls),
        )
        .await;
        let source = TokenSource::new(
            reqwest::Client::new(),
            url,
            "scorer",
            Secret::new("wrong"),
            None,
        );
        let err = source.token().await.expect_err("refused");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("scorer") && text.contains("invalid_client"),
            "{text}"
        );
        assert!(!text.contains("wrong"), "secret leaked: {text}");
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_transient() {
        let source = TokenSource::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/oauth2/token",
            "scorer",
            Secret::new("x"),
            None,
        );
        assert!(source.token().await.expect_err("down").is_transient());
    }

    #[tokio::test]
    async fn a_token_endpoint_that_never_answers_times_out_as_unavailable() {
        // Accepts every connection and holds it open without reading or answering.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let source = TokenSource::new(
            reqwest::Client::new(),
            format!("http://{addr}/oauth2/token"),
            "producer",
            Secret::new("s3cret"),
            None,
        )
        .with_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let err = source.token().await.expect_err("no answer");
        assert!(err.is_transient(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("timeout") && text.contains(&addr.to_string()),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "secret leaked: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bounded by the timeout: {:?}",
            started.elapsed()
        );
        silent.abort();
    }

    #[test]
    fn the_default_timeout_applies_unless_one_is_given() {
        let source = || {
            TokenSource::new(
                reqwest::Client::new(),
                "http://127.0.0.1:9/oauth2/token",
                "scorer",
                Secret::new("x"),
                None,
            )
        };
        assert_eq!(source().timeout, DEFAULT_TOKEN_TIMEOUT);
        let short = source().with_timeout(Duration::from_secs(2));
        assert_eq!(short.timeout, Duration::from_secs(2));
        assert_eq!(
            source().with_timeout(Duration::ZERO).timeout,
            DEFAULT_TOKEN_TIMEOUT
        );
        assert!(format!("{:?}", short).contains("2s"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(
            serde_json::to_string(&s).expect("serialises"),
            "\"********\""
        );
    }
}

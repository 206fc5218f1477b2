//! The firm's token endpoint (`POST /oauth2/token`, client credentials) and bearer checks.
//!
//! Tokens are self-contained: expiry, scope, the client they were issued to and a check sum keyed
//! by a per-simulator secret, so nothing is stored per token and a token from another simulator
//! is refused. The client id lets the ESG API tell tenants apart (the batch endpoint per client). A missing,
//! malformed, expired or wrong-scope token answers 401 with the contract's error body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::hash::{fnv1a, hex, mix, unhex};
use crate::http::{error, first, json_text, query_pairs};
use crate::state::{unix_millis, State as SimState};

/// Why a request's bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    Missing,
    Invalid,
    Expired,
    WrongScope,
}

impl Denied {
    fn message(self, scope: &str) -> String {
        match self {
            Denied::Missing => "a bearer token is required".to_owned(),
            Denied::Invalid => "the bearer token is not valid".to_owned(),
            Denied::Expired => "the bearer token has expired".to_owned(),
            Denied::WrongScope => format!("the bearer token does not grant scope {scope}"),
        }
    }
}

/// What a token this simulator issued says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claims {
    /// Space-separated scopes granted.
    scope: String,
    /// Unix milliseconds at which it expires.
    expires_ms: u64,
    /// The OAuth client it was issued to.
    client_id: String,
}

/// A token issued to `client_id` granting `scope` until `expires_ms` (Unix milliseconds).
fn issue(key: u64, client_id: &str, scope: &str, expires_ms: u64) -> String {
    let nonce: u64 = rand::random();
    let payload = format!(
        "sim.{expires_ms}.{nonce:016x}.{}.{}",
        hex(scope.as_bytes()),
        hex(client_id.as_bytes())
    );
    let mac = mix(key, &[fnv1a(payload.as_bytes())]);
    format!("{payload}.{mac:016x}")
}

/// The claims of a token this simulator issued, unchanged.
fn verify(key: u64, token: &str) -> Option<Claims> {
    let (payload, mac) = token.rsplit_once('.')?;
    if format!("{:016x}", mix(key, &[fnv1a(payload.as_bytes())])) != mac {
        return None;
    }
    let mut parts = payload.split('.');
    if parts.next()? != "sim" {
        return None;
    }
    let expires_ms: u64 = parts.next()?.parse().ok()?;
    let _nonce = parts.next()?;
    let scope = String::from_utf8(unhex(parts.next()?)?).ok()?;
    let client_id = String::from_utf8(unhex(parts.next()?)?).ok()?;
    parts.next().is_none().then_some(Claims {
        scope,
        expires_ms,
        client_id,
    })
}

/// Checks the request's `Authorization: Bearer` token for `scope`; on success, the client id
/// the token was issued to.
pub(crate) fn authorize(st: &SimState, headers: &HeaderMap, scope: &str) -> Result<String, Denied> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Denied::Missing)?
        .to_str()
        .map_err(|_| Denied::Invalid)?;
    let (kind, token) = value.split_once(' ').ok_or(Denied::Invalid)?;
    if !kind.eq_ignore_ascii_case("bearer") {
        return Err(Denied::Invalid);
    }
    let claims = verify(st.key, token.trim()).ok_or(Denied::Invalid)?;
    if unix_millis() >= claims.expires_ms {
        return Err(Denied::Expired);
    }
    if !claims.scope.split_whitespace().any(|s| s == scope) {
        return Err(Denied::WrongScope);
    }
    Ok(claims.client_id)
}

/// The 401 answer for a refused token.
pub(crate) fn denied(d: Denied, scope: &str, request_id: Option<&str>) -> Response {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        &d.message(scope),
        request_id,
    );
    let challenge = match d {
        Denied::Missing => "Bearer",
        Denied::WrongScope => "Bearer error=\"insufficient_scope\"",
        Denied::Invalid | Denied::Expired => "Bearer error=\"invalid_token\"",
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": code, "error_description": description });
    json_text(status, body.to_string())
}

/// `POST /oauth2/token`: the client-credentials grant.
pub(crate) async fn token(State(st): State<Arc<SimState>>, body: Bytes) -> Response {
    st.count_token_request();
    let cfg = st.config();
    if !cfg.token_delay.is_zero() {
        tracing::debug!(
            delay_ms = u64::try_from(cfg.token_delay.as_millis()).unwrap_or(u64::MAX),
            "token request held (token_delay)"
        );
        if !st.pause(cfg.token_delay).await {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the token endpoint is shutting down",
            );
        }
    }
    if cfg.token_unavailable {
        tracing::debug!("token request refused (token_unavailable)");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token endpoint is unavailable",
        );
    }
    let Some(pairs) = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| query_pairs(Some(text)))
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    };
    match first(&pairs, "grant_type") {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )
        }
    }
    let client_id = first(&pairs, "client_id").unwrap_or("");
    let secret = first(&pairs, "client_secret").unwrap_or("");
    let Some(credential) = cfg
        .credentials
        .iter()
        .find(|c| c.client_id == client_id && c.client_secret == secret)
    else {
        tracing::info!(client_id, "token refused: unknown client or wrong secret");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"invalid_client"}"#,
        )
            .into_response();
    };
    let granted: Vec<&str> = credential.scope.split_whitespace().collect();
    let scope = match first(&pairs, "scope")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => granted.join(" "),
        Some(requested) if requested.split_whitespace().all(|s| granted.contains(&s)) => {
            requested.split_whitespace().collect::<Vec<_>>().join(" ")
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "the requested scope is not granted to this client",
            )
        }
    };
    let ttl_ms = u64::try_from(cfg.token_ttl.as_millis()).unwrap_or(u64::MAX);
    let access_token = issue(
        st.key,
        &credential.client_id,
        &scope,
        unix_millis().saturating_add(ttl_ms),
    );
    tracing::debug!(client_id, scope = %scope, "token issued");
    let body = serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": cfg.token_ttl.as_secs_f64().ceil() as u64,
        "scope": scope,
    });
    let mut resp = json_text(StatusCode::OK, body.to_string());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_unchanged() {
        let t = issue(7, "esg-scorer", "esg.read", 1_000);
        assert_eq!(
            verify(7, &t),
            Some(Claims {
                scope: "esg.read".to_owned(),
                expires_ms: 1_000,
                client_id: "esg-scorer".to_owned(),
            })
        );
        assert_eq!(verify(8, &t), None, "another simulator's token");
        let forged = t.replacen("sim.1000.", "sim.9999.", 1);
        assert_eq!(verify(7, &forged), None);
        let (payload, mac) = t.rsplit_once('.').expect("mac");
        let (rest, _client) = payload.rsplit_once('.').expect("client");
        let other_client = format!("{rest}.{}.{mac}", hex(b"esg-accounts"));
        assert_eq!(verify(7, &other_client), None, "the client id is signed");
        assert_eq!(verify(7, "garbage"), None);
        assert_eq!(verify(7, ""), None);
    }
}

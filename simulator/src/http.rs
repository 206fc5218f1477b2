//! Small HTTP helpers shared by the simulated APIs: error bodies, query strings, headers.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `X-Request-Id`.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An `application/json` response with a body written as text.
pub(crate) fn json_text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The contracts' error body: `{"error", "message"}` plus `requestId` when there is one.
pub(crate) fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&str>,
) -> Response {
    let mut body = serde_json::json!({ "error": code, "message": message });
    if let (Some(id), Some(map)) = (request_id, body.as_object_mut()) {
        map.insert("requestId".into(), id.into());
    }
    json_text(status, body.to_string())
}

/// The pairs of a query string, decoded; `None` when it is not valid form encoding.
pub(crate) fn query_pairs(raw: Option<&str>) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_str(raw.unwrap_or("")).ok()
}

/// The first value of `key` among the pairs.
pub(crate) fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Sets a header from a string that is known to be a valid header value (digits, ids).
pub(crate) fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_and_first_wins() {
        let pairs = query_pairs(Some("a=1&b=x%20y&a=2")).expect("valid");
        assert_eq!(first(&pairs, "a"), Some("1"));
        assert_eq!(first(&pairs, "b"), Some("x y"));
        assert_eq!(first(&pairs, "c"), None);
        assert_eq!(query_pairs(None), Some(vec![]));
    }
}

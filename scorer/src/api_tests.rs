//! Tests of `api`.

use super::*;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, AtomicUsize};
use std::sync::Mutex;

const AS_OF: &str = "2026-11-23";

fn as_of() -> NaiveDate {
    NaiveDate::from_str(AS_OF).expect("date")
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal")
}

/// One scripted answer of the fake API.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    fn ok(body: impl Into<String>) -> Self {
        Reply {
            body: body.into(),
            ..Reply::status(200)
        }
    }
    fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the fake API saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    account: String,
    as_of: Option<String>,
    authorization: Option<String>,
}

/// A fake ESG API plus token endpoint: answers are scripted per account and per call.
#[derive(Default)]
struct Fake {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    seen: Mutex<Vec<Seen>>,
    token_calls: AtomicUsize,
    /// Status the token endpoint answers with; 0 means 200 with a fresh token.
    token_status: AtomicU16,
}

impl Fake {
    fn script(&self, account: &str, replies: impl IntoIterator<Item = Reply>) {
        self.scripts
            .lock()
            .expect("lock")
            .entry(account.to_owned())
            .or_default()
            .extend(replies);
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
    fn left(&self, account: &str) -> usize {
        self.scripts
            .lock()
            .expect("lock")
            .get(account)
            .map_or(0, VecDeque::len)
    }
}

async fn analysis(
    State(fake): State<Arc<Fake>>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    fake.seen.lock().expect("lock").push(Seen {
        account: account.clone(),
        as_of: query.get("asOf").cloned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let reply = fake
        .scripts
        .lock()
        .expect("lock")
        .get_mut(&account)
        .and_then(VecDeque::pop_front)
        // An unscripted call is a test bug: answer something no test expects.
        .unwrap_or_else(|| Reply::status(418).body("unscripted"));
    tokio::time::sleep(reply.delay).await;
    let mut response = (
        StatusCode::from_u16(reply.status).expect("status"),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

async fn token(State(fake): State<Arc<Fake>>) -> Response {
    let status = fake.token_status.load(Ordering::SeqCst);
    if status != 0 {
        return (
            StatusCode::from_u16(status).expect("status"),
            r#"{"error":"invalid_client"}"#,
        )
            .into_response();
    }
    let n = fake.token_calls.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "access_token": format!("tok-{n}"),
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
    .into_response()
}

/// Starts the fake; returns it and its base URL.
async fn serve() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route("/v1/accounts/{id}/esg-analysis", get(analysis))
        .route("/oauth2/token", post(token))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (fake, format!("http://{addr}"))
}

/// Single calls (the batch endpoint has tests of its own, in `batch_tests.rs`).
fn test_config(url: &str) -> ApiClientConfig {
    ApiClientConfig {
        batch_size: 1,
        timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(2),
        backoff_cap: Duration::from_millis(20),
        ..ApiClientConfig::new(url)
    }
}

/// A client of `config.url` taking tokens from the fake at `token_url`.
fn client_with(token_url: &str, config: ApiClientConfig) -> (EsgApiClient, Arc<RateLimiter>) {
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        format!("{token_url}/oauth2/token"),
        "scorer",
        esg_auth::Secret::new("s3cret"),
        Some("esg.read".into()),
    ));
    let nz = |n| NonZeroU32::new(n).expect("non-zero");
    let limiter = Arc::new(RateLimiter::new(nz(1000), nz(100)));
    (
        EsgApiClient::new(http, config, tokens, limiter.clone()),
        limiter,
    )
}

async fn setup() -> (Arc<Fake>, EsgApiClient, Arc<RateLimiter>) {
    let (fake, url) = serve().await;
    let (client, limiter) = client_with(&url, test_config(&url));
    (fake, client, limiter)
}

fn body(account: &str, scores: &str, focus: &str) -> String {
    format!(
        r#"{{"accountId":"{account}","analysisDate":"2026-11-20","methodologyVersion":"3.2","scores":{scores},"primaryFocus":{focus},"coverage":0.93,"extra":{{"nested":[1,2]}}}}"#
    )
}

const FULL_SCORES: &str =
    r#"{"overall":72.345,"environmental":1e2,"social":0,"governance":55.1234}"#;
const FOCUS: &str = r#"{"pillar":"ENVIRONMENTAL","score":1E+2}"#;

fn failure(outcome: &ApiOutcome) -> &ApiFailure {
    outcome.result.as_ref().expect_err("a failure")
}

#[tokio::test]
async fn success_keeps_exact_decimals_and_sends_as_of_and_token() {
    let (fake, client, _) = setup().await;
    fake.script("ACC-1", [Reply::ok(body("ACC-1", FULL_SCORES, FOCUS))]);
    let outcome = client.analyse("ACC-1", as_of()).await;
    assert_eq!(outcome.attempts, 1);
    let a = outcome.result.expect("analysis");
    assert_eq!(
        a.analysis_date,
        NaiveDate::from_ymd_opt(2026, 11, 20).expect("date")
    );
    assert_eq!(a.overall, Some(dec("72.345")));
    assert_eq!(a.overall.expect("overall").to_string(), "72.345");
    assert_eq!(a.environmental, Some(dec("100")));
    assert_eq!(a.social, Some(Decimal::ZERO));
    assert_eq!(a.governance.expect("g").to_string(), "55.1234");
    assert_eq!(a.primary_focus, Some((Pillar::Environmental, dec("100"))));
    assert!(!a.values().is_partial());
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].account, "ACC-1");
    assert_eq!(seen[0].as_of.as_deref(), Some(AS_OF));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok-0"));
    let stats = client.stats();
    assert_eq!((stats.requests, stats.ok, stats.retries), (1, 1, 0));
}

#[tokio::test]
async fn null_pillar_and_null_or_absent_focus_are_partial() {
    let (fake, client, _) = setup().await;
    let scores = r#"{"overall":61.5,"environmental":null,"social":70,"governance":50.25}"#;
    fake.script("P1", [Reply::ok(body("P1", scores, "null"))]);
    fake.script(
        "P2",
        [Reply::ok(
            r#"{"accountId":"P2","analysisDate":"2026-11-20","scores":{"overall":null,"environmental":1,"social":2,"governance":3}}"#,
        )],
    );
    fake.script(
        "P3",
        [Reply::ok(body(
            "P3",
            FULL_SCORES,
            r#"{"pillar":"SOCIAL","score":70.1}"#,
        ))],
    );

    let p1 = client
        .analyse("P1", as_of())
        .await
        .result
        .expect("analysis");
    assert!(p1.values().is_partial());
    assert_eq!(p1.environmental, None);
    assert_eq!(p1.governance, Some(dec("50.25")));
    assert_eq!(p1.primary_focus, None);

    let p2 = client
        .analyse("P2", as_of())
        .await
        .result
        .expect("analysis");
    assert!(p2.values().is_partial());
    assert_eq!((p2.overall, p2.primary_focus), (None, None));

    let p3 = client
        .analyse("P3", as_of())
        .await
        .result
        .expect("analysis");
    assert!(!p3.values().is_partial());
    assert_eq!(p3.primary_focus, Some((Pillar::Social, dec("70.1"))));
}

#[tokio::test]
async fn transient_errors_are_retried_until_success() {
    let (fake, client, _) = setup().await;
    fake.script(
        "R1",
        [
            Reply::status(503),
            Reply::status(502),
            Reply::ok(body("R1", FULL_SCORES, FOCUS)),
        ],
    );
    let outcome = client.analyse("R1", as_of()).await;
    assert_eq!(outcome.attempts, 3);
    assert!(outcome.result.is_ok());
    let stats = client.stats();
    assert_eq!(
        (stats.requests, stats.server_errors, stats.retries, stats.ok),
        (3, 2, 2, 1)
    );
}

#[tokio::test]
async fn three_attempts_in_all_then_a_transient_failure() {
    let (fake, client, _) = setup().await;
    fake.script(
        "R2",
        [
            Reply::status(503),
            Reply::status(500),
            Reply::status(504).body(r#"{"error":"GATEWAY_TIMEOUT","message":"upstream slow"}"#),
            Reply::ok(body("R2", FULL_SCORES, FOCUS)),
        ],
    );
    let outcome = client.analyse("R2", as_of()).await;
    assert_eq!(outcome.attempts, 3);
    let f = failure(&outcome);
    assert_eq!(f.code, "HTTP_504");
    assert_eq!(f.message, "GATEWAY_TIMEOUT: upstream slow");
    assert!(!f.permanent);
    assert_eq!(f.http_status, Some(504));
    assert_eq!(fake.seen().len(), 3);
    assert_eq!(fake.left("R2"), 1, "a fourth attempt was made");
    assert_eq!(client.stats().retries, 2);
}

#[tokio::test]
async fn not_found_and_unprocessable_are_permanent_without_retry() {
    let (fake, client, _) = setup().await;
    fake.script(
        "N1",
        [
            Reply::status(404)
                .body(r#"{"error":"NOT_FOUND","message":"no such account","requestId":"r-1"}"#),
            Reply::ok(body("N1", FULL_SCORES, FOCUS)),
        ],
    );
    fake.script("U1", [Reply::status(422).body("<html>nope</html>")]);
    fake.script(
        "U2",
        [Reply::status(422).body(r#"{"error":"NOT_ANALYZABLE"}"#)],
    );
    fake.script("F1", [Reply::status(403)]);

    let n1 = client.analyse("N1", as_of()).await;
    assert_eq!(n1.attempts, 1);
    let f = failure(&n1);
    assert_eq!(
        (f.code.as_str(), f.permanent, f.http_status),
        ("HTTP_404", true, Some(404))
    );
    assert_eq!(f.message, "NOT_FOUND: no such account");
    assert_eq!(fake.left("N1"), 1, "404 was retried");

    let u1 = client.analyse("U1", as_of()).await;
    assert_eq!(u1.attempts, 1);
    assert_eq!(failure(&u1).code, "HTTP_422");
    assert_eq!(failure(&u1).message, "Unprocessable Entity");
    assert_eq!(
        failure(&client.analyse("U2", as_of()).await).message,
        "NOT_ANALYZABLE"
    );

    let f1 = client.analyse("F1", as_of()).await;
    assert_eq!(
        (failure(&f1).code.as_str(), failure(&f1).permanent),
        ("HTTP_403", true)
    );
    assert_eq!(fake.seen().len(), 4);
    assert_eq!(client.stats().client_errors, 4);
}

#[tokio::test]
async fn unexpected_statuses_are_out_of_contract() {
    let (fake, client, _) = setup().await;
    fake.script("S1", [Reply::status(304)]);
    fake.script("S2", [Reply::status(501)]);
    fake.script("S3", [Reply::status(204)]);
    for id in ["S1", "S2", "S3"] {
        let outcome = client.analyse(id, as_of()).await;
        assert_eq!(outcome.attempts, 1, "{id}");
        let f = failure(&outcome);
        assert_eq!(
            (f.code.as_str(), f.permanent),
            ("OUT_OF_CONTRACT", true),
            "{id}"
        );
    }
    assert_eq!(client.stats().out_of_contract, 3);
}

#[tokio::test]
async fn unauthorized_refreshes_the_token_without_counting_an_attempt() {
    let (fake, client, _) = setup().await;
    fake.script(
        "A1",
        [
            Reply::status(401),
            Reply::status(401),
            Reply::ok(body("A1", FULL_SCORES, FOCUS)),
        ],
    );
    let outcome = client.analyse("A1", as_of()).await;
    assert_eq!(outcome.attempts, 1);
    assert!(outcome.result.is_ok());
    let tokens: Vec<_> = fake
        .seen()
        .into_iter()
        .filter_map(|s| s.authorization)
        .collect();
    assert_eq!(tokens, ["Bearer tok-0", "Bearer tok-1", "Bearer tok-2"]);
    let stats = client.stats();
    assert_eq!(
        (stats.token_refreshes, stats.retries, stats.requests),
        (2, 0, 3)
    );
}

#[tokio::test]
async fn endless_unauthorized_gives_up_after_three_refreshes() {
    let (fake, client, _) = setup().await;
    fake.script("A2", std::iter::repeat_n(Reply::status(401), 4));
    let outcome = client.analyse("A2", as_of()).await;
    let f = failure(&outcome);
    assert_eq!((f.code.as_str(), f.permanent), ("AUTH_REJECTED", true));
    assert!(!f.message.contains("tok-"), "token leaked: {}", f.message);
    assert_eq!(outcome.attempts, 1);
    let tokens: Vec<_> = fake
        .seen()
        .into_iter()
        .filter_map(|s| s.authorization)
        .collect();
    assert_eq!(
        tokens,
        [
            "Bearer tok-0",
            "Bearer tok-1",
            "Bearer tok-2",
            "Bearer tok-3"
        ],
        "1 request + 3 refreshed ones"
    );
    assert_eq!(client.stats().token_refreshes, 3);
    // The last rejected token is dropped too: the next call starts with a new one.
    fake.script("A3", [Reply::ok(body("A3", FULL_SCORES, FOCUS))]);
    assert!(client.analyse("A3", as_of()).await.result.is_ok());
    let last = fake.seen().pop().and_then(|s| s.authorization);
    assert_eq!(last.as_deref(), Some("Bearer tok-4"));
}

#[tokio::test]
async fn token_endpoint_down_counts_as_attempts_refused_is_permanent() {
    let (fake, client, _) = setup().await;
    fake.token_status.store(503, Ordering::SeqCst);
    let down = client.analyse("T1", as_of()).await;
    assert_eq!(down.attempts, 3);
    let f = failure(&down);
    assert_eq!((f.code.as_str(), f.permanent), ("AUTH_UNAVAILABLE", false));

    fake.token_status.store(401, Ordering::SeqCst);
    let refused = client.analyse("T1", as_of()).await;
    assert_eq!(refused.attempts, 1);
    let f = failure(&refused);
    assert_eq!((f.code.as_str(), f.permanent), ("AUTH_REFUSED", true));
    assert!(f.message.contains("invalid_client"), "{}", f.message);
    assert!(
        !f.message.contains("s3cret"),
        "secret leaked: {}",
        f.message
    );
    assert!(fake.seen().is_empty(), "the API was called without a token");
    assert_eq!(client.stats().auth_failures, 4);
}

#[tokio::test]
async fn a_429_waits_its_retry_after_and_is_not_an_attempt() {
    let (fake, client, limiter) = setup().await;
    fake.script(
        "L1",
        [
            Reply::status(429).header("retry-after", "1"),
            Reply::ok(body("L1", FULL_SCORES, FOCUS)),
        ],
    );
    let started = std::time::Instant::now();
    let outcome = client.analyse("L1", as_of()).await;
    let elapsed = started.elapsed();
    assert_eq!(outcome.attempts, 1, "the 429 spent no attempt");
    assert_eq!((outcome.rate_limited, outcome.requests), (1, 2));
    assert!(outcome.result.is_ok());
    assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1900), "{elapsed:?}");
    assert_eq!(client.stats().rate_limited, 1);
    // One 429 among the answers pauses nobody else.
    assert_eq!(limiter.acquire().await, Duration::ZERO);
}

#[tokio::test]
async fn three_503s_and_429s_in_between_still_succeed_on_the_third_attempt() {
    // Before a 429 was an attempt, a 429 between the 503s used up the attempts.
    let (fake, client, _) = setup().await;
    fake.script(
        "L5",
        [
            Reply::status(503),
            Reply::status(429).header("retry-after", "0"),
            Reply::status(503),
            Reply::status(429),
            Reply::ok(body("L5", FULL_SCORES, FOCUS)),
        ],
    );
    let outcome = client.analyse("L5", as_of()).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(
        (outcome.attempts, outcome.rate_limited, outcome.requests),
        (3, 2, 5)
    );
}

/// Guards the summary's `api_rate_limited`: a single call's 429 is one request answered 429,
/// counted on its account once per answer (a 503 or a 401 is not one).
#[tokio::test]
async fn a_single_calls_429s_count_once_per_answer() {
    let (fake, client, _) = setup().await;
    fake.script(
        "Q1",
        [
            Reply::status(429).header("retry-after", "0"),
            Reply::status(503),
            Reply::status(401),
            Reply::status(429),
            Reply::status(429).header("retry-after", "0"),
            Reply::ok(body("Q1", FULL_SCORES, FOCUS)),
        ],
    );
    let o = client.analyse("Q1", as_of()).await;
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert_eq!(
        (o.requests, o.rate_limited, o.rate_limited_requests),
        (6, 3, 3)
    );
    fake.script("Q3", [Reply::ok(body("Q3", FULL_SCORES, FOCUS))]);
    let o = client.analyse("Q3", as_of()).await;
    assert_eq!((o.requests, o.rate_limited_requests), (1, 0));
    assert_eq!(client.stats().rate_limited, 3);

    // An account that fails on 429s counts every one it got.
    let (fake, url) = serve().await;
    let config = ApiClientConfig {
        max_rate_limited_retries: 2,
        ..test_config(&url)
    };
    let (client, _) = client_with(&url, config);
    fake.script("Q2", std::iter::repeat_n(Reply::status(429), 3));
    let o = client.analyse("Q2", as_of()).await;
    assert_eq!(failure(&o).code, "HTTP_429");
    assert_eq!((o.requests, o.rate_limited_requests), (3, 3));
    assert_eq!(client.stats().rate_limited, 3);
}

#[tokio::test]
async fn a_retry_after_as_http_date_is_capped() {
    let (fake, url) = serve().await;
    let config = ApiClientConfig {
        max_retry_after: Duration::from_millis(150),
        ..test_config(&url)
    };
    let (client, _) = client_with(&url, config);
    let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    fake.script(
        "L2",
        [
            Reply::status(429).header("retry-after", in_an_hour),
            Reply::ok(body("L2", FULL_SCORES, FOCUS)),
        ],
    );
    let started = std::time::Instant::now();
    let outcome = client.analyse("L2", as_of()).await;
    let elapsed = started.elapsed();
    assert!(outcome.result.is_ok());
    assert!(elapsed >= Duration::from_millis(145), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "cap not applied: {elapsed:?}"
    );
}

#[tokio::test]
async fn rate_limited_retries_are_bounded_by_their_count_and_the_deadline() {
    let (fake, url) = serve().await;
    let config = ApiClientConfig {
        max_rate_limited_retries: 4,
        ..test_config(&url)
    };
    let (client, _) = client_with(&url, config);
    fake.script("L4", std::iter::repeat_n(Reply::status(429), 5));
    let started = std::time::Instant::now();
    let outcome = client.analyse("L4", as_of()).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let f = failure(&outcome);
    assert_eq!((f.code.as_str(), f.permanent), ("HTTP_429", false));
    assert!(
        f.message.contains("max_rate_limited_retries"),
        "{}",
        f.message
    );
    assert_eq!((outcome.attempts, outcome.rate_limited), (1, 5));
    assert_eq!(client.stats().rate_limited, 5);

    // A Retry-After that ends past the run's deadline is not waited for.
    fake.script("L6", [Reply::status(429).header("retry-after", "30")]);
    let started = std::time::Instant::now();
    let outcome = client
        .score(Call {
            deadline: Some(Utc::now() + chrono::Duration::seconds(5)),
            ..Call::new("L6", as_of())
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let f = failure(&outcome);
    assert_eq!(f.code, "HTTP_429");
    assert!(f.message.contains("deadline"), "{}", f.message);
    assert_eq!(
        outcome.attempts, 1,
        "a called account never shows 0 attempts"
    );
}

#[tokio::test]
async fn server_error_retry_after_is_waited_at_least() {
    let (fake, url) = serve().await;
    let config = ApiClientConfig {
        max_retry_after: Duration::from_millis(120),
        ..test_config(&url)
    };
    let (client, _) = client_with(&url, config);
    let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    fake.script(
        "S5",
        [
            Reply::status(503).header("retry-after", in_an_hour),
            Reply::ok(body("S5", FULL_SCORES, FOCUS)),
        ],
    );
    let started = std::time::Instant::now();
    let outcome = client.analyse("S5", as_of()).await;
    assert!(outcome.result.is_ok());
    // Backoff alone would be at most 2 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(115),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn malformed_or_out_of_range_answers_are_permanent_out_of_contract() {
    let (fake, client, _) = setup().await;
    let scores = |overall: &str| {
        format!(r#"{{"overall":{overall},"environmental":1,"social":2,"governance":3}}"#)
    };
    let cases: Vec<(String, &str)> = vec![
        (
            body("X", &scores("150"), "null"),
            "scores.overall 150 is outside 0..=100",
        ),
        (
            body("X", &scores("-1"), "null"),
            "scores.overall -1 is outside 0..=100",
        ),
        (body("X", &scores("100.00001"), "null"), "outside 0..=100"),
        (
            body("X", &scores("72.12345"), "null"),
            "scores.overall 72.12345 has more than 4 decimal places",
        ),
        (
            body("X", &scores(r#""72.1""#), "null"),
            "scores.overall \"72.1\" is not a number",
        ),
        (
            body("X", &scores("true"), "null"),
            "scores.overall true is not a number",
        ),
        (
            body("X", FULL_SCORES, r#"{"pillar":"CLIMATE","score":50}"#),
            "primaryFocus.pillar \"CLIMATE\" is not ENVIRONMENTAL",
        ),
        (
            body("X", FULL_SCORES, r#"{"pillar":"SOCIAL","score":101}"#),
            "primaryFocus.score 101 is outside",
        ),
        (
            body("X", FULL_SCORES, r#"{"pillar":"SOCIAL","score":null}"#),
            "primaryFocus.score is null",
        ),
        (
            body("X", FULL_SCORES, r#"{"pillar":"SOCIAL"}"#),
            "primaryFocus.score is missing",
        ),
        (
            body("X", FULL_SCORES, r#""SOCIAL""#),
            "primaryFocus is neither null nor an object",
        ),
        (
            body("OTHER", FULL_SCORES, FOCUS),
            "accountId \"OTHER\" is not the account asked for (X)",
        ),
        ("not json".into(), "response body is not a JSON object"),
        ("[1,2]".into(), "response body is not a JSON object"),
        (
            body("X", r#"{"overall":1,"environmental":1,"social":1}"#, "null"),
            "scores.governance is missing",
        ),
        (
            r#"{"accountId":"X","analysisDate":"2026-11-20"}"#.into(),
            "scores is missing",
        ),
        (body("X", "null", "null"), "scores is not an object"),
        (
            r#"{"analysisDate":"2026-11-20","scores":{}}"#.into(),
            "accountId is missing",
        ),
        (
            r#"{"accountId":"X","analysisDate":"20261120","scores":{}}"#.into(),
            "analysisDate \"20261120\" is not a YYYY-MM-DD date",
        ),
        (
            r#"{"accountId":"X","analysisDate":"2026-02-30","scores":{}}"#.into(),
            "analysisDate \"2026-02-30\"",
        ),
        (
            r#"{"accountId":"X","scores":{}}"#.into(),
            "analysisDate is missing",
        ),
    ];
    for (i, (response, expected)) in cases.iter().enumerate() {
        fake.script(
            "X",
            [
                Reply::ok(response.clone()),
                Reply::ok(body("X", FULL_SCORES, FOCUS)),
            ],
        );
        let outcome = client.analyse("X", as_of()).await;
        let f = failure(&outcome);
        assert_eq!(
            (f.code.as_str(), f.permanent),
            ("OUT_OF_CONTRACT", true),
            "case {i}: {f:?}"
        );
        assert!(
            f.message.contains(expected),
            "case {i}: {:?} lacks {expected:?}",
            f.message
        );
        assert_eq!(outcome.attempts, 1, "case {i}");
        assert_eq!(fake.left("X"), 1, "case {i} was retried");
        fake.scripts.lock().expect("lock").clear();
    }
    assert_eq!(client.stats().out_of_contract, cases.len() as u64);
}

#[tokio::test]
async fn slow_answer_is_a_timeout_and_is_retried() {
    let (fake, url) = serve().await;
    let config = ApiClientConfig {
        timeout: Duration::from_millis(100),
        max_attempts: 2,
        ..test_config(&url)
    };
    let (client, _) = client_with(&url, config);
    let slow = Reply::ok(body("SLOW", FULL_SCORES, FOCUS)).after(Duration::from_millis(400));
    fake.script("SLOW", [slow.clone(), slow]);
    let started = std::time::Instant::now();
    let outcome = client.analyse("SLOW", as_of()).await;
    let elapsed = started.elapsed();
    assert_eq!(outcome.attempts, 2);
    let f = failure(&outcome);
    assert_eq!((f.code.as_str(), f.permanent), ("TIMEOUT", false));
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(390),
        "{elapsed:?}"
    );
    assert_eq!(client.stats().timeouts, 2);
}

#[tokio::test]
async fn connection_refused_is_connect_and_transient() {
    let (_fake, token_url) = serve().await;
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let (client, _) = client_with(&token_url, test_config(&closed));
    let outcome = client.analyse("C1", as_of()).await;
    assert_eq!(outcome.attempts, 3);
    let f = failure(&outcome);
    assert_eq!(
        (f.code.as_str(), f.permanent, f.http_status),
        ("CONNECT", false, None)
    );
    assert_eq!(client.stats().network_errors, 3);
}

#[tokio::test]
async fn invalid_account_id_sends_nothing() {
    let (fake, client, _) = setup().await;
    let long = "a".repeat(65);
    for id in [
        "",
        "-lead",
        ".hidden",
        "a/b",
        "a b",
        "ünï",
        "a?b=c",
        long.as_str(),
    ] {
        let outcome = client.analyse(id, as_of()).await;
        assert_eq!(outcome.attempts, 0, "{id}");
        let f = failure(&outcome);
        assert_eq!(
            (f.code.as_str(), f.permanent),
            ("INVALID_ACCOUNT_ID", true),
            "{id}"
        );
    }
    assert!(fake.seen().is_empty());
    assert_eq!(fake.token_calls.load(Ordering::SeqCst), 0);
    assert_eq!(client.stats().requests, 0);
    // The longest valid id goes out.
    let longest = "a".repeat(64);
    fake.script(&longest, [Reply::ok(body(&longest, FULL_SCORES, FOCUS))]);
    assert!(client.analyse(&longest, as_of()).await.result.is_ok());
}

#[tokio::test]
async fn invalid_base_url_fails_every_call_without_sending() {
    let (client, _) = client_with("http://127.0.0.1:9", test_config("not a url"));
    let outcome = client.analyse("A", as_of()).await;
    assert_eq!(outcome.attempts, 0);
    assert_eq!(failure(&outcome).code, "INVALID_CONFIG");
}

#[test]
fn account_id_pattern() {
    for ok in ["a", "A1", "0.b_c-d", "ACC-000123"] {
        assert!(is_valid_account_id(ok), "{ok}");
    }
    for bad in ["", "_a", "a%2F", "a\n"] {
        assert!(!is_valid_account_id(bad), "{bad:?}");
    }
    assert!(is_valid_account_id(&"z".repeat(64)));
    assert!(!is_valid_account_id(&"z".repeat(65)));
}

#[test]
fn endpoint_keeps_a_path_prefix_and_drops_the_base_query() {
    let base = base_url("https://esg-api.vendor.example/prefix/?x=1").expect("url");
    let url = endpoint(&base, "ACC.1", as_of()).expect("endpoint");
    assert_eq!(
        url.as_str(),
        "https://esg-api.vendor.example/prefix/v1/accounts/ACC.1/esg-analysis?asOf=2026-11-23"
    );
    let url = endpoint(&base_url("http://h:8080").expect("url"), "a", as_of()).expect("endpoint");
    assert_eq!(
        url.as_str(),
        "http://h:8080/v1/accounts/a/esg-analysis?asOf=2026-11-23"
    );
    // The segment encoder would protect a separator, should the id check ever be bypassed.
    let url = endpoint(&base, "a/b?c", as_of()).expect("endpoint");
    assert!(
        url.path().ends_with("/a%2Fb%3Fc/esg-analysis"),
        "{}",
        url.path()
    );
    assert!(base_url("ftp://h").is_err());
    assert!(base_url("mailto:x@y").is_err());
}

#[test]
fn json_numbers_are_read_exactly() {
    let n = |s: &str| parse_json_number(s).map(|d| d.normalize().to_string());
    assert_eq!(n("72.345").as_deref(), Some("72.345"));
    assert_eq!(n("1e2").as_deref(), Some("100"));
    assert_eq!(n("1E+2").as_deref(), Some("100"));
    assert_eq!(n("125e-2").as_deref(), Some("1.25"));
    assert_eq!(n("0.1").as_deref(), Some("0.1"));
    assert_eq!(n("99.99990").as_deref(), Some("99.9999"));
    assert_eq!(n("1e-29"), None);
    // More digits than a Decimal holds is refused, not rounded.
    assert_eq!(n("50.0000000000000000000000000000001"), None);
    let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("raw");
    assert_eq!(parse_score(&raw("-0"), "f"), Ok(Some(Decimal::ZERO)));
    assert_eq!(
        parse_score(&raw("-0"), "f")
            .expect("ok")
            .expect("some")
            .to_string(),
        "0"
    );
    assert_eq!(parse_score(&raw("100.0000"), "f"), Ok(Some(dec("100"))));
    assert_eq!(parse_score(&raw("0.30000"), "f"), Ok(Some(dec("0.3"))));
    assert_eq!(parse_score(&raw("null"), "f"), Ok(None));
    assert!(parse_score(&raw("0.00001"), "f").is_err());
}

#[test]
fn retry_after_delta_and_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(Duration::MAX)
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(30))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let config = ApiClientConfig {
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(350),
        ..ApiClientConfig::new("http://h")
    };
    let (client, _) = client_with("http://h", config);
    for (attempt, full_ms) in [(1u32, 100u64), (2, 200), (3, 350), (40, 350)] {
        for _ in 0..50 {
            let d = client.inner.backoff(attempt);
            let full = Duration::from_millis(full_ms);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}

#[test]
fn config_defaults_durations_and_unknown_keys() {
    let c: ApiClientConfig =
        serde_json::from_str(r#"{"url":"https://esg-api.vendor.example"}"#).expect("config");
    assert_eq!(c, ApiClientConfig::new("https://esg-api.vendor.example"));
    assert_eq!(
        (
            c.timeout,
            c.max_attempts,
            c.backoff_base,
            c.backoff_cap,
            c.max_retry_after
        ),
        (
            Duration::from_secs(10),
            3,
            Duration::from_millis(200),
            Duration::from_secs(10),
            Duration::from_secs(60)
        )
    );
    assert_eq!(c.validate(), Ok(()));
    let c: ApiClientConfig =
        serde_json::from_str(r#"{"url":"http://h","timeout":"2s 500ms","backoff_base":"5ms"}"#)
            .expect("config");
    assert_eq!(
        (c.timeout, c.backoff_base),
        (Duration::from_millis(2500), Duration::from_millis(5))
    );
    assert!(serde_json::from_str::<ApiClientConfig>(r#"{"url":"http://h","retries":3}"#).is_err());

    let bad = |f: fn(&mut ApiClientConfig)| {
        let mut c = ApiClientConfig::new("http://h");
        f(&mut c);
        c.validate().expect_err("invalid")
    };
    assert!(matches!(
        bad(|c| c.url = "nope".into()),
        ApiConfigError::Url { .. }
    ));
    assert!(matches!(
        bad(|c| c.max_attempts = 0),
        ApiConfigError::Invalid {
            key: "max_attempts",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.timeout = Duration::ZERO),
        ApiConfigError::Invalid { key: "timeout", .. }
    ));
    assert!(matches!(
        bad(|c| c.backoff_base = Duration::from_secs(11)),
        ApiConfigError::Invalid {
            key: "backoff_base",
            ..
        }
    ));
}

#[tokio::test]
async fn an_outcome_counts_every_http_request_it_sent() {
    let (fake, client, _) = setup().await;
    // Two 401s re-sent with fresh tokens: one attempt, three requests.
    fake.script(
        "R1",
        [
            Reply::status(401),
            Reply::status(401),
            Reply::ok(body("R1", FULL_SCORES, FOCUS)),
        ],
    );
    let o = client.analyse("R1", as_of()).await;
    assert_eq!((o.attempts, o.requests), (1, 3));
    // A 429 (no Retry-After) then a 503 then a 200: each answer was a request.
    fake.script(
        "R2",
        [
            Reply::status(429),
            Reply::status(503),
            Reply::ok(body("R2", FULL_SCORES, FOCUS)),
        ],
    );
    let o = client.analyse("R2", as_of()).await;
    assert!(o.result.is_ok());
    assert_eq!(o.requests, 3);
    // A 404: one request, no retry.
    fake.script("R3", [Reply::status(404)]);
    let o = client.analyse("R3", as_of()).await;
    assert_eq!((o.attempts, o.requests), (1, 1));
    // An id the contract refuses: nothing sent.
    let o = client.analyse("-bad", as_of()).await;
    assert_eq!((o.attempts, o.requests), (0, 0));
    // The sum over outcomes is what the client counted.
    assert_eq!(client.stats().requests, 3 + 3 + 1);
    // The token endpoint down (a new client: no token cached): attempts spent, no request
    // reached the API.
    let (fake, client, _) = setup().await;
    fake.token_status.store(503, Ordering::SeqCst);
    let o = client.analyse("R4", as_of()).await;
    assert_eq!((o.attempts, o.requests), (3, 0));
}

#[test]
fn breaker_consecutive_defaults_to_20_and_must_be_at_least_1() {
    let c: ApiClientConfig =
        serde_json::from_str(r#"{"url":"https://esg-api.vendor.example"}"#).expect("config");
    assert_eq!(c.breaker_consecutive, default_breaker_consecutive());
    assert_eq!(default_breaker_consecutive(), 20);
    let c: ApiClientConfig =
        serde_json::from_str(r#"{"url":"http://h","breaker_consecutive":1}"#).expect("config");
    assert_eq!((c.breaker_consecutive, c.validate()), (1, Ok(())));
    let c = ApiClientConfig {
        breaker_consecutive: 0,
        ..ApiClientConfig::new("http://h")
    };
    let err = c.validate().expect_err("0 is refused");
    assert!(matches!(
        err,
        ApiConfigError::Invalid {
            key: "breaker_consecutive",
            ..
        }
    ));
    assert!(err.to_string().contains("breaker_consecutive"), "{err}");
}

#[test]
fn only_authentication_failures_count_for_the_breaker() {
    let failure = |code: &str| ApiFailure::permanent(code, "m", None);
    assert_eq!(
        failure("AUTH_REJECTED").breaker_cause(),
        Some(BreakerCause::TokensRejected)
    );
    assert_eq!(
        failure("AUTH_REFUSED").breaker_cause(),
        Some(BreakerCause::CredentialsRefused)
    );
    for code in ["AUTH_UNAVAILABLE", "AUTH_BAD_RESPONSE"] {
        assert_eq!(
            failure(code).breaker_cause(),
            Some(BreakerCause::TokenEndpointDown),
            "{code}"
        );
    }
    for code in [
        "HTTP_404",
        "HTTP_422",
        "HTTP_503",
        "HTTP_429",
        "TIMEOUT",
        "CONNECT",
        "OUT_OF_CONTRACT",
        "INVALID_ACCOUNT_ID",
    ] {
        assert_eq!(failure(code).breaker_cause(), None, "{code}");
    }
    // Each cause says what to fix.
    assert!(BreakerCause::TokensRejected.to_string().contains("vendor"));
    assert!(BreakerCause::CredentialsRefused
        .to_string()
        .contains("esg_api.client_secret"));
    assert!(BreakerCause::TokenEndpointDown
        .to_string()
        .contains("token endpoint"));
}

#[tokio::test]
async fn an_analysis_gives_the_values_of_its_score() {
    let (fake, client, _) = setup().await;
    fake.script("V1", [Reply::ok(body("V1", FULL_SCORES, FOCUS))]);
    fake.script("V2", [Reply::ok(body("V2", FULL_SCORES, "null"))]);
    let full = client
        .analyse("V1", as_of())
        .await
        .result
        .expect("analysis")
        .values();
    assert_eq!(
        full,
        EsgValues {
            overall: Some(dec("72.345")),
            environmental: Some(dec("100")),
            social: Some(Decimal::ZERO),
            governance: Some(dec("55.1234")),
            primary_focus: Some(Pillar::Environmental),
            primary_focus_score: Some(dec("100")),
            analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
        }
    );
    assert!(!full.is_partial());
    let no_focus = client
        .analyse("V2", as_of())
        .await
        .result
        .expect("analysis")
        .values();
    assert_eq!(
        (no_focus.primary_focus, no_focus.primary_focus_score),
        (None, None)
    );
    assert!(no_focus.is_partial());
    assert_eq!(no_focus.scored_status(), esg_schemas::ScoreStatus::Partial);
}

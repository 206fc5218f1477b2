//! Tests of `batch`: a fake vendor whose batch answers are scripted per batch and per account.

use crate::api::{ApiClientConfig, ApiOutcome, Call, EsgApiClient};
use crate::limiter::RateLimiter;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::NaiveDate;
use esg_auth::TokenSource;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).expect("date")
}

/// One account's answer inside a batch: its status and whether an analysis comes with it.
#[derive(Clone, Copy)]
enum Item {
    Ok,
    Status(u16),
    /// Left out of the answer.
    Missing,
}

/// A whole-batch answer other than 200: status and Retry-After.
#[derive(Clone)]
struct Whole(u16, Option<&'static str>);

#[derive(Default)]
struct Fake {
    /// The account ids and asOf of every batch request, in order.
    batches: Mutex<Vec<(Vec<String>, String)>>,
    /// Account ids of single calls.
    singles: Mutex<Vec<String>>,
    /// Answers to the next batch requests, before any per-account script.
    whole: Mutex<VecDeque<Whole>>,
    /// Per account, its next answers inside batches; unscripted accounts get an analysis.
    items: Mutex<HashMap<String, VecDeque<Item>>>,
    /// Non-zero: the batch route answers this (a tenant without the endpoint).
    route_status: AtomicU16,
    tokens: AtomicUsize,
    /// Bearer tokens batch requests came with.
    authorizations: Mutex<Vec<String>>,
}

impl Fake {
    fn script(&self, account: &str, items: impl IntoIterator<Item = Item>) {
        self.items
            .lock()
            .expect("lock")
            .entry(account.to_owned())
            .or_default()
            .extend(items);
    }
    fn whole(&self, answers: impl IntoIterator<Item = Whole>) {
        self.whole.lock().expect("lock").extend(answers);
    }
    fn batches(&self) -> Vec<(Vec<String>, String)> {
        self.batches.lock().expect("lock").clone()
    }
    fn singles(&self) -> Vec<String> {
        self.singles.lock().expect("lock").clone()
    }
}

fn analysis(id: &str) -> String {
    format!(
        r#"{{"accountId":"{id}","analysisDate":"2026-11-20","scores":{{"overall":72.5,"environmental":60,"social":70.25,"governance":80}},"primaryFocus":{{"pillar":"SOCIAL","score":70.25}}}}"#
    )
}

async fn batch_route(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    let request: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    let ids: Vec<String> = request["accountIds"]
        .as_array()
        .expect("accountIds")
        .iter()
        .map(|v| v.as_str().expect("string id").to_owned())
        .collect();
    assert!(!ids.is_empty() && ids.len() <= 100, "{} ids", ids.len());
    let as_of = request["asOf"].as_str().unwrap_or_default().to_owned();
    fake.batches
        .lock()
        .expect("lock")
        .push((ids.clone(), as_of));
    fake.authorizations.lock().expect("lock").push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    );
    let route = fake.route_status.load(Ordering::SeqCst);
    if route != 0 {
        return (StatusCode::from_u16(route).expect("status"), "").into_response();
    }
    if let Some(Whole(status, retry_after)) = fake.whole.lock().expect("lock").pop_front() {
        let mut response = (
            StatusCode::from_u16(status).expect("status"),
            r#"{"error":"WHOLE","message":"scripted"}"#,
        )
            .into_response();
        if let Some(r) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", r.parse().expect("header"));
        }
        return response;
    }
    let mut results = Vec::new();
    for id in &ids {
        let item = fake
            .items
            .lock()
            .expect("lock")
            .get_mut(id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Item::Ok);
        match item {
            Item::Ok => results.push(format!(
                r#"{{"accountId":"{id}","status":200,"analysis":{},"error":null}}"#,
                analysis(id)
            )),
            Item::Status(status) => results.push(format!(
                r#"{{"accountId":"{id}","status":{status},"analysis":null,"error":{{"error":"E{status}","message":"item {status}"}}}}"#
            )),
            Item::Missing => {}
        }
    }
    (
        StatusCode::OK,
        format!(r#"{{"results":[{}]}}"#, results.join(",")),
    )
        .into_response()
}

async fn single_route(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    fake.singles.lock().expect("lock").push(id.clone());
    (StatusCode::OK, analysis(&id)).into_response()
}

async fn token_route(State(fake): State<Arc<Fake>>) -> Response {
    let n = fake.tokens.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({
        "access_token": format!("tok-{n}"),
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
    .into_response()
}

/// Starts the fake vendor (batch route, single route, token endpoint); returns it and its URL.
async fn serve() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route("/v1/esg-analysis:batch", post(batch_route))
        .route("/v1/accounts/{id}/esg-analysis", get(single_route))
        .route("/oauth2/token", post(token_route))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (fake, format!("http://{addr}"))
}

fn config(url: &str) -> ApiClientConfig {
    ApiClientConfig {
        timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(2),
        backoff_cap: Duration::from_millis(20),
        batch_linger: Duration::from_millis(30),
        ..ApiClientConfig::new(url)
    }
}

fn client(url: &str, config: ApiClientConfig, per_second: u32, burst: u32) -> EsgApiClient {
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        format!("{url}/oauth2/token"),
        "scorer",
        esg_auth::Secret::new("s3cret"),
        Some("esg.read".into()),
    ));
    let nz = |n| NonZeroU32::new(n).expect("non-zero");
    let limiter = Arc::new(RateLimiter::new(nz(per_second), nz(burst)));
    EsgApiClient::new(http, config, tokens, limiter)
}

/// Scores `ids` concurrently, as the scorer's window does; outcomes in the order of `ids`.
async fn score_all(client: &EsgApiClient, ids: &[String], as_of: NaiveDate) -> Vec<ApiOutcome> {
    futures::future::join_all(ids.iter().map(|id| client.score(Call::new(id, as_of)))).await
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

fn code(outcome: &ApiOutcome) -> &str {
    match &outcome.result {
        Ok(_) => "ok",
        Err(f) => f.code.as_str(),
    }
}

#[tokio::test]
async fn items_are_handled_like_single_calls_with_the_same_attempt_count() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    let accounts: Vec<String> = ["OK", "GONE", "BAD", "FLAKY", "DOWN", "LOST"]
        .map(String::from)
        .to_vec();
    fake.script("GONE", [Item::Status(404)]);
    fake.script("BAD", [Item::Status(422)]);
    fake.script("FLAKY", [Item::Status(500), Item::Status(503)]);
    fake.script("DOWN", [Item::Status(503); 3]);
    fake.script("LOST", [Item::Missing]);
    let outcomes = score_all(&client, &accounts, day(23)).await;
    let summary: Vec<(&str, u32)> = outcomes.iter().map(|o| (code(o), o.attempts)).collect();
    assert_eq!(
        summary,
        [
            ("ok", 1),
            ("HTTP_404", 1),
            ("HTTP_422", 1),
            ("ok", 3),
            ("HTTP_503", 3),
            ("ok", 2),
        ]
    );
    let gone = outcomes[1].result.as_ref().expect_err("404");
    assert!(
        gone.permanent && gone.message.contains("item 404"),
        "{gone:?}"
    );
    assert!(!outcomes[4].result.as_ref().expect_err("503").permanent);
    let ok = outcomes[0].result.as_ref().expect("analysis");
    assert_eq!(ok.overall.map(|d| d.to_string()).as_deref(), Some("72.5"));
    assert_eq!(ok.etag, None, "batch results carry no ETag");

    // Everything went out in batches: all six first, then only the transient ones.
    let batches = fake.batches();
    assert!(fake.singles().is_empty());
    let mut first = batches[0].0.clone();
    first.sort();
    let mut all = accounts.clone();
    all.sort();
    assert_eq!(first, all);
    assert_eq!(batches[0].1, "2026-11-23");
    let retried: Vec<&String> = batches[1..].iter().flat_map(|b| &b.0).collect();
    assert!(
        retried
            .iter()
            .all(|id| ["FLAKY", "DOWN", "LOST"].contains(&id.as_str())),
        "{retried:?}"
    );
    // The requests of the accounts add up to the requests sent.
    let requests: u32 = outcomes.iter().map(|o| o.requests).sum();
    assert_eq!(requests as usize, batches.len());
    assert_eq!(client.stats().requests as usize, batches.len());
}

#[tokio::test]
async fn batches_hold_at_most_batch_size_and_a_lone_account_does_not_wait() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    let outcomes = score_all(&client, &ids("A", 250), day(23)).await;
    assert!(outcomes.iter().all(|o| o.result.is_ok() && o.attempts == 1));
    let mut sizes: Vec<usize> = fake.batches().iter().map(|b| b.0.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [50, 100, 100]);

    let started = std::time::Instant::now();
    let lone = client.analyse("LONE", day(23)).await;
    assert!(lone.result.is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(fake.batches().last().map(|b| b.0.len()), Some(1));
}

#[tokio::test]
async fn accounts_asked_as_of_different_dates_go_in_different_batches() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    let (a, b) = (ids("D", 3), ids("E", 2));
    let (ra, rb) = tokio::join!(
        score_all(&client, &a, day(23)),
        score_all(&client, &b, day(24))
    );
    assert!(ra.iter().chain(&rb).all(|o| o.result.is_ok()));
    let mut batches = fake.batches();
    batches.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(batches.len(), 2);
    assert_eq!(
        (batches[0].0.len(), batches[0].1.as_str()),
        (3, "2026-11-23")
    );
    assert_eq!(
        (batches[1].0.len(), batches[1].1.as_str()),
        (2, "2026-11-24")
    );
}

#[tokio::test]
async fn a_batch_counts_as_one_request_against_the_limiter() {
    let (fake, url) = serve().await;
    // One request per second: 300 single calls would take five minutes.
    let client = client(&url, config(&url), 1, 1);
    let started = std::time::Instant::now();
    let outcomes = score_all(&client, &ids("R", 300), day(23)).await;
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    assert_eq!(fake.batches().len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_429_or_5xx_of_the_whole_batch_retries_it_and_only_the_5xx_is_an_attempt() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    fake.whole([Whole(429, Some("0")), Whole(503, None), Whole(429, None)]);
    let outcomes = score_all(&client, &ids("W", 5), day(23)).await;
    for o in &outcomes {
        assert!(o.result.is_ok(), "{:?}", o.result);
        assert_eq!((o.attempts, o.rate_limited), (2, 2));
    }
    let batches = fake.batches();
    assert_eq!(batches.len(), 4);
    assert!(batches.iter().all(|b| b.0.len() == 5), "retried whole");
    assert_eq!(client.stats().rate_limited, 2, "counted once per request");
}

/// Guards the summary's `api_rate_limited`: a batch answered 429 is one request answered 429,
/// counted on the one account that counts the batch request (every account of the batch saw
/// the 429 in `rate_limited`, which would count it once per account).
#[tokio::test]
async fn a_429_of_the_whole_batch_is_one_rate_limited_request_of_the_counting_account() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    fake.whole([Whole(429, Some("0")), Whole(503, None), Whole(429, None)]);
    let outcomes = score_all(&client, &ids("Q", 5), day(23)).await;
    assert_eq!(fake.batches().len(), 4);
    for o in &outcomes {
        assert!(o.result.is_ok(), "{:?}", o.result);
        assert!(o.rate_limited_requests <= o.requests, "{o:?}");
        // Only an account that counts requests counts their 429s.
        if o.requests == 0 {
            assert_eq!(o.rate_limited_requests, 0, "{o:?}");
        }
    }
    let sum = |f: fn(&ApiOutcome) -> u32| outcomes.iter().map(f).sum::<u32>();
    assert_eq!(sum(|o| o.rate_limited), 10, "each account saw both 429s");
    assert_eq!(
        sum(|o| o.rate_limited_requests),
        2,
        "two requests answered 429"
    );
    assert_eq!(sum(|o| o.requests), 4);
    assert_eq!(client.stats().rate_limited, 2);
}

#[tokio::test]
async fn a_401_of_the_batch_fetches_a_new_token_and_is_not_an_attempt() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    fake.whole([Whole(401, None)]);
    let outcomes = score_all(&client, &ids("T", 4), day(23)).await;
    assert!(outcomes.iter().all(|o| o.result.is_ok() && o.attempts == 1));
    let seen = fake.authorizations.lock().expect("lock").clone();
    assert_eq!(seen, ["Bearer tok-0", "Bearer tok-1"]);
}

#[tokio::test]
async fn a_tenant_without_the_endpoint_is_detected_once_and_single_calls_follow() {
    for status in [404, 405] {
        let (fake, url) = serve().await;
        fake.route_status.store(status, Ordering::SeqCst);
        let client = client(&url, config(&url), 1000, 100);
        assert!(client.batching());
        let outcomes = score_all(&client, &ids("F", 30), day(23)).await;
        assert!(
            outcomes.iter().all(|o| o.result.is_ok() && o.attempts == 1),
            "{status}: the fallback spends no attempt"
        );
        assert!(!client.batching(), "{status}");
        assert_eq!(
            fake.batches().len(),
            1,
            "{status}: the route was tried once"
        );
        assert_eq!(fake.singles().len(), 30);
        // Later accounts go single from the start.
        let later = client.analyse("LATER", day(23)).await;
        assert!(later.result.is_ok());
        assert_eq!(fake.batches().len(), 1);
        assert_eq!(client.accounts_per_request(), 1);
        // Every request is counted once: the batch and the 31 single calls.
        let requests: u32 = outcomes.iter().chain([&later]).map(|o| o.requests).sum();
        assert_eq!(requests, 32, "{status}");
    }
}

#[tokio::test]
async fn batch_size_one_turns_the_endpoint_off() {
    let (fake, url) = serve().await;
    let client = client(
        &url,
        ApiClientConfig {
            batch_size: 1,
            ..config(&url)
        },
        1000,
        100,
    );
    assert!(!client.batching());
    let outcomes = score_all(&client, &ids("S", 5), day(23)).await;
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    assert!(fake.batches().is_empty());
    assert_eq!(fake.singles().len(), 5);
}

#[tokio::test]
async fn statuses_outside_the_contract_are_out_of_contract() {
    let (fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    // A 200 with an unknown item status and a whole answer the contract does not have.
    fake.script("Q1", [Item::Status(302)]);
    fake.whole([Whole(418, None)]);
    let outcome = client.analyse("Q0", day(23)).await;
    assert_eq!(code(&outcome), "OUT_OF_CONTRACT");
    assert!(outcome.result.as_ref().expect_err("418").permanent);
    let outcome = client.analyse("Q1", day(23)).await;
    assert_eq!(code(&outcome), "OUT_OF_CONTRACT");
    assert_eq!(outcome.attempts, 1);
}

#[tokio::test]
async fn an_account_waiting_in_a_batch_holds_a_small_future() {
    // The scorer's window holds one of these per account (6,400 at the defaults).
    let (_fake, url) = serve().await;
    let client = client(&url, config(&url), 1000, 100);
    let future = client.score(Call::new("SIZE", day(23)));
    let size = std::mem::size_of_val(&future);
    assert!(size < 2048, "{size} bytes");
}

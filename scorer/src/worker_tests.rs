//! Tests of the scorer loop against a real embedded log and a stand-in ESG API: the circuit
//! breaker, what stays pending when it opens, and the resume.

use super::*;
use crate::api::{ApiClientConfig, MAX_TOKEN_REFRESHES};
use crate::limiter::RateLimiter;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::NaiveDate;
use esg_auth::{Secret, TokenSource};
use esg_bus::embedded::EmbeddedLog;
use esg_bus::{SharedTransport, TopicsConfig};
use esg_schemas::{AccountChanged, ChangeReason, DailyTrigger, RunKind};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

const RUN: &str = "2026-11-23";
const GROUP: &str = "esg-scorer-test";

/// How the stand-in answers.
#[derive(Default)]
struct Fake {
    /// 0: every account 200; 401: every account 401; 1: 200 for ids ending in 2, 5 or 8, 401
    /// for the others; 2: ids ending in 1 answer 503 once then 200, ids ending in 3 answer
    /// 404, the others 200.
    api_mode: AtomicU16,
    calls: std::sync::Mutex<HashMap<String, u32>>,
    /// 0: a token; otherwise this status.
    token_status: AtomicU16,
    api_requests: AtomicUsize,
    token_requests: AtomicUsize,
}

fn analysis_body(id: &str) -> String {
    format!(
        r#"{{"accountId":"{id}","analysisDate":"2026-11-20","scores":{{"overall":70,"environmental":71,"social":72,"governance":73}},"primaryFocus":{{"pillar":"SOCIAL","score":72}}}}"#
    )
}

async fn analysis(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    fake.api_requests.fetch_add(1, Ordering::SeqCst);
    let call = {
        let mut calls = fake.calls.lock().expect("lock");
        let n = calls.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let ok = match fake.api_mode.load(Ordering::SeqCst) {
        0 => true,
        1 => id.ends_with(['2', '5', '8']),
        2 if id.ends_with('1') && call == 1 => {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        2 if id.ends_with('3') => return StatusCode::NOT_FOUND.into_response(),
        2 => true,
        _ => false,
    };
    if ok {
        (StatusCode::OK, analysis_body(&id)).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"UNAUTHORIZED","message":"the bearer token is not valid"}"#,
        )
            .into_response()
    }
}

async fn token(State(fake): State<Arc<Fake>>) -> Response {
    let n = fake.token_requests.fetch_add(1, Ordering::SeqCst);
    match fake.token_status.load(Ordering::SeqCst) {
        0 => axum::Json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": 3600,
        }))
        .into_response(),
        status => (
            StatusCode::from_u16(status).expect("status"),
            r#"{"error":"invalid_client"}"#,
        )
            .into_response(),
    }
}

async fn serve(fake: Arc<Fake>) -> String {
    let router = Router::new()
        .route("/v1/accounts/{id}/esg-analysis", get(analysis))
        .route("/oauth2/token", post(token))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

struct World {
    _dir: tempfile::TempDir,
    bus: EventBus,
    fake: Arc<Fake>,
    url: String,
}

/// An embedded log holding a run's trigger and `accounts` events `A000`… over `partitions`
/// partitions, and a stand-in API.
async fn world(accounts: usize, partitions: i32) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path().join("bus.db")).expect("log");
    let transport: SharedTransport = Arc::new(log);
    let bus = EventBus::connect(
        transport,
        &TopicsConfig {
            partitions,
            ..TopicsConfig::default()
        },
    )
    .await
    .expect("bus");
    let now = Utc::now();
    let trigger = DailyTrigger {
        run_id: RUN.into(),
        business_date: NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
        kind: RunKind::Daily,
        full: false,
        deadline: now + chrono::Duration::hours(1),
        triggered_at: now,
    };
    bus.publish(
        &bus.topics.triggers,
        &[(RUN.to_owned(), Event::DailyTrigger(trigger))],
    )
    .await
    .expect("trigger");
    let events: Vec<(String, Event)> = (0..accounts)
        .map(|i| {
            let id = format!("A{i:03}");
            let event = Event::AccountChanged(AccountChanged {
                run_id: RUN.into(),
                account_id: id.clone(),
                version: 1,
                reason: ChangeReason::New,
                emitted_at: now,
                prior: None,
            });
            (id, event)
        })
        .collect();
    bus.publish(&bus.topics.account_events, &events)
        .await
        .expect("events");
    let fake = Arc::new(Fake::default());
    let url = serve(fake.clone()).await;
    World {
        _dir: dir,
        bus,
        fake,
        url,
    }
}

fn scorer(world: &World, breaker_consecutive: u32, max_in_flight: usize) -> Scorer {
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        format!("{}/oauth2/token", world.url),
        "esg-scorer",
        Secret::new("s3cret"),
        Some("esg.read".into()),
    ));
    let nz = |n| NonZeroU32::new(n).expect("non-zero");
    let limiter = Arc::new(RateLimiter::new(nz(10_000), nz(1_000)));
    // Single calls: the stand-in API has no batch endpoint (batches: `batch_tests.rs` and
    // the end-to-end tests).
    let config = ApiClientConfig {
        batch_size: 1,
        timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(5),
        breaker_consecutive,
        ..ApiClientConfig::new(&world.url)
    };
    config.validate().expect("valid config");
    let client = Arc::new(EsgApiClient::new(http, config, tokens, limiter));
    Scorer::new(
        world.bus.clone(),
        client,
        ScorerConfig {
            group: GROUP.into(),
            flush_interval: Duration::from_millis(20),
            flush_max: 16,
            shutdown_grace: Duration::from_secs(5),
        },
        max_in_flight,
    )
}

/// Every score on the scores topic.
async fn scores(bus: &EventBus) -> Vec<EsgScore> {
    let topic = &bus.topics.scores;
    let ends = bus.transport.end_offsets(topic).await.expect("ends");
    let mut found = Vec::new();
    for (p, end) in ends.iter().enumerate() {
        let mut range = RangeReader::new(&*bus.transport, topic, p as i32, 0, *end, 1000);
        while let Some(batch) = range.next_batch().await.expect("read") {
            for m in batch {
                if let Ok(Some(Event::EsgScore(s))) = bus.decode(m.value.as_deref()) {
                    found.push(s);
                }
            }
        }
    }
    found
}

/// The group's committed offsets of the account events, partition by partition (0 if none).
async fn committed(bus: &EventBus) -> Vec<i64> {
    bus.transport
        .committed(GROUP, &bus.topics.account_events)
        .await
        .expect("committed")
        .into_iter()
        .map(|c| c.map_or(0, |c| c.offset))
        .collect()
}

/// Runs `scorer` until the breaker stops it (by a deadline: a scorer that never stops fails).
async fn run_until_stopped(scorer: Scorer) -> Result<ScorerStats, ScorerError> {
    let shutdown = CancellationToken::new();
    tokio::time::timeout(Duration::from_secs(30), scorer.run(shutdown))
        .await
        .expect("the breaker stops the scorer")
}

/// Runs `scorer` until `want` scores are on the bus, then stops it.
async fn run_until_scored(world: &World, scorer: Scorer, want: usize) -> ScorerStats {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scorer.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    loop {
        interval.tick().await;
        let ends = world
            .bus
            .transport
            .end_offsets(&world.bus.topics.scores)
            .await
            .expect("ends");
        if ends.iter().sum::<i64>() as usize >= want {
            break;
        }
        assert!(
            !task.is_finished(),
            "the scorer stopped early: {:?}",
            task.await
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ends:?} scores of {want} in time"
        );
    }
    shutdown.cancel();
    task.await.expect("task").expect("scorer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_401_stops_after_the_threshold_and_leaves_the_rest_pending() {
    let accounts = 300;
    let world = world(accounts, 3).await;
    world.fake.api_mode.store(401, Ordering::SeqCst);
    let (threshold, in_flight) = (20u32, 8usize);

    let err = run_until_stopped(scorer(&world, threshold, in_flight))
        .await
        .expect_err("the breaker opens");
    match &err {
        ScorerError::Breaker {
            cause,
            consecutive,
            last_error,
        } => {
            assert_eq!(*cause, BreakerCause::TokensRejected);
            assert_eq!(*consecutive, threshold);
            assert!(last_error.starts_with("AUTH_REJECTED"), "{last_error}");
        }
        other => panic!("expected the breaker, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("vendor") && text.contains("esg_api.client_id"),
        "{text}"
    );
    assert!(text.contains("run the same command again"), "{text}");

    // Bounded: each account spends 1 + MAX_TOKEN_REFRESHES requests, and no more accounts are
    // called than the threshold plus one window in flight (not 300 × 4 = 1,200).
    let per_account = (MAX_TOKEN_REFRESHES + 1) as usize;
    let requests = world.fake.api_requests.load(Ordering::SeqCst);
    assert!(
        requests >= threshold as usize * per_account
            && requests <= (threshold as usize + in_flight) * per_account,
        "{requests} requests"
    );
    // Nothing was written Failed and no offset moved: every event is still pending.
    assert_eq!(scores(&world.bus).await, []);
    assert_eq!(committed(&world.bus).await, [0, 0, 0]);

    // Fixed: the same group resumes and scores every account, each once.
    world.fake.api_mode.store(0, Ordering::SeqCst);
    let stats = run_until_scored(&world, scorer(&world, threshold, in_flight), accounts).await;
    assert_eq!(stats.failed, 0);
    let scores = scores(&world.bus).await;
    assert_eq!(scores.len(), accounts);
    assert!(scores.iter().all(|s| s.status == ScoreStatus::Successful));
    let ids: HashSet<&str> = scores.iter().map(|s| s.account_id.as_str()).collect();
    assert_eq!(ids.len(), accounts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_is_down_or_refuses_opens_the_breaker_without_calling_the_api() {
    for (status, expected, code) in [
        (503, BreakerCause::TokenEndpointDown, "AUTH_UNAVAILABLE"),
        (401, BreakerCause::CredentialsRefused, "AUTH_REFUSED"),
    ] {
        let world = world(50, 2).await;
        world.fake.token_status.store(status, Ordering::SeqCst);
        let err = run_until_stopped(scorer(&world, 5, 2))
            .await
            .expect_err("the breaker opens");
        let ScorerError::Breaker {
            cause, last_error, ..
        } = &err
        else {
            panic!("expected the breaker, got {err}");
        };
        assert_eq!(*cause, expected, "token status {status}");
        assert!(last_error.starts_with(code), "{last_error}");
        assert!(err.to_string().contains("token endpoint"), "{err}");
        assert_eq!(world.fake.api_requests.load(Ordering::SeqCst), 0);
        // At most (5 + 2 in flight) accounts × 3 attempts asked for a token.
        let token_requests = world.fake.token_requests.load(Ordering::SeqCst);
        assert!(token_requests <= 7 * 3, "{token_requests} token requests");
        assert_eq!(scores(&world.bus).await, []);
        assert_eq!(committed(&world.bus).await, [0, 0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_success_resets_the_count_and_failures_below_the_threshold_are_written() {
    // One partition, one call at a time: calls end in event order. Every third account
    // succeeds, so at most two 401s come in a row, under the threshold of 3.
    let accounts = 10;
    let world = world(accounts, 1).await;
    world.fake.api_mode.store(1, Ordering::SeqCst);
    let stats = run_until_scored(&world, scorer(&world, 3, 1), accounts).await;
    assert_eq!((stats.successful, stats.failed), (3, 7));
    let scores = scores(&world.bus).await;
    assert_eq!(scores.len(), accounts);
    for s in &scores {
        let ok = s.account_id.ends_with(['2', '5', '8']);
        if ok {
            assert_eq!(s.status, ScoreStatus::Successful, "{}", s.account_id);
        } else {
            assert_eq!(s.status, ScoreStatus::Failed, "{}", s.account_id);
            assert_eq!(s.error_code.as_deref(), Some("AUTH_REJECTED"));
            assert_eq!(s.values, esg_schemas::EsgValues::failed());
        }
    }
    // The last account (A009) failed with nothing after it: released, not held to the deadline.
    assert!(scores.iter().any(|s| s.account_id == "A009"));
    assert_eq!(committed(&world.bus).await, [accounts as i64]);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: every task logs on this thread, into the subscriber set here.
#[tokio::test]
async fn retries_log_below_warn_and_each_failed_account_once_at_warn() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let accounts = 20;
    let world = world(accounts, 2).await;
    world.fake.api_mode.store(2, Ordering::SeqCst);
    let stats = run_until_scored(&world, scorer(&world, 20, 4), accounts).await;
    // A001 and A011 needed a retry; A003 and A013 are 404.
    assert_eq!((stats.successful, stats.failed), (18, 2));

    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let retries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "ESG API attempt failed, retrying")
        .collect();
    assert_eq!(retries.len(), 2, "{text}");
    assert!(retries.iter().all(|l| l["level"] == "DEBUG"), "{retries:?}");
    let failed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "account failed")
        .collect();
    assert_eq!(failed.len(), 2, "{text}");
    for line in &failed {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["run_id"], RUN);
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["error_code"], "HTTP_404");
        assert!(line["account_id"]
            .as_str()
            .is_some_and(|id| id.ends_with('3')));
    }
    // Nothing else is a warning, and no line holds an account name.
    let warnings = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .count();
    assert_eq!(warnings, 2, "{text}");
    assert!(!text.contains("Fund "), "an account name is in the logs");
}

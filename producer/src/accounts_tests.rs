//! Tests of `accounts`.

use super::*;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use esg_auth::Secret;
use serde_json::json;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

// ---- the fake account system and token endpoint ------------------------------------------

/// One request the fake account system received.
#[derive(Debug, Clone)]
struct Req {
    /// 1-based number of the request.
    n: usize,
    query: HashMap<String, String>,
    bearer: Option<String>,
}

impl Req {
    fn token(&self) -> Option<&str> {
        self.query.get("pageToken").map(String::as_str)
    }
}

/// What the fake answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn page(items: Vec<Value>, next: Option<&str>) -> Self {
        Reply::json(200, json!({"items": items, "nextPageToken": next}))
    }
    fn json(status: u16, body: Value) -> Self {
        Reply::raw(status, body.to_string())
    }
    fn raw(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    fn error(status: u16) -> Self {
        Reply::json(status, json!({"error": format!("status_{status}")}))
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Fake {
    script: Script,
    seen: Arc<Mutex<Vec<Req>>>,
    tokens_issued: Arc<AtomicUsize>,
    /// Statuses the token endpoint answers before it issues tokens.
    token_failures: Arc<Mutex<VecDeque<u16>>>,
    /// `http://127.0.0.1:<port>`
    base: String,
}

impl Fake {
    fn requests(&self) -> Vec<Req> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn accounts_endpoint(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let reply = {
        let mut seen = fake.seen.lock().expect("lock");
        let req = Req {
            n: seen.len() + 1,
            query,
            bearer,
        };
        let reply = (fake.script)(&req);
        seen.push(req);
        reply
    };
    tokio::time::sleep(reply.delay).await;
    let status = StatusCode::from_u16(reply.status).expect("status");
    let mut resp = (status, reply.body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in reply.headers {
        resp.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("header value"),
        );
    }
    resp
}

async fn token_endpoint(State(fake): State<Fake>) -> axum::response::Response {
    let failure = fake.token_failures.lock().expect("lock").pop_front();
    if let Some(status) = failure {
        let status = StatusCode::from_u16(status).expect("status");
        return (status, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let n = fake.tokens_issued.fetch_add(1, Ordering::SeqCst);
    Json(json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 3600}))
        .into_response()
}

fn test_config(url: String) -> AccountsClientConfig {
    AccountsClientConfig {
        url,
        page_size: 2,
        timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(4),
        max_restarts: 2,
        ..AccountsClientConfig::new(String::new())
    }
}

async fn start(script: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> (AccountsClient, Fake) {
    start_with(Vec::new(), |_| {}, script).await
}

async fn start_with(
    token_failures: Vec<u16>,
    tweak: impl FnOnce(&mut AccountsClientConfig),
    script: impl Fn(&Req) -> Reply + Send + Sync + 'static,
) -> (AccountsClient, Fake) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = Fake {
        script: Arc::new(script),
        seen: Arc::default(),
        tokens_issued: Arc::default(),
        token_failures: Arc::new(Mutex::new(token_failures.into())),
        base: format!("http://{addr}"),
    };
    let router = Router::new()
        .route("/v1/accounts", get(accounts_endpoint))
        .route("/oauth2/token", post(token_endpoint))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        format!("{}/oauth2/token", fake.base),
        "producer",
        Secret::new("s3cret"),
        Some("accounts.read".into()),
    ));
    // A trailing slash on the base URL must not double the slash.
    let mut config = test_config(format!("{}/", fake.base));
    tweak(&mut config);
    config.validate().expect("valid test config");
    (AccountsClient::new(http, config, tokens), fake)
}

fn account(id: &str, version: i64) -> Value {
    account_with(id, version, "ACTIVE", &format!("Name of {id}"))
}

fn account_with(id: &str, version: i64, status: &str, name: &str) -> Value {
    json!({
        "accountId": id,
        "accountName": name,
        "status": status,
        "updatedAt": "2026-11-20T14:30:00Z",
        "version": version,
    })
}

/// Serves `data` in pages of `pageSize`, page tokens `o<offset>`, checking filter and token.
fn paged(data: Vec<Value>) -> impl Fn(&Req) -> Reply + Send + Sync + 'static {
    move |req: &Req| {
        if req.query.get("status").map(String::as_str) != Some("ACTIVE") {
            return Reply::json(400, json!({"error": "bad_filter"}));
        }
        if req.bearer.is_none() {
            return Reply::error(401);
        }
        let size: usize = req
            .query
            .get("pageSize")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let start: usize = req
            .token()
            .and_then(|t| t.strip_prefix('o'))
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let end = (start + size).min(data.len());
        let next = (end < data.len()).then(|| format!("o{end}"));
        Reply::json(
            200,
            json!({"items": &data[start..end], "nextPageToken": next, "totalCount": data.len()}),
        )
    }
}

type Listed = Result<ListingStats, ListingError<Infallible>>;

/// Lists without a deadline and keeps records as a sink must: page 1 of a pass drops what
/// earlier passes delivered.
async fn list(client: &AccountsClient) -> (Listed, Vec<AccountRecord>) {
    list_until(client, None).await
}

async fn list_until(
    client: &AccountsClient,
    deadline: Option<tokio::time::Instant>,
) -> (Listed, Vec<AccountRecord>) {
    let mut got = Vec::new();
    let result = client
        .list_active(deadline, |page| {
            if page.begins_pass() {
                got.clear();
            }
            got.extend(page.records);
            Ok::<(), Infallible>(())
        })
        .await;
    (result, got)
}

/// Lists without a deadline and returns every page as delivered.
async fn list_pages(client: &AccountsClient) -> (Listed, Vec<Page>) {
    let mut pages = Vec::new();
    let result = client
        .list_active(None, |page| {
            pages.push(page);
            Ok::<(), Infallible>(())
        })
        .await;
    (result, pages)
}

/// `(pass, number, ids)` of each page.
fn page_ids(pages: &[Page]) -> Vec<(u32, u64, Vec<&str>)> {
    pages
        .iter()
        .map(|p| (p.pass, p.number, ids(&p.records)))
        .collect()
}

/// A page body written byte by byte, so that items can hold what `json!` cannot: bytes that
/// are not UTF-8 and escapes that are no character.
fn page_bytes(items: &[&[u8]], next: Option<&str>) -> Vec<u8> {
    let mut body = br#"{"items":["#.to_vec();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(br#"],"nextPageToken":"#);
    body.extend_from_slice(json!(next).to_string().as_bytes());
    body.push(b'}');
    body
}

/// A record with every field given as raw JSON text.
fn record_bytes(
    id: &[u8],
    name: &[u8],
    status: &[u8],
    updated_at: &[u8],
    version: &[u8],
) -> Vec<u8> {
    let mut r = Vec::new();
    for (i, (key, value)) in [
        ("accountId", id),
        ("accountName", name),
        ("status", status),
        ("updatedAt", updated_at),
        ("version", version),
    ]
    .into_iter()
    .enumerate()
    {
        r.extend_from_slice(if i == 0 { b"{\"" } else { b",\"" });
        r.extend_from_slice(key.as_bytes());
        r.extend_from_slice(b"\":");
        r.extend_from_slice(value);
    }
    r.push(b'}');
    r
}

/// Parses a record given as JSON text, the way `check_page` does.
fn parse_text(text: &str) -> Result<AccountRecord, Defect> {
    parse_record(&Item {
        text,
        base: 0,
        not_utf8: &[],
    })
}

fn parse_value(v: &Value) -> Result<AccountRecord, Defect> {
    parse_text(&v.to_string())
}

/// A TCP listener that accepts connections and never answers; keep it for the test's length.
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (addr, task)
}

fn ids(records: &[AccountRecord]) -> Vec<&str> {
    records.iter().map(|r| r.account_id.as_str()).collect()
}

/// Captures log output of the current thread (tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

// ---- listing over HTTP -------------------------------------------------------------------

#[tokio::test]
async fn paging_delivers_every_record_once_with_filter_size_and_token() {
    let data: Vec<Value> = (1..=5).map(|i| account(&format!("A{i}"), 1)).collect();
    let (client, fake) = start(paged(data)).await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    assert_eq!(ids(&got), ["A1", "A2", "A3", "A4", "A5"]);
    assert_eq!(got[0].account_name, "Name of A1");
    assert_eq!(got[0].status, AccountStatus::Active);
    assert_eq!(got[0].version, 1);
    assert_eq!(
        got[0].updated_at,
        DateTime::parse_from_rfc3339("2026-11-20T14:30:00Z").expect("date")
    );
    assert_eq!(
        stats,
        ListingStats {
            pages: 3,
            records: 5,
            total_count: Some(5),
            ..ListingStats::default()
        }
    );
    let requests = fake.requests();
    let tokens: Vec<Option<&str>> = requests.iter().map(Req::token).collect();
    assert_eq!(tokens, [None, Some("o2"), Some("o4")]);
    for req in &requests {
        assert_eq!(req.query.get("status").map(String::as_str), Some("ACTIVE"));
        assert_eq!(req.query.get("pageSize").map(String::as_str), Some("2"));
        assert_eq!(req.bearer.as_deref(), Some("tok-0"));
    }
    assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 1, "token cached");
}

#[tokio::test]
async fn malformed_records_of_each_kind_are_skipped_counted_and_logged_without_names() {
    let secret = "SECRET-NAME";
    let long_id = "x".repeat(70);
    let mut no_version = account_with("NoVersion", 1, "ACTIVE", secret);
    no_version
        .as_object_mut()
        .expect("object")
        .remove("version");
    let mut items = vec![
        account("Good1", 1), // 0
        json!({"accountName": secret, "status": "ACTIVE", "updatedAt": "2026-11-20T14:30:00Z", "version": 1}), // 1
        account_with("placeholder", 1, "ACTIVE", secret), // 2: id replaced below
        account_with("-leading-dash", 1, "ACTIVE", secret), // 3
        account_with(&long_id, 1, "ACTIVE", secret),      // 4
        account_with("evil\nid", 1, "ACTIVE", secret),    // 5
        json!({"accountId": "NoName", "status": "ACTIVE", "updatedAt": "2026-11-20T14:30:00Z", "version": 1}), // 6
        json!({"accountId": "NumName", "accountName": 5, "status": "ACTIVE", "updatedAt": "2026-11-20T14:30:00Z", "version": 1}), // 7
        account_with("BadStatus", 1, "DELETED", secret), // 8
        account_with("BadDate", 1, "ACTIVE", secret),    // 9: date replaced below
        account_with("ZeroVersion", 0, "ACTIVE", secret), // 10
        json!({"accountId": "StrVersion", "accountName": secret, "status": "ACTIVE", "updatedAt": "2026-11-20T14:30:00Z", "version": "3"}), // 11
        json!({"accountId": "FracVersion", "accountName": secret, "status": "ACTIVE", "updatedAt": "2026-11-20T14:30:00Z", "version": 1.5}), // 12
        no_version, // 13
        json!(42),  // 14
        json!({"accountId": null, "accountName": secret, "status": "ACTIVE", "updatedAt": "2026-11-20T14:30:00Z", "version": 1}), // 15
        account("Good2", 7), // 16
    ];
    items[2]["accountId"] = json!(12345);
    items[9]["updatedAt"] = json!("yesterday");
    let (client, _fake) = start(move |_| Reply::page(items.clone(), None)).await;

    let (logs, _guard) = capture_logs();
    let (result, got) = list(&client).await;
    let stats = result.expect("listing goes on");
    assert_eq!(ids(&got), ["Good1", "Good2"]);
    assert_eq!(stats.malformed, 15);
    assert_eq!(stats.records, 2);
    assert_eq!(stats.not_active, 0);

    let text = logs.text();
    assert!(!text.contains(secret), "a name reached the logs:\n{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("malformed account record skipped"))
        .collect();
    assert_eq!(lines.len(), 15, "one line per record:\n{text}");
    let line = |index: usize| {
        let key = format!("index={index} ");
        lines
            .iter()
            .find(|l| l.contains(&key))
            .copied()
            .unwrap_or_else(|| panic!("no log line for index {index}:\n{text}"))
    };
    for l in &lines {
        assert!(l.contains("WARN") && l.contains("page=1"), "{l}");
    }
    assert!(
        line(1).contains("accountId is missing or null"),
        "{}",
        line(1)
    );
    assert!(line(2).contains("accountId is not a string"), "{}", line(2));
    assert!(line(3).contains("-leading-dash") && line(3).contains("does not match"));
    let cut = format!("{}…", "x".repeat(64));
    assert!(
        line(4).contains(&cut) && !line(4).contains(&"x".repeat(65)),
        "{}",
        line(4)
    );
    assert!(
        line(5).contains(r"evil\nid"),
        "control character escaped: {}",
        line(5)
    );
    assert!(line(6).contains("NoName") && line(6).contains("accountName is missing"));
    assert!(line(7).contains("accountName is not a string"));
    assert!(line(8).contains("BadStatus") && line(8).contains("status is not ACTIVE"));
    assert!(line(9).contains("updatedAt is not an RFC 3339"));
    assert!(line(10).contains("version is less than 1"));
    assert!(line(11).contains("version is not an integer"));
    assert!(line(12).contains("version is not an integer"));
    assert!(line(13).contains("version is missing"));
    assert!(line(14).contains("not a JSON object") && line(14).contains("<none>"));
    assert!(line(15).contains("<none>"));
}

#[tokio::test]
async fn undecodable_records_are_skipped_one_by_one_and_the_page_goes_on() {
    const AT: &[u8] = br#""2026-11-20T14:30:00Z""#;
    const ACTIVE: &[u8] = br#""ACTIVE""#;
    let rec = |id: &[u8], name: &[u8]| record_bytes(id, name, ACTIVE, AT, b"1");
    let items: Vec<Vec<u8>> = vec![
        rec(br#""Good1""#, br#""Alpha""#), // 0
        rec(br#""Utf8Name""#, b"\"SECRET-\xe9-NAME\""), // 1: Latin-1, not UTF-8
        rec(b"\"Bad\xffId\"", br#""SECRET-NAME""#), // 2: the id itself is not UTF-8
        rec(br#""CutShort""#, b"\"SECRET-NAME \xe2\x82\""), // 3: a character cut short
        rec(br#""Surrogate""#, br#""SECRET-\ud800-NAME""#), // 4: lone high surrogate
        record_bytes(br#""LowSurrogate""#, br#""SECRET-NAME""#, br#""\udc00""#, AT, b"1"), // 5
        b"{\"accountId\":\"KeySurrogate\",\"account\\ud800Name\":\"SECRET-NAME\"}".to_vec(), // 6
        rec(br#""NumName""#, b"42"), // 7: wrong type
        record_bytes(br#""NumDate""#, br#""SECRET-NAME""#, ACTIVE, b"20261120", b"1"), // 8
        record_bytes(br#""StrVersion""#, br#""SECRET-NAME""#, ACTIVE, AT, br#""1""#), // 9
        br#"{"accountId":"NoName","status":"ACTIVE","updatedAt":"2026-11-20T14:30:00Z","version":1}"#.to_vec(), // 10
        rec(br#""Emoji""#, br#""\ud83d\ude00 Fund""#), // 11: a surrogate pair is a character
        rec(br#""RealFffd""#, "\"Caf\u{FFFD} Trust\"".as_bytes()), // 12: a genuine U+FFFD
        // 13: bytes that are not UTF-8 in a field outside the contract are not read.
        b"{\"accountId\":\"Extra\",\"note\":\"\xff\xfe\",\"accountName\":\"Beta\",\"status\":\"ACTIVE\",\"updatedAt\":\"2026-11-20T14:30:00Z\",\"version\":1}".to_vec(),
        rec(br#""Good2""#, br#""Gamma""#), // 14
    ];
    let (client, fake) = start(move |req| match req.token() {
        None => {
            let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
            Reply::raw(200, page_bytes(&refs, Some("p2")))
        }
        Some(_) => Reply::page(vec![account("Page2", 1)], None),
    })
    .await;

    let (logs, _guard) = capture_logs();
    let (result, got) = list(&client).await;
    let stats = result.expect("the listing goes on");
    assert_eq!(
        ids(&got),
        ["Good1", "Emoji", "RealFffd", "Extra", "Good2", "Page2"]
    );
    assert_eq!(got[1].account_name, "\u{1F600} Fund");
    assert_eq!(got[2].account_name, "Caf\u{FFFD} Trust");
    assert_eq!(stats.malformed, 10);
    assert_eq!(stats.records, 6);
    assert_eq!(fake.requests().len(), 2, "the next page was fetched");

    let text = logs.text();
    assert!(!text.contains("SECRET"), "a name reached the logs:\n{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("malformed account record skipped"))
        .collect();
    assert_eq!(lines.len(), 10, "one line per record:\n{text}");
    let line = |index: usize| {
        let key = format!("index={index} ");
        lines
            .iter()
            .find(|l| l.contains(&key))
            .copied()
            .unwrap_or_else(|| panic!("no log line for index {index}:\n{text}"))
    };
    for l in &lines {
        assert!(l.contains("WARN") && l.contains("page=1"), "{l}");
    }
    let expect = [
        (1, "Utf8Name", "accountName holds bytes that are not UTF-8"),
        (2, "<none>", "accountId holds bytes that are not UTF-8"),
        (3, "CutShort", "accountName holds bytes that are not UTF-8"),
        (
            4,
            "Surrogate",
            "accountName holds an escape that is no character",
        ),
        (
            5,
            "LowSurrogate",
            "status holds an escape that is no character",
        ),
        (6, "<none>", "not a decodable JSON object"),
        (7, "NumName", "accountName is not a string"),
        (8, "NumDate", "updatedAt is not a string"),
        (9, "StrVersion", "version is not an integer"),
        (10, "NoName", "accountName is missing"),
    ];
    for (index, id, rule) in expect {
        let l = line(index);
        assert!(
            l.contains(&format!("account_id={id} ")) && l.contains(rule),
            "index {index}: {l}"
        );
    }
}

#[tokio::test]
async fn a_page_not_utf8_outside_its_items_or_with_an_undecodable_token_is_fatal() {
    for body in [
        br#"{"items":[],"nextPageToken":"p"#.iter().copied().chain(*b"\xff\"}").collect::<Vec<u8>>(),
        br#"{"items":[],"nextPageToken":"\ud800"}"#.to_vec(),
        b"{\"items\":[],\"x\xff\":1}".to_vec(),
    ] {
        let (client, _fake) = start(move |_| Reply::raw(200, body.clone())).await;
        let (result, _) = list(&client).await;
        let err = result.expect_err("fatal");
        assert!(
            matches!(
                err,
                ListingError::Fatal {
                    page: 1,
                    status: Some(200),
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

/// The account system during a listing that a 410 interrupts: the first pass lists A1, a
/// record without a version and A2, then its page token expires; meanwhile A1 changed and A2
/// left, so the second pass lists the same malformed record on page 1 and A1 (v2) and A3 on
/// page 2.
async fn start_interrupted_listing() -> (AccountsClient, Fake) {
    let mut no_version = account("NoVersion", 1);
    no_version
        .as_object_mut()
        .expect("object")
        .remove("version");
    let expired = Arc::new(AtomicBool::new(false));
    start(
        move |req| match (expired.load(Ordering::SeqCst), req.token()) {
            (false, None) => Reply::page(
                vec![account("A1", 1), no_version.clone(), account("A2", 1)],
                Some("p2"),
            ),
            (false, Some(_)) => {
                expired.store(true, Ordering::SeqCst);
                Reply::json(410, json!({"error": "page_token_expired"}))
            }
            (true, None) => Reply::page(vec![no_version.clone()], Some("q2")),
            (true, Some(_)) => Reply::page(vec![account("A1", 2), account("A3", 1)], None),
        },
    )
    .await
}

#[tokio::test]
async fn a_restart_delivers_a_new_pass_and_counts_only_its_records() {
    let (client, _fake) = start_interrupted_listing().await;
    let (result, pages) = list_pages(&client).await;
    let stats = result.expect("listing");
    assert_eq!(
        page_ids(&pages),
        [
            (1, 1, vec!["A1", "A2"]),
            (2, 1, vec![]),
            (2, 2, vec!["A1", "A3"])
        ],
        "page 1 of the new pass is delivered although it has no valid record"
    );
    assert!(pages[1].begins_pass() && !pages[2].begins_pass());
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.malformed, 1, "the malformed record is counted once");
    assert_eq!(stats.records, 2, "records of the second pass");
    assert_eq!(stats.pages, 3);
}

#[tokio::test]
async fn the_producer_keeps_only_the_accounts_of_the_pass_that_completed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = crate::store::open(&dir.path().join("producer.db")).expect("store");
    let (client, _fake) = start_interrupted_listing().await;
    let stats = client
        .list_active(None, |page| crate::insert_page(&store, "2026-11-23", &page))
        .await
        .expect("listing");
    let rows: Vec<(String, i64)> = store
        .call(|c| {
            let mut stmt = c.prepare(
                "SELECT account_id, version FROM listing WHERE run_id = '2026-11-23' ORDER BY account_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
        .expect("rows");
    assert_eq!(
        rows,
        [("A1".to_owned(), 2), ("A3".to_owned(), 1)],
        "A2 left during the listing and does not survive from the first pass"
    );
    assert_eq!(stats.malformed, 1);
}

#[tokio::test]
async fn a_deadline_ends_a_listing_stuck_on_a_slow_page() {
    let (client, fake) = start(|req| match req.token() {
        None => Reply::page(vec![account("A1", 1)], Some("p2")),
        Some(_) => Reply::page(vec![account("A2", 1)], None).delayed(Duration::from_secs(60)),
    })
    .await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let (result, got) = list_until(&client, Some(deadline)).await;
    match result {
        Err(ListingError::DeadlinePassed { pass, page, .. }) => assert_eq!((pass, page), (1, 2)),
        other => panic!("expected DeadlinePassed, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at the deadline, not the page timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(ids(&got), ["A1"], "a partial listing");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_deadline_cuts_a_retry_after_wait_short() {
    let (client, _fake) = start(|_| Reply::error(429).header("retry-after", "600")).await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let (result, _) = list_until(&client, Some(deadline)).await;
    let err = result.expect_err("deadline");
    assert!(
        matches!(
            err,
            ListingError::DeadlinePassed {
                pass: 1,
                page: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("deadline") && err.to_string().contains("page 1"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_listing_finished_before_its_deadline_is_complete() {
    let data: Vec<Value> = (1..=3).map(|i| account(&format!("A{i}"), 1)).collect();
    let (client, _fake) = start(paged(data)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (result, got) = list_until(&client, Some(deadline)).await;
    assert_eq!(result.expect("listing").records, 3);
    assert_eq!(ids(&got), ["A1", "A2", "A3"]);
}

#[tokio::test]
async fn a_token_endpoint_that_never_answers_is_bounded_by_the_timeout() {
    let (_, fake) = start(|_| Reply::page(vec![account("A1", 1)], None)).await;
    let (silent, _held) = silent_server().await;
    // The token source's own timeout is far longer: the client's bounds the call.
    let tokens = Arc::new(TokenSource::new(
        reqwest::Client::new(),
        format!("http://{silent}/oauth2/token"),
        "producer",
        Secret::new("s3cret"),
        None,
    ));
    let mut config = test_config(fake.base.clone());
    config.timeout = Duration::from_millis(200);
    config.max_attempts = 2;
    let client = AccountsClient::new(reqwest::Client::new(), config, tokens);
    let started = Instant::now();
    let (result, _) = list(&client).await;
    match result.expect_err("no token") {
        ListingError::Exhausted {
            page: 1,
            attempts: 2,
            last_status: None,
            last,
            ..
        } => assert!(last.contains("token") && last.contains("timeout"), "{last}"),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        fake.requests().is_empty(),
        "no account request without a token"
    );
}

#[tokio::test]
async fn hostile_names_are_accepted_verbatim_and_201_characters_rejected() {
    let names = [
        "Smith, Jones & Co, LLC".to_string(),
        "\"Quoted\" 'Trust'".to_string(),
        "Line one\nLine two\r\n".to_string(),
        "=HYPERLINK(\"http://x\")".to_string(),
        "+1".to_string(),
        "-2".to_string(),
        "@SUM(A1)".to_string(),
        "é".repeat(200),
    ];
    let mut items: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| account_with(&format!("H{i}"), 1, "ACTIVE", n))
        .collect();
    items.push(account_with("TooLong", 1, "ACTIVE", &"é".repeat(201)));
    let (client, _fake) = start(move |_| Reply::page(items.clone(), None)).await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    let got_names: Vec<&str> = got.iter().map(|r| r.account_name.as_str()).collect();
    assert_eq!(
        got_names,
        names.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(stats.malformed, 1, "201 characters is one too many");
    assert!(!got.iter().any(|r| r.account_id == "TooLong"));
}

#[tokio::test]
async fn gone_mid_listing_restarts_and_dedupe_gives_the_complete_latest_set() {
    let expired = Arc::new(AtomicBool::new(false));
    let first: Vec<Value> = (1..=4).map(|i| account(&format!("A{i}"), 1)).collect();
    // While the listing ran, A1 changed and A5 was opened.
    let mut second = first.clone();
    second[0] = account("A1", 2);
    second.push(account("A5", 1));
    let (serve_first, serve_second) = (paged(first), paged(second));
    let flag = expired.clone();
    let (client, fake) = start(move |req| {
        if !flag.load(Ordering::SeqCst) {
            if req.token() == Some("o2") {
                flag.store(true, Ordering::SeqCst);
                return Reply::json(410, json!({"error": "page_token_expired"}));
            }
            return serve_first(req);
        }
        serve_second(req)
    })
    .await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.pages, 4, "one page before the 410, three after");
    assert_eq!(stats.records, 5, "records of the pass that completed");
    assert_eq!(stats.total_count, Some(5), "from the pass that completed");
    let tokens: Vec<Option<String>> = fake
        .requests()
        .iter()
        .map(|r| r.token().map(str::to_owned))
        .collect();
    assert_eq!(tokens[2], None, "restart begins at the first page");
    let latest = dedupe_highest_version(got);
    assert_eq!(ids(&latest), ["A1", "A2", "A3", "A4", "A5"]);
    assert_eq!(latest[0].version, 2);
}

#[tokio::test]
async fn gone_forever_is_fatal_after_max_restarts() {
    let (client, fake) = start(|req| {
        if req.token().is_some() {
            Reply::json(410, json!({"error": "page_token_expired"}))
        } else {
            Reply::page(vec![account("A1", 1)], Some("o1"))
        }
    })
    .await;
    let (result, pages) = list_pages(&client).await;
    let err = result.expect_err("fatal");
    match &err {
        ListingError::Fatal { page, status, .. } => {
            assert_eq!((*page, *status), (2, Some(410)));
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("/v1/accounts") && text.contains("page 2") && text.contains("410"),
        "{text}"
    );
    // First pass plus max_restarts (2) passes, two requests each.
    assert_eq!(fake.requests().len(), 6);
    assert_eq!(
        page_ids(&pages),
        [(1, 1, vec!["A1"]), (2, 1, vec!["A1"]), (3, 1, vec!["A1"])],
        "page 1 delivered in every pass, each pass numbered"
    );
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after_then_succeeds() {
    let (client, fake) = start(|req| {
        if req.n == 1 {
            Reply::error(429).header("retry-after", "1")
        } else {
            Reply::page(vec![account("A1", 1)], None)
        }
    })
    .await;
    let started = Instant::now();
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured although backoff is only milliseconds: {:?}",
        started.elapsed()
    );
    assert_eq!(stats.retries, 1);
    assert_eq!(ids(&got), ["A1"]);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_and_timeouts_retry_the_same_page() {
    let (client, fake) = start_with(
        Vec::new(),
        |c| {
            c.timeout = Duration::from_millis(150);
            c.max_attempts = 3;
        },
        |req| match (req.n, req.token()) {
            (1, None) => Reply::page(vec![account("A1", 1)], Some("p2")),
            (2, Some("p2")) => Reply::error(502),
            (3, Some("p2")) => Reply::page(vec![], None).delayed(Duration::from_millis(600)),
            (4, Some("p2")) => Reply::page(vec![account("A2", 1)], None),
            _ => Reply::json(400, json!({"error": "unexpected request"})),
        },
    )
    .await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    assert_eq!(ids(&got), ["A1", "A2"]);
    assert_eq!(stats.retries, 2, "one 502, one timeout");
    assert_eq!(stats.pages, 2);
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test]
async fn unavailable_on_every_attempt_is_exhausted_naming_page_and_status() {
    let (client, fake) = start(|req| {
        if req.token().is_none() {
            Reply::page(vec![account("A1", 1)], Some("p2"))
        } else {
            Reply::error(503)
        }
    })
    .await;
    let (result, _) = list(&client).await;
    let err = result.expect_err("exhausted");
    match &err {
        ListingError::Exhausted {
            page,
            attempts,
            last_status,
            ..
        } => assert_eq!((*page, *attempts, *last_status), (2, 3, Some(503))),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("/v1/accounts") && text.contains("page 2") && text.contains("503"),
        "{text}"
    );
    assert_eq!(
        fake.requests().len(),
        1 + 3,
        "max_attempts requests for page 2"
    );
}

#[tokio::test]
async fn unreachable_account_system_is_exhausted() {
    let (_, fake) = start(|_| Reply::page(vec![], None)).await;
    // The token endpoint is up; the account system URL points at a closed port (discard).
    let tokens = Arc::new(TokenSource::new(
        reqwest::Client::new(),
        format!("{}/oauth2/token", fake.base),
        "producer",
        Secret::new("s3cret"),
        None,
    ));
    let client = AccountsClient::new(
        reqwest::Client::new(),
        test_config("http://127.0.0.1:9".into()),
        tokens,
    );
    let (result, _) = list(&client).await;
    match result.expect_err("unreachable") {
        ListingError::Exhausted {
            attempts,
            last_status: None,
            ..
        } => assert_eq!(attempts, 3),
        other => panic!("expected Exhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn unauthorized_refreshes_the_token_without_counting_an_attempt() {
    let (client, fake) = start_with(
        Vec::new(),
        |c| c.max_attempts = 1,
        |req| match req.bearer.as_deref() {
            Some("tok-0") => Reply::json(401, json!({"error": "token_expired"})),
            _ => Reply::page(vec![account("A1", 1)], None),
        },
    )
    .await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing after refresh");
    assert_eq!(ids(&got), ["A1"]);
    assert_eq!(stats.retries, 0);
    assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 2);
    let bearers: Vec<Option<String>> = fake.requests().into_iter().map(|r| r.bearer).collect();
    assert_eq!(bearers, [Some("tok-0".into()), Some("tok-1".into())]);
}

#[tokio::test]
async fn unauthorized_after_three_refreshes_is_fatal() {
    let (client, fake) = start(|_| Reply::json(401, json!({"error": "unauthorized"}))).await;
    let (result, _) = list(&client).await;
    match result.expect_err("fatal") {
        ListingError::Fatal { page, status, .. } => assert_eq!((page, status), (1, Some(401))),
        other => panic!("expected Fatal, got {other:?}"),
    }
    assert_eq!(fake.requests().len(), 1 + MAX_AUTH_REFRESHES as usize);
    assert_eq!(fake.tokens_issued.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn token_endpoint_outage_is_retried() {
    let (client, fake) = start_with(
        vec![503],
        |_| {},
        |_| Reply::page(vec![account("A1", 1)], None),
    )
    .await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    assert_eq!(ids(&got), ["A1"]);
    assert_eq!(stats.retries, 1);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn token_refused_is_fatal() {
    let (client, fake) = start_with(
        vec![401],
        |_| {},
        |_| Reply::page(vec![account("A1", 1)], None),
    )
    .await;
    let (result, _) = list(&client).await;
    let err = result.expect_err("fatal");
    assert!(
        matches!(
            err,
            ListingError::Fatal {
                status: None,
                page: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("refused") && text.contains("producer"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "secret leaked: {text}");
    assert!(
        fake.requests().is_empty(),
        "no account request without a token"
    );
}

#[tokio::test]
async fn bad_request_is_fatal_with_the_error_body() {
    let (client, fake) = start(|_| {
        Reply::json(
            400,
            json!({"error": "invalid_page_size", "message": "pageSize\nout of range"}),
        )
    })
    .await;
    let (result, _) = list(&client).await;
    let err = result.expect_err("fatal");
    assert!(
        matches!(
            err,
            ListingError::Fatal {
                status: Some(400),
                page: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("invalid_page_size") && text.contains(r"pageSize\nout of range"),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 1, "no retry");
}

#[tokio::test]
async fn a_page_outside_the_contract_is_fatal_naming_the_page() {
    for body in [
        "<html>oops</html>",
        r#"{"items": 5}"#,
        r#"{"nextPageToken": null}"#,
    ] {
        let (client, _fake) = start(move |req| {
            if req.token().is_none() {
                Reply::page(vec![account("A1", 1)], Some("p2"))
            } else {
                Reply::raw(200, body)
            }
        })
        .await;
        let (result, got) = list(&client).await;
        let err = result.expect_err("fatal");
        assert!(
            matches!(
                err,
                ListingError::Fatal {
                    page: 2,
                    status: Some(200),
                    ..
                }
            ),
            "{body}: {err:?}"
        );
        assert!(err.to_string().contains("page 2"), "{err}");
        assert_eq!(ids(&got), ["A1"]);
    }
}

#[tokio::test]
async fn a_page_token_that_repeats_itself_is_a_cycle() {
    let (client, fake) = start(|_| Reply::page(vec![account("A1", 1)], Some("same"))).await;
    let (result, _) = list(&client).await;
    assert!(
        matches!(
            result,
            Err(ListingError::Cycle {
                pass: 1,
                page: 2,
                repeats: 2,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn page_tokens_that_cycle_through_several_pages_end_the_listing_naming_the_pages() {
    // Page 1 → 2 → 3 → 4, and page 4 hands out the token of page 2 again.
    let token = |n: u32| format!("opaque-cursor-{n}-customer-data");
    let (client, fake) = start(move |req| {
        let next = match req.token() {
            None => token(2),
            Some(t) if t == token(2) => token(3),
            Some(t) if t == token(3) => token(4),
            Some(_) => token(2),
        };
        Reply::page(vec![account(&format!("A{}", req.n), 1)], Some(&next))
    })
    .await;
    let (result, got) = list(&client).await;
    let err = result.expect_err("a cycle");
    match &err {
        ListingError::Cycle {
            pass,
            page,
            repeats,
            ..
        } => assert_eq!((*pass, *page, *repeats), (1, 4, 2)),
        other => panic!("expected Cycle, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("/v1/accounts") && text.contains("page 4") && text.contains("page 2"),
        "{text}"
    );
    assert!(
        !text.contains("opaque-cursor"),
        "token contents shown: {text}"
    );
    assert_eq!(fake.requests().len(), 4, "no page fetched twice");
    assert_eq!(ids(&got), ["A1", "A2", "A3", "A4"], "a partial listing");
}

#[tokio::test]
async fn a_sink_error_stops_the_listing_and_is_returned() {
    let data: Vec<Value> = (1..=6).map(|i| account(&format!("A{i}"), 1)).collect();
    let (client, fake) = start(paged(data)).await;
    let mut pages_seen = 0;
    let result = client
        .list_active(None, |_page| {
            pages_seen += 1;
            if pages_seen == 2 {
                Err("disk full")
            } else {
                Ok(())
            }
        })
        .await;
    match result {
        Err(ListingError::Sink(e)) => assert_eq!(e, "disk full"),
        other => panic!("expected Sink, got {other:?}"),
    }
    assert_eq!(
        fake.requests().len(),
        2,
        "no page fetched after the sink failed"
    );
}

#[tokio::test]
async fn duplicates_across_pages_dedupe_to_the_highest_version() {
    let data = vec![
        account("A1", 1),
        account("A2", 1),
        account("A1", 3),
        account("A3", 1),
        account("A1", 2),
    ];
    let (client, _fake) = start(paged(data)).await;
    let (result, got) = list(&client).await;
    assert_eq!(result.expect("listing").records, 5);
    let latest = dedupe_highest_version(got);
    assert_eq!(ids(&latest), ["A1", "A2", "A3"]);
    assert_eq!(latest[0].version, 3);
}

#[tokio::test]
async fn records_not_active_are_skipped_despite_the_filter() {
    let items = vec![
        account("A1", 1),
        account_with("C1", 1, "CLOSED", "Closed one"),
        account_with("S1", 1, "SUSPENDED", "Suspended one"),
    ];
    let (client, _fake) = start(move |_| Reply::page(items.clone(), None)).await;
    let (result, got) = list(&client).await;
    let stats = result.expect("listing");
    assert_eq!(ids(&got), ["A1"]);
    assert_eq!(
        (stats.not_active, stats.malformed, stats.records),
        (2, 0, 1)
    );
}

// ---- pure functions ----------------------------------------------------------------------

#[test]
fn config_defaults_durations_and_unknown_keys() {
    let config: AccountsClientConfig =
        serde_json::from_value(json!({"url": "https://ams.firm.example"})).expect("config");
    assert_eq!(config.page_size, 1000);
    assert_eq!(config.timeout, Duration::from_secs(30));
    assert_eq!(config.max_attempts, 5);
    assert_eq!(config.backoff_base, Duration::from_millis(500));
    assert_eq!(config.backoff_cap, Duration::from_secs(30));
    assert_eq!(config.max_restarts, 3);
    config.validate().expect("defaults are valid");

    let config: AccountsClientConfig = serde_json::from_value(json!({
        "url": "http://localhost:8080", "timeout": "2s", "backoff_base": "5ms", "backoff_cap": "1m"
    }))
    .expect("config");
    assert_eq!(config.timeout, Duration::from_secs(2));
    assert_eq!(config.backoff_base, Duration::from_millis(5));
    assert_eq!(config.backoff_cap, Duration::from_secs(60));

    let err =
        serde_json::from_value::<AccountsClientConfig>(json!({"url": "http://x", "page_sise": 10}))
            .expect_err("unknown key");
    assert!(err.to_string().contains("page_sise"), "{err}");
}

#[test]
fn validate_names_the_key() {
    let ok = AccountsClientConfig::new("https://ams.firm.example");
    ok.validate().expect("valid");
    type Breaks = Box<dyn Fn(&mut AccountsClientConfig)>;
    let cases: Vec<(&str, Breaks)> = vec![
        ("url", Box::new(|c| c.url = "ftp://ams".into())),
        ("url", Box::new(|c| c.url = "not a url".into())),
        ("page_size", Box::new(|c| c.page_size = 0)),
        ("page_size", Box::new(|c| c.page_size = 5001)),
        ("timeout", Box::new(|c| c.timeout = Duration::ZERO)),
        ("max_attempts", Box::new(|c| c.max_attempts = 0)),
        (
            "backoff_base",
            Box::new(|c| c.backoff_base = Duration::ZERO),
        ),
        (
            "backoff_cap",
            Box::new(|c| c.backoff_cap = Duration::from_millis(1)),
        ),
        ("max_restarts", Box::new(|c| c.max_restarts = 21)),
    ];
    for (key, breaks) in cases {
        let mut config = ok.clone();
        breaks(&mut config);
        let err = config.validate().expect_err(key);
        assert!(err.starts_with(key), "{key}: {err}");
    }
    let mut edge = ok.clone();
    edge.page_size = 5000;
    edge.max_restarts = 0;
    edge.validate().expect("edges are valid");
    edge.page_size = 1;
    edge.validate().expect("edges are valid");
}

#[test]
fn each_rule_is_reported() {
    let good = account("A1", 1);
    assert!(parse_value(&good).is_ok());
    let with = |key: &str, value: Value| {
        let mut v = good.clone();
        v[key] = value;
        parse_value(&v).expect_err(key)
    };
    assert_eq!(parse_value(&json!([])), Err(Defect::NotAnObject));
    assert_eq!(parse_text(" \n{}"), Err(Defect::Missing("accountId")));
    assert_eq!(with("accountId", Value::Null), Defect::Missing("accountId"));
    assert_eq!(with("accountId", json!(1)), Defect::NotAString("accountId"));
    assert_eq!(with("accountId", json!("a b")), Defect::IdPattern);
    assert_eq!(
        with("accountName", json!(["x"])),
        Defect::NotAString("accountName")
    );
    assert_eq!(
        with("accountName", json!("n".repeat(201))),
        Defect::NameTooLong
    );
    assert_eq!(with("status", json!("active")), Defect::UnknownStatus);
    assert_eq!(
        with("updatedAt", json!("2026-11-20")),
        Defect::UpdatedAtFormat
    );
    assert_eq!(with("version", json!(-1)), Defect::VersionBelowOne);
    assert_eq!(with("version", json!(true)), Defect::VersionNotInteger);
    // JSON Schema counts 3.0 as an integer.
    let mut v = good.clone();
    v["version"] = json!(3.0);
    assert_eq!(parse_value(&v).expect("3.0").version, 3);
    v["updatedAt"] = json!("2026-11-20T08:30:00-06:00");
    assert_eq!(
        parse_value(&v).expect("offset").updated_at.to_rfc3339(),
        "2026-11-20T14:30:00+00:00"
    );
    // Escapes decode; an escape that is no character does not.
    let escaped = r#"{"accountId":"\u0041\u0031","accountName":"\ud83d\ude00 \"Fund\"","status":"ACTIVE","updatedAt":"2026-11-20T14:30:00Z","version":1}"#;
    let record = parse_text(escaped).expect("escapes");
    assert_eq!(
        (record.account_id.as_str(), record.account_name.as_str()),
        ("A1", "\u{1F600} \"Fund\"")
    );
    for (field, text) in [
        ("accountName", escaped.replace(r"\ude00", "")),
        ("accountId", escaped.replace(r"\u0041", r"\udc41")),
        ("status", escaped.replace(r#""ACTIVE""#, r#""\ud800""#)),
    ] {
        assert_eq!(parse_text(&text), Err(Defect::Undecodable(field)), "{text}");
    }
    assert_eq!(
        parse_text(&escaped.replace(r#""version""#, r#""v\ud800""#)),
        Err(Defect::UndecodableObject)
    );
    assert_eq!(
        parse_text(&escaped.replace(r#""version":1"#, r#""version":"\ud800""#)),
        Err(Defect::VersionNotInteger)
    );
}

#[test]
fn loggable_ids_are_cut_and_escaped() {
    assert_eq!(loggable_id("A-1"), "A-1");
    assert_eq!(loggable_id("a\nb\u{1b}[31m"), r"a\nb\u{1b}[31m");
    assert_eq!(loggable_id(&"é".repeat(70)), format!("{}…", "é".repeat(64)));
}

#[test]
fn backoff_grows_is_capped_jittered_and_honours_retry_after() {
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(30);
    assert_eq!(backoff_delay(1, base, cap, None, 1.0), base);
    assert_eq!(
        backoff_delay(1, base, cap, None, 0.5),
        Duration::from_millis(250)
    );
    assert_eq!(
        backoff_delay(3, base, cap, None, 1.0),
        Duration::from_secs(2)
    );
    assert_eq!(backoff_delay(10, base, cap, None, 1.0), cap);
    assert_eq!(backoff_delay(200, base, cap, None, 1.0), cap, "no overflow");
    assert_eq!(
        backoff_delay(1, base, cap, None, 7.0),
        base,
        "jitter clamped to [0.5, 1]"
    );
    let ra = Duration::from_secs(5);
    assert_eq!(backoff_delay(1, base, cap, Some(ra), 1.0), ra);
    assert_eq!(backoff_delay(10, base, cap, Some(ra), 1.0), cap);
    assert_eq!(
        backoff_delay(1, base, cap, Some(Duration::from_secs(86_400)), 1.0),
        MAX_RETRY_AFTER
    );
}

#[test]
fn dedupe_keeps_highest_version_later_on_ties_sorted_by_id() {
    let rec = |id: &str, version: i64, name: &str| AccountRecord {
        account_id: id.into(),
        account_name: name.into(),
        status: AccountStatus::Active,
        updated_at: DateTime::UNIX_EPOCH,
        version,
    };
    let out = dedupe_highest_version(vec![
        rec("b", 2, "b2"),
        rec("a", 1, "a1"),
        rec("b", 1, "b1"),
        rec("a", 1, "a1-later"),
        rec("c", 5, "c5"),
    ]);
    let got: Vec<(&str, i64, &str)> = out
        .iter()
        .map(|r| (r.account_id.as_str(), r.version, r.account_name.as_str()))
        .collect();
    assert_eq!(got, [("a", 1, "a1-later"), ("b", 2, "b2"), ("c", 5, "c5")]);
}

#[test]
fn debug_of_a_record_hides_the_name() {
    let record = parse_value(&account_with("A1", 1, "ACTIVE", "Jane Doe")).expect("record");
    let text = format!("{record:?}");
    assert!(text.contains("A1") && text.contains("<8 chars>"), "{text}");
    assert!(!text.contains("Jane"), "{text}");
}

#[test]
fn error_bodies_are_described_bounded() {
    assert_eq!(
        describe_error_body(br#"{"error":"e","message":"m"}"#),
        "e: m"
    );
    assert_eq!(describe_error_body(br#"{"error":"e"}"#), "e");
    assert!(describe_error_body(b"<html>").contains("6 bytes"));
    let long = json!({"error": "x".repeat(1000)}).to_string();
    assert_eq!(
        describe_error_body(long.as_bytes()).chars().count(),
        MAX_ERROR_TEXT_CHARS + 1
    );
}

// ---- against the simulator -----------------------------------------------------------------

async fn simulated(config: esg_simulator::SimConfig) -> (esg_simulator::SimHandle, AccountsClient) {
    let sim = esg_simulator::start(config, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("simulator starts");
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenSource::new(
        http.clone(),
        sim.token_url(),
        "esg-accounts",
        Secret::new("accounts-secret"),
        Some("accounts.read".into()),
    ));
    let mut config = test_config(sim.url());
    config.page_size = 100;
    config.timeout = Duration::from_millis(500);
    (sim.clone(), AccountsClient::new(http, config, tokens))
}

fn sim_config(accounts: u64) -> esg_simulator::SimConfig {
    esg_simulator::SimConfig {
        accounts,
        rate_limit_per_second: None,
        ..esg_simulator::SimConfig::default()
    }
}

#[tokio::test]
async fn the_simulators_undecodable_records_are_skipped_and_every_account_kept() {
    let (_clean_sim, clean) = simulated(sim_config(600)).await;
    let (truth_result, truth) = list(&clean).await;
    truth_result.expect("clean listing");
    let (_sim, client) = simulated(esg_simulator::SimConfig {
        malformed_record_rate: 0.02,
        invalid_utf8_record_rate: 0.03,
        lone_surrogate_record_rate: 0.03,
        wrong_type_record_rate: 0.03,
        duplicate_rate: 0.05,
        ..sim_config(600)
    })
    .await;
    let (result, got) = list(&client).await;
    let stats = result.expect("one bad record does not fail a page");
    assert!(stats.malformed >= 30, "{stats:?}");
    let key = |r: &AccountRecord| (r.account_id.clone(), r.version);
    let got: BTreeSet<(String, i64)> = dedupe_highest_version(got).iter().map(key).collect();
    let truth: BTreeSet<(String, i64)> = dedupe_highest_version(truth).iter().map(key).collect();
    assert_eq!(
        got.symmetric_difference(&truth).collect::<Vec<_>>(),
        Vec::<&(String, i64)>::new(),
        "every account kept, nothing else"
    );
}

#[tokio::test]
async fn the_simulators_cycling_page_tokens_end_the_listing_as_a_cycle() {
    let (_sim, client) = simulated(esg_simulator::SimConfig {
        page_token_cycle_after: 4,
        ..sim_config(1000)
    })
    .await;
    let (result, _) = list(&client).await;
    match result {
        Err(ListingError::Cycle {
            page: 4,
            repeats: 2,
            ..
        }) => {}
        other => panic!("expected a cycle at page 4, got {other:?}"),
    }
}

#[tokio::test]
async fn the_simulators_silent_token_endpoint_exhausts_the_page_in_bounded_time() {
    let (sim, client) = simulated(esg_simulator::SimConfig {
        token_delay: Duration::from_secs(3600),
        ..sim_config(10)
    })
    .await;
    let started = Instant::now();
    let (result, _) = list(&client).await;
    match result {
        Err(ListingError::Exhausted {
            page: 1, attempts, ..
        }) => assert_eq!(attempts, 3),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.stats().account_pages, 0);
    sim.shutdown();
}

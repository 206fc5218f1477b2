//! End-to-end tests of the simulator over HTTP: a started simulator and a reqwest client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;

use crate::accounts::is_valid_account_id;
use crate::{start, SimConfig, SimHandle, SimStats};

fn today() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("valid date")
}

/// A configuration without a quota and with a fixed date, for tests that do not test those.
fn quiet(accounts: u64) -> SimConfig {
    SimConfig {
        accounts,
        rate_limit_per_second: None,
        today: Some(today()),
        ..SimConfig::default()
    }
}

async fn sim(config: SimConfig) -> SimHandle {
    start(config, "127.0.0.1:0".parse().expect("socket address"))
        .await
        .expect("simulator starts")
}

async fn token(http: &Client, sim: &SimHandle, client_id: &str, secret: &str) -> String {
    let resp = http
        .post(sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("token json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A client holding tokens for both APIs.
struct Api {
    http: Client,
    sim: SimHandle,
    accounts_token: String,
    esg_token: String,
}

impl Api {
    async fn new(sim: SimHandle) -> Api {
        let http = Client::new();
        let accounts_token = token(&http, &sim, "esg-accounts", "accounts-secret").await;
        let esg_token = token(&http, &sim, "esg-scorer", "scorer-secret").await;
        Api {
            http,
            sim,
            accounts_token,
            esg_token,
        }
    }

    async fn page(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/accounts", self.sim.url()))
            .bearer_auth(&self.accounts_token)
            .query(query)
            .send()
            .await
            .expect("listing request")
    }

    /// Every record of a listing, following page tokens; panics on a non-200 page.
    async fn list_all(&self, query: &[(&str, &str)]) -> (Vec<Value>, u64) {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        let mut total = None;
        for _ in 0..10_000 {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            if let Some(t) = &next {
                q.push(("pageToken", t));
            }
            let resp = self.page(&q).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = resp.json().await.expect("page json");
            let count = body["totalCount"].as_u64().expect("totalCount");
            assert_eq!(*total.get_or_insert(count), count, "totalCount is stable");
            items.extend(body["items"].as_array().expect("items").iter().cloned());
            match &body["nextPageToken"] {
                Value::Null => return (items, count),
                Value::String(t) => next = Some(t.clone()),
                other => panic!("nextPageToken {other}"),
            }
        }
        panic!("listing never ended");
    }

    async fn analysis(&self, id: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/accounts/{id}/esg-analysis", self.sim.url()))
            .bearer_auth(&self.esg_token)
            .send()
            .await
            .expect("analysis request")
    }

    async fn analysis_json(&self, id: &str) -> Value {
        let resp = self.analysis(id).await;
        assert_eq!(resp.status(), StatusCode::OK, "{id}");
        resp.json().await.expect("analysis json")
    }

    async fn batch(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/esg-analysis:batch", self.sim.url()))
            .bearer_auth(&self.esg_token)
            .json(body)
            .send()
            .await
            .expect("batch request")
    }

    async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/_sim/{path}", self.sim.url()))
            .send()
            .await
            .expect("admin request")
    }

    async fn admin_get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/_sim/{path}", self.sim.url()))
            .send()
            .await
            .expect("admin request");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("admin json")
    }
}

fn id(i: u64) -> String {
    crate::accounts::account_id(i)
}

fn scores(v: &Value) -> [Value; 4] {
    let s = &v["scores"];
    [
        s["overall"].clone(),
        s["environmental"].clone(),
        s["social"].clone(),
        s["governance"].clone(),
    ]
}

/// True when a record satisfies the Account schema of the contract.
fn valid_account(record: &Value) -> bool {
    let s = |k: &str| record.get(k).and_then(Value::as_str);
    s("accountId").is_some_and(is_valid_account_id)
        && s("accountName").is_some_and(|n| n.chars().count() <= 200)
        && s("status").is_some_and(|st| ["ACTIVE", "CLOSED", "SUSPENDED"].contains(&st))
        && s("updatedAt").is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
        && record
            .get("version")
            .and_then(Value::as_u64)
            .is_some_and(|v| v >= 1)
}

#[tokio::test]
async fn token_flow_grants_refuses_and_expires() {
    let sim = sim(SimConfig {
        token_ttl: Duration::from_millis(500),
        ..quiet(10)
    })
    .await;
    let http = Client::new();
    let resp = http
        .post(sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "esg-scorer"),
            ("client_secret", "scorer-secret"),
            ("scope", "esg.read"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "esg.read");
    assert_eq!(body["expires_in"], 1);
    let esg = body["access_token"].as_str().expect("token").to_owned();

    for (client, secret) in [("esg-scorer", "wrong"), ("nobody", "scorer-secret")] {
        let resp = http
            .post(sim.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", secret),
            ])
            .send()
            .await
            .expect("token");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"], "invalid_client");
    }
    let resp = http
        .post(sim.token_url())
        .form(&[("grant_type", "password"), ("client_id", "esg-scorer")])
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let url = format!("{}/v1/accounts/{}/esg-analysis", sim.url(), id(1));
    let resp = http.get(&url).send().await.expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no token");
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: Value = resp.json().await.expect("error body");
    assert!(body["error"].is_string() && body["requestId"].is_string());

    let accounts = token(&http, &sim, "esg-accounts", "accounts-secret").await;
    let resp = http
        .get(&url)
        .bearer_auth(&accounts)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "wrong scope");
    let resp = http
        .get(format!("{}/v1/accounts", sim.url()))
        .bearer_auth(&esg)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "wrong scope");
    let resp = http
        .get(&url)
        .bearer_auth("sim.1.2.3.4")
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "forged token");

    let resp = http.get(&url).bearer_auth(&esg).send().await.expect("call");
    assert_ne!(resp.status(), StatusCode::UNAUTHORIZED, "right scope");
    let esg = token(&http, &sim, "esg-scorer", "scorer-secret").await;
    let resp = http.get(&url).bearer_auth(&esg).send().await.expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(550)).await;
    let resp = http.get(&url).bearer_auth(&esg).send().await.expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "expired token");
    assert_eq!(sim.stats().token_requests, 6);
}

#[tokio::test]
async fn paging_covers_every_active_account_exactly_once() {
    let api = Api::new(
        sim(SimConfig {
            inactive_share: 0.1,
            ..quiet(2500)
        })
        .await,
    )
    .await;
    let (all, all_total) = api.list_all(&[("pageSize", "5000")]).await;
    assert_eq!(all_total, 2500);
    assert_eq!(all.len(), 2500);
    assert!(all.iter().all(valid_account));
    let expected: Vec<&str> = all
        .iter()
        .filter(|r| r["status"] == "ACTIVE")
        .map(|r| r["accountId"].as_str().expect("id"))
        .collect();
    assert!(expected.len() > 2100 && expected.len() < 2400);

    let (active, total) = api
        .list_all(&[("status", "ACTIVE"), ("pageSize", "333")])
        .await;
    let ids: Vec<&str> = active
        .iter()
        .map(|r| r["accountId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, expected, "every active account once, in id order");
    assert_eq!(total as usize, expected.len());
    assert!(api.sim.stats().account_pages >= 8);

    let since = all
        .iter()
        .map(|r| r["updatedAt"].as_str().expect("updatedAt").to_owned())
        .max()
        .expect("some accounts");
    let (recent, _) = api.list_all(&[("updatedSince", since.as_str())]).await;
    assert!(!recent.is_empty());
    assert!(recent
        .iter()
        .all(|r| r["updatedAt"].as_str().is_some_and(|t| t >= since.as_str())));
}

#[tokio::test]
async fn page_tokens_expire_and_garbage_is_refused() {
    let api = Api::new(
        sim(SimConfig {
            page_token_ttl: Duration::from_millis(500),
            ..quiet(100)
        })
        .await,
    )
    .await;
    let first: Value = api
        .page(&[("pageSize", "10")])
        .await
        .json()
        .await
        .expect("page");
    let t1 = first["nextPageToken"].as_str().expect("token").to_owned();
    let resp = api.page(&[("pageSize", "10"), ("pageToken", &t1)]).await;
    assert_eq!(resp.status(), StatusCode::OK, "fresh token works");

    api.sim.expire_page_tokens();
    let resp = api.page(&[("pageSize", "10"), ("pageToken", &t1)]).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    let body: Value = resp.json().await.expect("error body");
    assert!(body["error"].is_string());

    let fresh: Value = api
        .page(&[("pageSize", "10")])
        .await
        .json()
        .await
        .expect("page");
    let t2 = fresh["nextPageToken"].as_str().expect("token").to_owned();
    assert_eq!(
        api.page(&[("pageToken", &t2)]).await.status(),
        StatusCode::OK,
        "tokens issued after the expiry work"
    );
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(
        api.page(&[("pageToken", &t2)]).await.status(),
        StatusCode::GONE,
        "expired by age"
    );
    for garbage in ["abc", "zz", "7031"] {
        assert_eq!(
            api.page(&[("pageToken", garbage)]).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
    let active: Value = api
        .page(&[("pageSize", "10"), ("status", "ACTIVE")])
        .await
        .json()
        .await
        .expect("page");
    let t3 = active["nextPageToken"].as_str().expect("token").to_owned();
    assert_eq!(
        api.page(&[("pageToken", &t3), ("status", "CLOSED")])
            .await
            .status(),
        StatusCode::BAD_REQUEST,
        "a token does not change its filter"
    );
}

#[tokio::test]
async fn bad_listing_parameters_answer_400() {
    let api = Api::new(sim(quiet(10)).await).await;
    for q in [
        ("pageSize", "0"),
        ("pageSize", "5001"),
        ("pageSize", "ten"),
        ("pageSize", "-1"),
        ("status", "active"),
        ("updatedSince", "yesterday"),
    ] {
        let resp = api.page(&[q]).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q:?}");
        let body: Value = resp.json().await.expect("error body");
        assert!(body["error"].is_string());
    }
    assert_eq!(
        api.page(&[("pageSize", "5000")]).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        api.page(&[("pageSize", "1")]).await.status(),
        StatusCode::OK
    );
    let stats = api.sim.stats();
    assert_eq!((stats.account_errors, stats.account_pages), (6, 2));
}

#[tokio::test]
async fn malformed_and_duplicate_records_at_the_configured_rates() {
    let cfg = SimConfig {
        malformed_record_rate: 0.05,
        duplicate_rate: 0.05,
        inactive_share: 0.0,
        ..quiet(2000)
    };
    let api = Api::new(sim(cfg.clone()).await).await;
    let clean = Api::new(sim(quiet(2000)).await).await;
    let (records, total) = api.list_all(&[("pageSize", "250")]).await;
    assert_eq!(total, 2000, "totalCount counts accounts, not extra records");
    let (valid, malformed): (Vec<&Value>, Vec<&Value>) =
        records.iter().partition(|r| valid_account(r));
    assert!(
        (60..=140).contains(&malformed.len()),
        "{} malformed",
        malformed.len()
    );

    let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in &valid {
        by_id
            .entry(r["accountId"].as_str().expect("id"))
            .or_default()
            .push(r["version"].as_u64().expect("version"));
    }
    assert_eq!(by_id.len(), 2000, "every account listed");
    let duplicated = by_id.values().filter(|v| v.len() == 2).count();
    assert!((60..=140).contains(&duplicated), "{duplicated} duplicated");
    assert!(by_id.values().all(|v| v.len() <= 2));
    let older_later = by_id
        .values()
        .filter(|v| v.len() == 2 && v[0] > v[1])
        .count();
    assert!(
        older_later > 0,
        "some older copies come after the current one"
    );

    // Highest version wins and equals the account system's current record.
    let (truth, _) = clean.list_all(&[]).await;
    for r in truth {
        let id = r["accountId"].as_str().expect("id");
        let best = by_id[id].iter().max().copied();
        assert_eq!(best, r["version"].as_u64(), "{id}");
    }
}

#[tokio::test]
async fn past_the_quota_answers_429_with_retry_after() {
    let api = Api::new(
        sim(SimConfig {
            rate_limit_per_second: Some(1),
            burst: 3,
            ..quiet(200)
        })
        .await,
    )
    .await;
    let ids: Vec<String> = (1..=100).map(id).collect();
    let resp = api.batch(&serde_json::json!({ "accountIds": ids })).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a batch of 100 is one request"
    );
    let first = api.analysis(&id(1)).await;
    assert_eq!(first.status(), StatusCode::OK);
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-request-id",
        "etag",
    ] {
        assert!(first.headers().contains_key(h), "{h}");
    }
    assert_eq!(first.headers()["x-ratelimit-limit"], "1");
    assert_eq!(api.analysis(&id(2)).await.status(), StatusCode::OK);
    let limited = api.analysis(&id(3)).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("delta-seconds");
    assert!(retry_after >= 1);
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    let body: Value = limited.json().await.expect("error body");
    assert!(body["error"].is_string());
    let stats = api.sim.stats();
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.esg_by_status.get(&429), Some(&1));
    assert_eq!(stats.esg_by_status.get(&200), Some(&3));
    assert_eq!(
        api.sim.calls_for(&id(3)),
        2,
        "batch item plus the refused call"
    );
}

#[tokio::test]
async fn same_seed_same_answers_and_changes_change_scores() {
    let a = Api::new(sim(quiet(50)).await).await;
    let b = Api::new(sim(quiet(50)).await).await;
    let c = Api::new(
        sim(SimConfig {
            seed: 43,
            ..quiet(50)
        })
        .await,
    )
    .await;
    let (la, _) = a.list_all(&[]).await;
    let (lb, _) = b.list_all(&[]).await;
    let (lc, _) = c.list_all(&[]).await;
    assert_eq!(la, lb);
    assert_ne!(la, lc);
    for i in 1..=20 {
        let text_a = a.analysis(&id(i)).await.text().await.expect("body");
        let text_b = b.analysis(&id(i)).await.text().await.expect("body");
        assert_eq!(text_a, text_b, "byte-identical answers");
    }
    let before = a.analysis_json(&id(5)).await;
    assert_ne!(scores(&before), scores(&c.analysis_json(&id(5)).await));

    a.sim.touch(&id(5));
    let touched = a.analysis_json(&id(5)).await;
    for (x, y) in scores(&before).iter().zip(scores(&touched).iter()) {
        assert_ne!(x, y, "new holdings version, new scores");
    }
    let (after, _) = a.list_all(&[]).await;
    assert_eq!(
        after[4]["version"].as_u64(),
        la[4]["version"].as_u64().map(|v| v + 1)
    );
    a.sim.set_status(&id(6), "SUSPENDED");
    let six = a.analysis_json(&id(6)).await;
    assert_eq!(
        scores(&six),
        scores(&b.analysis_json(&id(6)).await),
        "status is not holdings"
    );

    a.sim.rerate();
    let rerated = a.analysis_json(&id(5)).await;
    for (x, y) in scores(&touched).iter().zip(scores(&rerated).iter()) {
        assert_ne!(x, y, "re-rating changes every score");
    }
    assert_eq!(before["analysisDate"], "2026-11-23");
    let dated: Value = a
        .http
        .get(format!(
            "{}/v1/accounts/{}/esg-analysis?asOf=2026-01-02",
            a.sim.url(),
            id(1)
        ))
        .bearer_auth(&a.esg_token)
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(dated["analysisDate"], "2026-01-02");
}

/// Calls every account once, 16 at a time; returns the status and body per account.
async fn call_all(api: &Api, n: u64) -> BTreeMap<u64, (u16, String)> {
    let mut set = tokio::task::JoinSet::new();
    let mut out = BTreeMap::new();
    for i in 1..=n {
        if set.len() >= 16 {
            let (i, status, body) = set.join_next().await.expect("task").expect("join");
            out.insert(i, (status, body));
        }
        let http = api.http.clone();
        let url = format!("{}/v1/accounts/{}/esg-analysis", api.sim.url(), id(i));
        let token = api.esg_token.clone();
        set.spawn(async move {
            let resp = http.get(url).bearer_auth(token).send().await.expect("call");
            let status = resp.status().as_u16();
            (i, status, resp.text().await.expect("body"))
        });
    }
    while let Some(done) = set.join_next().await {
        let (i, status, body) = done.expect("join");
        out.insert(i, (status, body));
    }
    out
}

#[tokio::test]
async fn faults_come_at_the_configured_rates_and_deterministically() {
    let cfg = SimConfig {
        permanent_error_rate: 0.1,
        partial_rate: 0.1,
        out_of_contract_rate: 0.05,
        transient_error_rate: 0.1,
        ..quiet(2000)
    };
    let api = Api::new(sim(cfg.clone()).await).await;
    let answers = call_all(&api, 2000).await;
    let count = |f: &dyn Fn(u16, &str) -> bool| answers.values().filter(|(s, b)| f(*s, b)).count();
    let permanent = count(&|s, _| s == 404 || s == 422);
    let transient = count(&|s, _| (500..=504).contains(&s));
    let ok = count(&|s, _| s == 200);
    let broken = count(&|s, b| {
        s == 200
            && match serde_json::from_str::<Value>(b) {
                Err(_) => true,
                Ok(v) => {
                    v.get("scores").is_none()
                        || b.contains("CLIMATE")
                        || scores(&v)
                            .iter()
                            .any(|x| x.as_f64().is_some_and(|x| x > 100.0))
                }
            }
    });
    let partial = count(&|s, b| {
        s == 200
            && serde_json::from_str::<Value>(b).is_ok_and(|v| {
                v.get("scores").is_some()
                    && (scores(&v).iter().any(Value::is_null) || v["primaryFocus"].is_null())
            })
    });
    // Permanent faults answer before transient ones, so the others are shares of the rest.
    assert!((150..=250).contains(&permanent), "permanent {permanent}");
    assert!((130..=230).contains(&transient), "transient {transient}");
    assert!((130..=230).contains(&partial), "partial {partial}");
    assert!((55..=125).contains(&broken), "out of contract {broken}");
    assert_eq!(permanent + transient + ok, 2000);
    let stats = api.sim.stats();
    assert_eq!(stats.esg_requests, 2000);
    assert!(stats.max_concurrent_esg_requests >= 1);

    // Same seed, same outcomes, whatever the concurrency.
    let again = Api::new(sim(cfg.clone()).await).await;
    for i in (1..=2000).step_by(97) {
        let resp = again.analysis(&id(i)).await;
        assert_eq!(resp.status().as_u16(), answers[&i].0, "{}", id(i));
    }
    // A second call of a transient failure usually succeeds; a permanent one never does.
    let (mut recovered, mut still_permanent) = (0, 0);
    for (i, (status, _)) in &answers {
        let second = api.analysis(&id(*i)).await.status().as_u16();
        match status {
            500..=504 => recovered += u32::from(second == 200 || second == 304),
            404 | 422 => still_permanent += u32::from(second == *status),
            _ => {}
        }
    }
    assert!(
        recovered as usize > transient * 3 / 4,
        "{recovered} of {transient}"
    );
    assert_eq!(still_permanent as usize, permanent);
    assert_eq!(api.sim.calls_for(&id(1)), 2);
    assert_eq!(api.sim.accounts_called_at_least(2).len(), 2000);
    assert!(api.sim.accounts_called_at_least(3).is_empty());
}

#[tokio::test]
async fn stalls_make_calls_time_out() {
    let api = Api::new(
        sim(SimConfig {
            timeout_rate: 0.5,
            stall: Duration::from_secs(5),
            ..quiet(40)
        })
        .await,
    )
    .await;
    // All at once, so the stalled calls time out together.
    let mut set = tokio::task::JoinSet::new();
    for i in 1..=40 {
        let request = api
            .http
            .get(format!(
                "{}/v1/accounts/{}/esg-analysis",
                api.sim.url(),
                id(i)
            ))
            .bearer_auth(&api.esg_token)
            .timeout(Duration::from_millis(400));
        set.spawn(async move { request.send().await.map(|r| r.status()) });
    }
    let mut timed_out = 0;
    while let Some(result) = set.join_next().await {
        match result.expect("join") {
            Ok(status) => assert_eq!(status, StatusCode::OK),
            Err(e) => {
                assert!(e.is_timeout(), "{e}");
                timed_out += 1;
            }
        }
    }
    assert!((10..=30).contains(&timed_out), "{timed_out} of 40 stalled");
}

#[tokio::test]
async fn partial_answers_have_nulls() {
    let api = Api::new(
        sim(SimConfig {
            partial_rate: 1.0,
            ..quiet(60)
        })
        .await,
    )
    .await;
    let (mut null_pillar, mut null_overall, mut null_focus) = (0, 0, 0);
    for i in 1..=60 {
        let v = api.analysis_json(&id(i)).await;
        let s = scores(&v);
        null_overall += u32::from(s[0].is_null());
        null_pillar += u32::from(s[1..].iter().any(Value::is_null));
        null_focus += u32::from(v["primaryFocus"].is_null());
        assert!(s.iter().any(Value::is_null) || v["primaryFocus"].is_null());
    }
    assert!(null_pillar > 0 && null_overall > 0 && null_focus > 0);
}

#[tokio::test]
async fn batch_answers_each_account_and_validates_the_request() {
    let api = Api::new(
        sim(SimConfig {
            permanent_error_rate: 0.3,
            ..quiet(20)
        })
        .await,
    )
    .await;
    let ids: Vec<String> = (1..=20)
        .map(id)
        .chain(["ACC99999999".into(), "bad id".into()])
        .collect();
    let resp = api
        .batch(&serde_json::json!({ "accountIds": ids, "asOf": "2026-03-04" }))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.expect("json");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 22);
    let mut statuses = BTreeSet::new();
    for (r, id) in results.iter().zip(&ids) {
        assert_eq!(r["accountId"], id.as_str());
        let status = r["status"].as_u64().expect("status");
        statuses.insert(status);
        if status == 200 {
            assert_eq!(r["analysis"]["analysisDate"], "2026-03-04");
            assert!(r["error"].is_null());
        } else {
            assert!(r["analysis"].is_null());
            assert!(r["error"]["error"].is_string());
        }
    }
    assert!(statuses.contains(&200) && statuses.contains(&404) && statuses.contains(&422));
    assert_eq!(results[20]["status"], 404);
    assert_eq!(results[21]["status"], 422);
    let single = api
        .analysis(&id(results
            .iter()
            .position(|r| r["status"] == 200)
            .expect("one ok") as u64
            + 1))
        .await;
    assert_eq!(single.status(), StatusCode::OK);

    let too_many: Vec<String> = (1..=101).map(id).collect();
    for bad in [
        serde_json::json!({ "accountIds": [] }),
        serde_json::json!({ "accountIds": too_many }),
        serde_json::json!({ "ids": ["ACC00000001"] }),
        serde_json::json!({ "accountIds": ["ACC00000001"], "asOf": "March" }),
    ] {
        let resp = api.batch(&bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let stats = api.sim.stats();
    assert_eq!(stats.batch_requests, 5);
    assert_eq!(api.sim.calls_for(&id(1)), 1, "one call per batch item");
}

#[tokio::test]
async fn if_none_match_with_the_etag_answers_304() {
    let api = Api::new(sim(quiet(10)).await).await;
    let first = api.analysis(&id(3)).await;
    let etag = first.headers()["etag"].to_str().expect("ascii").to_owned();
    let resp = api
        .http
        .get(format!(
            "{}/v1/accounts/{}/esg-analysis",
            api.sim.url(),
            id(3)
        ))
        .bearer_auth(&api.esg_token)
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()["etag"], etag.as_str());
    assert!(resp.bytes().await.expect("body").is_empty());
    api.sim.touch(&id(3));
    let resp = api
        .http
        .get(format!(
            "{}/v1/accounts/{}/esg-analysis",
            api.sim.url(),
            id(3)
        ))
        .bearer_auth(&api.esg_token)
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::OK, "new holdings, new analysis");
    assert_ne!(resp.headers()["etag"], etag.as_str());
}

#[tokio::test]
async fn ids_dates_and_health_follow_the_contract() {
    let api = Api::new(sim(quiet(10)).await).await;
    assert_eq!(
        api.analysis("ACC00000011").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.analysis("UNKNOWN-1").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.analysis("-bad").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.analysis(&"A".repeat(65)).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.analysis("a%20b").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let resp = api
        .http
        .get(format!(
            "{}/v1/accounts/{}/esg-analysis?asOf=2026-13-01",
            api.sim.url(),
            id(1)
        ))
        .bearer_auth(&api.esg_token)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let health = api
        .http
        .get(format!("{}/v1/health", api.sim.url()))
        .send()
        .await
        .expect("call");
    assert_eq!(health.status(), StatusCode::OK);
    let text = api.analysis(&id(1)).await.text().await.expect("body");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert!(v["coverage"].is_number() && v["methodologyVersion"].is_string());
    assert!(["ENVIRONMENTAL", "SOCIAL", "GOVERNANCE"]
        .contains(&v["primaryFocus"]["pillar"].as_str().expect("pillar")));
}

#[tokio::test]
async fn admin_endpoints_mirror_the_handle() {
    let api = Api::new(
        sim(SimConfig {
            inactive_share: 0.0,
            ..quiet(30)
        })
        .await,
    )
    .await;
    let (before, _) = api.list_all(&[]).await;

    let resp = api.admin_post(&format!("accounts/{}/touch", id(2))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let touched: Value = resp.json().await.expect("json");
    assert_eq!(
        touched["version"].as_u64(),
        before[1]["version"].as_u64().map(|v| v + 1)
    );
    let resp = api
        .admin_post(&format!("accounts/{}/status?value=CLOSED", id(3)))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        api.admin_post(&format!("accounts/{}/status?value=GONE", id(3)))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.admin_post("accounts/ACC00000099/touch").await.status(),
        StatusCode::NOT_FOUND
    );
    let resp = api.admin_post("accounts:add?count=5").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let added: Value = resp.json().await.expect("json");
    assert_eq!(added["last"], id(35).as_str());

    let (active, total) = api.list_all(&[("status", "ACTIVE")]).await;
    assert_eq!(total, 34);
    assert!(active.iter().all(|r| r["accountId"] != id(3).as_str()));
    assert!(active.iter().any(|r| r["accountId"] == id(35).as_str()));
    let (recent, _) = api
        .list_all(&[("updatedSince", touched["updatedAt"].as_str().expect("t"))])
        .await;
    let recent_ids: BTreeSet<&str> = recent
        .iter()
        .filter_map(|r| r["accountId"].as_str())
        .collect();
    assert!(recent_ids.contains(id(2).as_str()) && recent_ids.contains(id(3).as_str()));
    assert!(
        recent_ids.contains(id(31).as_str()),
        "added after the touch"
    );

    let s1 = api.analysis_json(&id(1)).await;
    let s1b = api.analysis_json(&id(1)).await;
    assert_eq!(api.admin_post("rerate").await.status(), StatusCode::OK);
    assert_ne!(scores(&s1), scores(&api.analysis_json(&id(1)).await));
    assert_eq!(api.admin_get(&format!("calls/{}", id(1))).await["calls"], 3);
    assert_eq!(
        api.admin_get("calls?min=3").await,
        serde_json::json!([id(1)])
    );
    assert_eq!(scores(&s1), scores(&s1b));

    let stats: SimStats = serde_json::from_value(api.admin_get("stats").await).expect("stats");
    assert_eq!(stats.esg_requests, 3);
    assert_eq!(stats, api.sim.stats());
    assert_eq!(
        api.admin_post("reset-calls").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.sim.calls_for(&id(1)), 0);

    let page: Value = api
        .page(&[("pageSize", "5")])
        .await
        .json()
        .await
        .expect("page");
    let t = page["nextPageToken"].as_str().expect("token").to_owned();
    assert_eq!(
        api.admin_post("expire-page-tokens").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.page(&[("pageToken", &t)]).await.status(),
        StatusCode::GONE
    );

    let resp = api
        .http
        .post(format!("{}/_sim/config", api.sim.url()))
        .json(&serde_json::json!({ "transient_error_rate": 1.0 }))
        .send()
        .await
        .expect("config");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(api.analysis(&id(1)).await.status().is_server_error());
    let resp = api
        .http
        .post(format!("{}/_sim/config", api.sim.url()))
        .json(&serde_json::json!({ "transient_error_rate": 3.0 }))
        .send()
        .await
        .expect("config");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    api.sim.update(|c| c.transient_error_rate = 0.0);
    assert_eq!(api.analysis(&id(1)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn hostile_names_appear_in_the_listing() {
    let api = Api::new(sim(quiet(1500)).await).await;
    let (records, _) = api.list_all(&[]).await;
    let names: Vec<&str> = records
        .iter()
        .filter_map(|r| r["accountName"].as_str())
        .collect();
    assert_eq!(names.len(), 1500);
    assert!(names.iter().all(|n| n.chars().count() <= 200));
    assert!(names.iter().any(|n| n.contains(',')));
    assert!(names.iter().any(|n| n.contains('"')));
    assert!(names.iter().any(|n| n.contains('\n')));
    assert!(names.iter().any(|n| n.starts_with(['=', '+', '-', '@'])));
    assert!(names.iter().any(|n| !n.is_ascii()));
    let hostile = names.iter().filter(|n| crate::names::is_hostile(n)).count();
    assert!((150..=300).contains(&hostile), "{hostile} hostile of 1500");
}

#[tokio::test]
async fn listing_page_faults_answer_429_503_or_500() {
    let api = Api::new(
        sim(SimConfig {
            accounts_transient_error_rate: 0.3,
            ..quiet(10)
        })
        .await,
    )
    .await;
    let mut seen: BTreeMap<u16, u32> = BTreeMap::new();
    for _ in 0..100u32 {
        let resp = api.page(&[]).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        *seen.entry(resp.status().as_u16()).or_insert(0) += 1;
    }
    assert!(
        seen.contains_key(&429) && seen.contains_key(&503),
        "{seen:?}"
    );
    let failed: u32 = [429, 500, 503].iter().filter_map(|s| seen.get(s)).sum();
    assert!((15..=45).contains(&failed), "{seen:?}");
    assert_eq!(failed + seen.get(&200).unwrap_or(&0), 100, "{seen:?}");
    assert_eq!(api.sim.stats().account_errors, u64::from(failed));
}

#[tokio::test]
async fn latency_and_concurrency_are_measured_and_shutdown_stops_the_server() {
    let api = Api::new(
        sim(SimConfig {
            latency: Duration::from_millis(100),
            ..quiet(10)
        })
        .await,
    )
    .await;
    let started = Instant::now();
    let calls: Vec<_> = (1..=8).map(|i| api.analysis_owned(i)).collect();
    let mut set = tokio::task::JoinSet::new();
    for c in calls {
        set.spawn(c);
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.expect("join"), 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(api.sim.stats().max_concurrent_esg_requests >= 2);

    api.sim.shutdown();
    tokio::time::timeout(Duration::from_secs(5), api.sim.stopped())
        .await
        .expect("stops promptly");
    assert!(api
        .http
        .get(format!("{}/v1/health", api.sim.url()))
        .send()
        .await
        .is_err());
}

impl Api {
    fn analysis_owned(&self, i: u64) -> impl std::future::Future<Output = u16> + Send + 'static {
        let http = self.http.clone();
        let url = format!("{}/v1/accounts/{}/esg-analysis", self.sim.url(), id(i));
        let token = self.esg_token.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        }
    }
}

#[tokio::test]
async fn a_million_accounts_cost_no_memory_and_page_quickly() {
    let api = Api::new(
        sim(SimConfig {
            accounts: 1_000_000,
            track_calls: false,
            ..quiet(0)
        })
        .await,
    )
    .await;
    let started = Instant::now();
    let page: Value = api
        .page(&[("status", "ACTIVE"), ("pageSize", "5000")])
        .await
        .json()
        .await
        .expect("page");
    let total = page["totalCount"].as_u64().expect("total");
    assert!(total > 930_000 && total < 970_000, "{total}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(5000));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(api.analysis(&id(999_999)).await.status(), StatusCode::OK);
    assert_eq!(api.sim.calls_for(&id(999_999)), 0, "not tracked");
    assert!(api.sim.accounts_called_at_least(1).is_empty());
}

#[tokio::test]
async fn batch_transient_faults_fail_items_or_the_whole_batch() {
    let api = Api::new(
        sim(SimConfig {
            transient_error_rate: 1.0,
            ..quiet(40)
        })
        .await,
    )
    .await;
    let (mut whole, mut items) = (0, 0);
    for first in 1..=20 {
        let ids: Vec<String> = (first..first + 5).map(id).collect();
        let resp = api.batch(&serde_json::json!({ "accountIds": ids })).await;
        match resp.status().as_u16() {
            500 | 503 => {
                let body: Value = resp.json().await.expect("error body");
                assert!(body["error"].is_string() && body["requestId"].is_string());
                whole += 1;
            }
            200 => {
                let body: Value = resp.json().await.expect("json");
                for r in body["results"].as_array().expect("results") {
                    let status = r["status"].as_u64().expect("status");
                    assert!(status == 500 || status == 503, "{r}");
                    assert!(r["analysis"].is_null() && r["error"]["error"].is_string());
                }
                items += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        whole > 0 && items > 0,
        "{whole} whole-batch failures, {items} item failures"
    );
    assert_eq!(
        api.sim.calls_for(&id(5)),
        5,
        "every item counts, failed batch or not"
    );
}

/// Sets fault settings through `POST /_sim/config`.
async fn configure(api: &Api, patch: Value) {
    let resp = api
        .http
        .post(format!("{}/_sim/config", api.sim.url()))
        .json(&patch)
        .send()
        .await
        .expect("config");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{patch}");
}

/// A page body as JSON, with the bytes that are not UTF-8 and the lone surrogates that
/// `serde_json` refuses made readable.
fn readable_page(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body).replace(r"\ud800", "?");
    serde_json::from_str(&text).expect("page JSON but for the undecodable names")
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[tokio::test]
async fn undecodable_and_wrong_type_records_appear_at_their_rates() {
    let api = Api::new(
        sim(SimConfig {
            inactive_share: 0.0,
            invalid_utf8_record_rate: 0.03,
            lone_surrogate_record_rate: 0.03,
            wrong_type_record_rate: 0.03,
            ..quiet(2000)
        })
        .await,
    )
    .await;
    let (mut not_utf8, mut surrogates, mut pages_not_utf8) = (0, 0, 0);
    let mut records = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut q = vec![("pageSize", "250".to_owned())];
        if let Some(t) = &next {
            q.push(("pageToken", t.clone()));
        }
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = api.page(&q).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.bytes().await.expect("body");
        not_utf8 += occurrences(&body, b"\"Caf\xe9 de Paris Holdings ");
        surrogates += occurrences(&body, br#""Fund \ud800 "#);
        if std::str::from_utf8(&body).is_err() {
            pages_not_utf8 += 1;
            assert!(
                serde_json::from_slice::<Value>(&body).is_err(),
                "serde_json refuses the whole page"
            );
        }
        let page = readable_page(&body);
        records.extend(page["items"].as_array().expect("items").iter().cloned());
        match &page["nextPageToken"] {
            Value::String(t) => next = Some(t.clone()),
            _ => break,
        }
    }
    for (n, what) in [(not_utf8, "not UTF-8"), (surrogates, "lone surrogate")] {
        assert!((25..=110).contains(&n), "{n} records with a name {what}");
    }
    assert!(pages_not_utf8 > 0);
    let wrong_type = records
        .iter()
        .filter(|r| {
            !r["accountId"].is_string()
                || !r["accountName"].is_string()
                || !r["updatedAt"].is_string()
                || r["version"].is_string()
        })
        .count();
    assert!(
        (25..=110).contains(&wrong_type),
        "{wrong_type} of the wrong type"
    );
    // The undecodable names were made readable above; the accounts themselves are untouched.
    let accounts: Vec<&str> = records
        .iter()
        .filter(|r| valid_account(r))
        .filter_map(|r| r["accountId"].as_str())
        .filter(|id| !id.starts_with("MAL"))
        .collect();
    assert_eq!(
        accounts.iter().collect::<BTreeSet<_>>().len(),
        2000,
        "every account listed"
    );
    assert_eq!(accounts.len(), 2000, "and once");
    assert_eq!(
        records.len(),
        2000 + not_utf8 + surrogates + wrong_type,
        "nothing else added"
    );
}

#[tokio::test]
async fn page_tokens_cycle_back_to_page_two_when_asked() {
    let api = Api::new(sim(quiet(50)).await).await;
    configure(&api, serde_json::json!({ "page_token_cycle_after": 3 })).await;
    let page = |token: Option<String>| {
        let api = &api;
        async move {
            let mut q = vec![("pageSize", "10".to_owned())];
            q.extend(token.map(|t| ("pageToken", t)));
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let resp = api.page(&q).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = resp.json().await.expect("page");
            let next = body["nextPageToken"].as_str().map(str::to_owned);
            (body["items"].clone(), next)
        }
    };
    let (_, t2) = page(None).await;
    let (items2, t3) = page(t2.clone()).await;
    let (items3, again) = page(t3.clone()).await;
    assert_ne!(items2, items3);
    assert!(t2.is_some() && t3.is_some() && t2 != t3);
    assert_eq!(again, t2, "page 3 hands out the token of page 2 again");
    let (items2_again, t3_again) = page(again).await;
    assert_eq!((items2_again, t3_again), (items2, t3), "and round it goes");

    configure(&api, serde_json::json!({ "page_token_cycle_after": 0 })).await;
    let (all, total) = api.list_all(&[("pageSize", "10")]).await;
    assert_eq!((all.len(), total), (50, 50), "off again, the listing ends");
    let refused = api
        .http
        .post(format!("{}/_sim/config", api.sim.url()))
        .json(&serde_json::json!({ "page_token_cycle_after": 1 }))
        .send()
        .await
        .expect("config");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_token_delay_holds_the_token_answer() {
    let api = Api::new(sim(quiet(5)).await).await;
    let ask = |http: Client| {
        let url = api.sim.token_url();
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "esg-accounts"),
                    ("client_secret", "accounts-secret"),
                ])
                .send()
                .await
        }
    };
    configure(&api, serde_json::json!({ "token_delay": "1h" })).await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let err = ask(impatient).await.expect_err("never answers in time");
    assert!(err.is_timeout(), "{err}");
    // Tokens already issued still work: only the token endpoint is stuck.
    assert_eq!(api.page(&[]).await.status(), StatusCode::OK);

    configure(&api, serde_json::json!({ "token_delay": "200ms" })).await;
    let started = Instant::now();
    let resp = ask(Client::new()).await.expect("answered");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));

    configure(&api, serde_json::json!({ "token_delay": "0s" })).await;
    assert_eq!(
        ask(Client::new()).await.expect("answered").status(),
        StatusCode::OK
    );
    assert_eq!(api.sim.stats().token_requests, 2 + 3);
}

/// Statuses of one single call per account `1..=n`, in order.
async fn statuses(api: &Api, ids: impl IntoIterator<Item = u64>) -> Vec<(u64, u16)> {
    let mut out = Vec::new();
    for i in ids {
        out.push((i, api.analysis(&id(i)).await.status().as_u16()));
    }
    out
}

#[tokio::test]
async fn first_attempts_answer_429_once_by_id_and_the_retry_is_answered() {
    let cfg = SimConfig {
        rate_limited_first_attempt_rate: 0.3,
        fault_retry_after: Duration::from_millis(2500),
        rate_limit_per_second: Some(10_000),
        burst: 10_000,
        ..quiet(200)
    };
    let api = Api::new(sim(cfg.clone()).await).await;
    let mut refused = Vec::new();
    for i in 1..=200 {
        let resp = api.analysis(&id(i)).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(resp.headers()["retry-after"], "3", "2.5 s rounded up");
            assert_eq!(resp.headers()["x-ratelimit-limit"], "10000");
            assert!(resp.headers().contains_key("x-ratelimit-remaining"));
            assert!(resp.headers().contains_key("x-request-id"));
            let body: Value = resp.json().await.expect("error body");
            assert_eq!(body["error"], "RATE_LIMITED", "the quota's body");
            assert!(body["requestId"].is_string());
            refused.push(i);
        } else {
            assert_eq!(resp.status(), StatusCode::OK, "{}", id(i));
        }
    }
    assert!((35..=85).contains(&refused.len()), "{}", refused.len());
    for (i, status) in statuses(&api, 1..=200).await {
        assert_eq!(status, 200, "{} retried or called again", id(i));
    }
    let stats = api.sim.stats();
    assert_eq!(stats.fault_rate_limited, refused.len() as u64);
    assert_eq!(stats.rate_limited, 0, "the quota refused nothing");
    assert_eq!(stats.esg_by_status.get(&429), Some(&(refused.len() as u64)));
    assert_eq!(
        api.sim.calls_for(&id(refused[0])),
        2,
        "the 429 counts as a call"
    );

    // The same accounts every run, whether calls are counted or not.
    for track_calls in [true, false] {
        let again = Api::new(
            sim(SimConfig {
                track_calls,
                ..cfg.clone()
            })
            .await,
        )
        .await;
        let again_refused: Vec<u64> = statuses(&again, 1..=200)
            .await
            .into_iter()
            .filter(|(_, s)| *s == 429)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(again_refused, refused, "track_calls = {track_calls}");
        assert!(statuses(&again, refused.iter().copied())
            .await
            .iter()
            .all(|(_, s)| *s == 200));
    }
}

#[tokio::test]
async fn a_first_attempt_429_leaves_the_other_per_call_faults_as_they_were() {
    let plain = SimConfig {
        transient_error_rate: 0.3,
        ..quiet(300)
    };
    let with_429 = Api::new(
        sim(SimConfig {
            rate_limited_first_attempt_rate: 0.5,
            ..plain.clone()
        })
        .await,
    )
    .await;
    let without = Api::new(sim(plain).await).await;
    let mut refused = 0;
    for i in 1..=300 {
        let expected = without.analysis(&id(i)).await.status().as_u16();
        let mut got = with_429.analysis(&id(i)).await.status().as_u16();
        if got == 429 {
            refused += 1;
            got = with_429.analysis(&id(i)).await.status().as_u16();
        }
        assert_eq!(
            got,
            expected,
            "{}: the retry is the account's call 0",
            id(i)
        );
    }
    assert!(refused > 100, "{refused}");
}

#[tokio::test]
async fn a_batch_draws_its_first_attempt_429_by_its_first_account() {
    for track_calls in [true, false] {
        let api = Api::new(
            sim(SimConfig {
                rate_limited_first_attempt_rate: 1.0,
                fault_retry_after: Duration::ZERO,
                track_calls,
                ..quiet(20)
            })
            .await,
        )
        .await;
        let ids: Vec<String> = (1..=5).map(id).collect();
        let body = serde_json::json!({ "accountIds": ids });
        let resp = api.batch(&body).await;
        assert_eq!(
            resp.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{track_calls}"
        );
        assert_eq!(resp.headers()["retry-after"], "1", "at least 1 s");
        assert!(
            !resp.headers().contains_key("x-ratelimit-limit"),
            "no quota, no quota headers"
        );
        let error: Value = resp.json().await.expect("error body");
        assert_eq!(error["error"], "RATE_LIMITED");
        assert_eq!(api.sim.calls_for(&id(1)), 0, "nothing of it is a call");
        let resp = api.batch(&body).await;
        assert_eq!(resp.status(), StatusCode::OK, "the retry is answered");
        let answered: Value = resp.json().await.expect("json");
        let results = answered["results"].as_array().expect("results");
        assert!(results.iter().all(|r| r["status"] == 200), "{answered}");
        let expected_calls = u32::from(track_calls);
        assert_eq!(api.sim.calls_for(&id(1)), expected_calls);
        // Accounts answered in a batch have had their first attempt.
        for i in 1..=5 {
            assert_eq!(api.analysis(&id(i)).await.status(), StatusCode::OK, "{i}");
        }
        // Another batch led by a fresh account, and a fresh single call, draw it.
        let fresh = serde_json::json!({ "accountIds": [id(6), id(1)] });
        assert_eq!(
            api.batch(&fresh).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            api.analysis(&id(7)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let stats = api.sim.stats();
        assert_eq!(stats.fault_rate_limited, 3);
        assert_eq!(stats.rate_limited, 0);
    }
}

#[tokio::test]
async fn a_storm_answers_429_to_every_esg_request_and_consumes_nothing() {
    let api = Api::new(
        sim(SimConfig {
            rate_limit_per_second: Some(1),
            burst: 2,
            ..quiet(10)
        })
        .await,
    )
    .await;
    assert_eq!(
        api.admin_post("storm?seconds=600").await.status(),
        StatusCode::NO_CONTENT
    );
    for _ in 0..5 {
        let resp = api.analysis(&id(1)).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert!(!resp.headers().contains_key("x-ratelimit-remaining"));
        let body: Value = resp.json().await.expect("error body");
        assert_eq!(body["error"], "RATE_LIMITED");
    }
    let resp = api
        .batch(&serde_json::json!({ "accountIds": [id(1), id(2)] }))
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    // Not the health check, the token endpoint or the account system.
    let health = api
        .http
        .get(format!("{}/v1/health", api.sim.url()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    token(&api.http, &api.sim, "esg-scorer", "scorer-secret").await;
    assert_eq!(api.page(&[]).await.status(), StatusCode::OK);
    assert_eq!(api.sim.calls_for(&id(1)), 0, "storm 429s are no calls");

    assert_eq!(
        api.admin_post("storm?seconds=0").await.status(),
        StatusCode::NO_CONTENT
    );
    // The burst of 2 is intact: the storm took nothing from the quota.
    assert_eq!(api.analysis(&id(1)).await.status(), StatusCode::OK);
    assert_eq!(api.analysis(&id(2)).await.status(), StatusCode::OK);
    let stats = api.sim.stats();
    assert_eq!(stats.storm_rate_limited, 6);
    assert_eq!(stats.rate_limited, 0);
    assert_eq!(stats.fault_rate_limited, 0);
    assert_eq!(stats.esg_requests, 8, "storm 429s are requests served");

    for bad in [
        "storm?seconds=3601",
        "storm?seconds=-1",
        "storm?seconds=x",
        "storm",
    ] {
        assert_eq!(
            api.admin_post(bad).await.status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        api.admin_post("storm?seconds=3600").await.status(),
        StatusCode::NO_CONTENT
    );
    api.sim.storm(Duration::ZERO);

    // A storm ends by itself.
    api.sim.storm(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(
        api.analysis(&id(3)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let deadline = started + Duration::from_secs(10);
    loop {
        let status = api.analysis(&id(3)).await.status();
        if status != StatusCode::TOO_MANY_REQUESTS || Instant::now() > deadline {
            assert_eq!(status, StatusCode::OK);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn the_batch_endpoint_can_be_off_per_client_or_for_all() {
    let api = Api::new(
        sim(SimConfig {
            credentials: vec![
                crate::Credential::new("esg-accounts", "accounts-secret", crate::ACCOUNTS_SCOPE),
                crate::Credential::new("esg-scorer", "scorer-secret", crate::ESG_SCOPE),
                crate::Credential::new("esg-single", "single-secret", crate::ESG_SCOPE)
                    .with_batch_endpoint(false),
            ],
            rate_limit_per_second: Some(1),
            burst: 1,
            ..quiet(10)
        })
        .await,
    )
    .await;
    let single = token(&api.http, &api.sim, "esg-single", "single-secret").await;
    let batch_as = |token: String| {
        let http = api.http.clone();
        let url = format!("{}/v1/esg-analysis:batch", api.sim.url());
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "accountIds": [id(1), id(2)] }))
                .send()
                .await
                .expect("batch request")
        }
    };
    for _ in 0..3 {
        let resp = batch_as(single.clone()).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert!(resp.headers().contains_key("x-request-id"));
        let body: Value = resp.json().await.expect("error body");
        assert_eq!(body["error"], "NOT_FOUND");
    }
    let resp = api
        .http
        .post(format!("{}/v1/esg-analysis:batch", api.sim.url()))
        .json(&serde_json::json!({ "accountIds": [id(1)] }))
        .send()
        .await
        .expect("batch request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "the token first");
    // Refused batches took nothing from the quota (burst 1): the single call passes.
    let resp = api
        .http
        .get(format!(
            "{}/v1/accounts/{}/esg-analysis",
            api.sim.url(),
            id(1)
        ))
        .bearer_auth(&single)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::OK, "single calls stay on");
    assert_eq!(api.sim.calls_for(&id(2)), 0, "no batch item was a call");
    api.sim.update(|c| c.rate_limit_per_second = None);
    assert_eq!(
        api.batch(&serde_json::json!({ "accountIds": [id(1)] }))
            .await
            .status(),
        StatusCode::OK,
        "other clients keep it"
    );

    configure(&api, serde_json::json!({ "batch_disabled_status": 405 })).await;
    let resp = batch_as(single.clone()).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "", "no method allowed");
    let body: Value = resp.json().await.expect("error body");
    assert!(body["error"].is_string() && body["requestId"].is_string());

    configure(&api, serde_json::json!({ "batch_endpoint": false })).await;
    let resp = api
        .batch(&serde_json::json!({ "accountIds": [id(1)] }))
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "off for all");
    configure(
        &api,
        serde_json::json!({ "batch_endpoint": true, "batch_disabled_status": 404 }),
    )
    .await;
    assert_eq!(
        api.batch(&serde_json::json!({ "accountIds": [id(1)] }))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        batch_as(single).await.status(),
        StatusCode::NOT_FOUND,
        "the client's own switch stays off"
    );
    let refused = api
        .http
        .post(format!("{}/_sim/config", api.sim.url()))
        .json(&serde_json::json!({ "batch_disabled_status": 403 }))
        .send()
        .await
        .expect("config");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let stats = api.sim.stats();
    assert_eq!(
        stats.batch_requests, 9,
        "every batch request, refused or not"
    );
    assert_eq!(stats.esg_by_status.get(&404), Some(&4));
    assert_eq!(stats.esg_by_status.get(&405), Some(&2));
}

#[tokio::test]
async fn a_batch_of_100_is_one_request_against_the_quota_and_in_the_rate() {
    let api = Api::new(
        sim(SimConfig {
            rate_limit_per_second: Some(50),
            burst: 50,
            ..quiet(200)
        })
        .await,
    )
    .await;
    let ids: Vec<String> = (1..=100).map(id).collect();
    let resp = api.batch(&serde_json::json!({ "accountIds": ids })).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-ratelimit-limit"], "50");
    assert_eq!(
        resp.headers()["x-ratelimit-remaining"],
        "49",
        "one cell of the burst, not 100"
    );
    let stats = api.sim.stats();
    assert_eq!((stats.esg_requests, stats.batch_requests), (1, 1));
    assert_eq!(stats.batch_accounts, 100);
    assert!(stats.first_esg_request_ms > 0);
    assert_eq!(stats.first_esg_request_ms, stats.last_esg_request_ms);

    let ids: Vec<String> = (101..=150).map(id).collect();
    assert_eq!(
        api.batch(&serde_json::json!({ "accountIds": ids }))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        api.batch(&serde_json::json!({ "ids": [] })).await.status(),
        StatusCode::BAD_REQUEST
    );
    let stats = api.sim.stats();
    assert_eq!((stats.esg_requests, stats.batch_requests), (3, 3));
    assert_eq!(
        stats.batch_accounts, 150,
        "a body that is not a batch asks for none"
    );
    assert!(stats.last_esg_request_ms >= stats.first_esg_request_ms);
    assert_eq!(stats.rate_limited, 0);
    assert_eq!(api.sim.calls_for(&id(100)), 1);
}

#[tokio::test]
async fn not_modified_answers_are_counted() {
    let api = Api::new(sim(quiet(10)).await).await;
    let etag = api.analysis(&id(4)).await.headers()["etag"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for _ in 0..2 {
        let resp = api
            .http
            .get(format!(
                "{}/v1/accounts/{}/esg-analysis",
                api.sim.url(),
                id(4)
            ))
            .bearer_auth(&api.esg_token)
            .header("If-None-Match", &etag)
            .send()
            .await
            .expect("call");
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    }
    let stats: SimStats = serde_json::from_value(api.admin_get("stats").await).expect("stats");
    assert_eq!(stats.not_modified, 2);
    assert_eq!(stats.esg_by_status.get(&304), Some(&2));
    assert_eq!(stats.esg_by_status.get(&200), Some(&1));
}

#[tokio::test]
async fn an_outage_answers_503_to_every_esg_request_and_the_answers_say_so() {
    let api = Api::new(sim(quiet(20)).await).await;
    assert_eq!(
        api.admin_post("outage?seconds=600").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.analysis(&id(1)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let batch = api
        .batch(&serde_json::json!({ "accountIds": [id(2), id(3)] }))
        .await;
    assert_eq!(batch.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api.admin_post("outage?seconds=0").await.status(),
        StatusCode::NO_CONTENT
    );
    api.analysis_json(&id(1)).await;
    assert_eq!(api.sim.stats().outage_unavailable, 2);
    let answers = api.admin_get("answers").await;
    assert_eq!(answers[id(1)]["transient"], 1);
    assert_eq!(answers[id(1)]["analyses"], 1);
    assert_eq!(answers[id(1)]["failure_streak"], 0);
    assert_eq!(answers[id(2)]["failure_streak"], 1);
    assert_eq!(answers[id(3)]["last_status"], 503);
    assert!(answers.get(id(4)).is_none(), "only accounts answered");
    assert_eq!(
        api.admin_post("outage?seconds=3601").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn answers_count_each_batch_item_and_a_batch_that_failed_whole() {
    let api = Api::new(
        sim(SimConfig {
            permanent_error_rate: 0.3,
            transient_error_rate: 0.3,
            ..quiet(200)
        })
        .await,
    )
    .await;
    let ids: Vec<String> = (1..=100).map(id).collect();
    let resp = api.batch(&serde_json::json!({ "accountIds": ids })).await;
    let whole_failed = resp.status() != StatusCode::OK;
    let answers = api.sim.answers();
    assert_eq!(answers.len(), 100, "every item answered once");
    for (i, a) in &answers {
        assert_eq!(a.analyses + a.transient + a.permanent + a.stalls, 1, "{i}");
        if whole_failed {
            assert!(a.transient == 1 || a.permanent == 1, "{i}: {a:?}");
        }
    }
    if !whole_failed {
        let body: Value = resp.json().await.expect("json");
        for item in body["results"].as_array().expect("results") {
            let a = answers[item["accountId"].as_str().expect("id")];
            let status = item["status"].as_u64().expect("status") as u16;
            assert_eq!(a.last_status, status, "{item}");
        }
    }
}

#[tokio::test]
async fn the_truth_is_what_the_listing_and_the_api_answer() {
    let api = Api::new(
        sim(SimConfig {
            partial_rate: 0.2,
            permanent_error_rate: 0.1,
            ..quiet(30)
        })
        .await,
    )
    .await;
    let name = "=\u{0}\u{1b}[31m \"Red\", \r\n\u{85}\u{202e}\u{1F600}";
    let resp = api
        .http
        .post(format!("{}/_sim/accounts/{}/name", api.sim.url(), id(5)))
        .body(name)
        .send()
        .await
        .expect("rename");
    assert_eq!(resp.status(), StatusCode::OK);
    let renamed: Value = resp.json().await.expect("json");
    let (items, _) = api.list_all(&[]).await;
    let listed = items
        .iter()
        .find(|r| r["accountId"] == id(5))
        .expect("listed");
    assert_eq!(listed["accountName"], name);
    assert_eq!(listed["version"], renamed["version"]);
    let truth = api.admin_get("truth?asOf=2026-11-23").await;
    let accounts = truth["accounts"].as_array().expect("accounts");
    assert_eq!(accounts.len(), 30);
    for (t, record) in accounts.iter().zip(&items) {
        assert_eq!(t["account_id"], record["accountId"]);
        assert_eq!(t["account_name"], record["accountName"]);
        assert_eq!(t["status"], record["status"]);
        assert_eq!(t["version"], record["version"]);
        let resp = api.analysis(t["account_id"].as_str().expect("id")).await;
        match t["rating"]["kind"].as_str() {
            Some("analysis") => {
                assert_eq!(resp.status(), StatusCode::OK);
                let v: Value = resp.json().await.expect("json");
                assert_eq!(t["rating"]["analysis_date"], v["analysisDate"]);
                let overall = &v["scores"]["overall"];
                if overall.is_null() {
                    assert!(t["rating"]["overall"].is_null());
                } else {
                    assert_eq!(t["rating"]["overall"], overall.to_string().as_str());
                }
            }
            Some("refused") => assert_eq!(
                u64::from(resp.status().as_u16()),
                t["rating"]["status"].as_u64().expect("status")
            ),
            other => panic!("{other:?}"),
        }
    }
    let resp = api
        .http
        .get(format!("{}/_sim/truth?asOf=yesterday", api.sim.url()))
        .send()
        .await
        .expect("truth");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_token_outage_and_a_collapsed_listing_are_configured_over_http() {
    let api = Api::new(sim(quiet(400)).await).await;
    configure(&api, serde_json::json!({ "listing_hidden_share": 1.0 })).await;
    let (items, total) = api.list_all(&[]).await;
    assert!(items.is_empty(), "an empty listing");
    assert_eq!(total, 0);
    configure(&api, serde_json::json!({ "listing_hidden_share": 0.5 })).await;
    let (items, total) = api.list_all(&[]).await;
    assert!((120..=280).contains(&items.len()), "{}", items.len());
    assert_eq!(total, items.len() as u64);
    configure(&api, serde_json::json!({ "token_unavailable": true })).await;
    let resp = api
        .http
        .post(api.sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "esg-scorer"),
            ("client_secret", "scorer-secret"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    configure(&api, serde_json::json!({ "token_unavailable": false })).await;
    token(&api.http, &api.sim, "esg-scorer", "scorer-secret").await;
}

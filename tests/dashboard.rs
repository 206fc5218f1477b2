//! `esg serve`, the read-only dashboard, as a child process on a port of its own choosing:
//! a real run served (health, the APIs as `esg history` says them, the run page, the day
//! summary with its opening audited, the live status as server-sent events, no account name in
//! any answer, nothing but GET and HEAD, the security headers); a long history written with
//! the store's own code, its windows and outcome filter, drawn by headless Chromium (every
//! chart in the DOM, a screenshot that is not blank); a store that cannot be read; an
//! encrypted store, read with its key.
//!
//! Chromium is the Debian package `chromium` (ops/test-all.sh installs it). The README's
//! picture of the dashboard is made by tests/demo.rs.

mod common;

use chrono::{TimeDelta, TimeZone, Utc};
use common::served::Served;
use common::*;
use esg_assembler::history::HistoryRow;
use esg_assembler::summary::ScoreSum;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server, a page or a browser may take before the test fails saying which.
const WITHIN: Duration = Duration::from_secs(60);

/// Headless Chromium driven through its DevTools protocol, for what a one-shot `--dump-dom`
/// cannot show: the page after its script has run. Killed when dropped.
struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile");
        let log = profile.path().join("chromium.log");
        let mut child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--remote-debugging-port=0", "about:blank"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("chromium runs (Debian package chromium; ops/test-all.sh installs it)");
        let deadline = Instant::now() + WITHIN;
        // Port 0: Chromium takes a free port and says which.
        let port = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text.lines().find_map(|l| {
                l.split("DevTools listening on ws://127.0.0.1:")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            });
            if let Some(port) = port {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited ({status}): {text}");
            }
            assert!(Instant::now() < deadline, "chromium did not listen: {text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab: the tab's DevTools address.
    async fn open(&self, url: &str) -> String {
        let tab: serde_json::Value = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .send()
            .await
            .expect("a new tab")
            .json()
            .await
            .expect("its description");
        tab["webSocketDebuggerUrl"]
            .as_str()
            .expect("its DevTools address")
            .to_owned()
    }
}

/// Evaluates `expression` in the tab of DevTools address `ws` until it gives a string for
/// which `done` holds (by deadline): that string.
fn wait_for(ws: &str, expression: &str, done: impl Fn(&str) -> bool) -> String {
    let (mut socket, _) = tungstenite::connect(ws).expect("DevTools");
    let deadline = Instant::now() + WITHIN;
    for id in 1.. {
        let call = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        socket
            .send(tungstenite::Message::text(call.to_string()))
            .expect("send");
        // Answers and events arrive in order: read up to the answer of this call.
        let value = loop {
            let message = socket.read().expect("DevTools answers");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let Ok(answer) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            if answer["id"] == id {
                break answer["result"]["result"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        };
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{expression} gave {value:?} until the deadline ({WITHIN:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!("the loop returns or fails")
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server-sent events of `path` until one named `name` comes: its data.
async fn first_event(served: &Served, path: &str, name: &str) -> String {
    let mut response = reqwest::get(served.url(path)).await.expect("GET");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("type"),
        "text/event-stream"
    );
    let deadline = Instant::now() + WITHIN;
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name:?} event within {WITHIN:?}: {text}"))
            .expect("stream")
            .unwrap_or_else(|| panic!("the stream ended before a {name:?} event: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
        // An event ends with a blank line: every part but the last is whole.
        let parts: Vec<&str> = text.split("\n\n").collect();
        for event in &parts[..parts.len() - 1] {
            if event.lines().any(|l| l == format!("event: {name}")) {
                return event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_is_served_read_only_with_no_account_name_in_any_answer() {
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.1,
            partial_rate: 0.1,
            ..quiet_sim(40)
        },
        "",
    )
    .await;
    // Today's daily run, so it is in the default window of 30 days.
    esg(&world, &["run", "--once"]);
    let today = esg::pipeline::today(&world.config());
    let run_id = today.to_string();
    let served = Served::start(&world);

    let health: serde_json::Value =
        serde_json::from_str(&served.ok("/healthz").await).expect("json");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["latest_run"]["run_id"], run_id.as_str(), "{health}");
    assert_eq!(health["latest_run"]["outcome"], "CompletedWithFailures");

    // The machines' answers are `esg history`'s.
    let daily = served.ok("/api/daily.json").await;
    let daily: serde_json::Value = serde_json::from_str(&daily).expect("daily.json parses");
    let history: serde_json::Value =
        serde_json::from_str(&esg(&world, &["history", "--json"])).expect("json");
    assert_eq!(daily, history);
    assert_eq!(daily[0]["daily"]["run_id"], run_id.as_str());
    let csv = served.ok("/api/runs.csv").await;
    assert_eq!(csv, esg(&world, &["history", "--all", "--csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one line a run: {csv}");
    assert!(lines[0].starts_with("business_date,run_id,kind,outcome,"));
    assert!(lines[1].starts_with(&format!("{run_id},{run_id},Daily,CompletedWithFailures,")));

    // The page, the run's page, and the day's summary (its opening in the audit trail).
    let page = served.ok("/").await;
    assert!(page.contains(&format!("href=\"/runs/{run_id}\"")), "{page}");
    for id in esg::serving::CHART_IDS {
        assert!(page.contains(&format!("<svg id=\"{id}\"")), "{id}");
    }
    assert!(page.contains("id=\"progress-run\">") && page.contains(&run_id));
    let run = served.ok(&format!("/runs/{run_id}")).await;
    let row: serde_json::Value = daily[0]["daily"].clone();
    for key in [
        "accounts",
        "failed",
        "api_requests",
        "scored",
        "new_accounts",
    ] {
        assert!(
            run.contains(&format!("<dt>{key}</dt><dd>{}</dd>", row[key])),
            "{key} in {run}"
        );
    }
    let href = format!("/days/{today}/summary.json");
    assert!(
        run.contains(&href),
        "a link to the plaintext summary: {run}"
    );
    let summary = served.ok(&href).await;
    let parsed: serde_json::Value = serde_json::from_str(&summary).expect("the summary");
    assert_eq!(parsed["run_id"], run_id.as_str(), "{summary}");
    assert_eq!(
        served.get(&format!("/days/{today}/errors.csv")).await.0,
        404
    );
    let opened: Vec<esg_audit::Entry> = esg_audit::read(&world.config().audit_dir())
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "opened")
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0].details["to"], "esg serve");
    assert!(opened[0].object.ends_with("_summary.json"), "{opened:?}");
    let (status, missing) = served.get("/runs/no-such-run").await;
    assert_eq!(status, 404);
    assert!(missing.contains("holds no run"), "a clear page: {missing}");
    assert_eq!(served.get("/?window=7").await.0, 400);

    // The live status of the run, as an event.
    let event = first_event(&served, "/api/progress", "status").await;
    let status: serde_json::Value = serde_json::from_str(&event).expect("status JSON");
    assert_eq!(status["run_id"], run_id.as_str(), "{status}");
    assert_eq!(status["phase"], "completed");
    assert_eq!(status["outcome"], "CompletedWithFailures");

    // In a browser, the page's own script runs under its policy and follows the stream.
    let browser = tokio::task::spawn_blocking(Browser::start)
        .await
        .expect("browser");
    let tab = browser.open(&served.url("/")).await;
    let said = tokio::task::spawn_blocking(move || {
        wait_for(
            &tab,
            "document.getElementById('progress-message').textContent + ' | ' + \
             document.getElementById('progress-outcome').textContent",
            |text| text.starts_with("Live: updated"),
        )
    })
    .await
    .expect("browser");
    drop(browser);
    assert!(said.ends_with("| CompletedWithFailures"), "{said}");

    // Read-only, and said so; the headers on every answer.
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::POST, "/"),
        (reqwest::Method::POST, "/api/runs.csv"),
        (reqwest::Method::PUT, "/healthz"),
        (reqwest::Method::DELETE, &format!("/runs/{run_id}") as &str),
    ] {
        let r = http
            .request(method.clone(), served.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }
    let head = http.head(served.url("/")).send().await.expect("HEAD");
    assert_eq!(head.status().as_u16(), 200);
    let h = head.headers();
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    // The page's one script is the one the policy allows, by its hash.
    let script = page
        .split("<script>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .expect("the page's script");
    assert_eq!(page.matches("<script").count(), 1);
    let hash = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        <sha2::Sha256 as sha2::Digest>::digest(script.as_bytes()),
    );
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}'")),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");

    let answers = [
        ("/", page),
        ("run page", run),
        ("summary", summary),
        ("daily.json", daily.to_string()),
        ("runs.csv", csv),
        ("healthz", health.to_string()),
        ("progress", event),
        ("log", served.log()),
    ];
    // No account name anywhere, as it is or as HTML escapes it, and no secret.
    for secret in ["accounts-secret", "scorer-secret"] {
        for (what, text) in &answers {
            assert!(!text.contains(secret), "{what} holds a secret");
        }
    }
    let names = account_names(&world.sim).await;
    assert!(names.len() >= 40, "{names:?}");
    for name in &names {
        let escaped = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;");
        for (what, text) in &answers {
            assert!(
                !text.contains(name.as_str()) && !text.contains(&escaped),
                "{what} holds the account name {name:?}"
            );
        }
    }
}

/// A day of a long, plausible history: a daily run at 05:00 Chicago (11:00 UTC), four hours
/// to its deadline; now and then a re-run of the day and a missed deadline.
fn synthetic_day(i: u32, today: chrono::NaiveDate) -> Vec<HistoryRow> {
    let date = today - TimeDelta::days(i64::from(i));
    // A small deterministic generator (splitmix64): the same history every time.
    let mut state = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = |n: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    let accounts = 1200 - u64::from(i) / 2 + next(20);
    let failed = if i % 29 == 3 { 60 + next(40) } else { next(12) };
    let partial = next(15);
    let successful = accounts - failed - partial;
    let start = Utc.from_utc_datetime(&date.and_hms_opt(11, 0, 0).expect("time"))
        + TimeDelta::seconds(next(30) as i64);
    let timed_out = i % 53 == 7;
    let minutes = if timed_out { 240 } else { 12 + next(50) as i64 };
    let mut average = |base: u64| format!("{}.{:02}", base + next(6), next(100));
    let averages: BTreeMap<String, Option<String>> = [
        ("overall", 61),
        ("environmental", 57),
        ("social", 64),
        ("governance", 66),
    ]
    .into_iter()
    .map(|(k, b)| (k.to_owned(), Some(average(b))))
    .collect();
    let shown = accounts - failed;
    let score_sums = averages
        .iter()
        .map(|(k, a)| {
            let a: f64 = a.as_deref().unwrap_or("0").parse().expect("average");
            (
                k.clone(),
                ScoreSum {
                    sum: format!("{:.4}", a * shown as f64),
                    rows: shown,
                },
            )
        })
        .collect();
    let environmental = shown * (35 + next(6)) / 100;
    let social = shown * (30 + next(6)) / 100;
    let requests = accounts.div_ceil(100) + next(4);
    let mut daily = HistoryRow {
        accounts,
        successful,
        partial,
        failed,
        success_rate_percent: format!("{:.2}", successful as f64 * 100.0 / accounts as f64),
        score_sums,
        averages,
        primary_focus: BTreeMap::from([
            ("Environmental".to_owned(), environmental),
            ("Social".to_owned(), social),
            ("Governance".to_owned(), shown - environmental - social),
        ]),
        scored: accounts / 5 + next(50),
        carried_forward: accounts - accounts / 5,
        new_accounts: next(6),
        gone_accounts: next(3),
        api_requests: requests,
        api_rate_limited: if next(4) == 0 { 1 + next(5) } else { 0 },
        api_attempts: accounts / 5,
        ..HistoryRow::without_file(
            &date.to_string(),
            date,
            "Daily",
            if timed_out {
                "TimedOut"
            } else if failed > accounts / 20 {
                "CompletedWithFailures"
            } else {
                "Completed"
            },
            start,
            start + TimeDelta::minutes(minutes),
            start + TimeDelta::hours(4),
        )
    };
    daily.deadline_met = Some(!timed_out);
    let mut rows = vec![daily.clone()];
    if failed > 50 {
        // The failed accounts re-run the same morning.
        let mut rerun = daily.clone();
        rerun.run_id = format!("{date}.1");
        rerun.kind = "Rerun".into();
        rerun.outcome = "Completed".into();
        rerun.started_at = daily.finished_at + TimeDelta::minutes(20);
        rerun.finished_at = rerun.started_at + TimeDelta::minutes(3);
        rerun.successful += failed;
        rerun.failed = 0;
        rerun.success_rate_percent =
            format!("{:.2}", rerun.successful as f64 * 100.0 / accounts as f64);
        rerun.scored = failed;
        rerun.api_requests = 1;
        rows.push(rerun);
    }
    rows
}

/// `data-points` of the chart `id` in `html`.
fn points(html: &str, id: &str) -> usize {
    let start = html
        .find(&format!("<svg id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id}"));
    let rest = &html[start..];
    let value = rest
        .split("data-points=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("data-points");
    value.parse().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_chooses_the_dates_and_chromium_draws_every_chart() {
    let world = World::start(quiet_sim(1), "").await;
    let config = world.config();
    let today = esg::pipeline::today(&config);
    // 400 days of history, written by the store's own code into the store the assembler makes.
    let store = esg_assembler::state::open(&config.assembler_store_path()).expect("store");
    let rows: Vec<HistoryRow> = (0..400).flat_map(|i| synthetic_day(i, today)).collect();
    let reruns = rows.iter().filter(|r| r.kind == "Rerun").count();
    assert!(reruns > 0);
    let timed_out = rows.iter().filter(|r| r.outcome == "TimedOut").count();
    store
        .call_blocking(move |c| {
            let tx = c.transaction()?;
            for row in &rows {
                esg_assembler::history::record(&tx, row)?;
            }
            tx.commit()
        })
        .expect("history written");
    drop(store);
    let served = Served::start(&world);

    for (window, dates) in [
        ("", 30),
        ("?window=30", 30),
        ("?window=90", 90),
        ("?window=365", 365),
        ("?window=all", 400),
    ] {
        let page = served.ok(&format!("/{window}")).await;
        for id in esg::serving::CHART_IDS {
            assert_eq!(points(&page, id), dates, "{id} of {window:?}");
        }
    }
    let csv = served.ok("/api/runs.csv").await;
    assert_eq!(csv.lines().count(), 1 + 400 + reruns);
    let csv = served.ok("/api/runs.csv?window=90").await;
    assert!(csv.lines().count() > 90, "{csv}");
    let days: serde_json::Value =
        serde_json::from_str(&served.ok("/api/daily.json?window=365").await).expect("json");
    assert_eq!(days.as_array().expect("days").len(), 365);

    // The runs table by outcome.
    let page = served.ok("/?window=all&outcome=TimedOut").await;
    let table = page
        .split("<table id=\"runs\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .expect("the runs table");
    assert_eq!(table.matches("<tr><td>").count(), timed_out, "{table}");
    assert!(!table.contains(">Completed<"), "{table}");

    // No run on the bus: the stream says so.
    let why = first_event(&served, "/api/progress", "unavailable").await;
    assert!(why.contains("No run yet"), "{why}");

    // The browser's DOM has every chart and the runs table; the screenshot is a picture.
    let profile = tempfile::tempdir().expect("profile");
    let dom = chromium::dump_dom(&served.url("/"), profile.path());
    for id in esg::serving::CHART_IDS {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} in the DOM");
    }
    assert!(
        dom.contains("<table id=\"runs\">"),
        "the runs table in the DOM"
    );
    assert!(dom.contains(&format!("/runs/{today}")), "{dom}");
    let file = world.dir.path().join("dashboard.png");
    chromium::screenshot(
        &served.url("/?window=90"),
        &file,
        1280,
        2000,
        profile.path(),
    );
    chromium::assert_not_blank(&file, 1280, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_read_is_a_503_and_a_clear_page() {
    let world = World::start(quiet_sim(1), "").await;
    let served = Served::start(&world);
    // No store yet.
    let (status, body) = served.get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "unavailable");
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("no history yet")),
        "{health}"
    );
    // Not a database.
    let path = world.config().assembler_store_path();
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    std::fs::write(
        &path,
        b"this is not a database, but it is long enough to be read as one....",
    )
    .expect("write");
    let (status, body) = served.get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    let (status, page) = served.get("/").await;
    assert_eq!(status, 503);
    assert!(
        page.contains("The history of runs cannot be read") && page.contains("</html>"),
        "{page}"
    );
    // Bound beyond loopback, it says so in its log.
    let open = Served::start_on(&world, "0.0.0.0:0");
    let (status, _) = open.get("/healthz").await;
    assert_eq!(status, 503);
    assert!(
        open.log().contains("bound to a non-loopback address"),
        "{}",
        open.log()
    );
    assert!(!served.log().contains("non-loopback"), "{}", served.log());
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"this is not a database, but it is long enough to be read as one....",
        "left as it was"
    );
}

#[test]
fn serve_help_says_what_it_serves_that_it_is_read_only_and_who_guards_it() {
    let (code, help) = outcome(&mut esg_command(["serve", "--help"]));
    assert_eq!(code, Some(0), "{help}");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for said in [
        "trend charts",
        "/api/daily.json",
        "/healthz",
        "live progress",
        "Read-only",
        "GET and HEAD only",
        "binds loopback (127.0.0.1:8088) by default",
        "access control is the job of the firm's SSO proxy",
        "[default: 127.0.0.1:8088]",
    ] {
        assert!(help.contains(said), "{said:?} in: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_is_read_with_its_key_and_refused_without_it() {
    use std::os::unix::fs::PermissionsExt;
    const KEY: &str = "3f1c9a0b7d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
    let world = World::start(quiet_sim(1), "").await;
    let key = world.dir.path().join("state.key");
    std::fs::write(&key, format!("{KEY}\n")).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let keyed = format!("[state]\nencryption_key_file = \"{}\"\n", key.display());
    world.replace_in_config("[state]\n", &keyed);
    let config = world.config();
    let today = esg::pipeline::today(&config);
    // The store as the assembler makes it: SQLCipher with the key.
    let store =
        esg_assembler::state::open_keyed(&config.assembler_store_path(), config.state.key.as_ref())
            .expect("store");
    let rows: Vec<HistoryRow> = (0..3).flat_map(|i| synthetic_day(i, today)).collect();
    let runs = rows.len();
    store
        .call_blocking(move |c| {
            for row in &rows {
                esg_assembler::history::record(c, row)?;
            }
            Ok(())
        })
        .expect("history written");
    drop(store);

    let served = Served::start(&world);
    let health: serde_json::Value =
        serde_json::from_str(&served.ok("/healthz").await).expect("json");
    assert_eq!(health["runs"], runs, "{health}");
    assert_eq!(served.ok("/api/runs.csv").await.lines().count(), 1 + runs);
    drop(served);

    // Without the key the store does not open, and the answer says what to set.
    world.replace_in_config(&keyed, "[state]\n");
    let served = Served::start(&world);
    let (status, body) = served.get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("encryption_key_file"), "{body}");
    assert!(!body.contains(KEY) && !served.log().contains(KEY));
}

//! `esg serve`: the read-only dashboard of the job. Trend charts of the history of runs (the
//! `history` table of the assembler store, read through a read-only connection), a table of the
//! runs, each opening its history row, the latest run's live progress (a server-sent event
//! stream of [`crate::status`]), and answers for machines: `/api/daily.json` and
//! `/api/runs.csv` (the serialisations of `esg history --json` and `--csv --all`) and
//! `/healthz`.
//!
//! What it guarantees, and where:
//! - It changes nothing of the job: only `GET` and `HEAD` are answered (anything else is 405),
//!   the store is opened read-only per request, and the live status is read from the bus as
//!   `esg status` reads it (no lock). The one thing it writes is an audit entry each time it
//!   serves a day summary (as `esg open` does): a summary that cannot be recorded is not
//!   served.
//! - No page or answer holds an account name: history rows and the status hold counts, and the
//!   day summary holds failed account ids, never names.
//! - It authenticates nobody. It binds loopback by default and says so loudly when bound
//!   elsewhere; who may see it is the business of the firm's SSO proxy in front of it
//!   (docs/operations.md, "Putting the dashboard behind the firm's SSO").
//! - Every answer carries a Content-Security-Policy that allows inline style and the page's own
//!   script (by its hash) only, no framing, no referrer; no page loads anything from elsewhere.
//! - The live status is read once a second by one task for every viewer, and only while someone
//!   watches: the cost on the bus does not grow with the number of viewers.

mod charts;
mod pages;

use crate::config::{BusKind, Config};
use anyhow::{Context, Result};
use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::NaiveDate;
use esg_assembler::history::{self as store_history, HistoryRow};
use futures::StreamExt;
use pages::{Choice, DayPoint, Live, LiveStatus, RunLine, Window, OUTCOMES};
use sha2::Digest;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use pages::CHART_IDS;

/// The default address: loopback, for the SSO proxy on the same host.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";

/// How often the live status is read while someone watches.
const LIVE_EVERY: Duration = Duration::from_secs(1);
/// How long one read of the live status may take before the page says it is not available.
const LIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The page's own script: it follows `/api/progress` and writes the values into the progress
/// section the server rendered (as text: nothing it receives becomes markup). Without it the
/// page shows the status as of its rendering.
const SCRIPT: &str = r#"(function () {
  if (!window.EventSource) { return; }
  var set = function (id, value) {
    var el = document.getElementById(id);
    if (el) { el.textContent = (value === null || value === undefined) ? "\u2013" : String(value); }
  };
  var source = new EventSource("/api/progress");
  source.addEventListener("status", function (e) {
    var s = JSON.parse(e.data);
    set("progress-run", s.run_id);
    set("progress-kind", s.kind);
    set("progress-date", s.business_date);
    set("progress-phase", s.phase);
    set("progress-scored", s.scored);
    set("progress-expected", s.expected === null ? "not known yet" : s.expected);
    set("progress-successful", s.successful);
    set("progress-partial", s.partial);
    set("progress-failed", s.failed);
    set("progress-rate", s.rate_per_second.toFixed(1) + "/s");
    set("progress-eta", s.eta_seconds === null ? null : s.eta_seconds + " s");
    set("progress-deadline", s.deadline);
    set("progress-outcome", s.outcome === null ? "running" : s.outcome);
    var bar = document.getElementById("progress-bar");
    if (bar) { bar.max = Math.max(1, s.expected === null ? s.scored : s.expected); bar.value = s.scored; }
    set("progress-message", "Live: updated " + new Date().toLocaleTimeString() + ".");
  });
  source.addEventListener("unavailable", function (e) { set("progress-message", e.data); });
})();"#;

/// The latest run's status as the stream sends it.
#[derive(Debug, Clone, PartialEq)]
enum LiveState {
    /// Not read yet.
    Pending,
    /// The status, as JSON.
    Status(String),
    /// Why there is none (no run yet, the bus cannot be read).
    Unavailable(String),
}

struct Dashboard {
    config: Config,
    live: watch::Sender<LiveState>,
    csp: HeaderValue,
}

type Shared = Arc<Dashboard>;

/// Binds `listen` and serves the dashboard until `shutdown`. Prints the address it is bound to
/// (the port chosen by the system when 0 is asked for) on stdout, and logs it.
pub async fn serve(config: Config, listen: SocketAddr, shutdown: CancellationToken) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the dashboard to {listen}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            listen = %bound,
            "the dashboard is bound to a non-loopback address: it authenticates nobody, so \
             anyone who reaches this port sees it; bind it to loopback behind the firm's SSO proxy"
        );
    }
    let app = router(config, shutdown.clone());
    tracing::info!(listen = %bound, "dashboard served (read-only)");
    println!("dashboard listening on http://{bound}/ (read-only)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving the dashboard")?;
    Ok(())
}

/// The dashboard's routes, with the method guard and the security headers on every answer.
fn router(config: Config, shutdown: CancellationToken) -> Router {
    let (live, _) = watch::channel(LiveState::Pending);
    let hash = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sha2::Sha256::digest(SCRIPT.as_bytes()),
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
         connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
         frame-ancestors 'none'"
    );
    let state = Arc::new(Dashboard {
        config,
        live,
        csp: HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'none'")),
    });
    tokio::spawn(follow_status(state.clone(), shutdown.clone()));
    Router::new()
        .route("/", get(dashboard))
        .route("/runs/{run_id}", get(run_page))
        .route("/days/{date}/{file}", get(day_summary))
        .route("/api/daily.json", get(daily_json))
        .route("/api/runs.csv", get(runs_csv))
        .route("/api/progress", get(move |s| progress(s, shutdown.clone())))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Refuses every method but GET and HEAD; puts the security headers on every answer.
async fn guard(State(d): State<Shared>, request: Request, next: Next) -> Response {
    let mut response = if matches!(*request.method(), Method::GET | Method::HEAD) {
        next.run(request).await
    } else {
        let mut r = error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "The dashboard is read-only: it answers GET and HEAD only.",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, d.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Why a page cannot be shown; answered as an [`error_page`].
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_page(self.status, &self.message)
    }
}

/// A page that says what went wrong.
fn error_page(status: StatusCode, message: &str) -> Response {
    let page = pages::ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error").to_owned(),
        message: message.to_owned(),
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, message.to_owned()).into_response(),
    }
}

fn rendered(page: impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard page does not render");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be rendered; the dashboard's log says why.",
            )
        }
    }
}

async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "There is no such page on the dashboard.",
    )
}

/// The runs from `since` on, read on the blocking pool; an error page (503) when the store
/// cannot be read.
async fn history(d: &Shared, since: Option<NaiveDate>) -> Result<Vec<HistoryRow>, Refusal> {
    let d = d.clone();
    let read = tokio::task::spawn_blocking(move || crate::history::read(&d.config, since)).await;
    match read {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => {
            tracing::warn!(error = format!("{e:#}"), "the history cannot be read");
            Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!("The history of runs cannot be read: {e:#}."),
            })
        }
        Err(e) => Err(Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("reading the history: {e}"),
        }),
    }
}

/// The window of `?window=` (default 30 days); an error page for anything else.
fn window_of(query: &HashMap<String, String>, default: Window) -> Result<Window, Refusal> {
    match query.get("window") {
        None => Ok(default),
        Some(text) => Window::parse(text).ok_or_else(|| Refusal {
            status: StatusCode::BAD_REQUEST,
            message: format!("Unknown window {text:?}: choose 30, 90, 365 or all."),
        }),
    }
}

fn today(config: &Config) -> NaiveDate {
    crate::pipeline::today(config)
}

async fn dashboard(State(d): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let window = match window_of(&q, Window::Days(30)) {
        Ok(w) => w,
        Err(refusal) => return refusal.into_response(),
    };
    let outcome = match q.get("outcome").filter(|o| !o.is_empty()) {
        None => None,
        Some(o) if OUTCOMES.contains(&o.as_str()) => Some(o.clone()),
        Some(o) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Unknown outcome {o:?}: choose one of {}.",
                    OUTCOMES.join(", ")
                ),
            )
        }
    };
    let rows = match history(&d, window.since(today(&d.config))).await {
        Ok(rows) => rows,
        Err(refusal) => return refusal.into_response(),
    };
    let days = store_history::days(rows.clone());
    let points: Vec<DayPoint> = days.iter().filter_map(DayPoint::of).collect();
    let charts = pages::charts(&points)
        .iter()
        .map(charts::Chart::svg)
        .collect();
    let link = |window: Window, outcome: Option<&str>| match outcome {
        Some(o) => format!("/?window={}&outcome={o}", window.as_query()),
        None => format!("/?window={}", window.as_query()),
    };
    let windows = Window::CHOICES
        .into_iter()
        .map(|w| Choice {
            label: w.label(),
            href: link(w, outcome.as_deref()),
            current: w == window,
        })
        .collect();
    let mut outcomes = vec![Choice {
        label: format!("all ({})", rows.len()),
        href: link(window, None),
        current: outcome.is_none(),
    }];
    outcomes.extend(OUTCOMES.iter().map(|o| Choice {
        label: format!("{o} ({})", rows.iter().filter(|r| r.outcome == *o).count()),
        href: link(window, Some(o)),
        current: outcome.as_deref() == Some(*o),
    }));
    let runs = rows
        .iter()
        .rev()
        .filter(|r| outcome.as_ref().is_none_or(|o| &r.outcome == o))
        .map(RunLine::of)
        .collect();
    let live = match read_status(&d.config).await {
        Ok(s) => Live {
            status: Some(LiveStatus::of(&s)),
            message: "As of this page's rendering; it updates live where script runs.".into(),
        },
        Err(why) => Live {
            status: None,
            message: why,
        },
    };
    rendered(pages::DashboardPage {
        window: window.label(),
        windows,
        outcomes,
        charts,
        days: points.len(),
        runs,
        outcome,
        live,
        script: SCRIPT,
    })
}

async fn run_page(State(d): State<Shared>, Path(run_id): Path<String>) -> Response {
    let rows = match history(&d, None).await {
        Ok(rows) => rows,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(row) = rows.into_iter().find(|r| r.run_id == run_id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("The history holds no run {run_id:?}."),
        );
    };
    let summaries = SUMMARIES
        .iter()
        .filter(|(file, _)| {
            summary_path(&d.config, row.business_date, file).is_some_and(|p| p.is_file())
        })
        .map(|(file, label)| Choice {
            label: (*label).to_owned(),
            href: format!("/days/{}/{file}", row.business_date),
            current: false,
        })
        .collect();
    rendered(pages::RunPage {
        run_id: row.run_id.clone(),
        business_date: row.business_date.to_string(),
        outcome: row.outcome.clone(),
        fields: pages::fields(&row),
        summaries,
    })
}

/// The day summaries the dashboard serves (the last part of their path) and their names on
/// the run page.
const SUMMARIES: [(&str, &str); 2] = [
    ("summary.html", "the day's summary (HTML)"),
    ("summary.json", "the day's summary (JSON)"),
];

/// The day's plaintext summary `file` (`summary.html` or `summary.json`) in the output
/// directory; `None` for any other name. Encrypted ones (`.age`) are never served: `esg open`
/// is the way to read those.
fn summary_path(config: &Config, date: NaiveDate, file: &str) -> Option<std::path::PathBuf> {
    let names = esg_assembler::output::file_names(date);
    let name = match file {
        "summary.html" => names.summary_html,
        "summary.json" => names.summary_json,
        _ => return None,
    };
    Some(config.output.dir.join(name))
}

/// The header an SSO proxy names its user in (oauth2-proxy and most gateways set one).
const USER_HEADERS: [&str; 4] = [
    "x-forwarded-email",
    "x-forwarded-user",
    "x-auth-request-email",
    "x-auth-request-user",
];

/// Who the proxy says asked: the first identity header, printable ASCII, at most 200
/// characters.
fn requester(headers: &HeaderMap) -> String {
    USER_HEADERS
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(|v| {
            v.chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(200)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown (no identity header from a proxy)".into())
}

/// A day's summary, recorded in the audit trail before it is sent (as `esg open` records an
/// opening); not sent when the entry cannot be written.
async fn day_summary(
    State(d): State<Shared>,
    Path((date, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(date) = date.parse::<NaiveDate>() else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("{date:?} is not a business date (YYYY-MM-DD)."),
        );
    };
    let Some(path) = summary_path(&d.config, date, &file) else {
        return not_found().await;
    };
    let content_type = if file.ends_with(".json") {
        "application/json"
    } else {
        "text/html; charset=utf-8"
    };
    let by = requester(&headers);
    let config = d.config.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        esg_audit::AuditLog::new(&config.audit_dir())
            .append(
                esg_audit::Event::new("opened", &name)
                    .with("sha256", &sha256)
                    .with("to", "esg serve")
                    .with("by", &by),
            )
            .map_err(|e| {
                anyhow::anyhow!("the opening cannot be recorded, so the summary is not served: {e}")
            })?;
        Ok(Some(bytes))
    })
    .await;
    match read {
        Ok(Ok(Some(bytes))) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Ok(Ok(None)) => error_page(
            StatusCode::NOT_FOUND,
            &format!(
                "This host holds no plaintext summary of {date} (an encrypted one is read with \
                 `esg open`)."
            ),
        ),
        Ok(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "a day summary was not served");
            error_page(StatusCode::SERVICE_UNAVAILABLE, &format!("{e:#}."))
        }
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The history rows of the query's window (default all), for the machine answers.
async fn window_rows(d: &Shared, q: &HashMap<String, String>) -> Result<Vec<HistoryRow>, Refusal> {
    let window = window_of(q, Window::All)?;
    history(d, window.since(today(&d.config))).await
}

/// `esg history --json` of the window (default all).
async fn daily_json(State(d): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let rows = match window_rows(&d, &q).await {
        Ok(rows) => rows,
        Err(refusal) => return refusal.into_response(),
    };
    match crate::history::json(rows, false) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
}

/// `esg history --csv --all` of the window (default all): one line a run.
async fn runs_csv(State(d): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let rows = match window_rows(&d, &q).await {
        Ok(rows) => rows,
        Err(refusal) => return refusal.into_response(),
    };
    match crate::history::csv(rows, true) {
        Ok(csv) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response(),
        Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
}

/// 200 and the latest run when the history reads; 503 and why when it does not.
async fn healthz(State(d): State<Shared>) -> Response {
    let d2 = d.clone();
    let read = tokio::task::spawn_blocking(move || crate::history::read(&d2.config, None)).await;
    let (status, body) = match read {
        Ok(Ok(rows)) => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "store": "readable",
                "runs": rows.len(),
                "latest_run": rows.iter().max_by_key(|r| (r.business_date, r.started_at)).map(|r| serde_json::json!({
                    "run_id": r.run_id,
                    "business_date": r.business_date,
                    "outcome": r.outcome,
                })),
            }),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "store": "unreadable", "error": format!("{e:#}")}),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "error": e.to_string()}),
        ),
    };
    (status, axum::Json(body)).into_response()
}

/// The live status as server-sent events: `status` (the JSON of `esg status --json`) at once
/// and on each change, `unavailable` (why there is none) likewise; a keep-alive comment in
/// between. Ends when the dashboard stops.
async fn progress(
    State(d): State<Shared>,
    shutdown: CancellationToken,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = d.live.subscribe();
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        let mut wait = !first;
        loop {
            if wait && rx.changed().await.is_err() {
                return None;
            }
            wait = true;
            let event = match &*rx.borrow_and_update() {
                LiveState::Pending => None,
                LiveState::Status(json) => Some(Event::default().event("status").data(json)),
                LiveState::Unavailable(why) => {
                    Some(Event::default().event("unavailable").data(why))
                }
            };
            if let Some(event) = event {
                return Some((Ok(event), (rx, false)));
            }
        }
    })
    .take_until(shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Reads the live status once a second while any stream is open, and tells the streams when
/// it changed.
async fn follow_status(d: Shared, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(LIVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if d.live.receiver_count() == 0 {
            continue;
        }
        let now = read_live(&d.config).await;
        d.live.send_if_modified(|live| {
            let changed = *live != now;
            if changed {
                *live = now;
            }
            changed
        });
    }
}

/// Where the latest run stands, as the stream sends it.
async fn read_live(config: &Config) -> LiveState {
    match read_status(config).await {
        Ok(status) => match serde_json::to_string(&status) {
            Ok(json) => LiveState::Status(json),
            Err(e) => LiveState::Unavailable(format!("The status does not serialise: {e}")),
        },
        Err(why) => LiveState::Unavailable(why),
    }
}

/// Where the latest run stands, as `esg status` reads it; why not, as a sentence.
async fn read_status(config: &Config) -> Result<crate::status::Status, String> {
    // The embedded log is not created by a reader: no file, no run.
    if config.bus.kind == BusKind::Embedded && !config.bus_path().exists() {
        return Err("No run yet: the job has not run on this host.".into());
    }
    match tokio::time::timeout(LIVE_TIMEOUT, crate::status::read(config, None)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(format!("No live status: {e:#}.")),
        Err(_) => Err(format!(
            "No live status: the bus did not answer within {} s.",
            LIVE_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requester_is_the_proxys_identity_header_cleaned() {
        let mut h = HeaderMap::new();
        assert!(requester(&h).starts_with("unknown"));
        h.insert(
            "x-forwarded-email",
            HeaderValue::from_static("officer@firm.example"),
        );
        assert_eq!(requester(&h), "officer@firm.example");
    }

    #[test]
    fn the_script_is_what_the_policy_allows() {
        assert!(!SCRIPT.contains("innerHTML"), "values are set as text only");
        assert!(SCRIPT.contains("/api/progress"));
    }
}

//! `esg demo --days N` through the binary: N business days run one after the other against the
//! simulator, each a row of the history with its own file, the simulated firm changing between
//! them (accounts scored again, new and gone accounts); `esg serve` on the demo's configuration
//! then draws the trends, which headless Chromium renders to a picture. With
//! `ESG_WRITE_DOCS_SCREENSHOT=1` that picture is saved as docs/dashboard.png (the README's).

mod common;

use common::served::Served;
use common::*;
use std::path::Path;

const DAYS: usize = 20;
const LAST: &str = "2026-11-30";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_of_many_days_builds_a_history_the_dashboard_draws() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("demo");
    let (code, said) = outcome(&mut esg_command([
        "demo",
        "--accounts",
        "300",
        "--days",
        &DAYS.to_string(),
        "--business-date",
        LAST,
        "--dir",
        dir.to_str().expect("utf-8"),
    ]));
    assert!(matches!(code, Some(0 | 1)), "{said}");
    let first = date(LAST) - chrono::Duration::days(DAYS as i64 - 1);
    assert!(
        said.contains(&format!(
            "building {DAYS} days of history, {first} to {LAST}"
        )),
        "{said}"
    );

    let config = dir.join("esg.toml");
    let out = esg_command(["history", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("esg history runs");
    assert!(out.status.success(), "{out:?}");
    let days: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let days = days.as_array().expect("days");
    assert_eq!(days.len(), DAYS, "one history day per business day");
    assert_eq!(days[0]["business_date"], first.to_string());
    assert_eq!(days[DAYS - 1]["business_date"], LAST);
    for day in days {
        let name =
            esg_assembler::output::file_names(date(day["business_date"].as_str().expect("date")));
        assert!(dir.join("out").join(&name.csv).exists(), "{}", name.csv);
        assert!(dir.join("out").join(&name.summary_html).exists());
    }
    // The firm changed between days: later days score only what changed, and accounts came
    // and went.
    let daily = |i: usize, key: &str| days[i]["daily"][key].as_u64().expect(key);
    assert!(daily(1, "carried_forward") > 0, "{:?}", days[1]);
    assert!(daily(1, "scored") < daily(0, "scored"));
    let opened: u64 = (1..DAYS).map(|i| daily(i, "new_accounts")).sum();
    let gone: u64 = (1..DAYS).map(|i| daily(i, "gone_accounts")).sum();
    assert!(opened > 0 && gone > 0, "new {opened}, gone {gone}");
    let averages: std::collections::BTreeSet<&str> = days
        .iter()
        .filter_map(|d| d["daily"]["averages"]["overall"].as_str())
        .collect();
    assert!(averages.len() > 1, "the averages move: {averages:?}");
    // The last day's summary compares with the day before and the days before that.
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.join("out")
                .join(esg_assembler::output::file_names(date(LAST)).summary_json),
        )
        .expect("summary"),
    )
    .expect("json");
    assert_eq!(
        summary["comparison"]["mean_30_days"]["days"],
        DAYS as u64 - 1,
        "{summary}"
    );

    // The dashboard draws it.
    let served = Served::start_with(&config, scratch.path(), "127.0.0.1:0");
    let page = served.ok("/?window=30").await;
    assert!(
        page.contains(&format!("data-points=\"{DAYS}\"")),
        "every day is a point"
    );
    let file = if std::env::var("ESG_WRITE_DOCS_SCREENSHOT").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png")
    } else {
        scratch.path().join("dashboard.png")
    };
    chromium::screenshot(
        &served.url("/?window=30"),
        &file,
        1280,
        1700,
        scratch.path(),
    );
    chromium::assert_not_blank(&file, 1280, 1700);
}

#[test]
fn a_demo_of_no_days_or_too_many_is_refused_before_anything_runs() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("demo");
    for days in ["0", "3661", "many"] {
        let (code, said) = outcome(&mut esg_command([
            "demo",
            "--days",
            days,
            "--dir",
            dir.to_str().expect("utf-8"),
        ]));
        assert_eq!(code, Some(2), "--days {days}: {said}");
        assert!(said.contains("--days"), "{said}");
        assert!(!dir.exists(), "nothing made for --days {days}");
    }
}

//! The HTML summary through the `esg` binary: written beside the JSON summary by the daily
//! run and by a re-run, it shows every value of the JSON (the comparison with the previous day
//! from the history included), renders in headless Chromium to a page with its charts and to a
//! non-blank screenshot, is encrypted with the other outputs under `[encryption]`, and loses a
//! failed account's id when the account is erased.

mod common;

use common::*;
use std::path::Path;

const DAY1: &str = "2026-11-23";
const DAY2: &str = "2026-11-24";

fn names(day: &str) -> esg_assembler::output::FileNames {
    esg_assembler::output::file_names(date(day))
}

fn json_at(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_summary_shows_every_json_value_and_renders_in_chromium() {
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.15,
            partial_rate: 0.1,
            ..quiet_sim(60)
        },
        "",
    )
    .await;
    esg(&world, &["run", "--once", "--business-date", DAY1]);
    let ids = active_ids(&world.sim).await;
    let chosen = format!("{},{}", ids[1], ids[2]);
    esg(
        &world,
        &["rerun", "--accounts", &chosen, "--business-date", DAY1],
    );
    esg(&world, &["run", "--once", "--business-date", DAY2]);

    let out = world.out();
    for day in [DAY1, DAY2] {
        let json = json_at(&out.join(names(day).summary_json));
        let page = std::fs::read_to_string(out.join(names(day).summary_html)).expect("page");
        assert_eq!(
            esg_assembler::report::missing_values(&page, &json),
            Vec::<String>::new(),
            "{day}: values of the JSON summary not on the page"
        );
        assert!(json["failed"].as_u64().expect("failed") > 0, "{json}");
        assert_eq!(
            json["failed_details"].as_array().expect("details").len() as u64,
            json["failed"].as_u64().expect("failed")
        );
        assert_eq!(json["deadline_met"], true, "{json}");
        for forbidden in ["<script", "src=", "href=", "url("] {
            assert!(!page.contains(forbidden), "{day}: {forbidden}");
        }
    }
    // The re-run rewrote the first day's page with its re-run listed.
    let page1 = std::fs::read_to_string(out.join(names(DAY1).summary_html)).expect("page");
    assert!(page1.contains(&format!("{DAY1}.1")), "the re-run is listed");
    // The second day compares with the first, as its file stood after the re-run.
    let json2 = json_at(&out.join(names(DAY2).summary_json));
    let json1 = json_at(&out.join(names(DAY1).summary_json));
    let previous = &json2["comparison"]["previous_day"];
    assert_eq!(previous["from"], DAY1, "{json2}");
    assert_eq!(previous["averages"]["overall"], json1["average_overall"]);
    assert_eq!(json2["comparison"]["mean_30_days"]["days"], 1);
    assert_eq!(json1["comparison"]["previous_day"], serde_json::Value::Null);

    // Chromium renders it: the charts are in the DOM, the screenshot is not blank.
    let scratch = tempfile::tempdir().expect("scratch");
    let url = format!("file://{}", out.join(names(DAY2).summary_html).display());
    let dom = chromium::dump_dom(&url, scratch.path());
    for id in [
        "chart-status",
        "chart-focus",
        "scores",
        "failed-accounts",
        "error-codes",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} not in the DOM");
    }
    let png = scratch.path().join("summary.png");
    chromium::screenshot(&url, &png, 1100, 1600, scratch.path());
    chromium::assert_not_blank(&png, 1100, 1600);

    // Erasing a failed account takes its id off the page; the page is the JSON's again.
    let gone = json2["failed_details"][0]["account_id"]
        .as_str()
        .expect("a failed id")
        .to_owned();
    esg(&world, &["erase", "--account", &gone, "--reason", "DSR-7"]);
    for day in [DAY1, DAY2] {
        let page = std::fs::read_to_string(out.join(names(day).summary_html)).expect("page");
        let json = json_at(&out.join(names(day).summary_json));
        assert!(
            !page.contains(&format!(">{gone}<")),
            "{day}: the erased id is still on the page"
        );
        assert!(!json.to_string().contains(&gone), "{day}: {json}");
        let summary: esg_assembler::summary::Summary =
            serde_json::from_value(json).expect("a summary");
        assert_eq!(
            page,
            esg_assembler::report::render(&summary).expect("renders"),
            "{day}: the page is its JSON's"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_encryption_the_html_summary_is_only_on_disk_encrypted() {
    let keys = tempfile::tempdir().expect("keys");
    let key = keygen(keys.path(), "officer");
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.2,
            ..quiet_sim(30)
        },
        &format!("[encryption]\nrecipients = [\"{}\"]\n", key.recipient),
    )
    .await;
    esg(&world, &["run", "--once", "--business-date", DAY1]);
    let out = world.out();
    let html = names(DAY1).summary_html;
    assert!(!out.join(&html).exists(), "a plaintext page");
    let page = age_decrypt(&key.identity, &out.join(format!("{html}.age"))).expect("decrypts");
    let json = age_decrypt(
        &key.identity,
        &out.join(format!("{}.age", names(DAY1).summary_json)),
    )
    .expect("decrypts");
    let page = String::from_utf8(page).expect("utf-8");
    let json: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(
        esg_assembler::report::missing_values(&page, &json),
        Vec::<String>::new()
    );
    // No plaintext of it anywhere on disk: the failed ids it lists appear in no file as such.
    let failed = json["failed_details"][0]["account_id"]
        .as_str()
        .expect("a failed id")
        .to_owned();
    let needle = format!("<code>{failed}</code>");
    assert!(page.contains(&needle));
    for file in files_under(world.dir.path()) {
        let bytes = std::fs::read(&file).expect("read");
        assert!(!holds(&bytes, needle.as_bytes()), "{}", file.display());
    }
}

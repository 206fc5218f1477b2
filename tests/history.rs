//! The run history through the `esg` binary: every run the assembler ends is a row (a daily
//! run, a re-run, the next day), the per-day view starts at the date's latest daily run, the
//! rows agree with the day summaries (exact score sums included), `--since`, `--all`, `--json`
//! and `--csv` show them, and `esg history import` rebuilds them from the summaries into an
//! empty store. (One row per run after `kill -9`: tests/resume.rs.)

mod common;

use common::*;

const DAY1: &str = "2026-11-23";
const DAY2: &str = "2026-11-24";

fn summary(world: &World, day: &str) -> serde_json::Value {
    let name = esg_assembler::output::file_names(date(day)).summary_json;
    serde_json::from_slice(&std::fs::read(world.out().join(name)).expect("summary")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_is_a_row_of_the_history_and_an_import_rebuilds_it_from_the_summaries() {
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.1,
            partial_rate: 0.1,
            ..quiet_sim(40)
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

    let days: serde_json::Value =
        serde_json::from_str(&esg(&world, &["history", "--json"])).expect("json");
    let days = days.as_array().expect("days");
    assert_eq!(days.len(), 2, "{days:?}");
    let (day1, day2) = (&days[0], &days[1]);
    assert_eq!(day1["business_date"], DAY1);
    assert_eq!(day1["daily"]["run_id"], DAY1);
    assert_eq!(day1["daily"]["kind"], "Daily");
    assert_eq!(day1["daily"]["deadline_met"], true);
    assert_eq!(day1["reruns"].as_array().expect("reruns").len(), 1);
    let rerun = &day1["reruns"][0];
    assert_eq!(rerun["kind"], "Rerun");
    assert_eq!(rerun["scored"], 2);
    assert_eq!(day2["daily"]["run_id"], DAY2);

    // The rows say what the summaries say: the daily run's facts, and the file after the
    // latest run of the day.
    let s1 = summary(&world, DAY1);
    for key in [
        "accounts",
        "successful",
        "partial",
        "failed",
        "success_rate_percent",
    ] {
        assert_eq!(rerun[key], s1[key], "{key}");
    }
    assert_eq!(rerun["score_sums"], s1["score_sums"]);
    assert_eq!(rerun["primary_focus"], s1["primary_focus"]);
    for key in [
        "new_accounts",
        "api_requests",
        "api_attempts",
        "carried_forward",
    ] {
        assert_eq!(day1["daily"][key], s1[key], "{key}");
    }
    assert_eq!(day1["daily"]["scored"], s1["scored_in_run"]);
    let s2 = summary(&world, DAY2);
    assert_eq!(day2["daily"]["accounts"], s2["accounts"]);
    assert_eq!(day2["daily"]["carried_forward"], s2["carried_forward"]);
    assert_eq!(day2["daily"]["averages"]["overall"], s2["average_overall"]);
    let sum: rust_decimal::Decimal = s2["score_sums"]["overall"]["sum"]
        .as_str()
        .expect("sum")
        .parse()
        .expect("decimal");
    assert!(sum > rust_decimal::Decimal::ZERO, "{s2}");

    let text = esg(&world, &["history"]);
    assert_eq!(text.lines().count(), 4, "header and three runs: {text}");
    assert!(
        text.contains(&format!("{DAY1}.1")) && text.contains("met"),
        "{text}"
    );
    let since = esg(&world, &["history", "--since", DAY2, "--csv"]);
    let lines: Vec<&str> = since.lines().collect();
    assert_eq!(lines.len(), 2, "{since}");
    assert!(lines[0].starts_with("business_date,run_id,kind,outcome,"));
    assert!(
        lines[1].starts_with(&format!("{DAY2},{DAY2},Daily,")),
        "{since}"
    );
    let all = esg(&world, &["history", "--all", "--csv"]);
    assert_eq!(all.lines().count(), 4, "{all}");

    // A lost history is rebuilt from the summaries: the same runs, the deadline unknown.
    let before: Vec<serde_json::Value> =
        serde_json::from_str(&esg(&world, &["history", "--all", "--json"])).expect("json");
    let other = tempfile::tempdir().expect("state");
    world.replace_in_config(
        &format!("dir = \"{}\"", world.dir.path().join("state").display()),
        &format!("dir = \"{}\"", other.path().join("state").display()),
    );
    let (code, said) = outcome(esg_command(["history", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(2), "no store yet: {said}");
    assert!(said.contains("there is no history yet"), "{said}");
    let out = world.out().display().to_string();
    let said = esg(&world, &["history", "import", &out]);
    assert!(said.contains("2 summaries read: 3 runs added"), "{said}");
    let said = esg(&world, &["history", "import", &out]);
    assert!(
        said.contains("0 runs added to the history, 3 it held already"),
        "{said}"
    );
    let after: Vec<serde_json::Value> =
        serde_json::from_str(&esg(&world, &["history", "--all", "--json"])).expect("json");
    assert_eq!(after.len(), before.len());
    for (mut a, mut b) in after.into_iter().zip(before) {
        assert_eq!(a["deadline"], serde_json::Value::Null);
        let mut unknown = vec!["deadline", "deadline_met"];
        if a["kind"] == "Daily" && a["business_date"] == DAY1 {
            // A summary holds the file as the day's last run left it: the imported daily run
            // of a re-run day shows that file (the run's own facts are kept).
            unknown.extend([
                "accounts",
                "successful",
                "partial",
                "failed",
                "success_rate_percent",
                "score_sums",
                "averages",
                "primary_focus",
            ]);
        }
        for key in unknown {
            a.as_object_mut().expect("row").remove(key);
            b.as_object_mut().expect("row").remove(key);
        }
        assert_eq!(a, b);
    }
}

//! Logs for the firm's log system: JSON lines with run and account fields on stdout and in a
//! rotating file; the job's start, end, counts and every error; never an account name or a
//! secret.

mod common;

use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_facts_and_never_a_name_or_a_secret() {
    let world = World::start(
        esg_simulator::SimConfig {
            accounts: 400,
            rate_limit_per_second: None,
            permanent_error_rate: 0.03,
            partial_rate: 0.03,
            malformed_record_rate: 0.01,
            ..Default::default()
        },
        "",
    )
    .await;
    let log_dir = world.dir.path().join("logs");
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    std::fs::write(
        &world.config_path,
        format!(
            "{text}\n[log]\nformat = \"json\"\nlevel = \"info\"\ndir = \"{}\"\n",
            log_dir.display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", "2026-11-23", "--config"])
        .arg(&world.config_path)
        .env_remove("RUST_LOG")
        .output()
        .expect("esg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");

    let files: Vec<_> = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(name.starts_with("esg.") && name.ends_with(".log"), "{name}");
    let file = std::fs::read_to_string(&files[0]).expect("log file");

    for (what, text) in [("stdout", stdout.as_str()), ("file", file.as_str())] {
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
            .collect();
        assert!(events.len() > 5, "{what}: {} events", events.len());
        let messages: Vec<&str> = events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        for expected in [
            "run triggered",
            "run sealed",
            "run assembled",
            "scorer stopped",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(expected)),
                "{what}: no {expected:?} in {messages:?}"
            );
        }
        // Every account that failed for good is logged with its id and run.
        let failures: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["level"] == "WARN" || e["level"] == "ERROR")
            .filter(|e| e.get("account_id").is_some())
            .collect();
        assert!(!failures.is_empty(), "{what}: no failed account logged");
        for f in failures {
            let in_spans = f["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["run_id"].is_string()));
            assert!(f.get("run_id").is_some() || in_spans, "{what}: {f}");
        }
    }

    // No account name, no secret, anywhere.
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    let logs = format!("{stdout}\n{file}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut checked = 0;
    for row in &rows[1..] {
        let name = row[1].trim_start_matches('\'');
        if name.chars().count() >= 8 {
            checked += 1;
            assert!(
                !logs.contains(name),
                "an account name is in the logs: {name}"
            );
        }
    }
    assert!(checked > 300, "{checked} names checked");
    for secret in ["scorer-secret", "accounts-secret"] {
        assert!(!logs.contains(secret), "a secret is in the logs");
    }
}

/// Colour codes only on a terminal: a run whose output goes to pipes and a log file writes
/// none, in text or JSON, on stdout, stderr or in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_colour_codes_without_a_terminal() {
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.05,
            ..quiet_sim(60)
        },
        "",
    )
    .await;
    let base = std::fs::read_to_string(&world.config_path).expect("config");
    for (n, format) in ["text", "json"].iter().enumerate() {
        let log_dir = world.dir.path().join(format!("logs-{format}"));
        std::fs::write(
            &world.config_path,
            format!(
                "{base}\n[log]\nformat = \"{format}\"\nlevel = \"info\"\ndir = \"{}\"\n",
                log_dir.display()
            ),
        )
        .expect("config");
        let out = Command::new(env!("CARGO_BIN_EXE_esg"))
            .args(["run", "--once", "--business-date"])
            .arg(format!("2026-11-{:02}", 23 + n))
            .arg("--config")
            .arg(&world.config_path)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            // Even where colour is asked for by the terminal type, a pipe gets none.
            .env("TERM", "xterm-256color")
            .env("CLICOLOR_FORCE", "1")
            .output()
            .expect("esg runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{format}: {stderr}");
        let logs = if *format == "text" { &stderr } else { &stdout };
        assert!(logs.contains("INFO"), "{format}: no log lines in {logs}");
        let file: String = std::fs::read_dir(&log_dir)
            .expect("log dir")
            .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("log file"))
            .collect();
        assert!(file.contains("run triggered"), "{format}: {file}");
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr), ("file", &file)] {
            assert!(
                !text.contains("\u{1b}["),
                "{format}: an escape code on {stream}:\n{text}"
            );
        }
    }
}

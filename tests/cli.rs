//! The `esg` command line: help that helps, clear errors with the right exit codes.

use std::process::Command;

fn esg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(args)
        .output()
        .expect("esg runs")
}

#[test]
fn help_lists_every_command() {
    let out = esg(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "demo",
        "run",
        "rerun",
        "replay",
        "producer",
        "scorer",
        "assembler",
        "simulator",
        "check-config",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
    for sub in [
        "run",
        "rerun",
        "replay",
        "producer",
        "scorer",
        "assembler",
        "demo",
        "simulator",
    ] {
        let out = esg(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: esg"), "{text}");
    }
    let text = String::from_utf8_lossy(&esg(&["run", "--help"]).stdout).to_string();
    assert!(text.contains("--business-date") && text.contains("--full") && text.contains("--once"));
    let text = String::from_utf8_lossy(&esg(&["rerun", "--help"]).stdout).to_string();
    assert!(text.contains("--accounts"));
    let text = String::from_utf8_lossy(&esg(&["replay", "--help"]).stdout).to_string();
    assert!(text.contains("--from") && text.contains("--to") && text.contains("--partition"));
    assert!(text.contains("RFC 3339"), "{text}");
}

#[test]
fn kafka_services_on_the_embedded_log_say_what_to_run_instead() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("esg.toml");
    let good = esg::config::example(
        "http://127.0.0.1:9",
        &dir.path().join("o"),
        &dir.path().join("s"),
    );
    std::fs::write(&path, good).expect("write");
    let config = path.to_str().expect("utf8");
    for (cmd, hint) in [
        ("scorer", "esg run"),
        ("assembler", "esg run"),
        ("producer", "esg run --once"),
    ] {
        let out = esg(&[cmd, "--config", config]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bus.kind") && err.contains(hint),
            "{cmd}: {err}"
        );
    }
    // A replay range of offsets needs its partition.
    let out = esg(&["replay", "--config", config, "--from", "0", "--to", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--partition"));
    let out = esg(&[
        "replay",
        "--config",
        config,
        "--from",
        "yesterday",
        "--to",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(2), "a bad bound is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

#[test]
fn a_broken_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("esg.toml");
    let good = esg::config::example(
        "http://127.0.0.1:9",
        &dir.path().join("o"),
        &dir.path().join("s"),
    );
    std::fs::write(
        &path,
        good.replace("max_in_flight = 64", "max_in_flight = 64\nmax_inflight = 2"),
    )
    .expect("write");
    let out = esg(&["run", "--once", "--config", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("esg_api.max_inflight"), "{err}");

    std::fs::write(&path, good.replace("dir = ", "dir_x = ")).expect("write");
    let out = esg(&["check-config", "--config", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));

    let out = esg(&["run", "--once", "--config", "/nonexistent/esg.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/esg.toml"));
}

#[test]
fn check_config_hides_secrets() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("esg.toml");
    let good = esg::config::example(
        "http://127.0.0.1:9",
        &dir.path().join("o"),
        &dir.path().join("s"),
    );
    std::fs::write(&path, good).expect("write");
    let out = esg(&["check-config", "--config", path.to_str().expect("utf8")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configuration OK"));
    assert!(
        !text.contains("scorer-secret") && !text.contains("accounts-secret"),
        "{text}"
    );
}

#[test]
fn rerun_needs_accounts() {
    let out = esg(&["rerun", "--config", "x.toml"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--accounts"));
}

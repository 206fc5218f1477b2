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
        assert_eq!(out.status.code(), Some(2), "{cmd}: a usage error");
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

fn esg_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("esg runs")
}

fn example_config(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let path = dir.join("esg.toml");
    let text = esg::config::example("http://127.0.0.1:9", &dir.join("o"), &dir.join("s"));
    std::fs::write(&path, &text).expect("write");
    (path, text)
}

#[test]
fn check_config_prints_the_effective_config_as_toml_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, text) = example_config(dir.path());
    std::fs::write(
        &path,
        format!(
            "{text}\n[kafka.properties]\n\"sasl.password\" = \"kafka-secret\"\n\
             [alerts.pagerduty]\nrouting_key = \"0123456789abcdef0123456789abcdef\"\n"
        ),
    )
    .expect("write");
    let out = esg_env(
        &["check-config", "--config", path.to_str().expect("utf8")],
        &[
            ("ESG__ACCOUNTS__CLIENT_SECRET", "from-the-environment"),
            ("ESG__ESG_API__RATE_LIMIT_PER_SECOND", "7"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    for secret in [
        "scorer-secret",
        "accounts-secret",
        "from-the-environment",
        "kafka-secret",
        "0123456789abcdef0123456789abcdef",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret}:\n{stdout}"
        );
    }
    let shown: toml::Table = toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    let esg_api = shown["esg_api"].as_table().expect("esg_api");
    assert_eq!(esg_api["client_secret"].as_str(), Some("********"));
    // The effective value: the environment's, and the defaults.
    assert_eq!(esg_api["rate_limit_per_second"].as_integer(), Some(7));
    assert_eq!(esg_api["timeout"].as_str(), Some("10s"));
    assert_eq!(
        shown["run"]["time_zone"].as_str(),
        Some("America/Chicago"),
        "{stdout}"
    );
    assert_eq!(
        shown["accounts"]["client_secret"].as_str(),
        Some("********")
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn config_errors_are_said_plainly_with_where_they_come_from_and_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, text) = example_config(dir.path());
    let config = path.to_str().expect("utf8");
    let check = |env: &[(&str, &str)]| {
        let out = esg_env(&["check-config", "--config", config], env);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // From the environment: the variable is named, and the message has no Rust type in it.
    let err = check(&[("ESG__ESG_API__RATE_LIMIT_PER_SECOND", "fast")]);
    assert!(
        err.contains("ESG__ESG_API__RATE_LIMIT_PER_SECOND=fast")
            && err.contains("expected a whole number"),
        "{err}"
    );
    assert!(!err.contains("u32"), "{err}");

    // TOML syntax: line and column.
    std::fs::write(
        &path,
        text.replace("max_in_flight = 64", "max_in_flight = = 64"),
    )
    .expect("write");
    let line = text
        .lines()
        .position(|l| l.starts_with("max_in_flight"))
        .expect("line")
        + 1;
    let err = check(&[]);
    assert!(err.contains(&format!("line {line}, column 17")), "{err}");

    // An invalid log level.
    std::fs::write(&path, format!("{text}\n[log]\nlevel = \"verbose\"\n")).expect("write");
    let err = check(&[]);
    assert!(
        err.contains("log.level") && err.contains("verbose"),
        "{err}"
    );

    // The schedule after the deadline: both keys named.
    std::fs::write(&path, format!("{text}\n[schedule]\nat = \"10:00\"\n")).expect("write");
    let err = check(&[]);
    assert!(
        err.contains("schedule.at") && err.contains("run.deadline"),
        "{err}"
    );
}

//! The scheduling artefacts in `ops/`: the systemd timers fire at 05:00 America/Chicago, and the
//! Kubernetes CronJobs carry the settings the runbook relies on; and the compose stand's
//! configuration is one the job accepts.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_timers_fire_at_five_in_chicago() {
    for timer in ["esg.timer", "esg-producer.timer"] {
        let text = std::fs::read_to_string(root().join("ops/systemd").join(timer)).expect("timer");
        let calendar = text
            .lines()
            .find_map(|l| l.strip_prefix("OnCalendar="))
            .unwrap_or_else(|| panic!("{timer}: no OnCalendar"));
        assert!(text.contains("Persistent=true"), "{timer}");
        let Ok(out) = Command::new("systemd-analyze")
            .args(["calendar", "--iterations=3", calendar])
            .output()
        else {
            panic!("systemd-analyze is needed to check {timer}");
        };
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{timer}: {said}");
        assert!(
            said.contains("Normalized form: *-*-* 05:00:00 America/Chicago"),
            "{said}"
        );
        // Every elapse is 05:00 local: 10:00 or 11:00 UTC depending on daylight saving.
        let elapses: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("elapse") || l.contains("Iter."))
            .collect();
        assert_eq!(elapses.len(), 3, "{said}");
        for l in elapses {
            assert!(
                l.contains(" 10:00:00 UTC")
                    || l.contains(" 11:00:00 UTC")
                    || l.contains(" 05:00:00 C"),
                "{l}"
            );
        }
    }
}

#[test]
fn kubernetes_manifests_are_valid_and_scheduled_in_chicago() {
    let out = Command::new("python3")
        .arg(root().join("ops/kubernetes/check.py"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (Debian package): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_rules_pass_their_unit_tests() {
    run_ok(
        "promtool",
        &["check", "rules", "ops/prometheus/esg-rules.yml"],
    );
    run_ok(
        "promtool",
        &["test", "rules", "ops/prometheus/esg-rules.test.yml"],
    );
    run_ok(
        "promtool",
        &["check", "config", "ops/prometheus/prometheus.yml"],
    );
    run_ok("promtool", &["check", "config", "compose/prometheus.yml"]);
}

#[test]
fn alertmanager_routes_alerts_to_the_right_people() {
    run_ok("bash", &["ops/alertmanager/check.sh"]);
    run_ok("amtool", &["check-config", "compose/alertmanager.yml"]);
}

#[test]
fn the_grafana_dashboard_uses_only_the_jobs_metrics() {
    run_ok("python3", &["ops/grafana/check.py"]);
}

#[test]
fn every_prometheus_alert_has_a_runbook_section() {
    let rules =
        std::fs::read_to_string(root().join("ops/prometheus/esg-rules.yml")).expect("rules");
    let runbook = std::fs::read_to_string(root().join("docs/operations.md")).expect("runbook");
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            runbook.contains(&format!("### {name}\n")),
            "docs/operations.md has no section for {name}"
        );
    }
}

#[test]
fn the_compose_configuration_is_valid_with_the_simulators_ca() {
    // In compose the CA is the one the simulator makes at start in /certs; any CA file stands in.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki =
        esg_simulator::tls::TestPki::generate("compose CA", &["simulator".into()]).expect("pki");
    let files = pki.write(dir.path()).expect("files");
    let ca = files.ca.to_str().expect("utf-8");
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["check-config", "--config", "compose/esg.toml"])
        .current_dir(root())
        .env("ESG__AUTH__TLS_CA_FILE", ca)
        .env("ESG__ACCOUNTS__TLS_CA_FILE", ca)
        .env("ESG__ESG_API__TLS_CA_FILE", ca)
        .env("ESG__OUTPUT__DIR", dir.path().join("out"))
        .env("ESG__STATE__DIR", dir.path().join("state"))
        .output()
        .expect("esg runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("url = \"https://simulator:8080\""), "{said}");
}

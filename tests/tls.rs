//! Data in transit: the job against a simulator that serves HTTPS only, with a CA of its own and
//! mutual TLS. A whole day goes through; a server certificate the job does not trust, or a
//! missing client certificate, stops it before anything is published, naming the URL; and a
//! plain http:// URL to another host is a configuration error.

mod common;

use common::*;
use esg_simulator::tls::{TestPki, TestPkiFiles};
use std::process::Command;

/// A simulator serving HTTPS with a new CA (`mutual`: only to clients with its certificate).
async fn https_world(mutual: bool) -> (World, TestPki, TestPkiFiles) {
    let pki = TestPki::generate("test CA", &[]).expect("pki");
    let sim = esg_simulator::start_tls(
        quiet_sim(60),
        "127.0.0.1:0".parse().expect("addr"),
        pki.server(mutual),
    )
    .await
    .expect("simulator starts");
    assert!(sim.url().starts_with("https://127.0.0.1:"), "{}", sim.url());
    let world = World::with_sim(sim, "");
    let files = pki.write(&world.dir.path().join("pki")).expect("pki files");
    (world, pki, files)
}

/// Sets the TLS keys of `[auth]`, `[accounts]` and `[esg_api]`.
fn set_tls(world: &World, ca: &std::path::Path, client: Option<&TestPkiFiles>) {
    let mut keys = format!("tls_ca_file = \"{}\"", ca.display());
    if let Some(c) = client {
        keys.push_str(&format!(
            "\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
            c.client_cert.display(),
            c.client_key.display()
        ));
    }
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    let token_line = text
        .lines()
        .find(|l| l.starts_with("token_url = "))
        .expect("token_url")
        .to_owned();
    world.replace_in_config(&token_line, &format!("{token_line}\n{keys}"));
    world.add_accounts_keys(&keys);
    let secret = "client_secret = \"scorer-secret\"";
    world.replace_in_config(secret, &format!("{secret}\n{keys}"));
}

fn check_connect(world: &World) -> (bool, String) {
    let (code, said) =
        outcome(esg_command(["check-config", "--connect", "--config"]).arg(&world.config_path));
    (code == Some(0), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_runs_over_mutual_tls_with_the_firms_own_ca() {
    let (world, pki, files) = https_world(true).await;
    set_tls(&world, &files.ca, Some(&files));

    let (ok, said) = check_connect(&world);
    assert!(ok, "pre-flight over mutual TLS: {said}");
    assert!(
        said.contains("ESG API healthy: https://127.0.0.1:"),
        "{said}"
    );

    let day = date("2026-11-23");
    let outcome = run_day(&world, day).await;
    let rows = read_csv(&world.csv_path(day));
    let client_pem = format!("{}{}", pki.client_cert_pem, pki.client_key_pem);
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca")])
        .identity(reqwest::Identity::from_pem(client_pem.as_bytes()).expect("identity"))
        .build()
        .expect("client");
    let expected = active_ids_with(&world.sim, http).await.len();
    assert_eq!(rows.len() - 1, expected, "every active account has its row");
    assert!(outcome.completed.is_some(), "{outcome:?}");
    let failed = rows[1..]
        .iter()
        .filter(|r| r.contains(&"Failed".to_owned()))
        .count();
    assert_eq!(failed, 0, "no account failed over TLS");
    assert!(
        world.sim.stats().token_requests > 0,
        "tokens came over TLS too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_the_job_does_not_trust_stops_it_naming_the_url() {
    let (world, _pki, _files) = https_world(false).await;
    // Without tls_ca_file the system's trust store decides, and it does not know this CA.
    let (ok, said) = check_connect(&world);
    assert!(!ok, "an unknown CA is refused: {said}");
    assert!(said.contains("certificate"), "the cause is given: {said}");
    assert!(
        said.contains("https://127.0.0.1:"),
        "the URL is named: {said}"
    );

    // Another CA's bundle is no better.
    let other = TestPki::generate("another CA", &[]).expect("pki");
    let other = other.write(&world.dir.path().join("other")).expect("files");
    set_tls(&world, &other.ca, None);
    let (ok, said) = check_connect(&world);
    assert!(
        !ok,
        "a CA that did not issue the server's certificate: {said}"
    );
    assert!(said.contains("certificate"), "{said}");

    // The daily run refuses to start rather than fail every account.
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["run", "--once", "--business-date", "2026-11-23", "--config"])
        .arg(&world.config_path)
        .output()
        .expect("esg runs");
    assert!(!out.status.success());
    assert!(
        !world.csv_path(date("2026-11-23")).exists(),
        "nothing is published"
    );
    assert_eq!(world.sim.stats().esg_requests, 0, "no account was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_a_client_certificate_refuses_a_job_without_one() {
    let (world, _pki, files) = https_world(true).await;
    set_tls(&world, &files.ca, None);
    let (ok, said) = check_connect(&world);
    assert!(!ok, "no client certificate: {said}");
    assert!(said.contains("https://127.0.0.1:"), "{said}");
    assert_eq!(
        world.sim.stats().token_requests,
        0,
        "no request got through"
    );
}

#[test]
fn bad_transport_settings_are_configuration_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = esg::config::example(
        "https://127.0.0.1:9",
        &dir.path().join("out"),
        &dir.path().join("state"),
    );
    let pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&pem, "hello\n").expect("write");
    let key = dir.path().join("client.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    for (from, to, words) in [
        (
            "url = \"https://127.0.0.1:9\"\nclient_id = \"esg-accounts\"",
            "url = \"http://ams.firm.example\"\nclient_id = \"esg-accounts\"".to_owned(),
            "accounts.url",
        ),
        (
            "client_secret = \"accounts-secret\"",
            format!("client_secret = \"accounts-secret\"\ntls_ca_file = \"{}\"", pem.display()),
            "accounts.tls_ca_file",
        ),
        (
            "client_secret = \"scorer-secret\"",
            format!(
                "client_secret = \"scorer-secret\"\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
                pem.display(),
                key.display()
            ),
            "esg_api.tls_client_cert_file",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let path = dir.path().join("esg.toml");
        std::fs::write(&path, base.replace(from, &to)).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_esg"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("esg runs");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{words}: {said}");
        assert!(said.contains(words), "{words}: {said}");
    }
}

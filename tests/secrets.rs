//! Secrets from files: a day runs with both client secrets read from a systemd credentials
//! directory (`LoadCredential=`, relative `*_file` names), none in the file or the environment;
//! `check-config` says where each secret came from and never shows one.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_runs_with_its_secrets_from_a_credentials_directory() {
    let world = World::start(quiet_sim(40), "").await;
    world.replace_in_config(
        "client_secret = \"accounts-secret\"",
        "client_secret_file = \"accounts-client-secret\"",
    );
    world.replace_in_config(
        "client_secret = \"scorer-secret\"",
        "client_secret_file = \"esg-api-client-secret\"",
    );
    let credentials = world.dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("dir");
    for (name, secret) in [
        ("accounts-client-secret", "accounts-secret\n"),
        ("esg-api-client-secret", "scorer-secret"),
    ] {
        let path = credentials.join(name);
        std::fs::write(&path, secret).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    }

    let check_config = || {
        let mut command = esg_command(["check-config", "--config"]);
        command.arg(&world.config_path);
        command
    };
    let (code, text) = outcome(check_config().env("CREDENTIALS_DIRECTORY", &credentials));
    assert_eq!(code, Some(0), "{text}");
    let accounts_file = credentials.join("accounts-client-secret");
    assert!(
        text.contains(&format!(
            "accounts.client_secret <- file {}",
            accounts_file.display()
        )),
        "{text}"
    );
    assert!(text.contains("esg_api.client_secret <- file "), "{text}");
    assert!(
        !text.contains("accounts-secret") && !text.contains("scorer-secret"),
        "{text}"
    );

    let (code, text) = outcome(
        esg_command(["run", "--once", "--business-date", "2026-11-23", "--config"])
            .arg(&world.config_path)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("RUST_LOG", "debug"),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        !text.contains("accounts-secret") && !text.contains("scorer-secret"),
        "{text}"
    );
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    assert_eq!(rows.len() - 1, active_ids(&world.sim).await.len());

    // Without the credentials directory the relative names cannot be found: exit 2, naming the
    // key and the variable.
    let (code, text) = outcome(check_config().env_remove("CREDENTIALS_DIRECTORY"));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("accounts.client_secret_file"), "{text}");
    assert!(text.contains("CREDENTIALS_DIRECTORY"), "{text}");

    // A secret file anyone may read is refused.
    std::fs::set_permissions(&accounts_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let (code, text) = outcome(check_config().env("CREDENTIALS_DIRECTORY", &credentials));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("mode 0644"), "{text}");
}

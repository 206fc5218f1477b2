//! The job's own stores at rest: with `[state] encryption_key_file` the embedded log and the
//! producer and assembler stores are SQLCipher databases. A day runs; no database file (nor its
//! WAL) holds an account id or the SQLite header in clear; and a wrong key, a missing key, a key
//! for a plaintext state, or a malformed key file stops the job with an error that says which.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const KEY: &str = "3f1c9a0b7d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6";
const OTHER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn write_key(path: &Path, hex: &str) {
    std::fs::write(path, format!("{hex}\n")).expect("key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn run_once(world: &World, day: &str) -> (Option<i32>, String) {
    outcome(
        esg_command(["run", "--once", "--business-date", day, "--config"]).arg(&world.config_path),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_stores_hold_nothing_in_clear_and_refuse_a_wrong_or_missing_key() {
    let world = World::start(quiet_sim(60), "").await;
    let key = world.dir.path().join("state.key");
    write_key(&key, KEY);
    world.replace_in_config(
        "[state]\n",
        &format!("[state]\nencryption_key_file = \"{}\"\n", key.display()),
    );
    let (code, said) = run_once(&world, "2026-11-23");
    assert_eq!(code, Some(0), "{said}");
    let ids = active_ids(&world.sim).await;
    let rows = read_csv(&world.csv_path(date("2026-11-23")));
    assert_eq!(rows.len() - 1, ids.len(), "the day's file is whole");

    let state = world.dir.path().join("state");
    let mut databases = 0;
    for entry in std::fs::read_dir(&state).expect("state") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.contains(".db") || name.ends_with("-shm") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        if bytes.is_empty() {
            continue;
        }
        databases += 1;
        assert!(
            !bytes.starts_with(b"SQLite format 3\0"),
            "{name} is not a plaintext SQLite file"
        );
        for id in ids.iter().take(10) {
            assert!(
                !contains(&bytes, id.as_bytes()),
                "{name} holds account id {id} in clear"
            );
        }
    }
    assert!(
        databases >= 3,
        "bus.db, producer.db and assembler.db were checked"
    );

    // The same state with another key: refused, saying so, nothing written.
    write_key(&key, OTHER_KEY);
    let (code, said) = run_once(&world, "2026-11-24");
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("encryption_key_file does not open it"),
        "{said}"
    );
    assert!(!world.csv_path(date("2026-11-24")).exists());

    // Without a key: the databases are encrypted, and the error says to set the key.
    world.replace_in_config(
        &format!("encryption_key_file = \"{}\"\n", key.display()),
        "",
    );
    let (code, said) = run_once(&world, "2026-11-24");
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("set [state] encryption_key_file"), "{said}");

    // The right key again: the state is whole, the next day runs.
    write_key(&key, KEY);
    world.replace_in_config(
        "[state]\n",
        &format!("[state]\nencryption_key_file = \"{}\"\n", key.display()),
    );
    let (code, said) = run_once(&world, "2026-11-24");
    assert_eq!(code, Some(0), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_a_plaintext_state_and_a_malformed_key_file_are_refused() {
    let world = World::start(quiet_sim(20), "").await;
    let (code, said) = run_once(&world, "2026-11-23");
    assert_eq!(code, Some(0), "plaintext state: {said}");

    let key = world.dir.path().join("state.key");
    write_key(&key, KEY);
    world.replace_in_config(
        "[state]\n",
        &format!("[state]\nencryption_key_file = \"{}\"\n", key.display()),
    );
    let (code, said) = run_once(&world, "2026-11-24");
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("written without encryption"), "{said}");

    for (text, words) in [("not-hex", "64 hexadecimal digits"), ("", "is empty")] {
        std::fs::write(&key, text).expect("key");
        let (code, said) =
            outcome(esg_command(["check-config", "--config"]).arg(&world.config_path));
        assert_eq!(code, Some(2), "{said}");
        assert!(
            said.contains("state.encryption_key_file") && said.contains(words),
            "{said}"
        );
    }
}

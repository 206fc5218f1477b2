//! The right to erasure end to end through the `esg` binary: after `esg erase --account ID` no
//! byte of the account's name is left in the state directory (stores and embedded log, free
//! pages and write-ahead logs included), the output directory and the delivery target (the
//! encrypted files decrypted by Debian's `age` CLI to look), the logs or the audit trail; the
//! audit trail names the account only by its HMAC and still verifies; the other rows are kept;
//! and an account the account system still lists comes back as new on the next run. Bad
//! requests (an id that is not one, encrypted files without an identity, a running job) are
//! refused with nothing changed, a store the disk refuses fails the erasure loudly (finished by
//! running it again), and `--legal-hold` keeps the published files.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const DAY1: &str = "2026-11-23";
const DAY2: &str = "2026-11-24";
const DAY3: &str = "2026-11-25";

/// The plaintext of an encrypted output, by Debian's `age` CLI.
fn decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    age_decrypt(identity, file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The files under `dirs` that hold `needle`, an encrypted file looked at decrypted.
fn holders(dirs: &[&Path], identity: &Path, needle: &str) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| files_under(d))
        .filter(|path| {
            let bytes = if path.extension().is_some_and(|e| e == "age") {
                decrypt(identity, path)
            } else {
                std::fs::read(path).expect("read")
            };
            holds(&bytes, needle.as_bytes())
        })
        .collect()
}

fn run_once(world: &World, day: &str) {
    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", day, "--config"]).arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");
}

fn erase(world: &World, extra: &[&str]) -> (Option<i32>, String) {
    let mut c = esg_command(["erase", "--config"]);
    c.arg(&world.config_path).args(extra);
    outcome(&mut c)
}

struct Setup {
    world: World,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    key: Key,
    share: PathBuf,
    logs: PathBuf,
    /// The account to erase: a Successful row whose name no other account has.
    id: String,
    name: String,
}

async fn two_encrypted_days() -> Setup {
    let keys = tempfile::tempdir().expect("keys");
    let key = keygen(keys.path(), "officer");
    let tmp = tempfile::tempdir().expect("tmp");
    let (share, logs) = (tmp.path().join("share"), tmp.path().join("logs"));
    std::fs::create_dir_all(&share).expect("share");
    let world = World::start(
        esg_simulator::SimConfig {
            permanent_error_rate: 0.1,
            ..quiet_sim(60)
        },
        &format!(
            "[encryption]\nrecipients = [\"{}\"]\n[log]\nformat = \"json\"\nlevel = \"debug\"\n\
             dir = \"{}\"\n[[delivery]]\nkind = \"dir\"\nname = \"share\"\npath = \"{}\"\n",
            key.recipient,
            logs.display(),
            share.display()
        ),
    )
    .await;
    run_once(&world, DAY1);
    run_once(&world, DAY2);
    let csv = world.out().join("FirmESGRatings_20261124.csv.age");
    let plain = decrypt(&key.identity, &csv);
    let rows = read_csv_bytes(&plain);
    let names: Vec<&str> = rows.iter().skip(1).map(|r| r[1].as_str()).collect();
    let (id, name) = rows
        .iter()
        .skip(1)
        .find(|r| {
            r[9] == "Successful"
                && r[1].len() > 6
                && names
                    .iter()
                    .filter(|n| n.contains(r[1].as_str()) || r[1].contains(*n))
                    .count()
                    == 1
        })
        .map(|r| (r[0].clone(), r[1].clone()))
        .expect("a Successful account with a name of its own");
    Setup {
        world,
        _dirs: (keys, tmp),
        key,
        share,
        logs,
        id,
        name,
    }
}

fn read_csv_bytes(bytes: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes)
        .records()
        .map(|r| r.expect("record").iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_account_leaves_no_byte_of_its_name_anywhere_the_job_keeps_data() {
    let s = two_encrypted_days().await;
    let world = &s.world;
    let (state, out, audit) = (
        world.dir.path().join("state"),
        world.out(),
        world.dir.path().join("state").join("audit"),
    );
    let everywhere = [
        state.as_path(),
        out.as_path(),
        s.share.as_path(),
        s.logs.as_path(),
    ];
    let before = holders(&everywhere, &s.key.identity, &s.name);
    assert!(
        before.iter().any(|p| p.starts_with(&state)) && before.iter().any(|p| p.starts_with(&out)),
        "the name is kept before the erasure: {before:?}"
    );
    let rows_before = read_csv_bytes(&decrypt(
        &s.key.identity,
        &out.join("FirmESGRatings_20261124.csv.age"),
    ))
    .len();

    let identity = s.key.identity.display().to_string();
    let (code, said) = erase(
        world,
        &[
            "--account",
            &s.id,
            "--reason",
            "DSR-2026-0042",
            "--identity",
            &identity,
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("files of 2026-11-24 delivered again"),
        "{said}"
    );
    assert!(
        said.contains("files of 2026-11-23 delivered again"),
        "{said}"
    );

    let after = holders(&everywhere, &s.key.identity, &s.name);
    assert!(after.is_empty(), "the name survives in {after:?}");
    // Neither name nor id in the audit trail: the erasure is recorded under the id's HMAC.
    let trail: String = files_under(&audit)
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("read")).into_owned())
        .collect();
    assert!(!trail.contains(&s.name));
    let erased: Vec<serde_json::Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == "erased")
        .collect();
    assert_eq!(erased.len(), 1, "{trail}");
    let pseudonym = erased[0]["object"].as_str().expect("object");
    assert_eq!(pseudonym.len(), 64, "an HMAC-SHA256: {pseudonym}");
    assert!(said.contains(pseudonym), "{said}");
    assert!(!erased[0].to_string().contains(&s.id), "{}", erased[0]);
    assert!(
        trail.contains("\"rows_erased\""),
        "each rewritten file is audited"
    );
    let (code, verified) =
        outcome(esg_command(["audit", "verify", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{verified}");

    // The other rows are as they were, locally and as delivered.
    for dir in [&out, &s.share] {
        let rows = read_csv_bytes(&decrypt(
            &s.key.identity,
            &dir.join("FirmESGRatings_20261124.csv.age"),
        ));
        assert_eq!(rows.len(), rows_before - 1, "{}", dir.display());
        assert!(rows.iter().all(|r| r[0] != s.id));
    }

    // Erasing again finds nothing left and changes nothing.
    let (code, said) = erase(
        world,
        &[
            "--account",
            &s.id,
            "--reason",
            "DSR-2026-0042",
            "--identity",
            &identity,
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("rewritten"), "{said}");

    // The account system still lists it: the next run scores it again, as a new account.
    run_once(world, DAY3);
    let rows = read_csv_bytes(&decrypt(
        &s.key.identity,
        &out.join("FirmESGRatings_20261125.csv.age"),
    ));
    assert!(rows.iter().any(|r| r[0] == s.id && r[1] == s.name));
    let summary: serde_json::Value = serde_json::from_slice(&decrypt(
        &s.key.identity,
        &out.join("FirmESGRatings_20261125_summary.json.age"),
    ))
    .expect("summary");
    assert_eq!(summary["new_accounts"], 1, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_erasure_request_changes_nothing_and_a_legal_hold_keeps_the_published_files() {
    let s = two_encrypted_days().await;
    let world = &s.world;
    let out = world.out();
    let snapshot = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        files_under(dir)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).expect("read");
                (p, bytes)
            })
            .collect()
    };
    let state = world.dir.path().join("state");
    let (files, stores) = (snapshot(&out), snapshot(&state));

    for (args, expected) in [
        (
            vec!["--account", "not an id", "--reason", "DSR-1"],
            "is not an account id",
        ),
        (vec!["--account", &s.id, "--reason", " "], "give --reason"),
        (
            vec!["--account", &s.id, "--reason", "DSR-1"],
            "give --identity",
        ),
    ] {
        let (code, said) = erase(world, &args);
        assert_eq!(code, Some(2), "{args:?}: {said}");
        assert!(said.contains(expected), "{args:?}: {said}");
    }
    assert_eq!(snapshot(&out), files, "a refused request changed a file");
    assert_eq!(
        snapshot(&state),
        stores,
        "a refused request changed the state"
    );

    // A job holding the state directory: refused, exit 5.
    let lock = std::fs::File::options()
        .write(true)
        .open(state.join("assembler.lock"))
        .expect("lock file");
    lock.try_lock().expect("lock");
    let (code, said) = erase(
        world,
        &["--account", &s.id, "--reason", "DSR-1", "--legal-hold"],
    );
    assert_eq!(code, Some(5), "{said}");
    assert!(said.contains("another esg process"), "{said}");
    drop(lock);

    // The disk refuses a store half way (the producer's is erased, the assembler's file is
    // immutable): loud, exit 1, audited; the same command finishes it once the disk allows.
    let held = Immutable::new(&state.join("assembler.db"));
    let (code, said) = erase(
        world,
        &["--account", &s.id, "--reason", "DSR-1", "--legal-hold"],
    );
    drop(held);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("the erasure is not complete") && said.contains("assembler.db"),
        "{said}"
    );
    assert!(!said.contains(&s.name), "{said}");
    let trail = std::fs::read_to_string(state.join("audit").join("audit.jsonl")).expect("audit");
    assert!(trail.contains("\"erase_failed\""), "{trail}");

    // Legal hold: the stores forget the account, the published files stay byte for byte.
    let (code, said) = erase(
        world,
        &["--account", &s.id, "--reason", "DSR-1", "--legal-hold"],
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("legal hold"), "{said}");
    assert_eq!(snapshot(&out), files, "a legal hold keeps the files");
    let left = holders(&[state.as_path()], &s.key.identity, &s.name);
    assert!(left.is_empty(), "the name survives in {left:?}");
    let trail = std::fs::read_to_string(state.join("audit").join("audit.jsonl")).expect("audit");
    let erased = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["action"] == "erased")
        .expect("an erased entry");
    assert!(
        erased.to_string().contains("\"legal_hold\":\"true\""),
        "{erased}"
    );
}

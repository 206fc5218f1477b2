//! The audit trail end to end through the `esg` binary: a day's run records the configuration,
//! the run, each file written (its SHA-256, for whom it is encrypted) and each file delivered,
//! and signs a checkpoint that goes to the share with the files; `esg audit verify` holds the
//! log against it, and fails naming the entry once the log is tampered with; `esg open`
//! decrypts a file for a person and records that it did.

mod common;

use common::*;
use std::path::Path;

const DAY: &str = "2026-11-23";

fn entries(world: &World) -> Vec<serde_json::Value> {
    let (code, said) =
        outcome(esg_command(["audit", "show", "--json", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{said}");
    said.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn sha256(path: &Path) -> String {
    esg::auditing::sha256_file(path).expect("hash").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_audited_checkpointed_delivered_and_verified_and_tampering_shows() {
    let keys = tempfile::tempdir().expect("keys");
    let key = keys.path().join("audit.key");
    let (code, said) = outcome(&mut esg_command([
        "audit",
        "keygen",
        "--name",
        "esg.test/audit",
        "--out",
        key.to_str().expect("utf-8"),
    ]));
    assert_eq!(code, Some(0), "{said}");
    let verifier = said.lines().last().expect("verifier key").trim().to_owned();
    assert!(verifier.starts_with("esg.test/audit+"), "{said}");
    let (code, said) = outcome(&mut esg_command([
        "audit",
        "keygen",
        "--name",
        "x/y",
        "--out",
        key.to_str().expect("utf-8"),
    ]));
    assert_eq!(
        code,
        Some(1),
        "an existing key is never overwritten: {said}"
    );

    let officer = age::x25519::Identity::generate();
    let identity = keys.path().join("officer.key");
    std::fs::write(
        &identity,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&officer.to_string())
        ),
    )
    .expect("identity");
    let share = keys.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let world = World::start(
        quiet_sim(60),
        &format!(
            "[encryption]\nrecipients = [\"{}\"]\n[audit]\nsigning_key_file = \"{}\"\n\
             [[delivery]]\nkind = \"dir\"\nname = \"share\"\npath = \"{}\"\n",
            officer.to_public(),
            key.display(),
            share.display()
        ),
    )
    .await;
    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", DAY, "--config"]).arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");

    let log = entries(&world);
    let actions: Vec<&str> = log
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        &actions[..3],
        ["configuration", "run_started", "run_ended"],
        "{actions:?}"
    );
    let csv = world.out().join("FirmESGRatings_20261123.csv.age");
    let written = log
        .iter()
        .find(|e| e["action"] == "file_written" && e["object"] == "FirmESGRatings_20261123.csv.age")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(written["details"]["sha256"], sha256(&csv));
    assert_eq!(
        written["details"]["encrypted_for"],
        officer.to_public().to_string()
    );
    assert_eq!(
        log.iter().filter(|e| e["action"] == "file_written").count(),
        4,
        "ratings, errors, JSON and HTML summaries"
    );
    let delivered: Vec<&serde_json::Value> =
        log.iter().filter(|e| e["action"] == "delivered").collect();
    assert_eq!(
        delivered.len(),
        5,
        "four files and the checkpoint: {delivered:?}"
    );
    assert!(log
        .iter()
        .all(|e| e["actor"]["host"].is_string() && e["actor"]["uid"].is_u64()));
    // The checkpoint on the share covers every entry up to the run's end.
    let checkpoint = std::fs::read_dir(&share)
        .expect("share")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "checkpoint"))
        .expect("the checkpoint was delivered");
    let note = std::fs::read_to_string(&checkpoint).expect("note");
    assert_eq!(note.lines().nth(1), Some("7"), "{note}");

    let verify = |extra: &[&str]| {
        let mut c = esg_command(["audit", "verify", "--config"]);
        c.arg(&world.config_path).args(extra);
        outcome(&mut c)
    };
    let cp = checkpoint.to_str().expect("utf-8");
    let (code, said) = verify(&["--checkpoint", cp]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("chain intact") && said.contains("(7 entries)"),
        "{said}"
    );
    let (code, said) = verify(&["--checkpoint", cp, "--verifier-key", &verifier]);
    assert_eq!(code, Some(0), "{said}");

    // An independent reader, Go's golang.org/x/mod/sumdb/note (the reference implementation
    // of C2SP signed notes), takes the checkpoint and the verifier key as they are.
    let go_reads = |note: &Path| {
        std::process::Command::new("go")
            .args(["run", ".", &verifier])
            .arg(note)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/audit"))
            .output()
            .expect("go runs (the Go toolchain)")
    };
    let go = go_reads(&checkpoint);
    assert!(
        go.status.success(),
        "{}",
        String::from_utf8_lossy(&go.stderr)
    );
    let text: String = note.split("\n\n").next().expect("text").to_owned() + "\n";
    assert_eq!(String::from_utf8_lossy(&go.stdout), text);
    let forged = keys.path().join("forged.checkpoint");
    std::fs::write(&forged, note.replacen("\n7\n", "\n6\n", 1)).expect("forge");
    assert!(
        !go_reads(&forged).status.success(),
        "Go accepted a forged checkpoint"
    );

    // A person opens the file: decrypted, and recorded. Their configuration file needs no
    // client secret: only where the state (and so the audit log) is.
    let officer_config = keys.path().join("officer.toml");
    std::fs::write(
        &officer_config,
        format!(
            "[state]\ndir = \"{}\"\n",
            world.dir.path().join("state").display()
        ),
    )
    .expect("config");
    let open = |config: &Path, out: &Path, audit_dir: Option<&Path>| {
        let mut c = esg_command(["open", "--config"]);
        c.arg(config)
            .arg(&csv)
            .args(["--identity", identity.to_str().expect("utf-8"), "--out"])
            .arg(out);
        if let Some(dir) = audit_dir {
            c.env("ESG__AUDIT__DIR", dir);
        }
        outcome(&mut c)
    };
    let plain = keys.path().join("plain.csv");
    let (code, said) = open(&officer_config, &plain, None);
    assert_eq!(code, Some(0), "{said}");
    let text = std::fs::read_to_string(&plain).expect("plaintext");
    assert!(text.starts_with("Account ID,"), "{text}");
    let opened = entries(&world);
    let last = opened.last().expect("entry");
    assert_eq!(last["action"], "opened");
    assert_eq!(last["object"], "FirmESGRatings_20261123.csv.age");
    assert_eq!(last["details"]["sha256"], sha256(&csv));
    assert_eq!(last["details"]["to"], plain.display().to_string());
    // Where the opening cannot be recorded, nothing is decrypted.
    let not_a_dir = keys.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"").expect("file");
    let refused = keys.path().join("refused.csv");
    let (code, said) = open(&officer_config, &refused, Some(&not_a_dir));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("cannot be recorded"), "{said}");
    assert!(
        !refused.exists(),
        "plaintext written without an audit entry"
    );

    // Someone deletes a line of the local log: verify fails, naming where.
    let path = world
        .dir
        .path()
        .join("state")
        .join("audit")
        .join("audit.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .expect("log")
        .lines()
        .map(str::to_owned)
        .collect();
    let kept: Vec<&String> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(
        &path,
        kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("tamper");
    let (code, said) = verify(&["--checkpoint", cp]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("NOT intact") && said.contains("entry 3 is followed by entry 5"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_key_the_chain_is_kept_and_checked_and_says_no_checkpoint() {
    let world = World::start(quiet_sim(20), "").await;
    let (code, said) = outcome(
        esg_command(["run", "--once", "--business-date", DAY, "--config"]).arg(&world.config_path),
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(
        !world
            .dir
            .path()
            .join("state/audit/audit.checkpoint")
            .exists(),
        "a checkpoint without a key"
    );
    let (code, said) =
        outcome(esg_command(["audit", "verify", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("chain intact") && said.contains("no checkpoint checked"),
        "{said}"
    );
    let (code, said) = outcome(
        esg_command([
            "audit",
            "verify",
            "--checkpoint",
            "/nonexistent",
            "--config",
        ])
        .arg(&world.config_path),
    );
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("/nonexistent"), "{said}");
}

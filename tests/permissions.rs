//! File modes whatever the umask: the `esg` binary started with umask 000 still writes its
//! outputs 0640 in a 0750 directory, its stores and embedded log 0600 in a 0700 directory, and
//! its log files 0640; and it says at start-up when the outputs are plaintext.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_umask_000_nothing_the_job_writes_is_open_to_others() {
    let world = World::start(quiet_sim(40), "").await;
    let logs = world.dir.path().join("logs");
    world.replace_in_config(
        "[state]",
        &format!("[log]\ndir = \"{}\"\n\n[state]", logs.display()),
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" run --once --business-date 2026-11-23 --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_esg"))
        .arg(&world.config_path)
        .env("RUST_LOG", "info")
        .output()
        .expect("esg runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("output files are written in PLAINTEXT"),
        "plaintext mode is said at start-up: {said}"
    );
    assert!(
        !said.contains("tightened"),
        "a fresh start creates everything closed, with nothing to tighten: {said}"
    );

    let state = world.dir.path().join("state");
    assert_eq!(mode(&state), 0o700, "state directory");
    let mut databases = 0;
    for entry in std::fs::read_dir(&state).expect("state") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.contains(".db") {
            databases += 1;
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    assert!(
        databases >= 3,
        "bus.db, producer.db, assembler.db and their WAL files"
    );

    let output = world.out();
    assert_eq!(mode(&output), 0o750, "output directory");
    for entry in std::fs::read_dir(&output).expect("out") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o640, "{}", path.display());
    }
    let mut log_files = 0;
    for entry in std::fs::read_dir(&logs).expect("logs") {
        let path = entry.expect("entry").path();
        log_files += 1;
        assert_eq!(mode(&path), 0o640, "{}", path.display());
    }
    assert!(log_files > 0, "a log file was written");
    assert_eq!(mode(&logs) & 0o027, 0, "log directory not open to others");
}

/// A group the test may give files to, other than its primary one when it can: any group when
/// it runs as root, else one of its supplementary groups.
fn other_group() -> (String, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().expect("id runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let primary: u32 = id("-g").parse().expect("gid");
    if id("-u") == "0" {
        return ("daemon".into(), 1);
    }
    let gid = id("-G")
        .split_whitespace()
        .filter_map(|g| g.parse::<u32>().ok())
        .find(|g| *g != primary)
        .unwrap_or(primary);
    (gid.to_string(), gid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_belong_to_the_configured_group() {
    use std::os::unix::fs::MetadataExt;
    let world = World::start(quiet_sim(30), "").await;
    let (group, gid) = other_group();
    world.replace_in_config("[output]", &format!("[output]\ngroup = \"{group}\""));
    // An existing directory of another group, and too open: given to the group, 2750.
    std::fs::create_dir(world.out()).expect("out");
    std::fs::set_permissions(world.out(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" run --once --business-date 2026-11-23 --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_esg"))
        .arg(&world.config_path)
        .output()
        .expect("esg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = std::fs::metadata(world.out()).expect("out");
    assert_eq!(dir.gid(), gid, "output directory's group");
    assert_eq!(mode(&world.out()), 0o2750, "set-group-ID, group may read");
    let mut files = 0;
    for entry in std::fs::read_dir(world.out()).expect("out") {
        let path = entry.expect("entry").path();
        files += 1;
        let meta = std::fs::metadata(&path).expect("file");
        assert_eq!(meta.gid(), gid, "{}", path.display());
        assert_eq!(mode(&path), 0o640, "{}", path.display());
    }
    assert!(files >= 3, "ratings, errors and summary");

    // A group that does not exist is a configuration error naming the key.
    world.replace_in_config(
        &format!("group = \"{group}\""),
        "group = \"no-such-group-esg\"",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_esg"))
        .args(["check-config", "--config"])
        .arg(&world.config_path)
        .output()
        .expect("esg runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("output.group") && said.contains("no group"),
        "{said}"
    );
}

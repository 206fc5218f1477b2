//! Retention end to end through the `esg` binary: day files older than `[retention] files`
//! (by the business date in their names) go from the output directory and the delivery target,
//! old logs and a killed writer's stale temporary files go too, each removal is audited; a file
//! the target refuses to remove is reported, alerted (`purge_refused`) and exits 1.

mod common;

use common::webhook::{alerts_config, kinds, receiver};
use common::*;
use std::path::Path;
use std::process::Command;

fn touch(path: &Path, ago: &str) {
    std::fs::write(path, b"x\n").expect("write");
    let status = Command::new("touch")
        .args(["-d", ago])
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_past_retention_go_everywhere_audited_and_a_refusal_is_loud() {
    let (url, got) = receiver().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let (share, logs) = (tmp.path().join("share"), tmp.path().join("logs"));
    std::fs::create_dir_all(&share).expect("share");
    std::fs::create_dir_all(&logs).expect("logs");
    let world = World::start(
        quiet_sim(10),
        &format!(
            "[retention]\nfiles = \"30days\"\nlogs = \"30days\"\n[log]\ndir = \"{}\"\n{}\n\
             [[delivery]]\nkind = \"dir\"\nname = \"share\"\npath = \"{}\"\n",
            logs.display(),
            alerts_config(&url),
            share.display()
        ),
    )
    .await;
    let out = world.out();
    std::fs::create_dir_all(&out).expect("out");
    let today = chrono::Utc::now().date_naive();
    let recent = (today - chrono::Duration::days(3))
        .format("%Y%m%d")
        .to_string();
    // Old by the date in their names, however new their modification time.
    for dir in [&out, &share] {
        for name in [
            "FirmESGRatings_20250101.csv.age".to_owned(),
            "FirmESGRatings_20250101_summary.json.age".to_owned(),
            format!("FirmESGRatings_{recent}.csv.age"),
            "notes.txt".to_owned(),
        ] {
            std::fs::write(dir.join(&name), b"x\n").expect("write");
        }
    }
    touch(
        &out.join(".FirmESGRatings_20261120.csv.tmp-99-0"),
        "3 days ago",
    );
    touch(
        &out.join(".FirmESGRatings_20261120_errors.csv.tmp-98-0"),
        "1 hour ago",
    );
    std::fs::write(logs.join("esg.2025-01-01.log"), b"{}\n").expect("log");
    std::fs::write(
        logs.join(format!("esg.{}.log", today.format("%Y-%m-%d"))),
        b"{}\n",
    )
    .expect("log");

    let purge = |extra: &[&str]| {
        let mut c = esg_command(["purge", "--config"]);
        c.arg(&world.config_path).args(extra);
        outcome(&mut c)
    };
    let before = (names_in(&out), names_in(&share), names_in(&logs));
    let (code, said) = purge(&["--dry-run"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("would remove").count(), 6, "{said}");
    assert_eq!(
        (names_in(&out), names_in(&share), names_in(&logs)),
        before,
        "a dry run removed something"
    );

    let (code, said) = purge(&[]);
    assert_eq!(code, Some(0), "{said}");
    let kept_out = names_in(&out);
    assert_eq!(
        kept_out,
        [
            ".FirmESGRatings_20261120_errors.csv.tmp-98-0".to_owned(),
            format!("FirmESGRatings_{recent}.csv.age"),
            "notes.txt".to_owned()
        ],
        "{said}"
    );
    assert_eq!(
        names_in(&share),
        [
            format!("FirmESGRatings_{recent}.csv.age"),
            "notes.txt".to_owned()
        ]
    );
    assert_eq!(
        names_in(&logs),
        [format!("esg.{}.log", today.format("%Y-%m-%d"))]
    );
    let audit = esg_audit::read(&world.dir.path().join("state").join("audit")).expect("audit");
    let purged: Vec<&esg_audit::Entry> = audit.iter().filter(|e| e.action == "purged").collect();
    assert_eq!(purged.len(), 6, "{purged:?}");
    assert!(purged
        .iter()
        .any(|e| e.details.get("target").is_some_and(|t| t == "share")));

    // The share refuses to remove an old file: printed, alerted, exit 1; the rest goes on.
    let locked = share.join("FirmESGRatings_20250102.csv.age");
    std::fs::write(&locked, b"x\n").expect("write");
    std::fs::write(out.join("FirmESGRatings_20250102.csv.age"), b"x\n").expect("write");
    let _hold = Immutable::new(&locked);
    let (code, said) = purge(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("REFUSED share:") && said.contains("refuses the removal"),
        "{said}"
    );
    assert!(locked.exists());
    assert!(
        !out.join("FirmESGRatings_20250102.csv.age").exists(),
        "{said}"
    );
    assert!(
        kinds(&got).contains(&("purge_refused".into(), "firing".into())),
        "{:?}",
        kinds(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_purge_says_so_and_removes_nothing() {
    let world = World::start(quiet_sim(5), "").await;
    let (code, said) = outcome(esg_command(["purge", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("no [retention] policy"), "{said}");
}

/// Rows of `sql` (a count) in the SQLite database at `path`.
fn count(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .expect("open")
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_runs_and_the_last_scores_of_departed_accounts_go_by_their_periods() {
    let world = World::start(
        quiet_sim(12),
        "[retention]\nhistory = \"30days\"\ndeparted = \"30days\"\n",
    )
    .await;
    let state = world.dir.path().join("state");
    let (producer, assembler, bus) = (
        state.join("producer.db"),
        state.join("assembler.db"),
        state.join("bus.db"),
    );
    let run = |day: &str| {
        let (code, said) = outcome(
            esg_command(["run", "--once", "--business-date", day, "--config"])
                .arg(&world.config_path),
        );
        assert_eq!(code, Some(0), "{said}");
    };
    run("2025-01-06");
    let old_runs = "SELECT COUNT(*) FROM runs WHERE business_date = '2025-01-06'";
    assert_eq!(count(&producer, old_runs), 1);
    assert_eq!(count(&assembler, old_runs), 1);
    assert_eq!(
        count(
            &assembler,
            "SELECT COUNT(*) FROM history WHERE business_date = '2025-01-06'"
        ),
        1
    );

    // An account closes; the next run (whose start purges) no longer lists it.
    let active = active_ids(&world.sim).await;
    let leaving = active[3].clone();
    world.sim.set_status(&leaving, "CLOSED");
    let recent = (chrono::Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    run(&recent);
    assert_eq!(
        count(&producer, old_runs),
        0,
        "the old run leaves the producer"
    );
    assert_eq!(count(&assembler, old_runs), 0, "and the assembler");
    assert_eq!(
        count(
            &assembler,
            "SELECT COUNT(*) FROM history WHERE business_date = '2025-01-06'"
        ),
        0,
        "and the history"
    );
    assert_eq!(
        count(
            &assembler,
            &format!("SELECT COUNT(*) FROM runs WHERE business_date = '{recent}'")
        ),
        1,
        "a recent run stays"
    );
    let of_leaving = |table: &str, column: &str| {
        format!("SELECT COUNT(*) FROM {table} WHERE {column} = '{leaving}'")
    };
    assert_eq!(count(&assembler, &of_leaving("roster", "account_id")), 0);
    assert_eq!(
        count(&assembler, &of_leaving("scores", "account_id")),
        1,
        "a departed account's last score is kept for its period"
    );

    // Its last score is older than the period now (scored 40 days ago).
    let ago = (chrono::Utc::now() - chrono::Duration::days(40)).timestamp_millis();
    rusqlite::Connection::open(&assembler)
        .expect("open")
        .execute(
            "UPDATE scores SET scored_at_ms = ?1 WHERE account_id = ?2",
            rusqlite::params![ago, leaving],
        )
        .expect("age the score");
    let (code, said) =
        outcome(esg_command(["purge", "--dry-run", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("would remove 1 departed account(s)"),
        "{said}"
    );
    assert_eq!(count(&assembler, &of_leaving("scores", "account_id")), 1);

    let (code, said) = outcome(esg_command(["purge", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("removed 1 departed account(s)"), "{said}");
    assert_eq!(count(&assembler, &of_leaving("scores", "account_id")), 0);
    assert_eq!(
        count(&producer, &of_leaving("last_scores", "account_id")),
        0
    );
    assert_eq!(
        count(&bus, &of_leaving("log", "key")),
        0,
        "nor in the embedded log"
    );
    assert_eq!(
        count(&assembler, "SELECT COUNT(*) FROM scores"),
        active.len() as i64 - 1,
        "the active accounts keep theirs"
    );
    let trail = std::fs::read_to_string(state.join("audit").join("audit.jsonl")).expect("audit");
    assert!(trail.contains("retention.history"), "{trail}");
    assert!(trail.contains("retention.departed"), "{trail}");
    assert!(
        !trail.contains(&leaving),
        "the audit trail names no account"
    );
}

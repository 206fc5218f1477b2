//! The warehouse's Parquet end to end, read by DuckDB (the PyPI `duckdb` module, as a warehouse
//! would read it): with `[output] parquet = true` a real day writes
//! `out/parquet/business_date=YYYY-MM-DD/FirmESGRatings_YYYYMMDD.parquet` holding exactly the
//! ratings file's rows (ids, names, statuses, scores with `N/A` as NULL, dates) and exactly its
//! score sums, typed DECIMAL(5,2) and DATE; a re-run rewrites the partition with the re-run's
//! rows; with `[encryption]` only `….parquet.age` is on disk, Debian's `age` CLI decrypts it to
//! the same rows, and `esg erase` takes an account out of it; `esg purge` takes a day's
//! partition with the day's files. DuckDB missing is a failure that says how to install it.

mod common;

use common::*;
use rust_decimal::Decimal;
use std::path::Path;
use std::str::FromStr;

/// Asks DuckDB for the column types, the rows and the score sums of the Parquet files under
/// `root` (Hive partitioning on), as JSON.
const DUCKDB_SCRIPT: &str = r#"
import json, sys
try:
    import duckdb
except ImportError as e:
    print(f"the Python module duckdb is not importable ({e}): pip install duckdb (ops/test-all.sh does)", file=sys.stderr)
    sys.exit(3)
root = sys.argv[1]
con = duckdb.connect()
src = "read_parquet(?, hive_partitioning = true)"
files = [root + "/*/*.parquet"]
types = {name: kind for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM {src}", files).fetchall()}
scores = ["overall_score", "environmental_score", "social_score", "governance_score", "primary_focus_score"]
columns = ["account_id", "account_name"] + [f"CAST({c} AS VARCHAR)" for c in scores[:4]] + [
    "primary_focus", "CAST(primary_focus_score AS VARCHAR)", "CAST(analysis_date AS VARCHAR)",
    "status", "CAST(business_date AS VARCHAR)"]
rows = con.execute(f"SELECT {', '.join(columns)} FROM {src} ORDER BY account_id", files).fetchall()
sums = con.execute(
    f"SELECT {', '.join(f'CAST(SUM({c}) AS VARCHAR)' for c in scores[:4])} FROM {src}", files
).fetchone()
print(json.dumps({"types": types, "rows": rows, "sums": list(sums)}))
"#;

/// What DuckDB read.
struct Read {
    types: serde_json::Value,
    rows: Vec<Vec<Option<String>>>,
    sums: Vec<Option<String>>,
}

fn duckdb(root: &Path) -> Read {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(root)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "DuckDB over {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("DuckDB's JSON");
    let strings = |v: &serde_json::Value| -> Vec<Option<String>> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|c| c.as_str().map(str::to_owned))
            .collect()
    };
    Read {
        types: json["types"].clone(),
        rows: json["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(strings)
            .collect(),
        sums: strings(&json["sums"]),
    }
}

/// A cell as the CSV's reader means it: the spreadsheet guard `'` before a formula trigger
/// removed, `N/A` as nothing.
fn value(cell: &str) -> Option<String> {
    let cell = match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r', '\n']) => rest,
        _ => cell,
    };
    (cell != "N/A").then(|| cell.to_owned())
}

/// DuckDB reads exactly the rows and score sums of the ratings file `csv` (business date
/// `day`) from the Parquet under `root`, typed as the schema says. Returns the rows.
fn assert_parquet_is_the_csv(root: &Path, csv: &Path, day: &str) -> Vec<Vec<Option<String>>> {
    let read = duckdb(root);
    for (column, kind) in [
        ("account_id", "VARCHAR"),
        ("account_name", "VARCHAR"),
        ("overall_score", "DECIMAL(5,2)"),
        ("environmental_score", "DECIMAL(5,2)"),
        ("social_score", "DECIMAL(5,2)"),
        ("governance_score", "DECIMAL(5,2)"),
        ("primary_focus", "VARCHAR"),
        ("primary_focus_score", "DECIMAL(5,2)"),
        ("analysis_date", "DATE"),
        ("status", "VARCHAR"),
        ("business_date", "DATE"),
    ] {
        assert_eq!(read.types[column], kind, "{column}: {}", read.types);
    }
    let records = read_csv(csv);
    let expected: Vec<Vec<Option<String>>> = records[1..]
        .iter()
        .map(|r| {
            let mut row: Vec<Option<String>> = r.iter().map(|c| value(c)).collect();
            row.push(Some(day.to_owned()));
            row
        })
        .collect();
    assert!(expected.len() > 10, "a real day: {} rows", expected.len());
    assert_eq!(read.rows.len(), expected.len(), "as many rows as the CSV");
    for (got, want) in read.rows.iter().zip(&expected) {
        assert_eq!(got, want, "the row of {:?}", want[0]);
    }
    for (i, sum) in read.sums.iter().enumerate() {
        let exact: Decimal = expected
            .iter()
            .filter_map(|r| r[2 + i].as_deref())
            .map(|c| Decimal::from_str(c).expect("a score"))
            .sum();
        assert_eq!(
            sum.as_deref(),
            Some(format!("{:.2}", exact).as_str()),
            "the sum of {}",
            records[0][2 + i]
        );
    }
    read.rows
}

/// The simulator's day with partial and failed accounts and names a spreadsheet would run.
fn sim() -> esg_simulator::SimConfig {
    esg_simulator::SimConfig {
        permanent_error_rate: 0.05,
        partial_rate: 0.1,
        transient_error_rate: 0.0,
        timeout_rate: 0.0,
        ..quiet_sim(150)
    }
}

async fn world_with_parquet(extra: &str) -> World {
    let world = World::start(sim(), extra).await;
    world.replace_in_config("[output]\n", "[output]\nparquet = true\n");
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_exactly_the_csv_rows_and_sums_from_the_days_parquet() {
    let share = tempfile::tempdir().expect("share");
    let world = world_with_parquet(&format!(
        "[[delivery]]\nkind = \"dir\"\nname = \"share\"\npath = \"{}\"\n",
        share.path().display()
    ))
    .await;
    let day = date("2026-11-23");
    run_day(&world, day).await;
    let partition = world.out().join("parquet/business_date=2026-11-23");
    assert_eq!(names_in(&partition), ["FirmESGRatings_20261123.parquet"]);
    let rows = assert_parquet_is_the_csv(
        &world.out().join("parquet"),
        &world.csv_path(day),
        "2026-11-23",
    );
    let statuses: std::collections::BTreeSet<_> =
        rows.iter().filter_map(|r| r[9].clone()).collect();
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        ["Failed", "Partial", "Successful"],
        "the day has every status"
    );
    assert!(
        rows.iter().any(|r| r[1]
            .as_deref()
            .is_some_and(|n| n.starts_with(['=', '+', '-', '@']))),
        "a name the CSV neutralises is the name itself in the Parquet"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(
            mode(&partition.join("FirmESGRatings_20261123.parquet")),
            0o640
        );
        assert_eq!(mode(&partition), 0o750);
    }
    // Delivered with the day's files.
    let delivered = std::fs::read(share.path().join("FirmESGRatings_20261123.parquet"))
        .expect("the Parquet is delivered");
    assert_eq!(
        delivered,
        std::fs::read(partition.join("FirmESGRatings_20261123.parquet")).expect("local")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_rewrites_the_days_partition_with_the_rerun_rows() {
    let world = world_with_parquet("").await;
    let day = date("2026-11-23");
    run_day(&world, day).await;
    let root = world.out().join("parquet");
    let before = assert_parquet_is_the_csv(&root, &world.csv_path(day), "2026-11-23");
    let chosen: Vec<String> = before
        .iter()
        .filter(|r| r[9].as_deref() == Some("Successful"))
        .map(|r| r[0].clone().expect("id"))
        .step_by(20)
        .take(3)
        .collect();
    assert_eq!(chosen.len(), 3);
    world.sim.rerate();
    rerun(&world, day, &chosen).await;
    let after = assert_parquet_is_the_csv(&root, &world.csv_path(day), "2026-11-23");
    let changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(_, a)| a[0].clone().expect("id"))
        .collect();
    assert_eq!(changed, chosen, "only the re-run rows changed");
    assert_eq!(
        names_in(&root.join("business_date=2026-11-23")),
        ["FirmESGRatings_20261123.parquet"],
        "one file in the partition, no temporary file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_parquet_is_only_ciphertext_decrypts_to_the_csv_rows_and_erasure_reaches_it() {
    let keys = tempfile::tempdir().expect("keys");
    let officer = keygen(keys.path(), "officer");
    let world = world_with_parquet(&format!(
        "[encryption]\nrecipients = [\"{}\"]\n",
        officer.recipient
    ))
    .await;
    let day = date("2026-11-23");
    run_day(&world, day).await;
    for file in files_under(&world.out()) {
        assert!(
            file.extension().is_some_and(|e| e == "age"),
            "only ciphertext on disk: {}",
            file.display()
        );
    }
    let sealed = world
        .out()
        .join("parquet/business_date=2026-11-23/FirmESGRatings_20261123.parquet.age");
    let csv_sealed = world.out().join("FirmESGRatings_20261123.csv.age");
    let decrypted_rows = |look: &Path| {
        let partition = look.join("parquet/business_date=2026-11-23");
        std::fs::create_dir_all(&partition).expect("partition");
        let parquet = age_decrypt(&officer.identity, &sealed).expect("the officer decrypts");
        assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));
        std::fs::write(partition.join("FirmESGRatings_20261123.parquet"), parquet).expect("write");
        let csv = look.join("ratings.csv");
        std::fs::write(
            &csv,
            age_decrypt(&officer.identity, &csv_sealed).expect("csv"),
        )
        .expect("write");
        assert_parquet_is_the_csv(&look.join("parquet"), &csv, "2026-11-23")
    };
    let look = tempfile::tempdir().expect("look");
    let rows = decrypted_rows(look.path());

    // `esg erase` rewrites the Parquet without the account, encrypted again.
    let id = rows[7][0].clone().expect("id");
    let (code, said) = outcome(
        esg_command(["erase", "--config"])
            .arg(&world.config_path)
            .args(["--account", &id, "--reason", "REQ-1", "--identity"])
            .arg(&officer.identity),
    );
    assert_eq!(code, Some(0), "{said}");
    let look = tempfile::tempdir().expect("look");
    let after = decrypted_rows(look.path());
    assert_eq!(after.len(), rows.len() - 1);
    assert!(after.iter().all(|r| r[0].as_deref() != Some(id.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_day_takes_its_parquet_partition_with_it() {
    let world = world_with_parquet("[retention]\nfiles = \"30days\"\n").await;
    run_day(&world, date("2025-01-02")).await;
    let root = world.out().join("parquet");
    assert_eq!(
        names_in(&root.join("business_date=2025-01-02")),
        ["FirmESGRatings_20250102.parquet"]
    );
    let (code, said) = outcome(esg_command(["purge", "--config"]).arg(&world.config_path));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("FirmESGRatings_20250102.parquet"),
        "the purge names it: {said}"
    );
    assert!(!root.exists(), "the empty partition and parquet/ are gone");
    assert!(!world.csv_path(date("2025-01-02")).exists());
}

/// A tmpfs mounted for a test (root only; CI runs as root), unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(path).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0750"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(path.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_parquet_fails_the_rerun_and_leaves_every_file_as_it_was() {
    if !is_root() {
        eprintln!("not root: cannot mount a small tmpfs; parquet unit tests cover a failed write");
        return;
    }
    let world = world_with_parquet("").await;
    let root = world.out().join("parquet");
    let _mount = Mount::tmpfs(&root, "512k").expect("root can mount a tmpfs");
    let day = date("2026-11-23");
    run_day(&world, day).await;
    let partition = root.join("business_date=2026-11-23");
    let parquet = partition.join("FirmESGRatings_20261123.parquet");
    let csv = world.csv_path(day);
    let (parquet_before, csv_before) = (
        std::fs::read(&parquet).expect("parquet"),
        std::fs::read(&csv).expect("csv"),
    );
    let ids: Vec<String> = read_csv(&csv)[1..4].iter().map(|r| r[0].clone()).collect();

    // The Parquet's disk is full; the ratings file's is not.
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&root)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<usize>().ok())
            .expect("df prints the bytes available")
    };
    std::fs::write(root.join("filler"), vec![0u8; free]).expect("fill the disk");
    world.sim.rerate();
    let err = esg::runner::Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("runner opens")
        .rerun(
            day,
            esg::runner::Selection::Accounts(ids),
            true,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("the Parquet does not fit");
    let text = format!("{err:#}");
    assert!(
        text.contains("No space left on device") || text.contains("os error 28"),
        "the cause is named: {text}"
    );
    assert!(text.contains("parquet"), "the path is named: {text}");
    assert_eq!(std::fs::read(&parquet).expect("parquet"), parquet_before);
    assert_eq!(std::fs::read(&csv).expect("csv"), csv_before);
    assert_eq!(names_in(&partition), ["FirmESGRatings_20261123.parquet"]);
    assert!(
        names_in(&world.out()).iter().all(|n| !n.contains(".tmp-")),
        "no temporary file left: {:?}",
        names_in(&world.out())
    );
}

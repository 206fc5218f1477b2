//! Encryption at rest of the outputs, checked with Debian's `age` CLI as the independent reader:
//! with `[encryption]` every output is `<name>.age` and nothing else is in the output directory,
//! a recipient's identity decrypts each to the bytes plaintext mode writes for the same vendor
//! answers, anyone else cannot, a damaged file does not decrypt, and a re-run rebuilds the
//! encrypted files from the job's state exactly as plaintext mode replaces the rows.

mod common;

use common::*;
use esg_assembler::output::file_names;
use esg_simulator::SimConfig;
use std::path::{Path, PathBuf};

/// Vendor answers that are the same in both worlds: partial and failed accounts by the seed, no
/// faults that depend on timing.
fn sim() -> SimConfig {
    SimConfig {
        permanent_error_rate: 0.05,
        partial_rate: 0.05,
        transient_error_rate: 0.0,
        timeout_rate: 0.0,
        ..quiet_sim(150)
    }
}

/// The errors file without its Last Attempt Time column (the time of each world's own call).
fn without_times(errors: &[u8]) -> Vec<String> {
    String::from_utf8(errors.to_vec())
        .expect("utf-8")
        .split("\r\n")
        .map(|line| line.rsplit_once(',').map_or(line, |(l, _)| l).to_owned())
        .collect()
}

/// The summary without what depends on when and how fast each world ran.
fn summary_facts(json: &[u8]) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                // `score_sums` after a re-run: plaintext mode copies the other rows and sums
                // them at the two decimals they show, encrypted mode rebuilds them from the
                // exact values (the averages agree).
                for key in [
                    "started_at",
                    "finished_at",
                    "deadline",
                    "duration_seconds",
                    "api_requests",
                    "score_sums",
                ] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(json).expect("summary JSON");
    strip(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_outputs_decrypt_with_the_age_cli_to_the_plaintext_bytes_and_only_for_recipients()
{
    let keys = tempfile::tempdir().expect("tempdir");
    let officer = keygen(keys.path(), "officer");
    let deputy = keygen(keys.path(), "deputy");
    let stranger = keygen(keys.path(), "stranger");
    let recipients_file = keys.path().join("recipients.txt");
    std::fs::write(
        &recipients_file,
        format!("# the deputy\n{}\n", deputy.recipient),
    )
    .expect("write recipients");

    let plain = World::start(sim(), "").await;
    let sealed = World::start(
        sim(),
        &format!(
            "[encryption]\nrecipients = [\"{}\"]\nrecipients_file = \"{}\"\n",
            officer.recipient,
            recipients_file.display()
        ),
    )
    .await;
    let day = date("2026-11-23");
    run_day(&plain, day).await;
    run_day(&sealed, day).await;

    let names = file_names(day);
    let plain_names = [
        &names.csv,
        &names.errors,
        &names.summary_json,
        &names.summary_html,
    ];
    let mut expected: Vec<String> = plain_names.iter().map(|n| format!("{n}.age")).collect();
    expected.sort();
    assert_eq!(
        names_in(&sealed.out()),
        expected,
        "nothing but the encrypted outputs in the output directory"
    );

    let open = |world: &World, name: &str| {
        let path = world.out().join(format!("{name}.age"));
        let bytes = std::fs::read(&path).expect("encrypted file");
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{name}");
        path
    };
    let read_plain = |name: &str| std::fs::read(plain.out().join(name)).expect("plain file");

    let csv = open(&sealed, &names.csv);
    let by_officer = age_decrypt(&officer.identity, &csv).expect("the officer decrypts");
    assert_eq!(
        by_officer,
        read_plain(&names.csv),
        "exactly the plaintext file"
    );
    assert_eq!(
        age_decrypt(&deputy.identity, &csv).expect("the deputy (recipients_file) decrypts"),
        by_officer
    );
    let err = age_decrypt(&stranger.identity, &csv).expect_err("not a recipient");
    assert!(err.contains("no identity matched"), "{err}");

    let errors = open(&sealed, &names.errors);
    let decrypted = age_decrypt(&officer.identity, &errors).expect("errors file");
    assert!(
        decrypted.len() > 100,
        "the seed gives failed and partial rows"
    );
    assert_eq!(
        without_times(&decrypted),
        without_times(&read_plain(&names.errors))
    );
    let summary = open(&sealed, &names.summary_json);
    let decrypted = age_decrypt(&officer.identity, &summary).expect("summary");
    assert_eq!(
        summary_facts(&decrypted),
        summary_facts(&read_plain(&names.summary_json))
    );

    // Damage is detected: a flipped byte in the payload, and a truncated file.
    let bytes = std::fs::read(&csv).expect("read");
    let damaged = keys.path().join("damaged.age");
    let mut flipped = bytes.clone();
    let at = flipped.len() - 200;
    flipped[at] ^= 0x01;
    std::fs::write(&damaged, &flipped).expect("write");
    assert!(
        age_decrypt(&officer.identity, &damaged).is_err(),
        "flipped byte"
    );
    std::fs::write(&damaged, &bytes[..bytes.len() - 17]).expect("write");
    assert!(
        age_decrypt(&officer.identity, &damaged).is_err(),
        "truncated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_rebuilds_the_encrypted_files_as_plaintext_mode_replaces_the_rows() {
    let keys = tempfile::tempdir().expect("tempdir");
    let officer = keygen(keys.path(), "officer");
    let plain = World::start(sim(), "").await;
    let sealed = World::start(
        sim(),
        &format!("[encryption]\nrecipients = [\"{}\"]\n", officer.recipient),
    )
    .await;
    let day = date("2026-11-23");
    run_day(&plain, day).await;
    run_day(&sealed, day).await;
    let names = file_names(day);
    let csv = sealed.out().join(format!("{}.age", names.csv));
    let before = age_decrypt(&officer.identity, &csv).expect("decrypts");

    // Three accounts the vendor rated (a failed one would fail again alike).
    let rated: Vec<String> = String::from_utf8_lossy(&before)
        .split("\r\n")
        .filter(|line| line.ends_with(",Successful"))
        .map(|line| line.split(',').next().unwrap_or_default().to_owned())
        .collect();
    let chosen = vec![rated[2].clone(), rated[40].clone(), rated[99].clone()];
    plain.sim.rerate();
    sealed.sim.rerate();
    rerun(&plain, day, &chosen).await;
    rerun(&sealed, day, &chosen).await;

    let after = age_decrypt(&officer.identity, &csv).expect("decrypts");
    let plain_after = std::fs::read(plain.out().join(&names.csv)).expect("plain");
    assert_eq!(
        after, plain_after,
        "the rebuilt file is the file whose rows plaintext mode replaced"
    );
    let changed: Vec<String> = String::from_utf8_lossy(&before)
        .split("\r\n")
        .zip(String::from_utf8_lossy(&after).split("\r\n"))
        .filter(|(b, a)| b != a)
        .map(|(_, a)| a.split(',').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(changed, chosen, "only the chosen rows changed");
    let summary = sealed.out().join(format!("{}.age", names.summary_json));
    let summary = age_decrypt(&officer.identity, &summary).expect("summary");
    let plain_summary = std::fs::read(plain.out().join(&names.summary_json)).expect("plain");
    assert_eq!(summary_facts(&summary), summary_facts(&plain_summary));
    assert_eq!(
        names_in(&sealed.out()).len(),
        4,
        "still only the four .age files"
    );

    // A later day is assembled: the state no longer holds the first day's rows, so a re-run of
    // it is refused before anything runs, naming what can be done instead.
    run_day(&sealed, date("2026-11-24")).await;
    let err = esg::runner::Runner::open(sealed.config(), esg_assembler::system_clock())
        .await
        .expect("opens")
        .rerun(
            day,
            esg::runner::Selection::Accounts(chosen.clone()),
            true,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("encrypted") && text.contains("2026-11-24"),
        "{text}"
    );
    assert_eq!(
        age_decrypt(&officer.identity, &csv).expect("decrypts"),
        after,
        "the day's file untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_file_keeps_the_rows_an_earlier_run_left_failed_by_its_deadline() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    let keys = tempfile::tempdir().expect("tempdir");
    let officer = keygen(keys.path(), "officer");
    // A slow vendor: 5 requests/s for 80 accounts cannot finish before the clock jumps.
    let world = World::start(
        SimConfig {
            rate_limit_per_second: Some(5),
            burst: 5,
            ..quiet_sim(80)
        },
        &format!("[encryption]\nrecipients = [\"{}\"]\n", officer.recipient),
    )
    .await;
    let mut config = world.config();
    config.esg_api.rate_limit_per_second = 5;
    config.esg_api.burst = Some(5);
    config.esg_api.batch_size = 1;
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock: esg_assembler::Clock =
        Arc::new(move || chrono::Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    let runner = esg::runner::Runner::open(config, clock)
        .await
        .expect("opens");
    let day = date("2026-11-23");
    let jump = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        offset.store(86_400, Ordering::SeqCst);
    });
    runner
        .run_daily(
            day,
            false,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("run ends");
    jump.await.expect("join");
    drop(runner);

    let csv = world.out().join(format!("{}.age", file_names(day).csv));
    let rows = |bytes: &[u8]| -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes)
            .records()
            .map(|r| r.expect("record").iter().map(str::to_owned).collect())
            .collect()
    };
    let errors = world.out().join(format!("{}.age", file_names(day).errors));
    let before = rows(&age_decrypt(&officer.identity, &csv).expect("decrypts"));
    let errors_before = rows(&age_decrypt(&officer.identity, &errors).expect("decrypts"));
    assert!(
        errors_before.iter().any(|r| r[2] == "DEADLINE"),
        "{errors_before:?}"
    );
    let deadline: Vec<&String> = before
        .iter()
        .filter(|r| r[9] == "Failed")
        .map(|r| &r[0])
        .collect();
    assert!(!deadline.is_empty(), "the deadline left accounts Failed");
    let chosen = before
        .iter()
        .find(|r| r[9] == "Successful")
        .map(|r| r[0].clone())
        .expect("a rated account");

    world.sim.rerate();
    rerun(&world, day, std::slice::from_ref(&chosen)).await;
    let after = rows(&age_decrypt(&officer.identity, &csv).expect("decrypts"));
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        if a[0] == chosen {
            assert_ne!(a, b, "the chosen row is re-rated");
        } else {
            assert_eq!(
                a, b,
                "every other row as it was, the deadline's Failed rows too"
            );
        }
    }
    // The errors file still says why: DEADLINE, not "never scored".
    let errors_after = rows(&age_decrypt(&officer.identity, &errors).expect("decrypts"));
    assert_eq!(errors_after, errors_before);
}

fn esg_reencrypt(world: &World, identity: &Path, extra: &[&str]) -> (Option<i32>, String) {
    outcome(
        esg_command(["reencrypt", "--config"])
            .arg(&world.config_path)
            .arg("--identity")
            .arg(identity)
            .args(extra),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_moves_kept_files_to_the_new_recipients_without_plaintext_on_disk() {
    let keys = tempfile::tempdir().expect("tempdir");
    let leaving = keygen(keys.path(), "leaving");
    let joining = keygen(keys.path(), "joining");
    let stranger = keygen(keys.path(), "stranger");
    let world = World::start(
        sim(),
        &format!("[encryption]\nrecipients = [\"{}\"]\n", leaving.recipient),
    )
    .await;
    let days = [date("2026-11-23"), date("2026-11-24")];
    for day in days {
        run_day(&world, day).await;
    }
    let listed = names_in(&world.out());
    let files: Vec<PathBuf> = listed.iter().map(|n| world.out().join(n)).collect();
    assert!(files.len() >= 6, "two days of outputs: {listed:?}");
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| age_decrypt(&leaving.identity, f).expect("decrypts"))
        .collect();

    // The recipients change: the next file is for the new officer; the kept ones follow with
    // `esg reencrypt`, decrypted by the old officer's identity.
    world.replace_in_config(&leaving.recipient, &joining.recipient);

    // An identity that opens none of them changes nothing.
    let untouched: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let (code, said) = esg_reencrypt(&world, &stranger.identity, &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("cannot decrypt"), "{said}");
    for (f, bytes) in files.iter().zip(&untouched) {
        assert_eq!(
            &std::fs::read(f).expect("read"),
            bytes,
            "{} left as it was",
            f.display()
        );
    }

    // A damaged file fails alone; the others go through.
    let damaged = &files[0];
    let mut bytes = std::fs::read(damaged).expect("read");
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    std::fs::write(damaged, &bytes).expect("write");
    let (code, said) = esg_reencrypt(&world, &leaving.identity, &[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("FAILED") && said.contains("damaged"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(damaged).expect("read"),
        bytes,
        "the damaged file is left"
    );
    assert_eq!(
        names_in(&world.out()),
        listed,
        "no temporary or plaintext file is left"
    );
    for (f, plain) in files.iter().zip(&before).skip(1) {
        assert_eq!(
            &age_decrypt(&joining.identity, f).expect("the new officer reads it"),
            plain,
            "{}: the same content",
            f.display()
        );
        assert!(
            age_decrypt(&leaving.identity, f).is_err(),
            "{}: the old officer no longer can",
            f.display()
        );
    }

    // One date only, by name.
    let (code, said) = esg_reencrypt(
        &world,
        &joining.identity,
        &["--business-date", "2026-11-24"],
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("FirmESGRatings_20261124") && !said.contains("FirmESGRatings_20261123"),
        "{said}"
    );
}

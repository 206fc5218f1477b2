use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

fn run() -> RunRef {
    RunRef {
        run_id: "2026-11-23".into(),
        business_date: NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
        min_attempts: 3,
    }
}

/// A target that fails its first `failures` puts with `error`, then keeps what it is given.
struct Flaky {
    failures: u32,
    error: DeliveryError,
    calls: AtomicU32,
    kept: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Target for Flaky {
    fn object(&self, name: &str) -> String {
        format!("flaky://{name}")
    }
    async fn put(&self, file: &LocalFile) -> Result<(), DeliveryError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            return Err(self.error.clone());
        }
        self.kept.lock().expect("lock").push(file.name.clone());
        Ok(())
    }
    async fn check(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
    async fn list(&self) -> Result<Vec<String>, DeliveryError> {
        Ok(self.kept.lock().expect("lock").clone())
    }
    async fn delete(&self, name: &str) -> Result<(), DeliveryError> {
        self.kept.lock().expect("lock").retain(|n| n != name);
        Ok(())
    }
}

/// A target that fails its first `failures` puts with `error`.
fn flaky(failures: u32, error: DeliveryError) -> Flaky {
    Flaky {
        failures,
        error,
        calls: AtomicU32::new(0),
        kept: Mutex::new(Vec::new()),
    }
}

/// `d` delivers `paths` of the test run until `deadline`.
async fn deliver(d: &Deliveries, paths: &[PathBuf], deadline: DateTime<Utc>) -> Report {
    d.deliver(&run(), paths, deadline, None, &CancellationToken::new())
        .await
}

fn with_target(target: Flaky, record: &Path) -> Deliveries {
    Deliveries {
        targets: vec![Named {
            name: "flaky".into(),
            kind: "dir",
            target: Box::new(target),
            busy: tokio::sync::Mutex::new(()),
        }],
        record: Record::new(record.to_owned()),
        policy: fast(),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let a = dir.join("FirmESGRatings_20261123_summary.json");
    let b = dir.join("FirmESGRatings_20261123.csv");
    std::fs::write(&a, b"{}\n").expect("write");
    std::fs::write(&b, b"Account ID\nACC1\n").expect("write");
    vec![a, b]
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let p = RetryPolicy {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(10),
        min_attempts: 3,
    };
    let waits: Vec<u64> = (1..=5).map(|a| p.backoff(a).as_secs()).collect();
    assert_eq!(waits, [2, 4, 8, 10, 10]);
}

#[test]
fn sha256_is_the_lowercase_hex_of_the_bytes() {
    let (hash, size) = sha256_of(&mut &b"abc"[..]).expect("hash");
    assert_eq!(
        hash,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(size, 3);
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_each_file_recorded_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let record = tmp.path().join("deliveries.jsonl");
    let d = with_target(
        flaky(2, DeliveryError::retryable("connection reset")),
        &record,
    );
    let paths = files(tmp.path());
    let deadline = Utc::now() + chrono::Duration::minutes(1);
    let report = deliver(&d, &paths, deadline).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.delivered.len(), 2);
    assert!(report.delivered.iter().all(|d| d.attempts == 3));
    let entries = Record::read(&record).expect("record");
    let outcomes: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.file.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("FirmESGRatings_20261123_summary.json", "delivered"),
            ("FirmESGRatings_20261123.csv", "delivered")
        ]
    );
    let expected = LocalFile::read(&paths[1]).expect("read").sha256;
    assert_eq!(entries[1].sha256.as_deref(), Some(expected.as_str()));
    assert_eq!(
        entries[1].object.as_deref(),
        Some("flaky://FirmESGRatings_20261123.csv")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&record)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "record mode {mode:o}");
    }
}

#[tokio::test]
async fn a_permanent_refusal_is_not_retried() {
    let tmp = tempfile::tempdir().expect("tmp");
    let record = tmp.path().join("deliveries.jsonl");
    let d = with_target(
        flaky(
            u32::MAX,
            DeliveryError::permanent("host key does not match"),
        ),
        &record,
    );
    let paths = files(tmp.path());
    let deadline = Utc::now() + chrono::Duration::minutes(1);
    let report = deliver(&d, &paths, deadline).await;
    assert_eq!(report.failed.len(), 1);
    let failed = &report.failed[0];
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.files.len(), 2);
    assert!(
        failed.to_string().contains("host key does not match"),
        "{failed}"
    );
    let entries = Record::read(&record).expect("record");
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e.outcome == "failed" && e.error.as_deref() == Some("host key does not match")));
}

#[tokio::test]
async fn past_the_deadline_a_target_is_still_tried_the_minimum_number_of_times() {
    let tmp = tempfile::tempdir().expect("tmp");
    let record = tmp.path().join("deliveries.jsonl");
    let d = with_target(
        flaky(u32::MAX, DeliveryError::retryable("timed out")),
        &record,
    );
    let paths = files(tmp.path());
    let deadline = Utc::now() - chrono::Duration::minutes(1);
    let report = deliver(&d, &paths, deadline).await;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].attempts, MIN_ATTEMPTS);
}

#[tokio::test]
async fn a_local_file_that_cannot_be_read_fails_every_target_without_a_call() {
    let tmp = tempfile::tempdir().expect("tmp");
    let record = tmp.path().join("deliveries.jsonl");
    let d = with_target(flaky(0, DeliveryError::retryable("unused")), &record);
    let report = d
        .deliver(
            &run(),
            &[tmp.path().join("missing.csv")],
            Utc::now(),
            None,
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].error.message.contains("missing.csv"));
    assert_eq!(report.failed[0].attempts, 0);
}

#[tokio::test]
async fn a_share_gets_whole_files_0640_and_a_second_delivery_replaces_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (local, share) = (tmp.path().join("out"), tmp.path().join("share"));
    std::fs::create_dir_all(&local).expect("mkdir");
    std::fs::create_dir_all(&share).expect("mkdir");
    let config = TargetConfig::Dir(dir::DirConfig {
        name: Some("share".into()),
        path: share.clone(),
    });
    let d = Deliveries::new(&[config], &tmp.path().join("deliveries.jsonl")).expect("build");
    assert!(d.check().await.is_empty());
    let paths = files(&local);
    let deadline = Utc::now() + chrono::Duration::minutes(1);
    let report = deliver(&d, &paths, deadline).await;
    assert!(report.is_complete(), "{report:?}");
    std::fs::write(&paths[1], b"Account ID\nACC1\nACC2\n").expect("rewrite");
    let report = deliver(&d, &paths, deadline).await;
    assert!(report.is_complete(), "{report:?}");
    let mut names: Vec<String> = std::fs::read_dir(&share)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "FirmESGRatings_20261123.csv",
            "FirmESGRatings_20261123_summary.json"
        ]
    );
    let copy = share.join("FirmESGRatings_20261123.csv");
    assert_eq!(
        std::fs::read(&copy).expect("read"),
        b"Account ID\nACC1\nACC2\n"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}

#[tokio::test]
async fn a_share_that_is_not_mounted_is_retried_then_reported_and_gets_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let share = tmp.path().join("not-mounted");
    let config = TargetConfig::Dir(dir::DirConfig {
        name: None,
        path: share.clone(),
    });
    let d = Deliveries::new(&[config], &tmp.path().join("deliveries.jsonl"))
        .expect("build")
        .with_policy(fast());
    assert_eq!(d.names(), [format!("dir:{}", share.display())]);
    assert_eq!(d.check().await.len(), 1);
    let paths = files(tmp.path());
    let report = deliver(&d, &paths, Utc::now()).await;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].attempts, MIN_ATTEMPTS);
    assert!(
        report.failed[0]
            .error
            .message
            .contains("is the share mounted?"),
        "{}",
        report.failed[0].error
    );
    assert!(!share.exists(), "the share's mount point was created");
}

#[test]
fn targets_are_read_from_delivery_tables() {
    #[derive(serde::Deserialize)]
    struct File {
        delivery: Vec<TargetConfig>,
    }
    let text = r#"
        [[delivery]]
        kind = "dir"
        path = "/mnt/compliance"

        [[delivery]]
        kind = "s3"
        name = "vault"
        bucket = "esg-ratings"
        prefix = "daily/"
        server_side_encryption = "sse-kms"
        kms_key_id = "alias/esg"

        [[delivery]]
        kind = "sftp"
        host = "sftp.firm.example"
        user = "esg"
        private_key_file = "/etc/esg/sftp_key"
        host_key_fingerprint = "SHA256:abc"
    "#;
    let file: File = toml::from_str(text).expect("parse");
    let kinds: Vec<&str> = file.delivery.iter().map(TargetConfig::kind).collect();
    assert_eq!(kinds, ["dir", "s3", "sftp"]);
    let names: Vec<String> = file.delivery.iter().map(TargetConfig::name).collect();
    assert_eq!(
        names,
        ["dir:/mnt/compliance", "vault", "sftp:sftp.firm.example"]
    );
    let unknown =
        toml::from_str::<File>("[[delivery]]\nkind = \"dir\"\npath = \"/x\"\nmode = \"0777\"\n");
    let err = unknown
        .err()
        .expect("an unknown key is refused")
        .to_string();
    assert!(err.contains("mode"), "{err}");
    let relative = TargetConfig::Dir(dir::DirConfig {
        name: None,
        path: "share".into(),
    });
    assert_eq!(relative.validate().err().map(|(k, _)| k), Some("path"));
}

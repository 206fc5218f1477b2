//! The S3 target against a real S3-compatible server: SeaweedFS (`weed mini`), which checks
//! signatures, access keys and `x-amz-checksum-sha256`, and keeps SSE-S3 and SSE-KMS (local KMS
//! provider). The server is `ESG_TEST_S3_ENDPOINT` with `ESG_TEST_S3_ACCESS_KEY_ID` and
//! `ESG_TEST_S3_SECRET_ACCESS_KEY` when set; otherwise `ops/services/s3.sh` starts one on a free
//! port, shared by the tests that run at the same time and stopped when the last of them ends.
//! The https tests (`tls_ca_file`) always start their own server the same way, with `S3_TLS_*`
//! set: a certificate for 127.0.0.1 from a throwaway CA ([`TestPki`]), which only they trust.
//! Each test has its own bucket. What the target wrote is read back with boto3, an independent
//! client, not with object_store.
//!
//! The server s3.sh starts also has a read-only identity (`S3_READONLY_*`: may read and list,
//! not write or delete), the store that refuses a removal; with `ESG_TEST_S3_ENDPOINT`, give
//! one as `ESG_TEST_S3_READONLY_ACCESS_KEY_ID` and `ESG_TEST_S3_READONLY_SECRET_ACCESS_KEY`, or
//! the test of a refused removal starts its own server.
//!
//! Needs python3 with boto3 (s3.sh installs it with pip), curl, and the weed binary (s3.sh
//! finds or builds it; `ops/services/s3.sh install` does only that).

use esg_auth::Secret;
use esg_delivery::s3::{S3Config, S3Target, MULTIPART_THRESHOLD};
use esg_delivery::{LocalFile, Target};
use esg_simulator::tls::TestPki;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The KMS key of the SSE-KMS tests: SeaweedFS's local KMS creates it on first use.
fn kms_key() -> String {
    std::env::var("ESG_TEST_S3_KMS_KEY_ID").unwrap_or_else(|_| "esg-delivery-test-key".to_owned())
}

/// boto3, pointed at the server: `python3 -c HELPER ENDPOINT CA KEY_ID SECRET COMMAND ARGS…`,
/// one JSON value on stdout. CA is the PEM file boto3 verifies an https server with, or empty.
const HELPER: &str = r#"
import base64, boto3, json, sys
endpoint, ca, key_id, secret, command, *args = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=ca or None,
                  aws_access_key_id=key_id, aws_secret_access_key=secret)
if command == "create-bucket":
    bucket, = args
    s3.create_bucket(Bucket=bucket)
    print("null")
elif command == "head":
    bucket, key = args
    h = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    checksum = h.get("ChecksumSHA256")
    print(json.dumps({"sse": h.get("ServerSideEncryption"), "kms_key": h.get("SSEKMSKeyId"),
                      "size": h["ContentLength"], "etag": h["ETag"],
                      # hex, as LocalFile has it; a multipart object's is a checksum of checksums
                      "sha256": base64.b64decode(checksum).hex() if checksum and "-" not in checksum else checksum}))
elif command == "download":
    bucket, key, path = args
    s3.download_file(bucket, key, path)
    print("null")
elif command == "put":
    bucket, key, body = args
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
    print("null")
elif command == "contents":
    bucket, = args
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    print(json.dumps({"keys": keys, "uploads": uploads}))
"#;

/// The S3 server and its admin identity; a server this process started is stopped on drop.
struct S3Server {
    endpoint: String,
    key_id: String,
    secret: String,
    /// An identity that may read and list but not write or delete: key id, secret.
    readonly: Option<(String, String)>,
    /// The CA of an https server's certificate (in `_dir`).
    ca: Option<PathBuf>,
    pid: Option<u32>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SIGKILL: its data is thrown away with the directory, and a graceful stop of
            // `weed mini` takes about ten seconds.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The running tests' server: alive while one of them holds it.
static SHARED: tokio::sync::Mutex<Weak<S3Server>> = tokio::sync::Mutex::const_new(Weak::new());
/// The same for the https tests.
static SHARED_TLS: tokio::sync::Mutex<Weak<S3Server>> = tokio::sync::Mutex::const_new(Weak::new());

/// The configured server, or the one the running tests share (started if none runs).
async fn server() -> Arc<S3Server> {
    if let Ok(endpoint) = std::env::var("ESG_TEST_S3_ENDPOINT") {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} with ESG_TEST_S3_ENDPOINT"))
        };
        return Arc::new(S3Server {
            endpoint,
            key_id: var("ESG_TEST_S3_ACCESS_KEY_ID"),
            secret: var("ESG_TEST_S3_SECRET_ACCESS_KEY"),
            readonly: std::env::var("ESG_TEST_S3_READONLY_ACCESS_KEY_ID")
                .ok()
                .zip(std::env::var("ESG_TEST_S3_READONLY_SECRET_ACCESS_KEY").ok()),
            ca: None,
            pid: None,
            _dir: None,
        });
    }
    shared(&SHARED, false).await
}

/// The server `slot` holds, or a new one (https with `tls`) that it then holds.
async fn shared(slot: &tokio::sync::Mutex<Weak<S3Server>>, tls: bool) -> Arc<S3Server> {
    let mut shared = slot.lock().await;
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(S3Server::start(tls).await);
    *shared = Arc::downgrade(&server);
    server
}

/// A new bucket for `test` on the server.
async fn bucket_for(test: &str) -> Bucket {
    server().await.bucket(test).await
}

/// A new bucket for `test` on a server with a read-only identity: the configured one if it has
/// one, else the one s3.sh starts.
async fn readonly_bucket_for(test: &str) -> Bucket {
    let server = server().await;
    let server = match server.readonly {
        Some(_) => server,
        None => shared(&SHARED, false).await,
    };
    server.bucket(test).await
}

/// A new bucket for `test` on the https server.
async fn tls_bucket_for(test: &str) -> Bucket {
    shared(&SHARED_TLS, true).await.bucket(test).await
}

impl S3Server {
    /// Runs s3.sh; with `tls`, https with a certificate of a new [`TestPki`] CA.
    async fn start(tls: bool) -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/services/s3.sh");
        let mut command = tokio::process::Command::new(script);
        command
            .arg(port.to_string())
            .arg(dir.path())
            .env("S3_READONLY_ACCESS_KEY_ID", "esgtestreader")
            .env(
                "S3_READONLY_SECRET_ACCESS_KEY",
                "esg-test-reader-secret-0123456789",
            );
        let mut ca = None;
        if tls {
            let pki = TestPki::generate(
                "esg-delivery s3 test CA",
                &["127.0.0.1".into(), "localhost".into()],
            )
            .expect("test PKI");
            // Beside the server's data, not in it: s3.sh empties `data/`.
            let files = pki.write(&dir.path().join("pki")).expect("PKI files");
            command
                .env("S3_TLS_CERT", &files.server_cert)
                .env("S3_TLS_KEY", &files.server_key)
                .env("S3_TLS_CA", &files.ca);
            ca = Some(files.ca);
        }
        // Minutes only when s3.sh has to build weed first; seconds otherwise.
        let out = tokio::time::timeout(Duration::from_secs(1800), command.output())
            .await
            .expect("s3.sh returns")
            .expect("s3.sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_owned)
        };
        let (Some(endpoint), Some(key_id), Some(secret), Some(pid), Some(ro_key), Some(ro_secret)) = (
            line("S3_ENDPOINT="),
            line("S3_ACCESS_KEY_ID="),
            line("S3_SECRET_ACCESS_KEY="),
            line("S3_PID="),
            line("S3_READONLY_ACCESS_KEY_ID="),
            line("S3_READONLY_SECRET_ACCESS_KEY="),
        ) else {
            panic!(
                "s3.sh did not start the server: {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let scheme = if tls { "https://" } else { "http://" };
        assert!(endpoint.starts_with(scheme), "s3.sh serves {endpoint}");
        S3Server {
            endpoint,
            key_id,
            secret,
            readonly: Some((ro_key, ro_secret)),
            ca,
            pid: Some(pid.parse().expect("S3_PID is a number")),
            _dir: Some(dir),
        }
    }

    /// Runs one HELPER command with the admin identity.
    async fn boto(&self, args: &[&str]) -> Value {
        let ca = self
            .ca
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let out = tokio::process::Command::new("python3")
            .args([
                "-c",
                HELPER,
                &self.endpoint,
                &ca,
                &self.key_id,
                &self.secret,
            ])
            .args(args)
            .output()
            .await
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "boto3 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON value")
    }

    /// A new, empty bucket for one test.
    async fn bucket(self: &Arc<Self>, test: &str) -> Bucket {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("esg-{test}-{}-{nanos}", std::process::id());
        self.boto(&["create-bucket", &name]).await;
        Bucket {
            server: Arc::clone(self),
            name,
        }
    }
}

/// One test's bucket.
struct Bucket {
    server: Arc<S3Server>,
    name: String,
}

impl Bucket {
    async fn head(&self, key: &str) -> Value {
        self.server.boto(&["head", &self.name, key]).await
    }

    async fn download(&self, key: &str, to: &Path) -> Vec<u8> {
        self.server
            .boto(&["download", &self.name, key, &to.display().to_string()])
            .await;
        std::fs::read(to).expect("downloaded file")
    }

    /// Puts `body` at `key` with boto3 (an object the target did not write).
    async fn put(&self, key: &str, body: &str) {
        self.server.boto(&["put", &self.name, key, body]).await;
    }

    /// The bucket's keys, sorted.
    async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = serde_json::from_value(self.contents().await["keys"].clone())
            .expect("keys are strings");
        keys.sort();
        keys
    }

    /// The bucket's keys and its unfinished multipart uploads.
    async fn contents(&self) -> Value {
        self.server.boto(&["contents", &self.name]).await
    }

    fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            name: None,
            bucket: self.name.clone(),
            prefix: prefix.into(),
            region: Some("us-east-1".into()),
            endpoint: Some(self.server.endpoint.clone()),
            server_side_encryption: None,
            kms_key_id: None,
            bucket_key: None,
            access_key_id: Some(self.server.key_id.clone()),
            secret_access_key: Some(Secret::new(self.server.secret.clone())),
            session_token: None,
            virtual_hosted_style: None,
            tls_ca_file: self.server.ca.clone(),
            timeout: Duration::from_secs(20),
        }
    }

    fn sse_kms(&self, prefix: &str) -> S3Config {
        S3Config {
            server_side_encryption: Some("sse-kms".into()),
            kms_key_id: Some(kms_key()),
            ..self.config(prefix)
        }
    }
}

/// Writes `bytes` to `dir/name` and reads it as the delivery does.
fn local(dir: &Path, name: &str, bytes: &[u8]) -> LocalFile {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    LocalFile::read(&path).expect("local file")
}

/// `size` pseudo-random bytes (xorshift, fixed seed) written in 1 MiB pieces.
fn random_file(path: &Path, size: usize) -> PathBuf {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = (state >> 24) as u8;
        }
        let n = left.min(chunk.len());
        out.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    out.flush().expect("flush");
    path.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_kms_objects_hold_the_files_bytes_and_name_the_key() {
    let bucket = bucket_for("kms").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = S3Target::new(&S3Config {
        bucket_key: Some(true),
        ..bucket.sse_kms("esg/daily/")
    })
    .expect("target");
    let files = [
        local(
            dir.path(),
            "FirmESGRatings_20261123_summary.json",
            b"{\"accounts\":2}\n",
        ),
        local(
            dir.path(),
            "FirmESGRatings_20261123.csv",
            b"account,rating\nACC-1,AA\nACC-2,B\n",
        ),
    ];
    for file in &files {
        target.put(file).await.expect("delivered");
        let key = format!("esg/daily/{}", file.name);
        assert_eq!(
            target.object(&file.name),
            format!("s3://{}/{key}", bucket.name)
        );
        let back = bucket.download(&key, &dir.path().join("back")).await;
        assert_eq!(back, std::fs::read(&file.path).expect("local"), "{key}");
        let head = bucket.head(&key).await;
        assert_eq!(head["sse"], "aws:kms", "{head}");
        let kms = head["kms_key"].as_str().expect("SSEKMSKeyId");
        assert!(kms.contains(&kms_key()), "{kms}");
        // The upload carried the SHA-256 the server checked and kept.
        assert_eq!(head["sha256"], file.sha256.as_str(), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_s3_objects_are_aes256_encrypted() {
    let bucket = bucket_for("sse-s3").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = S3Target::new(&S3Config {
        server_side_encryption: Some("sse-s3".into()),
        ..bucket.config("")
    })
    .expect("target");
    for (name, bytes) in [
        ("FirmESGRatings_20261123_summary.json", &b"{}\n"[..]),
        ("FirmESGRatings_20261123.csv", &b"account,rating\n"[..]),
    ] {
        let file = local(dir.path(), name, bytes);
        target.put(&file).await.expect("delivered");
        assert_eq!(bucket.download(name, &dir.path().join("back")).await, bytes);
        let head = bucket.head(name).await;
        assert_eq!(head["sse"], "AES256", "{head}");
        assert_eq!(head["kms_key"], Value::Null, "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_delivery_replaces_the_object() {
    let bucket = bucket_for("replace").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = S3Target::new(&bucket.sse_kms("out/")).expect("target");
    let name = "FirmESGRatings_20261123.csv";
    target
        .put(&local(dir.path(), name, b"account,rating\nACC-1,AA\n"))
        .await
        .expect("first");
    let second = b"account,rating\nACC-1,A\nACC-2,BBB\n";
    target
        .put(&local(dir.path(), name, second))
        .await
        .expect("second");
    let key = format!("out/{name}");
    assert_eq!(
        bucket.download(&key, &dir.path().join("back")).await,
        second
    );
    assert_eq!(bucket.contents().await["keys"], json!([key]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_above_the_multipart_threshold_arrives_whole() {
    let bucket = bucket_for("multipart").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 20 * 1024 * 1024 + 12_345;
    assert!(size as u64 > MULTIPART_THRESHOLD);
    let path = random_file(&dir.path().join("FirmESGRatings_20261123.csv.age"), size);
    let file = LocalFile::read(&path).expect("local file");
    let target = S3Target::new(&bucket.sse_kms("big/")).expect("target");
    target.put(&file).await.expect("delivered");

    let key = "big/FirmESGRatings_20261123.csv.age";
    let back = dir.path().join("back");
    bucket.download(key, &back).await;
    let mut reader = std::fs::File::open(&back).expect("downloaded");
    let (sha256, len) = esg_delivery::sha256_of(&mut reader).expect("hash");
    assert_eq!((sha256, len), (file.sha256.clone(), file.size));
    let head = bucket.head(key).await;
    assert_eq!(head["sse"], "aws:kms", "{head}");
    // A multipart object's ETag ends in the number of its parts: three of at most 8 MiB.
    let etag = head["etag"].as_str().expect("ETag");
    assert!(etag.ends_with("-3\""), "{etag}");
    let contents = bucket.contents().await;
    assert_eq!(contents["uploads"], json!([]), "{contents}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_a_missing_bucket_are_permanent_and_write_nothing() {
    let bucket = bucket_for("refused").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let small = local(
        dir.path(),
        "FirmESGRatings_20261123.csv",
        b"account,rating\n",
    );
    let big = LocalFile::read(&random_file(
        &dir.path().join("FirmESGRatings_20261123.csv.age"),
        MULTIPART_THRESHOLD as usize + 1,
    ))
    .expect("local file");
    let wrong_secret = "wrongSecretThatMustNotBeEchoed0123456789";
    let refused = [
        (
            "SignatureDoesNotMatch",
            S3Config {
                secret_access_key: Some(Secret::new(wrong_secret)),
                ..bucket.sse_kms("")
            },
        ),
        (
            "InvalidAccessKeyId",
            S3Config {
                access_key_id: Some("AKIANOTAKNOWNKEY0000".into()),
                secret_access_key: Some(Secret::new(wrong_secret)),
                ..bucket.sse_kms("")
            },
        ),
        (
            "NoSuchBucket",
            S3Config {
                bucket: format!("{}-missing", bucket.name),
                ..bucket.sse_kms("")
            },
        ),
    ];
    for (code, config) in &refused {
        let target = S3Target::new(config).expect("target");
        for file in [&small, &big] {
            let error = target.put(file).await.expect_err("refused");
            assert!(!error.retryable, "{error}");
            assert!(error.message.contains(code), "{code}: {error}");
            assert!(
                error.message.contains(&target.object(&file.name)),
                "{error}"
            );
            assert!(!error.message.contains(wrong_secret), "{error}");
            assert!(!error.message.contains(&bucket.server.secret), "{error}");
        }
        let error = target.check().await.expect_err("check refused");
        assert!(!error.retryable, "{error}");
        assert!(error.message.contains(code), "{code}: {error}");
    }
    let contents = bucket.contents().await;
    assert_eq!(contents, json!({"keys": [], "uploads": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_proves_access_and_leaves_nothing_behind() {
    let bucket = bucket_for("check").await;
    let target = S3Target::new(&bucket.sse_kms("esg/")).expect("target");
    target.check().await.expect("reachable and writable");
    let contents = bucket.contents().await;
    assert_eq!(contents, json!({"keys": [], "uploads": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_that_differs_deletes_the_object_and_is_retryable() {
    let bucket = bucket_for("mismatch").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = S3Target::new(&bucket.sse_kms("")).expect("target");
    let mut file = local(
        dir.path(),
        "FirmESGRatings_20261123.csv",
        b"account,rating\n",
    );
    // The file changed on disk after it was hashed: what arrives is not what was promised.
    file.sha256 = "0".repeat(64);
    let error = target.put(&file).await.expect_err("mismatch");
    assert!(error.retryable, "{error}");
    assert!(error.message.contains("other bytes"), "{error}");
    assert_eq!(bucket.contents().await["keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_gives_the_objects_directly_under_the_prefix_and_delete_removes_one() {
    let bucket = bucket_for("retention").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = S3Target::new(&bucket.sse_kms("esg/daily/")).expect("target");
    let names = ["FirmESGRatings_20261122.csv", "FirmESGRatings_20261123.csv"];
    for name in names {
        target
            .put(&local(dir.path(), name, b"account,rating\n"))
            .await
            .expect("delivered");
    }
    // Beside the prefix, below it, and a key that starts with the prefix's text but is not under
    // it as a directory: none is listed.
    bucket
        .put("esg/FirmESGRatings_20261121.csv", "other\n")
        .await;
    bucket
        .put("esg/daily/2026/FirmESGRatings_20261120.csv", "older\n")
        .await;
    bucket.put("esg/daily.csv", "not under the prefix\n").await;

    assert_eq!(target.list().await.expect("list"), names);

    target.delete(names[0]).await.expect("deleted");
    let keys = bucket.keys().await;
    assert!(
        !keys.contains(&format!("esg/daily/{}", names[0])),
        "{keys:?}"
    );
    assert_eq!(
        keys,
        [
            "esg/FirmESGRatings_20261121.csv",
            "esg/daily.csv",
            "esg/daily/2026/FirmESGRatings_20261120.csv",
            "esg/daily/FirmESGRatings_20261123.csv",
        ]
    );
    assert_eq!(target.list().await.expect("list"), [names[1]]);
    // Gone already: not an error.
    target
        .delete(names[0])
        .await
        .expect("a second delete is Ok");

    // Not a name `list` gives: refused before any request, and nothing below the prefix goes.
    let error = target
        .delete("2026/FirmESGRatings_20261120.csv")
        .await
        .expect_err("a name with `/`");
    assert!(!error.retryable, "{error}");
    assert!(
        error.message.contains("2026/FirmESGRatings_20261120.csv"),
        "{error}"
    );
    assert_eq!(bucket.keys().await, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_a_prefix_that_is_not_a_directory_or_none_strips_the_prefix() {
    let bucket = bucket_for("retention-stem").await;
    for key in [
        "out-FirmESGRatings_20261122.csv",
        "out-FirmESGRatings_20261123.csv",
        "other.csv",
        "out-dir/FirmESGRatings_20261121.csv",
    ] {
        bucket.put(key, "x\n").await;
    }
    let stem = S3Target::new(&bucket.config("out-")).expect("target");
    assert_eq!(
        stem.list().await.expect("list"),
        ["FirmESGRatings_20261122.csv", "FirmESGRatings_20261123.csv"]
    );
    let root = S3Target::new(&bucket.config("")).expect("target");
    assert_eq!(
        root.list().await.expect("list"),
        [
            "other.csv",
            "out-FirmESGRatings_20261122.csv",
            "out-FirmESGRatings_20261123.csv"
        ]
    );
    stem.delete("FirmESGRatings_20261122.csv")
        .await
        .expect("deleted");
    assert_eq!(
        bucket.keys().await,
        [
            "other.csv",
            "out-FirmESGRatings_20261123.csv",
            "out-dir/FirmESGRatings_20261121.csv"
        ]
    );
}

/// The refusal comes from an identity that may read and list but not delete (SeaweedFS
/// identities take per-action permissions: `Read` and `List` only), not from Object Lock:
/// SeaweedFS, like AWS, accepts a `DeleteObject` without a version id on an Object Lock bucket
/// even while a COMPLIANCE retention holds (it adds a delete marker, HTTP 204, and hides the
/// object; only the removal of the locked version itself is refused), and that is the only
/// `DeleteObject` the target sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_the_store_refuses_is_permanent_and_the_object_stays() {
    let bucket = readonly_bucket_for("retention-refused").await;
    let (key_id, secret) = bucket
        .server
        .readonly
        .clone()
        .expect("a read-only identity");
    let name = "FirmESGRatings_20261123.csv";
    let key = format!("esg/{name}");
    bucket.put(&key, "account,rating\n").await;
    let target = S3Target::new(&S3Config {
        access_key_id: Some(key_id),
        secret_access_key: Some(Secret::new(secret.clone())),
        ..bucket.config("esg/")
    })
    .expect("target");
    // The identity may list: what it is refused is the removal alone.
    assert_eq!(target.list().await.expect("list"), [name]);

    let error = target.delete(name).await.expect_err("refused");
    assert!(!error.retryable, "{error}");
    assert!(error.message.contains("refused the removal"), "{error}");
    assert!(error.message.contains(&target.object(name)), "{error}");
    assert!(error.message.contains("AccessDenied"), "{error}");
    assert!(!error.message.contains(&secret), "{error}");
    assert_eq!(bucket.keys().await, [key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_tls_ca_file_delivers_the_files_bytes() {
    let bucket = tls_bucket_for("tls").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // SSE-KMS, as AWS allows it only over https.
    let config = bucket.sse_kms("esg/daily/");
    let endpoint = config.endpoint.clone().unwrap_or_default();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    assert!(config.tls_ca_file.is_some());
    let target = S3Target::new(&config).expect("target");
    let file = local(
        dir.path(),
        "FirmESGRatings_20261123.csv",
        b"account,rating\nACC-1,AA\nACC-2,B\n",
    );
    target.put(&file).await.expect("delivered over https");
    let key = format!("esg/daily/{}", file.name);
    let back = bucket.download(&key, &dir.path().join("back")).await;
    assert_eq!(back, std::fs::read(&file.path).expect("local"));
    let head = bucket.head(&key).await;
    assert_eq!(head["sha256"], file.sha256.as_str(), "{head}");
    assert_eq!(head["sse"], "aws:kms", "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_tls_ca_file_refuses_the_certificate_and_writes_nothing() {
    let bucket = tls_bucket_for("tls-untrusted").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The system's roots alone: they do not hold the test CA.
    let target = S3Target::new(&S3Config {
        tls_ca_file: None,
        ..bucket.sse_kms("")
    })
    .expect("target");
    let file = local(
        dir.path(),
        "FirmESGRatings_20261123.csv",
        b"account,rating\n",
    );
    let put = target.put(&file).await.expect_err("untrusted certificate");
    assert!(put.message.contains(&target.object(&file.name)), "{put}");
    let check = target.check().await.expect_err("untrusted certificate");
    for error in [put, check] {
        // A certificate the job does not trust is not retried: waiting does not cure it.
        assert!(!error.retryable, "{error}");
        assert!(error.message.contains("tls_ca_file"), "{error}");
        assert!(error.message.contains("cannot connect"), "{error}");
        assert!(
            error
                .message
                .contains("invalid peer certificate: UnknownIssuer"),
            "{error}"
        );
        assert!(!error.message.contains(&bucket.server.secret), "{error}");
    }
    let contents = bucket.contents().await;
    assert_eq!(contents, json!({"keys": [], "uploads": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_check_passes_with_the_tls_ca_file() {
    let bucket = tls_bucket_for("tls-check").await;
    let target = S3Target::new(&bucket.sse_kms("esg/")).expect("target");
    target
        .check()
        .await
        .expect("reachable and writable over https");
    let contents = bucket.contents().await;
    assert_eq!(contents, json!({"keys": [], "uploads": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = S3Target::new(&S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        timeout: Duration::from_secs(2),
        ..offline_config()
    })
    .expect("target");
    let put = target
        .put(&local(dir.path(), "FirmESGRatings_20261123.csv", b"x\n"))
        .await
        .expect_err("nobody listens");
    let list = target.list().await.expect_err("nobody listens");
    let delete = target
        .delete("FirmESGRatings_20261123.csv")
        .await
        .expect_err("nobody listens");
    for error in [put, list, delete] {
        assert!(error.retryable, "{error}");
        assert!(error.message.contains("cannot connect"), "{error}");
    }
}

/// A configuration that is never sent anywhere.
fn offline_config() -> S3Config {
    S3Config {
        name: None,
        bucket: "esg-deliveries".into(),
        prefix: String::new(),
        region: None,
        endpoint: None,
        server_side_encryption: None,
        kms_key_id: None,
        bucket_key: None,
        access_key_id: Some("AKIAEXAMPLE000000000".into()),
        secret_access_key: Some(Secret::new("secretThatMustNotBeEchoed")),
        session_token: None,
        virtual_hosted_style: None,
        tls_ca_file: None,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn plain_http_to_another_host_is_refused_at_construction() {
    for endpoint in ["http://s3.firm.example:9000", "http://10.20.30.40:9000"] {
        let config = S3Config {
            endpoint: Some(endpoint.into()),
            ..offline_config()
        };
        let error = S3Target::new(&config).expect_err(endpoint);
        assert!(!error.retryable, "{error}");
        assert!(error.message.contains("endpoint"), "{error}");
        assert!(error.message.contains("https://"), "{error}");
        assert!(
            !error.message.contains("secretThatMustNotBeEchoed"),
            "{error}"
        );
        let https = S3Config {
            endpoint: Some(endpoint.replacen("http://", "https://", 1)),
            ..config
        };
        S3Target::new(&https).expect("https is fine");
    }
}

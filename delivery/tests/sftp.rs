//! The SFTP target against a real OpenSSH server: each test starts its own `sshd` (Debian's
//! `/usr/sbin/sshd`, package openssh-server) on 127.0.0.1 with a fresh host key, a fresh client
//! key in its `authorized_keys` and a remote directory that is a temporary directory on this
//! machine, so that what arrived is read back from the local file system.

use chrono::{Duration as ChronoDuration, NaiveDate, Utc};
use esg_delivery::sftp::{SftpConfig, SftpTarget};
use esg_delivery::{Deliveries, DeliveryError, LocalFile, RunRef, Target, TargetConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SSHD: &str = "/usr/sbin/sshd";

/// An `sshd` of one test, killed when dropped, and the keys and directory around it.
struct Sshd {
    child: Child,
    port: u16,
    host_key_fingerprint: String,
    client_key: PathBuf,
    remote: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// A small local file to deliver, in the test's directory.
    fn small_file(&self) -> LocalFile {
        let local = self.path("FirmESGRatings_20261123.csv");
        std::fs::write(&local, b"isin,rating\n").expect("write local");
        LocalFile::read(&local).expect("local file")
    }

    fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: these tests need OpenSSH's server (apt-get install -y openssh-server)"
        );
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::tempdir().expect("temp dir");
        let host_key = dir.path().join("host_key");
        keygen(&host_key);
        let client_key = dir.path().join("client_key");
        keygen(&client_key);
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        let remote = dir.path().join("remote");
        std::fs::create_dir(&remote).expect("remote dir");
        let host_key_fingerprint = fingerprint(&host_key.with_extension("pub"));

        // A port that was free a moment ago may be taken before sshd binds it: try again then.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host_key}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {authorized}\n\
                     StrictModes no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     PermitRootLogin prohibit-password\n\
                     Subsystem sftp internal-sftp\n\
                     LogLevel ERROR\n",
                    host_key = host_key.display(),
                    pid = dir.path().join("sshd.pid").display(),
                    authorized = dir.path().join("authorized_keys").display(),
                ),
            )
            .expect("write sshd_config");
            let log_path = dir.path().join("sshd.log");
            let log = std::fs::File::create(&log_path).expect("sshd log");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            if wait_ready(&mut child, port, Duration::from_secs(10)) {
                return Sshd {
                    child,
                    port,
                    host_key_fingerprint,
                    client_key,
                    remote,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("sshd did not start: {last_log}");
    }

    fn config(&self) -> SftpConfig {
        SftpConfig {
            name: Some("test-sftp".into()),
            host: "127.0.0.1".into(),
            port: self.port,
            user: current_user(),
            private_key_file: self.client_key.clone(),
            private_key_passphrase: None,
            host_key_fingerprint: self.host_key_fingerprint.clone(),
            dir: self.remote.display().to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// True once sshd accepts connections on `port`; false if it exited or `limit` passed.
fn wait_ready(child: &mut Child, port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `ssh-keygen -t ed25519 -N ''` into `path` (and `path.pub`), mode 0600.
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "esg-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The second field of `ssh-keygen -lf KEY.pub`: `SHA256:…`.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .expect("run ssh-keygen -lf");
    assert!(out.status.success(), "ssh-keygen -lf failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fp = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(fp.starts_with("SHA256:"), "ssh-keygen -lf printed {text:?}");
    fp
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Makes `path` impossible to remove for the sshd the tests start (which logs in as the user
/// running the tests), and undoes that on drop so that the temporary directory can go.
///
/// Not root: the directory holding it is made read-only (0555). Root ignores modes, so then the
/// file itself is made immutable (`chattr +i`, which root cannot remove a file past); `None` if
/// the file system or the process's capabilities (CAP_LINUX_IMMUTABLE) do not allow that.
enum Undeletable {
    ReadOnlyDir(PathBuf),
    Immutable(PathBuf),
}

impl Undeletable {
    fn make(path: &Path) -> Option<Undeletable> {
        if !is_root() {
            let dir = path.parent().expect("a parent").to_owned();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))
                .expect("chmod 555");
            return Some(Undeletable::ReadOnlyDir(dir));
        }
        let out = Command::new("chattr").arg("+i").arg(path).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "chattr +i {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Undeletable::Immutable(path.to_owned()))
    }
}

impl Drop for Undeletable {
    fn drop(&mut self) {
        match self {
            Undeletable::ReadOnlyDir(dir) => {
                let _ = std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o755));
            }
            Undeletable::Immutable(path) => {
                let _ = Command::new("chattr").arg("-i").arg(&*path).status();
            }
        }
    }
}

/// Names in `dir`, sorted, hidden ones included.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read remote dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// Bytes that do not repeat with the chunk size, so a chunk written at the wrong offset shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn run() -> RunRef {
    RunRef {
        run_id: "2026-11-23".into(),
        business_date: NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
    }
}

#[tokio::test]
async fn delivered_files_arrive_whole_with_mode_0640_and_a_second_delivery_replaces_them() {
    let sshd = Sshd::start();
    let local = tempfile::tempdir().expect("local dir");
    // Larger than CHUNK × IN_FLIGHT, so that writes and read-back reads are pipelined.
    let big = pattern(1024 * 1024 + 12_345, 1);
    let small = b"isin,rating\nXS0000000001,AA\n".to_vec();
    let big_path = local.path().join("FirmESGScores_20261123.csv");
    let small_path = local.path().join("FirmESGRatings_20261123.csv");
    std::fs::write(&big_path, &big).expect("write big");
    std::fs::write(&small_path, &small).expect("write small");

    let record = sshd.path("deliveries.jsonl");
    let deliveries =
        Deliveries::new(&[TargetConfig::Sftp(sshd.config())], &record).expect("build targets");
    let deadline = Utc::now() + ChronoDuration::seconds(30);
    let stop = CancellationToken::new();
    let report = deliveries
        .deliver(
            &run(),
            &[big_path.clone(), small_path.clone()],
            deadline,
            None,
            &stop,
        )
        .await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(report.delivered.len(), 2);
    assert_eq!(
        names_in(&sshd.remote),
        ["FirmESGRatings_20261123.csv", "FirmESGScores_20261123.csv"],
        "exactly the two files, no temporary file left"
    );
    let big_remote = sshd.remote.join("FirmESGScores_20261123.csv");
    let small_remote = sshd.remote.join("FirmESGRatings_20261123.csv");
    assert!(
        std::fs::read(&big_remote).expect("read big") == big,
        "big file differs"
    );
    assert_eq!(std::fs::read(&small_remote).expect("read small"), small);
    assert_eq!(mode_of(&big_remote), 0o640);
    assert_eq!(mode_of(&small_remote), 0o640);
    assert_eq!(
        report.delivered[1].object,
        format!(
            "sftp://{}@127.0.0.1:{}//{}/FirmESGRatings_20261123.csv",
            current_user(),
            sshd.port,
            sshd.remote.display().to_string().trim_start_matches('/')
        )
    );
    let lines = std::fs::read_to_string(&record).expect("record");
    assert_eq!(lines.lines().count(), 2, "{lines}");

    // The same name again, other (shorter) content: the earlier file is replaced.
    let changed = b"isin,rating\nXS0000000001,A\n".to_vec();
    std::fs::write(&small_path, &changed).expect("rewrite small");
    let report = deliveries
        .deliver(&run(), &[small_path], deadline, None, &stop)
        .await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(std::fs::read(&small_remote).expect("read again"), changed);
    assert_eq!(mode_of(&small_remote), 0o640);
    assert_eq!(
        names_in(&sshd.remote),
        ["FirmESGRatings_20261123.csv", "FirmESGScores_20261123.csv"]
    );
}

#[tokio::test]
async fn a_host_key_that_does_not_match_is_refused_and_nothing_is_written() {
    let sshd = Sshd::start();
    let other = sshd.path("other_host_key");
    keygen(&other);
    let wrong = fingerprint(&other.with_extension("pub"));
    assert_ne!(wrong, sshd.host_key_fingerprint);
    let config = SftpConfig {
        host_key_fingerprint: wrong.clone(),
        ..sshd.config()
    };
    let (target, err) = refused_put(&sshd, &config).await;
    assert!(err.message.contains("host key does not match"), "{err}");
    assert!(
        err.message.contains(&sshd.host_key_fingerprint),
        "names the key offered: {err}"
    );
    assert!(
        err.message.contains(&wrong),
        "names the key configured: {err}"
    );
    let err = target.check().await.expect_err("check refuses it too");
    assert!(!err.retryable && err.message.contains("host key"), "{err}");
    assert!(names_in(&sshd.remote).is_empty(), "nothing written");
}

/// A put of a small file with `config` that the server refuses, not to be retried.
async fn refused_put(sshd: &Sshd, config: &SftpConfig) -> (SftpTarget, DeliveryError) {
    let target = SftpTarget::new(config).expect("build target");
    let err = target
        .put(&sshd.small_file())
        .await
        .expect_err("the server refuses it");
    assert!(!err.retryable, "not retried: {err}");
    (target, err)
}

#[tokio::test]
async fn a_client_key_not_in_authorized_keys_is_refused() {
    let sshd = Sshd::start();
    let stranger = sshd.path("stranger_key");
    keygen(&stranger);
    let config = SftpConfig {
        private_key_file: stranger,
        ..sshd.config()
    };
    let (_, err) = refused_put(&sshd, &config).await;
    assert!(err.message.contains("refused the key"), "{err}");
    assert!(names_in(&sshd.remote).is_empty(), "nothing written");
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_refused_before_connecting() {
    // No server at all: the refusal must come before any connection.
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("client_key");
    keygen(&key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let config = SftpConfig {
        name: None,
        host: "127.0.0.1".into(),
        port: free_port(),
        user: current_user(),
        private_key_file: key,
        private_key_passphrase: None,
        host_key_fingerprint: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        dir: "/".into(),
        timeout: Duration::from_secs(1),
    };
    let err = SftpTarget::new(&config).expect_err("a 0644 key is refused");
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("chmod 600"), "{err}");
    let err = Deliveries::new(&[TargetConfig::Sftp(config)], &dir.path().join("r.jsonl"))
        .expect_err("the targets are not built");
    assert!(err.message.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_worth_another_try() {
    let sshd = Sshd::start();
    let config = SftpConfig {
        // Nothing listens there (the port was free a moment ago).
        port: free_port(),
        ..sshd.config()
    };
    let target = SftpTarget::new(&config).expect("build target");
    let check = target.check().await.expect_err("nothing to connect to");
    let list = target.list().await.expect_err("nothing to connect to");
    let delete = target
        .delete("FirmESGRatings_20261123.csv")
        .await
        .expect_err("nothing to connect to");
    for err in [check, list, delete] {
        assert!(err.retryable, "a network error is retried: {err}");
        assert!(err.message.contains("connecting"), "{err}");
    }
}

#[tokio::test]
async fn check_passes_on_a_writable_dir_and_fails_on_a_missing_one() {
    let sshd = Sshd::start();
    let target = SftpTarget::new(&sshd.config()).expect("build target");
    target.check().await.expect("check passes");
    assert!(names_in(&sshd.remote).is_empty(), "check leaves nothing");

    let missing = sshd.remote.join("missing");
    let config = SftpConfig {
        dir: missing.display().to_string(),
        ..sshd.config()
    };
    let err = SftpTarget::new(&config)
        .expect("build target")
        .check()
        .await
        .expect_err("a missing dir fails the check");
    assert!(
        err.message.contains(&missing.display().to_string()),
        "names the directory: {err}"
    );
    assert!(err.message.contains("does not exist"), "{err}");
    assert!(!missing.exists());
}

#[tokio::test]
async fn a_copy_whose_checksum_differs_is_removed_and_the_earlier_file_kept() {
    let sshd = Sshd::start();
    let target = SftpTarget::new(&sshd.config()).expect("build target");
    let local = sshd.path("FirmESGRatings_20261123.csv");
    std::fs::write(&local, b"isin,rating\nXS0000000001,AA\n").expect("write local");
    let good = LocalFile::read(&local).expect("local file");
    target.put(&good).await.expect("first delivery");

    std::fs::write(&local, b"isin,rating\nXS0000000001,B\n").expect("rewrite local");
    let bad = LocalFile {
        sha256: "0".repeat(64),
        ..LocalFile::read(&local).expect("local file")
    };
    let err = target
        .put(&bad)
        .await
        .expect_err("a checksum mismatch fails");
    assert!(err.retryable, "worth another try: {err}");
    assert!(err.message.contains("other bytes"), "{err}");
    assert_eq!(
        names_in(&sshd.remote),
        ["FirmESGRatings_20261123.csv"],
        "the temporary file is removed"
    );
    assert_eq!(
        std::fs::read(sshd.remote.join("FirmESGRatings_20261123.csv")).expect("read"),
        b"isin,rating\nXS0000000001,AA\n",
        "the earlier file is as it was"
    );
}

#[tokio::test]
async fn list_gives_the_regular_files_of_dir_and_delete_removes_one() {
    let sshd = Sshd::start();
    let target = SftpTarget::new(&sshd.config()).expect("build target");
    let names = ["FirmESGRatings_20261122.csv", "FirmESGRatings_20261123.csv"];
    for name in names {
        let local = sshd.path(name);
        std::fs::write(&local, b"isin,rating\n").expect("write local");
        target
            .put(&LocalFile::read(&local).expect("local file"))
            .await
            .expect("delivered");
    }
    // What a failed upload may leave (listed: retention may purge it), a directory with a file
    // in it and a symbolic link (neither listed).
    let temp = ".FirmESGRatings_20261121.csv.4242.part";
    std::fs::write(sshd.remote.join(temp), b"isin").expect("temporary file");
    std::fs::create_dir(sshd.remote.join("2026")).expect("subdirectory");
    std::fs::write(
        sshd.remote.join("2026/FirmESGRatings_20261120.csv"),
        b"older",
    )
    .expect("file below dir");
    std::os::unix::fs::symlink(names[1], sshd.remote.join("latest.csv")).expect("symlink");

    assert_eq!(
        target.list().await.expect("list"),
        [temp, names[0], names[1]]
    );

    target.delete(names[0]).await.expect("deleted");
    assert!(!sshd.remote.join(names[0]).exists());
    assert_eq!(
        names_in(&sshd.remote),
        [temp, "2026", names[1], "latest.csv"]
    );
    assert_eq!(target.list().await.expect("list"), [temp, names[1]]);
    // Gone already: not an error.
    target
        .delete(names[0])
        .await
        .expect("a second delete is Ok");

    // Not a name `list` gives: refused before connecting, and the file below dir stays.
    let err = target
        .delete("2026/FirmESGRatings_20261120.csv")
        .await
        .expect_err("a name with `/`");
    assert!(!err.retryable, "{err}");
    assert!(
        err.message.contains("2026/FirmESGRatings_20261120.csv"),
        "{err}"
    );
    assert!(sshd
        .remote
        .join("2026/FirmESGRatings_20261120.csv")
        .exists());
}

#[tokio::test]
async fn a_removal_the_server_refuses_is_permanent_and_the_file_stays() {
    let sshd = Sshd::start();
    let target = SftpTarget::new(&sshd.config()).expect("build target");
    let file = sshd.small_file();
    target.put(&file).await.expect("delivered");
    let remote = sshd.remote.join(&file.name);
    let Some(_undeletable) = Undeletable::make(&remote) else {
        // Running as root on a file system without `chattr +i` (or without the capability to
        // set it): root removes a file whatever the modes say, so nothing here can make the
        // server refuse. Skipped rather than faked.
        eprintln!(
            "skipped: root, and {} cannot be made immutable",
            remote.display()
        );
        return;
    };
    let err = target.delete(&file.name).await.expect_err("refused");
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("refused the removal"), "{err}");
    assert!(err.message.contains(&target.object(&file.name)), "{err}");
    assert!(remote.exists(), "the file stays");
    assert_eq!(target.list().await.expect("list"), [file.name.as_str()]);
}

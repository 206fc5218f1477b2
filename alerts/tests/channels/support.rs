//! Shared helpers: a real SMTP server (tests/smtp_server.py on aiosmtpd) with a certificate from a
//! throw-away CA, local HTTP receivers, a port nothing listens on, and sample alerts.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use esg_alerts::{Alert, AlertKind, AlertsConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The SMTP user the test server accepts.
pub const SMTP_USER: &str = "esg-job";
/// Its password.
pub const SMTP_PASSWORD: &str = "correct horse battery staple";

pub fn business_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
}

pub fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 11, 15, 0)
        .single()
        .expect("time")
}

/// An alert of `kind` for run `run_id`, with a detail or two.
pub fn alert(kind: AlertKind, run_id: &str, summary: &str) -> Alert {
    Alert::new(kind, run_id, business_date(), summary, at())
        .with_detail("expected", 1200)
        .with_detail(
            "summary_file",
            "/data/out/FirmESGRatings_20261123_summary.json",
        )
}

/// A configuration with no channel and a short retry backoff, for tests to fill in.
pub fn base_config() -> AlertsConfig {
    AlertsConfig {
        retry_backoff: Duration::from_millis(20),
        ..AlertsConfig::default()
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on, for as long as the guard lives: the port is
/// bound by a socket that never listens (a connection to it is refused), so no other test or
/// process can take it meanwhile (bound without `SO_REUSEADDR`). A port bound and then released
/// could be given to the next server that asks for a free port.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl ClosedPort {
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// See [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    ClosedPort {
        _socket: socket,
        port,
    }
}

/// Serves `router` on 127.0.0.1 on a free port until the test's runtime ends.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    addr
}

/// A throw-away CA and a server certificate for `localhost` and 127.0.0.1 signed by it, made
/// with the openssl command line. A self-signed CA certificate cannot serve as the server's own
/// certificate: rustls (webpki) refuses a CA certificate as an end entity.
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (the openssl command line must be installed)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn make_pki(dir: &Path) -> TestPki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=esg-alerts test CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca_args);
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr_args);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    TestPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// One message as the SMTP server recorded it.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub login: String,
    pub tls: bool,
    pub subject: String,
    pub to: String,
    pub content_type: String,
    pub body: String,
    pub content: String,
}

/// The test SMTP server: STARTTLS required, AUTH required, one user. Killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    pub pki: TestPki,
    out: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts tests/smtp_server.py with the Python that has aiosmtpd: `ESG_TEST_PYTHON`, else
    /// `/usr/bin/python3` (Debian's python3-aiosmtpd). STARTTLS and AUTH required.
    pub async fn start() -> SmtpServer {
        SmtpServer::start_with(&[]).await
    }

    /// A relay without TLS and without AUTH (offers no STARTTLS).
    pub async fn start_plain() -> SmtpServer {
        SmtpServer::start_with(&["--plain"]).await
    }

    async fn start_with(extra_args: &[&str]) -> SmtpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = make_pki(dir.path());
        let out = dir.path().join("messages.jsonl");
        let log = dir.path().join("smtp_server.log");
        let python =
            std::env::var("ESG_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");
        let mut child = tokio::process::Command::new(&python)
            .arg(script)
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .args(["--user", SMTP_USER, "--password", SMTP_PASSWORD, "--out"])
            .arg(&out)
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its log (session exceptions of the tests that expect failures) goes to a file,
            // quoted if it does not start.
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("create the SMTP server log"),
            ))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {python} {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut first),
        )
        .await;
        let ready = match read {
            Ok(Ok(_)) => serde_json::from_str::<serde_json::Value>(&first).ok(),
            _ => None,
        };
        let Some(ready) = ready else {
            panic!(
                "the SMTP server did not start (is python3-aiosmtpd installed for {python}? \
                 set ESG_TEST_PYTHON to another python); stdout {first:?}, log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("port");
        SmtpServer {
            port,
            pki,
            out,
            _child: child,
            _dir: dir,
        }
    }

    /// Every message received so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        match std::fs::read_to_string(&self.out) {
            Ok(text) => text
                .lines()
                .map(|line| serde_json::from_str(line).expect("a JSON line"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {}: {e}", self.out.display()),
        }
    }
}

//! Shared helpers of the end-to-end tests: a simulator, a configuration in a temporary
//! directory, and readers of the output files.
#![allow(dead_code)]

pub mod chromium;
pub mod kafka;
pub mod served;
pub mod webhook;

use esg::config::{self, Config};
use esg_simulator::{SimConfig, SimHandle};
use std::path::{Path, PathBuf};

pub struct World {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl World {
    pub async fn start(sim: SimConfig, extra: &str) -> World {
        let sim = esg_simulator::start(sim, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("simulator starts");
        Self::with_sim(sim, extra)
    }

    pub fn with_sim(sim: SimHandle, extra: &str) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("esg.toml");
        let text = config::example(
            &sim.url(),
            &dir.path().join("out"),
            &dir.path().join("state"),
        );
        let text = format!("{text}\n{extra}\n");
        // Fast test settings: quick retries.
        let text = text
            .replace(
                "max_in_flight = 64",
                "max_in_flight = 64\nbackoff_base = \"5ms\"\nbackoff_cap = \"20ms\"",
            )
            .replace("rate_limit_per_second = 50", "rate_limit_per_second = 1000");
        std::fs::write(&config_path, text).expect("write config");
        World {
            sim,
            dir,
            config_path,
        }
    }

    /// Rewrites the configuration file, replacing `from` with `to` (which must be there).
    pub fn replace_in_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        assert!(text.contains(from), "{from:?} is not in the configuration");
        std::fs::write(&self.config_path, text.replace(from, to)).expect("config");
    }

    /// Adds `[accounts]` keys to the configuration (after its client secret).
    pub fn add_accounts_keys(&self, keys: &str) {
        let secret = "client_secret = \"accounts-secret\"";
        self.replace_in_config(secret, &format!("{secret}\n{keys}"));
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).expect("config loads")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn csv_path(&self, date: chrono::NaiveDate) -> PathBuf {
        self.out().join(esg_assembler::output::file_names(date).csv)
    }
}

/// What `esg ARGS --config …` printed on stdout; it must succeed.
pub fn esg(world: &World, args: &[&str]) -> String {
    let out = esg_command(args)
        .arg("--config")
        .arg(&world.config_path)
        .output()
        .expect("esg runs");
    assert!(
        out.status.success(),
        "esg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The daily run of `day`, in-process, to its end.
pub async fn run_day(world: &World, day: chrono::NaiveDate) -> esg::runner::Outcome {
    esg::runner::Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("runner opens")
        .run_daily(
            day,
            false,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("run completes")
}

/// A re-run of `ids` on `day`, in-process, to its end.
pub async fn rerun(world: &World, day: chrono::NaiveDate, ids: &[String]) -> esg::runner::Outcome {
    esg::runner::Runner::open(world.config(), esg_assembler::system_clock())
        .await
        .expect("runner opens")
        .rerun(
            day,
            esg::runner::Selection::Accounts(ids.to_vec()),
            true,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("re-run completes")
}

/// The settings most tests use: a fast simulator without faults.
pub fn quiet_sim(accounts: u64) -> SimConfig {
    SimConfig {
        accounts,
        rate_limit_per_second: None,
        ..Default::default()
    }
}

pub fn date(s: &str) -> chrono::NaiveDate {
    s.parse().expect("date")
}

/// Every record of a CSV file, header first.
pub fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_owned).collect())
        .collect()
}

/// Ids of the ACTIVE accounts of the simulator, asked through its own API.
pub async fn active_ids(sim: &SimHandle) -> Vec<String> {
    active_ids_with(sim, reqwest::Client::new()).await
}

/// As [`active_ids`], with the given client (one that trusts an HTTPS simulator, say).
pub async fn active_ids_with(sim: &SimHandle, http: reqwest::Client) -> Vec<String> {
    let mut ids: Vec<String> = listed(sim, &http, Some("ACTIVE"))
        .await
        .iter()
        .filter_map(valid_active_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Every account name the simulator's account system lists, whatever the status (for tests
/// that check no name leaks where none may be).
pub async fn account_names(sim: &SimHandle) -> Vec<String> {
    let mut names: Vec<String> = listed(sim, &reqwest::Client::new(), None)
        .await
        .iter()
        .filter_map(|item| item["accountName"].as_str().map(str::to_owned))
        .filter(|n| !n.trim().is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every record of the account system's listing (of `status` only when given), page by page.
async fn listed(
    sim: &SimHandle,
    http: &reqwest::Client,
    status: Option<&str>,
) -> Vec<serde_json::Value> {
    let token: serde_json::Value = http
        .post(sim.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "esg-accounts"),
            ("client_secret", "accounts-secret"),
            ("scope", "accounts.read"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let mut items = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{}/v1/accounts", sim.url()))
            .bearer_auth(&token)
            .query(&[("pageSize", "5000")]);
        if let Some(status) = status {
            req = req.query(&[("status", status)]);
        }
        if let Some(p) = &page {
            req = req.query(&[("pageToken", p)]);
        }
        let body: serde_json::Value = req.send().await.expect("page").json().await.expect("json");
        items.extend(body["items"].as_array().expect("items").iter().cloned());
        match body["nextPageToken"].as_str() {
            Some(t) => page = Some(t.to_owned()),
            None => break,
        }
    }
    items
}

/// The id of a record that keeps the account system's contract and is ACTIVE.
fn valid_active_id(item: &serde_json::Value) -> Option<String> {
    let id = item["accountId"].as_str()?;
    let pattern_ok = id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let name_ok = item["accountName"]
        .as_str()
        .is_some_and(|n| n.chars().count() <= 200);
    let status_ok = item["status"].as_str() == Some("ACTIVE");
    let updated_ok = item["updatedAt"]
        .as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok());
    let version_ok = item["version"].as_i64().is_some_and(|v| v >= 1);
    (pattern_ok && name_ok && status_ok && updated_ok && version_ok).then(|| id.to_owned())
}

/// The address a server wrote in its log once it listened on a port of its own choosing (port 0
/// asked for): the first line of `log` containing `marker`, the value after `key=`. Waits until
/// `within` has passed, reading the file again every 50 ms; `alive` is asked between reads so
/// a server that died is reported at once, with its log. No port is ever chosen by the test, so
/// none can be taken by another server between choosing and listening.
pub async fn wait_for_address(
    log: &Path,
    marker: &str,
    key: &str,
    within: std::time::Duration,
    mut alive: impl FnMut() -> bool,
) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = address_in(&text, marker, key) {
            return addr;
        }
        let tail = || {
            let lines: Vec<&str> = text.lines().rev().take(20).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        assert!(
            alive(),
            "the server of {} exited before saying {marker:?}:\n{}",
            log.display(),
            tail()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker:?} with {key}= in {} within {within:?}:\n{}",
            log.display(),
            tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The `key=value` address on the first line of `text` containing `marker`.
pub fn address_in(text: &str, marker: &str, key: &str) -> Option<std::net::SocketAddr> {
    let line = text.lines().find(|l| l.contains(marker))?;
    let pattern = format!("{key}=");
    let value = line.split(&pattern).nth(1)?;
    let value = value.split_whitespace().next()?.trim_matches('"');
    value.parse().ok()
}

/// The file names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `command` to its end: its exit code, and what it said (stdout, then stderr).
pub fn outcome(command: &mut std::process::Command) -> (Option<i32>, String) {
    let out = command.output().expect("the command runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A command of the `esg` binary with `args`.
pub fn esg_command<I, S>(args: I) -> std::process::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_esg"));
    command.args(args);
    command
}

/// Makes a file immutable (`chattr +i`: even root cannot remove it) until dropped.
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn new(path: &Path) -> Immutable {
        let out = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .expect("chattr (e2fsprogs) runs");
        assert!(
            out.status.success(),
            "chattr +i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A key pair made by `age-keygen`: the identity file and its recipient.
pub struct Key {
    pub identity: PathBuf,
    pub recipient: String,
}

pub fn keygen(dir: &Path, name: &str) -> Key {
    let identity = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen runs (Debian package `age`; ops/test-all.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&identity)
        .output()
        .expect("age-keygen -y");
    assert!(out.status.success(), "{out:?}");
    Key {
        identity,
        recipient: String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned(),
    }
}

/// `age -d -i KEY FILE`: the plaintext, or the CLI's error.
pub fn age_decrypt(identity: &Path, file: &Path) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
        .expect("age runs");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every regular file under `dir`, recursively and sorted (none when it does not exist; a file
/// removed while it is listed, as a broker's cleaned segment, is left out).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&path)),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
    out.sort();
    out
}

/// Whether `bytes` holds `needle`, which has no zero byte. A page of zeros (a broker
/// preallocates each active segment's two index files: 10 MB of zeros each, every partition of
/// every topic), compared at memcmp speed, cannot hold the start of the needle and is skipped,
/// which keeps a scan of a broker's topics well under a second in a debug build.
pub fn holds(bytes: &[u8], needle: &[u8]) -> bool {
    const PAGE: usize = 4096;
    const ZEROS: [u8; PAGE] = [0; PAGE];
    assert!(!needle.is_empty() && !needle.contains(&0), "{needle:?}");
    (0..bytes.len()).step_by(PAGE).any(|start| {
        let page = &bytes[start..bytes.len().min(start + PAGE)];
        // A match that starts in this page may run on into the next one.
        page != &ZEROS[..page.len()]
            && bytes[start..bytes.len().min(start + PAGE + needle.len() - 1)]
                .windows(needle.len())
                .any(|w| w == needle)
    })
}

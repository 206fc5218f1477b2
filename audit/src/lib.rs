//! The audit trail: who did what to the ratings files, in a log that cannot be changed without
//! it showing.
//!
//! Each event is one JSON line of `audit.jsonl` (mode 0640): a sequence number, the time, the
//! actor (OS user, uid, host), the action, its object, details, and `prev`, the SHA-256 of the
//! line before it (64 zeros for the first), so that a line changed, removed, added or moved
//! breaks the chain at the next line. The chain alone cannot see its own tail cut off or its last
//! line changed: after each run a checkpoint of the whole log (its number of entries and its
//! RFC 6962 Merkle root) is signed with Ed25519 as a C2SP signed note ([`note`]) and kept beside
//! the log as `audit.checkpoint`, and delivered with the files, so a copy the firm holds pins the
//! log as it was. [`verify`] checks the chain and any number of checkpoints and names the first
//! entry that does not hold.
//!
//! Not owned here: which events the job records and when (the binary), delivering the
//! checkpoint (`esg-delivery`), retention of whole segments (later).

pub mod merkle;
pub mod note;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The log's file name in the audit directory.
pub const LOG_FILE: &str = "audit.jsonl";
/// The latest signed checkpoint's file name, beside the log.
pub const CHECKPOINT_FILE: &str = "audit.checkpoint";
/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who acted: the OS user and host of the process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Actor {
    pub user: String,
    pub uid: u32,
    pub host: String,
}

impl Actor {
    /// This process's user (`$USER`, else `$LOGNAME`, else the uid) and host name.
    pub fn current() -> Actor {
        let uid = rustix::process::getuid().as_raw();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| format!("uid {uid}"));
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        Actor { user, uid, host }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1 for the first entry, then one more each.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// `run_started`, `file_written`, `delivered`, `opened`, …
    pub action: String,
    /// What it was done to: a file name, a run id, a target.
    pub object: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// Lowercase hex SHA-256 of the previous line (without its newline).
    pub prev: String,
}

/// An audit log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An event to record: action, object, details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub action: String,
    pub object: String,
    pub details: BTreeMap<String, String>,
}

impl Event {
    pub fn new(action: &str, object: impl Into<String>) -> Self {
        Event {
            action: action.to_owned(),
            object: object.into(),
            details: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.details.insert(key.to_owned(), value.to_string());
        self
    }
}

/// The audit log of one directory.
#[derive(Debug, Clone)]
pub struct AuditLog {
    dir: PathBuf,
    actor: Actor,
}

impl AuditLog {
    /// The log in `dir` (created, mode 0750, with its file 0640, when first written).
    pub fn new(dir: &Path) -> Self {
        AuditLog {
            dir: dir.to_owned(),
            actor: Actor::current(),
        }
    }

    /// The same log, entries made by `actor` (tests).
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    fn open_file(&self) -> Result<std::fs::File, AuditError> {
        let path = self.log_path();
        ensure_dir(&self.dir)?;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        options.open(&path).map_err(io(&path))
    }

    /// Appends `event` as the next entry, under an exclusive lock of the file (other processes
    /// of the job append too), and syncs it. Refuses to chain onto a last line cut short.
    pub fn append(&self, event: Event) -> Result<Entry, AuditError> {
        let path = self.log_path();
        let mut file = self.open_file()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(&path)(e.into()))?;
        let (seq, prev) = tail(&mut file, &path)?;
        let entry = Entry {
            seq: seq + 1,
            at: Utc::now(),
            actor: self.actor.clone(),
            action: event.action,
            object: event.object,
            details: event.details,
            prev,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| AuditError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        file.write_all(&line).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
        Ok(entry)
    }

    /// Signs a checkpoint of the whole log with `signer` and writes it (0640) beside the log;
    /// returns its path. The log is read once (O(log n) memory).
    pub fn checkpoint(
        &self,
        signer: &note::NoteSigner,
        origin: &str,
    ) -> Result<PathBuf, AuditError> {
        let path = self.log_path();
        let mut file = self.open_file()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io(&path)(e.into()))?;
        let mut text = String::new();
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        file.read_to_string(&mut text).map_err(io(&path))?;
        let mut tree = merkle::Tree::default();
        for line in text.lines() {
            tree.push(merkle::leaf(line.as_bytes()));
        }
        let checkpoint = note::Checkpoint {
            origin: origin.to_owned(),
            size: tree.size(),
            root: tree.root(),
        };
        let signed = signer.sign(&checkpoint);
        let target = self.checkpoint_path();
        let temp = self
            .dir
            .join(format!(".{CHECKPOINT_FILE}.{}", std::process::id()));
        write_file(&temp, signed.as_bytes())?;
        std::fs::rename(&temp, &target).map_err(io(&target))?;
        Ok(target)
    }
}

fn ensure_dir(dir: &Path) -> Result<(), AuditError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o750);
    }
    builder.create(dir).map_err(io(dir))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// The last entry's sequence number and the hash of its line (0 and [`GENESIS`] when empty).
fn tail(file: &mut std::fs::File, path: &Path) -> Result<(u64, String), AuditError> {
    let len = file.seek(SeekFrom::End(0)).map_err(io(path))?;
    if len == 0 {
        return Ok((0, GENESIS.to_owned()));
    }
    let mut chunk = 4096u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io(path))?;
        if buf.last() != Some(&b'\n') {
            return Err(AuditError::Invalid {
                path: path.to_owned(),
                message: "its last entry is cut short (no newline at its end): nothing is appended until `esg audit verify` has been looked at".into(),
            });
        }
        let body = &buf[..buf.len() - 1];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => return last_of(&body[i + 1..], path),
            None if start == 0 => return last_of(body, path),
            None => chunk *= 4,
        }
    }
}

fn last_of(line: &[u8], path: &Path) -> Result<(u64, String), AuditError> {
    let entry: Entry = serde_json::from_slice(line).map_err(|e| AuditError::Invalid {
        path: path.to_owned(),
        message: format!("its last entry does not parse ({e}): run `esg audit verify`"),
    })?;
    Ok((entry.seq, sha256_hex(line)))
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries in the log.
    pub entries: u64,
    /// Checkpoints that held, with their sizes.
    pub checkpoints: Vec<(String, u64)>,
}

/// The first thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Broken {
    /// The first entry (1-based line) that is bad, when one can be named.
    pub entry: Option<u64>,
    pub message: String,
}

/// Checks the chain of the log in `dir`, then each of `checkpoints` (`(name, signed note)`)
/// with `verifier`: its signature, that the log holds at least its entries, and that the first
/// that many entries have its Merkle root.
pub fn verify(
    dir: &Path,
    verifier: &note::NoteVerifier,
    checkpoints: &[(String, String)],
) -> Result<Verified, Broken> {
    let path = dir.join(LOG_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && checkpoints.is_empty() => Vec::new(),
        Err(e) => {
            return Err(Broken {
                entry: None,
                message: format!("cannot read {}: {e}", path.display()),
            })
        }
    };
    let mut opened = Vec::new();
    for (name, note) in checkpoints {
        let cp = verifier.open(note).map_err(|e| Broken {
            entry: None,
            message: format!("{name}: {e}"),
        })?;
        opened.push((name.clone(), cp));
    }
    let mut tree = merkle::Tree::default();
    let mut prev = GENESIS.to_owned();
    let mut n = 0u64;
    let check_at = |tree: &merkle::Tree, opened: &[(String, note::Checkpoint)]| {
        for (name, cp) in opened {
            if cp.size == tree.size() && cp.root != tree.root() {
                return Err(Broken {
                    entry: None,
                    message: format!(
                        "{name}: the log's first {} entries are not the ones it signed (its Merkle root differs): the log was rewritten",
                        cp.size
                    ),
                });
            }
        }
        Ok(())
    };
    check_at(&tree, &opened)?;
    if !text.is_empty() && text.last() != Some(&b'\n') {
        let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
        return Err(Broken {
            entry: Some(lines + 1),
            message: format!(
                "entry {} is cut short (the log does not end with a newline)",
                lines + 1
            ),
        });
    }
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        n += 1;
        let entry: Entry = serde_json::from_slice(line).map_err(|e| Broken {
            entry: Some(n),
            message: format!("entry {n} is not a valid entry: {e}"),
        })?;
        if entry.seq != n {
            return Err(Broken {
                entry: Some(n),
                message: format!(
                    "line {n} holds entry {}: entries were removed, added or moved before it",
                    entry.seq
                ),
            });
        }
        if entry.prev != prev && n == 1 {
            return Err(Broken {
                entry: Some(1),
                message: "entry 1 does not start a chain (its prev is not the genesis hash): entries before it were removed, or it was changed".into(),
            });
        }
        if entry.prev != prev {
            return Err(Broken {
                entry: Some(n - 1),
                message: format!(
                    "entry {n} does not chain to entry {}: entry {} was changed (or lines were replaced)",
                    n - 1,
                    n - 1
                ),
            });
        }
        prev = sha256_hex(line);
        tree.push(merkle::leaf(line));
        check_at(&tree, &opened)?;
    }
    for (name, cp) in &opened {
        if cp.size > n {
            return Err(Broken {
                entry: Some(n + 1),
                message: format!(
                    "{name}: it was signed over {} entries but the log has {n}: entries {} to {} were cut off",
                    cp.size,
                    n + 1,
                    cp.size
                ),
            });
        }
    }
    Ok(Verified {
        entries: n,
        checkpoints: opened
            .into_iter()
            .map(|(name, cp)| (name, cp.size))
            .collect(),
    })
}

/// Every entry of the log in `dir`, oldest first (an unreadable line is an error naming it).
pub fn read(dir: &Path) -> Result<Vec<Entry>, AuditError> {
    let path = dir.join(LOG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AuditError::Invalid {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;

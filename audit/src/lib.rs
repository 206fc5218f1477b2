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

use chrono::{DateTime, Datelike, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The log's file name in the audit directory.
pub const LOG_FILE: &str = "audit.jsonl";
/// The latest signed checkpoint's file name, beside the log.
pub const CHECKPOINT_FILE: &str = "audit.checkpoint";
/// The lock every writer and the checkpoint take, beside the log.
pub const LOCK_FILE: &str = "audit.lock";
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

    /// Takes the log's lock (`audit.lock`), exclusive or shared, held while the value lives.
    /// A separate file, so that a rotation (which renames the log) never leaves a waiting
    /// writer holding the old file.
    fn lock(&self, exclusive: bool) -> Result<std::fs::File, AuditError> {
        ensure_dir(&self.dir)?;
        let path = self.dir.join(LOCK_FILE);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        let file = options.open(&path).map_err(io(&path))?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&file, op).map_err(|e| io(&path)(e.into()))?;
        Ok(file)
    }

    /// Appends `event` as the next entry, under the log's exclusive lock (other processes of
    /// the job append too), and syncs it. Refuses to chain onto a last line cut short.
    pub fn append(&self, event: Event) -> Result<Entry, AuditError> {
        let _lock = self.lock(true)?;
        self.append_locked(event)
    }

    fn append_locked(&self, event: Event) -> Result<Entry, AuditError> {
        let path = self.log_path();
        let mut file = self.open_file()?;
        let (seq, prev) = match tail(&mut file, &path)? {
            (0, _) => self.last_closed()?,
            found => found,
        };
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

    /// The last entry of the newest closed segment (an empty current log after a rotation cut
    /// short goes on from there); 0 and [`GENESIS`] without one.
    fn last_closed(&self) -> Result<(u64, String), AuditError> {
        let closed = closed_segments(&self.dir).map_err(io(&self.dir))?;
        match closed.last() {
            None => Ok((0, GENESIS.to_owned())),
            Some(path) => {
                let mut file = std::fs::File::open(path).map_err(io(path))?;
                tail(&mut file, path)
            }
        }
    }

    /// Signs a checkpoint of the whole kept log (every segment) with `signer` and writes it
    /// (0640) beside the log; returns its path. Refuses a log that does not verify.
    pub fn checkpoint(
        &self,
        signer: &note::NoteSigner,
        origin: &str,
    ) -> Result<PathBuf, AuditError> {
        let _lock = self.lock(false)?;
        let scanned = scan(&self.dir, &mut |_| Ok(())).map_err(|b| AuditError::Invalid {
            path: self.log_path(),
            message: format!("not signed, the log does not verify: {b}"),
        })?;
        let checkpoint = note::Checkpoint {
            origin: origin.to_owned(),
            size: scanned.tree.size(),
            root: scanned.tree.root(),
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

    /// Closes the current segment when its first entry is of an earlier month than `now`
    /// (segments are monthly): see [`AuditLog::rotate`]. The closed segment, if one was.
    pub fn rotate_monthly(&self, now: DateTime<Utc>) -> Result<Option<PathBuf>, AuditError> {
        let first = first_entry(&self.log_path())?;
        match first {
            Some(e) if (e.at.year(), e.at.month()) < (now.year(), now.month()) => self.rotate(),
            _ => Ok(None),
        }
    }

    /// Closes the current segment (renamed `audit-<its first seq>.jsonl`) and starts the next
    /// with a `segment_started` entry that chains to the closed one's last line and carries the
    /// Merkle frontier of everything before it, so the log stays verifiable from that segment
    /// once the older ones are purged. Refuses a log that does not verify.
    pub fn rotate(&self) -> Result<Option<PathBuf>, AuditError> {
        let _lock = self.lock(true)?;
        let log = self.log_path();
        let Some(first) = first_entry(&log)? else {
            return Ok(None);
        };
        let scanned = scan(&self.dir, &mut |_| Ok(())).map_err(|b| AuditError::Invalid {
            path: log.clone(),
            message: format!("not rotated, the log does not verify: {b}"),
        })?;
        let closed = self.dir.join(format!("audit-{:010}.jsonl", first.seq));
        std::fs::rename(&log, &closed).map_err(io(&closed))?;
        self.append_locked(
            Event::new("segment_started", LOG_FILE)
                .with(
                    "previous",
                    closed
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                )
                .with("tree_size", scanned.tree.size())
                .with("frontier", scanned.tree.frontier()),
        )?;
        Ok(Some(closed))
    }

    /// The oldest closed segments whose last entry is older than `before`, oldest first, up to
    /// the first that is not (never the current one): what [`AuditLog::purge_segments`]
    /// removes.
    pub fn expired_segments(&self, before: DateTime<Utc>) -> Result<Vec<PathBuf>, AuditError> {
        let mut out = Vec::new();
        for path in closed_segments(&self.dir).map_err(io(&self.dir))? {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let last: Option<Entry> = text
                .lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok());
            match last {
                Some(e) if e.at < before => out.push(path),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Removes the [`AuditLog::expired_segments`] (whole segments, oldest first); the log stays
    /// verifiable from the oldest kept segment. The removed files.
    pub fn purge_segments(&self, before: DateTime<Utc>) -> Result<Vec<PathBuf>, AuditError> {
        let _lock = self.lock(true)?;
        let expired = self.expired_segments(before)?;
        for path in &expired {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        Ok(expired)
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
    /// The last entry's sequence number (the number of entries ever written).
    pub entries: u64,
    /// The oldest kept entry (1 unless old segments were purged).
    pub first: u64,
    /// Checkpoints that held, with their sizes.
    pub checkpoints: Vec<(String, u64)>,
    /// Checkpoints older than the oldest kept segment: their entries are purged, they cannot be
    /// checked.
    pub predating: Vec<(String, u64)>,
}

/// The first thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Broken {
    /// The first entry (1-based line) that is bad, when one can be named.
    pub entry: Option<u64>,
    pub message: String,
}

/// The closed segments of the log in `dir`, oldest first.
fn closed_segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every segment, oldest first, the current one last.
fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut all = closed_segments(dir)?;
    let current = dir.join(LOG_FILE);
    if current.exists() {
        all.push(current);
    }
    Ok(all)
}

fn first_entry(path: &Path) -> Result<Option<Entry>, AuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    match text.lines().next() {
        None => Ok(None),
        Some(line) => serde_json::from_str(line)
            .map(Some)
            .map_err(|e| AuditError::Invalid {
                path: path.to_owned(),
                message: format!("its first entry does not parse: {e}"),
            }),
    }
}

/// What a scan of every kept segment found.
struct Scan {
    tree: merkle::Tree,
    /// The sequence number of the oldest kept entry (1 unless segments were purged).
    first: u64,
    /// The last entry's sequence number.
    last: u64,
}

/// Walks every kept segment: sequence numbers, the chain, the frontier of each
/// `segment_started`, and the Merkle tree, calling `at_size` after each entry (and at the
/// oldest kept segment's start).
fn scan(
    dir: &Path,
    at_size: &mut dyn FnMut(&merkle::Tree) -> Result<(), Broken>,
) -> Result<Scan, Broken> {
    let files = segments(dir).map_err(|e| Broken {
        entry: None,
        message: format!("cannot list {}: {e}", dir.display()),
    })?;
    let mut tree = merkle::Tree::default();
    let mut prev = GENESIS.to_owned();
    let (mut first, mut n) = (0u64, 0u64);
    for path in &files {
        let text = std::fs::read(path).map_err(|e| Broken {
            entry: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if !text.is_empty() && text.last() != Some(&b'\n') {
            let at = n + text.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            return Err(Broken {
                entry: Some(at),
                message: format!("entry {at} ({name}) is cut short (no newline at its end)"),
            });
        }
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let entry: Entry = serde_json::from_slice(line).map_err(|e| Broken {
                entry: Some(n + 1),
                message: format!("entry {} ({name}) is not a valid entry: {e}", n + 1),
            })?;
            let frontier = (entry.action == "segment_started").then(|| {
                let size = entry
                    .details
                    .get("tree_size")
                    .and_then(|s| s.parse::<u64>().ok());
                let text = entry.details.get("frontier").cloned().unwrap_or_default();
                (size, text)
            });
            if first == 0 {
                // The oldest kept entry: the genesis, or the start of a segment whose
                // predecessors were purged (its frontier stands for them).
                first = entry.seq;
                if entry.seq == 1 {
                    if entry.prev != GENESIS {
                        return Err(Broken {
                            entry: Some(1),
                            message: "entry 1 does not start a chain (its prev is not the genesis hash): entries before it were removed, or it was changed".into(),
                        });
                    }
                } else {
                    let resumed = frontier.as_ref().and_then(|(size, text)| {
                        size.filter(|s| *s + 1 == entry.seq)
                            .and_then(|s| merkle::Tree::from_frontier(text, s))
                    });
                    tree = resumed.ok_or_else(|| Broken {
                        entry: Some(entry.seq),
                        message: format!(
                            "the oldest kept entry is {} ({name}), not 1 nor the start of a segment with its frontier: entries before it were removed",
                            entry.seq
                        ),
                    })?;
                    at_size(&tree)?;
                }
            } else {
                if entry.seq != n + 1 {
                    return Err(Broken {
                        entry: Some(n + 1),
                        message: format!(
                            "entry {} is followed by entry {} ({name}): entries were removed, added or moved",
                            n, entry.seq
                        ),
                    });
                }
                if entry.prev != prev {
                    return Err(Broken {
                        entry: Some(n),
                        message: format!(
                            "entry {} ({name}) does not chain to entry {n}: entry {n} was changed (or lines were replaced)",
                            n + 1
                        ),
                    });
                }
                if let Some((size, text)) = &frontier {
                    if *size != Some(tree.size()) || *text != tree.frontier() {
                        return Err(Broken {
                            entry: Some(entry.seq),
                            message: format!(
                                "entry {} ({name}) starts a segment with a frontier that is not the log's: it was changed",
                                entry.seq
                            ),
                        });
                    }
                }
            }
            n = entry.seq;
            prev = sha256_hex(line);
            tree.push(merkle::leaf(line));
            at_size(&tree)?;
        }
    }
    Ok(Scan {
        tree,
        first: first.max(1),
        last: n,
    })
}

/// Checks the chain of every kept segment of the log in `dir`, then each of `checkpoints`
/// (`(name, signed note)`) with `verifier`: its signature, that the log holds at least its
/// entries, and that the entries up to its size have its Merkle root. A checkpoint older than
/// the oldest kept segment cannot be checked and is reported as such.
pub fn verify(
    dir: &Path,
    verifier: &note::NoteVerifier,
    checkpoints: &[(String, String)],
) -> Result<Verified, Broken> {
    let mut opened = Vec::new();
    for (name, note) in checkpoints {
        let cp = verifier.open(note).map_err(|e| Broken {
            entry: None,
            message: format!("{name}: {e}"),
        })?;
        opened.push((name.clone(), cp));
    }
    let mut seen = vec![false; opened.len()];
    let scanned = scan(dir, &mut |tree| {
        for (i, (name, cp)) in opened.iter().enumerate() {
            if cp.size == tree.size() {
                seen[i] = true;
                if cp.root != tree.root() {
                    return Err(Broken {
                        entry: None,
                        message: format!(
                            "{name}: the log's entries up to {} are not the ones it signed (its Merkle root differs): the log was rewritten",
                            cp.size
                        ),
                    });
                }
            }
        }
        Ok(())
    })?;
    let n = scanned.last;
    let empty_root_ok =
        |cp: &note::Checkpoint| cp.size == 0 && cp.root == merkle::Tree::default().root();
    let mut held = Vec::new();
    let mut too_old = Vec::new();
    for (i, (name, cp)) in opened.into_iter().enumerate() {
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
        if seen[i] || empty_root_ok(&cp) {
            held.push((name, cp.size));
        } else {
            too_old.push((name, cp.size));
        }
    }
    Ok(Verified {
        entries: n,
        first: scanned.first,
        checkpoints: held,
        predating: too_old,
    })
}

/// Every kept entry of the log in `dir` (every segment), oldest first (an unreadable line is an
/// error naming it).
pub fn read(dir: &Path) -> Result<Vec<Entry>, AuditError> {
    let mut out = Vec::new();
    for path in segments(dir).map_err(io(dir))? {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        for (i, l) in text.lines().enumerate() {
            out.push(serde_json::from_str(l).map_err(|e| AuditError::Invalid {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

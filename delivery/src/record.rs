//! The delivery record: one JSON line per file delivered to a target, and per file a target
//! gave up on, appended to `<state.dir>/deliveries.jsonl` (mode 0600) and synced. It names
//! files, objects and checksums, never an account.
//!
//! Retention ([`Record::retain`]) rewrites it without the lines of business dates past
//! `[retention] files`, so it does not grow for ever. Appends and the rewrite take an
//! exclusive `flock` on the file; an append that finds the file replaced under its lock (the
//! rewrite renamed a new one into place) opens the new one and appends there, so no line is
//! lost to a rewrite in another process.

use chrono::{DateTime, NaiveDate, Utc};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One line of the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordEntry {
    /// When the upload was checked (or given up).
    pub at: DateTime<Utc>,
    pub run_id: String,
    pub business_date: NaiveDate,
    /// The target's name.
    pub target: String,
    /// `dir`, `s3` or `sftp`.
    pub kind: String,
    /// `delivered` or `failed`.
    pub outcome: String,
    /// The local file's name.
    pub file: String,
    /// Where it is now (`s3://…`, `sftp://…`, a path); delivered only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Lowercase hex SHA-256 of the bytes delivered (the far side's, checked after upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Attempts the target took.
    pub attempts: u32,
    /// The last error; failed only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The append-only record file.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Record {
    pub fn new(path: PathBuf) -> Self {
        Record {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Where the record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it.
    pub fn append(&self, entry: &RecordEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut file = open_private(&self.path, true)?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            if !same_file(&file, &self.path)? {
                // Rewritten by retention while this waited for the lock: append to the new file.
                continue;
            }
            file.write_all(&line)?;
            return file.sync_data();
        }
    }

    /// Keeps only the entries `keep` says yes to: the record is written anew beside itself and
    /// renamed into place (synced), under the file's lock. Returns how many lines went.
    pub fn retain(path: &Path, keep: impl Fn(&RecordEntry) -> bool) -> std::io::Result<usize> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        let entries = Self::read(path)?;
        let before = entries.len();
        let kept: Vec<RecordEntry> = entries.into_iter().filter(|e| keep(e)).collect();
        let dropped = before - kept.len();
        if dropped == 0 {
            return Ok(0);
        }
        let mut text = Vec::new();
        for entry in &kept {
            serde_json::to_writer(&mut text, entry).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let name = path.file_name().map_or_else(
            || "deliveries.jsonl".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let temp = path.with_file_name(format!(".{name}.retain"));
        {
            let mut out = open_private(&temp, false)?;
            out.set_len(0)?;
            out.write_all(&text)?;
            out.sync_all()?;
        }
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        drop(file);
        Ok(dropped)
    }

    /// Every entry, oldest first (a line that does not parse is an error naming it).
    pub fn read(path: &Path) -> std::io::Result<Vec<RecordEntry>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} line {}: {e}", path.display(), i + 1),
                    )
                })
            })
            .collect()
    }
}
/// Opens `path` for appending (`append`) or writing, creating it with mode 0600.
fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Whether the open `file` is still the file at `path` (not replaced by a rename).
fn same_file(file: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (open, named) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.dev() == named.dev() && open.ino() == named.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(date: &str, file: &str) -> RecordEntry {
        RecordEntry {
            at: Utc::now(),
            run_id: date.to_owned(),
            business_date: date.parse().expect("date"),
            target: "share".to_owned(),
            kind: "dir".to_owned(),
            outcome: "delivered".to_owned(),
            file: file.to_owned(),
            object: None,
            sha256: None,
            bytes: Some(1),
            attempts: 1,
            error: None,
        }
    }

    #[test]
    fn retention_drops_the_old_lines_and_appends_go_on_in_the_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deliveries.jsonl");
        assert_eq!(Record::retain(&path, |_| true).expect("no record yet"), 0);
        let record = Record::new(path.clone());
        for date in ["2027-01-04", "2027-01-05", "2027-02-01", "2027-02-02"] {
            record.append(&entry(date, "a.csv")).expect("append");
        }
        let cut: NaiveDate = "2027-02-01".parse().expect("date");
        let dropped = Record::retain(&path, |e| e.business_date >= cut).expect("retain");
        assert_eq!(dropped, 2);
        record
            .append(&entry("2027-02-03", "b.csv"))
            .expect("append after");
        let left: Vec<String> = Record::read(&path)
            .expect("read")
            .iter()
            .map(|e| e.business_date.to_string())
            .collect();
        assert_eq!(left, ["2027-02-01", "2027-02-02", "2027-02-03"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Record::retain(&path, |_| true).expect("nothing to drop"), 0);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}

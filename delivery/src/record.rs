//! The delivery record: one JSON line per file delivered to a target, and per file a target
//! gave up on, appended to `<state.dir>/deliveries.jsonl` (mode 0600) and synced. It names
//! files, objects and checksums, never an account.

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
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
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

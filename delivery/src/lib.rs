//! Delivery of a day's files to the firm's secure locations: any number of `[[delivery]]`
//! targets, each an S3-compatible bucket ([`s3`]), an SFTP server ([`sftp`]) or a mounted share
//! ([`dir`]).
//!
//! What every target promises: a delivered object is whole or absent (an S3 upload is one
//! `PUT` or a completed multipart upload; SFTP and a share write a temporary name and rename
//! it), its content is checked against the local file's SHA-256 after the upload, and the local
//! file is only ever read. [`Deliveries::deliver`] sends a run's files to every target at once,
//! the ratings file last (its arrival says the day is there), retrying a target whose upload
//! failed with exponential backoff until the run's deadline (at least [`MIN_ATTEMPTS`] times); a
//! refusal that waiting cannot cure (a host key that does not match, a rejected key or
//! credential) is not retried. Each delivered file and each target that gave up is a line of
//! the delivery record (`deliveries.jsonl`: target, object, checksum) and is counted in metrics.
//!
//! Not owned here: which files a run wrote (the assembler's), the alert a failed delivery
//! raises and the `esg deliver` command (the binary's).

pub mod dir;
mod record;
pub mod s3;
pub mod sftp;

pub use record::{Record, RecordEntry};

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A target is tried at least this many times, even when the deadline has passed (a run that
/// timed out still delivers its file).
pub const MIN_ATTEMPTS: u32 = 3;

/// One `[[delivery]]` table: `kind` says which target it is.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetConfig {
    /// A directory, typically a mounted network share.
    Dir(dir::DirConfig),
    /// An S3-compatible bucket.
    S3(s3::S3Config),
    /// An SFTP server.
    Sftp(sftp::SftpConfig),
}

impl TargetConfig {
    /// `dir`, `s3` or `sftp`.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetConfig::Dir(_) => "dir",
            TargetConfig::S3(_) => "s3",
            TargetConfig::Sftp(_) => "sftp",
        }
    }

    /// The name given with `name = "…"`, or one made of the kind and where it points.
    pub fn name(&self) -> String {
        let given = match self {
            TargetConfig::Dir(c) => c.name.clone(),
            TargetConfig::S3(c) => c.name.clone(),
            TargetConfig::Sftp(c) => c.name.clone(),
        };
        given.unwrap_or_else(|| match self {
            TargetConfig::Dir(c) => format!("dir:{}", c.path.display()),
            TargetConfig::S3(c) => format!("s3:{}", c.bucket),
            TargetConfig::Sftp(c) => format!("sftp:{}", c.host),
        })
    }

    /// Checks the table without touching the network: what is wrong, and which key (relative
    /// to the `[[delivery]]` table) says so.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            TargetConfig::Dir(c) => c.validate(),
            TargetConfig::S3(c) => c.validate(),
            TargetConfig::Sftp(c) => c.validate(),
        }
    }

    /// Builds the target (reads key and CA files; no connection is made).
    pub fn build(&self) -> Result<Box<dyn Target>, DeliveryError> {
        Ok(match self {
            TargetConfig::Dir(c) => Box::new(dir::DirTarget::new(c.clone())),
            TargetConfig::S3(c) => Box::new(s3::S3Target::new(c)?),
            TargetConfig::Sftp(c) => Box::new(sftp::SftpTarget::new(c)?),
        })
    }
}

/// A local file to deliver, with what the far side must end up holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name (the object's name under the target's prefix or directory).
    pub name: String,
    /// Lowercase hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

impl LocalFile {
    /// Reads `path` once to hash it.
    pub fn read(path: &Path) -> Result<LocalFile, DeliveryError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                DeliveryError::permanent(format!("{} has no file name", path.display()))
            })?
            .to_owned();
        let mut file = std::fs::File::open(path).map_err(|e| {
            DeliveryError::permanent(format!("cannot read {}: {e}", path.display()))
        })?;
        let (sha256, size) = sha256_of(&mut file).map_err(|e| {
            DeliveryError::permanent(format!("cannot read {}: {e}", path.display()))
        })?;
        Ok(LocalFile {
            path: path.to_owned(),
            name,
            sha256,
            size,
        })
    }
}

/// Lowercase hex SHA-256 and length of everything `reader` yields.
pub fn sha256_of(reader: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Why a delivery failed; `retryable` says whether waiting may cure it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What went wrong, one line, no secrets.
    pub message: String,
    /// A network error, a timeout, a server error: worth another try. A host key that does not
    /// match, a refused credential, a bad setting: not.
    pub retryable: bool,
}

impl DeliveryError {
    /// An error worth another try.
    pub fn retryable(message: impl Into<String>) -> Self {
        DeliveryError {
            message: message.into(),
            retryable: true,
        }
    }
    /// An error waiting cannot cure.
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// A place files are delivered to.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Where `name` is once delivered: `s3://bucket/prefix/name`, `sftp://host/dir/name`, a path.
    fn object(&self, name: &str) -> String;

    /// Uploads `file` whole or not at all (a failed upload leaves nothing under its name, and
    /// the earlier object, if any, as it was), checks that the far side holds exactly its bytes
    /// (its SHA-256), and replaces an earlier object of the same name.
    async fn put(&self, file: &LocalFile) -> Result<(), DeliveryError>;

    /// Checks that the target can be reached and written, leaving nothing behind (pre-flight).
    async fn check(&self) -> Result<(), DeliveryError>;

    /// The names of the objects the target holds directly under its prefix or directory (not
    /// below), for retention; temporary names of uploads included.
    async fn list(&self) -> Result<Vec<String>, DeliveryError>;

    /// Removes the object `name` (a name [`Target::list`] gave). Removing a name that is not
    /// there is not an error. A refusal by the store (Object Lock, a retention setting, no
    /// permission) is a permanent error saying so.
    async fn delete(&self, name: &str) -> Result<(), DeliveryError>;
}

/// How often a failed target is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubled after each further one.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Tries at least this many times, deadline or not.
    pub min_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(120),
            min_attempts: MIN_ATTEMPTS,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` ≥ 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Which run the files belong to, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub run_id: String,
    pub business_date: NaiveDate,
}

/// One file delivered to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub target: String,
    pub object: String,
    pub sha256: String,
    pub size: u64,
    pub attempts: u32,
}

/// A target that gave up: the files it did not take and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub target: String,
    pub files: Vec<String>,
    pub attempts: u32,
    pub error: DeliveryError,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} not delivered after {} attempt{}: {}",
            self.target,
            self.files.join(", "),
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.error
        )
    }
}

/// What one delivery of a run's files came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub delivered: Vec<Delivered>,
    pub failed: Vec<Failed>,
}

impl Report {
    /// True when every target took every file.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

struct Named {
    name: String,
    kind: &'static str,
    target: Box<dyn Target>,
    /// One upload at a time to a target: two deliveries of one process (a retry still running
    /// when a re-run's files come) never write the same temporary name at once.
    busy: tokio::sync::Mutex<()>,
}

/// The configured targets, the record, the retry policy.
pub struct Deliveries {
    targets: Vec<Named>,
    record: Record,
    policy: RetryPolicy,
}

impl fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliveries")
            .field(
                "targets",
                &self.targets.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .finish()
    }
}

impl Deliveries {
    /// Builds every target of `configs`; the record is appended to `record`.
    pub fn new(configs: &[TargetConfig], record: &Path) -> Result<Arc<Self>, DeliveryError> {
        let mut targets = Vec::with_capacity(configs.len());
        for config in configs {
            let name = config.name();
            let target = config.build().map_err(|e| DeliveryError {
                message: format!("delivery target {name}: {e}"),
                ..e
            })?;
            targets.push(Named {
                name,
                kind: config.kind(),
                target,
                busy: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Arc::new(Deliveries {
            targets,
            record: Record::new(record.to_owned()),
            policy: RetryPolicy::default(),
        }))
    }

    /// The same targets with another retry policy (tests).
    pub fn with_policy(mut self: Arc<Self>, policy: RetryPolicy) -> Arc<Self> {
        if let Some(this) = Arc::get_mut(&mut self) {
            this.policy = policy;
        }
        self
    }

    /// True when no target is configured.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }

    /// The index of the target called `name` (for [`Deliveries::deliver`]'s `only`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.name == name)
    }

    /// Retention: on every target, removes (unless `dry_run`) each object its listing holds
    /// that `doomed` picks; `(target, object, outcome)` for each, and for a listing that failed
    /// (object `(listing)`).
    pub async fn purge(
        &self,
        doomed: &(dyn Fn(&str) -> bool + Sync),
        dry_run: bool,
    ) -> Vec<(String, String, Result<(), DeliveryError>)> {
        let mut out = Vec::new();
        for t in &self.targets {
            match t.target.list().await {
                Err(e) => out.push((t.name.clone(), "(listing)".to_owned(), Err(e))),
                Ok(names) => {
                    for name in names.into_iter().filter(|n| doomed(n)) {
                        let result = if dry_run {
                            Ok(())
                        } else {
                            let _one_at_a_time = t.busy.lock().await;
                            t.target.delete(&name).await
                        };
                        out.push((t.name.clone(), t.target.object(&name), result));
                    }
                }
            }
        }
        out
    }

    /// Checks every target (pre-flight): the names and errors of those that failed.
    pub async fn check(&self) -> Vec<(String, DeliveryError)> {
        let checks = self
            .targets
            .iter()
            .map(|t| async move { t.target.check().await.err().map(|e| (t.name.clone(), e)) });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Delivers `files` (local paths) to every target, or to the target at index `only`;
    /// retries a failed target until `deadline` (at least [`RetryPolicy::min_attempts`] times)
    /// unless `stop` is cancelled first. The files are sent in the order given: put the ratings
    /// file last.
    pub async fn deliver(
        &self,
        run: &RunRef,
        files: &[PathBuf],
        deadline: DateTime<Utc>,
        only: Option<usize>,
        stop: &CancellationToken,
    ) -> Report {
        let mut local = Vec::with_capacity(files.len());
        for path in files {
            match LocalFile::read(path) {
                Ok(file) => local.push(file),
                Err(error) => {
                    // Nothing can be delivered from a file the job cannot read.
                    let failed: Vec<Failed> = self
                        .targets
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| only.is_none_or(|o| o == *i))
                        .map(|(_, t)| Failed {
                            target: t.name.clone(),
                            files: files.iter().map(|p| p.display().to_string()).collect(),
                            attempts: 0,
                            error: error.clone(),
                        })
                        .collect();
                    for f in &failed {
                        self.record_failure(run, f);
                    }
                    return Report {
                        delivered: Vec::new(),
                        failed,
                    };
                }
            }
        }
        let runs = self
            .targets
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o == *i))
            .map(|(_, t)| self.deliver_to(t, run, &local, deadline, stop));
        let mut report = Report::default();
        for (delivered, failed) in futures::future::join_all(runs).await {
            report.delivered.extend(delivered);
            report.failed.extend(failed);
        }
        report
    }

    async fn deliver_to(
        &self,
        t: &Named,
        run: &RunRef,
        files: &[LocalFile],
        deadline: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> (Vec<Delivered>, Option<Failed>) {
        let mut delivered = Vec::new();
        let mut pending: Vec<&LocalFile> = files.iter().collect();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut error = None;
            while let Some(file) = pending.first() {
                let started = std::time::Instant::now();
                let put = {
                    let _one_at_a_time = t.busy.lock().await;
                    t.target.put(file).await
                };
                match put {
                    Ok(()) => {
                        let object = t.target.object(&file.name);
                        tracing::info!(
                            run_id = %run.run_id,
                            target = %t.name,
                            object = %object,
                            sha256 = %file.sha256,
                            bytes = file.size,
                            attempt,
                            seconds = started.elapsed().as_secs_f64(),
                            "file delivered"
                        );
                        metrics::counter!(esg_metrics::DELIVERIES_TOTAL, "target" => t.name.clone(), "outcome" => "delivered").increment(1);
                        metrics::counter!(esg_metrics::DELIVERY_BYTES_TOTAL, "target" => t.name.clone()).increment(file.size);
                        let entry = Delivered {
                            target: t.name.clone(),
                            object,
                            sha256: file.sha256.clone(),
                            size: file.size,
                            attempts: attempt,
                        };
                        self.record_delivered(run, t.kind, file, &entry);
                        delivered.push(entry);
                        pending.remove(0);
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let Some(error) = error else {
                return (delivered, None);
            };
            let wait = self.policy.backoff(attempt);
            let past_deadline = Utc::now() + wait >= deadline;
            let give_up = !error.retryable
                || (attempt >= self.policy.min_attempts && past_deadline)
                || stop.is_cancelled();
            if give_up {
                tracing::error!(
                    run_id = %run.run_id,
                    target = %t.name,
                    attempts = attempt,
                    retryable = error.retryable,
                    error = %error,
                    "delivery failed"
                );
                metrics::counter!(esg_metrics::DELIVERIES_TOTAL, "target" => t.name.clone(), "outcome" => "failed").increment(pending.len() as u64);
                let failed = Failed {
                    target: t.name.clone(),
                    files: pending.iter().map(|f| f.name.clone()).collect(),
                    attempts: attempt,
                    error,
                };
                self.record_failure(run, &failed);
                return (delivered, Some(failed));
            }
            tracing::warn!(
                run_id = %run.run_id,
                target = %t.name,
                attempt,
                retry_in_seconds = wait.as_secs_f64(),
                error = %error,
                "delivery failed; trying again"
            );
            metrics::counter!(esg_metrics::DELIVERY_RETRIES_TOTAL, "target" => t.name.clone())
                .increment(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    fn record_delivered(&self, run: &RunRef, kind: &str, file: &LocalFile, d: &Delivered) {
        self.append(RecordEntry {
            at: Utc::now(),
            run_id: run.run_id.clone(),
            business_date: run.business_date,
            target: d.target.clone(),
            kind: kind.to_owned(),
            outcome: "delivered".into(),
            file: file.name.clone(),
            object: Some(d.object.clone()),
            sha256: Some(d.sha256.clone()),
            bytes: Some(d.size),
            attempts: d.attempts,
            error: None,
        });
    }

    fn record_failure(&self, run: &RunRef, f: &Failed) {
        let kind = self
            .targets
            .iter()
            .find(|t| t.name == f.target)
            .map_or("", |t| t.kind);
        for file in &f.files {
            self.append(RecordEntry {
                at: Utc::now(),
                run_id: run.run_id.clone(),
                business_date: run.business_date,
                target: f.target.clone(),
                kind: kind.to_owned(),
                outcome: "failed".into(),
                file: file.clone(),
                object: None,
                sha256: None,
                bytes: None,
                attempts: f.attempts,
                error: Some(f.error.message.clone()),
            });
        }
    }

    fn append(&self, entry: RecordEntry) {
        if let Err(e) = self.record.append(&entry) {
            // The delivery itself happened (or not) as logged; the record is what is missing.
            tracing::error!(record = %self.record.path().display(), error = %e, "cannot append to the delivery record");
            metrics::counter!(esg_metrics::DELIVERY_RECORD_FAILURES_TOTAL).increment(1);
        }
    }
}

#[cfg(test)]
mod tests;

//! What the job writes to its audit trail (`esg-audit`), and when: the configuration in force
//! when a run starts, a run's start and end, each file written (name, SHA-256, size, for whom it
//! is encrypted), rows replaced by a re-run, each file delivered (target, object, SHA-256), a
//! person opening a file (`esg open`); after each run, a checkpoint signed with `[audit]
//! signing_key_file`, delivered with the files. An entry that cannot be written is logged as an
//! error and counted (`esg_audit_failures_total`): it never stops a run.

use crate::config::Config;
use esg_assembler::encryption::Protection;
use esg_assembler::RunEnded;
use esg_audit::note::NoteSigner;
use esg_audit::{AuditLog, Event};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The subdirectory of numbered copies of each checkpoint, the ones delivered.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The job's audit trail.
pub struct Audit {
    log: AuditLog,
    signer: Option<Arc<NoteSigner>>,
    recipients: String,
}

impl Audit {
    pub fn new(config: &Config) -> Arc<Self> {
        let recipients = match config.protection() {
            Ok(Protection::Age(r)) => r
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            _ => "nobody (plaintext)".into(),
        };
        Arc::new(Audit {
            log: AuditLog::new(&config.audit_dir()),
            signer: config.audit.signer.clone(),
            recipients,
        })
    }

    /// The log.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Appends `event`; trouble is logged and counted, not returned.
    pub fn record(&self, event: Event) {
        let action = event.action.clone();
        if let Err(e) = self.log.append(event) {
            tracing::error!(action = %action, error = %e, "cannot write to the audit log");
            metrics::counter!(esg_metrics::AUDIT_FAILURES_TOTAL).increment(1);
        }
    }

    /// A run starts: the configuration in force (its hash), then the run.
    pub fn run_started(&self, config: &Config, run_id: &str, business_date: chrono::NaiveDate) {
        self.record(
            Event::new("configuration", "esg configuration")
                .with("sha256", config.fingerprint())
                .with("run_id", run_id),
        );
        self.record(Event::new("run_started", run_id).with("business_date", business_date));
    }

    /// A run ended: its outcome, the files it wrote, the rows a re-run replaced; then a signed
    /// checkpoint. Returns the numbered copy of the checkpoint to deliver with the files.
    pub fn run_ended(&self, ended: &RunEnded, protection: &Protection) -> Option<PathBuf> {
        let done = &ended.completed;
        self.record(
            Event::new("run_ended", &done.run_id)
                .with("outcome", done.outcome.as_str())
                .with("business_date", done.business_date)
                .with("rows", done.rows)
                .with("failed", done.failed),
        );
        if let Some(report) = &ended.report {
            let parquet = report
                .csv
                .parent()
                .map(|dir| esg_assembler::parquet::path(dir, report.business_date, protection));
            let files = [
                &report.csv,
                &report.errors,
                &report.summary_path,
                &report.summary_html,
            ]
            .into_iter()
            .chain(parquet.as_ref());
            for path in files.filter(|p| p.exists()) {
                self.file_written(&done.run_id, path, protection);
            }
            if ended.kind != esg_schemas::RunKind::Daily {
                let replaced = report.summary.reruns.last().map_or(0, |r| r.accounts);
                self.record(
                    Event::new(
                        "rows_replaced",
                        report
                            .csv
                            .file_name()
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    )
                    .with("run_id", &done.run_id)
                    .with("kind", ended.kind.as_str())
                    .with("rows", replaced),
                );
            }
        }
        self.checkpoint()
    }

    fn file_written(&self, run_id: &str, path: &Path, protection: &Protection) {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match sha256_file(path) {
            Ok((sha256, size)) => self.record(
                Event::new("file_written", name)
                    .with("run_id", run_id)
                    .with("sha256", sha256)
                    .with("bytes", size)
                    .with(
                        "encrypted_for",
                        if protection.is_encrypted() {
                            self.recipients.as_str()
                        } else {
                            "nobody (plaintext)"
                        },
                    ),
            ),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot hash a written file for the audit log")
            }
        }
    }

    /// Files delivered (and targets that gave up), from a delivery's report.
    pub fn delivered(&self, run_id: &str, report: &esg_delivery::Report) {
        for d in &report.delivered {
            self.record(
                Event::new("delivered", &d.object)
                    .with("run_id", run_id)
                    .with("target", &d.target)
                    .with("sha256", &d.sha256)
                    .with("bytes", d.size),
            );
        }
        for f in &report.failed {
            self.record(
                Event::new("delivery_failed", &f.target)
                    .with("run_id", run_id)
                    .with("files", f.files.join(" "))
                    .with("error", &f.error.message),
            );
        }
    }

    /// Signs a checkpoint of the log as it is now (when a key is configured); the numbered
    /// copy `checkpoints/audit-<size>.checkpoint`, to deliver.
    pub fn checkpoint(&self) -> Option<PathBuf> {
        // Monthly segments, so that retention can remove whole old ones.
        if let Err(e) = self.log.rotate_monthly(chrono::Utc::now()) {
            tracing::error!(error = %e, "cannot start a new segment of the audit log");
            metrics::counter!(esg_metrics::AUDIT_FAILURES_TOTAL).increment(1);
        }
        let signer = self.signer.as_ref()?;
        let result = (|| -> anyhow::Result<PathBuf> {
            let latest = self.log.checkpoint(signer, signer.name())?;
            let text = std::fs::read_to_string(&latest)?;
            let size = text.lines().nth(1).unwrap_or("0");
            let dir = self.log.dir().join(CHECKPOINTS_DIR);
            std::fs::create_dir_all(&dir)?;
            let copy = dir.join(format!("audit-{size:0>9}.checkpoint"));
            std::fs::copy(&latest, &copy)?;
            Ok(copy)
        })();
        match result {
            Ok(copy) => Some(copy),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot sign the audit checkpoint");
                metrics::counter!(esg_metrics::AUDIT_FAILURES_TOTAL).increment(1);
                None
            }
        }
    }
}

/// Lowercase hex SHA-256 and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, size))
}

/// `esg audit verify`: the chain of the log of `config`, its own latest checkpoint, and each of
/// `checkpoints` (copies the firm holds), checked with `verifier` (a verifier key text), else
/// with the public half of `[audit] signing_key_file`. A summary, or the first thing wrong.
pub fn verify(
    config: &Config,
    verifier: Option<&str>,
    checkpoints: &[PathBuf],
) -> anyhow::Result<Result<String, String>> {
    let dir = config.audit_dir();
    let verifier = match (verifier, &config.audit.signer) {
        (Some(text), _) => Some(
            esg_audit::note::NoteVerifier::parse(text)
                .map_err(|e| anyhow::anyhow!("--verifier-key: {e}"))?,
        ),
        (None, Some(signer)) => Some(signer.verifier()),
        (None, None) => None,
    };
    let mut notes = Vec::new();
    let latest = dir.join(esg_audit::CHECKPOINT_FILE);
    if verifier.is_some() && latest.exists() {
        notes.push((
            latest.display().to_string(),
            std::fs::read_to_string(&latest)?,
        ));
    }
    for path in checkpoints {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
        notes.push((path.display().to_string(), text));
    }
    let Some(verifier) = verifier else {
        if !checkpoints.is_empty() {
            anyhow::bail!("no key to check the checkpoints with: set [audit] signing_key_file or give --verifier-key");
        }
        // The chain alone, with a throwaway key and no checkpoint.
        let throwaway = NoteSigner::generate("chain-only")?.verifier();
        return Ok(match esg_audit::verify(&dir, &throwaway, &[]) {
            Ok(v) => Ok(format!(
                "audit log {}: entries {} to {}, chain intact; no checkpoint checked ([audit] signing_key_file is not set)",
                dir.display(),
                v.first,
                v.entries
            )),
            Err(broken) => Err(broken.message),
        });
    };
    Ok(match esg_audit::verify(&dir, &verifier, &notes) {
        Ok(v) => {
            let cps: Vec<String> = v
                .checkpoints
                .iter()
                .map(|(name, size)| format!("{name} ({size} entries)"))
                .collect();
            let older: Vec<String> = v
                .predating
                .iter()
                .map(|(name, size)| format!("{name} ({size} entries)"))
                .collect();
            let older = if older.is_empty() {
                String::new()
            } else {
                format!(
                    "; older than the oldest kept segment, not checkable: {}",
                    older.join(", ")
                )
            };
            Ok(format!(
                "audit log {}: entries {} to {}, chain intact; checkpoints verified: {}{older}",
                dir.display(),
                v.first,
                v.entries,
                if cps.is_empty() {
                    "none".into()
                } else {
                    cps.join(", ")
                }
            ))
        }
        Err(broken) => Err(broken.message),
    })
}

/// `esg audit show`: the entries since `since` (a date, inclusive), as text lines or JSON lines.
pub fn show(
    config: &Config,
    since: Option<chrono::NaiveDate>,
    json: bool,
) -> anyhow::Result<Vec<String>> {
    let entries = esg_audit::read(&config.audit_dir())?;
    let mut out = Vec::new();
    for e in entries
        .iter()
        .filter(|e| since.is_none_or(|d| e.at.date_naive() >= d))
    {
        if json {
            out.push(serde_json::to_string(e)?);
            continue;
        }
        let details: Vec<String> = e.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(format!(
            "{:>6}  {}  {}@{} (uid {})  {}  {}  {}",
            e.seq,
            e.at.format("%Y-%m-%dT%H:%M:%SZ"),
            e.actor.user,
            e.actor.host,
            e.actor.uid,
            e.action,
            e.object,
            details.join(" ")
        ));
    }
    Ok(out)
}

/// `esg audit keygen`: a new signing key named `name` written to `out` (mode 0600, refused if
/// it exists); the verifier key to hand over.
pub fn keygen(name: &str, out: &Path) -> anyhow::Result<String> {
    let signer = NoteSigner::generate(name)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(out).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (an existing key is never overwritten)",
            out.display()
        )
    })?;
    let mut text = signer.to_private_text();
    text.push('\n');
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()?;
    zeroize::Zeroize::zeroize(&mut text);
    Ok(signer.verifier().to_text())
}

/// The audit directory a configuration file names (`[audit] dir`, else `<state.dir>/audit`;
/// `ESG__AUDIT__DIR` and `ESG__STATE__DIR` win), read without the rest of the configuration:
/// `esg open` is run by people who hold no client secret.
pub fn audit_dir_of(config_file: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("ESG__AUDIT__DIR") {
        return Ok(PathBuf::from(dir));
    }
    let text = std::fs::read_to_string(config_file)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", config_file.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", config_file.display()))?;
    let get = |section: &str| {
        table
            .get(section)
            .and_then(|s| s.get("dir"))
            .and_then(|d| d.as_str())
            .map(PathBuf::from)
    };
    if let Some(dir) = get("audit") {
        return Ok(dir);
    }
    let state = std::env::var("ESG__STATE__DIR")
        .ok()
        .map(PathBuf::from)
        .or_else(|| get("state"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "config {}: neither [audit] dir nor [state] dir is set",
                config_file.display()
            )
        })?;
    Ok(state.join("audit"))
}

/// `esg open`: decrypts `file` (an `.age` output) with the age identities of `identity` to
/// `out` (created 0600, never over an existing file) or to `stdout`. The opening is recorded in
/// the audit log of `audit_dir` before any plaintext is produced: a person who cannot be
/// recorded is refused. A decryption that fails partway is recorded too.
pub fn open(
    audit_dir: &Path,
    file: &Path,
    identity: &Path,
    out: Option<&Path>,
    stdout: &mut dyn std::io::Write,
) -> anyhow::Result<u64> {
    let identities = age::IdentityFile::from_file(identity.display().to_string())
        .map_err(|e| anyhow::anyhow!("identity file {}: {e}", identity.display()))?
        .into_identities()
        .map_err(|e| anyhow::anyhow!("identity file {}: {e}", identity.display()))?;
    let input =
        std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(input))
        .map_err(|e| anyhow::anyhow!("{} is not an age file: {e}", file.display()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (sha256, _) = sha256_file(file)?;
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let to = out.map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
    let log = AuditLog::new(audit_dir);
    log.append(
        Event::new("opened", &name)
            .with("sha256", &sha256)
            .with("identity", identity.display())
            .with("to", &to),
    )
    .map_err(|e| {
        anyhow::anyhow!("the opening cannot be recorded, so the file is not decrypted: {e}")
    })?;
    let copied: anyhow::Result<u64> = match out {
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut target = options
                .open(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            match std::io::copy(&mut reader, &mut target)
                .and_then(|n| target.sync_all().map(|()| n))
            {
                Ok(n) => Ok(n),
                Err(e) => {
                    drop(target);
                    let _ = std::fs::remove_file(path);
                    Err(anyhow::anyhow!(
                        "{}: {e} (damaged or cut short; nothing kept)",
                        file.display()
                    ))
                }
            }
        }
        None => std::io::copy(&mut reader, stdout)
            .map_err(|e| anyhow::anyhow!("{}: {e} (damaged or cut short)", file.display())),
    };
    if let Err(e) = &copied {
        // Part of the plaintext may have been read.
        let _ = log.append(
            Event::new("open_failed", &name)
                .with("sha256", &sha256)
                .with("to", &to)
                .with("error", format!("{e:#}")),
        );
    }
    copied
}

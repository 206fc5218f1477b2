//! `kind = "dir"`: a directory, typically a network share mounted on the job's host.
//!
//! A file is copied to a hidden temporary name in the directory (mode 0640 whatever the umask),
//! synced, read back and checked against the local file's SHA-256, then renamed over the name
//! (atomic within one file system) and the directory synced: a reader sees the old file or the
//! new one, never a part. The directory must exist: it is not created, so that a share that is
//! not mounted is an error rather than a copy on the local disk beneath the mount point.

use crate::{sha256_of, DeliveryError, LocalFile, Target};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One `[[delivery]]` table of `kind = "dir"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirConfig {
    /// A name for logs, metrics and the record (default `dir:<path>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The directory (absolute), e.g. the mount point of the share.
    pub path: PathBuf,
}

impl DirConfig {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.path.is_absolute() {
            return Err((
                "path",
                format!("must be an absolute path, not {:?}", self.path),
            ));
        }
        Ok(())
    }
}

/// Files 0640, the share's directories as they are.
const FILE_MODE: u32 = 0o640;

/// A directory target.
#[derive(Debug)]
pub struct DirTarget {
    config: DirConfig,
}

impl DirTarget {
    pub fn new(config: DirConfig) -> Self {
        DirTarget { config }
    }

    fn dir(&self) -> Result<&Path, DeliveryError> {
        let dir = self.config.path.as_path();
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(DeliveryError::permanent(format!(
                "{} is not a directory",
                dir.display()
            ))),
            // A share that is not mounted (yet): worth another try.
            Err(e) => Err(DeliveryError::retryable(format!(
                "{}: {e} (is the share mounted?)",
                dir.display()
            ))),
        }
    }

    fn temp_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!(".{name}.{}.part", std::process::id()))
    }

    fn copy(&self, file: &LocalFile) -> Result<(), DeliveryError> {
        let dir = self.dir()?;
        let temp = Self::temp_path(dir, &file.name);
        let result = write_checked(&file.path, &temp, &file.sha256);
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
            return result;
        }
        let target = dir.join(&file.name);
        if let Err(e) = std::fs::rename(&temp, &target) {
            let _ = std::fs::remove_file(&temp);
            return Err(io_error(&target, e));
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))
    }
}

/// Copies `from` to `temp` (0640), syncs it, and checks its bytes against `sha256`.
fn write_checked(from: &Path, temp: &Path, sha256: &str) -> Result<(), DeliveryError> {
    let mut source = std::fs::File::open(from)
        .map_err(|e| DeliveryError::permanent(format!("cannot read {}: {e}", from.display())))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let mut out = options.open(temp).map_err(|e| io_error(temp, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_error(temp, e))?;
    }
    std::io::copy(&mut source, &mut out).map_err(|e| io_error(temp, e))?;
    out.flush().map_err(|e| io_error(temp, e))?;
    out.sync_all().map_err(|e| io_error(temp, e))?;
    drop(out);
    let mut back = std::fs::File::open(temp).map_err(|e| io_error(temp, e))?;
    let (written, _) = sha256_of(&mut back).map_err(|e| io_error(temp, e))?;
    if written != sha256 {
        return Err(DeliveryError::retryable(format!(
            "{} holds other bytes than the local file after the copy (sha256 {written}, expected {sha256})",
            temp.display()
        )));
    }
    Ok(())
}

/// A write error: a full or read-only share may be fixed while the run waits.
fn io_error(path: &Path, e: std::io::Error) -> DeliveryError {
    DeliveryError::retryable(format!("{}: {e}", path.display()))
}

#[async_trait::async_trait]
impl Target for DirTarget {
    fn object(&self, name: &str) -> String {
        self.config.path.join(name).display().to_string()
    }

    async fn put(&self, file: &LocalFile) -> Result<(), DeliveryError> {
        let (this, file) = (DirTarget::new(self.config.clone()), file.clone());
        tokio::task::spawn_blocking(move || this.copy(&file))
            .await
            .map_err(|e| DeliveryError::retryable(format!("copy task: {e}")))?
    }

    async fn list(&self) -> Result<Vec<String>, DeliveryError> {
        let dir = self.dir()?.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
                let entry = entry.map_err(|e| io_error(&dir, e))?;
                if entry.file_type().map_err(|e| io_error(&dir, e))?.is_file() {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            names.sort();
            Ok(names)
        })
        .await
        .map_err(|e| DeliveryError::retryable(format!("list task: {e}")))?
    }

    async fn delete(&self, name: &str) -> Result<(), DeliveryError> {
        if name.contains('/') || name == ".." || name == "." {
            return Err(DeliveryError::permanent(format!(
                "{name:?} is not a file name"
            )));
        }
        let path = self.dir()?.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(DeliveryError::permanent(format!(
                    "{}: the share refuses the removal: {e}",
                    path.display()
                )))
            }
            Err(e) => Err(io_error(&path, e)),
        }
    }

    async fn check(&self) -> Result<(), DeliveryError> {
        let dir = self.dir()?.to_owned();
        tokio::task::spawn_blocking(move || {
            let probe = dir.join(format!(".esg-check.{}", std::process::id()));
            std::fs::write(&probe, b"").map_err(|e| io_error(&probe, e))?;
            std::fs::remove_file(&probe).map_err(|e| io_error(&probe, e))
        })
        .await
        .map_err(|e| DeliveryError::retryable(format!("check task: {e}")))?
    }
}

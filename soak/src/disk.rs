//! The output disk: a small tmpfs of its own for the job's output directory, so that the soak
//! can fill it up or make it read-only. Mounting needs root (CI runs as root); without it the
//! output directory is a plain directory and the disk faults are skipped (and counted so).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Size of the output tmpfs: room for the day files the retention keeps, many times over, and
/// for the pre-flight's floor of free space (16 MiB).
const SIZE: &str = "64m";

/// The output directory, on a tmpfs when the soak runs as root.
pub struct OutputDisk {
    pub dir: PathBuf,
    mounted: bool,
}

fn run(command: &mut Command) -> Result<()> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl OutputDisk {
    /// Makes `dir` and mounts a tmpfs on it when possible.
    pub fn new(dir: &Path) -> Result<OutputDisk> {
        std::fs::create_dir_all(dir)?;
        // A tmpfs is 1777 by default, a shared directory the job refuses for its outputs.
        let mounted = is_root()
            && run(Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={SIZE},mode=0750"),
                    "tmpfs",
                ])
                .arg(dir))
            .is_ok();
        Ok(OutputDisk {
            dir: dir.to_owned(),
            mounted,
        })
    }

    /// Whether the disk faults can be injected.
    pub fn faults_possible(&self) -> bool {
        self.mounted
    }

    fn filler(&self) -> PathBuf {
        // On the disk itself, under a name that is no day file (retention leaves it alone).
        self.dir.join(".soak-filler")
    }

    /// Fills the disk to its last 4 KiB.
    pub fn fill(&self) -> Result<()> {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()?;
        let free: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .context("df prints the bytes available")?;
        let keep = 4 * 1024;
        std::fs::write(
            self.filler(),
            vec![0u8; usize::try_from(free.saturating_sub(keep)).unwrap_or(0)],
        )
        .or_else(|e| {
            // A write cut short by the full disk still fills it.
            if e.raw_os_error() == Some(28) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        Ok(())
    }

    /// Makes the disk read-only (`remount,ro`), or writable again.
    pub fn read_only(&self, ro: bool) -> Result<()> {
        let flag = if ro { "remount,ro" } else { "remount,rw" };
        run(Command::new("mount").args(["-o", flag]).arg(&self.dir))
    }

    /// Takes every fault away: writable, the filler gone.
    pub fn heal(&self) -> Result<()> {
        if self.mounted {
            self.read_only(false)?;
        }
        let _ = std::fs::remove_file(self.filler());
        Ok(())
    }
}

impl Drop for OutputDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

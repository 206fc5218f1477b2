//! `kind = "sftp"`: an SFTP server, through russh and russh-sftp.
//!
//! Each `put` and `check` is one SSH connection: the server's host key is compared with the
//! configured SHA-256 fingerprint before anything is sent (a mismatch ends the connection before
//! the job logs in), then the job logs in with its private key and opens the `sftp` subsystem.
//!
//! A file is written to a hidden temporary name in `dir` (`.<name>.<pid>.part`, mode 0640),
//! streamed from the local file in chunks with a bounded number of writes in flight (memory:
//! [`IN_FLIGHT`] × [`CHUNK`], whatever the file's size), synced (`fsync@openssh.com` where the
//! server has it), read back over SFTP and checked against the local file's SHA-256, and only
//! then renamed over `<dir>/<name>` with `posix-rename@openssh.com`, which replaces the earlier
//! file atomically: a reader of `<dir>/<name>` sees the old file or the new one, never a part.
//! That holds only on a server with the extension (OpenSSH has it); on another server the
//! earlier file is removed just before the rename, and for that moment the name is absent. A
//! failed delivery removes its temporary file (best effort: a connection that dropped cannot,
//! and the next attempt of the same process truncates it).
//!
//! Retention: `list` reads `dir` (`SSH_FXP_READDIR`) and keeps its regular files, hidden
//! temporary files of failed uploads included; `delete` is one `SSH_FXP_REMOVE` of
//! `<dir>/<name>`. A name that is not there is not an error; a removal the server refuses
//! (permission denied: a read-only directory, an immutable file) is permanent.
//!
//! The private key is read once, when the target is built, and refused if the group or others
//! may read it. No error or log line holds key material or the passphrase.

use crate::{DeliveryError, LocalFile, Target};
use esg_auth::Secret;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::rawsession::Limits;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// One `[[delivery]]` table of `kind = "sftp"`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// A name for logs, metrics and the record (default `sftp:<host>`).
    #[serde(default)]
    pub name: Option<String>,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// The private key the job logs in with (OpenSSH format, not readable by others).
    pub private_key_file: PathBuf,
    /// Its passphrase, if it has one.
    #[serde(default)]
    pub private_key_passphrase: Option<Secret>,
    /// The server's host key as `ssh-keygen -lf` prints it (`SHA256:…`): any other key is
    /// refused before the job logs in.
    pub host_key_fingerprint: String,
    /// The remote directory the files go to (it must exist).
    #[serde(default = "default_dir")]
    pub dir: String,
    /// Bound of connecting and of each request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_port() -> u16 {
    22
}

fn default_dir() -> String {
    ".".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SftpConfig {
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.host.trim().is_empty() {
            return Err(("host", "must name the server".into()));
        }
        if self.user.trim().is_empty() {
            return Err(("user", "must name the account to log in as".into()));
        }
        if !self.host_key_fingerprint.starts_with("SHA256:") {
            return Err((
                "host_key_fingerprint",
                "must be the server's host key fingerprint as `ssh-keygen -lf KEY.pub` prints it: SHA256:…".into(),
            ));
        }
        if self.dir.is_empty() {
            return Err((
                "dir",
                "must name the remote directory (`.` is the login directory)".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be longer than zero".into()));
        }
        Ok(())
    }

    /// `sftp://user@host:port`, the start of every error message.
    fn server(&self) -> String {
        format!("sftp://{}@{}:{}", self.user, self.host, self.port)
    }

    /// `sftp://user@host:port/dir/name`: where `name` is once delivered.
    fn object(&self, name: &str) -> String {
        format!(
            "{}/{}/{name}",
            self.server(),
            self.dir.trim_end_matches('/')
        )
    }
}

/// Files 0640, the server's directories as they are.
const FILE_MODE: u32 = 0o640;

/// Bytes of one SFTP read or write request (less if the server's `limits@openssh.com` says so).
pub const CHUNK: u32 = 32 * 1024;

/// Requests of one file in flight at once: bounds memory and hides the round trip.
pub const IN_FLIGHT: usize = 16;

const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// An SFTP target.
pub struct SftpTarget {
    config: SftpConfig,
    key: Arc<PrivateKey>,
}

/// The configuration (its passphrase masked), never the key.
impl fmt::Debug for SftpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpTarget")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SftpTarget {
    /// Reads the private key (refused if the group or others may read the file); does not
    /// connect.
    pub fn new(config: &SftpConfig) -> Result<Self, DeliveryError> {
        Ok(SftpTarget {
            config: config.clone(),
            key: Arc::new(load_key(config)?),
        })
    }

    /// Connects, checks the host key, logs in and opens the SFTP subsystem.
    async fn connect(&self) -> Result<Session, DeliveryError> {
        let c = &self.config;
        let handle = tokio::time::timeout(c.timeout, self.log_in())
            .await
            .map_err(|_| {
                DeliveryError::retryable(format!(
                    "{}: no answer within {:?} while connecting and logging in",
                    c.server(),
                    c.timeout
                ))
            })??;
        match Session::open(handle, c).await {
            Ok(session) => Ok(session),
            Err((handle, e)) => {
                disconnect(&handle).await;
                Err(e)
            }
        }
    }

    async fn log_in(&self) -> Result<client::Handle<PinnedHostKey>, DeliveryError> {
        let c = &self.config;
        let ssh_config = Arc::new(client::Config {
            // The SFTP requests have their own timeout; this ends a connection that went quiet.
            inactivity_timeout: Some(c.timeout.saturating_mul(4)),
            nodelay: true,
            ..client::Config::default()
        });
        let handler = PinnedHostKey {
            expected: c.host_key_fingerprint.trim().to_owned(),
        };
        let mut handle = client::connect(ssh_config, (c.host.as_str(), c.port), handler)
            .await
            .map_err(|e| connect_error(c, e))?;
        let hash_alg = if self.key.algorithm().is_rsa() {
            // Asks which RSA signature the server takes (waits for its extension list).
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| ssh_error(c, "logging in", e))?
                .flatten()
        } else {
            None
        };
        let key = PrivateKeyWithHashAlg::new(self.key.clone(), hash_alg);
        let auth = handle
            .authenticate_publickey(c.user.as_str(), key)
            .await
            .map_err(|e| ssh_error(c, "logging in", e))?;
        if !auth.success() {
            disconnect(&handle).await;
            return Err(DeliveryError::permanent(format!(
                "{}: the server refused the key {} for user {}",
                c.server(),
                c.private_key_file.display(),
                c.user
            )));
        }
        Ok(handle)
    }
}

#[async_trait::async_trait]
impl Target for SftpTarget {
    fn object(&self, name: &str) -> String {
        self.config.object(name)
    }

    async fn put(&self, file: &LocalFile) -> Result<(), DeliveryError> {
        let session = self.connect().await?;
        let result = session.deliver(file).await;
        session.close().await;
        result
    }

    async fn list(&self) -> Result<Vec<String>, DeliveryError> {
        let session = self.connect().await?;
        let result = session.list().await;
        session.close().await;
        result
    }

    async fn delete(&self, name: &str) -> Result<(), DeliveryError> {
        // Before connecting: a path is never sent.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(DeliveryError::permanent(format!(
                "{}: cannot delete {name:?}: not the name of a file directly in dir",
                self.config.object("")
            )));
        }
        let session = self.connect().await?;
        let result = session.remove(name).await;
        session.close().await;
        result
    }

    async fn check(&self) -> Result<(), DeliveryError> {
        let session = self.connect().await?;
        let result = session.probe().await;
        session.close().await;
        result
    }
}

/// Reads the private key file, refusing one that the group or others may read.
fn load_key(c: &SftpConfig) -> Result<PrivateKey, DeliveryError> {
    let path = &c.private_key_file;
    let meta = std::fs::metadata(path).map_err(|e| {
        DeliveryError::permanent(format!("private_key_file {}: {e}", path.display()))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(DeliveryError::permanent(format!(
                "private_key_file {} may be read by others (mode {mode:04o}): chmod 600 it",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let passphrase = c.private_key_passphrase.as_ref().map(Secret::expose);
    // The key errors name what is wrong with the file (encrypted, corrupt, unsupported), never
    // what it holds.
    russh::keys::load_secret_key(path, passphrase).map_err(|e| {
        let why = match (&e, passphrase) {
            (russh::keys::Error::KeyIsEncrypted, None) => {
                "it is encrypted and private_key_passphrase is not set".to_owned()
            }
            _ => e.to_string(),
        };
        DeliveryError::permanent(format!(
            "cannot load private_key_file {}: {why}",
            path.display()
        ))
    })
}

/// The client side of the connection: accepts only the configured host key.
struct PinnedHostKey {
    expected: String,
}

/// What ends a connection: the host key check, or russh itself.
#[derive(Debug)]
enum ConnectError {
    HostKeyMismatch { offered: String },
    Ssh(russh::Error),
}

impl From<russh::Error> for ConnectError {
    fn from(e: russh::Error) -> Self {
        ConnectError::Ssh(e)
    }
}

impl client::Handler for PinnedHostKey {
    type Error = ConnectError;

    async fn check_server_key(&mut self, server_key: &PublicKey) -> Result<bool, Self::Error> {
        let offered = server_key.fingerprint(HashAlg::Sha256).to_string();
        if offered == self.expected {
            Ok(true)
        } else {
            // An error rather than `Ok(false)`, so that the caller learns which key it was
            // offered instead of russh's "Unknown server key".
            Err(ConnectError::HostKeyMismatch { offered })
        }
    }
}

fn connect_error(c: &SftpConfig, e: ConnectError) -> DeliveryError {
    match e {
        ConnectError::HostKeyMismatch { offered } => DeliveryError::permanent(format!(
            "{}: the server's host key does not match: it offered {offered}, host_key_fingerprint is {}; nothing was sent",
            c.server(),
            c.host_key_fingerprint
        )),
        ConnectError::Ssh(e) => ssh_error(c, "connecting", e),
    }
}

/// A russh error: the network's (worth another try) unless the two sides cannot agree or the
/// server's signature is wrong, which waiting does not cure.
fn ssh_error(c: &SftpConfig, doing: &str, e: russh::Error) -> DeliveryError {
    let message = format!("{}: {doing}: {e}", c.server());
    match e {
        russh::Error::NoCommonAlgo { .. }
        | russh::Error::WrongServerSig
        | russh::Error::UnknownKey
        | russh::Error::NoAuthMethod => DeliveryError::permanent(message),
        _ => DeliveryError::retryable(message),
    }
}

/// An SFTP error on `path`. A missing file or directory, a permission refused, an operation the
/// server does not do: a setting to fix, permanent. A generic failure (a full disk), a timeout,
/// a dropped connection: worth another try.
fn sftp_error(c: &SftpConfig, doing: &str, path: &str, e: SftpError) -> DeliveryError {
    let message = format!("{}: cannot {doing} {path}: {e}", c.server());
    match &e {
        SftpError::Status(s)
            if matches!(
                s.status_code,
                StatusCode::NoSuchFile | StatusCode::PermissionDenied | StatusCode::OpUnsupported
            ) =>
        {
            DeliveryError::permanent(message)
        }
        SftpError::Limited(_) => DeliveryError::permanent(message),
        _ => DeliveryError::retryable(message),
    }
}

fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

async fn disconnect(handle: &client::Handle<PinnedHostKey>) {
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
}

/// One logged-in connection with its SFTP subsystem.
struct Session {
    config: SftpConfig,
    ssh: client::Handle<PinnedHostKey>,
    sftp: RawSftpSession,
    posix_rename: bool,
    fsync: bool,
    read_len: u32,
    write_len: u32,
}

impl Session {
    /// Opens the `sftp` subsystem on `ssh`; on failure gives the connection back to be closed.
    async fn open(
        ssh: client::Handle<PinnedHostKey>,
        c: &SftpConfig,
    ) -> Result<Session, (client::Handle<PinnedHostKey>, DeliveryError)> {
        match Self::start_sftp(&ssh, c).await {
            Ok((sftp, posix_rename, fsync, limits)) => {
                let cap = |limit: Option<u64>| {
                    limit.map_or(CHUNK, |l| u32::try_from(l).unwrap_or(CHUNK).clamp(1, CHUNK))
                };
                Ok(Session {
                    config: c.clone(),
                    ssh,
                    sftp,
                    posix_rename,
                    fsync,
                    read_len: cap(limits.read_len),
                    write_len: cap(limits.write_len),
                })
            }
            Err(e) => Err((ssh, e)),
        }
    }

    async fn start_sftp(
        ssh: &client::Handle<PinnedHostKey>,
        c: &SftpConfig,
    ) -> Result<(RawSftpSession, bool, bool, Limits), DeliveryError> {
        let timed_out = || {
            DeliveryError::retryable(format!(
                "{}: no answer within {:?} while opening the sftp subsystem",
                c.server(),
                c.timeout
            ))
        };
        let mut channel = tokio::time::timeout(c.timeout, ssh.channel_open_session())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ssh_error(c, "opening a channel", e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| ssh_error(c, "requesting the sftp subsystem", e))?;
        // The request is only sent above; its answer comes on the channel.
        let answer = tokio::time::timeout(c.timeout, async {
            loop {
                match channel.wait().await {
                    Some(ChannelMsg::Success) => return Ok(()),
                    Some(ChannelMsg::Failure) => {
                        return Err(DeliveryError::permanent(format!(
                            "{}: the server refused the sftp subsystem",
                            c.server()
                        )))
                    }
                    Some(_) => continue,
                    None => {
                        return Err(DeliveryError::retryable(format!(
                            "{}: the channel closed before the sftp subsystem started",
                            c.server()
                        )))
                    }
                }
            }
        });
        answer.await.map_err(|_| timed_out())??;

        let sftp_config = russh_sftp::client::Config {
            request_timeout_secs: c.timeout.as_secs().max(1),
            ..russh_sftp::client::Config::default()
        };
        let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), sftp_config);
        let version = sftp
            .init()
            .await
            .map_err(|e| sftp_error(c, "start", "the sftp session", e))?;
        let has = |name: &str| version.extensions.get(name).is_some_and(|v| v == "1");
        let mut limits = Limits::default();
        if has(russh_sftp::extensions::LIMITS) {
            limits = Limits::from(
                sftp.limits()
                    .await
                    .map_err(|e| sftp_error(c, "read", "the server's limits", e))?,
            );
            sftp.set_limits(limits);
        }
        Ok((
            sftp,
            has(POSIX_RENAME),
            has(russh_sftp::extensions::FSYNC),
            limits,
        ))
    }

    async fn close(self) {
        let _ = self.sftp.close_session();
        disconnect(&self.ssh).await;
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.config.dir.trim_end_matches('/'))
    }

    /// Writes `file` under its temporary name, checks it, renames it over its name.
    async fn deliver(&self, file: &LocalFile) -> Result<(), DeliveryError> {
        let temp = self.path(&format!(".{}.{}.part", file.name, std::process::id()));
        let target = self.path(&file.name);
        let result = async {
            self.upload(file, &temp).await?;
            self.verify(file, &temp).await?;
            self.rename_over(&temp, &target).await
        }
        .await;
        if result.is_err() {
            self.remove_quietly(&temp).await;
        }
        result
    }

    /// Streams the local file to `temp` (created 0640, synced).
    async fn upload(&self, file: &LocalFile, temp: &str) -> Result<(), DeliveryError> {
        let c = &self.config;
        let mut source = tokio::fs::File::open(&file.path).await.map_err(|e| {
            DeliveryError::permanent(format!("cannot read {}: {e}", file.path.display()))
        })?;
        let mode = FileAttributes {
            permissions: Some(FILE_MODE),
            ..FileAttributes::empty()
        };
        let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
        let handle = self
            .sftp
            .open(temp, flags, mode.clone())
            .await
            .map_err(|e| {
                let mut e = sftp_error(c, "create", temp, e);
                e.message.push_str(" (does the directory exist?)");
                e
            })?
            .handle;
        let result = async {
            // The mode given to open is narrowed by the server's umask and left alone if the
            // file was there already: set it again.
            self.sftp
                .fsetstat(handle.as_str(), mode)
                .await
                .map_err(|e| sftp_error(c, "set the mode of", temp, e))?;
            let mut in_flight = FuturesUnordered::new();
            let mut offset = 0u64;
            loop {
                let chunk = read_chunk(&mut source, self.write_len as usize)
                    .await
                    .map_err(|e| {
                        DeliveryError::permanent(format!(
                            "cannot read {}: {e}",
                            file.path.display()
                        ))
                    })?;
                if chunk.is_empty() {
                    break;
                }
                let len = chunk.len() as u64;
                in_flight.push(self.sftp.write(handle.as_str(), offset, chunk));
                offset += len;
                if in_flight.len() >= IN_FLIGHT {
                    if let Some(written) = in_flight.next().await {
                        written.map_err(|e| sftp_error(c, "write", temp, e))?;
                    }
                }
            }
            while let Some(written) = in_flight.next().await {
                written.map_err(|e| sftp_error(c, "write", temp, e))?;
            }
            if self.fsync {
                self.sftp
                    .fsync(handle.as_str())
                    .await
                    .map_err(|e| sftp_error(c, "sync", temp, e))?;
            }
            let attrs = self
                .sftp
                .fstat(handle.as_str())
                .await
                .map_err(|e| sftp_error(c, "stat", temp, e))?
                .attrs;
            match attrs.permissions.map(|p| p & 0o7777) {
                Some(FILE_MODE) => Ok(()),
                other => Err(DeliveryError::permanent(format!(
                    "{}: {temp} has mode {} after setting {FILE_MODE:04o}: the server does not keep file modes",
                    c.server(),
                    other.map_or("(none)".to_owned(), |m| format!("{m:04o}"))
                ))),
            }
        }
        .await;
        let closed = self.sftp.close(handle.as_str()).await;
        result?;
        closed
            .map(|_| ())
            .map_err(|e| sftp_error(c, "close", temp, e))
    }

    /// Reads `temp` back and checks its size and SHA-256 against the local file's.
    async fn verify(&self, file: &LocalFile, temp: &str) -> Result<(), DeliveryError> {
        let c = &self.config;
        let handle = self
            .sftp
            .open(temp, OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| sftp_error(c, "open", temp, e))?
            .handle;
        let result = self.hash(handle.as_str(), temp, file.size).await;
        let _ = self.sftp.close(handle.as_str()).await;
        let (sha256, size) = result?;
        if size != file.size || sha256 != file.sha256 {
            return Err(DeliveryError::retryable(format!(
                "{}: {temp} holds other bytes than the local file after the upload ({size} bytes, sha256 {sha256}; expected {} bytes, sha256 {})",
                c.server(),
                file.size,
                file.sha256
            )));
        }
        Ok(())
    }

    /// SHA-256 and length of the first `size` bytes of the open file `handle` (fewer if it is
    /// shorter), read with up to [`IN_FLIGHT`] reads at a time.
    async fn hash(
        &self,
        handle: &str,
        temp: &str,
        size: u64,
    ) -> Result<(String, u64), DeliveryError> {
        let c = &self.config;
        let mut hasher = Sha256::new();
        let mut hashed = 0u64;
        let mut next = 0u64;
        let mut reads = FuturesOrdered::new();
        while hashed < size {
            while reads.len() < IN_FLIGHT && next < size {
                let len = (size - next).min(u64::from(self.read_len)) as u32;
                let offset = next;
                reads.push_back(async move { (len, self.sftp.read(handle, offset, len).await) });
                next += u64::from(len);
            }
            let Some((len, read)) = reads.next().await else {
                break;
            };
            let data = match read {
                Ok(data) => data.data,
                Err(e) if is_status(&e, StatusCode::Eof) => Vec::new(),
                Err(e) => return Err(sftp_error(c, "read", temp, e)),
            };
            if data.is_empty() {
                // Shorter than the local file: the caller reports the difference.
                break;
            }
            hasher.update(&data);
            hashed += data.len() as u64;
            if data.len() < len as usize {
                // A short read: the reads in flight are for offsets past a gap; ask again
                // from where this one stopped.
                reads = FuturesOrdered::new();
                next = hashed;
            }
        }
        // Longer than the local file: one byte more is enough to tell.
        if hashed == size {
            match self.sftp.read(handle, size, 1).await {
                Ok(data) => hashed += data.data.len() as u64,
                Err(e) if is_status(&e, StatusCode::Eof) => {}
                Err(e) => return Err(sftp_error(c, "read", temp, e)),
            }
        }
        Ok((format!("{:x}", hasher.finalize()), hashed))
    }

    /// Renames `temp` over `target`, replacing an earlier file of that name.
    async fn rename_over(&self, temp: &str, target: &str) -> Result<(), DeliveryError> {
        let c = &self.config;
        if self.posix_rename {
            let reply = self
                .sftp
                .extended(POSIX_RENAME, ssh_strings(&[temp, target]))
                .await
                .map_err(|e| sftp_error(c, "rename", temp, e))?;
            return match reply {
                russh_sftp::protocol::Packet::Status(s) if s.status_code == StatusCode::Ok => {
                    Ok(())
                }
                russh_sftp::protocol::Packet::Status(s) => {
                    Err(sftp_error(c, "rename", temp, SftpError::Status(s)))
                }
                _ => Err(sftp_error(c, "rename", temp, SftpError::UnexpectedPacket)),
            };
        }
        // Fallback for a server without posix-rename: plain SFTP (v3) rename refuses to
        // replace an existing file, so the earlier file is removed first. Not atomic: between
        // the two requests `target` is absent (never partial).
        match self.sftp.rename(temp, target).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, StatusCode::Failure) => {
                tracing::warn!(
                    server = %c.server(),
                    object = %target,
                    "server lacks posix-rename@openssh.com; replacing the earlier file non-atomically"
                );
                self.sftp
                    .remove(target)
                    .await
                    .map_err(|e| sftp_error(c, "remove the earlier", target, e))?;
                self.sftp
                    .rename(temp, target)
                    .await
                    .map(|_| ())
                    .map_err(|e| sftp_error(c, "rename", temp, e))
            }
            Err(e) => Err(sftp_error(c, "rename", temp, e)),
        }
    }

    async fn remove_quietly(&self, path: &str) {
        if let Err(e) = self.sftp.remove(path).await {
            if !is_status(&e, StatusCode::NoSuchFile) {
                tracing::warn!(server = %self.config.server(), path, error = %e, "cannot remove the temporary file");
            }
        }
    }

    /// The names of the regular files in `dir` (not its directories or symbolic links), sorted.
    async fn list(&self) -> Result<Vec<String>, DeliveryError> {
        let c = &self.config;
        let dir = c.dir.as_str();
        let handle = self
            .sftp
            .opendir(dir)
            .await
            .map_err(|e| sftp_error(c, "open the directory", dir, e))?
            .handle;
        let mut entries = Vec::new();
        let read = loop {
            match self.sftp.readdir(handle.as_str()).await {
                Ok(batch) => entries.extend(batch.files),
                Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                Err(e) => break Err(sftp_error(c, "read the directory", dir, e)),
            }
        };
        let _ = self.sftp.close(handle.as_str()).await;
        read?;
        let mut names = Vec::new();
        for entry in entries {
            let attrs = match entry.attrs.permissions {
                Some(_) => entry.attrs,
                // A server that leaves the type out of the listing: ask for it (not following
                // a symbolic link, as the listing does not).
                None => {
                    let path = self.path(&entry.filename);
                    match self.sftp.lstat(path.as_str()).await {
                        Ok(a) => a.attrs,
                        // Removed since the listing: not there to purge.
                        Err(e) if is_status(&e, StatusCode::NoSuchFile) => continue,
                        Err(e) => return Err(sftp_error(c, "stat", &path, e)),
                    }
                }
            };
            if attrs.file_type().is_file() {
                names.push(entry.filename);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes `<dir>/<name>`; a file that is not there is not an error.
    async fn remove(&self, name: &str) -> Result<(), DeliveryError> {
        let c = &self.config;
        let path = self.path(name);
        match self.sftp.remove(path.as_str()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(()),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::PermissionDenied => {
                Err(DeliveryError::permanent(format!(
                    "{}: the server refused the removal: {} (a read-only directory, an immutable file?)",
                    c.object(name),
                    s.error_message
                )))
            }
            Err(e) => Err(sftp_error(c, "remove", &path, e)),
        }
    }

    /// Checks that `dir` is a directory the job can create and remove a file in.
    async fn probe(&self) -> Result<(), DeliveryError> {
        let c = &self.config;
        let dir = c.dir.as_str();
        let attrs = match self.sftp.stat(dir).await {
            Ok(a) => a.attrs,
            Err(e) if is_status(&e, StatusCode::NoSuchFile) => {
                return Err(DeliveryError::permanent(format!(
                    "{}: dir {dir} does not exist on the server",
                    c.server()
                )))
            }
            Err(e) => return Err(sftp_error(c, "stat", dir, e)),
        };
        if !attrs.is_dir() {
            return Err(DeliveryError::permanent(format!(
                "{}: dir {dir} is not a directory",
                c.server()
            )));
        }
        let probe = self.path(&format!(".esg-check.{}", std::process::id()));
        let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
        let handle = self
            .sftp
            .open(probe.as_str(), flags, FileAttributes::empty())
            .await
            .map_err(|e| sftp_error(c, "create", &probe, e))?
            .handle;
        let closed = self.sftp.close(handle).await;
        let removed = self.sftp.remove(probe.as_str()).await;
        closed.map_err(|e| sftp_error(c, "close", &probe, e))?;
        removed
            .map(|_| ())
            .map_err(|e| sftp_error(c, "remove", &probe, e))
    }
}

/// Reads up to `len` bytes (fewer only at the end of the file).
async fn read_chunk(source: &mut tokio::fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut chunk = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = source.read(&mut chunk[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    chunk.truncate(filled);
    Ok(chunk)
}

/// The SSH wire form of strings, each a 32-bit big-endian length and its bytes (the body of
/// `posix-rename@openssh.com`: old path, new path).
fn ssh_strings(strings: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in strings {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_strings_are_length_prefixed() {
        assert_eq!(
            ssh_strings(&["ab", ""]),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]
        );
    }

    #[test]
    fn an_empty_dir_is_refused_by_validate() {
        let config = SftpConfig {
            name: None,
            host: "sftp.firm.example".into(),
            port: 22,
            user: "esg".into(),
            private_key_file: "/etc/esg/key".into(),
            private_key_passphrase: None,
            host_key_fingerprint: "SHA256:abc".into(),
            dir: String::new(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(config.validate().err().map(|(k, _)| k), Some("dir"));
    }
}

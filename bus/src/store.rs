//! A local SQLite state store for a stage (the producer's roster, the assembler's materialised
//! scores): one connection behind a mutex, used from async code on the blocking pool, with the
//! same durability settings as the embedded log (WAL, `synchronous=FULL`).
//!
//! The stores and the embedded log hold every account name and score: each database file (and
//! its `-wal` and `-shm` files) is mode 0600 in a 0700 directory whatever the umask
//! ([`private_database`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prepared statements a store's connection keeps.
const STATEMENT_CACHE: usize = 64;

/// The key of encrypted databases (SQLCipher): 32 random bytes, given as 64 hexadecimal digits
/// (`openssl rand -hex 32`). A raw key, so no key derivation runs on each open. Never printed;
/// wiped when dropped.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct DbKey(String);

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(***)")
    }
}

impl DbKey {
    /// The key from its file's text: 64 hexadecimal digits, surrounding white space ignored.
    pub fn from_hex(text: &str) -> Result<DbKey, String> {
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "must hold 64 hexadecimal digits, a 256-bit key (make one with `openssl rand -hex 32`)"
                    .into(),
            );
        }
        Ok(DbKey(hex.to_ascii_lowercase()))
    }
}

/// Opens a database connection: the key first when there is one (and a check that it opens the
/// file), then WAL and `synchronous=FULL`. A wrong key, a key for a plaintext file, or no key
/// for an encrypted one is an error that says which.
pub fn open_connection(path: &Path, key: Option<&DbKey>) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    if let Some(key) = key {
        let cipher: Option<String> = conn
            .query_row("PRAGMA cipher_version", [], |r| r.get(0))
            .ok();
        if cipher.is_none() {
            return Err(not_a_database(
                "this build of the job has no SQLCipher: it cannot encrypt its stores",
            ));
        }
        let mut pragma = format!("PRAGMA key = \"x'{}'\";", key.0);
        let keyed = conn.execute_batch(&pragma);
        zeroize::Zeroize::zeroize(&mut pragma);
        keyed?;
    }
    // The first read of the schema is where a key (or its absence) proves right or wrong.
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        return Err(match (e.sqlite_error_code(), key) {
            (Some(rusqlite::ErrorCode::NotADatabase), Some(_)) => not_a_database(
                "[state] encryption_key_file does not open it: a wrong key, or a database written \
                 without encryption (start from an empty state directory, or convert it; see \
                 docs/security.md)",
            ),
            (Some(rusqlite::ErrorCode::NotADatabase), None) => not_a_database(
                "it is encrypted (or not a database): set [state] encryption_key_file to its key",
            ),
            _ => e,
        });
    }
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn not_a_database(message: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
        Some(message.to_owned()),
    )
}

/// Errors of a state store, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {source}")]
pub struct StoreError {
    pub path: String,
    #[source]
    pub source: rusqlite::Error,
}

/// A state store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    path: Arc<PathBuf>,
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Mode of the directory that holds a database.
#[cfg(unix)]
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of a database file and its companions.
#[cfg(unix)]
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Makes `path`'s directory (created if missing; refused when it is a shared, sticky directory
/// such as `/tmp`) 0700 and the database file (created empty if
/// missing, as SQLite would) and its `-wal`, `-shm` and `-journal` files 0600, whatever the
/// umask; a directory or file that was more open is tightened and said so. SQLite creates the
/// companions later with the main file's mode, so they stay 0600.
pub fn private_database(path: &Path) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if !parent.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(parent)?;
        }
        let tighten = |p: &Path, mode: u32| -> std::io::Result<()> {
            let now = std::fs::metadata(p)?.permissions().mode() & 0o777;
            if now != mode {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
                if now & !mode != 0 {
                    // Expected on the first start in a directory made by the platform (0755):
                    // the database files in it were never readable by others.
                    tracing::info!(path = %p.display(), from = format!("{now:o}"), to = format!("{mode:o}"), "state directory or file was more open than it may be: tightened");
                }
            }
            Ok(())
        };
        let dir_mode = std::fs::metadata(parent)?.permissions().mode();
        if dir_mode & 0o1000 != 0 {
            // A shared directory (/tmp, say) is not the job's to close.
            return Err(std::io::Error::other(format!(
                "{} is a shared directory (mode {:o}): keep the job's databases in a directory of their own",
                parent.display(),
                dir_mode & 0o7777
            )));
        }
        tighten(parent, PRIVATE_DIR_MODE)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        tighten(path, PRIVATE_FILE_MODE)?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            let companion = Path::new(&companion);
            if companion.exists() {
                tighten(companion, PRIVATE_FILE_MODE)?;
            }
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(parent)?;
    Ok(())
}

impl Store {
    /// Opens (creating) the store at `path` and applies `schema` (idempotent DDL).
    pub fn open(path: &Path, schema: &str) -> Result<Self, StoreError> {
        Self::open_keyed(path, schema, None)
    }

    /// As [`Store::open`], encrypted with `key` (SQLCipher) when there is one.
    pub fn open_keyed(path: &Path, schema: &str, key: Option<&DbKey>) -> Result<Self, StoreError> {
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        private_database(path)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let conn = open_connection(path, key).map_err(err)?;
        conn.execute_batch(schema).map_err(err)?;
        // Stages keep their per-record statements prepared (`prepare_cached`); the default
        // cache of 16 is smaller than the statements one stage uses in a batch.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Store {
            path: Arc::new(path.to_path_buf()),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The file of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps a rusqlite error with this store's path.
    pub fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || this.call_blocking(f)).await;
        match joined {
            Ok(r) => r,
            Err(e) => Err(self.err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))),
        }
    }

    /// Runs `f` with the connection on the blocking pool, for work whose errors are not all
    /// SQLite's (writing files from query results, say).
    pub async fn call_with<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = this.conn.lock().map_err(|_| {
                E::from(this.err(rusqlite::Error::InvalidParameterName(
                    "state store lock poisoned".into(),
                )))
            })?;
            f(&mut conn)
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => Err(E::from(
                self.err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
            )),
        }
    }

    /// Runs `f` with the connection on this thread (for short work in synchronous callbacks).
    pub fn call_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T>,
    {
        let mut conn = self.conn.lock().map_err(|_| {
            self.err(rusqlite::Error::InvalidParameterName(
                "state store lock poisoned".into(),
            ))
        })?;
        f(&mut conn).map_err(|e| self.err(e))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_store_is_0600_in_a_0700_directory_and_an_open_one_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let path = state.join("x.db");
        let store = Store::open(&path, "CREATE TABLE IF NOT EXISTS t (a INTEGER);").expect("open");
        store
            .call_blocking(|c| c.execute("INSERT INTO t VALUES (1)", []))
            .expect("write");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&path), 0o600);
        let wal = state.join("x.db-wal");
        assert!(wal.exists(), "WAL mode");
        assert_eq!(
            mode(&wal),
            0o600,
            "SQLite gives the WAL the main file's mode"
        );
        // Someone opened them up (while the job runs): the next open closes them again.
        for (p, m) in [(&state, 0o777), (&path, 0o666), (&wal, 0o644)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        let again = Store::open(&path, "").expect("reopen");
        assert_eq!(
            (mode(&state), mode(&path), mode(&wal)),
            (0o700, 0o600, 0o600)
        );
        drop((store, again));

        // A shared directory is refused, not closed.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = Store::open(&shared.join("x.db"), "").expect_err("shared");
        assert!(err.to_string().contains("shared directory"), "{err}");
        assert_eq!(mode(&shared), 0o777, "left as it was");
    }
}

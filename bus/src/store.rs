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
    unlock(&conn, key)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Opens an existing database for reading only (`SQLITE_OPEN_READ_ONLY`): the key as
/// [`open_connection`] takes it, no schema applied, nothing written, no file created but the
/// WAL's shared-memory index SQLite needs to read a database another process is writing.
/// For readers beside a running job (`esg history`, `esg serve`): SQLite's own locking keeps
/// their reads consistent with its commits.
pub fn open_read_only(path: &Path, key: Option<&DbKey>) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    unlock(&conn, key)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// Gives `conn` its key, when there is one, and reads the schema: where a key (or its absence)
/// proves right or wrong, with an error that says which.
fn unlock(conn: &rusqlite::Connection, key: Option<&DbKey>) -> rusqlite::Result<()> {
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
    Ok(())
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

/// The statement that removes one account's records (`:id`) from the embedded log: every record
/// keyed by it on the three account topics (`:accounts`, `:account_events`, `:scores`). The log
/// is the job's own, so erasure deletes the records themselves rather than waiting for compaction.
pub const ERASE_LOG: &str = "DELETE FROM log WHERE key = :id
     AND topic IN (:accounts, :account_events, :scores)";

/// What [`erase`] removed from one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Rows deleted, over every statement.
    pub rows: u64,
    /// Bytes of the file after it was rebuilt.
    pub bytes: u64,
}

/// Removes a data subject's rows from the database at `path` so that no copy survives: every
/// statement of `statements` runs with `params` in one transaction with `secure_delete` on (the
/// freed space is overwritten with zeros), then `VACUUM` rebuilds the file without free pages or
/// the slack of earlier updates (in memory: `temp_store = MEMORY`, so no temporary copy touches
/// the disk), then a `TRUNCATE` checkpoint empties the write-ahead log, which held the earlier
/// versions of the pages. Needs the database to itself: a checkpoint another connection blocks
/// is an error (`SQLITE_BUSY`), after the rows are deleted. A missing file is nothing to erase.
pub fn erase(
    path: &Path,
    key: Option<&DbKey>,
    statements: &[&str],
    params: &[(&str, &dyn rusqlite::ToSql)],
) -> rusqlite::Result<Erased> {
    if !path.exists() {
        return Ok(Erased::default());
    }
    let mut conn = open_connection(path, key)?;
    // Long enough for a process that is just closing, short enough to say so promptly.
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let rows = delete_in(&mut conn, statements, &[params])?;
    conn.execute_batch("VACUUM")?;
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(
                "another process has the database open: its write-ahead log could not be \
                 emptied (stop every esg process of this state directory and erase again)"
                    .into(),
            ),
        ));
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Erased { rows, bytes })
}

/// Deletes the rows of `run_id` from `table` (whose key starts with a `run_id` column): when
/// they are all the table holds, as one `DELETE` of the whole table, which SQLite carries out
/// by freeing the table's pages instead of removing a row at a time (a first day's million
/// rows in a fraction of the time). `table` is one of the caller's own table names.
pub fn delete_run_rows(
    c: &rusqlite::Connection,
    table: &str,
    run_id: &str,
) -> rusqlite::Result<u64> {
    let others: bool = c.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE run_id < ?1)
                 OR EXISTS (SELECT 1 FROM {table} WHERE run_id > ?1)"
        ),
        [run_id],
        |r| r.get(0),
    )?;
    let deleted = if others {
        c.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [run_id])?
    } else {
        c.execute(&format!("DELETE FROM {table}"), [])?
    };
    Ok(deleted as u64)
}

/// Retention: runs `statements` with `params` in one transaction on the database at `path`,
/// with `secure_delete` on so the deleted content is overwritten, beside the processes that use
/// the database (no rebuild, unlike [`erase`]). Returns the rows deleted; a missing file has
/// none.
pub fn delete(
    path: &Path,
    key: Option<&DbKey>,
    statements: &[&str],
    params: &[(&str, &dyn rusqlite::ToSql)],
) -> rusqlite::Result<u64> {
    delete_each(path, key, statements, &[params])
}

/// As [`delete`], once for each parameter set of `sets` (one account after another, say), all
/// in one transaction.
pub fn delete_each(
    path: &Path,
    key: Option<&DbKey>,
    statements: &[&str],
    sets: &[&[(&str, &dyn rusqlite::ToSql)]],
) -> rusqlite::Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let mut conn = open_connection(path, key)?;
    delete_in(&mut conn, statements, sets)
}

/// Runs each statement with each parameter set of `sets` (the parameters it names), in one
/// transaction, with `secure_delete` on; the rows they changed.
fn delete_in(
    conn: &mut rusqlite::Connection,
    statements: &[&str],
    sets: &[&[(&str, &dyn rusqlite::ToSql)]],
) -> rusqlite::Result<u64> {
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tx = conn.transaction()?;
    let mut rows = 0u64;
    for sql in statements {
        let mut stmt = tx.prepare(sql)?;
        for params in sets {
            let used: Vec<(&str, &dyn rusqlite::ToSql)> = params
                .iter()
                .filter(|(name, _)| stmt.parameter_index(name).ok().flatten().is_some())
                .copied()
                .collect();
            rows += stmt.execute(used.as_slice())? as u64;
        }
    }
    tx.commit()?;
    Ok(rows)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_runs_rows_are_deleted_and_only_they_whether_or_not_other_runs_have_rows() {
        let c = rusqlite::Connection::open_in_memory().expect("open");
        c.execute_batch(
            "CREATE TABLE p (run_id TEXT, account_id TEXT, PRIMARY KEY (run_id, account_id))
               WITHOUT ROWID;
             INSERT INTO p VALUES ('a', '1'), ('b', '1'), ('b', '2'), ('c', '1');",
        )
        .expect("rows");
        let runs = |c: &rusqlite::Connection| -> Vec<String> {
            let mut stmt = c
                .prepare("SELECT run_id FROM p ORDER BY 1")
                .expect("prepare");
            let rows = stmt.query_map([], |r| r.get(0)).expect("query");
            rows.collect::<rusqlite::Result<_>>().expect("rows")
        };
        assert_eq!(delete_run_rows(&c, "p", "b").expect("delete"), 2);
        assert_eq!(runs(&c), ["a", "c"], "earlier and later runs kept");
        assert_eq!(delete_run_rows(&c, "p", "a").expect("delete"), 1);
        assert_eq!(delete_run_rows(&c, "p", "x").expect("delete"), 0);
        assert_eq!(runs(&c), ["c"]);
        assert_eq!(
            delete_run_rows(&c, "p", "c").expect("delete the whole table"),
            1
        );
        assert!(runs(&c).is_empty());
    }

    #[test]
    fn a_read_only_connection_reads_what_the_store_committed_and_cannot_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("x.db");
        let store = Store::open(&path, "CREATE TABLE IF NOT EXISTS t (a INTEGER);").expect("open");
        store
            .call_blocking(|c| c.execute("INSERT INTO t VALUES (1)", []))
            .expect("write");
        let reader = open_read_only(&path, None).expect("read-only");
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 1);
        let refused = reader.execute("INSERT INTO t VALUES (2)", []);
        assert!(
            matches!(
                refused.as_ref().map_err(rusqlite::Error::sqlite_error_code),
                Err(Some(rusqlite::ErrorCode::ReadOnly))
            ),
            "{refused:?}"
        );
        // A later commit of the writer is seen by the open reader.
        store
            .call_blocking(|c| c.execute("INSERT INTO t VALUES (3)", []))
            .expect("write");
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 2);
        let missing = dir.path().join("state").join("none.db");
        assert!(open_read_only(&missing, None).is_err());
        assert!(!missing.exists(), "a read-only open creates no database");
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

    /// Bytes of `path` and its write-ahead log.
    fn bytes_of(path: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap_or_default();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        bytes.extend(std::fs::read(Path::new(&wal)).unwrap_or_default());
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn erase_leaves_no_copy_in_free_pages_slack_or_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("x.db");
        let store = Store::open(
            &path,
            "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS u (id TEXT NOT NULL, run TEXT NOT NULL);",
        )
        .expect("open");
        store
            .call_blocking(|c| {
                for i in 0..2000 {
                    c.execute(
                        "INSERT INTO t VALUES (?1, ?2)",
                        rusqlite::params![format!("A{i:05}"), format!("Fund {i:05}")],
                    )?;
                }
                // The subject: renamed once (the old name stays in the page's slack) and in
                // a second table; other rows deleted without secure_delete (free pages).
                c.execute(
                    "INSERT INTO t VALUES ('SUBJ-1', 'Erika Mustermann Trust')",
                    [],
                )?;
                c.execute(
                    "UPDATE t SET name = 'Erika M. Trust' WHERE id = 'SUBJ-1'",
                    [],
                )?;
                c.execute(
                    "INSERT INTO u VALUES ('SUBJ-1', 'r1'), ('A00001', 'r1')",
                    [],
                )?;
                c.execute("DELETE FROM t WHERE id < 'A01000'", [])
            })
            .expect("fill");
        assert!(contains(&bytes_of(&path), b"Erika Mustermann"));
        drop(store);
        let id = "SUBJ-1".to_owned();
        let erased = erase(
            &path,
            None,
            &[
                "DELETE FROM t WHERE id = :id",
                "DELETE FROM u WHERE id = :id",
            ],
            &[(":id", &id)],
        )
        .expect("erase");
        assert_eq!(erased.rows, 2);
        let bytes = bytes_of(&path);
        assert!(
            !contains(&bytes, b"Erika Mustermann"),
            "an old name survived"
        );
        assert!(!contains(&bytes, b"Erika M. Trust"), "the name survived");
        assert!(!contains(&bytes, b"SUBJ-1"), "the id survived");
        assert!(contains(&bytes, b"Fund 01999"), "other rows are kept");
        let store = Store::open(&path, "").expect("reopen");
        let (t, u): (i64, i64) = store
            .call_blocking(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM t), (SELECT COUNT(*) FROM u)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .expect("count");
        assert_eq!((t, u), (1000, 1));
    }

    #[test]
    fn erase_refuses_while_another_connection_holds_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("x.db");
        let store =
            Store::open(&path, "CREATE TABLE IF NOT EXISTS t (id TEXT, name TEXT);").expect("open");
        store
            .call_blocking(|c| c.execute("INSERT INTO t VALUES ('S', 'Name')", []))
            .expect("write");
        // A reader in the middle of a read transaction: the checkpoint cannot complete.
        let reader = open_connection(&path, None).expect("reader");
        reader
            .execute_batch("BEGIN; SELECT COUNT(*) FROM t;")
            .expect("read");
        let id = "S".to_owned();
        let err = erase(
            &path,
            None,
            &["DELETE FROM t WHERE id = :id"],
            &[(":id", &id)],
        )
        .expect_err("busy");
        assert!(err.to_string().contains("another process"), "{err}");
        assert_eq!(
            erase(&dir.path().join("missing.db"), None, &[], &[]).expect("missing"),
            Erased::default()
        );
    }
}

//! A local SQLite state store for a stage (the producer's roster, the assembler's materialised
//! scores): one connection behind a mutex, used from async code on the blocking pool, with the
//! same durability settings as the embedded log (WAL, `synchronous=FULL`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prepared statements a store's connection keeps.
const STATEMENT_CACHE: usize = 64;

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

impl Store {
    /// Opens (creating) the store at `path` and applies `schema` (idempotent DDL).
    pub fn open(path: &Path, schema: &str) -> Result<Self, StoreError> {
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
            }
        }
        let conn = rusqlite::Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
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

//! The embedded transport: a durable, partitioned log in one SQLite file.
//!
//! Tables: `topics` (partition count, cleanup policy), `partitions` (next offset and first
//! readable offset of each partition), `log` (the records, keyed by topic, partition, offset) and
//! `group_offsets` (each group's committed position and metadata per partition).
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, so a transaction that has
//! returned is on disk, and a process killed with `kill -9` at any instant leaves either the whole
//! transaction or none of it. [`Transport::publish`] writes all its records in one transaction;
//! [`Consumer::commit`] writes its offsets in one transaction. Therefore a commit can never be
//! seen without the records it covers, and nothing published is lost once `publish` returned.
//!
//! Groups: one process holds each group (the embedded log serves one machine); a second member of
//! the same group in the same process is refused with a clear error rather than silently sharing
//! partitions. Another process may read and publish to the same file; its consumers notice new
//! records by polling (`wait`), the ones of this process are woken at once.

use crate::{
    partition_for, BusError, Cleanup, CommitOffset, Committed, Consumer, Delivery, Message,
    Position, Record, Result, TopicSpec, Transport,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    cleanup TEXT NOT NULL,
    retention_ms INTEGER
);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
";

/// What [`EmbeddedLog::maintain`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Records past their topic's retention.
    pub expired: u64,
    /// Records superseded by a later record with the same key on a compacted topic.
    pub compacted: u64,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Bumped after every publish so this process's consumers wake at once.
    appended: watch::Sender<u64>,
    partitions: Mutex<HashMap<String, i32>>,
    members: Mutex<HashSet<(String, String)>>,
}

/// The embedded durable log. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_keyed(path, None)
    }

    /// As [`EmbeddedLog::open`], encrypted with `key` (SQLCipher) when there is one.
    pub fn open_keyed(path: impl AsRef<Path>, key: Option<&crate::store::DbKey>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let storage = |source| BusError::Storage {
            path: path.display().to_string(),
            source,
        };
        // Every record is in here: 0600 in a 0700 directory, like the stores.
        crate::store::private_database(&path).map_err(|e| {
            BusError::Other(format!("cannot create {} privately: {e}", path.display()))
        })?;
        let writer = crate::store::open_connection(&path, key).map_err(storage)?;
        writer.execute_batch(SCHEMA).map_err(storage)?;
        let reader = crate::store::open_connection(&path, key).map_err(storage)?;
        let (appended, _) = watch::channel(0);
        Ok(EmbeddedLog {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                appended,
                partitions: Mutex::new(HashMap::new()),
                members: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn storage_err(&self) -> impl Fn(rusqlite::Error) -> BusError + '_ {
        move |source| BusError::Storage {
            path: self.inner.path.display().to_string(),
            source,
        }
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn with_writer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &EmbeddedLog) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = this
                .inner
                .writer
                .lock()
                .map_err(|_| BusError::Closed("writer lock poisoned".into()))?;
            f(&mut conn, &this)
        })
        .await
        .map_err(|e| BusError::Closed(e.to_string()))?
    }

    async fn with_reader<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &EmbeddedLog) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = this
                .inner
                .reader
                .lock()
                .map_err(|_| BusError::Closed("reader lock poisoned".into()))?;
            f(&conn, &this)
        })
        .await
        .map_err(|e| BusError::Closed(e.to_string()))?
    }

    fn partition_count(&self, conn: &Connection, topic: &str) -> Result<i32> {
        if let Ok(cache) = self.inner.partitions.lock() {
            if let Some(n) = cache.get(topic) {
                return Ok(*n);
            }
        }
        let n: Option<i32> = conn
            .query_row(
                "SELECT partitions FROM topics WHERE name = ?1",
                [topic],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.storage_err())?;
        let n = n.ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))?;
        if let Ok(mut cache) = self.inner.partitions.lock() {
            cache.insert(topic.to_owned(), n);
        }
        Ok(n)
    }

    fn offsets(&self, conn: &Connection, topic: &str, column: &str) -> Result<Vec<i64>> {
        let n = self.partition_count(conn, topic)?;
        let mut out = vec![0i64; n as usize];
        let sql = format!("SELECT partition, {column} FROM partitions WHERE topic = ?1");
        let mut stmt = conn.prepare_cached(&sql).map_err(self.storage_err())?;
        let rows = stmt
            .query_map([topic], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.storage_err())?;
        for row in rows {
            let (p, o) = row.map_err(self.storage_err())?;
            if let Some(slot) = out.get_mut(p as usize) {
                *slot = o;
            }
        }
        Ok(out)
    }

    /// Applies retention (delete topics) and compaction (compact topics): removes records past
    /// retention, and on compacted topics every record superseded by a later one with the same
    /// key, plus tombstones older than `tombstone_retention`. Never removes the latest record of a
    /// key, never moves committed offsets.
    pub async fn maintain(&self, tombstone_retention: Duration) -> Result<Maintenance> {
        self.with_writer(move |conn, this| {
            let now = now_ms();
            let tx = conn.transaction().map_err(this.storage_err())?;
            let mut done = Maintenance::default();
            let topics: Vec<(String, String, Option<i64>)> = {
                let mut stmt = tx
                    .prepare("SELECT name, cleanup, retention_ms FROM topics")
                    .map_err(this.storage_err())?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(this.storage_err())?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(this.storage_err())?
            };
            for (name, cleanup, retention) in topics {
                if cleanup == "delete" {
                    let cutoff = now - retention.unwrap_or(i64::MAX / 2);
                    done.expired += tx
                        .execute(
                            "DELETE FROM log WHERE topic = ?1 AND ts_ms < ?2",
                            params![name, cutoff],
                        )
                        .map_err(this.storage_err())? as u64;
                } else {
                    // One sort of the topic (window function), not a lookup per record: a
                    // correlated subquery here takes hours on a million scores.
                    done.compacted += tx
                        .execute(
                            "WITH ranked AS (
                                SELECT partition, offset,
                                       ROW_NUMBER() OVER (PARTITION BY partition, key ORDER BY offset DESC) AS rn
                                FROM log WHERE topic = ?1)
                             DELETE FROM log WHERE topic = ?1 AND (partition, offset) IN
                                (SELECT partition, offset FROM ranked WHERE rn > 1)",
                            params![name],
                        )
                        .map_err(this.storage_err())? as u64;
                    let cutoff = now - tombstone_retention.as_millis() as i64;
                    done.compacted += tx
                        .execute(
                            "DELETE FROM log WHERE topic = ?1 AND value IS NULL AND ts_ms < ?2",
                            params![name, cutoff],
                        )
                        .map_err(this.storage_err())? as u64;
                }
                tx.execute(
                    "UPDATE partitions SET start_offset = COALESCE(
                        (SELECT MIN(offset) FROM log
                         WHERE log.topic = partitions.topic AND log.partition = partitions.partition),
                        next_offset)
                     WHERE topic = ?1",
                    params![name],
                )
                .map_err(this.storage_err())?;
            }
            tx.commit().map_err(this.storage_err())?;
            Ok(done)
        })
        .await
    }
}

#[async_trait]
impl Transport for EmbeddedLog {
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        let topics = topics.to_vec();
        self.with_writer(move |conn, this| {
            let tx = conn.transaction().map_err(this.storage_err())?;
            for t in &topics {
                let existing: Option<i32> = tx
                    .query_row(
                        "SELECT partitions FROM topics WHERE name = ?1",
                        [&t.name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(this.storage_err())?;
                match existing {
                    Some(n) if n != t.partitions => {
                        return Err(BusError::PartitionMismatch {
                            topic: t.name.clone(),
                            existing: n,
                            wanted: t.partitions,
                        })
                    }
                    Some(_) => {}
                    None => {
                        let retention = match t.cleanup {
                            Cleanup::Delete { retention } => Some(retention.as_millis() as i64),
                            Cleanup::Compact { .. } => None,
                        };
                        tx.execute(
                            "INSERT INTO topics (name, partitions, cleanup, retention_ms) VALUES (?1, ?2, ?3, ?4)",
                            params![t.name, t.partitions, t.cleanup.policy_name(), retention],
                        )
                        .map_err(this.storage_err())?;
                        for p in 0..t.partitions {
                            tx.execute(
                                "INSERT INTO partitions (topic, partition, next_offset, start_offset) VALUES (?1, ?2, 0, 0)",
                                params![t.name, p],
                            )
                            .map_err(this.storage_err())?;
                        }
                        tracing::debug!(topic = %t.name, partitions = t.partitions, "topic created");
                    }
                }
            }
            tx.commit().map_err(this.storage_err())
        })
        .await
    }

    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let topic = topic.to_owned();
        let positions = self
            .with_writer(move |conn, this| {
                let n = this.partition_count(conn, &topic)?;
                let tx = conn.transaction().map_err(this.storage_err())?;
                let mut next = this.offsets(&tx, &topic, "next_offset")?;
                let ts = now_ms();
                let mut positions = Vec::with_capacity(records.len());
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO log (topic, partition, offset, key, value, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )
                        .map_err(this.storage_err())?;
                    for r in &records {
                        let p = partition_for(&r.key, n);
                        let slot = &mut next[p as usize];
                        insert
                            .execute(params![topic, p, *slot, r.key, r.value, ts])
                            .map_err(this.storage_err())?;
                        positions.push(Position {
                            partition: p,
                            offset: *slot,
                        });
                        *slot += 1;
                    }
                    let mut update = tx
                        .prepare_cached(
                            "UPDATE partitions SET next_offset = ?3 WHERE topic = ?1 AND partition = ?2",
                        )
                        .map_err(this.storage_err())?;
                    for (p, o) in next.iter().enumerate() {
                        update
                            .execute(params![topic, p as i32, o])
                            .map_err(this.storage_err())?;
                    }
                }
                tx.commit().map_err(this.storage_err())?;
                Ok(positions)
            })
            .await?;
        self.inner.appended.send_modify(|v| *v += 1);
        Ok(positions)
    }

    async fn partitions(&self, topic: &str) -> Result<i32> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, this| this.partition_count(conn, &topic))
            .await
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, this| this.offsets(conn, &topic, "next_offset"))
            .await
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, this| this.offsets(conn, &topic, "start_offset"))
            .await
    }

    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Message>> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, this| read_partition(conn, this, &topic, partition, from, max))
            .await
    }

    async fn offset_for_time(&self, topic: &str, partition: i32, timestamp_ms: i64) -> Result<i64> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, this| {
            let n = this.partition_count(conn, &topic)?;
            if !(0..n).contains(&partition) {
                return Err(BusError::UnknownPartition { topic, partition });
            }
            let first: Option<i64> = conn
                .query_row(
                    "SELECT MIN(offset) FROM log WHERE topic = ?1 AND partition = ?2 AND ts_ms >= ?3",
                    params![topic, partition, timestamp_ms],
                    |r| r.get(0),
                )
                .map_err(this.storage_err())?;
            match first {
                Some(o) => Ok(o),
                None => Ok(this.offsets(conn, &topic, "next_offset")?[partition as usize]),
            }
        })
        .await
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<Committed>>> {
        let (group, topic) = (group.to_owned(), topic.to_owned());
        self.with_reader(move |conn, this| committed(conn, this, &group, &topic))
            .await
    }

    async fn commit(&self, group: &str, topic: &str, offsets: &[CommitOffset]) -> Result<()> {
        let (group, topic, offsets) = (group.to_owned(), topic.to_owned(), offsets.to_vec());
        self.with_writer(move |conn, this| commit(conn, this, &group, &topic, &offsets))
            .await
    }

    async fn subscribe(&self, group: &str, topic: &str) -> Result<Box<dyn Consumer>> {
        let partitions = self.partitions(topic).await?;
        let member = (group.to_owned(), topic.to_owned());
        {
            let mut members = self
                .inner
                .members
                .lock()
                .map_err(|_| BusError::Closed("member lock poisoned".into()))?;
            if !members.insert(member.clone()) {
                return Err(BusError::Other(format!(
                    "group {group} already has a member on topic {topic} in this process; \
                     the embedded log serves one consumer per group (use the Kafka transport to scale out)"
                )));
            }
        }
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions,
            positions: Vec::new(),
            assigned: false,
            next_partition: 0,
            appended: self.inner.appended.subscribe(),
            closed: false,
            fetching: None,
        }))
    }
}

fn read_partition(
    conn: &Connection,
    this: &EmbeddedLog,
    topic: &str,
    partition: i32,
    from: i64,
    max: usize,
) -> Result<Vec<Message>> {
    let n = this.partition_count(conn, topic)?;
    if !(0..n).contains(&partition) {
        return Err(BusError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
        });
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT offset, key, value, ts_ms FROM log
             WHERE topic = ?1 AND partition = ?2 AND offset >= ?3
             ORDER BY offset LIMIT ?4",
        )
        .map_err(this.storage_err())?;
    let rows = stmt
        .query_map(params![topic, partition, from, max as i64], |r| {
            Ok(Message {
                topic: topic.to_owned(),
                partition,
                offset: r.get(0)?,
                key: r.get(1)?,
                value: r.get(2)?,
                timestamp_ms: r.get(3)?,
            })
        })
        .map_err(this.storage_err())?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(this.storage_err())
}

fn committed(
    conn: &Connection,
    this: &EmbeddedLog,
    group: &str,
    topic: &str,
) -> Result<Vec<Option<Committed>>> {
    let n = this.partition_count(conn, topic)?;
    let mut out = vec![None; n as usize];
    let mut stmt = conn
        .prepare_cached(
            "SELECT partition, offset, metadata FROM group_offsets WHERE grp = ?1 AND topic = ?2",
        )
        .map_err(this.storage_err())?;
    let rows = stmt
        .query_map(params![group, topic], |r| {
            Ok((
                r.get::<_, i32>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(this.storage_err())?;
    for row in rows {
        let (p, offset, metadata) = row.map_err(this.storage_err())?;
        if let Some(slot) = out.get_mut(p as usize) {
            *slot = Some(Committed { offset, metadata });
        }
    }
    Ok(out)
}

fn commit(
    conn: &mut Connection,
    this: &EmbeddedLog,
    group: &str,
    topic: &str,
    offsets: &[CommitOffset],
) -> Result<()> {
    let ends = this.offsets(conn, topic, "next_offset")?;
    let tx = conn.transaction().map_err(this.storage_err())?;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO group_offsets (grp, topic, partition, offset, metadata) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (grp, topic, partition) DO UPDATE SET offset = excluded.offset, metadata = excluded.metadata",
            )
            .map_err(this.storage_err())?;
        for c in offsets {
            let end =
                *ends
                    .get(c.partition as usize)
                    .ok_or_else(|| BusError::UnknownPartition {
                        topic: topic.to_owned(),
                        partition: c.partition,
                    })?;
            if c.offset > end || c.offset < 0 {
                return Err(BusError::CommitBeyondEnd {
                    topic: topic.to_owned(),
                    partition: c.partition,
                    offset: c.offset,
                    end,
                });
            }
            stmt.execute(params![group, topic, c.partition, c.offset, c.metadata])
                .map_err(this.storage_err())?;
        }
    }
    tx.commit().map_err(this.storage_err())
}

struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    topic: String,
    partitions: i32,
    /// Next offset to fetch per partition.
    positions: Vec<i64>,
    assigned: bool,
    next_partition: i32,
    appended: watch::Receiver<u64>,
    closed: bool,
    /// The read of the current fetch. It runs on the blocking pool, which cannot be cancelled:
    /// when the `next` that started it is dropped (a `select!` took another branch), the read
    /// finishes anyway and its records are handed out by the next call, instead of being lost
    /// and read again.
    fetching: Option<tokio::task::JoinHandle<Result<Vec<Message>>>>,
}

impl EmbeddedConsumer {
    /// Up to `max` records from the positions on, starting with a different partition each
    /// time. Cancel-safe (see `fetching`); a read already under way is awaited as it is, with
    /// the `max` it was started with.
    async fn fetch(&mut self, max: usize) -> Result<Vec<Message>> {
        let handle = match self.fetching.take() {
            Some(handle) => handle,
            None => self.start_fetch(max),
        };
        let handle = self.fetching.insert(handle);
        let joined = handle.await;
        self.fetching = None;
        let batch = joined.map_err(|e| BusError::Closed(e.to_string()))??;
        for m in &batch {
            self.positions[m.partition as usize] = m.offset + 1;
        }
        Ok(batch)
    }

    fn start_fetch(&mut self, max: usize) -> tokio::task::JoinHandle<Result<Vec<Message>>> {
        let topic = self.topic.clone();
        let positions = self.positions.clone();
        let start = self.next_partition;
        let n = self.partitions;
        self.next_partition = (start + 1) % n.max(1);
        let this = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let conn = this
                .inner
                .reader
                .lock()
                .map_err(|_| BusError::Closed("reader lock poisoned".into()))?;
            let mut out = Vec::new();
            for i in 0..n {
                let p = (start + i) % n;
                let left = max.saturating_sub(out.len());
                if left == 0 {
                    break;
                }
                out.extend(read_partition(
                    &conn,
                    &this,
                    &topic,
                    p,
                    positions[p as usize],
                    left,
                )?);
            }
            Ok(out)
        })
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Option<Delivery>> {
        if self.closed {
            return Err(BusError::Closed("consumer closed".into()));
        }
        if !self.assigned {
            let committed = self.log.committed(&self.group, &self.topic).await?;
            let starts = self.log.start_offsets(&self.topic).await?;
            self.positions = committed
                .iter()
                .zip(&starts)
                .map(|(c, s)| c.as_ref().map_or(*s, |c| c.offset.max(*s)))
                .collect();
            self.assigned = true;
            return Ok(Some(Delivery::Assigned(
                committed
                    .into_iter()
                    .enumerate()
                    .map(|(p, c)| (p as i32, c))
                    .collect(),
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Mark the current append count as seen before reading, so an append that lands
            // after the read wakes the wait below.
            self.appended.borrow_and_update();
            let batch = self.fetch(max.max(1)).await?;
            if !batch.is_empty() {
                return Ok(Some(Delivery::Messages(batch)));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Other processes' appends are not signalled: poll at least every 200 ms.
            let nap = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(nap, self.appended.changed()).await;
        }
    }

    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        self.log.commit(&self.group, &self.topic, offsets).await
    }

    async fn close(&mut self) -> Result<()> {
        if !self.closed {
            self.closed = true;
            if let Ok(mut members) = self.log.inner.members.lock() {
                members.remove(&(self.group.clone(), self.topic.clone()));
            }
        }
        Ok(())
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        if let Ok(mut members) = self.log.inner.members.lock() {
            members.remove(&(self.group.clone(), self.topic.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, partitions: i32, cleanup: Cleanup) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            cleanup,
        }
    }

    async fn log_with_topic(dir: &tempfile::TempDir) -> EmbeddedLog {
        let log = EmbeddedLog::open(dir.path().join("bus.db")).expect("open");
        log.ensure_topics(&[spec(
            "t",
            4,
            Cleanup::Delete {
                retention: Duration::from_secs(3600),
            },
        )])
        .await
        .expect("topics");
        log
    }

    #[tokio::test]
    async fn publish_assigns_dense_offsets_per_partition_by_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = log_with_topic(&dir).await;
        let records: Vec<Record> = (0..100)
            .map(|i| Record::new(format!("k{i}"), vec![i as u8]))
            .collect();
        let positions = log.publish("t", records).await.expect("publish");
        let ends = log.end_offsets("t").await.expect("ends");
        assert_eq!(ends.iter().sum::<i64>(), 100);
        for (i, pos) in positions.iter().enumerate() {
            assert_eq!(pos.partition, partition_for(&format!("k{i}"), 4));
            let msgs = log
                .read("t", pos.partition, pos.offset, 1)
                .await
                .expect("read");
            assert_eq!(msgs[0].key, format!("k{i}"));
            assert_eq!(msgs[0].value, Some(vec![i as u8]));
        }
        for p in 0..4 {
            let all = log.read("t", p, 0, 1000).await.expect("read");
            let offsets: Vec<i64> = all.iter().map(|m| m.offset).collect();
            assert_eq!(offsets, (0..ends[p as usize]).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn consumer_resumes_from_commit_and_sees_new_records() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = log_with_topic(&dir).await;
        log.publish(
            "t",
            (0..10)
                .map(|i| Record::new(format!("k{i}"), vec![]))
                .collect(),
        )
        .await
        .expect("publish");
        let mut c = log.subscribe("g", "t").await.expect("subscribe");
        let Some(Delivery::Assigned(a)) = c.next(100, Duration::ZERO).await.expect("next") else {
            panic!("expected assignment first")
        };
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|(_, c)| c.is_none()));
        let Some(Delivery::Messages(m)) = c.next(100, Duration::ZERO).await.expect("next") else {
            panic!("expected messages")
        };
        assert_eq!(m.len(), 10);
        // Commit only partition of the first message, up to and including it.
        let first = &m[0];
        c.commit(&[CommitOffset {
            partition: first.partition,
            offset: first.offset + 1,
            metadata: "meta".into(),
        }])
        .await
        .expect("commit");
        // A second member of the same group is refused while the first is alive.
        assert!(log.subscribe("g", "t").await.is_err());
        drop(c);

        let mut c = log.subscribe("g", "t").await.expect("resubscribe");
        let Some(Delivery::Assigned(a)) = c.next(100, Duration::ZERO).await.expect("next") else {
            panic!("expected assignment")
        };
        let committed = a[first.partition as usize].1.clone().expect("committed");
        assert_eq!(committed.offset, first.offset + 1);
        assert_eq!(committed.metadata, "meta");
        let Some(Delivery::Messages(m2)) = c.next(100, Duration::ZERO).await.expect("next") else {
            panic!("expected messages")
        };
        assert_eq!(
            m2.len(),
            9,
            "everything after the commit is delivered again"
        );

        // Wakes on a publish from this process.
        let log2 = log.clone();
        let waiter = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let d = c.next(100, Duration::from_secs(5)).await.expect("next");
            (d, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        log2.publish("t", vec![Record::new("late", vec![1])])
            .await
            .expect("publish");
        let (d, elapsed) = waiter.await.expect("join");
        assert!(matches!(d, Some(Delivery::Messages(ref m)) if m.len() == 1 && m[0].key == "late"));
        assert!(elapsed < Duration::from_secs(2));
    }

    /// Guards the cancel-safety of `Consumer::next`: a scorer selects between it and its
    /// calls in flight, so most calls are dropped before they return. Each record is still
    /// delivered exactly once, in offset order per partition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_next_loses_no_record_and_reads_none_twice() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("tmp");
        let log = log_with_topic(&dir).await;
        log.publish(
            "t",
            (0..2000)
                .map(|i| Record::new(format!("k{i}"), vec![]))
                .collect(),
        )
        .await
        .expect("publish");
        let mut c = log.subscribe("g", "t").await.expect("subscribe");
        let Some(Delivery::Assigned(_)) = c.next(100, Duration::ZERO).await.expect("next") else {
            panic!("expected assignment first")
        };
        let mut seen: Vec<Vec<i64>> = vec![Vec::new(); 4];
        let mut take = |d: Option<Delivery>| match d {
            Some(Delivery::Messages(m)) => {
                for m in m {
                    seen[m.partition as usize].push(m.offset);
                }
                true
            }
            _ => false,
        };
        loop {
            // Polled once and dropped: the read it started is handed out by a later call.
            if let Some(d) = c.next(37, Duration::ZERO).now_or_never() {
                take(d.expect("next"));
            }
            if !take(c.next(37, Duration::ZERO).await.expect("next")) {
                break;
            }
        }
        let ends = log.end_offsets("t").await.expect("ends");
        for (p, offsets) in seen.iter().enumerate() {
            assert_eq!(offsets, &(0..ends[p]).collect::<Vec<_>>(), "partition {p}");
        }
    }

    #[tokio::test]
    async fn commit_beyond_end_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = log_with_topic(&dir).await;
        let err = log
            .commit(
                "g",
                "t",
                &[CommitOffset {
                    partition: 0,
                    offset: 5,
                    metadata: String::new(),
                }],
            )
            .await
            .expect_err("refused");
        assert!(matches!(err, BusError::CommitBeyondEnd { .. }), "{err}");
    }

    #[tokio::test]
    async fn topics_are_checked_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bus.db");
        {
            let log = log_with_topic(&dir).await;
            log.publish("t", vec![Record::new("a", vec![1]), Record::tombstone("b")])
                .await
                .expect("publish");
        }
        let log = EmbeddedLog::open(&path).expect("reopen");
        assert_eq!(
            log.end_offsets("t")
                .await
                .expect("ends")
                .iter()
                .sum::<i64>(),
            2
        );
        let err = log
            .ensure_topics(&[spec("t", 8, Cleanup::compact())])
            .await
            .expect_err("mismatch");
        assert!(err.to_string().contains("4 partitions"), "{err}");
        assert!(matches!(
            log.publish("missing", vec![Record::new("a", vec![])]).await,
            Err(BusError::UnknownTopic(_))
        ));
    }

    #[tokio::test]
    async fn compaction_keeps_latest_per_key_and_offsets() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = EmbeddedLog::open(dir.path().join("bus.db")).expect("open");
        log.ensure_topics(&[spec("c", 1, Cleanup::compact())])
            .await
            .expect("topics");
        for v in 0..3u8 {
            log.publish(
                "c",
                vec![Record::new("a", vec![v]), Record::new("b", vec![v])],
            )
            .await
            .expect("publish");
        }
        log.publish("c", vec![Record::tombstone("b")])
            .await
            .expect("publish");
        let done = log
            .maintain(Duration::from_secs(3600))
            .await
            .expect("maintain");
        assert_eq!(done.compacted, 5);
        let left = log.read("c", 0, 0, 100).await.expect("read");
        let kv: Vec<(String, Option<Vec<u8>>, i64)> = left
            .into_iter()
            .map(|m| (m.key, m.value, m.offset))
            .collect();
        assert_eq!(
            kv,
            vec![("a".into(), Some(vec![2]), 4), ("b".into(), None, 6)]
        );
        assert_eq!(log.end_offsets("c").await.expect("ends"), vec![7]);
        assert_eq!(log.start_offsets("c").await.expect("starts"), vec![4]);
        // Tombstones go once older than their retention.
        let done = log.maintain(Duration::ZERO).await.expect("maintain");
        assert_eq!(done.compacted, 1);
    }

    #[tokio::test]
    async fn offset_for_time_finds_first_record_at_or_after() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = log_with_topic(&dir).await;
        log.publish("t", vec![Record::new("x", vec![])])
            .await
            .expect("publish");
        let p = partition_for("x", 4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cut = now_ms();
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.publish("t", vec![Record::new("x", vec![])])
            .await
            .expect("publish");
        assert_eq!(log.offset_for_time("t", p, 0).await.expect("time"), 0);
        assert_eq!(log.offset_for_time("t", p, cut).await.expect("time"), 1);
        assert_eq!(
            log.offset_for_time("t", p, i64::MAX).await.expect("time"),
            2
        );
    }
}

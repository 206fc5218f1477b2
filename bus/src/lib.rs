//! The message bus the producer, scorers and assembler talk through.
//!
//! Stages are written once against [`Transport`] and [`Consumer`]: publish keyed records to a
//! partitioned topic, consume a topic as a member of a group, commit offsets, look up committed and
//! end offsets, and read a range of a partition. Two implementations carry the same bytes:
//!
//! - [`embedded::EmbeddedLog`], the default: a durable log in one SQLite file (WAL). For one
//!   machine: a trial, a small firm, development and most tests.
//! - [`kafka::KafkaTransport`], for several machines, high availability and downstream consumers:
//!   Apache Kafka through rdkafka, values in the Confluent wire format with a schema registry
//!   ([`registry`]).
//!
//! Guarantees every implementation gives, and stages rely on:
//! - [`Transport::publish`] returns only once the records are durable; the offsets it returns are
//!   the records' positions, dense and increasing per partition.
//! - A record's partition is `murmur2(key) mod partitions` ([`partition_for`]), the same as the
//!   Java client's default partitioner, so two topics with the same partition count are
//!   co-partitioned and any Kafka tool finds a key where this code put it.
//! - A committed offset is the *next* offset to read (Kafka's convention). Nothing moves it but
//!   an explicit commit, so a consumer that dies re-reads everything after its last commit:
//!   at-least-once, and harmless because every output of this pipeline is a keyed upsert.

pub mod embedded;
pub mod kafka;
mod partitioner;
pub mod registry;
pub mod runs;
pub mod store;
pub mod topics;

pub use partitioner::{murmur2, partition_for};
pub use store::{Store, StoreError};
pub use topics::{EventBus, Topics, TopicsConfig, Wire};

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// How a topic's old records are cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Records older than the retention are deleted.
    Delete { retention: Duration },
    /// Only the latest record per key is kept, and tombstones are dropped in the end. The two
    /// durations bound how long a superseded record (and then a tombstone) stays on disk, which
    /// is what makes a tombstone an erasure: on Kafka they are the topic's
    /// `max.compaction.lag.ms` and `segment.ms` (`compaction_lag`: a record is compacted at most
    /// that long after it is written, and the segment holding it is closed by then, since
    /// compaction never touches the open segment), and `delete.retention.ms`
    /// (`tombstone_retention`: how long a tombstone is kept once compaction reached it).
    Compact {
        compaction_lag: Duration,
        tombstone_retention: Duration,
    },
}

/// Default of [`TopicsConfig::compaction_lag`]: 1 day.
pub const DEFAULT_COMPACTION_LAG: Duration = Duration::from_secs(24 * 3600);
/// Default of [`TopicsConfig::tombstone_retention`]: 1 day.
pub const DEFAULT_TOMBSTONE_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl Cleanup {
    /// Compaction with the default bounds ([`DEFAULT_COMPACTION_LAG`],
    /// [`DEFAULT_TOMBSTONE_RETENTION`]).
    pub fn compact() -> Self {
        Cleanup::Compact {
            compaction_lag: DEFAULT_COMPACTION_LAG,
            tombstone_retention: DEFAULT_TOMBSTONE_RETENTION,
        }
    }

    /// The Kafka `cleanup.policy` name.
    pub fn policy_name(&self) -> &'static str {
        match self {
            Cleanup::Delete { .. } => "delete",
            Cleanup::Compact { .. } => "compact",
        }
    }
}

/// A topic with its partition count and cleanup policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub cleanup: Cleanup,
}

/// A record to publish: a UTF-8 key and a value (`None` is a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl Record {
    pub fn new(key: impl Into<String>, value: Vec<u8>) -> Self {
        Record {
            key: key.into(),
            value: Some(value),
        }
    }
    pub fn tombstone(key: impl Into<String>) -> Self {
        Record {
            key: key.into(),
            value: None,
        }
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch when the record was appended.
    pub timestamp_ms: i64,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A group's committed position in one partition: the next offset to read, and free-form
/// metadata stored with it (Kafka's offset-commit metadata).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
}

/// An offset to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffset {
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
    pub metadata: String,
}

/// What a consumer's [`Consumer::next`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// These partitions are now this consumer's, with the group's committed positions.
    Assigned(Vec<(i32, Option<Committed>)>),
    /// These partitions are no longer this consumer's: finish or abandon their in-flight work
    /// without committing past it.
    Revoked(Vec<i32>),
    /// Records, in offset order per partition.
    Messages(Vec<Message>),
}

/// Errors of the bus. Every variant says whether retrying may help.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus storage {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("topic {topic} exists with {existing} partitions, configuration says {wanted}")]
    PartitionMismatch {
        topic: String,
        existing: i32,
        wanted: i32,
    },
    /// Existing compacted topics whose compaction settings are missing or larger than
    /// configured: superseded records, and so erased accounts, would stay on the brokers longer.
    #[error("{}", kafka::describe_mismatches(.0))]
    TopicSettings(Vec<kafka::SettingMismatch>),
    #[error("partition {partition} of topic {topic} does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("cannot commit offset {offset} for {topic}/{partition}: the partition ends at {end}")]
    CommitBeyondEnd {
        topic: String,
        partition: i32,
        offset: i64,
        end: i64,
    },
    #[error("kafka: {op}: {source}")]
    Kafka {
        op: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("bus worker stopped: {0}")]
    Closed(String),
    #[error("{0}")]
    Other(String),
}

impl BusError {
    /// True when the operation may succeed if tried again (a busy or locked database, a broker
    /// that is down); false for misconfiguration and programming errors.
    pub fn is_transient(&self) -> bool {
        match self {
            BusError::Storage { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            BusError::Kafka { source, .. } => {
                use rdkafka::types::RDKafkaErrorCode as C;
                matches!(
                    source.rdkafka_error_code(),
                    Some(
                        C::MessageTimedOut
                            | C::OperationTimedOut
                            | C::RequestTimedOut
                            | C::AllBrokersDown
                            | C::BrokerTransportFailure
                            | C::NotLeaderForPartition
                            | C::LeaderNotAvailable
                            | C::NotEnoughReplicas
                            | C::NotEnoughReplicasAfterAppend
                            | C::NotCoordinator
                            | C::CoordinatorNotAvailable
                            | C::CoordinatorLoadInProgress
                            | C::NetworkException
                            | C::QueueFull
                            | C::DestroyBroker
                            | C::BrokerNotAvailable
                            | C::ReplicaNotAvailable
                            | C::KafkaStorageError
                            | C::NotController
                            | C::FencedLeaderEpoch
                            | C::UnknownLeaderEpoch
                            | C::OffsetNotAvailable
                            | C::RebalanceInProgress
                    )
                )
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, BusError>;

/// The transport: topics, publishing, offsets, ranges. Shared behind an `Arc`.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Creates missing topics, and checks existing ones have the partitions wanted.
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()>;

    /// Appends records to a topic, each to the partition of its key, durably, and returns where
    /// each landed (same order as `records`).
    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>>;

    /// Partition count of a topic.
    async fn partitions(&self, topic: &str) -> Result<i32>;

    /// For each partition (index = partition), the offset the next record will get.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>>;

    /// For each partition, the oldest offset still readable.
    async fn start_offsets(&self, topic: &str) -> Result<Vec<i64>>;

    /// Up to `max` records of one partition from offset `from` on (records removed by
    /// compaction or retention are skipped).
    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Message>>;

    /// Records of one partition whose append time is at or after `timestamp_ms`: the first offset.
    async fn offset_for_time(&self, topic: &str, partition: i32, timestamp_ms: i64) -> Result<i64>;

    /// A group's committed positions in a topic, per partition.
    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<Committed>>>;

    /// Commits a group's positions outside a consumer (tools, resets).
    async fn commit(&self, group: &str, topic: &str, offsets: &[CommitOffset]) -> Result<()>;

    /// Joins `group` on `topic`.
    async fn subscribe(&self, group: &str, topic: &str) -> Result<Box<dyn Consumer>>;
}

/// A member of a consumer group on one topic.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery, waiting at most `wait`; `None` when nothing came in that time.
    ///
    /// Cancel-safe in both implementations: a call dropped before it returns (the other branch
    /// of a `select!` won) loses no record and reads none twice; what it had fetched is handed
    /// out by the next call.
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Option<Delivery>>;

    /// Commits positions of partitions this consumer owns.
    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()>;

    /// Leaves the group.
    async fn close(&mut self) -> Result<()>;
}

/// A shared transport.
pub type SharedTransport = Arc<dyn Transport>;

/// Reads one partition of a topic in batches, from an offset until the partition's end as it
/// was when the reading started (`end`), or until nothing more is there (`end = i64::MAX`).
/// A batch may hold records past `end` appended meanwhile; they are simply read early.
pub struct RangeReader<'a> {
    transport: &'a dyn Transport,
    topic: &'a str,
    partition: i32,
    next: i64,
    end: i64,
    batch: usize,
}

impl<'a> RangeReader<'a> {
    pub fn new(
        transport: &'a dyn Transport,
        topic: &'a str,
        partition: i32,
        from: i64,
        end: i64,
        batch: usize,
    ) -> Self {
        RangeReader {
            transport,
            topic,
            partition,
            next: from,
            end,
            batch: batch.max(1),
        }
    }

    /// The next batch, `None` once the range is read.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Message>>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let batch = self
            .transport
            .read(self.topic, self.partition, self.next, self.batch)
            .await?;
        match batch.last() {
            Some(last) => {
                self.next = last.offset + 1;
                Ok(Some(batch))
            }
            None => {
                self.next = self.end;
                Ok(None)
            }
        }
    }

    /// The next offset to read.
    pub fn position(&self) -> i64 {
        self.next
    }
}

//! The Kafka transport: the same [`Transport`] and [`Consumer`] contract as the embedded log, on an
//! Apache Kafka cluster through rdkafka (librdkafka).
//!
//! - **Topics** are created at start-up with the policies of [`TopicSpec`] (partitions,
//!   `cleanup.policy`, `retention.ms`; on compacted topics `max.compaction.lag.ms`, `segment.ms`
//!   and `delete.retention.ms`); topics that exist are checked: a partition count or cleanup
//!   policy other than the one configured is an error, never silently used, and so is a
//!   compacted topic whose compaction settings are unset (the brokers' defaults let a
//!   superseded record live for ever) or larger than configured, since a tombstone erases an
//!   account only once compaction has run. Smaller values are accepted.
//! - **Publishing** uses an idempotent producer with `acks=all`: [`Transport::publish`] returns
//!   once every record is acknowledged by the in-sync replicas. Each record goes to the partition
//!   [`partition_for`] gives its key (the Java client's murmur2), set explicitly, so both
//!   transports and every Kafka tool agree on where a key lives.
//! - **Consuming** is a consumer group with the cooperative-sticky assignor, auto-commit off.
//!   Rebalances arrive as [`Delivery::Revoked`] and [`Delivery::Assigned`] before any message of
//!   the partitions concerned; messages of a partition this member no longer owns are dropped,
//!   and commits are sent only for owned partitions. A commit the group refuses because the
//!   partition moved is logged and skipped: the new owner re-reads from the last commit
//!   (at-least-once, harmless because every output is a keyed upsert).
//! - **Reading ranges** (`read`, watermarks, offsets by time) uses group-less consumers, one
//!   partition at a time, stopping at the partition's high watermark.
//!
//! Every librdkafka setting can be passed through [`KafkaConfig::properties`] (security protocol,
//! SASL, SSL files), and applies to every client this transport creates.

use crate::{
    partition_for, BusError, Cleanup, CommitOffset, Committed, Consumer, Delivery, Message,
    Position, Record, Result, TopicSpec, Transport,
};
use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigEntry, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// `[kafka]`: how to reach the cluster.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,host:port` of one or more brokers.
    pub bootstrap_servers: String,
    /// `client.id` of every client (shown in broker logs and quotas).
    pub client_id: String,
    /// Replication factor of topics this job creates; -1 takes the broker's
    /// `default.replication.factor`.
    pub replication_factor: i32,
    /// How long a scorer may be silent before the group gives its partitions to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Time limit of one metadata, offset, admin or commit request.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// librdkafka settings passed as they are to every client: `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, ...
    pub properties: BTreeMap<String, String>,
    /// The schema registry holding the value schemas.
    pub schema_registry: crate::registry::RegistryConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "localhost:9092".into(),
            client_id: "esg".into(),
            replication_factor: -1,
            session_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            properties: BTreeMap::new(),
            schema_registry: Default::default(),
        }
    }
}

/// True for a librdkafka property whose value must not be shown (passwords, keys, secrets).
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas", "ssl.key.pem", "token"]
        .iter()
        .any(|s| k.contains(s))
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) { "***" } else { v };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("replication_factor", &self.replication_factor)
            .field("session_timeout", &self.session_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("properties", &properties)
            .field("schema_registry", &self.schema_registry)
            .finish()
    }
}

impl KafkaConfig {
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn kafka_err(op: impl Into<String>) -> impl FnOnce(KafkaError) -> BusError {
    let op = op.into();
    move |source| BusError::Kafka { op, source }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BusError::Closed(format!("kafka worker thread: {e}")))?
}

/// Runs a blocking request on a blocking thread, again after a transient failure (a broker that
/// died, a leader that moved) with backoff from 100 ms to 2 s, for as long as `budget` allows:
/// librdkafka finds the new leaders meanwhile. The last error is returned when the budget is
/// spent; errors that are not transient are returned at once.
async fn retrying<T: Send + 'static>(
    budget: Duration,
    f: impl Fn() -> Result<T> + Send + Sync + 'static,
) -> Result<T> {
    let f = Arc::new(f);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = f.clone();
        match blocking(move || attempt()).await {
            Err(e) if e.is_transient() && started.elapsed() + backoff < budget => {
                tracing::warn!(error = %e, retry_in = ?backoff, "transient Kafka error, trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// A group-less consumer that reads one partition at a time; kept between calls so that
/// reading a partition batch after batch does not restart its fetch each time.
struct Reader {
    consumer: BaseConsumer,
    /// (topic, partition, next offset) the consumer is positioned at.
    position: Option<(String, i32, i64)>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata, watermarks and offsets by time.
    meta: BaseConsumer,
    readers: Mutex<Vec<Reader>>,
    /// One group-bound consumer per group, for `committed` and `commit` outside a member.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

/// The Kafka transport. Cheap to clone.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("bootstrap_servers", &self.inner.config.bootstrap_servers)
            .finish()
    }
}

const MAX_IDLE_READERS: usize = 8;

impl KafkaTransport {
    /// Builds the clients and checks the cluster answers (a metadata request).
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .map_err(kafka_err("creating the producer"))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client_config()
            .create()
            .map_err(kafka_err("creating the admin client"))?;
        let meta: BaseConsumer = reader_config(&config)
            .create()
            .map_err(kafka_err("creating the metadata client"))?;
        let transport = KafkaTransport {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                meta,
                readers: Mutex::new(Vec::new()),
                groups: Mutex::new(HashMap::new()),
            }),
        };
        let this = transport.clone();
        let brokers = blocking(move || {
            let timeout = this.inner.config.operation_timeout;
            let md = this
                .inner
                .meta
                .fetch_metadata(None, timeout)
                .map_err(kafka_err(format!(
                    "reaching the Kafka cluster at {}",
                    this.inner.config.bootstrap_servers
                )))?;
            Ok(md.brokers().len())
        })
        .await?;
        tracing::info!(
            bootstrap = %transport.inner.config.bootstrap_servers,
            brokers,
            "connected to Kafka"
        );
        Ok(transport)
    }

    /// The configuration this transport was built with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    fn timeout(&self) -> Duration {
        self.inner.config.operation_timeout
    }

    /// How long a request is tried again after transient failures: long enough for the
    /// cluster to elect new leaders after losing a broker.
    fn retry_budget(&self) -> Duration {
        (self.inner.config.operation_timeout * 4).max(Duration::from_secs(60))
    }

    fn partition_count(&self, topic: &str) -> Result<i32> {
        let md = self
            .inner
            .meta
            .fetch_metadata(Some(topic), self.timeout())
            .map_err(kafka_err(format!("metadata of topic {topic}")))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))?;
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(BusError::UnknownTopic(topic.to_owned()));
            }
            return Err(BusError::Kafka {
                op: format!("metadata of topic {topic}"),
                source: KafkaError::MetadataFetch(code),
            });
        }
        Ok(t.partitions().len() as i32)
    }

    /// Offsets of every partition by ListOffsets with a timestamp: -1 (end), -2 (start) or a time.
    fn list_offsets(&self, topic: &str, partitions: &[i32], spec: Offset) -> Result<Vec<i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, *p, spec)
                .map_err(kafka_err(format!("offsets of {topic}")))?;
        }
        let found = self
            .inner
            .meta
            .offsets_for_times(tpl, self.timeout())
            .map_err(kafka_err(format!("offsets of {topic}")))?;
        let mut out = Vec::with_capacity(partitions.len());
        for p in partitions {
            let elem =
                found
                    .find_partition(topic, *p)
                    .ok_or_else(|| BusError::UnknownPartition {
                        topic: topic.to_owned(),
                        partition: *p,
                    })?;
            if let Err(e) = elem.error() {
                return Err(BusError::Kafka {
                    op: format!("offsets of {topic}/{p}"),
                    source: e,
                });
            }
            out.push(match elem.offset() {
                Offset::Offset(o) => o,
                // No record at or after the time asked: the end.
                Offset::End => self.watermarks(topic, *p)?.1,
                other => {
                    return Err(BusError::Other(format!(
                        "offsets of {topic}/{p}: the broker answered {other:?}"
                    )))
                }
            });
        }
        Ok(out)
    }

    /// `spec` (start, end) of every partition of `topic`, retried through transient failures.
    async fn every_partition_at(&self, topic: &str, spec: Offset) -> Result<Vec<i64>> {
        let this = self.clone();
        let topic = topic.to_owned();
        retrying(self.retry_budget(), move || {
            let n = this.partition_count(&topic)?;
            this.list_offsets(&topic, &(0..n).collect::<Vec<_>>(), spec)
        })
        .await
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.inner
            .meta
            .fetch_watermarks(topic, partition, self.timeout())
            .map_err(kafka_err(format!("watermarks of {topic}/{partition}")))
    }

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        let mut groups = self
            .inner
            .groups
            .lock()
            .map_err(|_| BusError::Closed("kafka group clients".into()))?;
        if let Some(c) = groups.get(group) {
            return Ok(c.clone());
        }
        let consumer: BaseConsumer = reader_config(&self.inner.config)
            .set("group.id", group)
            .create()
            .map_err(kafka_err(format!("creating a client of group {group}")))?;
        let consumer = Arc::new(consumer);
        groups.insert(group.to_owned(), consumer.clone());
        Ok(consumer)
    }

    fn read_blocking(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Message>> {
        let (low, high) = self.watermarks(topic, partition)?;
        if from >= high || max == 0 {
            return Ok(Vec::new());
        }
        let start = from.max(low);
        let mut reader = {
            let mut idle = self
                .inner
                .readers
                .lock()
                .map_err(|_| BusError::Closed("kafka readers".into()))?;
            let at = idle.iter().position(|r| {
                r.position
                    .as_ref()
                    .is_some_and(|(t, p, o)| t == topic && *p == partition && *o == start)
            });
            match at {
                Some(i) => idle.swap_remove(i),
                None => match idle.pop() {
                    Some(r) => r,
                    None => Reader {
                        consumer: reader_config(&self.inner.config)
                            .create()
                            .map_err(kafka_err("creating a reader"))?,
                        position: None,
                    },
                },
            }
        };
        let positioned = reader
            .position
            .as_ref()
            .is_some_and(|(t, p, o)| t == topic && *p == partition && *o == start);
        if !positioned {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(kafka_err(format!("reading {topic}/{partition}")))?;
            reader
                .consumer
                .assign(&tpl)
                .map_err(kafka_err(format!("reading {topic}/{partition}")))?;
            reader.position = None;
        }
        let deadline = Instant::now() + self.timeout();
        let mut out: Vec<Message> = Vec::new();
        let result = loop {
            if out.len() >= max || out.last().is_some_and(|m| m.offset + 1 >= high) {
                break Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break if out.is_empty() {
                    Err(BusError::Other(format!(
                        "reading {topic}/{partition} from offset {start}: no record within {:?} although the partition ends at {high}",
                        self.timeout()
                    )))
                } else {
                    Ok(())
                };
            }
            match reader.consumer.poll(left.min(Duration::from_millis(200))) {
                None => continue,
                Some(Ok(m)) => {
                    if m.topic() != topic || m.partition() != partition || m.offset() < start {
                        continue;
                    }
                    out.push(to_message(&m));
                }
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    break Err(BusError::Kafka {
                        op: format!("reading {topic}/{partition}"),
                        source: e,
                    })
                }
            }
        };
        match &result {
            Ok(()) => {
                let next = out.last().map_or(start, |m| m.offset + 1);
                reader.position = Some((topic.to_owned(), partition, next));
            }
            Err(_) => reader.position = None,
        }
        if let Ok(mut idle) = self.inner.readers.lock() {
            if idle.len() < MAX_IDLE_READERS {
                idle.push(reader);
            }
        }
        result.map(|()| out)
    }
}

fn reader_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = config.client_config();
    // Readers assign partitions themselves and never commit; librdkafka still wants a group id.
    c.set("group.id", format!("{}-reader", config.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    c
}

fn to_message<M: rdkafka::message::Message>(m: &M) -> Message {
    Message {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        value: m.payload().map(<[u8]>::to_vec),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
    }
}

fn cleanup_configs(cleanup: &Cleanup) -> Vec<(&'static str, String)> {
    match cleanup {
        Cleanup::Delete { retention } => vec![
            ("cleanup.policy", "delete".into()),
            ("retention.ms", retention.as_millis().to_string()),
        ],
        Cleanup::Compact { .. } => {
            let mut configs = vec![("cleanup.policy", "compact".into())];
            configs.extend(
                compaction_settings(cleanup)
                    .into_iter()
                    .map(|s| (s.setting, s.wanted.as_millis().to_string())),
            );
            configs
        }
    }
}

/// A topic setting that bounds how long superseded records stay on a compacted topic.
struct CompactionSetting {
    /// The topic config.
    setting: &'static str,
    /// The most the pipeline accepts.
    wanted: Duration,
    /// The `[bus]` key `wanted` comes from.
    key: &'static str,
}

/// What a compacted topic is created with and checked for; none on a delete-policy topic.
fn compaction_settings(cleanup: &Cleanup) -> Vec<CompactionSetting> {
    match *cleanup {
        Cleanup::Delete { .. } => Vec::new(),
        Cleanup::Compact {
            compaction_lag,
            tombstone_retention,
        } => vec![
            // A record is compacted at most this long after it was written ...
            CompactionSetting {
                setting: "max.compaction.lag.ms",
                wanted: compaction_lag,
                key: "bus.compaction_lag",
            },
            // ... provided its segment is closed by then: the cleaner never touches the open
            // segment, which a quiet partition would otherwise keep open for days
            // (`segment.ms` defaults to 7 days).
            CompactionSetting {
                setting: "segment.ms",
                wanted: compaction_lag,
                key: "bus.compaction_lag",
            },
            // A tombstone is kept this long after compaction reached it, then dropped too.
            CompactionSetting {
                setting: "delete.retention.ms",
                wanted: tombstone_retention,
                key: "bus.tombstone_retention",
            },
        ],
    }
}

/// A compaction setting of an existing topic that does not give the bound the pipeline needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingMismatch {
    pub topic: String,
    /// The topic config, e.g. `max.compaction.lag.ms`.
    pub setting: &'static str,
    /// The topic's own value; `None` when the topic does not set it.
    pub found: Option<String>,
    /// The value in effect when the topic does not set it (the broker's default), as described.
    pub broker_default: Option<String>,
    /// The most the pipeline accepts.
    pub wanted: Duration,
    /// The `[bus]` key `wanted` comes from.
    pub key: &'static str,
    /// The cluster, for the command that fixes the topic.
    pub bootstrap: String,
}

/// Checks one described compaction setting. Refused: a value the topic does not set itself (the
/// broker's default: `max.compaction.lag.ms` is unlimited by default, and whatever the default
/// is, it can change under the topic), one that is not a number, and one larger than wanted.
fn check_setting(
    topic: &str,
    wanted: &CompactionSetting,
    entry: Option<&ConfigEntry>,
    bootstrap: &str,
) -> Option<SettingMismatch> {
    let value = entry.and_then(|e| e.value.clone());
    // Brokers before 1.1 do not say where a value comes from; one that is not the default is
    // taken to be the topic's.
    let on_topic = entry.is_some_and(|e| match e.source {
        ConfigSource::DynamicTopic => true,
        ConfigSource::Unknown => !e.is_default,
        _ => false,
    });
    let mismatch = |found: Option<String>, broker_default: Option<String>| SettingMismatch {
        topic: topic.to_owned(),
        setting: wanted.setting,
        found,
        broker_default,
        wanted: wanted.wanted,
        key: wanted.key,
        bootstrap: bootstrap.to_owned(),
    };
    if !on_topic {
        return Some(mismatch(None, value));
    }
    match value.as_deref().map(|v| v.trim().parse::<u128>()) {
        Some(Ok(ms)) if ms <= wanted.wanted.as_millis() => None,
        _ => Some(mismatch(value, None)),
    }
}

/// The message of [`BusError::TopicSettings`]: per topic, each setting with both values, and the
/// `kafka-configs.sh` command that sets them all.
pub fn describe_mismatches(mismatches: &[SettingMismatch]) -> String {
    let mut topics: Vec<&str> = Vec::new();
    for m in mismatches {
        if !topics.contains(&m.topic.as_str()) {
            topics.push(&m.topic);
        }
    }
    let per_topic: Vec<String> = topics
        .iter()
        .map(|topic| {
            let of_topic: Vec<&SettingMismatch> =
                mismatches.iter().filter(|m| m.topic == *topic).collect();
            let found: Vec<String> = of_topic
                .iter()
                .map(|m| {
                    let wanted = format!(
                        "the pipeline needs at most {} ({} = {})",
                        m.wanted.as_millis(),
                        m.key,
                        humantime_serde::re::humantime::format_duration(m.wanted)
                    );
                    match (&m.found, &m.broker_default) {
                        (Some(v), _) => format!("{}={v}, {wanted}", m.setting),
                        (None, Some(d)) => format!(
                            "{} unset (the broker's default {d} applies), {wanted}",
                            m.setting
                        ),
                        (None, None) => format!(
                            "{} unset (the broker's default applies), {wanted}",
                            m.setting
                        ),
                    }
                })
                .collect();
            let add: Vec<String> = of_topic
                .iter()
                .map(|m| format!("{}={}", m.setting, m.wanted.as_millis()))
                .collect();
            let bootstrap = of_topic.first().map_or("", |m| m.bootstrap.as_str());
            format!(
                "topic {topic} has {}: superseded records, and so erased accounts, would stay on the brokers longer than configured; fix the topic with `kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics --entity-name {topic} --add-config {}` or use another topic prefix",
                found.join("; "),
                add.join(",")
            )
        })
        .collect();
    per_topic.join("; and ")
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        let this = self.clone();
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        let existing: HashMap<String, i32> = blocking(move || {
            let md = this
                .inner
                .meta
                .fetch_metadata(None, this.timeout())
                .map_err(kafka_err("listing topics"))?;
            Ok(md
                .topics()
                .iter()
                .filter(|t| names.iter().any(|n| n == t.name()) && t.error().is_none())
                .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                .collect())
        })
        .await?;

        let missing: Vec<&TopicSpec> = topics
            .iter()
            .filter(|t| !existing.contains_key(&t.name))
            .collect();
        if !missing.is_empty() {
            let configs: Vec<Vec<(&'static str, String)>> = missing
                .iter()
                .map(|t| cleanup_configs(&t.cleanup))
                .collect();
            let new_topics: Vec<NewTopic<'_>> = missing
                .iter()
                .zip(&configs)
                .map(|(t, cfg)| {
                    let mut nt = NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(self.inner.config.replication_factor),
                    );
                    for (k, v) in cfg {
                        nt = nt.set(k, v);
                    }
                    nt
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(self.timeout()));
            let results = self
                .inner
                .admin
                .create_topics(new_topics.iter(), &opts)
                .await
                .map_err(kafka_err("creating topics"))?;
            for r in results {
                match r {
                    Ok(name) => tracing::info!(topic = %name, "topic created"),
                    // Another process created it meanwhile: checked below like any existing topic.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(BusError::Kafka {
                            op: format!("creating topic {name}"),
                            source: KafkaError::AdminOp(code),
                        })
                    }
                }
            }
        }

        // Check every topic: partitions, cleanup policy and compaction settings as configured. A
        // topic created a moment ago (by this process, or by another one starting at the same
        // time) may not show its configuration yet: asked again for up to 20 s (a loaded broker
        // takes long). Compaction settings of every topic are reported together, so that one
        // round of `kafka-configs.sh` fixes them all.
        let mut mismatches = Vec::new();
        for spec in topics {
            let mut attempts = 0;
            let (policy, described) = loop {
                let resource = ResourceSpecifier::Topic(&spec.name);
                let opts = AdminOptions::new().request_timeout(Some(self.timeout()));
                let described = self
                    .inner
                    .admin
                    .describe_configs([&resource], &opts)
                    .await
                    .map_err(kafka_err(format!("describing topic {}", spec.name)))?;
                let (policy, resource) = match described.into_iter().next() {
                    Some(Ok(resource)) => (
                        resource
                            .get("cleanup.policy")
                            .and_then(|e| e.value.clone())
                            .unwrap_or_default(),
                        Some(resource),
                    ),
                    Some(Err(RDKafkaErrorCode::UnknownTopicOrPartition)) if attempts < 99 => {
                        (String::new(), None)
                    }
                    Some(Err(code)) => {
                        return Err(BusError::Kafka {
                            op: format!("describing topic {}", spec.name),
                            source: KafkaError::AdminOp(code),
                        })
                    }
                    None => (String::new(), None),
                };
                attempts += 1;
                if !policy.is_empty() || attempts >= 100 {
                    break (policy, resource);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if policy != spec.cleanup.policy_name() {
                return Err(BusError::Other(format!(
                    "topic {} has cleanup.policy={policy:?}, the pipeline needs {}; fix the topic (kafka-configs --alter) or use another topic prefix",
                    spec.name,
                    spec.cleanup.policy_name()
                )));
            }
            mismatches.extend(
                compaction_settings(&spec.cleanup)
                    .iter()
                    .filter_map(|wanted| {
                        let entry = described.as_ref().and_then(|r| r.get(wanted.setting));
                        check_setting(
                            &spec.name,
                            wanted,
                            entry,
                            &self.inner.config.bootstrap_servers,
                        )
                    }),
            );
            // A topic created a moment ago may not be in every broker's metadata yet.
            let mut waited = 0;
            let partitions = loop {
                let this = self.clone();
                let name = spec.name.clone();
                match retrying(self.retry_budget(), move || this.partition_count(&name)).await {
                    Err(BusError::UnknownTopic(_)) if waited < 50 => {
                        waited += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => break other?,
                }
            };
            if partitions != spec.partitions {
                return Err(BusError::PartitionMismatch {
                    topic: spec.name.clone(),
                    existing: partitions,
                    wanted: spec.partitions,
                });
            }
        }
        if !mismatches.is_empty() {
            return Err(BusError::TopicSettings(mismatches));
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let name = topic.to_owned();
        let partitions = retrying(self.retry_budget(), move || this.partition_count(&name)).await?;
        let timeout = self.inner.config.operation_timeout;
        let sends = records.iter().map(|r| {
            let partition = partition_for(&r.key, partitions);
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .key(r.key.as_str())
                .partition(partition);
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            self.inner.producer.send(record, timeout)
        });
        let results = futures::future::join_all(sends).await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(delivery) => out.push(Position {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Err((e, _)) => {
                    return Err(BusError::Kafka {
                        op: format!("publishing to {topic}"),
                        source: e,
                    })
                }
            }
        }
        Ok(out)
    }

    async fn partitions(&self, topic: &str) -> Result<i32> {
        let this = self.clone();
        let topic = topic.to_owned();
        retrying(self.retry_budget(), move || this.partition_count(&topic)).await
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        self.every_partition_at(topic, Offset::End).await
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        self.every_partition_at(topic, Offset::Beginning).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Message>> {
        let this = self.clone();
        let topic = topic.to_owned();
        retrying(self.retry_budget(), move || {
            this.read_blocking(&topic, partition, from, max)
        })
        .await
    }

    async fn offset_for_time(&self, topic: &str, partition: i32, timestamp_ms: i64) -> Result<i64> {
        let this = self.clone();
        let topic = topic.to_owned();
        retrying(self.retry_budget(), move || {
            let found =
                this.list_offsets(&topic, &[partition], Offset::Offset(timestamp_ms.max(0)))?;
            Ok(found[0])
        })
        .await
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<Committed>>> {
        let this = self.clone();
        let group = group.to_owned();
        let topic = topic.to_owned();
        retrying(self.retry_budget(), move || {
            let n = this.partition_count(&topic)?;
            let client = this.group_client(&group)?;
            committed_of(client.as_ref(), &topic, n, this.timeout())
        })
        .await
    }

    async fn commit(&self, group: &str, topic: &str, offsets: &[CommitOffset]) -> Result<()> {
        let this = self.clone();
        let group = group.to_owned();
        let topic = topic.to_owned();
        let offsets = offsets.to_vec();
        retrying(self.retry_budget(), move || {
            let client = this.group_client(&group)?;
            let tpl = commit_list(&topic, &offsets)?;
            client
                .commit(&tpl, CommitMode::Sync)
                .map_err(kafka_err(format!("committing {topic} for group {group}")))
        })
        .await
    }

    async fn subscribe(&self, group: &str, topic: &str) -> Result<Box<dyn Consumer>> {
        let context = GroupContext::default();
        let events = context.events.clone();
        let notify = context.notify.clone();
        let session_ms = self.inner.config.session_timeout.as_millis().to_string();
        let heartbeat_ms = (self.inner.config.session_timeout.as_millis() / 3)
            .max(100)
            .to_string();
        let consumer: StreamConsumer<GroupContext> = self
            .inner
            .config
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", &session_ms)
            .set("heartbeat.interval.ms", &heartbeat_ms)
            .create_with_context(context)
            .map_err(kafka_err(format!("joining group {group}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(kafka_err(format!("subscribing group {group} to {topic}")))?;
        let partitions = self.partitions(topic).await?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            events,
            notify,
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions,
            owned: HashSet::new(),
            buffer: VecDeque::new(),
            timeout: self.timeout(),
            closed: false,
        }))
    }
}

fn commit_list(topic: &str, offsets: &[CommitOffset]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for c in offsets {
        tpl.add_partition_offset(topic, c.partition, Offset::Offset(c.offset))
            .map_err(kafka_err(format!("committing {topic}/{}", c.partition)))?;
        if let Some(mut elem) = tpl.find_partition(topic, c.partition) {
            elem.set_metadata(c.metadata.clone());
        }
    }
    Ok(tpl)
}

fn committed_of<C: rdkafka::consumer::Consumer<X>, X: ConsumerContext>(
    client: &C,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Option<Committed>>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let found = client
        .committed_offsets(tpl, timeout)
        .map_err(kafka_err(format!("committed offsets of {topic}")))?;
    Ok((0..partitions)
        .map(|p| {
            found
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(Committed {
                        offset: o,
                        metadata: e.metadata().to_owned(),
                    }),
                    _ => None,
                })
        })
        .collect())
}

/// A rebalance as seen by the rdkafka callback, queued for [`KafkaConsumer::next`].
#[derive(Debug)]
enum GroupEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

#[derive(Default)]
struct GroupContext {
    events: Arc<Mutex<VecDeque<GroupEvent>>>,
    notify: Arc<Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if let Ok(mut q) = self.events.lock() {
                q.push_back(GroupEvent::Revoked(parts));
            }
            self.notify.notify_one();
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                if let Ok(mut q) = self.events.lock() {
                    q.push_back(GroupEvent::Assigned(parts));
                }
                self.notify.notify_one();
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    events: Arc<Mutex<VecDeque<GroupEvent>>>,
    notify: Arc<Notify>,
    group: String,
    topic: String,
    partitions: i32,
    /// Partitions handed out as [`Delivery::Assigned`] and not revoked since.
    owned: HashSet<i32>,
    /// Messages received, not yet handed out.
    buffer: VecDeque<Message>,
    timeout: Duration,
    closed: bool,
}

impl KafkaConsumer {
    fn has_event(&self) -> bool {
        self.events.lock().is_ok_and(|q| !q.is_empty())
    }

    fn consumer_error(&self, e: KafkaError) -> Result<()> {
        if matches!(e, KafkaError::PartitionEOF(_)) {
            return Ok(());
        }
        // librdkafka reports broker trouble here and recovers by itself (reconnects, leader
        // changes); only errors it calls fatal end the consumer.
        if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
            return Err(BusError::Kafka {
                op: format!("consuming {} as group {}", self.topic, self.group),
                source: e,
            });
        }
        tracing::warn!(group = %self.group, topic = %self.topic, error = %e, "consumer error, continuing");
        Ok(())
    }

    /// Hands out the oldest rebalance. The committed offsets of an assignment are looked up
    /// first, and the event leaves the queue only after that, so a cancelled call loses nothing.
    async fn deliver_event(&mut self) -> Result<Delivery> {
        let front = self
            .events
            .lock()
            .map_err(|_| BusError::Closed("consumer events".into()))?
            .front()
            .map(|e| match e {
                GroupEvent::Assigned(p) => GroupEvent::Assigned(p.clone()),
                GroupEvent::Revoked(p) => GroupEvent::Revoked(p.clone()),
            });
        let Some(event) = front else {
            return Err(BusError::Other("no rebalance to deliver".into()));
        };
        let committed = match &event {
            GroupEvent::Assigned(_) => {
                let consumer = self.consumer.clone();
                let topic = self.topic.clone();
                let (n, timeout) = (self.partitions, self.timeout);
                Some(
                    retrying(timeout * 4, move || {
                        committed_of(consumer.as_ref(), &topic, n, timeout)
                    })
                    .await?,
                )
            }
            GroupEvent::Revoked(_) => None,
        };
        if let Ok(mut q) = self.events.lock() {
            q.pop_front();
        }
        match event {
            GroupEvent::Revoked(parts) => {
                for p in &parts {
                    self.owned.remove(p);
                }
                self.buffer.retain(|m| !parts.contains(&m.partition));
                tracing::info!(group = %self.group, topic = %self.topic, partitions = ?parts, "partitions revoked");
                Ok(Delivery::Revoked(parts))
            }
            GroupEvent::Assigned(parts) => {
                let committed = committed.unwrap_or_default();
                for p in &parts {
                    self.owned.insert(*p);
                }
                tracing::info!(group = %self.group, topic = %self.topic, partitions = ?parts, "partitions assigned");
                Ok(Delivery::Assigned(
                    parts
                        .into_iter()
                        .map(|p| (p, committed.get(p as usize).cloned().flatten()))
                        .collect(),
                ))
            }
        }
    }

    fn take_owned(&mut self, max: usize) -> Vec<Message> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(m) = self.buffer.pop_front() else {
                break;
            };
            if self.owned.contains(&m.partition) {
                out.push(m);
            } else {
                tracing::debug!(
                    partition = m.partition,
                    offset = m.offset,
                    "dropping a message of a partition not owned"
                );
            }
        }
        out
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    /// Cancel-safe: records received are kept in the consumer until handed out, and a
    /// rebalance is taken off the queue only when it is handed out. Returns as soon as records
    /// are there (it waits up to `wait` only for the first).
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Option<Delivery>> {
        if self.closed {
            return Err(BusError::Closed("consumer closed".into()));
        }
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.has_event() {
                return self.deliver_event().await.map(Some);
            }
            if !self.buffer.is_empty() {
                // Take what is already fetched, without waiting, up to `max`.
                while self.buffer.len() < max {
                    let consumer = self.consumer.clone();
                    match consumer.recv().now_or_never() {
                        Some(Ok(m)) => self.buffer.push_back(to_message(&m)),
                        Some(Err(e)) => self.consumer_error(e)?,
                        None => break,
                    }
                }
                if self.has_event() {
                    continue;
                }
                let batch = self.take_owned(max);
                if !batch.is_empty() {
                    return Ok(Some(Delivery::Messages(batch)));
                }
                continue;
            }
            let consumer = self.consumer.clone();
            tokio::select! {
                r = consumer.recv() => match r {
                    Ok(m) => self.buffer.push_back(to_message(&m)),
                    Err(e) => self.consumer_error(e)?,
                },
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        let owned: Vec<CommitOffset> = offsets
            .iter()
            .filter(|c| self.owned.contains(&c.partition))
            .cloned()
            .collect();
        if owned.is_empty() {
            return Ok(());
        }
        let tpl = commit_list(&self.topic, &owned)?;
        let consumer = self.consumer.clone();
        let op = format!("committing {} for group {}", self.topic, self.group);
        let result = retrying(self.timeout * 4, move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(kafka_err(op.clone()))
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(BusError::Kafka { source, .. })
                if matches!(
                    source.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::IllegalGeneration
                            | RDKafkaErrorCode::UnknownMemberId
                            | RDKafkaErrorCode::FencedInstanceId
                            | RDKafkaErrorCode::StaleMemberEpoch
                            | RDKafkaErrorCode::AssignmentLost
                            | RDKafkaErrorCode::RebalanceInProgress
                    )
                ) =>
            {
                tracing::warn!(group = %self.group, topic = %self.topic, error = %source,
                    "commit refused during a rebalance; the partitions' new owner re-reads from the last commit");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn close(&mut self) -> Result<()> {
        if !self.closed {
            self.closed = true;
            let consumer = self.consumer.clone();
            // Leaving the group hands the partitions over now rather than at the session timeout.
            let _ = tokio::task::spawn_blocking(move || consumer.unsubscribe()).await;
        }
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if !self.closed {
            self.consumer.unsubscribe();
        }
    }
}

/// Flushes the producer (used on shutdown: nothing queued is lost silently).
pub fn flush(transport: &KafkaTransport, timeout: Duration) -> Result<()> {
    transport
        .inner
        .producer
        .flush(timeout)
        .map_err(kafka_err("flushing the producer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: &str = "86400000";

    fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            is_default: source == ConfigSource::Default,
            source,
            is_read_only: false,
            is_sensitive: false,
        }
    }

    fn lag() -> CompactionSetting {
        compaction_settings(&Cleanup::compact())
            .into_iter()
            .next()
            .expect("max.compaction.lag.ms")
    }

    #[test]
    fn compacted_topics_are_created_with_their_bounds_in_milliseconds() {
        let configs = cleanup_configs(&Cleanup::Compact {
            compaction_lag: Duration::from_secs(2),
            tombstone_retention: Duration::from_millis(1500),
        });
        assert_eq!(
            configs,
            vec![
                ("cleanup.policy", "compact".to_owned()),
                ("max.compaction.lag.ms", "2000".to_owned()),
                ("segment.ms", "2000".to_owned()),
                ("delete.retention.ms", "1500".to_owned()),
            ]
        );
        let delete = cleanup_configs(&Cleanup::Delete {
            retention: Duration::from_secs(60),
        });
        assert!(delete.iter().all(|(k, _)| !k.contains("compaction")));
    }

    #[test]
    fn a_compaction_setting_at_most_the_configured_one_on_the_topic_is_accepted() {
        let wanted = lag();
        for value in [DAY_MS, "1000", " 86400000 "] {
            let e = entry(wanted.setting, value, ConfigSource::DynamicTopic);
            assert_eq!(
                check_setting("t", &wanted, Some(&e), "k:9092"),
                None,
                "{value}"
            );
        }
    }

    #[test]
    fn a_compaction_setting_unset_larger_or_unreadable_is_refused() {
        let wanted = lag();
        // The broker's default, however small: it is not the topic's and can change.
        for source in [
            ConfigSource::Default,
            ConfigSource::StaticBroker,
            ConfigSource::DynamicBroker,
            ConfigSource::DynamicDefaultBroker,
        ] {
            let e = entry(wanted.setting, "1000", source);
            let m = check_setting("t", &wanted, Some(&e), "k:9092").expect("refused");
            assert_eq!((m.found, m.broker_default), (None, Some("1000".into())));
        }
        assert!(check_setting("t", &wanted, None, "k:9092").is_some());
        for value in ["86400001", "9223372036854775807", "-1", "soon"] {
            let e = entry(wanted.setting, value, ConfigSource::DynamicTopic);
            let m = check_setting("t", &wanted, Some(&e), "k:9092").expect(value);
            assert_eq!(m.found.as_deref(), Some(value));
        }
    }

    #[test]
    fn the_refusal_names_topic_setting_both_values_and_the_command_that_fixes_it() {
        let settings = compaction_settings(&Cleanup::compact());
        let unset = entry(
            "max.compaction.lag.ms",
            "9223372036854775807",
            ConfigSource::Default,
        );
        let larger = entry(
            "delete.retention.ms",
            "604800000",
            ConfigSource::DynamicTopic,
        );
        let mismatches: Vec<SettingMismatch> = [
            check_setting(
                "p.esg.scores",
                &settings[0],
                Some(&unset),
                "k1:9092,k2:9092",
            ),
            check_setting(
                "p.esg.scores",
                &settings[2],
                Some(&larger),
                "k1:9092,k2:9092",
            ),
            check_setting("p.esg.accounts", &settings[1], None, "k1:9092,k2:9092"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let s = BusError::TopicSettings(mismatches).to_string();
        for part in [
            "topic p.esg.scores has max.compaction.lag.ms unset (the broker's default 9223372036854775807 applies), the pipeline needs at most 86400000 (bus.compaction_lag = 1day)",
            "delete.retention.ms=604800000, the pipeline needs at most 86400000 (bus.tombstone_retention = 1day)",
            "`kafka-configs.sh --bootstrap-server k1:9092,k2:9092 --alter --entity-type topics --entity-name p.esg.scores --add-config max.compaction.lag.ms=86400000,delete.retention.ms=86400000`",
            "topic p.esg.accounts has segment.ms unset",
            "--entity-name p.esg.accounts --add-config segment.ms=86400000`",
        ] {
            assert!(s.contains(part), "{part:?} missing from: {s}");
        }
        assert!(!BusError::TopicSettings(Vec::new()).is_transient());
    }
}

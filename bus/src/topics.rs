//! The pipeline's topics (DESIGN section 2), their policies, and typed publishing of events.

use crate::registry::{RegistryConfig, RegistryWire};
use crate::{
    BusError, Cleanup, Record, Result, SharedTransport, TopicSpec, DEFAULT_COMPACTION_LAG,
    DEFAULT_TOMBSTONE_RETENTION,
};
use esg_schemas::{Codec, Event};
use std::sync::Arc;
use std::time::Duration;

/// Topic names and partition counts, from the `[bus]` configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Prepended to every topic name, e.g. `prod.` gives `prod.esg.scores`.
    pub prefix: String,
    /// Partitions of `esg.account-events` and `esg.scores` (and `esg.accounts`); the two must be
    /// equal so that an account's event and its score live in partitions of the same number.
    pub partitions: i32,
    /// Retention of `esg.account-events`.
    #[serde(with = "humantime_serde")]
    pub account_events_retention: Duration,
    /// Retention of `esg.triggers`.
    #[serde(with = "humantime_serde")]
    pub triggers_retention: Duration,
    /// The compacted topics' (`esg.accounts`, `esg.scores`) `max.compaction.lag.ms` and
    /// `segment.ms`: a record superseded by a newer one or by a tombstone is compacted away at
    /// most about this long after it was written.
    #[serde(with = "humantime_serde")]
    pub compaction_lag: Duration,
    /// The compacted topics' `delete.retention.ms`: how long a tombstone stays once compaction
    /// reached it (a consumer reading the topic from the start within that time sees it).
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            prefix: String::new(),
            partitions: 12,
            account_events_retention: Duration::from_secs(7 * 24 * 3600),
            triggers_retention: Duration::from_secs(30 * 24 * 3600),
            compaction_lag: DEFAULT_COMPACTION_LAG,
            tombstone_retention: DEFAULT_TOMBSTONE_RETENTION,
        }
    }
}

/// The four topic names in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub triggers: String,
    pub account_events: String,
    pub accounts: String,
    pub scores: String,
    config: TopicsConfig,
}

impl Topics {
    pub fn new(config: &TopicsConfig) -> Self {
        let p = &config.prefix;
        Topics {
            triggers: format!("{p}esg.triggers"),
            account_events: format!("{p}esg.account-events"),
            accounts: format!("{p}esg.accounts"),
            scores: format!("{p}esg.scores"),
            config: config.clone(),
        }
    }

    /// Every topic with its policy.
    pub fn specs(&self) -> Vec<TopicSpec> {
        let n = self.config.partitions;
        let compact = Cleanup::Compact {
            compaction_lag: self.config.compaction_lag,
            tombstone_retention: self.config.tombstone_retention,
        };
        vec![
            TopicSpec {
                name: self.triggers.clone(),
                partitions: 1,
                cleanup: Cleanup::Delete {
                    retention: self.config.triggers_retention,
                },
            },
            TopicSpec {
                name: self.account_events.clone(),
                partitions: n,
                cleanup: Cleanup::Delete {
                    retention: self.config.account_events_retention,
                },
            },
            TopicSpec {
                name: self.accounts.clone(),
                partitions: n,
                cleanup: compact,
            },
            TopicSpec {
                name: self.scores.clone(),
                partitions: n,
                cleanup: compact,
            },
        ]
    }
}

/// How event values are framed on the bus.
#[derive(Clone, Debug)]
pub enum Wire {
    /// Avro single-object encoding (`C3 01`, schema fingerprint, datum): the embedded log.
    SingleObject,
    /// The Confluent wire format with schema ids from a registry: Kafka.
    Registry(Arc<RegistryWire>),
}

/// The transport plus the codec: publishes and decodes [`Event`]s. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    pub transport: SharedTransport,
    pub codec: Arc<Codec>,
    pub topics: Topics,
    pub wire: Wire,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("topics", &self.topics)
            .finish()
    }
}

impl EventBus {
    /// Wraps a transport and creates (or checks) the pipeline's topics; values in single-object
    /// encoding.
    pub async fn connect(transport: SharedTransport, config: &TopicsConfig) -> Result<Self> {
        Self::connect_with(transport, config, None).await
    }

    /// Like [`EventBus::connect`], with values in the Confluent wire format when a schema
    /// registry is given (its subjects are registered first).
    pub async fn connect_with(
        transport: SharedTransport,
        config: &TopicsConfig,
        registry: Option<&RegistryConfig>,
    ) -> Result<Self> {
        if config.partitions < 1 {
            return Err(BusError::Other(format!(
                "bus.partitions must be at least 1, not {}",
                config.partitions
            )));
        }
        for (key, value) in [
            ("bus.compaction_lag", config.compaction_lag),
            ("bus.tombstone_retention", config.tombstone_retention),
        ] {
            if value.as_millis() == 0 {
                return Err(BusError::Other(format!(
                    "{key} must be at least 1ms, not {value:?}"
                )));
            }
        }
        let topics = Topics::new(config);
        transport.ensure_topics(&topics.specs()).await?;
        let codec = Arc::new(Codec::new().map_err(|e| BusError::Other(e.to_string()))?);
        let wire = match registry {
            None => Wire::SingleObject,
            Some(registry) => Wire::Registry(Arc::new(
                RegistryWire::connect(registry, &topics, codec.clone()).await?,
            )),
        };
        Ok(EventBus {
            transport,
            codec,
            topics,
            wire,
        })
    }

    /// Encodes `events` with their keys and publishes them durably to `topic`.
    pub async fn publish(
        &self,
        topic: &str,
        events: &[(String, Event)],
    ) -> Result<Vec<crate::Position>> {
        let mut records = Vec::with_capacity(events.len());
        for (key, event) in events {
            let encoded = match &self.wire {
                Wire::SingleObject => self.codec.encode(event),
                Wire::Registry(wire) => wire.encode(topic, event),
            };
            let bytes = encoded.map_err(|e| {
                BusError::Other(format!("encoding {} for {key}: {e}", event.record_name()))
            })?;
            records.push(Record::new(key.clone(), bytes));
        }
        self.transport.publish(topic, records).await
    }

    /// Publishes tombstones for `keys`.
    pub async fn tombstones(&self, topic: &str, keys: &[String]) -> Result<Vec<crate::Position>> {
        self.transport
            .publish(topic, keys.iter().map(Record::tombstone).collect())
            .await
    }

    /// Decodes a message value (`None` for a tombstone).
    pub fn decode(
        &self,
        value: Option<&[u8]>,
    ) -> std::result::Result<Option<Event>, esg_schemas::CodecError> {
        value
            .map(|v| match &self.wire {
                Wire::SingleObject => self.codec.decode(v),
                Wire::Registry(wire) => wire.decode(v),
            })
            .transpose()
    }
}

//! Avro values in the Confluent wire format, with their schemas in a schema registry (Confluent
//! Schema Registry, or any registry serving its API, such as Apicurio's `/apis/ccompat/v7`).
//!
//! A value on Kafka is `0x00`, the schema id (4 bytes, big-endian), then the Avro datum: what
//! every Confluent deserializer, `kcat -s value=avro` and Kafka Connect read. Keys stay plain
//! UTF-8 strings.
//!
//! Subjects: a topic that carries one record type uses the default `TopicNameStrategy`
//! (`esg.scores-value`); `esg.triggers`, which carries three, uses `TopicRecordNameStrategy`
//! (`esg.triggers-com.firm.esg.DailyTrigger`, ...).
//!
//! At start-up ([`RegistryWire::connect`]) every value subject is registered with the current
//! schema (the registry refuses a schema that breaks the subject's compatibility rule, BACKWARD by
//! default, and that refusal stops the job with the registry's reason), and every version ever
//! registered under the pipeline's subjects is loaded, so that decoding is synchronous and reads
//! records written by any earlier version of the job. Limit: a record written with a schema
//! registered *after* start-up (a newer job version) is refused with its id; as always with
//! BACKWARD compatibility, upgrade readers (scorers, assembler) before writers (the producer).

use crate::{BusError, Result, Topics};
use esg_schemas::{Codec, CodecError, Event};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_versions, get_schema_by_subject_and_version, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    get_bytes_result, get_payload, BytesResult, SchemaType, SuppliedSchema,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// `[kafka.schema_registry]`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://registry:8081` or, for Apicurio,
    /// `http://registry:8080/apis/ccompat/v7`.
    pub url: String,
    /// Basic-auth user, if the registry wants one.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// Time limit of one registry request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "http://localhost:8081".into(),
            username: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RegistryConfig {
    /// The schema_registry_converter settings for this registry.
    pub fn settings(&self) -> Result<SrSettings> {
        let mut builder = SrSettings::new_builder(self.url.trim_end_matches('/').to_owned());
        builder.set_timeout(self.timeout);
        if let Some(user) = &self.username {
            builder.set_basic_authorization(user, self.password.as_deref());
        }
        builder.build().map_err(|e| registry_err("settings", e))
    }
}

fn registry_err(what: &str, e: SRCError) -> BusError {
    BusError::Registry(format!("{what}: {e}"))
}

/// The value subject of `record` on `topic`, as registered: see the module documentation.
pub fn subject(topics: &Topics, topic: &str, record: &str) -> String {
    if topic == topics.triggers {
        format!("{topic}-com.firm.esg.{record}")
    } else {
        format!("{topic}-value")
    }
}

/// Which records each topic carries.
pub fn topic_records(topics: &Topics) -> Vec<(String, &'static str)> {
    vec![
        (topics.triggers.clone(), "DailyTrigger"),
        (topics.triggers.clone(), "RunSealed"),
        (topics.triggers.clone(), "RunCompleted"),
        (topics.account_events.clone(), "AccountChanged"),
        (topics.accounts.clone(), "AccountEntry"),
        (topics.scores.clone(), "EsgScore"),
    ]
}

/// Encodes and decodes [`Event`]s in the Confluent wire format with ids from the registry.
pub struct RegistryWire {
    codec: Arc<Codec>,
    /// Schema id to write a record with, per (topic, record).
    write_ids: HashMap<(String, &'static str), u32>,
    /// Every schema id of the pipeline's subjects: record name, writer schema, and whether it
    /// is the current schema of the record ([`Codec::is_current`]).
    readers: HashMap<u32, (&'static str, apache_avro::Schema, bool)>,
}

impl std::fmt::Debug for RegistryWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryWire")
            .field("write_ids", &self.write_ids)
            .field("known_ids", &self.readers.len())
            .finish()
    }
}

impl RegistryWire {
    /// Registers the current schema of every value subject and loads every registered version.
    pub async fn connect(
        config: &RegistryConfig,
        topics: &Topics,
        codec: Arc<Codec>,
    ) -> Result<Self> {
        let settings = config.settings()?;
        let mut write_ids = HashMap::new();
        let mut readers = HashMap::new();
        for (topic, record) in topic_records(topics) {
            let subject = subject(topics, &topic, record);
            let text = esg_schemas::SCHEMAS
                .iter()
                .find(|s| s.name == record)
                .map(|s| s.text)
                .ok_or_else(|| BusError::Other(format!("no schema for record {record}")))?;
            let registered = post_schema(
                &settings,
                subject.clone(),
                SuppliedSchema::new(
                    Some(format!("com.firm.esg.{record}")),
                    SchemaType::Avro,
                    text.to_owned(),
                ),
            )
            .await
            .map_err(|e| {
                registry_err(
                    &format!(
                        "registering {record} under subject {subject} at {}",
                        config.url
                    ),
                    e,
                )
            })?;
            tracing::debug!(subject = %subject, id = registered.id, "value schema registered");
            write_ids.insert((topic.clone(), record), registered.id);
            let versions = get_all_versions(&settings, subject.clone())
                .await
                .map_err(|e| registry_err(&format!("versions of subject {subject}"), e))?;
            for version in versions {
                let schema = get_schema_by_subject_and_version(&settings, &subject, Some(version))
                    .await
                    .map_err(|e| {
                        registry_err(&format!("subject {subject} version {version}"), e)
                    })?;
                match codec.parse_writer(&schema.schema) {
                    Ok((name, writer)) => {
                        let current = codec.is_current(name, &writer);
                        readers.insert(schema.id, (name, writer, current));
                    }
                    Err(e) => tracing::warn!(
                        subject = %subject, version, id = schema.id, error = %e,
                        "a registered schema version this job cannot read; records written with it will be refused"
                    ),
                }
            }
        }
        tracing::info!(
            registry = %config.url,
            subjects = write_ids.len(),
            known_schema_ids = readers.len(),
            "schema registry ready"
        );
        Ok(RegistryWire {
            codec,
            write_ids,
            readers,
        })
    }

    /// The schema id `event` is written with on `topic`.
    pub fn write_id(&self, topic: &str, record: &str) -> Option<u32> {
        self.write_ids
            .iter()
            .find(|((t, r), _)| t == topic && *r == record)
            .map(|(_, id)| *id)
    }

    /// `0x00`, schema id, Avro datum.
    pub fn encode(&self, topic: &str, event: &Event) -> std::result::Result<Vec<u8>, CodecError> {
        let record = event.record_name();
        let id = self
            .write_id(topic, record)
            .ok_or_else(|| CodecError::UnknownSchema(format!("{record} on topic {topic}")))?;
        Ok(get_payload(id, self.codec.encode_datum(event)?))
    }

    /// Decodes a Confluent wire-format value written with any registered version of a pipeline
    /// schema.
    pub fn decode(&self, bytes: &[u8]) -> std::result::Result<Event, CodecError> {
        match get_bytes_result(Some(bytes)) {
            BytesResult::Valid(id, datum) => {
                let (record, writer, current) = self
                    .readers
                    .get(&id)
                    .ok_or_else(|| CodecError::UnknownSchema(format!("registry schema id {id}")))?;
                if *current {
                    // Written with the current schema: nothing to resolve.
                    self.codec.decode_datum(record, datum)
                } else {
                    self.codec.decode_datum_with(record, writer, datum)
                }
            }
            _ => Err(CodecError::Field {
                record: "value",
                field: "(header)",
                problem: "not in the Confluent wire format (0x00, schema id, datum)".into(),
            }),
        }
    }
}

//! Schema evolution checked by the schema registry itself (Apicurio's Confluent-compatible API):
//! every release, and the current schema, is a BACKWARD-compatible successor of the one before,
//! a breaking change is refused, a record written with an older version is read after the job
//! registered the current one, and the job refuses to start on a subject it cannot write
//! compatibly.

mod common;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use chrono::DateTime;
use common::kafka::{services, unique};
use esg_bus::registry::{RegistryConfig, RegistryWire};
use esg_bus::{EventBus, Topics, TopicsConfig};
use esg_schemas::{AccountChanged, ChangeReason, Codec, Event};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_versions, is_compatible_schema, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use std::sync::Arc;

fn avro(name: &str, text: &str) -> SuppliedSchema {
    SuppliedSchema::new(
        Some(format!("com.firm.esg.{name}")),
        SchemaType::Avro,
        text.to_owned(),
    )
}

async fn set_backward(registry: &str, subject: &str) {
    let answer = reqwest::Client::new()
        .put(format!("{registry}/config/{subject}"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(r#"{"compatibility":"BACKWARD"}"#)
        .send()
        .await
        .expect("registry answers");
    assert!(answer.status().is_success(), "{}", answer.status());
}

/// The text of a released schema.
fn released(version: &str, record: &str) -> &'static str {
    esg_schemas::RELEASED
        .iter()
        .find(|(v, s)| *v == version && s.name == record)
        .map(|(_, s)| s.text)
        .unwrap_or_else(|| panic!("{version} {record} released"))
}

/// Each record's releases registered in order under one subject, then the current schema if it
/// is not the last release: the path a deployed subject took. The registry checks every step
/// against the version before it (AccountChanged: v1, v2 adds `prior`, v3 removes
/// `account_name`), and refuses a breaking step after the last.
#[tokio::test]
async fn every_schema_change_is_backward_compatible_in_the_registry() {
    let registry = &services().registry;
    let sr = SrSettings::new(registry.clone());
    let ns = unique("compat");
    for current in esg_schemas::SCHEMAS {
        let mut chain: Vec<(&str, &str)> = esg_schemas::RELEASED
            .iter()
            .filter(|(_, s)| s.name == current.name)
            .map(|(version, s)| (*version, s.text))
            .chain([("current", current.text)])
            .collect();
        // A release that did not change the record is no new version of its subject.
        chain.dedup_by(|later, earlier| later.1 == earlier.1);
        if current.name == "AccountChanged" {
            let versions: Vec<&str> = chain.iter().map(|(v, _)| *v).collect();
            assert_eq!(versions, ["v1", "v2", "v3"], "the current schema is v3");
        }
        if current.name == "EsgScore" {
            // v2 adds `requests` and `etag`, v4 `rate_limited_requests` (v3 left it as it was).
            let versions: Vec<&str> = chain.iter().map(|(v, _)| *v).collect();
            assert_eq!(versions, ["v1", "v2", "v4"], "the current schema is v4");
        }
        let subject = format!("{ns}-{}", current.name);
        set_backward(registry, &subject).await;
        for (i, (version, text)) in chain.iter().enumerate() {
            if let Some((before, _)) = i.checked_sub(1).map(|b| chain[b]) {
                let ok = is_compatible_schema(&sr, subject.clone(), avro(current.name, text))
                    .await
                    .expect("registry answers");
                assert!(
                    ok,
                    "{}: the registry finds {version} incompatible with {before}",
                    current.name
                );
            }
            post_schema(&sr, subject.clone(), avro(current.name, text))
                .await
                .unwrap_or_else(|e| panic!("{} {version} registers: {e}", current.name));
        }
        let versions = get_all_versions(&sr, subject.clone())
            .await
            .expect("registry answers");
        assert_eq!(
            versions.len(),
            chain.len(),
            "{}: {versions:?}",
            current.name
        );

        // A change that breaks old records (a new field without a default) is refused.
        let mut broken: serde_json::Value = serde_json::from_str(current.text).expect("json");
        broken["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "breaking_change", "type": "string"}));
        let broken = broken.to_string();
        let ok = is_compatible_schema(&sr, subject.clone(), avro(current.name, &broken))
            .await
            .expect("registry answers");
        assert!(!ok, "{}: a field without default passed", current.name);
        assert!(
            post_schema(&sr, subject, avro(current.name, &broken))
                .await
                .is_err(),
            "{}: the registry registered a breaking change",
            current.name
        );
    }
}

/// An `AccountChanged` a v2 producer wrote (Confluent wire format, v2's schema id, a name in
/// the datum) is read by the current job after its start-up registered v3 on the same subject:
/// the name is dropped, and what the job writes now holds none.
#[tokio::test]
async fn an_account_event_written_with_v2_is_read_after_v3_is_registered() {
    let s = services();
    let ns = unique("v2-event");
    let topics = Topics::new(&TopicsConfig {
        prefix: format!("{ns}."),
        ..Default::default()
    });
    let topic = &topics.account_events;
    let subject = esg_bus::registry::subject(&topics, topic, "AccountChanged");
    set_backward(&s.registry, &subject).await;
    let sr = SrSettings::new(s.registry.clone());
    let register = |version| {
        let schema = avro("AccountChanged", released(version, "AccountChanged"));
        post_schema(&sr, subject.clone(), schema)
    };
    register("v1").await.expect("v1 registers");
    let v2 = register("v2").await.expect("v2 registers").id;

    let name = "Jane Q. Doe";
    let writer = apache_avro::Schema::parse_str(released("v2", "AccountChanged")).expect("v2");
    let datum = GenericDatumWriter::builder(&writer)
        .build()
        .and_then(|w| {
            w.write_value_to_vec(Value::Record(vec![
                ("run_id".into(), Value::String("2026-11-23".into())),
                ("account_id".into(), Value::String("A.1".into())),
                ("account_name".into(), Value::String(name.into())),
                ("version".into(), Value::Long(3)),
                ("reason".into(), Value::Enum(1, "Changed".into())),
                (
                    "emitted_at".into(),
                    Value::TimestampMillis(1_763_900_000_123),
                ),
                ("prior".into(), Value::Union(0, Box::new(Value::Null))),
            ]))
        })
        .expect("v2 datum");
    let mut old = vec![0u8];
    old.extend_from_slice(&v2.to_be_bytes());
    old.extend_from_slice(&datum);

    let wire = RegistryWire::connect(
        &RegistryConfig {
            url: s.registry.clone(),
            ..Default::default()
        },
        &topics,
        Arc::new(Codec::new().expect("codec")),
    )
    .await
    .expect("the job registers v3 after v2");
    let v3 = wire.write_id(topic, "AccountChanged").expect("a write id");
    assert_ne!(v3, v2, "v3 is a new version of the subject");

    let read = wire.decode(&old).expect("the v2 record reads");
    let expected = Event::AccountChanged(AccountChanged {
        run_id: "2026-11-23".into(),
        account_id: "A.1".into(),
        version: 3,
        reason: ChangeReason::Changed,
        emitted_at: DateTime::from_timestamp_millis(1_763_900_000_123).expect("instant"),
        prior: None,
    });
    assert_eq!(read, expected);
    let new = wire.encode(topic, &read).expect("encodes");
    assert_eq!(new[1..5], v3.to_be_bytes());
    assert!(!new.windows(name.len()).any(|w| w == name.as_bytes()));
    assert_eq!(wire.decode(&new).expect("reads"), expected);
}

#[tokio::test]
async fn the_job_refuses_to_start_on_a_subject_it_would_break() {
    let s = services();
    let ns = unique("refuse");
    let topics = TopicsConfig {
        prefix: format!("{ns}."),
        ..Default::default()
    };
    // Someone registered an EsgScore whose `attempts` is a string: the job's int cannot read it.
    let subject = format!("{ns}.esg.scores-value");
    set_backward(&s.registry, &subject).await;
    let current = esg_schemas::SCHEMAS
        .iter()
        .find(|s| s.name == "EsgScore")
        .expect("EsgScore");
    let other = current.text.replace(
        r#"{"name": "attempts", "type": "int""#,
        r#"{"name": "attempts", "type": "string""#,
    );
    assert_ne!(other, current.text);
    post_schema(
        &SrSettings::new(s.registry.clone()),
        subject.clone(),
        avro("EsgScore", &other),
    )
    .await
    .expect("the other schema registers");

    let transport = esg_bus::kafka::KafkaTransport::connect(esg_bus::kafka::KafkaConfig {
        bootstrap_servers: s.bootstrap.clone(),
        ..Default::default()
    })
    .await
    .expect("connects");
    let err = EventBus::connect_with(
        Arc::new(transport),
        &topics,
        Some(&RegistryConfig {
            url: s.registry.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("the job must not write EsgScore under that subject");
    let text = err.to_string();
    assert!(text.contains(&subject), "{text}");
    assert!(text.contains("registering EsgScore"), "{text}");
}

//! Schema evolution checked by the schema registry itself (Apicurio's Confluent-compatible API):
//! every current schema is a BACKWARD-compatible successor of its released version, a breaking
//! change is refused, and the job refuses to start on a subject it cannot write compatibly.

mod common;

use common::kafka::{services, unique};
use esg_bus::registry::RegistryConfig;
use esg_bus::{EventBus, TopicsConfig};
use schema_registry_converter::async_impl::schema_registry::{
    is_compatible_schema, post_schema, SrSettings,
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

#[tokio::test]
async fn every_schema_change_is_backward_compatible_in_the_registry() {
    let registry = &services().registry;
    let sr = SrSettings::new(registry.clone());
    let ns = unique("compat");
    for (version, released) in esg_schemas::RELEASED {
        let current = esg_schemas::SCHEMAS
            .iter()
            .find(|s| s.name == released.name)
            .expect("current schema");
        let subject = format!("{ns}-{version}-{}", released.name);
        set_backward(registry, &subject).await;
        post_schema(&sr, subject.clone(), avro(released.name, released.text))
            .await
            .expect("released version registers");
        let ok = is_compatible_schema(&sr, subject.clone(), avro(current.name, current.text))
            .await
            .expect("registry answers");
        assert!(
            ok,
            "{}: the registry finds the current schema incompatible with {version}",
            current.name
        );
        post_schema(&sr, subject.clone(), avro(current.name, current.text))
            .await
            .expect("current version registers as the next version");

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

//! Schema evolution is BACKWARD compatible: the current schemas read everything written with
//! any released version (`schemas/avro/released/v*`).

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use esg_schemas::SCHEMAS;
use std::path::Path;

fn released_versions() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro/released");
    let mut versions: Vec<_> = std::fs::read_dir(&dir)
        .expect("released schemas folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    versions.sort();
    versions
}

#[test]
fn current_schemas_read_every_released_version() {
    let versions = released_versions();
    assert!(!versions.is_empty(), "no released version found");
    for version in versions {
        for current in SCHEMAS {
            let path = version.join(format!("{}.avsc", current.name));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue; // a record added after that release
            };
            let old = Schema::parse_str(&text).expect("released schema parses");
            let new = Schema::parse_str(current.text).expect("current schema parses");
            if let Err(e) = SchemaCompatibility::can_read(&old, &new) {
                panic!(
                    "{} cannot read records written with {}: {e}",
                    current.name,
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_check_catches_an_incompatible_change() {
    // A required field added without a default is not BACKWARD compatible.
    let old = Schema::parse_str(SCHEMAS[0].text).expect("parses");
    let mut json: serde_json::Value = serde_json::from_str(SCHEMAS[0].text).expect("json");
    json["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "required_new", "type": "string"}));
    let new = Schema::parse_str(&json.to_string()).expect("parses");
    assert!(SchemaCompatibility::can_read(&old, &new).is_err());
}

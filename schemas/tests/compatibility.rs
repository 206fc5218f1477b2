//! Schema evolution is BACKWARD compatible: the current schemas read everything written with
//! any released version (`schemas/avro/released/v*`).

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use esg_schemas::{RELEASED, SCHEMAS};
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

/// What a registry with the BACKWARD rule checks at each registration: every release reads
/// the records of the release before it (v2 reads v1, v3 reads v2, ...).
#[test]
fn every_released_version_reads_the_one_before() {
    let versions = released_versions();
    for pair in versions.windows(2) {
        let (older, newer) = (&pair[0], &pair[1]);
        for current in SCHEMAS {
            let read = |dir: &Path| {
                std::fs::read_to_string(dir.join(format!("{}.avsc", current.name)))
                    .ok()
                    .map(|text| Schema::parse_str(&text).expect("released schema parses"))
            };
            let (Some(old), Some(new)) = (read(older), read(newer)) else {
                continue; // the record is not in both releases
            };
            if let Err(e) = SchemaCompatibility::can_read(&old, &new) {
                panic!(
                    "{} of {} cannot read records written with {}: {e}",
                    current.name,
                    newer.display(),
                    older.display()
                );
            }
        }
    }
}

/// The codec reads what `RELEASED` lists: every file of every released folder is listed there,
/// with the folder's text, and nothing else is.
#[test]
fn every_released_file_is_listed_in_released() {
    let mut on_disk = Vec::new();
    for version in released_versions() {
        let name = version
            .file_name()
            .and_then(|n| n.to_str())
            .expect("folder name");
        for file in std::fs::read_dir(&version).expect("release folder") {
            let path = file.expect("entry").path();
            if path.extension().is_some_and(|e| e == "avsc") {
                let record = path
                    .file_stem()
                    .and_then(|n| n.to_str())
                    .expect("file name");
                let text = std::fs::read_to_string(&path).expect("readable");
                on_disk.push((name.to_owned(), record.to_owned(), text));
            }
        }
    }
    on_disk.sort();
    let mut listed: Vec<_> = RELEASED
        .iter()
        .map(|(v, s)| ((*v).to_owned(), s.name.to_owned(), s.text.to_owned()))
        .collect();
    listed.sort();
    let names = |l: &[(String, String, String)]| {
        l.iter()
            .map(|(v, r, _)| format!("{v}/{r}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&listed), names(&on_disk));
    assert!(listed == on_disk, "a RELEASED text differs from its file");
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

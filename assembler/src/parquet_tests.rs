//! Tests of `parquet`.

use super::*;
use crate::output::{erase_accounts, replace_rows, OutputWriter, Row};
use ::parquet::basic::{ConvertedType, LogicalType, Repetition};
use chrono::{TimeZone, Utc};
use esg_schemas::EsgValues;
use std::collections::{BTreeMap, HashSet};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal literal")
}

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
}

fn ok_row(id: &str, name: &str) -> Row {
    Row {
        account_id: id.into(),
        account_name: name.into(),
        status: ScoreStatus::Successful,
        values: EsgValues {
            overall: Some(dec("72.345")),
            environmental: Some(dec("80")),
            social: Some(dec("65.5")),
            governance: Some(dec("71.1234")),
            primary_focus: Some(Pillar::Environmental),
            primary_focus_score: Some(dec("80")),
            analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
        },
        attempts: 1,
        error_code: None,
        error_message: None,
        last_attempt: Utc.with_ymd_and_hms(2026, 11, 23, 11, 2, 3).single(),
    }
}

fn partial_row(id: &str) -> Row {
    let mut row = ok_row(id, "Partial Fund");
    row.status = ScoreStatus::Partial;
    row.values.social = None;
    row.values.primary_focus = None;
    row.values.primary_focus_score = None;
    row.error_code = Some("partial_response".into());
    row
}

fn failed_row(id: &str) -> Row {
    Row {
        status: ScoreStatus::Failed,
        attempts: 3,
        error_code: Some("HTTP_404".into()),
        ..ok_row(id, "Failed Fund")
    }
}

fn write_day(dir: &Path, rows: &[Row], protection: &Protection) -> crate::output::Written {
    let mut writer =
        OutputWriter::create_with_parquet(dir, date(), protection, true).expect("create");
    for row in rows {
        writer.write(row).expect("write");
    }
    writer.finish().expect("finish")
}

fn records_of(reader: &dyn FileReader) -> Vec<Record> {
    let mut out = Vec::new();
    read_records(Path::new("test"), reader, |r| {
        out.push(r);
        Ok(())
    })
    .expect("read");
    out
}

fn read_plain(path: &Path) -> Vec<Record> {
    let reader = SerializedFileReader::new(File::open(path).expect("open")).expect("parquet");
    records_of(&reader)
}

fn decrypt(path: &Path, identity: &age::x25519::Identity) -> Vec<u8> {
    let bytes = fs::read(path).expect("read");
    let decryptor = age::Decryptor::new(bytes.as_slice()).expect("age file");
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .expect("decrypts");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read");
    out
}

fn read_encrypted(path: &Path, identity: &age::x25519::Identity) -> Vec<Record> {
    let bytes = bytes::Bytes::from(decrypt(path, identity));
    let reader = SerializedFileReader::new(bytes).expect("parquet");
    records_of(&reader)
}

#[test]
fn the_layout_is_hive_partitioned_by_business_date() {
    let out = Path::new("/srv/out");
    assert_eq!(file_name(date()), "FirmESGRatings_20261123.parquet");
    assert_eq!(
        path(out, date(), &Protection::Plaintext),
        Path::new("/srv/out/parquet/business_date=2026-11-23/FirmESGRatings_20261123.parquet")
    );
    let identity = age::x25519::Identity::generate();
    let protection = Protection::age(&[identity.to_public().to_string()]).expect("recipient");
    assert_eq!(
        path(out, date(), &protection),
        Path::new("/srv/out/parquet/business_date=2026-11-23/FirmESGRatings_20261123.parquet.age")
    );
}

#[test]
fn columns_are_typed_decimal_date_and_text_with_nulls_where_the_csv_shows_na() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut negative = ok_row("D-4", "=HYPERLINK(\"x\")");
    negative.values.governance = Some(dec("-0.5"));
    let rows = [
        ok_row("A-1", "Alpha Fund"),
        partial_row("B-2"),
        failed_row("C-3"),
        negative,
    ];
    let written = write_day(dir.path(), &rows, &Protection::Plaintext);
    let file = path(dir.path(), date(), &Protection::Plaintext);
    assert!(file.is_file(), "{}", file.display());

    let reader = SerializedFileReader::new(File::open(&file).expect("open")).expect("parquet");
    let meta = reader.metadata().file_metadata();
    assert_eq!(meta.num_rows(), 4);
    let fields = meta.schema().get_fields();
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    assert_eq!(names, COLUMNS);
    for field in fields {
        let info = field.get_basic_info();
        let name = field.name();
        if name.ends_with("_score") {
            assert!(
                matches!(info.logical_type_ref(), Some(LogicalType::Decimal(_))),
                "{name}"
            );
            assert_eq!((field.get_precision(), field.get_scale()), (5, 2), "{name}");
            assert_eq!(info.converted_type(), ConvertedType::DECIMAL, "{name}");
            assert_eq!(info.repetition(), Repetition::OPTIONAL, "{name}");
        } else if name == "analysis_date" {
            assert_eq!(info.logical_type_ref(), Some(&LogicalType::Date));
            assert_eq!(info.repetition(), Repetition::OPTIONAL);
        } else {
            assert_eq!(
                info.logical_type_ref(),
                Some(&LogicalType::String),
                "{name}"
            );
            let required = name != "primary_focus";
            assert_eq!(
                info.repetition() == Repetition::REQUIRED,
                required,
                "{name}"
            );
        }
    }
    let kv = meta.key_value_metadata().expect("key-value metadata");
    assert!(kv
        .iter()
        .any(|e| e.key == METADATA_BUSINESS_DATE && e.value.as_deref() == Some("2026-11-23")));

    let records = read_plain(&file);
    let analysed = NaiveDate::from_ymd_opt(2026, 11, 20);
    assert_eq!(
        records[0],
        Record {
            account_id: "A-1".into(),
            account_name: "Alpha Fund".into(),
            // 72.345 rounds half away from zero to 72.35, as the CSV shows it.
            overall: Some(7235),
            environmental: Some(8000),
            social: Some(6550),
            governance: Some(7112),
            primary_focus: Some(Pillar::Environmental),
            primary_focus_score: Some(8000),
            analysis_date: analysed,
            status: ScoreStatus::Successful,
        }
    );
    assert_eq!(records[1].social, None, "N/A is null");
    assert_eq!(records[1].primary_focus, None);
    assert_eq!(records[1].primary_focus_score, None);
    assert_eq!(records[1].overall, Some(7235));
    assert_eq!(records[1].status, ScoreStatus::Partial);
    let failed = &records[2];
    assert_eq!(failed.status, ScoreStatus::Failed);
    assert!(
        [
            failed.overall,
            failed.environmental,
            failed.social,
            failed.governance,
            failed.primary_focus_score
        ]
        .iter()
        .all(Option::is_none)
            && failed.primary_focus.is_none()
            && failed.analysis_date.is_none(),
        "a failed row has no ESG value: {failed:?}"
    );
    // The CSV neutralises `-0.50` and the name; the Parquet holds the values themselves.
    assert_eq!(records[3].governance, Some(-50));
    assert_eq!(records[3].account_name, "=HYPERLINK(\"x\")");
    let csv = fs::read_to_string(&written.csv).expect("csv");
    assert!(
        csv.contains("'-0.50") && csv.contains("'=HYPERLINK"),
        "{csv}"
    );
}

#[test]
fn a_cell_that_does_not_parse_is_an_error_naming_the_account_and_the_column() {
    let good: Vec<String> = crate::output::format_row(&ok_row("A-1", "Alpha")).into();
    assert!(Record::from_cells(&good).is_ok());
    let cases: [(usize, &str, &str, &str); 9] = [
        (2, "72.3", "Overall ESG Score", "two decimals"),
        (3, "eighty", "Environmental Score", "not a number"),
        (4, "1000.00", "Social Score", "DECIMAL(5,2)"),
        (5, "", "Governance Score", "not a number"),
        (6, "Climate", "Primary ESG Focus", "Pillar"),
        (7, "1e2", "Primary Focus Score", ""),
        (8, "2026-11-31", "Analysis Date", "YYYY-MM-DD"),
        (8, "2026-1-5", "Analysis Date", "YYYY-MM-DD"),
        (9, "Done", "Processing Status", "ScoreStatus"),
    ];
    for (index, cell, column, why) in cases {
        let mut cells = good.clone();
        cells[index] = cell.to_owned();
        let err = Record::from_cells(&cells).expect_err(cell);
        assert_eq!(err.column, column, "{err}");
        assert_eq!(err.account_id, "A-1");
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains("A-1"), "{err}");
    }
    let err = Record::from_cells(&good[..9]).expect_err("short");
    assert!(err.to_string().contains("9 cells"), "{err}");
    let mut cells = good.clone();
    cells[0] = String::new();
    assert!(Record::from_cells(&cells).is_err(), "no account id");
}

#[test]
fn a_bad_cell_in_a_rewritten_day_fails_the_rewrite_and_leaves_every_file_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = write_day(
        dir.path(),
        &[ok_row("A-1", "Alpha"), ok_row("B-2", "Beta")],
        &Protection::Plaintext,
    );
    let file = path(dir.path(), date(), &Protection::Plaintext);
    // Someone edited the CSV by hand: a score the Parquet cannot hold.
    let csv = fs::read_to_string(&written.csv)
        .expect("csv")
        .replace("A-1,Alpha,72.35", "A-1,Alpha,72.3");
    fs::write(&written.csv, &csv).expect("edit");
    let parquet_before = fs::read(&file).expect("parquet");
    let errors_before = fs::read(&written.errors).expect("errors");
    let replacements: BTreeMap<String, Row> = [("B-2".to_owned(), partial_row("B-2"))].into();
    let err = replace_rows(dir.path(), date(), &replacements, true).expect_err("bad cell");
    let text = err.to_string();
    assert!(
        text.contains("Overall ESG Score") && text.contains("A-1") && text.contains("72.3"),
        "{text}"
    );
    assert!(!err.is_transient());
    assert_eq!(fs::read_to_string(&written.csv).expect("csv"), csv);
    assert_eq!(fs::read(&file).expect("parquet"), parquet_before);
    assert_eq!(fs::read(&written.errors).expect("errors"), errors_before);
    let partition = partition_dir(dir.path(), date());
    let names: Vec<_> = fs::read_dir(&partition)
        .expect("partition")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
}

#[test]
fn a_re_run_rewrites_the_parquet_with_the_replaced_rows_and_keeps_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_day(
        dir.path(),
        &[
            ok_row("A-1", "Alpha"),
            failed_row("B-2"),
            ok_row("C-3", "Gamma"),
        ],
        &Protection::Plaintext,
    );
    let file = path(dir.path(), date(), &Protection::Plaintext);
    let before = read_plain(&file);
    let mut rescored = ok_row("B-2", "Beta");
    rescored.values.overall = Some(dec("12.005"));
    let replacements: BTreeMap<String, Row> = [("B-2".to_owned(), rescored)].into();
    // Not asked for, but the day has one: it follows the ratings file.
    replace_rows(dir.path(), date(), &replacements, false).expect("replace");
    let after = read_plain(&file);
    assert_eq!(after.len(), 3);
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    assert_eq!(after[1].status, ScoreStatus::Successful);
    assert_eq!(after[1].overall, Some(1201));

    // A day without one gets none unless asked for.
    let other = tempfile::tempdir().expect("tempdir");
    let mut writer =
        OutputWriter::create(other.path(), date(), &Protection::Plaintext).expect("create");
    writer.write(&ok_row("B-2", "Beta")).expect("write");
    writer.finish().expect("finish");
    replace_rows(other.path(), date(), &replacements, false).expect("replace");
    assert!(!exists(other.path(), date()));
    replace_rows(other.path(), date(), &replacements, true).expect("replace");
    assert_eq!(
        read_plain(&path(other.path(), date(), &Protection::Plaintext)).len(),
        1
    );
}

#[test]
fn row_groups_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows: Vec<Row> = (0..ROWS_PER_GROUP + 10)
        .map(|i| ok_row(&format!("A-{i:06}"), "Fund"))
        .collect();
    write_day(dir.path(), &rows, &Protection::Plaintext);
    let file = path(dir.path(), date(), &Protection::Plaintext);
    let reader = SerializedFileReader::new(File::open(&file).expect("open")).expect("parquet");
    let groups: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(groups, [ROWS_PER_GROUP as i64, 10]);
}

#[test]
fn an_encrypted_parquet_is_only_ciphertext_and_erasure_rewrites_it_encrypted() {
    let identity = age::x25519::Identity::generate();
    let protection = Protection::age(&[identity.to_public().to_string()]).expect("recipient");
    let dir = tempfile::tempdir().expect("tempdir");
    let rows: Vec<Row> = (0..3000)
        .map(|i| ok_row(&format!("A-{i:05}"), "Fund"))
        .collect();
    write_day(dir.path(), &rows, &protection);
    let partition = partition_dir(dir.path(), date());
    let names: Vec<String> = fs::read_dir(&partition)
        .expect("partition")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["FirmESGRatings_20261123.parquet.age"]);
    let file = path(dir.path(), date(), &protection);
    assert!(fs::read(&file)
        .expect("read")
        .starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(read_encrypted(&file, &identity).len(), 3000);
    assert_eq!(day_files(dir.path()), std::slice::from_ref(&file));

    let ids: HashSet<String> = ["A-00042".to_owned(), "Z-9".to_owned()].into();
    let none: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    let err = erase_accounts(&file, &ids, &none, &protection).expect_err("no identity");
    assert!(err.to_string().contains("--identity"), "{err}");
    let mine: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(identity.clone())];
    assert_eq!(
        erase_accounts(&file, &ids, &mine, &protection).expect("erase"),
        1
    );
    let after = read_encrypted(&file, &identity);
    assert_eq!(after.len(), 2999);
    assert!(after.iter().all(|r| r.account_id != "A-00042"));
    let before = fs::read(&file).expect("read");
    assert_eq!(
        erase_accounts(&file, &ids, &mine, &protection).expect("again"),
        0,
        "nothing left to erase"
    );
    assert_eq!(fs::read(&file).expect("read"), before, "left untouched");
}

#[test]
fn erasure_drops_the_rows_of_a_plaintext_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_day(
        dir.path(),
        &[
            ok_row("A-1", "Alpha"),
            partial_row("B-2"),
            failed_row("C-3"),
        ],
        &Protection::Plaintext,
    );
    let file = path(dir.path(), date(), &Protection::Plaintext);
    let before = read_plain(&file);
    let ids: HashSet<String> = ["B-2".to_owned()].into();
    assert_eq!(
        erase_accounts(&file, &ids, &[], &Protection::Plaintext).expect("erase"),
        1
    );
    assert_eq!(
        read_plain(&file),
        [before[0].clone(), before[2].clone()],
        "the other rows as they were"
    );
}

#[test]
fn a_dropped_writer_leaves_no_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer =
        OutputWriter::create_with_parquet(dir.path(), date(), &Protection::Plaintext, true)
            .expect("create");
    writer.write(&ok_row("A-1", "Alpha")).expect("write");
    drop(writer);
    assert!(!exists(dir.path(), date()));
    let partition = partition_dir(dir.path(), date());
    assert_eq!(fs::read_dir(&partition).expect("partition").count(), 0);
    assert_eq!(remove_empty_partitions(dir.path()), [partition]);
    assert!(!dir.path().join(DIR).exists());
}

//! Tests of `output`.

use super::*;
use chrono::TimeZone;
use std::str::FromStr;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal literal")
}

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
}

fn ok_values() -> EsgValues {
    EsgValues {
        overall: Some(dec("72.345")),
        environmental: Some(dec("80")),
        social: Some(dec("65.5")),
        governance: Some(dec("71.1234")),
        primary_focus: Some(Pillar::Environmental),
        primary_focus_score: Some(dec("80")),
        analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
    }
}

fn ok_row(id: &str, name: &str) -> Row {
    Row {
        account_id: id.into(),
        account_name: name.into(),
        status: ScoreStatus::Successful,
        values: ok_values(),
        attempts: 1,
        error_code: None,
        error_message: None,
        last_attempt: Some(
            Utc.with_ymd_and_hms(2026, 11, 23, 11, 2, 3)
                .single()
                .expect("time"),
        ),
    }
}

fn failed_row(id: &str, code: &str) -> Row {
    Row {
        status: ScoreStatus::Failed,
        attempts: 3,
        error_code: Some(code.into()),
        error_message: Some(format!("{code} happened")),
        ..ok_row(id, "Failed Fund")
    }
}

fn partial_row(id: &str) -> Row {
    Row {
        status: ScoreStatus::Partial,
        values: EsgValues {
            social: None,
            primary_focus: None,
            primary_focus_score: None,
            ..ok_values()
        },
        error_code: Some("partial_response".into()),
        ..ok_row(id, "Partial Fund")
    }
}

fn write_day(dir: &Path, rows: &[Row]) -> Written {
    let mut writer = OutputWriter::create(dir, date(), &Protection::Plaintext).expect("create");
    for row in rows {
        writer.write(row).expect("write");
    }
    writer.finish().expect("finish")
}

fn read_records(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("open csv");
    reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_owned).collect())
        .collect()
}

/// Splits file bytes into records (CRLF outside quotes), terminators included.
fn raw_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut current = Vec::new();
    let mut quotes = 0usize;
    for &b in bytes {
        current.push(b);
        if b == b'"' {
            quotes += 1;
        }
        if b == b'\n' && quotes.is_multiple_of(2) {
            lines.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "file ends without a line terminator");
    lines
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn file_names_use_the_business_date() {
    let names = file_names(date());
    assert_eq!(names.csv, "FirmESGRatings_20261123.csv");
    assert_eq!(names.errors, "FirmESGRatings_20261123_errors.csv");
    assert_eq!(names.summary_json, "FirmESGRatings_20261123_summary.json");
    assert_eq!(names.summary_html, "FirmESGRatings_20261123_summary.html");
}

#[test]
fn scores_round_half_away_from_zero_to_two_decimals() {
    let table = [
        ("70", "70.00"),
        ("72.345", "72.35"),
        ("72.344999", "72.34"),
        ("10.005", "10.01"),
        ("0.005", "0.01"),
        ("99.995", "100.00"),
        ("0", "0.00"),
        ("100", "100.00"),
        ("0.0049", "0.00"),
        ("65.5", "65.50"),
        ("-0.001", "0.00"),
    ];
    for (input, expected) in table {
        assert_eq!(format_score(dec(input)), expected, "score {input}");
    }
}

#[test]
fn header_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = write_day(dir.path(), &[]);
    let bytes = fs::read(&written.csv).expect("read");
    assert_eq!(
        bytes,
        b"Account ID,Account Name,Overall ESG Score,Environmental Score,Social Score,\
Governance Score,Primary ESG Focus,Primary Focus Score,Analysis Date,Processing Status\r\n"
    );
    assert_eq!(
        fs::read(&written.errors).expect("read errors"),
        b"Account ID,Processing Status,Error Code,Error Message,Attempts,Last Attempt Time\r\n"
    );
}

#[test]
fn successful_row_cells() {
    let cells = format_row(&ok_row("A1", "Acme Growth"));
    assert_eq!(
        cells,
        [
            "A1",
            "Acme Growth",
            "72.35",
            "80.00",
            "65.50",
            "71.12",
            "Environmental",
            "80.00",
            "2026-11-20",
            "Successful"
        ]
        .map(String::from)
    );
    assert_eq!(format_error_row(&ok_row("A1", "x")), None);
}

#[test]
fn failed_row_is_na_in_every_esg_field_even_when_scores_are_set() {
    let row = failed_row("A1", "http_404");
    assert!(row.values.overall.is_some() && row.values.analysis_date.is_some());
    let cells = format_row(&row);
    assert_eq!(cells[0], "A1");
    assert_eq!(cells[1], "Failed Fund");
    for (i, cell) in cells.iter().enumerate().take(9).skip(2) {
        assert_eq!(cell, NOT_AVAILABLE, "cell {i} ({})", HEADER[i]);
    }
    assert_eq!(cells[9], "Failed");
}

#[test]
fn partial_row_is_na_only_in_missing_cells() {
    let cells = format_row(&partial_row("A1"));
    assert_eq!(
        cells,
        [
            "A1",
            "Partial Fund",
            "72.35",
            "80.00",
            "N/A",
            "71.12",
            "N/A",
            "N/A",
            "2026-11-20",
            "Partial"
        ]
        .map(String::from)
    );
}

#[test]
fn successful_row_with_a_missing_field_is_shown_as_partial() {
    let row = Row {
        values: EsgValues {
            governance: None,
            ..ok_values()
        },
        ..ok_row("A1", "n")
    };
    let cells = format_row(&row);
    assert_eq!(cells[5], "N/A");
    assert_eq!(cells[9], "Partial");
    let error = format_error_row(&row).expect("errors line");
    assert_eq!(error[1], "Partial");
    assert_eq!(error[2], INCOMPLETE_SCORE_CODE);
}

#[test]
fn formula_prefixes_are_neutralised() {
    for prefix in ["=", "+", "-", "@"] {
        let name = format!("{prefix}SUM(A1:A9)");
        let cells = format_row(&ok_row("A1", &name));
        assert_eq!(cells[1], format!("'{name}"), "prefix {prefix:?}");
    }
    // neutralise itself knows tab and CR; in a file they are cleaned first: a leading CR is a
    // line break (LF, still neutralised), a leading tab a space (no longer a trigger).
    for prefix in ["\t", "\r", "\n"] {
        assert_eq!(neutralise(format!("{prefix}=1")), format!("'{prefix}=1"));
    }
    assert_eq!(format_row(&ok_row("A1", "\r=SUM(A1)"))[1], "'\n=SUM(A1)");
    assert_eq!(format_row(&ok_row("A1", "\r\n=SUM(A1)"))[1], "'\n=SUM(A1)");
    assert_eq!(format_row(&ok_row("A1", "\n=SUM(A1)"))[1], "'\n=SUM(A1)");
    assert_eq!(format_row(&ok_row("A1", "\t=SUM(A1)"))[1], " =SUM(A1)");
    assert_eq!(unneutralise("'\nx"), "\nx");
    for harmless in ["Acme = Good", "O'Brien Fund", "", " =1", "100% Green"] {
        let cells = format_row(&ok_row("A1", harmless));
        assert_eq!(cells[1], harmless);
    }
    let row = Row {
        error_message: Some("-1 returned".into()),
        ..failed_row("A1", "@code")
    };
    let error = format_error_row(&row).expect("errors line");
    assert_eq!(error[2], "'@code");
    assert_eq!(error[3], "'-1 returned");
}

#[test]
fn awkward_names_survive_a_round_trip_through_the_csv_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = [
        "Smith, Jones & Co",
        "The \"Best\" Fund",
        "Line one\nline two",
        "Windows\r\nbreak",
        "=cmd|' /C calc'!A0",
    ];
    let rows: Vec<Row> = names
        .iter()
        .enumerate()
        .map(|(i, name)| ok_row(&format!("A{i}"), name))
        .collect();
    let written = write_day(dir.path(), &rows);
    let records = read_records(&written.csv);
    assert_eq!(records.len(), names.len() + 1);
    assert_eq!(records[0], HEADER.map(String::from).to_vec());
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            records[i + 1][1],
            neutralise(clean_controls(name.to_string()))
        );
        assert_eq!(records[i + 1].len(), 10);
    }
    let bytes = fs::read(&written.csv).expect("read");
    assert!(!bytes.starts_with(&[0xEF, 0xBB, 0xBF]), "no BOM");
}

#[test]
fn clean_controls_keeps_text_and_line_breaks_and_replaces_the_rest() {
    let table = [
        ("Plain Fund", "Plain Fund"),
        ("Ünïcødé – Fund ✓", "Ünïcødé – Fund ✓"),
        ("Line one\nline two", "Line one\nline two"),
        ("Windows\r\nbreak", "Windows\nbreak"),
        ("Old Mac\rbreak", "Old Mac\nbreak"),
        ("Two\r\r\nbreaks", "Two\n\nbreaks"),
        ("Next\u{85}line", "Next\nline"),
        ("Tab\tbed", "Tab bed"),
        ("Nul\0Fund", "Nul\u{FFFD}Fund"),
        ("Esc\x1b[31mRed", "Esc\u{FFFD}[31mRed"),
        ("Del\x7fete", "Del\u{FFFD}ete"),
        ("Csi\u{9b}2J", "Csi\u{FFFD}2J"),
        (
            "Bell\x07 Vt\x0b Ff\x0c Bs\x08",
            "Bell\u{FFFD} Vt\u{FFFD} Ff\u{FFFD} Bs\u{FFFD}",
        ),
        // Not control characters: kept.
        ("Nbsp\u{a0}Line\u{2028}sep", "Nbsp\u{a0}Line\u{2028}sep"),
        ("", ""),
    ];
    for (input, expected) in table {
        assert_eq!(clean_controls(input.to_owned()), expected, "{input:?}");
    }
}

/// Every control character in a file's text: the record terminators (CR LF outside quotes) and
/// LFs inside quoted cells are the only ones allowed.
fn forbidden_controls(bytes: &[u8]) -> Vec<(usize, char)> {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let mut quoted = false;
    let mut found = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\r' if !quoted && chars.peek().map(|(_, n)| *n) == Some('\n') => {
                chars.next();
            }
            '\n' if quoted => {}
            c if c.is_control() => found.push((at, c)),
            _ => {}
        }
    }
    found
}

#[test]
fn control_characters_never_reach_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = [
        ("A0", "Nul\0Fund", "Nul\u{FFFD}Fund"),
        ("A1", "Esc\x1b[2JFund", "Esc\u{FFFD}[2JFund"),
        ("A2", "Del\x7fFund", "Del\u{FFFD}Fund"),
        ("A3", "Next\u{85}Line", "Next\nLine"),
        ("A4", "Crlf\r\nFund", "Crlf\nFund"),
        ("A5", "Lone\rCr", "Lone\nCr"),
        ("A6", "Tab\tFund", "Tab Fund"),
        ("A7", "\r=HYPERLINK(\"x\")", "'\n=HYPERLINK(\"x\")"),
        ("A8", "\0=1+1", "\u{FFFD}=1+1"),
    ];
    let mut rows: Vec<Row> = names.iter().map(|(id, name, _)| ok_row(id, name)).collect();
    rows.push(Row {
        error_message: Some("vendor said \0\x1b[0m\r\nno\tway".into()),
        ..failed_row("B0", "HTTP_422")
    });
    let written = write_day(dir.path(), &rows);
    for path in [&written.csv, &written.errors] {
        let bytes = fs::read(path).expect("read");
        assert_eq!(forbidden_controls(&bytes), [], "{}", path.display());
    }
    let records = read_records(&written.csv);
    for (i, (_, _, shown)) in names.iter().enumerate() {
        assert_eq!(records[i + 1][1], *shown, "row {i}");
    }
    let errors = read_records(&written.errors);
    assert_eq!(errors[1][3], "vendor said \u{FFFD}\u{FFFD}[0m\nno way");
}

#[test]
fn replace_rows_cleans_a_copied_row_that_holds_control_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write_day(dir.path(), &[ok_row("A", "Alpha"), ok_row("B", "Bravo")]);
    // A file written before control characters were cleaned: a NUL and an escape in A's name.
    let bytes = fs::read(&first.csv).expect("read");
    let legacy = String::from_utf8(bytes)
        .expect("utf-8")
        .replace("Alpha", "Al\0pha\x1b");
    fs::write(&first.csv, legacy.as_bytes()).expect("write");
    assert_eq!(forbidden_controls(legacy.as_bytes()).len(), 2);

    let replacements = BTreeMap::from([("B".to_string(), ok_row("B", "Bravo 2"))]);
    let result = replace_rows(dir.path(), date(), &replacements, false).expect("replace");
    let bytes = fs::read(&result.written.csv).expect("read");
    assert_eq!(forbidden_controls(&bytes), []);
    let records = read_records(&result.written.csv);
    assert_eq!(records[1][1], "Al\u{FFFD}pha\u{FFFD}");
    assert_eq!(records[1][2], "72.35", "the other cells as they were");
    assert_eq!(records[2][1], "Bravo 2");
}

#[test]
fn out_of_order_and_duplicate_rows_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer =
        OutputWriter::create(dir.path(), date(), &Protection::Plaintext).expect("create");
    writer.write(&ok_row("B", "b")).expect("first row");
    match writer.write(&ok_row("A", "a")) {
        Err(OutputError::OutOfOrder { previous, id }) => {
            assert_eq!((previous.as_str(), id.as_str()), ("B", "A"));
        }
        other => panic!("expected OutOfOrder, got {other:?}"),
    }
    // Poisoned from now on.
    assert!(matches!(
        writer.write(&ok_row("C", "c")),
        Err(OutputError::Poisoned { .. })
    ));
    assert!(matches!(writer.finish(), Err(OutputError::Poisoned { .. })));

    let mut writer =
        OutputWriter::create(dir.path(), date(), &Protection::Plaintext).expect("create");
    writer.write(&ok_row("B", "b")).expect("first row");
    let err = writer.write(&ok_row("B", "again")).expect_err("duplicate");
    assert!(matches!(err, OutputError::Duplicate { .. }));
    let message = err.to_string();
    assert!(message.contains("account B"), "{message}");

    // Byte order: "B" < "a" < "b".
    assert!(check_order(Some("B"), "a").is_ok());
    assert!(check_order(Some("a10"), "a9").is_ok());
    assert!(check_order(Some("a9"), "a10").is_err());
    assert!(matches!(
        check_order(None, ""),
        Err(OutputError::EmptyAccountId { .. })
    ));
}

#[test]
fn a_failed_write_leaves_the_previous_file_untouched_and_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write_day(dir.path(), &[ok_row("A", "a"), failed_row("B", "deadline")]);
    let before_csv = fs::read(&first.csv).expect("read");
    let before_errors = fs::read(&first.errors).expect("read");

    {
        let mut writer =
            OutputWriter::create(dir.path(), date(), &Protection::Plaintext).expect("create");
        writer.write(&ok_row("A", "changed")).expect("row A");
        writer.write(&ok_row("C", "c")).expect("row C");
        writer
            .write(&ok_row("B", "late"))
            .expect_err("out of order");
        assert_eq!(
            dir_entries(dir.path()).len(),
            4,
            "two temporary files while writing"
        );
    }
    assert_eq!(fs::read(&first.csv).expect("read"), before_csv);
    assert_eq!(fs::read(&first.errors).expect("read"), before_errors);
    assert_eq!(
        dir_entries(dir.path()),
        [
            "FirmESGRatings_20261123.csv",
            "FirmESGRatings_20261123_errors.csv"
        ]
    );
}

#[test]
fn a_failed_rename_names_the_path_and_removes_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The final name is taken by a non-empty directory: the rename fails.
    let blocker = dir.path().join("FirmESGRatings_20261123.csv");
    fs::create_dir(&blocker).expect("mkdir");
    fs::write(blocker.join("keep"), b"x").expect("write");
    let mut writer =
        OutputWriter::create(dir.path(), date(), &Protection::Plaintext).expect("create");
    writer.write(&ok_row("A", "a")).expect("row");
    let err = writer.finish().expect_err("rename must fail");
    assert!(
        err.to_string().contains("FirmESGRatings_20261123.csv"),
        "{err}"
    );
    assert!(err.is_transient());
    let entries = dir_entries(dir.path());
    assert!(
        entries.iter().all(|n| !n.contains(".tmp-")),
        "temporary files left: {entries:?}"
    );
    assert!(blocker.join("keep").exists());
}

#[cfg(unix)]
#[test]
fn files_are_0640_and_a_created_directory_0750() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out").join("daily");
    let written = write_day(&dir, &[ok_row("A", "a")]);
    let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&written.csv), 0o640);
    assert_eq!(mode(&written.errors), 0o640);
    assert_eq!(mode(&dir), 0o750);
}

#[test]
fn errors_file_holds_every_row_not_successful() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut partial = partial_row("B");
    partial.last_attempt = None;
    let written = write_day(
        dir.path(),
        &[
            ok_row("A", "a"),
            partial,
            failed_row("C", "http_404"),
            ok_row("D", "d"),
        ],
    );
    let records = read_records(&written.errors);
    assert_eq!(
        records,
        vec![
            ERRORS_HEADER.map(String::from).to_vec(),
            ["B", "Partial", "partial_response", "", "1", ""]
                .map(String::from)
                .to_vec(),
            [
                "C",
                "Failed",
                "http_404",
                "http_404 happened",
                "3",
                "2026-11-23T11:02:03Z"
            ]
            .map(String::from)
            .to_vec(),
        ]
    );
    let stats = &written.stats;
    assert_eq!(
        (stats.rows, stats.successful, stats.partial, stats.failed),
        (4, 2, 1, 1)
    );
    assert_eq!(stats.failed_accounts, vec!["C".to_string()]);
    assert_eq!(stats.error_codes.get("http_404"), Some(&1));
    assert_eq!(stats.error_codes.get("partial_response"), Some(&1));
    assert_eq!(stats.n_overall, 3, "the failed row's score is not counted");
}

#[test]
fn replace_rows_replaces_named_rows_and_copies_the_rest_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = vec![
        ok_row("A", "=Alpha, \"quoted\"\nFund"),
        failed_row("B", "deadline"),
        partial_row("C"),
        ok_row("D", "Delta"),
        failed_row("E", "http_422"),
    ];
    let first = write_day(dir.path(), &rows);
    let old_csv = raw_lines(&fs::read(&first.csv).expect("read"));
    let old_errors = raw_lines(&fs::read(&first.errors).expect("read"));
    assert_eq!(old_csv.len(), 6);
    assert_eq!(old_errors.len(), 4);

    let mut replacements = BTreeMap::new();
    // B: Failed -> Successful; D: Successful -> Failed; Z: not in the file.
    replacements.insert("B".to_string(), ok_row("B", "Bravo"));
    replacements.insert("D".to_string(), failed_row("D", "http_500"));
    replacements.insert("Z".to_string(), ok_row("Z", "Zulu"));
    let result = replace_rows(dir.path(), date(), &replacements, false).expect("replace");
    assert_eq!(result.replaced, vec!["B".to_string(), "D".to_string()]);
    assert_eq!(result.missing, vec!["Z".to_string()]);

    let new_csv = raw_lines(&fs::read(&result.written.csv).expect("read"));
    assert_eq!(new_csv.len(), 6, "no row added, none lost");
    for i in [0, 1, 3, 5] {
        assert_eq!(new_csv[i], old_csv[i], "copied line {i} byte-identical");
    }
    assert_eq!(
        new_csv[2],
        encode_record(&format_row(&ok_row("B", "Bravo"))).expect("encode")
    );
    assert_eq!(
        new_csv[4],
        encode_record(&format_row(&failed_row("D", "http_500"))).expect("encode")
    );
    let ids: Vec<String> = read_records(&result.written.csv)
        .into_iter()
        .skip(1)
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(ids, ["A", "B", "C", "D", "E"]);

    // Errors file: B's old line dropped, C and E copied, D's new line in id order.
    let new_errors = raw_lines(&fs::read(&result.written.errors).expect("read"));
    assert_eq!(new_errors.len(), 4);
    assert_eq!(new_errors[0], old_errors[0]);
    assert_eq!(new_errors[1], old_errors[2], "C copied");
    assert_eq!(
        new_errors[2],
        encode_record(&format_error_row(&failed_row("D", "http_500")).expect("line"))
            .expect("encode")
    );
    assert_eq!(new_errors[3], old_errors[3], "E copied");

    let stats = &result.written.stats;
    assert_eq!(
        (stats.rows, stats.successful, stats.partial, stats.failed),
        (5, 2, 1, 2)
    );
    assert_eq!(
        stats.failed_accounts,
        vec!["D".to_string(), "E".to_string()]
    );
    assert_eq!(
        stats.error_codes,
        BTreeMap::from([
            ("http_422".to_string(), 1),
            ("http_500".to_string(), 1),
            ("partial_response".to_string(), 1),
        ])
    );
    // Copied A and C count their 2-dp cells (72.35), replaced B its exact value (72.345).
    assert_eq!(stats.n_overall, 3);
    assert_eq!(stats.sum_overall, dec("217.045"));
    assert_eq!(stats.focus_environmental, 2);
    assert_eq!(
        dir_entries(dir.path()),
        [
            "FirmESGRatings_20261123.csv",
            "FirmESGRatings_20261123_errors.csv"
        ]
    );
}

#[test]
fn replace_rows_refuses_a_tampered_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write_day(dir.path(), &[ok_row("A", "a"), ok_row("B", "b")]);
    let mut bytes = fs::read(&first.csv).expect("read");
    bytes.extend_from_slice(b"A,again,1,1,1,1,Social,1,2026-11-20,Successful\r\n");
    fs::write(&first.csv, &bytes).expect("write");
    let replacements = BTreeMap::from([("A".to_string(), ok_row("A", "new"))]);
    let err = replace_rows(dir.path(), date(), &replacements, false).expect_err("unsorted file");
    assert!(
        matches!(err, OutputError::Malformed { record: 4, .. }),
        "{err}"
    );
    assert_eq!(fs::read(&first.csv).expect("read"), bytes);
    assert_eq!(dir_entries(dir.path()).len(), 2, "no temporary file left");

    let mismatched = BTreeMap::from([("A".to_string(), ok_row("B", "b"))]);
    assert!(matches!(
        replace_rows(dir.path(), date(), &mismatched, false),
        Err(OutputError::ReplacementIdMismatch { .. })
    ));
    let other_day = NaiveDate::from_ymd_opt(2026, 11, 24).expect("date");
    let err = replace_rows(dir.path(), other_day, &replacements, false).expect_err("no file");
    assert!(
        err.to_string().contains("FirmESGRatings_20261124.csv"),
        "{err}"
    );
}

#[test]
fn raw_record_reader_rejects_truncated_and_oversized_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.csv");
    fs::write(&path, b"a,\"open quote\r\nstill open\r\n").expect("write");
    let mut records = RawRecords::new(File::open(&path).expect("open"), &path);
    assert!(matches!(
        records.next_raw(),
        Err(OutputError::Malformed { .. })
    ));

    let mut big = vec![b'x'; MAX_RECORD_BYTES + 10];
    big.extend_from_slice(b"\r\n");
    fs::write(&path, &big).expect("write");
    let mut records = RawRecords::new(File::open(&path).expect("open"), &path);
    let err = records.next_raw().expect_err("too long");
    assert!(err.to_string().contains("longer than"), "{err}");
}

fn decrypt_file(path: &Path, identity: &age::x25519::Identity) -> Vec<u8> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decryptor = age::Decryptor::new(io::BufReader::new(file)).expect("an age file");
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .expect("a recipient decrypts");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("authentic content");
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn encrypted_files_hold_exactly_the_plaintext_files_bytes_and_nothing_plain_touches_the_disk() {
    let identity = age::x25519::Identity::generate();
    let protection = Protection::age(&[identity.to_public().to_string()]).expect("recipient");
    // Enough rows that part of the files reaches the disk before they are finished.
    let mut rows = vec![partial_row("B-2"), failed_row("C-3", "HTTP_404")];
    rows.extend((0..3000).map(|i| ok_row(&format!("D-{i:05}"), "Alpha Fund")));
    let plain = tempfile::tempdir().expect("tempdir");
    let written = write_day(plain.path(), &rows);

    let sealed = tempfile::tempdir().expect("tempdir");
    let mut writer = OutputWriter::create(sealed.path(), date(), &protection).expect("create");
    for row in &rows {
        writer.write(row).expect("write");
    }
    // While the files are being written, the directory holds temporary ciphertext only (the
    // small errors file may still be all in the buffer).
    let mut on_disk = 0;
    for name in names_in(sealed.path()) {
        assert!(name.starts_with('.') && name.contains(".tmp-"), "{name}");
        let bytes = fs::read(sealed.path().join(&name)).expect("read");
        on_disk += bytes.len();
        assert!(
            bytes.is_empty() || bytes.starts_with(b"age-encryption.org/v1\n"),
            "{name} starts as an age file"
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("Account ID") && !text.contains("Alpha Fund"),
            "{name}"
        );
    }
    assert!(
        on_disk > 64 * 1024,
        "part of the ratings reached the disk: {on_disk}"
    );
    let sealed_written = writer.finish().expect("finish");
    assert_eq!(
        names_in(sealed.path()),
        [
            "FirmESGRatings_20261123.csv.age",
            "FirmESGRatings_20261123_errors.csv.age"
        ]
    );
    assert_eq!(sealed_written.stats, written.stats);
    assert_eq!(
        decrypt_file(&sealed_written.csv, &identity),
        fs::read(&written.csv).expect("plain ratings")
    );
    assert_eq!(
        decrypt_file(&sealed_written.errors, &identity),
        fs::read(&written.errors).expect("plain errors")
    );

    // A writer dropped before it finishes leaves nothing, and the files before stay as they were.
    let before = fs::read(&sealed_written.csv).expect("read");
    let mut writer = OutputWriter::create(sealed.path(), date(), &protection).expect("create");
    writer.write(&ok_row("A-1", "Other")).expect("write");
    drop(writer);
    assert_eq!(names_in(sealed.path()).len(), 2);
    assert_eq!(fs::read(&sealed_written.csv).expect("read"), before);
}

#[test]
fn an_output_directory_open_to_others_is_tightened_and_a_shared_one_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o7777;
    let chmod =
        |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");

    let open = root.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    chmod(&open, 0o777);
    let written = write_day(&open, &[ok_row("A", "a")]);
    assert_eq!(mode(&open), 0o750, "tightened");
    assert_eq!(mode(&written.csv), 0o640);

    let private = root.path().join("private");
    fs::create_dir(&private).expect("mkdir");
    chmod(&private, 0o700);
    write_day(&private, &[ok_row("A", "a")]);
    assert_eq!(mode(&private), 0o700, "a closer directory is left as it is");

    let grouped = root.path().join("grouped");
    fs::create_dir(&grouped).expect("mkdir");
    chmod(&grouped, 0o2775);
    write_day(&grouped, &[ok_row("A", "a")]);
    assert_eq!(
        mode(&grouped),
        0o2750,
        "group write gone, set-group-ID kept"
    );

    let shared = root.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o1777);
    let err = OutputWriter::create(&shared, date(), &Protection::Plaintext).expect_err("shared");
    assert!(err.to_string().contains("shared directory"), "{err}");
    assert_eq!(
        fs::read_dir(&shared).expect("list").count(),
        0,
        "nothing written"
    );
}

#[test]
fn erase_accounts_drops_the_rows_of_the_ids_and_copies_the_rest_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = [
        ok_row("A-1", "Alpha Fund"),
        failed_row("B-2", "HTTP_404"),
        ok_row("C-3", "Erika Mustermann Trust"),
        partial_row("D-4"),
    ];
    let written = write_day(dir.path(), &rows);
    let before_csv = fs::read(&written.csv).expect("read");
    let before_errors = fs::read(&written.errors).expect("read");
    let ids: HashSet<String> = ["C-3".to_owned(), "B-2".to_owned()].into();
    let none: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();

    assert_eq!(
        erase_accounts(&written.csv, &ids, &none, &Protection::Plaintext).expect("ratings"),
        2
    );
    assert_eq!(
        erase_accounts(&written.errors, &ids, &none, &Protection::Plaintext).expect("errors"),
        1
    );
    let after = fs::read(&written.csv).expect("read");
    let kept: Vec<Vec<u8>> = raw_lines(&before_csv)
        .into_iter()
        .filter(|l| !l.starts_with(b"C-3,") && !l.starts_with(b"B-2,"))
        .collect();
    assert_eq!(raw_lines(&after), kept, "the other rows, byte for byte");
    assert!(!String::from_utf8_lossy(&after).contains("Erika"));
    let errors = fs::read(&written.errors).expect("read");
    assert_eq!(
        raw_lines(&errors).len(),
        raw_lines(&before_errors).len() - 1
    );
    assert_eq!(dir_entries(dir.path()).len(), 2, "no temporary file left");

    // Erasing again finds nothing and leaves the file alone.
    assert_eq!(
        erase_accounts(&written.csv, &ids, &none, &Protection::Plaintext).expect("again"),
        0
    );
    assert_eq!(fs::read(&written.csv).expect("read"), after);

    // A summary loses the ids from its lists, and keeps its counts.
    let summary = dir.path().join("FirmESGRatings_20261123_summary.json");
    fs::write(
        &summary,
        r#"{"accounts": 4, "failed_accounts": ["B-2", "D-4"], "reruns": [{"ids": ["B-2"]}]}"#,
    )
    .expect("write");
    assert_eq!(
        erase_accounts(&summary, &ids, &none, &Protection::Plaintext).expect("summary"),
        2
    );
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(&summary).expect("read")).expect("json");
    assert_eq!(json["failed_accounts"], serde_json::json!(["D-4"]));
    assert_eq!(json["reruns"][0]["ids"], serde_json::json!([]));
    assert_eq!(json["accounts"], 4);
}

#[test]
fn erase_accounts_rewrites_an_encrypted_file_encrypted_and_needs_an_identity() {
    let identity = age::x25519::Identity::generate();
    let protection = Protection::age(&[identity.to_public().to_string()]).expect("recipient");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = OutputWriter::create(dir.path(), date(), &protection).expect("create");
    for row in [
        ok_row("A-1", "Alpha Fund"),
        ok_row("C-3", "Erika Mustermann Trust"),
    ] {
        writer.write(&row).expect("write");
    }
    let written = writer.finish().expect("finish");
    let ids: HashSet<String> = ["C-3".to_owned()].into();
    let before = fs::read(&written.csv).expect("read");

    let none: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    let err = erase_accounts(&written.csv, &ids, &none, &protection).expect_err("no identity");
    assert!(err.to_string().contains("--identity"), "{err}");
    let other: Vec<Box<dyn age::Identity + Send + Sync>> =
        vec![Box::new(age::x25519::Identity::generate())];
    let err = erase_accounts(&written.csv, &ids, &other, &protection).expect_err("wrong key");
    assert!(err.to_string().contains("cannot decrypt"), "{err}");
    let err = erase_accounts(&written.csv, &ids, &other, &Protection::Plaintext)
        .expect_err("no recipients");
    assert!(err.to_string().contains("[encryption]"), "{err}");
    assert_eq!(
        fs::read(&written.csv).expect("read"),
        before,
        "left as it was"
    );

    let mine: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(identity.clone())];
    assert_eq!(
        erase_accounts(&written.csv, &ids, &mine, &protection).expect("erase"),
        1
    );
    let after = fs::read(&written.csv).expect("read");
    assert!(
        after.starts_with(b"age-encryption.org/v1\n"),
        "still encrypted"
    );
    let plain = String::from_utf8(decrypt_file(&written.csv, &identity)).expect("utf-8");
    assert!(
        plain.contains("A-1,Alpha Fund") && !plain.contains("Erika"),
        "{plain}"
    );
    assert_eq!(
        names_in(dir.path()),
        [
            "FirmESGRatings_20261123.csv.age",
            "FirmESGRatings_20261123_errors.csv.age"
        ]
    );
}

//! The oracle: what a day's ratings file must be, worked out from the simulator's truth and the
//! faults it reports it injected, never from the job's own state.
//!
//! The rules are the user guide's (docs/user-guide.md) and DESIGN section 5, written again here
//! on their own:
//!
//! - one row per ACTIVE account of the account system, sorted by id, header exactly as given;
//! - an account is scored when it is new to the oracle, its version changed, its last row was
//!   not `Successful`, its last Analysis Date is older than `refresh_after` (7 days) before the
//!   business date, or the run is `--full`; a scored account's row is the vendor's rating as of
//!   the business date (`Partial` with `N/A` in exactly the missing cells, `Failed` with `N/A`
//!   in every ESG cell and the Analysis Date when the vendor refuses the account or answers
//!   outside its contract);
//! - every other account keeps the row it had, with its own Analysis Date;
//! - scores have two decimals, rounded half away from zero from the exact decimal;
//! - a name keeps its characters except: CR LF, a lone CR and NEL become LF, a tab a space,
//!   any other control character U+FFFD; a cell starting with `=`, `+`, `-`, `@` or a line
//!   break gets a leading `'`.
//!
//! A scored account may also be `Failed` when the faults made it so: the vendor's answers to
//! it ended with at least `max_attempts` transient failures or stalls in a row
//! ([`esg_simulator::Answers::failure_streak`]). Nothing else excuses a row.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::NaiveDate;
use esg_simulator::{Answers, Rating, Status, Truth};
use rust_decimal::{Decimal, RoundingStrategy};

/// The header of the ratings file, exactly.
pub const HEADER: [&str; 10] = [
    "Account ID",
    "Account Name",
    "Overall ESG Score",
    "Environmental Score",
    "Social Score",
    "Governance Score",
    "Primary ESG Focus",
    "Primary Focus Score",
    "Analysis Date",
    "Processing Status",
];

/// The job's `[esg_api] max_attempts` the soak configures.
pub const MAX_ATTEMPTS: u32 = 3;

/// The job's `[producer] refresh_after`, in days.
pub const REFRESH_AFTER_DAYS: i64 = 7;

/// One row of the ratings file, as its ten cells.
pub type Row = Vec<String>;

/// What the oracle remembers of an account's last row.
#[derive(Debug, Clone)]
struct Last {
    version: u64,
    row: Row,
}

/// The expectation of one account on one day.
#[derive(Debug, Clone)]
pub struct Expected {
    pub row: Row,
    /// The day scores the account (else it carries its last row forward).
    pub scored: bool,
    version: u64,
}

/// The expectation of a day.
#[derive(Debug, Clone)]
pub struct Day {
    pub business_date: NaiveDate,
    /// By account id, in the file's order.
    pub accounts: BTreeMap<String, Expected>,
}

impl Day {
    /// The accounts the day scores.
    pub fn to_score(&self) -> impl Iterator<Item = &str> {
        self.accounts
            .iter()
            .filter(|(_, e)| e.scored)
            .map(|(id, _)| id.as_str())
    }
}

/// Why a delivered file is not the file it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrong(pub Vec<String>);

/// The oracle's memory: each account's last row, from the files it judged right.
#[derive(Debug, Default)]
pub struct Oracle {
    last: BTreeMap<String, Last>,
}

impl Oracle {
    /// What the file of `business_date` must be, given the truth before the run.
    pub fn expect(&self, business_date: NaiveDate, truth: &Truth, full: bool) -> Day {
        let stale_before = business_date - chrono::Duration::days(REFRESH_AFTER_DAYS);
        let accounts = truth
            .accounts
            .iter()
            .filter(|a| a.status == Status::Active)
            .map(|a| {
                let name = cell_text(&a.account_name);
                let last = self.last.get(&a.account_id);
                let carried = last.filter(|l| {
                    !full
                        && l.version == a.version
                        && l.row[9] == "Successful"
                        && NaiveDate::from_str(&l.row[8]).is_ok_and(|d| d >= stale_before)
                });
                let expected = match carried {
                    Some(l) => Expected {
                        row: l.row.clone(),
                        scored: false,
                        version: a.version,
                    },
                    None => Expected {
                        row: rated_row(&a.account_id, &name, &a.rating),
                        scored: true,
                        version: a.version,
                    },
                };
                (a.account_id.clone(), expected)
            })
            .collect();
        Day {
            business_date,
            accounts,
        }
    }

    /// Judges the bytes of a delivered ratings file against the day's expectation and what the
    /// vendor answered (`answers`, by account id). A file judged right becomes the oracle's
    /// memory of every account's last row.
    pub fn judge(
        &mut self,
        day: &Day,
        answers: &BTreeMap<String, Answers>,
        bytes: &[u8],
    ) -> Result<(), Wrong> {
        let mut problems = format_problems(bytes);
        let rows = match parse(bytes) {
            Ok(rows) => rows,
            Err(e) => {
                problems.push(e);
                return Err(Wrong(problems));
            }
        };
        let (header, rows) = rows
            .split_first()
            .map_or((None, &[][..]), |(h, r)| (Some(h), r));
        if header.map(|h| h.as_slice()) != Some(&HEADER.map(str::to_owned)[..]) {
            problems.push(format!("header is {header:?}"));
        }
        let mut got = rows.iter();
        for (id, expected) in &day.accounts {
            let Some(row) = got.next() else {
                problems.push(format!("{id}: no row (the file ends early)"));
                break;
            };
            if row == &expected.row {
                continue;
            }
            let excused = expected.scored
                && *row == failed_row(id, &expected.row[1])
                && answers
                    .get(id)
                    .is_some_and(|a| a.failure_streak >= MAX_ATTEMPTS);
            if !excused {
                problems.push(format!(
                    "{id}: got {row:?}, expected {:?}{}",
                    expected.row,
                    if expected.scored {
                        format!(" (scored; vendor answers {:?})", answers.get(id))
                    } else {
                        " (carried forward)".to_owned()
                    }
                ));
            }
        }
        for extra in got {
            problems.push(format!("row of no active account: {extra:?}"));
        }
        if rows.len() != day.accounts.len() {
            problems.push(format!(
                "{} rows for {} active accounts",
                rows.len(),
                day.accounts.len()
            ));
        }
        if !problems.is_empty() {
            return Err(Wrong(problems));
        }
        self.last = day
            .accounts
            .iter()
            .zip(rows)
            .map(|((id, e), row)| {
                (
                    id.clone(),
                    Last {
                        version: e.version,
                        row: row.clone(),
                    },
                )
            })
            .collect();
        Ok(())
    }
}

/// Every record of a CSV file (RFC 4180).
fn parse(bytes: &[u8]) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    reader
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_owned).collect())
                .map_err(|e| format!("not RFC 4180 CSV: {e}"))
        })
        .collect()
}

/// What is wrong with the bytes themselves: a byte-order mark, text that is not UTF-8, a
/// record not ended by CRLF, a carriage return inside a cell, a control character.
fn format_problems(bytes: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        problems.push("starts with a byte-order mark".to_owned());
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        problems.push("not UTF-8".to_owned());
        return problems;
    };
    if !text.ends_with("\r\n") {
        problems.push("the last record does not end with CRLF".to_owned());
    }
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\r' if !quoted && chars.peek() == Some(&'\n') => {
                chars.next();
            }
            '\r' => problems.push("a carriage return that does not end a record".to_owned()),
            '\n' if quoted => {}
            '\n' => problems.push("a record ended by a bare LF".to_owned()),
            c if c.is_control() => problems.push(format!("control character {c:?}")),
            _ => {}
        }
        if problems.len() > 10 {
            break;
        }
    }
    problems
}

/// A name as the file must show it (user guide, "Account names").
pub fn cell_text(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{85}' | '\n' => out.push('\n'),
            '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    if out.starts_with(['=', '+', '-', '@', '\n']) {
        out.insert(0, '\'');
    }
    out
}

/// A score with exactly two decimals, rounded half away from zero from its exact text.
pub fn two_decimals(text: &str) -> String {
    match Decimal::from_str(text) {
        Ok(d) => {
            let mut r = d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
            r.rescale(2);
            r.to_string()
        }
        Err(_) => format!("<not a decimal: {text}>"),
    }
}

fn na(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "N/A".to_owned(), two_decimals)
}

fn pillar(name: &str) -> String {
    match name {
        "ENVIRONMENTAL" => "Environmental".to_owned(),
        "SOCIAL" => "Social".to_owned(),
        "GOVERNANCE" => "Governance".to_owned(),
        other => format!("<unknown pillar {other}>"),
    }
}

/// The row of a `Failed` account.
pub fn failed_row(id: &str, name: &str) -> Row {
    let mut row = vec![id.to_owned(), name.to_owned()];
    row.extend(std::iter::repeat_n("N/A".to_owned(), 7));
    row.push("Failed".to_owned());
    row
}

/// The row of an account scored as the vendor rates it.
fn rated_row(id: &str, name: &str, rating: &Rating) -> Row {
    let Rating::Analysis {
        analysis_date,
        overall,
        environmental,
        social,
        governance,
        primary_focus,
    } = rating
    else {
        return failed_row(id, name);
    };
    let complete = [overall, environmental, social, governance]
        .iter()
        .all(|v| v.is_some())
        && primary_focus.is_some();
    let (focus, focus_score) = match primary_focus {
        Some((p, s)) => (pillar(p), two_decimals(s)),
        None => ("N/A".to_owned(), "N/A".to_owned()),
    };
    vec![
        id.to_owned(),
        name.to_owned(),
        na(overall),
        na(environmental),
        na(social),
        na(governance),
        focus,
        focus_score,
        analysis_date.format("%Y-%m-%d").to_string(),
        if complete { "Successful" } else { "Partial" }.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use esg_simulator::AccountTruth;

    #[test]
    fn scores_round_half_away_from_zero_from_the_exact_decimal() {
        for (text, shown) in [
            ("72.345", "72.35"),
            ("72.3449", "72.34"),
            ("99.995", "100.00"),
            ("70", "70.00"),
            ("0", "0.00"),
            ("2.675", "2.68"),
            ("10.005", "10.01"),
            ("0.0005", "0.00"),
        ] {
            assert_eq!(two_decimals(text), shown, "{text}");
        }
    }

    #[test]
    fn names_are_shown_as_the_user_guide_says() {
        for (name, shown) in [
            ("Plain Fund", "Plain Fund"),
            ("a\r\nb\rc\u{85}d\ne", "a\nb\nc\nd\ne"),
            ("tab\there", "tab here"),
            ("\tTab lead", " Tab lead"),
            (
                "nul\u{0}esc\u{1b}[0m del\u{7f} c1\u{9b}",
                "nul\u{FFFD}esc\u{FFFD}[0m del\u{FFFD} c1\u{FFFD}",
            ),
            ("=SUM(A1)", "'=SUM(A1)"),
            ("+1", "'+1"),
            ("-x", "'-x"),
            ("@x", "'@x"),
            ("\r\nx", "'\nx"),
            ("\u{85}x", "'\nx"),
            ("\u{1F600} \u{202E}", "\u{1F600} \u{202E}"),
            ("", ""),
        ] {
            assert_eq!(cell_text(name), shown, "{name:?}");
        }
    }

    fn truth(accounts: Vec<AccountTruth>) -> Truth {
        Truth {
            rerate_epoch: 0,
            accounts,
        }
    }

    fn account(id: &str, version: u64, overall: &str) -> AccountTruth {
        AccountTruth {
            account_id: id.to_owned(),
            account_name: format!("{id} Fund"),
            status: Status::Active,
            version,
            holdings_version: version,
            rating: Rating::Analysis {
                analysis_date: "2027-03-15".parse().expect("date"),
                overall: Some(overall.to_owned()),
                environmental: Some("1".into()),
                social: Some("2".into()),
                governance: Some("3.005".into()),
                primary_focus: Some(("GOVERNANCE".into(), "3.005".into())),
            },
        }
    }

    fn file(rows: &[Row]) -> Vec<u8> {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        w.write_record(HEADER).expect("header");
        for r in rows {
            w.write_record(r).expect("row");
        }
        w.into_inner().expect("bytes")
    }

    #[test]
    fn a_right_file_passes_then_unchanged_accounts_are_carried_forward() {
        let mut oracle = Oracle::default();
        let d1: NaiveDate = "2027-03-15".parse().expect("date");
        let day = oracle.expect(d1, &truth(vec![account("A1", 1, "50.125")]), false);
        let row = day.accounts["A1"].row.clone();
        assert_eq!(
            row,
            [
                "A1",
                "A1 Fund",
                "50.13",
                "1.00",
                "2.00",
                "3.01",
                "Governance",
                "3.01",
                "2027-03-15",
                "Successful"
            ]
        );
        oracle
            .judge(&day, &BTreeMap::new(), &file(std::slice::from_ref(&row)))
            .expect("right");
        // The next day the vendor would say otherwise, but the account did not change.
        let d2 = d1.succ_opt().expect("date");
        let day2 = oracle.expect(d2, &truth(vec![account("A1", 1, "60")]), false);
        assert!(!day2.accounts["A1"].scored);
        assert_eq!(day2.accounts["A1"].row, row);
        // A changed version is scored again.
        let day3 = oracle.expect(d2, &truth(vec![account("A1", 2, "60")]), false);
        assert!(day3.accounts["A1"].scored);
        assert_eq!(day3.accounts["A1"].row[2], "60.00");
        // Eight days later it is stale.
        let d9 = d1 + chrono::Duration::days(8);
        assert!(
            oracle
                .expect(d9, &truth(vec![account("A1", 1, "60")]), false)
                .accounts["A1"]
                .scored
        );
        let d8 = d1 + chrono::Duration::days(7);
        assert!(
            !oracle
                .expect(d8, &truth(vec![account("A1", 1, "60")]), false)
                .accounts["A1"]
                .scored
        );
    }

    #[test]
    fn a_failed_row_passes_only_when_the_vendor_failed_it_often_enough() {
        let mut oracle = Oracle::default();
        let d1: NaiveDate = "2027-03-15".parse().expect("date");
        let day = oracle.expect(d1, &truth(vec![account("A1", 1, "50")]), false);
        let failed = failed_row("A1", "A1 Fund");
        let mut answers = BTreeMap::new();
        answers.insert(
            "A1".to_owned(),
            Answers {
                transient: 2,
                failure_streak: 2,
                ..Answers::default()
            },
        );
        let wrong = oracle
            .judge(&day, &answers, &file(std::slice::from_ref(&failed)))
            .expect_err("two failures do not excuse it");
        assert!(wrong.0[0].contains("A1"), "{wrong:?}");
        answers.get_mut("A1").expect("A1").failure_streak = 3;
        oracle
            .judge(&day, &answers, &file(&[failed]))
            .expect("three in a row do");
    }

    #[test]
    fn missing_extra_and_badly_written_rows_are_wrong() {
        let mut oracle = Oracle::default();
        let d1: NaiveDate = "2027-03-15".parse().expect("date");
        let t = truth(vec![account("A1", 1, "50"), account("A2", 1, "50")]);
        let day = oracle.expect(d1, &t, false);
        let rows: Vec<Row> = day.accounts.values().map(|e| e.row.clone()).collect();
        assert!(oracle
            .judge(&day, &BTreeMap::new(), &file(&rows[..1]))
            .is_err());
        let mut three = rows.clone();
        three.push(rows[0].clone());
        assert!(oracle.judge(&day, &BTreeMap::new(), &file(&three)).is_err());
        let lf = String::from_utf8(file(&rows))
            .expect("utf8")
            .replace("\r\n", "\n");
        assert!(oracle.judge(&day, &BTreeMap::new(), lf.as_bytes()).is_err());
        oracle
            .judge(&day, &BTreeMap::new(), &file(&rows))
            .expect("right");
    }
}

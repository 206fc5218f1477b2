//! What the account listing emits, position by position, with duplicates and malformed records.
//!
//! The listing walks account positions `1..=total` in id order. Position `p` emits, in order:
//! the account `p` itself (if it matches the filter), the second copy of any duplicated account
//! whose copy lands on `p`, and possibly one malformed record. Everything is computed from the
//! seed and the position, so a page can be produced from a cursor `(position, offset within the
//! position)` alone, without remembering anything per listing.
//!
//! A duplicated account `k` appears at its own position and again `D` positions later (wrapping
//! to the start), where `D` is a quarter, a half or three quarters of the listing's span, so the
//! two copies usually sit on different pages. One copy carries the current version, the other
//! the previous one, in either order.
//!
//! Malformed records come in two families, each kind drawn at its own rate from the seed and
//! the position: records that break a rule of the contract but are valid JSON
//! (`malformed_record_rate`, `wrong_type_record_rate`), and records no JSON decoder turns into
//! text, whose name holds bytes that are not UTF-8 (`invalid_utf8_record_rate`) or a lone
//! surrogate escape (`lone_surrogate_record_rate`). The second family cannot be a
//! `serde_json::Value`, so records are written as bytes ([`write_record`]).

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::accounts::{account_id, base_instant, AccountState, Registry, Status};
use crate::hash::{mix, salt, unit};
use crate::names::{account_name, overlong_name};

/// Which accounts the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Filter {
    pub status: Option<Status>,
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn matches(&self, status: Status, updated_at: DateTime<Utc>) -> bool {
        self.status.is_none_or(|s| s == status) && self.since.is_none_or(|t| updated_at >= t)
    }

    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.since.is_none()
    }
}

/// Listing fault settings, copied from the configuration for one page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListingFaults {
    pub seed: u64,
    pub malformed_rate: f64,
    pub duplicate_rate: f64,
    pub invalid_utf8_rate: f64,
    pub lone_surrogate_rate: f64,
    pub wrong_type_rate: f64,
    /// Share of accounts the listing leaves out (a listing that collapsed).
    pub hidden_share: f64,
}

/// Whether a collapsed listing (`listing_hidden_share`) leaves account `index` out.
pub(crate) fn hidden(f: &ListingFaults, index: u64) -> bool {
    f.hidden_share > 0.0 && unit(mix(f.seed, &[salt("hidden"), index])) < f.hidden_share
}

/// How a malformed record breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// One required field is left out (index into the five required fields).
    MissingField(u8),
    /// The id does not match the id pattern.
    BadId(u8),
    /// `version` is 0 (the minimum is 1).
    VersionZero,
    /// The name is longer than 200 characters.
    LongName,
    /// The name holds bytes that are not UTF-8 (a Latin-1 `é`).
    NameNotUtf8,
    /// The name holds a lone surrogate escape (`\ud800`).
    LoneSurrogate,
    /// One field has the wrong JSON type (index into [`WRONG_TYPES`]).
    WrongType(u8),
}

/// The wrong-type records: which field, and the JSON it holds instead of its contract type.
pub(crate) const WRONG_TYPES: [(&str, &str); 5] = [
    ("accountName", "42"),
    ("accountId", "12345"),
    ("version", "\"3\""),
    ("updatedAt", "1763649000"),
    ("accountName", "[\"a\",\"list\"]"),
];

/// Stands for the name of a record whose name cannot be a JSON value; replaced by
/// [`write_record`]. No other field of a record can hold it.
const NAME_SLOT: &str = "<sim: undecodable name>";

/// One record the listing emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// An account as listed (possibly the older copy of a duplicate).
    Account(AccountState),
    /// A malformed record injected at this position.
    Malformed { position: u64, kind: Malformed },
}

/// Where the second copy of a duplicated account goes.
#[derive(Debug, Clone, Copy)]
struct Duplicate {
    /// Which of the three displacements is used (1..=3).
    choice: u64,
    /// The position of the second copy.
    echo: u64,
    /// Whether the copy listed first carries the older version.
    older_first: bool,
}

fn displacement(span: u64, choice: u64) -> u64 {
    (span * choice / 4).max(1) % span
}

fn duplicate(f: &ListingFaults, span: u64, k: u64) -> Option<Duplicate> {
    if f.duplicate_rate <= 0.0 || span < 2 || k > span {
        return None;
    }
    let h = mix(f.seed, &[salt("duplicate"), k]);
    if unit(h) >= f.duplicate_rate {
        return None;
    }
    let h2 = mix(f.seed, &[salt("duplicate-how"), k]);
    let choice = 1 + h2 % 3;
    let d = displacement(span, choice);
    if d == 0 {
        return None;
    }
    Some(Duplicate {
        choice,
        echo: (k - 1 + d) % span + 1,
        older_first: h2 & 0x100 != 0,
    })
}

/// The previous version of an account, as a listing that raced with its update would show it.
fn older(f: &ListingFaults, state: AccountState) -> AccountState {
    let minutes = 1 + mix(f.seed, &[salt("older"), state.index]) % 600;
    AccountState {
        version: state.version.saturating_sub(1).max(1),
        updated_at: state.updated_at - Duration::minutes(minutes as i64),
        ..state
    }
}

/// Appends what position `p` emits to `out`. `span` is the number of accounts when the listing
/// began (duplicates are placed within it).
pub(crate) fn entries_at(
    reg: &Registry,
    f: &ListingFaults,
    filter: &Filter,
    span: u64,
    p: u64,
    out: &mut Vec<Entry>,
) {
    let push_account = |state: AccountState, out: &mut Vec<Entry>| {
        if filter.matches(state.status, state.updated_at) && !hidden(f, state.index) {
            out.push(Entry::Account(state));
        }
    };
    if let Some(state) = reg.get(p) {
        let shown = match duplicate(f, span, p) {
            // The home copy is the older one when it comes first and the older copy is listed
            // first, or when it comes second and the older copy is listed second.
            Some(dup) if (p < dup.echo) == dup.older_first => older(f, state),
            _ => state,
        };
        push_account(shown, out);
    }
    if p <= span {
        for choice in 1..=3 {
            let d = displacement(span, choice);
            if d == 0 {
                continue;
            }
            let k = (p - 1 + span - d) % span + 1;
            let Some(dup) = duplicate(f, span, k).filter(|dup| dup.choice == choice) else {
                continue;
            };
            if let Some(state) = reg.get(k) {
                let echo_is_older = (dup.echo < k) == dup.older_first;
                push_account(
                    if echo_is_older {
                        older(f, state)
                    } else {
                        state
                    },
                    out,
                );
            }
        }
    }
    if f.malformed_rate > 0.0 && unit(mix(f.seed, &[salt("malformed"), p])) < f.malformed_rate {
        let h = mix(f.seed, &[salt("malformed-kind"), p]);
        let kind = match h % 4 {
            0 => Malformed::MissingField(((h >> 8) % 5) as u8),
            1 => Malformed::BadId(((h >> 8) % 5) as u8),
            2 => Malformed::VersionZero,
            _ => Malformed::LongName,
        };
        out.push(Entry::Malformed { position: p, kind });
    }
    let undecodable = [
        (
            f.invalid_utf8_rate,
            "malformed-utf8",
            Malformed::NameNotUtf8,
        ),
        (
            f.lone_surrogate_rate,
            "malformed-surrogate",
            Malformed::LoneSurrogate,
        ),
        (f.wrong_type_rate, "malformed-type", Malformed::WrongType(0)),
    ];
    for (rate, name, kind) in undecodable {
        if rate > 0.0 && unit(mix(f.seed, &[salt(name), p])) < rate {
            let kind = match kind {
                Malformed::WrongType(_) => {
                    let h = mix(f.seed, &[salt("malformed-type-which"), p]);
                    Malformed::WrongType((h % WRONG_TYPES.len() as u64) as u8)
                }
                other => other,
            };
            out.push(Entry::Malformed { position: p, kind });
        }
    }
}

/// Accounts (not copies, not malformed records) matching the filter right now, less those a
/// collapsed listing leaves out.
pub(crate) fn count_matching(reg: &Registry, f: &ListingFaults, filter: &Filter) -> u64 {
    if filter.is_empty() && f.hidden_share <= 0.0 {
        return reg.total();
    }
    (1..=reg.total())
        .filter_map(|i| reg.get(i))
        .filter(|s| filter.matches(s.status, s.updated_at) && !hidden(f, s.index))
        .count() as u64
}

/// `updatedAt` as the listing writes it.
pub(crate) fn format_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON record of an entry; `renamed` is the name of a renamed account.
pub(crate) fn render(entry: &Entry, seed: u64, filter: &Filter, renamed: Option<&str>) -> Value {
    match *entry {
        Entry::Account(s) => json!({
            "accountId": account_id(s.index),
            "accountName": renamed.map_or_else(|| account_name(seed, s.index), str::to_owned),
            "status": s.status.as_str(),
            "updatedAt": format_instant(s.updated_at),
            "version": s.version,
        }),
        Entry::Malformed { position, kind } => {
            let mut record = Map::new();
            let id = match kind {
                Malformed::BadId(0) => format!("-MAL{position:08}"),
                Malformed::BadId(1) => format!("MAL {position:08}"),
                Malformed::BadId(2) => format!("MAL/{position:08}"),
                Malformed::BadId(3) => format!("MAL{position:08}{}", "X".repeat(60)),
                Malformed::BadId(_) => String::new(),
                _ => format!("MAL{position:08}"),
            };
            record.insert("accountId".into(), Value::String(id));
            let name = match kind {
                Malformed::LongName => overlong_name(seed, position),
                Malformed::NameNotUtf8 | Malformed::LoneSurrogate => NAME_SLOT.to_owned(),
                _ => account_name(seed, position),
            };
            record.insert("accountName".into(), Value::String(name));
            let status = filter.status.unwrap_or(Status::Active);
            record.insert("status".into(), Value::String(status.as_str().into()));
            let at = filter.since.unwrap_or_else(base_instant);
            record.insert("updatedAt".into(), Value::String(format_instant(at)));
            let version = if kind == Malformed::VersionZero { 0 } else { 1 };
            record.insert("version".into(), Value::from(version));
            if let Malformed::MissingField(which) = kind {
                let field = ["accountId", "accountName", "status", "updatedAt", "version"]
                    [usize::from(which) % 5];
                record.remove(field);
            }
            if let Malformed::WrongType(which) = kind {
                let (field, json) = WRONG_TYPES[usize::from(which) % WRONG_TYPES.len()];
                if let Ok(value) = serde_json::from_str(json) {
                    record.insert(field.into(), value);
                }
            }
            Value::Object(record)
        }
    }
}

/// Appends the JSON text of an entry to `out`: [`render`]'s record, except that the name of a
/// record whose name cannot be a JSON value is written as raw bytes.
pub(crate) fn write_record(
    entry: &Entry,
    seed: u64,
    filter: &Filter,
    renamed: Option<&str>,
    out: &mut Vec<u8>,
) {
    let text = render(entry, seed, filter, renamed).to_string();
    let name: Option<Vec<u8>> = match *entry {
        Entry::Malformed {
            position,
            kind: Malformed::NameNotUtf8,
        } => Some(
            [
                &b"\"Caf\xe9 de Paris Holdings "[..],
                format!("{position}\"").as_bytes(),
            ]
            .concat(),
        ),
        Entry::Malformed {
            position,
            kind: Malformed::LoneSurrogate,
        } => Some(format!("\"Fund \\ud800 {position}\"").into_bytes()),
        _ => None,
    };
    let slot = format!("\"{NAME_SLOT}\"");
    match (name, text.split_once(&slot)) {
        (Some(name), Some((before, after))) => {
            out.extend_from_slice(before.as_bytes());
            out.extend_from_slice(&name);
            out.extend_from_slice(after.as_bytes());
        }
        _ => out.extend_from_slice(text.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn all_entries(reg: &Registry, f: &ListingFaults, filter: &Filter) -> Vec<Entry> {
        let mut out = Vec::new();
        for p in 1..=reg.total() {
            entries_at(reg, f, filter, reg.total(), p, &mut out);
        }
        out
    }

    fn faults(malformed_rate: f64, duplicate_rate: f64) -> ListingFaults {
        ListingFaults {
            seed: 42,
            malformed_rate,
            duplicate_rate,
            invalid_utf8_rate: 0.0,
            lone_surrogate_rate: 0.0,
            wrong_type_rate: 0.0,
            hidden_share: 0.0,
        }
    }

    #[test]
    fn without_faults_every_account_appears_once_in_id_order() {
        let reg = Registry::new(42, 500, 0.1);
        let entries = all_entries(&reg, &faults(0.0, 0.0), &Filter::default());
        let ids: Vec<u64> = entries
            .iter()
            .map(|e| match e {
                Entry::Account(s) => s.index,
                Entry::Malformed { .. } => panic!("no malformed records expected"),
            })
            .collect();
        assert_eq!(ids, (1..=500).collect::<Vec<_>>());
    }

    #[test]
    fn duplicates_appear_twice_with_one_older_copy_in_both_orders() {
        let reg = Registry::new(42, 2000, 0.0);
        let entries = all_entries(&reg, &faults(0.0, 0.1), &Filter::default());
        let mut seen: HashMap<u64, Vec<AccountState>> = HashMap::new();
        for e in &entries {
            if let Entry::Account(s) = e {
                seen.entry(s.index).or_default().push(*s);
            }
        }
        assert_eq!(seen.len(), 2000, "every account still listed");
        let dups: Vec<&Vec<AccountState>> = seen.values().filter(|v| v.len() > 1).collect();
        assert!(
            (150..=250).contains(&dups.len()),
            "{} duplicated",
            dups.len()
        );
        let (mut older_first, mut newer_first) = (0, 0);
        for copies in dups {
            assert_eq!(copies.len(), 2);
            let current = reg.get(copies[0].index).expect("exists");
            assert!(copies.contains(&current), "one copy is the current record");
            if copies[0].updated_at < copies[1].updated_at {
                older_first += 1;
            } else {
                newer_first += 1;
            }
        }
        assert!(
            older_first > 20 && newer_first > 20,
            "{older_first} / {newer_first}"
        );
    }

    #[test]
    fn malformed_records_come_at_the_configured_rate_and_break_the_contract() {
        let reg = Registry::new(42, 4000, 0.0);
        let entries = all_entries(&reg, &faults(0.05, 0.0), &Filter::default());
        let malformed: Vec<Value> = entries
            .iter()
            .filter(|e| matches!(e, Entry::Malformed { .. }))
            .map(|e| render(e, 42, &Filter::default(), None))
            .collect();
        assert!(
            (150..=250).contains(&malformed.len()),
            "{}",
            malformed.len()
        );
        for record in &malformed {
            let id = record.get("accountId").and_then(Value::as_str);
            let name = record.get("accountName").and_then(Value::as_str);
            let broken = record.as_object().is_none_or(|o| o.len() < 5)
                || id.is_none_or(|id| !crate::accounts::is_valid_account_id(id))
                || record.get("version") == Some(&Value::from(0))
                || name.is_none_or(|n| n.chars().count() > 200);
            assert!(broken, "{record}");
        }
    }

    #[test]
    fn undecodable_and_wrong_type_records_come_at_their_rates_and_cannot_be_read() {
        let reg = Registry::new(42, 4000, 0.0);
        let f = ListingFaults {
            invalid_utf8_rate: 0.02,
            lone_surrogate_rate: 0.02,
            wrong_type_rate: 0.02,
            ..faults(0.0, 0.0)
        };
        let entries = all_entries(&reg, &f, &Filter::default());
        let (mut not_utf8, mut surrogate, mut wrong_type) = (0, 0, 0);
        let mut fields = std::collections::BTreeSet::new();
        for e in &entries {
            let mut text = Vec::new();
            write_record(e, 42, &Filter::default(), None, &mut text);
            match e {
                Entry::Account(_) => {
                    let v: Value = serde_json::from_slice(&text).expect("accounts are JSON");
                    assert!(v["accountName"].is_string());
                }
                Entry::Malformed {
                    kind: Malformed::NameNotUtf8,
                    ..
                } => {
                    not_utf8 += 1;
                    assert!(std::str::from_utf8(&text).is_err());
                    let lossy = String::from_utf8_lossy(&text);
                    let v: Value = serde_json::from_str(&lossy).expect("JSON but for the bytes");
                    assert!(v["accountId"]
                        .as_str()
                        .is_some_and(crate::accounts::is_valid_account_id));
                }
                Entry::Malformed {
                    kind: Malformed::LoneSurrogate,
                    ..
                } => {
                    surrogate += 1;
                    assert!(std::str::from_utf8(&text).is_ok());
                    assert!(serde_json::from_slice::<Value>(&text).is_err());
                    assert!(!String::from_utf8_lossy(&text).contains(NAME_SLOT));
                }
                Entry::Malformed {
                    kind: Malformed::WrongType(which),
                    ..
                } => {
                    wrong_type += 1;
                    let v: Value = serde_json::from_slice(&text).expect("valid JSON");
                    let (field, json) = WRONG_TYPES[usize::from(*which)];
                    assert_eq!(v[field].to_string(), json);
                    fields.insert(*which);
                }
                Entry::Malformed { kind, .. } => panic!("not asked for: {kind:?}"),
            }
        }
        for (n, what) in [
            (not_utf8, "not UTF-8"),
            (surrogate, "surrogate"),
            (wrong_type, "wrong type"),
        ] {
            assert!((40..=130).contains(&n), "{n} {what}");
        }
        assert_eq!(fields.len(), WRONG_TYPES.len(), "every wrong type appears");
        let accounts = entries
            .iter()
            .filter(|e| matches!(e, Entry::Account(_)))
            .count();
        assert_eq!(accounts, 4000, "every account still listed");
    }

    #[test]
    fn without_the_new_rates_the_listing_is_as_before() {
        let reg = Registry::new(42, 3000, 0.1);
        let old = all_entries(&reg, &faults(0.05, 0.05), &Filter::default());
        let f = ListingFaults {
            invalid_utf8_rate: 0.0,
            lone_surrogate_rate: 0.0,
            wrong_type_rate: 0.0,
            ..faults(0.05, 0.05)
        };
        assert_eq!(old, all_entries(&reg, &f, &Filter::default()));
        for e in &old {
            let mut text = Vec::new();
            write_record(e, 42, &Filter::default(), None, &mut text);
            assert_eq!(
                text,
                render(e, 42, &Filter::default(), None)
                    .to_string()
                    .into_bytes()
            );
        }
    }

    #[test]
    fn a_collapsed_listing_leaves_out_its_share_of_accounts_and_an_empty_one_all() {
        let reg = Registry::new(42, 2000, 0.0);
        let accounts = |share: f64| {
            let f = ListingFaults {
                hidden_share: share,
                ..faults(0.0, 0.1)
            };
            // Duplicates (the second copy of an account) are listed or left out with it.
            let ids: std::collections::BTreeSet<u64> = all_entries(&reg, &f, &Filter::default())
                .iter()
                .filter_map(|e| match e {
                    Entry::Account(s) => Some(s.index),
                    Entry::Malformed { .. } => None,
                })
                .collect();
            ids.into_iter().collect::<Vec<u64>>()
        };
        assert_eq!(accounts(0.0).len(), 2000);
        let half = accounts(0.5);
        assert!((850..=1150).contains(&half.len()), "{}", half.len());
        assert_eq!(half, accounts(0.5), "the same accounts every time");
        assert!(accounts(1.0).is_empty(), "an empty listing");
        let f = ListingFaults {
            hidden_share: 0.5,
            ..faults(0.0, 0.0)
        };
        assert_eq!(
            count_matching(&reg, &f, &Filter::default()),
            half.len() as u64,
            "totalCount says what the listing holds"
        );
    }

    #[test]
    fn a_renamed_account_is_listed_under_its_new_name() {
        let entry = Entry::Account(Registry::new(42, 3, 0.0).get(2).expect("exists"));
        let name = "=1+2\u{1b}[31m\r\nNEL\u{85} \u{1F600}";
        let mut text = Vec::new();
        write_record(&entry, 42, &Filter::default(), Some(name), &mut text);
        let v: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(v["accountName"], name);
        assert_eq!(
            render(&entry, 42, &Filter::default(), None)["accountName"],
            account_name(42, 2).as_str()
        );
    }

    #[test]
    fn filter_applies_to_each_copy_and_count_matches() {
        let reg = Registry::new(42, 1000, 0.2);
        let filter = Filter {
            status: Some(Status::Active),
            since: None,
        };
        let entries = all_entries(&reg, &faults(0.0, 0.0), &filter);
        assert_eq!(
            entries.len() as u64,
            count_matching(&reg, &faults(0.0, 0.0), &filter)
        );
        assert!(entries.len() < 900 && entries.len() > 700);
        let since = Filter {
            status: None,
            since: Some(base_instant() - Duration::days(30)),
        };
        let recent = count_matching(&reg, &faults(0.0, 0.0), &since);
        assert!(recent > 0 && recent < 200, "{recent}");
    }
}

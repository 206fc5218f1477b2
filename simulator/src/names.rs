//! Account names: realistic fund and trust names, about one in seven of them hostile.
//!
//! Hostile names carry what people really type and what breaks naive CSV or spreadsheet
//! handling: commas, double quotes, line breaks, a leading `=`, `+`, `-`, `@` or tab, non-ASCII
//! text, and lengths up to the contract's limit of 200 characters. A valid record's name is never
//! longer than 200 characters; [`overlong_name`] is the one exception, for malformed records.

use crate::hash::{mix, salt};

const PLACES: &[&str] = &[
    "Harbor",
    "Meridian",
    "Blue Ridge",
    "Cedar Creek",
    "Lakeshore",
    "Northfield",
    "Summit",
    "Riverbend",
    "Oakmont",
    "Granite Peak",
    "Prairie",
    "Bayview",
    "Willow Park",
    "Redwood",
    "Silver Lake",
    "Evergreen",
    "Maple Grove",
    "Stonebridge",
    "Fox Hollow",
    "Copperfield",
];
const STYLES: &[&str] = &[
    "Growth",
    "Income",
    "Balanced",
    "Dividend",
    "Sustainable",
    "Global Equity",
    "Strategic",
    "Core Bond",
    "Conservative",
    "Opportunity",
];
const KINDS: &[&str] = &[
    "Fund",
    "Portfolio",
    "Trust",
    "Endowment",
    "Foundation",
    "Account",
    "Pension Plan",
    "Retirement Account",
    "Partners LP",
    "Capital",
];
const SURNAMES: &[&str] = &[
    "Anderson",
    "Okafor",
    "Nguyen",
    "Patel",
    "Johansson",
    "Garcia",
    "Kowalski",
    "Hernandez",
    "Whitfield",
    "Brennan",
    "Takahashi",
    "Dubois",
    "Rossi",
    "Schmidt",
    "Chen",
    "O'Brien",
    "Fitzgerald",
    "Lindqvist",
    "Abernathy",
    "Mensah",
];
const NON_ASCII: &[&str] = &[
    "Société Générale Épargne",
    "Zürich Vorsorge Stiftung",
    "漢字 Asia Growth",
    "São Paulo Renda Fixa",
    "Ærø Fonden",
    "Ünal & Çelik Portföy",
    "株式会社 日本 Equity",
    "Müller-Lüdenscheidt Familienstiftung",
    "Fundação Amazônia Sustentável",
    "Ελληνικό Ταμείο",
];

/// Largest name length, in characters, that the contract allows.
pub(crate) const MAX_NAME_CHARS: usize = 200;

fn pick<'a>(list: &[&'a str], h: u64, shift: u32) -> &'a str {
    list[((h >> shift) % list.len() as u64) as usize]
}

/// The name of account `index` (deterministic from the seed).
pub(crate) fn account_name(seed: u64, index: u64) -> String {
    let h = mix(seed, &[salt("name"), index]);
    let h2 = mix(seed, &[salt("name-variant"), index]);
    let place = pick(PLACES, h, 3);
    let style = pick(STYLES, h, 11);
    let kind = pick(KINDS, h, 19);
    let surname = pick(SURNAMES, h, 27);
    let other = pick(SURNAMES, h, 35);
    if !h.is_multiple_of(7) {
        return match (h >> 43) % 4 {
            0 => format!("{surname} Family {kind}"),
            1 => format!("{place} {style} {kind}"),
            2 => format!("{surname} & {other} {style} {kind}"),
            _ => format!("{place} {kind} No. {}", 1 + (h >> 50) % 40),
        };
    }
    let name = match h2 % 11 {
        0 => format!("{surname}, {other} & Co., {place} {style} Fund"),
        1 => format!("The \"{place}\" {style} {kind}"),
        2 => format!("{place} {style}\n{kind}"),
        3 => format!("{place} {style}\r\n{kind}, Series \"B\""),
        4 => format!("=HYPERLINK(\"http://example.com\",\"{place}\") {kind}"),
        5 => format!("+{surname} {kind}"),
        6 => format!("-{place} {style} {kind}"),
        7 => format!("@{place} {kind}"),
        8 => format!("{} {kind}", pick(NON_ASCII, h2, 8)),
        9 => format!("\t{place} {kind}"),
        _ => long_name(seed, index, h2),
    };
    truncate_chars(name, MAX_NAME_CHARS)
}

/// A long name of 150 to exactly 200 characters, mixing commas, quotes and non-ASCII.
fn long_name(seed: u64, index: u64, h: u64) -> String {
    let target = if h & 0x100 == 0 {
        MAX_NAME_CHARS
    } else {
        150 + ((h >> 9) % 50) as usize
    };
    let mut s = String::new();
    let mut round = 0u64;
    while s.chars().count() < target {
        let part = mix(seed, &[salt("long-name"), index, round]);
        s.push_str(pick(PLACES, part, 3));
        s.push_str(", \"");
        s.push_str(pick(NON_ASCII, part, 13));
        s.push_str("\" ");
        round += 1;
    }
    truncate_chars(s, target)
}

/// A name longer than the contract allows (201 to 260 characters), for malformed records.
pub(crate) fn overlong_name(seed: u64, position: u64) -> String {
    let h = mix(seed, &[salt("overlong"), position]);
    let len = MAX_NAME_CHARS + 1 + (h % 60) as usize;
    let base = format!("{} {} ", pick(PLACES, h, 5), pick(KINDS, h, 17));
    base.chars().cycle().take(len).collect()
}

fn truncate_chars(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s,
    }
}

/// True when the name carries something that trips naive CSV or spreadsheet handling.
#[cfg(test)]
pub(crate) fn is_hostile(name: &str) -> bool {
    name.contains([',', '"', '\n', '\r'])
        || name.starts_with(['=', '+', '-', '@', '\t'])
        || !name.is_ascii()
        || name.chars().count() >= 150
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_never_too_long() {
        for i in 1..=5000 {
            let name = account_name(42, i);
            assert_eq!(name, account_name(42, i));
            assert!(!name.is_empty());
            assert!(name.chars().count() <= MAX_NAME_CHARS, "{i}: {name}");
        }
        assert_ne!(
            (1..50).map(|i| account_name(1, i)).collect::<Vec<_>>(),
            (1..50).map(|i| account_name(2, i)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn about_one_in_seven_is_hostile_and_every_kind_occurs() {
        let names: Vec<String> = (1..=7000).map(|i| account_name(42, i)).collect();
        let hostile = names.iter().filter(|n| is_hostile(n)).count();
        assert!((800..=1200).contains(&hostile), "hostile {hostile} of 7000");
        assert!(names.iter().any(|n| n.contains(',')));
        assert!(names.iter().any(|n| n.contains('"')));
        assert!(names.iter().any(|n| n.contains('\n')));
        assert!(names.iter().any(|n| n.contains("\r\n")));
        for lead in ['=', '+', '-', '@', '\t'] {
            assert!(names.iter().any(|n| n.starts_with(lead)), "{lead}");
        }
        assert!(names.iter().any(|n| n.contains('é')));
        assert!(names.iter().any(|n| n.contains("漢字")));
        assert!(names.iter().any(|n| n.chars().count() == MAX_NAME_CHARS));
    }

    #[test]
    fn overlong_names_break_the_limit() {
        for p in 0..200 {
            let n = overlong_name(42, p).chars().count();
            assert!((201..=260).contains(&n), "{n}");
        }
    }
}

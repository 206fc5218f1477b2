//! The vendor's side: ESG analyses, per-account faults and per-call faults.
//!
//! A score is an exact decimal held as ten-thousandths and written into the JSON text exactly
//! (`72.345`, never a float artefact). Scores come from a palette of 1009 values (a prime): 101
//! whole numbers (0 and 100 included), 300 with two decimals, 200 with a third decimal of exactly
//! 5 (the rounding traps: `72.345`, `2.675`, `10.005`, ...) and 408 with four decimals. Each
//! score's palette index is `h + holdings_version * s1 + rerate_epoch * s2 (mod 1009)` with
//! `s1`, `s2` in `1..1009`, so a change of holdings or a re-rating changes *every* score, while the
//! same inputs always give the same score.

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::config::SimConfig;
use crate::hash::{fnv1a, mix, salt, unit};

/// Number of palette values; prime, so every step walks to a different value.
const PALETTE: u64 = 1009;

/// Half-way values at the third decimal that trip float rounding, listed first in their class.
const ROUNDING_TRAPS: &[u64] = &[72_345, 10_005, 2_675, 1_005, 5, 99_995, 50_125, 285, 1_115];

/// The palette value `v` (`0..PALETTE`) in ten-thousandths.
fn palette_units(v: u64) -> u64 {
    match v % PALETTE {
        // Whole numbers 0..=100.
        v @ 0..=100 => v * 10_000,
        // Two decimals, the second one not zero.
        v @ 101..=400 => {
            let k = v - 101;
            ((k * 7919) % 1000 * 10 + 1 + k % 9) * 100
        }
        // Three decimals ending in 5.
        v @ 401..=600 => {
            let k = v - 401;
            let thousandths = match ROUNDING_TRAPS.get(k as usize) {
                Some(t) => *t,
                None => (k * 7919) % 10_000 * 10 + 5,
            };
            thousandths * 10
        }
        // Four decimals, the fourth one not zero.
        v => {
            let k = v - 601;
            (k * 7919) % 100_000 * 10 + 1 + k % 9
        }
    }
}

/// An exact decimal in ten-thousandths as the shortest exact JSON number (`72.345`, `100`).
fn units_text(units: u64) -> String {
    Decimal::new(i64::try_from(units).unwrap_or(i64::MAX), 4)
        .normalize()
        .to_string()
}

/// An ESG pillar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pillar {
    Environmental,
    Social,
    Governance,
}

impl Pillar {
    const ALL: [Pillar; 3] = [Pillar::Environmental, Pillar::Social, Pillar::Governance];

    fn as_str(self) -> &'static str {
        match self {
            Pillar::Environmental => "ENVIRONMENTAL",
            Pillar::Social => "SOCIAL",
            Pillar::Governance => "GOVERNANCE",
        }
    }
}

/// Which part of a partial answer is null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NullField {
    Pillar(Pillar),
    Overall,
    PrimaryFocus,
}

/// How an out-of-contract answer breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutOfContract {
    /// A score of 150.
    ScoreOutOfRange,
    /// `primaryFocus.pillar` outside the enum.
    UnknownPillar,
    /// A body that is not JSON at all.
    InvalidJson,
    /// No `scores` object.
    MissingScores,
}

/// What is wrong with an account, always (decided by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountFault {
    None,
    /// Always 404 `UNKNOWN_PORTFOLIO` or 422 `NOT_ANALYZABLE`.
    Permanent {
        status: u16,
    },
    Partial(NullField),
    OutOfContract(OutOfContract),
}

/// What goes wrong with one call (decided by id and that account's call number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFault {
    None,
    /// 500, 502, 503 or 504.
    Transient {
        status: u16,
    },
    /// Stall for the configured time, then answer.
    Stall,
}

/// The per-account fault of `account_id`, from cumulative shares so the three kinds never
/// overlap and their shares are the configured rates.
pub(crate) fn account_fault(cfg: &SimConfig, account_id: &str) -> AccountFault {
    let idh = fnv1a(account_id.as_bytes());
    let u = unit(mix(cfg.seed, &[salt("fault"), idh]));
    let h = mix(cfg.seed, &[salt("fault-kind"), idh]);
    let permanent = cfg.permanent_error_rate;
    let partial = permanent + cfg.partial_rate;
    let out_of_contract = partial + cfg.out_of_contract_rate;
    if u < permanent {
        AccountFault::Permanent {
            status: if h & 1 == 0 { 404 } else { 422 },
        }
    } else if u < partial {
        AccountFault::Partial(match h % 5 {
            0 | 1 => NullField::Pillar(Pillar::ALL[((h >> 8) % 3) as usize]),
            2 | 3 => NullField::PrimaryFocus,
            _ => NullField::Overall,
        })
    } else if u < out_of_contract {
        AccountFault::OutOfContract(match h % 4 {
            0 => OutOfContract::ScoreOutOfRange,
            1 => OutOfContract::UnknownPillar,
            2 => OutOfContract::InvalidJson,
            _ => OutOfContract::MissingScores,
        })
    } else {
        AccountFault::None
    }
}

/// The fault of call number `call` (0-based) for `account_id`.
pub(crate) fn call_fault(cfg: &SimConfig, account_id: &str, call: u32) -> CallFault {
    if cfg.transient_error_rate <= 0.0 && cfg.timeout_rate <= 0.0 {
        return CallFault::None;
    }
    let h = mix(
        cfg.seed,
        &[salt("call"), fnv1a(account_id.as_bytes()), u64::from(call)],
    );
    let u = unit(h);
    if u < cfg.transient_error_rate {
        CallFault::Transient {
            status: [500, 502, 503, 504][(h % 4) as usize],
        }
    } else if u < cfg.transient_error_rate + cfg.timeout_rate {
        CallFault::Stall
    } else {
        CallFault::None
    }
}

/// Whether `account_id` is among the accounts whose first attempt is answered 429
/// (`rate_limited_first_attempt_rate`), by seed and id only: the same accounts every run.
/// Which call is the first attempt is the state's business (`State::refuse_first_attempt`).
pub(crate) fn first_attempt_limited(cfg: &SimConfig, account_id: &str) -> bool {
    if cfg.rate_limited_first_attempt_rate <= 0.0 {
        return false;
    }
    let h = mix(
        cfg.seed,
        &[salt("first-attempt-429"), fnv1a(account_id.as_bytes())],
    );
    unit(h) < cfg.rate_limited_first_attempt_rate
}

/// The four scores of an account, in ten-thousandths: overall, environmental, social, governance.
fn scores(seed: u64, account_id: &str, holdings_version: u64, epoch: u64) -> [u64; 4] {
    let idh = fnv1a(account_id.as_bytes());
    let mut out = [0; 4];
    for (k, slot) in out.iter_mut().enumerate() {
        let k = k as u64;
        let h0 = mix(seed, &[salt("score"), idh, k]) % PALETTE;
        let s1 = 1 + mix(seed, &[salt("score-holdings"), idh, k]) % (PALETTE - 1);
        let s2 = 1 + mix(seed, &[salt("score-rerate"), idh, k]) % (PALETTE - 1);
        let v = (h0 + (holdings_version % PALETTE) * s1 + (epoch % PALETTE) * s2) % PALETTE;
        *slot = palette_units(v);
    }
    out
}

/// The primary focus the vendor names: the highest pillar score present; the first one wins
/// a tie.
fn highest_pillar(values: &[Option<u64>; 4]) -> Option<(Pillar, u64)> {
    Pillar::ALL
        .iter()
        .zip(&values[1..])
        .filter_map(|(p, v)| v.map(|v| (*p, v)))
        .fold(None, |best: Option<(Pillar, u64)>, (p, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((p, v)),
        })
}

/// What the vendor rates an account on `date`, as exact decimal texts, or why it does not: the
/// values [`analysis`] writes into its answer, for the truth of a day ([`crate::Truth`]).
pub(crate) fn rating(
    cfg: &SimConfig,
    account_id: &str,
    holdings_version: u64,
    epoch: u64,
    date: NaiveDate,
) -> crate::Rating {
    let mut values: [Option<u64>; 4] =
        scores(cfg.seed, account_id, holdings_version, epoch).map(Some);
    let mut null_focus = false;
    match account_fault(cfg, account_id) {
        AccountFault::Permanent { status } => return crate::Rating::Refused { status },
        AccountFault::OutOfContract(_) => return crate::Rating::OutOfContract,
        AccountFault::Partial(NullField::Pillar(p)) => {
            values[1 + Pillar::ALL.iter().position(|q| *q == p).unwrap_or(0)] = None;
        }
        AccountFault::Partial(NullField::Overall) => values[0] = None,
        AccountFault::Partial(NullField::PrimaryFocus) => null_focus = true,
        AccountFault::None => {}
    }
    let focus = if null_focus {
        None
    } else {
        highest_pillar(&values)
    };
    let text = |v: Option<u64>| v.map(units_text);
    crate::Rating::Analysis {
        analysis_date: date,
        overall: text(values[0]),
        environmental: text(values[1]),
        social: text(values[2]),
        governance: text(values[3]),
        primary_focus: focus.map(|(p, v)| (p.as_str().to_owned(), units_text(v))),
    }
}

/// One analysis answer: its JSON text and whether that text is JSON at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnalysisText {
    pub text: String,
    pub is_json: bool,
}

impl AnalysisText {
    /// The strong ETag of this answer.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", fnv1a(self.text.as_bytes()))
    }

    /// The value to embed in a batch item: the analysis itself, or, when it is not JSON, the
    /// broken text as a JSON string (which is just as far outside the contract).
    pub fn as_batch_value(&self) -> String {
        if self.is_json {
            self.text.clone()
        } else {
            json_string(&self.text)
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The analysis of `account_id` as the vendor answers it, faults included.
pub(crate) fn analysis(
    seed: u64,
    account_id: &str,
    holdings_version: u64,
    epoch: u64,
    date: NaiveDate,
    fault: AccountFault,
) -> AnalysisText {
    let raw = scores(seed, account_id, holdings_version, epoch);
    let mut values: [Option<u64>; 4] = raw.map(Some);
    let mut null_focus = false;
    let mut unknown_pillar = false;
    let mut omit_scores = false;
    let idh = fnv1a(account_id.as_bytes());
    let mut coverage = 60 + mix(seed, &[salt("coverage"), idh]) % 41;
    match fault {
        AccountFault::Partial(NullField::Pillar(p)) => {
            values[1 + Pillar::ALL.iter().position(|q| *q == p).unwrap_or(0)] = None;
            coverage -= 30;
        }
        AccountFault::Partial(NullField::Overall) => values[0] = None,
        AccountFault::Partial(NullField::PrimaryFocus) => null_focus = true,
        AccountFault::OutOfContract(OutOfContract::ScoreOutOfRange) => {
            values[1] = Some(1_500_000);
        }
        AccountFault::OutOfContract(OutOfContract::UnknownPillar) => unknown_pillar = true,
        AccountFault::OutOfContract(OutOfContract::MissingScores) => omit_scores = true,
        _ => {}
    }
    let focus = if null_focus {
        None
    } else {
        highest_pillar(&values)
    };
    let score = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), units_text);
    let mut text = String::with_capacity(320);
    text.push_str("{\"accountId\":");
    text.push_str(&json_string(account_id));
    text.push_str(",\"analysisDate\":\"");
    text.push_str(&date.format("%Y-%m-%d").to_string());
    text.push_str("\",\"methodologyVersion\":\"3.2\"");
    if !omit_scores {
        text.push_str(&format!(
            ",\"scores\":{{\"overall\":{},\"environmental\":{},\"social\":{},\"governance\":{}}}",
            score(values[0]),
            score(values[1]),
            score(values[2]),
            score(values[3]),
        ));
    }
    match focus {
        Some((pillar, v)) => text.push_str(&format!(
            ",\"primaryFocus\":{{\"pillar\":\"{}\",\"score\":{}}}",
            if unknown_pillar {
                "CLIMATE"
            } else {
                pillar.as_str()
            },
            units_text(v)
        )),
        None => text.push_str(",\"primaryFocus\":null"),
    }
    text.push_str(&format!(
        ",\"coverage\":{}}}",
        Decimal::new(coverage as i64, 2).normalize()
    ));
    if fault == AccountFault::OutOfContract(OutOfContract::InvalidJson) {
        // Cut the body short, as a proxy or a crashing server would.
        text.truncate(text.len() / 2);
        return AnalysisText {
            text,
            is_json: false,
        };
    }
    AnalysisText {
        text,
        is_json: true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    use super::*;

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).expect("valid date")
    }

    #[test]
    fn palette_values_are_distinct_in_range_and_mixed() {
        let values: Vec<u64> = (0..PALETTE).map(palette_units).collect();
        let distinct: HashSet<u64> = values.iter().copied().collect();
        assert_eq!(distinct.len() as u64, PALETTE, "palette must be injective");
        assert!(values.iter().all(|v| *v <= 1_000_000));
        assert!(values.contains(&0) && values.contains(&1_000_000));
        for trap in ["72.345", "10.005", "2.675", "0.005", "99.995"] {
            assert!(values.iter().any(|v| units_text(*v) == trap), "{trap}");
        }
        let decimals = |v: &u64| units_text(*v).split('.').nth(1).map_or(0, str::len);
        for n in [0, 2, 3, 4] {
            assert!(
                values.iter().filter(|v| decimals(v) == n).count() > 100,
                "{n}"
            );
        }
    }

    #[test]
    fn numbers_are_written_exactly() {
        assert_eq!(units_text(723_450), "72.345");
        assert_eq!(units_text(1_000_000), "100");
        assert_eq!(units_text(0), "0");
        assert_eq!(units_text(100_050), "10.005");
        assert_eq!(units_text(5), "0.0005");
    }

    #[test]
    fn analysis_is_valid_json_with_exact_numbers_and_the_highest_pillar_as_focus() {
        for i in 1..=300 {
            let id = crate::accounts::account_id(i);
            let a = analysis(42, &id, 1, 0, date(), AccountFault::None);
            assert!(a.is_json);
            let v: Value = serde_json::from_str(&a.text).expect("valid JSON");
            assert_eq!(v["accountId"], id.as_str());
            assert_eq!(v["analysisDate"], "2026-11-23");
            let s = &v["scores"];
            let pillars = [
                ("ENVIRONMENTAL", &s["environmental"]),
                ("SOCIAL", &s["social"]),
                ("GOVERNANCE", &s["governance"]),
            ];
            let max = pillars
                .iter()
                .map(|(_, v)| v.as_f64().expect("number"))
                .fold(f64::MIN, f64::max);
            assert_eq!(v["primaryFocus"]["score"].as_f64(), Some(max));
            let named = pillars
                .iter()
                .find(|(n, _)| *n == v["primaryFocus"]["pillar"])
                .expect("pillar in the enum");
            assert_eq!(named.1.as_f64(), Some(max));
            let coverage = v["coverage"].as_f64().expect("coverage");
            assert!((0.0..=1.0).contains(&coverage));
        }
        let text = analysis(42, "ACC00000001", 1, 0, date(), AccountFault::None).text;
        assert!(!text.contains("00000000001"), "no float artefacts: {text}");
    }

    #[test]
    fn every_score_changes_on_rerate_and_on_new_holdings_but_not_otherwise() {
        for i in 1..=500 {
            let id = crate::accounts::account_id(i);
            let base = scores(7, &id, 3, 0);
            assert_eq!(base, scores(7, &id, 3, 0));
            let rerated = scores(7, &id, 3, 1);
            let touched = scores(7, &id, 4, 0);
            for k in 0..4 {
                assert_ne!(base[k], rerated[k], "{id} score {k} after rerate");
                assert_ne!(base[k], touched[k], "{id} score {k} after touch");
            }
        }
    }

    #[test]
    fn account_faults_follow_the_configured_shares() {
        let cfg = SimConfig {
            permanent_error_rate: 0.1,
            partial_rate: 0.2,
            out_of_contract_rate: 0.05,
            ..SimConfig::default()
        };
        let n = 10_000;
        let (mut perm, mut partial, mut ooc) = (0, 0, 0);
        for i in 1..=n {
            match account_fault(&cfg, &crate::accounts::account_id(i)) {
                AccountFault::Permanent { status } => {
                    assert!(status == 404 || status == 422);
                    perm += 1;
                }
                AccountFault::Partial(_) => partial += 1,
                AccountFault::OutOfContract(_) => ooc += 1,
                AccountFault::None => {}
            }
        }
        assert!((900..=1100).contains(&perm), "{perm}");
        assert!((1800..=2200).contains(&partial), "{partial}");
        assert!((400..=600).contains(&ooc), "{ooc}");
    }

    #[test]
    fn partial_and_out_of_contract_answers_look_the_part() {
        let id = "ACC00000009";
        let null_focus = analysis(
            1,
            id,
            1,
            0,
            date(),
            AccountFault::Partial(NullField::PrimaryFocus),
        );
        let v: Value = serde_json::from_str(&null_focus.text).expect("json");
        assert!(v["primaryFocus"].is_null());
        let null_social = analysis(
            1,
            id,
            1,
            0,
            date(),
            AccountFault::Partial(NullField::Pillar(Pillar::Social)),
        );
        let v: Value = serde_json::from_str(&null_social.text).expect("json");
        assert!(v["scores"]["social"].is_null());
        assert_ne!(v["primaryFocus"]["pillar"], "SOCIAL");
        let out_of_range = analysis(
            1,
            id,
            1,
            0,
            date(),
            AccountFault::OutOfContract(OutOfContract::ScoreOutOfRange),
        );
        assert!(out_of_range.text.contains("\"environmental\":150"));
        let unknown = analysis(
            1,
            id,
            1,
            0,
            date(),
            AccountFault::OutOfContract(OutOfContract::UnknownPillar),
        );
        assert!(unknown.text.contains("CLIMATE"));
        let broken = analysis(
            1,
            id,
            1,
            0,
            date(),
            AccountFault::OutOfContract(OutOfContract::InvalidJson),
        );
        assert!(!broken.is_json);
        assert!(serde_json::from_str::<Value>(&broken.text).is_err());
        assert!(serde_json::from_str::<Value>(&broken.as_batch_value()).is_ok());
        let missing = analysis(
            1,
            id,
            1,
            0,
            date(),
            AccountFault::OutOfContract(OutOfContract::MissingScores),
        );
        let v: Value = serde_json::from_str(&missing.text).expect("json");
        assert!(v.get("scores").is_none());
    }

    #[test]
    fn the_rating_is_what_the_answer_says() {
        let cfg = SimConfig {
            permanent_error_rate: 0.1,
            partial_rate: 0.3,
            out_of_contract_rate: 0.1,
            ..SimConfig::default()
        };
        let number = |v: &Value| -> Option<String> { (!v.is_null()).then(|| v.to_string()) };
        let (mut partial, mut refused, mut broken) = (0, 0, 0);
        for i in 1..=400 {
            let id = crate::accounts::account_id(i);
            let fault = account_fault(&cfg, &id);
            let answer = analysis(cfg.seed, &id, 2, 1, date(), fault);
            match rating(&cfg, &id, 2, 1, date()) {
                crate::Rating::Analysis {
                    analysis_date,
                    overall,
                    environmental,
                    social,
                    governance,
                    primary_focus,
                } => {
                    let v: Value = serde_json::from_str(&answer.text).expect("json");
                    assert_eq!(analysis_date, date());
                    let s = &v["scores"];
                    assert_eq!(overall, number(&s["overall"]), "{id}");
                    assert_eq!(environmental, number(&s["environmental"]), "{id}");
                    assert_eq!(social, number(&s["social"]), "{id}");
                    assert_eq!(governance, number(&s["governance"]), "{id}");
                    let focus = &v["primaryFocus"];
                    assert_eq!(
                        primary_focus,
                        (!focus.is_null()).then(|| (
                            focus["pillar"].as_str().expect("pillar").to_owned(),
                            focus["score"].to_string()
                        )),
                        "{id}"
                    );
                    partial += usize::from(matches!(fault, AccountFault::Partial(_)));
                }
                crate::Rating::Refused { status } => {
                    assert_eq!(fault, AccountFault::Permanent { status });
                    refused += 1;
                }
                crate::Rating::OutOfContract => {
                    assert!(matches!(fault, AccountFault::OutOfContract(_)));
                    broken += 1;
                }
            }
        }
        assert!(
            partial > 50 && refused > 10 && broken > 10,
            "{partial} {refused} {broken}"
        );
    }

    #[test]
    fn call_faults_depend_only_on_id_and_call_number() {
        let cfg = SimConfig {
            transient_error_rate: 0.2,
            timeout_rate: 0.1,
            ..SimConfig::default()
        };
        let (mut transient, mut stall) = (0, 0);
        for i in 1..=5000 {
            let id = crate::accounts::account_id(i);
            assert_eq!(call_fault(&cfg, &id, 0), call_fault(&cfg, &id, 0));
            match call_fault(&cfg, &id, 0) {
                CallFault::Transient { status } => {
                    assert!([500, 502, 503, 504].contains(&status));
                    transient += 1;
                }
                CallFault::Stall => stall += 1,
                CallFault::None => {}
            }
        }
        assert!((900..=1100).contains(&transient), "{transient}");
        assert!((400..=600).contains(&stall), "{stall}");
        assert_eq!(
            call_fault(&SimConfig::default(), "ACC00000001", 3),
            CallFault::None
        );
    }
}

//! The seeded schedule: which business date each soak day is, which faults it gets, and how the
//! firm's accounts change before it.
//!
//! Everything is a function of the soak's seed and the day's number, never of the wall clock
//! or of what the job did, so day `k` of a soak is the same day whatever the soak's length:
//! `--days k` with the same seed replays it (with the `k - 1` days before it, whose state it
//! starts from). Account changes are drawn against the simulator's truth, which is itself a
//! function of the seed and of the changes made before.

use chrono::{Datelike, NaiveDate, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where the job is when a planned kill -9 comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Listing the accounts (pages served, the run not planned yet).
    Listing,
    /// Calling the vendor.
    Scoring,
    /// Every score in, the files not written yet.
    Assembling,
    /// A temporary output file on disk.
    Writing,
    /// The files written, not every one delivered.
    Delivering,
}

impl Phase {
    /// The phases a kill is planned for.
    const AIMED: [Phase; 5] = [
        Phase::Listing,
        Phase::Scoring,
        Phase::Assembling,
        Phase::Writing,
        Phase::Delivering,
    ];
}

/// A planned kill -9: the phase aimed at and a seeded moment inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub phase: Phase,
    /// Listing: after this many pages; scoring: after this many requests; assembling and
    /// delivering: this many milliseconds after the phase began; writing: as soon as the
    /// day's first file is on disk.
    pub at: u32,
}

/// One fault of a day, as the simulator, the disk or the account system carries it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// Vendor 500/502/503/504 on a share of calls (by call number).
    VendorErrors { rate: f64 },
    /// Every vendor request answers 503 for a while once scoring starts (a 5xx burst).
    VendorOutage { millis: u64 },
    /// Every vendor request answers 429 for a while once scoring starts.
    RateLimitStorm { seconds: u64 },
    /// A share of accounts whose first attempt answers 429 whatever the quota.
    FirstAttempt429 { rate: f64 },
    /// Every vendor call takes this long.
    LatencySpike { millis: u64 },
    /// A share of vendor calls stall past the job's timeout.
    Stalls { rate: f64 },
    /// The tenant has no batch endpoint (404).
    NoBatchEndpoint,
    /// The token endpoint answers 503.
    TokenOutage,
    /// The token endpoint never answers in time.
    TokenHang,
    /// A share of listing pages answer 429, 503 or 500.
    AccountsErrors { rate: f64 },
    /// Every listing page answers 429, 503 or 500.
    AccountsOutage,
    /// Every page token expires at once: the listing answers 410 on every next page.
    GoneStorm,
    /// Every page token issued so far expires once, while the job lists.
    PageTokensExpired,
    /// The page tokens go round in a circle.
    CyclingListing,
    /// Every listing page takes longer than the job's timeout.
    HangingListing,
    /// Duplicates, malformed records, names that are not UTF-8, wrong types in the listing.
    ListingNoise,
    /// The listing holds no account.
    EmptyListing,
    /// The listing holds about half of the accounts.
    CollapsedListing,
    /// The output disk is full before the run.
    FullDisk,
    /// The output disk fills up once scoring starts.
    DiskFillsUp,
    /// The output disk is read-only.
    ReadOnlyDisk,
}

impl Fault {
    /// The name counted in the figures.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::VendorErrors { .. } => "vendor_5xx",
            Fault::VendorOutage { .. } => "vendor_5xx_burst",
            Fault::RateLimitStorm { .. } => "429_storm",
            Fault::FirstAttempt429 { .. } => "first_attempt_429",
            Fault::LatencySpike { .. } => "latency_spike",
            Fault::Stalls { .. } => "vendor_stalls",
            Fault::NoBatchEndpoint => "no_batch_endpoint",
            Fault::TokenOutage => "token_endpoint_outage",
            Fault::TokenHang => "token_endpoint_hang",
            Fault::AccountsErrors { .. } => "account_system_errors",
            Fault::AccountsOutage => "account_system_outage",
            Fault::GoneStorm => "410_storm",
            Fault::PageTokensExpired => "page_tokens_expired",
            Fault::CyclingListing => "cycling_listing",
            Fault::HangingListing => "hanging_listing",
            Fault::ListingNoise => "listing_noise",
            Fault::EmptyListing => "empty_listing",
            Fault::CollapsedListing => "collapsed_listing",
            Fault::FullDisk => "full_disk",
            Fault::DiskFillsUp => "disk_fills_up",
            Fault::ReadOnlyDisk => "read_only_disk",
        }
    }

    /// Whether the fault needs root (a tmpfs of its own for the output directory).
    pub fn needs_root(&self) -> bool {
        matches!(
            self,
            Fault::FullDisk | Fault::DiskFillsUp | Fault::ReadOnlyDisk
        )
    }

    fn draw(rng: &mut StdRng) -> Fault {
        match rng.random_range(0..21) {
            0 => Fault::VendorErrors {
                rate: rng.random_range(0.05..0.35),
            },
            1 => Fault::VendorOutage {
                millis: rng.random_range(100..1500),
            },
            2 => Fault::RateLimitStorm {
                seconds: rng.random_range(1..=2),
            },
            3 => Fault::FirstAttempt429 {
                rate: rng.random_range(0.1..0.5),
            },
            4 => Fault::LatencySpike {
                millis: rng.random_range(100..500),
            },
            5 => Fault::Stalls {
                rate: rng.random_range(0.02..0.15),
            },
            6 => Fault::NoBatchEndpoint,
            7 => Fault::TokenOutage,
            8 => Fault::TokenHang,
            9 => Fault::AccountsErrors {
                rate: rng.random_range(0.1..0.4),
            },
            10 => Fault::AccountsOutage,
            11 => Fault::GoneStorm,
            12 => Fault::PageTokensExpired,
            13 => Fault::CyclingListing,
            14 => Fault::HangingListing,
            15 => Fault::ListingNoise,
            16 => Fault::EmptyListing,
            17 => Fault::CollapsedListing,
            18 => Fault::FullDisk,
            19 => Fault::DiskFillsUp,
            _ => Fault::ReadOnlyDisk,
        }
    }
}

/// What happens to the firm's accounts before a day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Accounts whose holdings change (new scores).
    pub touched: Vec<String>,
    /// Accounts that close.
    pub closed: Vec<String>,
    /// Closed accounts that open again.
    pub reopened: Vec<String>,
    /// Accounts renamed, and their new names.
    pub renamed: Vec<(String, String)>,
    /// New accounts that open.
    pub added: u64,
    /// The vendor re-rates every holding.
    pub rerate: bool,
}

/// One day of the soak.
#[derive(Debug, Clone)]
pub struct Day {
    /// 1-based.
    pub number: u32,
    pub business_date: NaiveDate,
    pub kills: Vec<Kill>,
    pub faults: Vec<Fault>,
    /// One call per account this day (`[esg_api] batch_size = 1`), so ETags are used.
    pub single_calls: bool,
    /// `--full`: every active account is scored.
    pub full: bool,
}

/// The seeded schedule of a soak.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub seed: u64,
    pub first_date: NaiveDate,
}

/// splitmix64: one well-mixed value of `seed` and `n`.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The business day `n` (1-based) from `first` (itself moved to a weekday): Monday to Friday.
pub fn business_date(first: NaiveDate, n: u32) -> NaiveDate {
    let mut d = first;
    while matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
        d = d.succ_opt().unwrap_or(d);
    }
    let mut left = n.saturating_sub(1);
    while left > 0 {
        d = d.succ_opt().unwrap_or(d);
        if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
            left -= 1;
        }
    }
    d
}

impl Plan {
    fn rng(&self, stream: u64, day: u32) -> StdRng {
        StdRng::seed_from_u64(mix(mix(self.seed, stream), u64::from(day)))
    }

    /// Day `n`: its date, kills and faults.
    pub fn day(&self, n: u32) -> Day {
        let mut rng = self.rng(1, n);
        let kills = match rng.random_range(0..100) {
            0..50 => 0,
            50..80 => 1,
            80..93 => 2,
            _ => 3,
        };
        let kills = (0..kills)
            .map(|_| {
                let phase = Phase::AIMED[rng.random_range(0..Phase::AIMED.len())];
                let at = match phase {
                    Phase::Listing => rng.random_range(1..4),
                    Phase::Scoring => rng.random_range(1..3),
                    Phase::Assembling => rng.random_range(0..40),
                    Phase::Writing => 0,
                    Phase::Delivering => rng.random_range(0..10),
                };
                Kill { phase, at }
            })
            .collect();
        let mut faults = Vec::new();
        // The first day is an installation's first run: no roster to compare a collapsed
        // listing with, so no fault (its kills still come).
        let first = n == 1;
        if !first && rng.random_bool(0.6) {
            faults.push(Fault::draw(&mut rng));
        }
        if !first && rng.random_bool(0.2) {
            let second = Fault::draw(&mut rng);
            if !faults.iter().any(|f| f.name() == second.name()) {
                faults.push(second);
            }
        }
        Day {
            number: n,
            business_date: business_date(self.first_date, n),
            kills,
            faults,
            single_calls: rng.random_bool(0.15),
            full: rng.random_bool(0.03),
        }
    }

    /// The account changes before day `n`, drawn against the accounts as they are:
    /// `active` and `closed` ids, in id order. New accounts open about as fast as accounts
    /// close, so the firm stays near `target` active accounts and a long soak's days stay the
    /// same size (its sizes on disk then say whether the job's state grows).
    pub fn changes(&self, n: u32, active: &[String], closed: &[String], target: usize) -> Changes {
        let mut rng = self.rng(2, n);
        let mut changes = Changes::default();
        if n == 1 {
            return changes;
        }
        for id in active {
            let draw: f64 = rng.random();
            if draw < 0.06 {
                changes.touched.push(id.clone());
            } else if draw < 0.07 {
                changes.closed.push(id.clone());
            } else if draw < 0.085 {
                changes.renamed.push((id.clone(), hostile_name(&mut rng)));
            }
        }
        if !closed.is_empty() && rng.random_bool(0.3) {
            changes
                .reopened
                .push(closed[rng.random_range(0..closed.len())].clone());
        }
        changes.added = if active.len() < target {
            rng.random_range(0..=2)
        } else {
            u64::from(rng.random_bool(0.05))
        };
        changes.rerate = rng.random_bool(0.03);
        changes
    }
}

/// Pieces of names that break naive CSV, spreadsheet, terminal and log handling: every control
/// character class, line breaks of every kind, formula leads, quotes, astral and combining
/// characters, direction overrides, invisible characters.
const HOSTILE: &[&str] = &[
    "\u{0}",
    "\u{1b}[31m",
    "\u{7}",
    "\u{8}",
    "\u{b}",
    "\u{c}",
    "\u{7f}",
    "\u{80}",
    "\u{85}",
    "\u{9b}",
    "\u{9f}",
    "\r",
    "\n",
    "\r\n",
    "\t",
    "\"",
    "\"\"",
    ",",
    ";",
    "'",
    "\\",
    "=SUM(A1:A9)",
    "+1",
    "-1",
    "@cmd",
    "%00",
    "<script>alert(1)</script>",
    "'; DROP TABLE accounts; --",
    "{\"a\":1}",
    "\u{1F600}",
    "\u{1F469}\u{200D}\u{1F469}\u{200D}\u{1F467}",
    "\u{202E}gnp.exe",
    "\u{FEFF}",
    "\u{200B}",
    "e\u{301}",
    "\u{2028}",
    "\u{2029}",
    "\u{FFFD}",
    "\u{FFFF}",
    "\u{10FFFF}",
    "漢字",
    "العربية",
    "Ελληνικά",
    "  ",
    "Fund",
    "Trust",
    "Capital",
];

/// Characters a name may start with to trip a spreadsheet or a CSV reader.
const LEADS: &[&str] = &[
    "=", "+", "-", "@", "\t", "\r", "\n", "\r\n", "\u{85}", " ", "\"", "\u{0}",
];

/// A name with hostile characters, at most the contract's 200 characters: now and then empty,
/// blank, or exactly 200 characters of a four-byte character.
pub fn hostile_name(rng: &mut StdRng) -> String {
    match rng.random_range(0..40) {
        0 => return String::new(),
        1 => return " ".to_owned(),
        2 => return "\u{1F600}".repeat(200),
        3 => return "\u{0}".repeat(200),
        _ => {}
    }
    let mut name = String::new();
    if rng.random_bool(0.5) {
        name.push_str(LEADS[rng.random_range(0..LEADS.len())]);
    }
    let target = rng.random_range(1..=200usize);
    while name.chars().count() < target {
        name.push_str(HOSTILE[rng.random_range(0..HOSTILE.len())]);
        if rng.random_bool(0.3) {
            name.push(' ');
        }
    }
    name.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn business_days_skip_weekends_and_start_on_a_weekday() {
        let first = date("2027-03-12"); // a Friday
        assert_eq!(business_date(first, 1), first);
        assert_eq!(business_date(first, 2), date("2027-03-15"));
        assert_eq!(business_date(date("2027-03-13"), 1), date("2027-03-15"));
        assert_eq!(business_date(first, 6), date("2027-03-19"));
    }

    #[test]
    fn a_day_is_the_same_whatever_the_length_of_the_soak() {
        let plan = Plan {
            seed: 7,
            first_date: date("2027-01-04"),
        };
        for n in [1, 2, 30, 999] {
            let (a, b) = (plan.day(n), plan.day(n));
            assert_eq!(a.kills, b.kills);
            assert_eq!(a.faults, b.faults);
            assert_eq!(a.business_date, b.business_date);
        }
        let other = Plan { seed: 8, ..plan };
        let days = |p: &Plan| (1..50).map(|n| p.day(n).faults).collect::<Vec<_>>();
        assert_ne!(days(&plan), days(&other));
    }

    #[test]
    fn over_many_days_every_fault_and_every_phase_comes() {
        let plan = Plan {
            seed: 1,
            first_date: date("2027-01-04"),
        };
        let mut faults = std::collections::BTreeSet::new();
        let mut phases = std::collections::BTreeSet::new();
        for n in 1..=1000 {
            let day = plan.day(n);
            faults.extend(day.faults.iter().map(Fault::name));
            phases.extend(day.kills.iter().map(|k| k.phase));
            assert!(day.kills.len() <= 3);
        }
        assert_eq!(faults.len(), 21, "{faults:?}");
        assert_eq!(phases.len(), Phase::AIMED.len());
    }

    #[test]
    fn hostile_names_keep_to_the_contract_and_carry_what_they_should() {
        let mut rng = StdRng::seed_from_u64(3);
        let names: Vec<String> = (0..2000).map(|_| hostile_name(&mut rng)).collect();
        assert!(names.iter().all(|n| n.chars().count() <= 200));
        for needle in ["\u{0}", "\r\n", "\u{85}", "\u{1b}", "\t", "\"", "\u{1F600}"] {
            assert!(names.iter().any(|n| n.contains(needle)), "{needle:?}");
        }
        for lead in ['=', '+', '-', '@', '\r', '\n'] {
            assert!(names.iter().any(|n| n.starts_with(lead)), "{lead:?}");
        }
        assert!(names.iter().any(String::is_empty));
        assert!(names.iter().any(|n| n.chars().count() == 200));
    }
}

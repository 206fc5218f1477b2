//! What a soak measured: the faults by kind, the kills by phase, the loud failures and the
//! repairs, the costs of point 3 (API requests against the minimum, accounts scored twice,
//! memory, the size of the state and output directories), and the checks made on them.

use std::collections::BTreeMap;

/// One day's measures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DayFigures {
    pub day: u32,
    pub business_date: String,
    /// `esg` processes started for the day (1 when nothing went wrong).
    pub processes: u32,
    pub kills: u32,
    /// Processes that ended non-zero with an alert.
    pub loud_failures: u32,
    /// Accounts the day had to score, by the oracle.
    pub to_score: u64,
    /// ESG API requests the simulator served for the day, and the least the day needed.
    pub requests: u64,
    pub minimum_requests: u64,
    /// Accounts handed out an analysis more than once.
    pub scored_twice: u64,
    /// The most of them the kills allow (in flight or not yet durable at each kill).
    pub scored_twice_allowed: u64,
    /// Peak resident set of the day's `esg` processes, KiB.
    pub peak_rss_kib: u64,
    pub state_bytes: u64,
    /// The state directory's entries (each store with its WAL, the audit directory, the
    /// delivery record), bytes.
    pub state_entries: BTreeMap<String, u64>,
    /// Active accounts of the day (rows of its file).
    pub active_accounts: u64,
    pub output_bytes: u64,
    pub delivered_bytes: u64,
    pub seconds: f64,
}

/// Everything a soak measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub seed: u64,
    pub days: u32,
    /// Faults injected, by kind (kills counted by the phase they hit).
    pub faults: BTreeMap<String, u64>,
    /// Faults planned that could not be injected (the disk faults without root).
    pub skipped: BTreeMap<String, u64>,
    /// Kills by the phase the job was in when it was killed.
    pub kills_by_phase: BTreeMap<String, u64>,
    /// Account changes made between days, by kind.
    pub changes: BTreeMap<String, u64>,
    /// Loud failures by the kinds of alert that came with them.
    pub loud_failures_by_alert: BTreeMap<String, u64>,
    /// Loud failures by the fault of their day.
    pub loud_failures_by_fault: BTreeMap<String, u64>,
    pub loud_failures: u64,
    /// Days that failed loudly and whose next run delivered the right file.
    pub repaired: u64,
    pub silent_wrong_files: u64,
    /// Days that failed loudly and that no run repaired.
    pub unrepaired: u64,
    /// Every other defect found: a failure without an alert, a day not repaired, calls
    /// without need, accounts scored twice beyond the kills' window, growth.
    pub defects: Vec<String>,
    /// The figures of point 3 over the whole soak.
    pub costs: Costs,
    pub per_day: Vec<DayFigures>,
}

/// The costs over the whole soak.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Costs {
    /// ESG requests served, and the least the days needed (one request per batch of the
    /// accounts each day had to score).
    pub requests: u64,
    pub minimum_requests: u64,
    /// Days whose requests were more than twice their minimum (plus one).
    pub days_over_twice_the_minimum: u64,
    /// Accounts the days had to score, and the days that had none (nothing changed).
    pub accounts_to_score: u64,
    pub days_without_scoring: u64,
    /// Accounts handed an analysis twice in a day, in all, and the most the kills allowed.
    pub scored_twice: u64,
    pub scored_twice_allowed: u64,
    /// Peak RSS of the `esg` processes: the mean over the first and the last quarter of the
    /// days, and the highest.
    pub rss_first_quarter_kib: u64,
    pub rss_last_quarter_kib: u64,
    pub rss_max_kib: u64,
    /// The largest size of each directory in each third of the days.
    pub state_bytes_by_third: [u64; 3],
    pub output_bytes_by_third: [u64; 3],
    pub delivered_bytes_by_third: [u64; 3],
    /// Wall time of the soak's days, seconds.
    pub seconds: f64,
}

impl Figures {
    /// Faults injected, all kinds.
    pub fn fault_count(&self) -> u64 {
        self.faults.values().sum()
    }

    /// The soak's last line.
    pub fn line(&self) -> String {
        format!(
            "days {}, faults {}, loud failures {}, repaired {}, silent wrong files {}",
            self.days,
            self.fault_count(),
            self.loud_failures,
            self.repaired,
            self.silent_wrong_files
        )
    }

    pub fn count(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_owned()).or_default() += 1;
    }

    /// Adds up the costs of the days.
    pub fn total_costs(&mut self) {
        let days = &self.per_day;
        let n = days.len();
        let c = &mut self.costs;
        for d in days {
            c.requests += d.requests;
            c.minimum_requests += d.minimum_requests;
            c.days_over_twice_the_minimum += u64::from(d.requests > 2 * d.minimum_requests + 1);
            c.accounts_to_score += d.to_score;
            c.days_without_scoring += u64::from(d.to_score == 0);
            c.scored_twice += d.scored_twice;
            c.scored_twice_allowed += d.scored_twice_allowed;
            c.rss_max_kib = c.rss_max_kib.max(d.peak_rss_kib);
            c.seconds += d.seconds;
        }
        let quarter = (n / 4).max(1).min(n);
        let mean = |d: &[DayFigures]| {
            d.iter().map(|d| d.peak_rss_kib).sum::<u64>() / d.len().max(1) as u64
        };
        c.rss_first_quarter_kib = mean(&days[..quarter]);
        c.rss_last_quarter_kib = mean(&days[n - quarter..]);
        let third = |i: usize, size: fn(&DayFigures) -> u64| {
            let (from, to) = (i * n / 3, (i + 1) * n / 3);
            days[from..to].iter().map(size).max().unwrap_or(0)
        };
        for i in 0..3 {
            c.state_bytes_by_third[i] = third(i, |d| d.state_bytes);
            c.output_bytes_by_third[i] = third(i, |d| d.output_bytes);
            c.delivered_bytes_by_third[i] = third(i, |d| d.delivered_bytes);
        }
    }

    /// The checks that need many days: memory flat over the days, the directories not growing
    /// without bound once retention applies. Adds a defect for each that fails.
    pub fn check_growth(&mut self) {
        let days = &self.per_day;
        let n = days.len();
        // Memory: the mean peak of the last quarter against the first (day 1 left out: a new
        // state has no history to read).
        if n >= 20 {
            let quarter = n / 4;
            let mean = |d: &[DayFigures]| {
                d.iter().map(|d| d.peak_rss_kib as f64).sum::<f64>() / d.len().max(1) as f64
            };
            let (first, last) = (mean(&days[1..=quarter]), mean(&days[n - quarter..]));
            if last > first * 1.5 + 4096.0 {
                self.defects.push(format!(
                    "memory grows: mean peak RSS {first:.0} KiB in the first quarter, {last:.0} KiB in the last"
                ));
            }
        }
        // Directories: once a retention window has passed, the largest size of the last third
        // must stay within a quarter of the middle third's. The output keeps 14 days (about 10
        // business days); the state keeps 60 (the audit segments).
        let mut check = |what: &str, window_days: usize, size: fn(&DayFigures) -> u64| {
            if n < 3 * window_days {
                return;
            }
            let third = n / 3;
            let max = |d: &[DayFigures]| d.iter().map(size).max().unwrap_or(0);
            let (middle, last) = (max(&days[third..2 * third]), max(&days[2 * third..]));
            if last as f64 > middle as f64 * 1.25 + 256.0 * 1024.0 {
                self.defects.push(format!(
                    "{what} grows: at most {middle} bytes in the middle third of the days, {last} in the last"
                ));
            }
        };
        check("the output directory", 10, |d| d.output_bytes);
        check("the delivery target", 10, |d| d.delivered_bytes);
        check("the state directory", 45, |d| d.state_bytes);
        // Each entry of the state on its own, so that one growing file is not hidden by the
        // others: its largest size in the last third against the middle third's.
        if n >= 3 * 45 {
            let names: Vec<String> = days[n - 1].state_entries.keys().cloned().collect();
            let third = n / 3;
            for name in names {
                let max = |d: &[DayFigures]| {
                    d.iter()
                        .filter_map(|d| d.state_entries.get(&name).copied())
                        .max()
                        .unwrap_or(0)
                };
                let (middle, last) = (max(&days[third..2 * third]), max(&days[2 * third..]));
                if last as f64 > middle as f64 * 1.25 + 64.0 * 1024.0 {
                    self.defects.push(format!(
                        "state/{name} grows: at most {middle} bytes in the middle third of the days, {last} in the last"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: u32, f: impl Fn(u32) -> DayFigures) -> Vec<DayFigures> {
        (1..=n).map(f).collect()
    }

    #[test]
    fn the_line_says_days_faults_failures_repairs_and_silent_wrong_files() {
        let mut f = Figures {
            days: 30,
            loud_failures: 4,
            repaired: 4,
            ..Figures::default()
        };
        Figures::count(&mut f.faults, "kill");
        Figures::count(&mut f.faults, "kill");
        Figures::count(&mut f.faults, "429_storm");
        assert_eq!(
            f.line(),
            "days 30, faults 3, loud failures 4, repaired 4, silent wrong files 0"
        );
    }

    #[test]
    fn growth_is_a_defect_flat_is_not() {
        let flat = |d: u32| DayFigures {
            day: d,
            peak_rss_kib: 50_000,
            state_bytes: 5_000_000,
            output_bytes: 100_000 * u64::from(d.min(10)),
            ..DayFigures::default()
        };
        let mut f = Figures {
            per_day: days(200, flat),
            ..Figures::default()
        };
        f.check_growth();
        assert!(f.defects.is_empty(), "{:?}", f.defects);
        let record = |d: u32| DayFigures {
            state_entries: [("deliveries.jsonl".to_owned(), 2_000 * u64::from(d))].into(),
            ..flat(d)
        };
        let mut f = Figures {
            per_day: days(200, record),
            ..Figures::default()
        };
        f.check_growth();
        assert_eq!(f.defects.len(), 1, "{:?}", f.defects);
        assert!(f.defects[0].contains("deliveries.jsonl"), "{:?}", f.defects);
        let growing = |d: u32| DayFigures {
            peak_rss_kib: 50_000 + 1000 * u64::from(d),
            state_bytes: 5_000_000 + 100_000 * u64::from(d),
            ..flat(d)
        };
        let mut f = Figures {
            per_day: days(200, growing),
            ..Figures::default()
        };
        f.check_growth();
        assert_eq!(f.defects.len(), 2, "{:?}", f.defects);
    }
}

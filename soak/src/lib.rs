//! esg-soak: the chaos soak of the daily ESG ratings job. It runs the real `esg` binary through
//! N consecutive business days against the simulator, with a seeded schedule of faults each
//! day, and judges every day against an independent oracle: either the delivered file is
//! exactly right, row by row, or the day failed loudly (a non-zero exit and an alert at the
//! soak's webhook) and the next run of the date repaired it. A wrong file delivered as a
//! success is a silent wrong file: the soak stops at the first one and keeps its inputs.
//!
//! - [`plan`]: the seeded schedule (dates, kills, faults, account changes, hostile names);
//! - [`oracle`]: what each day's file must be, from the simulator's truth;
//! - [`job`]: the `esg` processes, on the business day's clock, killed at a seeded moment;
//! - [`disk`], [`webhook`]: the output disk's faults and the alert receiver;
//! - [`figures`]: what was measured and the checks on costs and growth.
//!
//! The soak is a program (`esg-soak`, `ops/soak.sh`); it is a library too so that the test
//! suite runs its 30-day soak in-process (`tests/soak.rs`). Its errors are `anyhow`'s: any of
//! them ends the soak with the message, and none is handled.

pub mod disk;
pub mod figures;
pub mod job;
pub mod oracle;
pub mod plan;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use esg_simulator::{SimConfig, SimHandle, Status};

use figures::{DayFigures, Figures};
use plan::{Fault, Kill, Phase, Plan};

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Business days to run.
    pub days: u32,
    pub seed: u64,
    /// The `esg` binary.
    pub esg: PathBuf,
    /// Where everything goes (state, outputs, logs, the figures); it must not exist yet.
    pub dir: PathBuf,
    /// Accounts of the simulated firm on the first day.
    pub accounts: u64,
    /// The first business date.
    pub first_date: NaiveDate,
    /// Print one line per day.
    pub verbose: bool,
}

impl Options {
    /// The defaults: 60 accounts from Monday 4 January 2027, whose first months cross the
    /// March change to daylight-saving time.
    pub fn new(days: u32, seed: u64, esg: PathBuf, dir: PathBuf) -> Options {
        Options {
            days,
            seed,
            esg,
            dir,
            accounts: 60,
            first_date: NaiveDate::from_ymd_opt(2027, 1, 4).unwrap_or_default(),
            verbose: false,
        }
    }
}

/// Longest one `esg` process may take before the soak calls it hung.
const PROCESS_LIMIT: Duration = Duration::from_secs(120);

/// Most processes of one day (three kills, then repairs).
const MAX_PROCESSES: u32 = 8;

/// How often the soak looks at a running process.
const POLL: Duration = Duration::from_millis(2);

/// The simulated firm and vendor: stable per-account faults (refused, partial, out of
/// contract), no quota (the job's own limiter is the limit), the soak's stall length.
fn sim_config(options: &Options) -> SimConfig {
    SimConfig {
        seed: options.seed,
        accounts: options.accounts,
        inactive_share: 0.05,
        rate_limit_per_second: None,
        permanent_error_rate: 0.02,
        partial_rate: 0.05,
        out_of_contract_rate: 0.02,
        stall: Duration::from_secs(2),
        fault_retry_after: Duration::from_secs(1),
        today: Some(options.first_date),
        ..SimConfig::default()
    }
}

/// Every day fault off again (the account data and `today` stay).
fn quiet(c: &mut SimConfig) {
    let base = SimConfig::default();
    c.latency = Duration::ZERO;
    c.transient_error_rate = 0.0;
    c.timeout_rate = 0.0;
    c.rate_limited_first_attempt_rate = 0.0;
    c.batch_endpoint = true;
    c.malformed_record_rate = 0.0;
    c.duplicate_rate = 0.0;
    c.accounts_transient_error_rate = 0.0;
    c.invalid_utf8_record_rate = 0.0;
    c.lone_surrogate_record_rate = 0.0;
    c.wrong_type_record_rate = 0.0;
    c.page_token_cycle_after = 0;
    c.listing_hidden_share = 0.0;
    c.token_unavailable = false;
    c.token_delay = Duration::ZERO;
    c.page_delay = Duration::ZERO;
    c.page_token_ttl = base.page_token_ttl;
}

/// Faults that start at a moment of the run rather than with it.
#[derive(Debug, Default)]
struct Pending {
    /// Once scoring starts: an outage, a storm, the disk filling up.
    outage: Option<Duration>,
    storm: Option<Duration>,
    fill_disk: bool,
    /// After the first listing page: every page token expires.
    expire_tokens: bool,
}

/// What a soak came to.
#[derive(Debug)]
pub struct Outcome {
    pub figures: Figures,
    /// Where its inputs and outputs are.
    pub dir: PathBuf,
}

impl Outcome {
    /// True when the soak found nothing wrong.
    pub fn passed(&self) -> bool {
        self.figures.silent_wrong_files == 0 && self.figures.defects.is_empty()
    }
}

struct Soak {
    options: Options,
    plan: Plan,
    sim: SimHandle,
    alerts: webhook::Receiver,
    disk: disk::OutputDisk,
    faketime: PathBuf,
    config_path: PathBuf,
    state: PathBuf,
    delivered: PathBuf,
    logs: PathBuf,
    oracle: oracle::Oracle,
    figures: Figures,
}

/// Runs the soak. `Err` only when the soak itself could not run (no simulator, no
/// libfaketime, a disk fault that could not be set); what it found about the job is in the
/// outcome.
pub async fn run(options: Options) -> Result<Outcome> {
    if options.dir.exists() {
        bail!("{} exists already", options.dir.display());
    }
    std::fs::create_dir_all(&options.dir)?;
    let dir = options.dir.clone();
    let faketime = job::libfaketime()?;
    let sim = esg_simulator::start(sim_config(&options), "127.0.0.1:0".parse()?)
        .await
        .context("starting the simulator")?;
    let alerts = webhook::Receiver::start().await?;
    let disk = disk::OutputDisk::new(&dir.join("out"))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let delivered = dir.join("delivered");
    std::fs::create_dir_all(&delivered)?;
    let mut soak = Soak {
        plan: Plan {
            seed: options.seed,
            first_date: options.first_date,
        },
        figures: Figures {
            seed: options.seed,
            ..Figures::default()
        },
        options,
        sim,
        alerts,
        disk,
        faketime,
        config_path: dir.join("esg.toml"),
        state: dir.join("state"),
        delivered,
        logs,
        oracle: oracle::Oracle::default(),
    };
    let result = soak.days().await;
    soak.sim.shutdown();
    result?;
    soak.figures.total_costs();
    soak.figures.check_growth();
    if !soak.figures.defects.is_empty() || soak.figures.silent_wrong_files > 0 {
        // The output disk goes with the soak: keep a copy of what it held.
        keep_copy(&soak.disk.dir, &dir.join("out-at-end"))?;
    }
    let text = serde_json::to_string_pretty(&soak.figures)?;
    std::fs::write(dir.join("figures.json"), text)?;
    Ok(Outcome {
        figures: soak.figures,
        dir,
    })
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes of each entry of the state directory: a store with its `-wal` and `-shm`, a
/// directory with what is under it.
fn state_entries(dir: &Path) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return sizes;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let key = name
            .strip_suffix("-wal")
            .or_else(|| name.strip_suffix("-shm"))
            .unwrap_or(&name)
            .to_owned();
        let bytes = match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        };
        *sizes.entry(key).or_default() += bytes;
    }
    sizes
}

/// Copies the files of `from` (not its subdirectories' files) into `to`.
fn keep_copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)?.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn csv_name(date: NaiveDate) -> String {
    format!("FirmESGRatings_{}.csv", date.format("%Y%m%d"))
}

impl Soak {
    async fn days(&mut self) -> Result<()> {
        for n in 1..=self.options.days {
            let day = self.plan.day(n);
            let figures = self.day(&day).await?;
            if self.options.verbose {
                eprintln!(
                    "day {n} {}: {} processes, {} kills, {} loud, faults {:?}, {:.1}s",
                    day.business_date,
                    figures.processes,
                    figures.kills,
                    figures.loud_failures,
                    day.faults.iter().map(Fault::name).collect::<Vec<_>>(),
                    figures.seconds
                );
            }
            self.figures.per_day.push(figures);
            self.figures.days = n;
            if self.figures.silent_wrong_files > 0 || self.figures.unrepaired > 0 {
                // The state went past what the oracle knows: the days after would only repeat it.
                break;
            }
        }
        Ok(())
    }

    /// The account changes before a day, against the accounts as they are.
    fn change_accounts(&mut self, n: u32, date: NaiveDate) {
        let truth = self.sim.truth(date);
        let ids = |status: Status| -> Vec<String> {
            truth
                .accounts
                .iter()
                .filter(|a| a.status == status)
                .map(|a| a.account_id.clone())
                .collect()
        };
        let target = (self.options.accounts as usize * 19).div_ceil(20);
        let changes = self
            .plan
            .changes(n, &ids(Status::Active), &ids(Status::Closed), target);
        let tally = &mut self.figures.changes;
        for id in &changes.touched {
            self.sim.touch(id);
            Figures::count(tally, "changed");
        }
        for id in &changes.closed {
            self.sim.set_status(id, "CLOSED");
            Figures::count(tally, "closed");
        }
        for id in &changes.reopened {
            self.sim.set_status(id, "ACTIVE");
            Figures::count(tally, "reopened");
        }
        for (id, name) in &changes.renamed {
            self.sim.rename(id, name);
            Figures::count(tally, "renamed");
        }
        if changes.added > 0 {
            self.sim.add_accounts(changes.added);
            *tally.entry("new".to_owned()).or_default() += changes.added;
        }
        if changes.rerate {
            self.sim.rerate();
            Figures::count(tally, "vendor_rerate");
        }
    }

    /// Applies a day's faults; those of a later moment go to `pending`.
    fn inject(&mut self, faults: &[Fault], pending: &mut Pending) -> Result<()> {
        for fault in faults {
            if fault.needs_root() && !self.disk.faults_possible() {
                Figures::count(&mut self.figures.skipped, fault.name());
                continue;
            }
            // A fault of a later moment is counted when it comes (a day with nothing to score
            // never starts its outage).
            if !matches!(
                fault,
                Fault::VendorOutage { .. }
                    | Fault::RateLimitStorm { .. }
                    | Fault::DiskFillsUp
                    | Fault::PageTokensExpired
            ) {
                Figures::count(&mut self.figures.faults, fault.name());
            }
            match *fault {
                Fault::VendorErrors { rate } => self.sim.update(|c| c.transient_error_rate = rate),
                Fault::VendorOutage { millis } => {
                    pending.outage = Some(Duration::from_millis(millis))
                }
                Fault::RateLimitStorm { seconds } => {
                    pending.storm = Some(Duration::from_secs(seconds))
                }
                Fault::FirstAttempt429 { rate } => self
                    .sim
                    .update(|c| c.rate_limited_first_attempt_rate = rate),
                Fault::LatencySpike { millis } => self
                    .sim
                    .update(|c| c.latency = Duration::from_millis(millis)),
                Fault::Stalls { rate } => self.sim.update(|c| c.timeout_rate = rate),
                Fault::NoBatchEndpoint => self.sim.update(|c| c.batch_endpoint = false),
                Fault::TokenOutage => self.sim.update(|c| c.token_unavailable = true),
                Fault::TokenHang => self.sim.update(|c| c.token_delay = Duration::from_secs(3)),
                Fault::AccountsErrors { rate } => {
                    self.sim.update(|c| c.accounts_transient_error_rate = rate)
                }
                Fault::AccountsOutage => self.sim.update(|c| c.accounts_transient_error_rate = 1.0),
                Fault::GoneStorm => self
                    .sim
                    .update(|c| c.page_token_ttl = Duration::from_millis(1)),
                Fault::PageTokensExpired => pending.expire_tokens = true,
                Fault::CyclingListing => self.sim.update(|c| c.page_token_cycle_after = 3),
                Fault::HangingListing => self.sim.update(|c| c.page_delay = Duration::from_secs(3)),
                Fault::ListingNoise => self.sim.update(|c| {
                    c.duplicate_rate = 0.1;
                    c.malformed_record_rate = 0.05;
                    c.invalid_utf8_record_rate = 0.02;
                    c.lone_surrogate_record_rate = 0.02;
                    c.wrong_type_record_rate = 0.02;
                }),
                Fault::EmptyListing => self.sim.update(|c| c.listing_hidden_share = 1.0),
                Fault::CollapsedListing => self.sim.update(|c| c.listing_hidden_share = 0.5),
                Fault::FullDisk => self.disk.fill()?,
                Fault::DiskFillsUp => pending.fill_disk = true,
                Fault::ReadOnlyDisk => self.disk.read_only(true)?,
            }
        }
        Ok(())
    }

    /// Takes every fault of the day away: what the operators do before they run the day again.
    fn heal(&mut self, pending: &mut Pending) -> Result<()> {
        self.sim.update(quiet);
        self.sim.storm(Duration::ZERO);
        self.sim.outage(Duration::ZERO);
        *pending = Pending::default();
        self.disk.heal()
    }

    async fn day(&mut self, day: &plan::Day) -> Result<DayFigures> {
        let began = Instant::now();
        let date = day.business_date;
        self.change_accounts(day.number, date);
        self.sim.update(|c| c.today = Some(date));
        let truth = self.sim.truth(date);
        let expected = self.oracle.expect(date, &truth, day.full);
        let to_score: Vec<String> = expected.to_score().map(str::to_owned).collect();
        self.sim.reset_call_counts();
        let stats_before = self.sim.stats();
        let batch_size = if day.single_calls { 1 } else { job::BATCH_SIZE };
        std::fs::write(
            &self.config_path,
            job::config(&job::Settings {
                sim_url: &self.sim.url(),
                webhook: &self.alerts.url,
                out: &self.disk.dir,
                state: &self.state,
                delivered: &self.delivered,
                batch_size,
            }),
        )?;
        let mut pending = Pending::default();
        self.inject(&day.faults, &mut pending)?;
        if day.kills.iter().any(|k| k.phase == Phase::Listing) {
            // Pages that take a moment, so a kill can land between two of them.
            self.sim
                .update(|c| c.page_delay = c.page_delay.max(Duration::from_millis(25)));
        }
        let mut figures = DayFigures {
            day: day.number,
            business_date: date.to_string(),
            to_score: to_score.len() as u64,
            ..DayFigures::default()
        };
        let mut kills: Vec<Kill> = day.kills.clone();
        kills.reverse();
        let log = self.logs.join(format!("day-{:04}-{date}.log", day.number));
        let mut last_exit = None;
        let mut loud_today = 0;
        while figures.processes < MAX_PROCESSES {
            figures.processes += 1;
            let clock = job::day_start(date)
                + chrono::Duration::from_std(began.elapsed()).unwrap_or_default();
            let alerts_before = self.alerts.count();
            let mut process = job::Process::start(
                &self.options.esg,
                &self.config_path,
                date,
                day.full,
                clock,
                &self.faketime,
                &log,
            )?;
            let kill = kills.pop();
            let ended = self
                .watch(&mut process, kill, &to_score, &mut pending, date)
                .await?;
            figures.peak_rss_kib = figures.peak_rss_kib.max(process.peak_rss_kib);
            let code = match ended {
                Ended::Hung => {
                    // Nothing waits forever (DESIGN section 3): a day whose run hangs stops the
                    // soak with its inputs.
                    self.figures.unrepaired += 1;
                    self.figures.defects.push(format!(
                        "day {} ({date}): esg run --once did not end within {PROCESS_LIMIT:?}; replay: ops/soak.sh --days {} --seed {} (log {})",
                        day.number,
                        day.number,
                        self.options.seed,
                        log.display()
                    ));
                    figures.seconds = began.elapsed().as_secs_f64();
                    return Ok(figures);
                }
                Ended::Killed(phase) => {
                    figures.kills += 1;
                    let name = format!("{phase:?}").to_lowercase();
                    Figures::count(&mut self.figures.kills_by_phase, &name);
                    Figures::count(&mut self.figures.faults, &format!("kill_{name}"));
                    continue;
                }
                Ended::Exited(code) => code,
            };
            last_exit = Some(code);
            if code == Some(0) {
                break;
            }
            let alerts = self.alerts.since(alerts_before);
            let firing: Vec<&webhook::Received> =
                alerts.iter().filter(|a| a.status != "resolved").collect();
            if firing.is_empty() {
                self.figures.defects.push(format!(
                    "day {} ({date}): esg exited {code:?} without an alert (log {})",
                    day.number,
                    log.display()
                ));
            } else {
                loud_today += 1;
                figures.loud_failures += 1;
                self.figures.loud_failures += 1;
                for a in &firing {
                    Figures::count(&mut self.figures.loud_failures_by_alert, &a.kind);
                }
                let cause = day
                    .faults
                    .iter()
                    .map(Fault::name)
                    .collect::<Vec<_>>()
                    .join("+");
                Figures::count(
                    &mut self.figures.loud_failures_by_fault,
                    if cause.is_empty() { "none" } else { &cause },
                );
            }
            // The operators fix what is wrong and run the day again.
            self.heal(&mut pending)?;
        }
        let answers = self.sim.answers();
        self.judge(day, &expected, &answers, last_exit, loud_today, &log)?;
        self.costs(day, &to_score, &answers, batch_size, &mut figures);
        self.heal(&mut pending)?;
        let stats = self.sim.stats();
        figures.requests = stats.esg_requests - stats_before.esg_requests;
        figures.minimum_requests = (to_score.len() as u64).div_ceil(u64::from(batch_size));
        figures.state_bytes = du(&self.state);
        figures.state_entries = state_entries(&self.state);
        figures.active_accounts = expected.accounts.len() as u64;
        figures.output_bytes = du(&self.disk.dir);
        figures.delivered_bytes = du(&self.delivered);
        figures.seconds = began.elapsed().as_secs_f64();
        Ok(figures)
    }

    /// Judges the delivered file of the day.
    fn judge(
        &mut self,
        day: &plan::Day,
        expected: &oracle::Day,
        answers: &BTreeMap<String, esg_simulator::Answers>,
        last_exit: Option<Option<i32>>,
        loud_today: u32,
        log: &Path,
    ) -> Result<()> {
        let date = day.business_date;
        let name = csv_name(date);
        let delivered = std::fs::read(self.delivered.join(&name));
        let local = std::fs::read(self.disk.dir.join(&name));
        let success = last_exit == Some(Some(0));
        let verdict = match &delivered {
            Ok(bytes) => {
                let mut v = self.oracle.judge(expected, answers, bytes);
                if v.is_ok() && local.as_ref().ok() != Some(bytes) {
                    v = Err(oracle::Wrong(vec![
                        "the output directory's file is not the delivered one".to_owned(),
                    ]));
                }
                v
            }
            Err(e) => Err(oracle::Wrong(vec![format!("no delivered file: {e}")])),
        };
        match verdict {
            Ok(()) => {
                if loud_today > 0 {
                    self.figures.repaired += 1;
                }
            }
            Err(wrong) if success => {
                self.figures.silent_wrong_files += 1;
                let report = format!(
                    "silent wrong file: day {} ({date}), seed {}, exit 0\nreplay: ops/soak.sh --days {} --seed {}\nlog: {}\n{}\n",
                    day.number,
                    self.options.seed,
                    day.number,
                    self.options.seed,
                    log.display(),
                    wrong.0.join("\n")
                );
                std::fs::write(self.options.dir.join("silent-wrong-file.txt"), &report)?;
                std::fs::write(
                    self.options.dir.join("truth.json"),
                    serde_json::to_string_pretty(&self.sim.truth(date))?,
                )?;
                self.figures.defects.push(report);
            }
            Err(wrong) => {
                self.figures.unrepaired += 1;
                self.figures.defects.push(format!(
                    "day {} ({date}): failed loudly and not repaired in {MAX_PROCESSES} runs (last exit {last_exit:?}): {}",
                    day.number,
                    wrong.0.first().cloned().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }

    /// The costs: no account called that the day did not need, none scored twice beyond the
    /// window of the day's kills.
    fn costs(
        &mut self,
        day: &plan::Day,
        to_score: &[String],
        answers: &BTreeMap<String, esg_simulator::Answers>,
        batch_size: u32,
        figures: &mut DayFigures,
    ) {
        let needed: std::collections::BTreeSet<&str> =
            to_score.iter().map(String::as_str).collect();
        let unneeded: Vec<&String> = answers
            .keys()
            .filter(|id| !needed.contains(id.as_str()))
            .collect();
        if !unneeded.is_empty() {
            self.figures.defects.push(format!(
                "day {} ({}): {} accounts called that the day did not need to score: {:?}",
                day.number,
                day.business_date,
                unneeded.len(),
                unneeded.iter().take(10).collect::<Vec<_>>()
            ));
        }
        figures.scored_twice = answers.values().filter(|a| a.analyses >= 2).count() as u64;
        figures.scored_twice_allowed =
            u64::from(figures.kills) * u64::from(job::in_flight_window(batch_size));
        if figures.scored_twice > figures.scored_twice_allowed {
            self.figures.defects.push(format!(
                "day {} ({}): {} accounts scored twice, at most {} for {} kills",
                day.number,
                day.business_date,
                figures.scored_twice,
                figures.scored_twice_allowed,
                figures.kills
            ));
        }
    }

    /// Watches a process to its end, firing the faults of a later moment and the planned
    /// kill. The kill is counted in the phase the job is found in when it comes.
    async fn watch(
        &mut self,
        process: &mut job::Process,
        kill: Option<Kill>,
        to_score: &[String],
        pending: &mut Pending,
        date: NaiveDate,
    ) -> Result<Ended> {
        let started = Instant::now();
        let base = self.sim.stats();
        let mut polls: u64 = 0;
        let mut scored_at: Option<Instant> = None;
        loop {
            polls += 1;
            if polls % 10 == 1 {
                process.sample_rss();
            }
            if let Some(status) = process.try_wait()? {
                return Ok(Ended::Exited(status.code()));
            }
            if started.elapsed() > PROCESS_LIMIT {
                process.kill()?;
                return Ok(Ended::Hung);
            }
            let stats = self.sim.stats();
            let requests = stats.esg_requests - base.esg_requests;
            if requests > 0 {
                if let Some(d) = pending.outage.take() {
                    self.sim.outage(d);
                    Figures::count(&mut self.figures.faults, "vendor_5xx_burst");
                }
                if let Some(d) = pending.storm.take() {
                    self.sim.storm(d);
                    Figures::count(&mut self.figures.faults, "429_storm");
                }
                if std::mem::take(&mut pending.fill_disk) {
                    self.disk.fill()?;
                    Figures::count(&mut self.figures.faults, "disk_fills_up");
                }
            }
            if pending.expire_tokens && stats.account_pages > base.account_pages {
                pending.expire_tokens = false;
                self.sim.expire_page_tokens();
                Figures::count(&mut self.figures.faults, "page_tokens_expired");
            }
            let Some(kill) = kill else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let said = process.said();
            if scored_at.is_none() && said.published && polls.is_multiple_of(5) {
                let answers = self.sim.answers();
                if to_score.iter().all(|id| answers.contains_key(id)) {
                    scored_at = Some(Instant::now());
                }
            }
            let now = match kill.phase {
                Phase::Listing => {
                    said.planned
                        || (said.preflight_passed
                            && stats.account_pages - base.account_pages >= u64::from(kill.at))
                }
                Phase::Scoring => {
                    said.assembled || (said.planned && requests >= u64::from(kill.at))
                }
                Phase::Assembling => {
                    said.assembled
                        || scored_at.is_some_and(|t| {
                            t.elapsed() >= Duration::from_millis(u64::from(kill.at))
                        })
                }
                // The files go out one after the other, then the run's facts are committed:
                // the first of them on disk is the moment.
                Phase::Writing => said.assembled || self.writing(date),
                Phase::Delivering => said
                    .assembled_at
                    .is_some_and(|t| t.elapsed() >= Duration::from_millis(u64::from(kill.at))),
            };
            if now {
                let phase = self.phase_now(&said, scored_at.is_some(), date);
                process.kill()?;
                return Ok(Ended::Killed(phase));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether a file of the day (or a temporary one) is in the output directory.
    fn writing(&self, date: NaiveDate) -> bool {
        let day = format!("FirmESGRatings_{}", date.format("%Y%m%d"));
        std::fs::read_dir(&self.disk.dir).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_start_matches('.')
                    .starts_with(&day)
            })
        })
    }

    /// The phase the job is in, from its log and the files on disk.
    fn phase_now(&self, said: &job::Said, scored: bool, date: NaiveDate) -> Phase {
        let name = csv_name(date);
        if !said.planned {
            Phase::Listing
        } else if said.assembled || self.delivered.join(&name).exists() {
            Phase::Delivering
        } else if self.writing(date) {
            Phase::Writing
        } else if scored {
            Phase::Assembling
        } else {
            Phase::Scoring
        }
    }
}

/// How a watched process ended.
enum Ended {
    Killed(Phase),
    Exited(Option<i32>),
    /// Killed by the soak after [`PROCESS_LIMIT`].
    Hung,
}

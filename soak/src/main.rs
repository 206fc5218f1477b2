//! `esg-soak`: runs the chaos soak and prints its last line (see the crate's README).
//! `ops/soak.sh` builds the release binaries and starts it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

/// N consecutive business days of the real `esg` binary against the simulator, with seeded
/// faults, each day judged by an independent oracle. Ends with one line: days, faults, loud
/// failures, repaired, silent wrong files. Exit 0 when nothing was found, 1 otherwise.
#[derive(Parser)]
#[command(name = "esg-soak", max_term_width = 100)]
struct Args {
    /// Business days to run. Day K of a soak is the same whatever N: `--days K` with the same
    /// seed replays it.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Seed of the whole schedule: faults, kills, account changes, names, data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The esg binary; default the one beside this binary.
    #[arg(long)]
    esg: Option<PathBuf>,
    /// Where state, outputs, logs and figures go (must not exist); default a new directory
    /// under the system's temporary directory, removed after a soak that found nothing
    /// unless --keep.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory after a soak that found nothing.
    #[arg(long)]
    keep: bool,
    /// Accounts of the simulated firm on the first day.
    #[arg(long, default_value_t = 60)]
    accounts: u64,
    /// The first business date.
    #[arg(long, value_name = "YYYY-MM-DD", default_value = "2027-01-04")]
    first_date: chrono::NaiveDate,
    /// One line per day on stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("esg-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    let esg = match args.esg {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the directory of esg-soak")?
            .join("esg"),
    };
    let (dir, chosen) = match args.dir {
        Some(d) => (d, true),
        None => (
            std::env::temp_dir().join(format!("esg-soak-{}-{}", args.seed, std::process::id())),
            false,
        ),
    };
    let mut options = esg_soak::Options::new(args.days, args.seed, esg, dir);
    options.accounts = args.accounts;
    options.first_date = args.first_date;
    options.verbose = args.verbose;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(esg_soak::run(options))?;
    let f = &outcome.figures;
    for defect in &f.defects {
        eprintln!("DEFECT: {defect}");
    }
    let c = &f.costs;
    eprintln!("faults by kind: {:?}", f.faults);
    eprintln!("kills by phase: {:?}", f.kills_by_phase);
    eprintln!("account changes: {:?}", f.changes);
    eprintln!("loud failures by alert: {:?}", f.loud_failures_by_alert);
    eprintln!(
        "API requests {} against a minimum of {} ({} days over twice it); {} accounts to score, {} days with none",
        c.requests, c.minimum_requests, c.days_over_twice_the_minimum, c.accounts_to_score, c.days_without_scoring
    );
    eprintln!(
        "accounts scored twice {} (the kills allowed {}); peak RSS {} KiB in the first quarter, {} KiB in the last, {} KiB at most",
        c.scored_twice, c.scored_twice_allowed, c.rss_first_quarter_kib, c.rss_last_quarter_kib, c.rss_max_kib
    );
    eprintln!(
        "largest size by third of the days: state {:?}, output {:?}, delivered {:?} bytes",
        c.state_bytes_by_third, c.output_bytes_by_third, c.delivered_bytes_by_third
    );
    eprintln!(
        "{:.0} s; figures in {}",
        started.elapsed().as_secs_f64(),
        if outcome.passed() && !args.keep && !chosen {
            "(removed: --keep to keep them)".to_owned()
        } else {
            outcome.dir.join("figures.json").display().to_string()
        }
    );
    println!("{}", f.line());
    let passed = outcome.passed();
    if passed && !args.keep && !chosen {
        std::fs::remove_dir_all(&outcome.dir)?;
    }
    Ok(passed)
}

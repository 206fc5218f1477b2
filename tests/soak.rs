//! The chaos soak of CI: 30 business days of the real binary against the simulator with seeded
//! faults (kills in every phase, vendor and account-system outages, 429 storms, hostile names,
//! a full and a read-only output disk as root), across the March change to daylight-saving
//! time, each day judged by the soak's independent oracle. No day may deliver a wrong file as
//! a success, every failure must be loud and repaired by the next run, and the costs must hold
//! (see soak/README.md). The 1,000-day soak is docs/reliability.md's.

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_business_days_of_faults_deliver_no_silent_wrong_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Seed 2 from 15 February 2027: kills in all five phases, a full and a read-only output
    // disk, outages of the token endpoint and the account system, the March change to
    // daylight-saving time.
    let mut options = esg_soak::Options::new(
        30,
        2,
        PathBuf::from(env!("CARGO_BIN_EXE_esg")),
        tmp.path().join("soak"),
    );
    options.first_date = "2027-02-15".parse().expect("date");
    options.verbose = true;
    let started = std::time::Instant::now();
    let outcome = esg_soak::run(options).await.expect("the soak runs");
    let f = &outcome.figures;
    println!("{}", f.line());
    println!(
        "{:.0} s; faults {:?}; kills by phase {:?}",
        started.elapsed().as_secs_f64(),
        f.faults,
        f.kills_by_phase
    );
    if !outcome.passed() {
        let kept = tmp.keep();
        panic!(
            "the soak found {} silent wrong files and these defects (inputs kept in {}):\n{}",
            f.silent_wrong_files,
            kept.display(),
            f.defects.join("\n")
        );
    }
    assert_eq!(f.days, 30);
    assert!(f.fault_count() > 30, "{:?}", f.faults);
}

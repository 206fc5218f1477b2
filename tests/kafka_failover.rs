//! A three-broker KRaft cluster (started by `ops/services/kafka.sh`) loses a broker mid-run:
//! the run still completes, with the same file as an undisturbed run.

mod common;

use common::kafka::{deterministic_faults, root, services, set_job_rate, unique, use_kafka};
use common::*;
use esg::runner::Runner;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DAY: &str = "2026-11-23";

/// Three brokers of their own (own directory and ports), stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    bootstrap: String,
}

fn kafka_sh(args: &[&str], dir: &PathBuf) -> std::process::Output {
    Command::new(root().join("ops/services/kafka.sh"))
        .args(args)
        .args(["--nodes", "3", "--dir"])
        .arg(dir)
        .output()
        .expect("kafka.sh runs")
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let out = kafka_sh(&["start", "--port", "29092"], &path);
        assert!(
            out.status.success(),
            "3-node cluster did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
            .expect("KAFKA_BOOTSTRAP")
            .to_owned();
        Cluster { dir, bootstrap }
    }

    fn kill_node(&self, n: u32) {
        let out = kafka_sh(
            &["kill-node", &n.to_string()],
            &self.dir.path().to_path_buf(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = kafka_sh(&["stop"], &self.dir.path().to_path_buf());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_completes_when_a_broker_of_three_dies_mid_run() {
    let reference = World::start(deterministic_faults(5), "").await;
    set_job_rate(&reference.config_path, 250);
    Runner::open(reference.config(), esg_assembler::system_clock())
        .await
        .expect("opens")
        .run_daily(date(DAY), false, CancellationToken::new(), |_| {})
        .await
        .expect("reference run");

    let cluster = Cluster::start();
    let world = World::start(deterministic_faults(5), "").await;
    set_job_rate(&world.config_path, 250);
    let ns = unique("failover");
    use_kafka(
        &world.config_path,
        &cluster.bootstrap,
        &services().registry,
        &ns,
    );
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    std::fs::write(
        &world.config_path,
        text.replace("[kafka]\n", "[kafka]\nreplication_factor = 3\n"),
    )
    .expect("config");

    let config = world.config();
    // The runner first: it creates the topics the services then find.
    let runner = Runner::open(config.clone(), esg_assembler::system_clock())
        .await
        .expect("opens");
    let services = common::kafka::InProcess::start(&config);
    let run = tokio::spawn(async move {
        runner
            .run_daily(date(DAY), false, CancellationToken::new(), |_| {})
            .await
    });
    let total = active_ids(&world.sim).await.len() as u64;
    let started = Instant::now();
    while world.sim.stats().esg_requests < total / 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "run did not start"
        );
        assert!(!run.is_finished(), "run ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first node: the one every client bootstraps from first, and a leader of partitions.
    cluster.kill_node(1);
    let outcome = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the run completes within 4 minutes after the failover")
        .expect("task")
        .expect("run completes");
    services.stop().await;
    assert!(outcome.completed.is_some_and(|c| !c.output_file.is_empty()));

    let names = esg_assembler::output::file_names(date(DAY));
    let expected = std::fs::read(reference.out().join(&names.csv)).expect("reference");
    let got = std::fs::read(world.out().join(&names.csv)).expect("file");
    assert!(
        expected == got,
        "the file after a broker failure differs from an undisturbed run"
    );
}

//! The real Kafka broker and schema registry of the Kafka-mode tests.
//!
//! Where they come from, first match wins:
//! 1. `ESG_TEST_KAFKA_BOOTSTRAP` and `ESG_TEST_SCHEMA_REGISTRY_URL`: services already running
//!    (the test command `ops/test-all.sh` starts them with `ops/services/up.sh`);
//! 2. a Docker engine (`docker info` answers): containers started with testcontainers;
//! 3. otherwise the project's own scripts: `ops/services/up.sh` (Kafka and Apicurio from Maven
//!    Central, run with `java`).
//!
//! There is no fallback to skipping: a Kafka test without a broker fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Services {
    pub bootstrap: String,
    pub registry: String,
    /// The brokers' TLS listener (mutual TLS) and the directory of its test CA (`ca.pem`) and
    /// client certificate (`client.pem`, `client.key`); the project's services only.
    pub tls: Option<KafkaTls>,
    /// The brokers' `log.dirs`, where the topics' partition directories are
    /// (`ESG_TEST_KAFKA_LOG_DIRS`, comma separated, or up.sh's `KAFKA_LOG_DIRS`); `None` for
    /// containers, whose disks the tests do not see.
    pub log_dirs: Option<Vec<PathBuf>>,
}

fn split_dirs(list: &str) -> Vec<PathBuf> {
    list.split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| PathBuf::from(d.trim()))
        .collect()
}

pub struct KafkaTls {
    pub bootstrap: String,
    pub dir: PathBuf,
}

static SERVICES: OnceLock<Services> = OnceLock::new();

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The broker and the registry, started on first use.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        if let (Ok(bootstrap), Ok(registry)) = (
            std::env::var("ESG_TEST_KAFKA_BOOTSTRAP"),
            std::env::var("ESG_TEST_SCHEMA_REGISTRY_URL"),
        ) {
            let tls = match (
                std::env::var("ESG_TEST_KAFKA_SSL_BOOTSTRAP"),
                std::env::var("ESG_TEST_KAFKA_TLS_DIR"),
            ) {
                (Ok(bootstrap), Ok(dir)) => Some(KafkaTls {
                    bootstrap,
                    dir: dir.into(),
                }),
                _ => None,
            };
            let log_dirs = std::env::var("ESG_TEST_KAFKA_LOG_DIRS")
                .ok()
                .map(|l| split_dirs(&l));
            return Services {
                bootstrap,
                registry,
                tls,
                log_dirs,
            };
        }
        if docker_available() {
            return containers::start();
        }
        let out = Command::new(root().join("ops/services/up.sh"))
            .output()
            .expect("ops/services/up.sh runs");
        assert!(
            out.status.success(),
            "ops/services/up.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("up.sh printed no {name}: {stdout}"))
                .to_owned()
        };
        Services {
            bootstrap: var("KAFKA_BOOTSTRAP"),
            registry: var("SCHEMA_REGISTRY_URL"),
            tls: Some(KafkaTls {
                bootstrap: var("KAFKA_SSL_BOOTSTRAP"),
                dir: var("KAFKA_TLS_DIR").into(),
            }),
            log_dirs: Some(split_dirs(&var("KAFKA_LOG_DIRS"))),
        }
    })
}

fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh namespace for one test: topic prefix and scorer group.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("t{}-{name}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Rewrites a World's configuration for Kafka (`[bus] kind`, prefix, scorer group, `[kafka]`).
pub fn use_kafka(config_path: &Path, bootstrap: &str, registry: &str, ns: &str) {
    let text = std::fs::read_to_string(config_path).expect("config");
    let mut out = String::new();
    let mut bus_seen = false;
    let mut scorer_seen = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[bus]" {
            bus_seen = true;
            out.push_str(&format!("kind = \"kafka\"\ntopic_prefix = \"{ns}.\"\n"));
        }
        if line.trim() == "[scorer]" {
            scorer_seen = true;
            out.push_str(&format!("group = \"{ns}-scorer\"\n"));
        }
    }
    if !bus_seen {
        out.push_str(&format!(
            "[bus]\nkind = \"kafka\"\ntopic_prefix = \"{ns}.\"\n"
        ));
    }
    if !scorer_seen {
        out.push_str(&format!("[scorer]\ngroup = \"{ns}-scorer\"\n"));
    }
    out.push_str(&format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\nsession_timeout = \"6s\"\n[kafka.schema_registry]\nurl = \"{registry}\"\n"
    ));
    std::fs::write(config_path, out).expect("config");
}

mod containers {
    //! Where Docker is present: Kafka and Apicurio Registry as containers.
    use super::Services;
    use std::sync::OnceLock;
    use testcontainers_modules::kafka::apache::{Kafka, KAFKA_PORT};
    use testcontainers_modules::testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, GenericImage, ImageExt};

    struct Running {
        _kafka: Container<Kafka>,
        _registry: Container<GenericImage>,
    }

    static RUNNING: OnceLock<Running> = OnceLock::new();

    pub fn start() -> Services {
        let kafka = Kafka::default()
            .with_tag("4.1.0")
            .start()
            .expect("Kafka container starts");
        let registry = GenericImage::new("apicurio/apicurio-registry", "3.0.9")
            .with_exposed_port(8080.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Installed features"))
            .start()
            .expect("Apicurio container starts");
        let bootstrap = format!(
            "127.0.0.1:{}",
            kafka
                .get_host_port_ipv4(KAFKA_PORT)
                .expect("Kafka port mapped")
        );
        let url = format!(
            "http://127.0.0.1:{}/apis/ccompat/v7",
            registry
                .get_host_port_ipv4(8080.tcp())
                .expect("registry port mapped")
        );
        let _ = RUNNING.set(Running {
            _kafka: kafka,
            _registry: registry,
        });
        Services {
            bootstrap,
            registry: url,
            tls: None,
            log_dirs: None,
        }
    }
}

/// A day with deterministic faults (permanent refusals, partial answers) for runs whose file is
/// compared byte for byte with an undisturbed run of the same seed.
pub fn deterministic_faults(seed: u64) -> esg_simulator::SimConfig {
    esg_simulator::SimConfig {
        accounts: 2000,
        seed,
        latency: std::time::Duration::from_millis(10),
        rate_limit_per_second: None,
        permanent_error_rate: 0.02,
        partial_rate: 0.03,
        ..Default::default()
    }
}

/// Sets the job's rate limit and single calls (one request per account), so that a run lasts
/// long enough to be disturbed mid-way, at a point counted in requests.
pub fn set_job_rate(config: &Path, per_second: u32) {
    let text = std::fs::read_to_string(config).expect("config");
    std::fs::write(
        config,
        text.replace(
            "rate_limit_per_second = 1000",
            &format!("rate_limit_per_second = {per_second}\nbatch_size = 1"),
        ),
    )
    .expect("config");
}

/// The Kafka-mode services a run needs besides the runner, `esg scorer` and `esg assembler`,
/// as tasks of the test process (the binary runs the same library functions).
pub struct InProcess {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Starts one scorer and the assembler on `config`.
    pub fn start(config: &esg::config::Config) -> InProcess {
        let stop = tokio_util::sync::CancellationToken::new();
        let scorer = {
            let (config, stop) = (config.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = esg::runner::scorer_service(&config, stop).await {
                    panic!("scorer service: {e:#}");
                }
            })
        };
        let assembler = {
            let (config, stop) = (config.clone(), stop.clone());
            tokio::spawn(async move {
                let clock = esg_assembler::system_clock();
                if let Err(e) =
                    esg::runner::assembler_service(&config, clock, stop, || Ok(())).await
                {
                    panic!("assembler service: {e:#}");
                }
            })
        };
        InProcess {
            stop,
            tasks: vec![scorer, assembler],
        }
    }

    /// Stops both services and waits for them (a service that failed fails the test here).
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            task.await.expect("service task");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One daily run on Kafka: the runner publishes and waits while the services score and write.
pub async fn run_day_on_kafka(
    config: esg::config::Config,
    day: chrono::NaiveDate,
) -> esg::runner::Outcome {
    // The runner first: it creates the topics the services then find.
    let runner = esg::runner::Runner::open(config.clone(), esg_assembler::system_clock())
        .await
        .expect("runner opens");
    let services = InProcess::start(&config);
    let outcome = runner
        .run_daily(
            day,
            false,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
        .await
        .expect("run completes");
    services.stop().await;
    outcome
}

/// The broker's `log.dirs`, to read its partition files. `None` only with the container
/// services, whose disk is out of reach: the test then says it is skipped (and a broker given
/// by `ESG_TEST_KAFKA_BOOTSTRAP` without `ESG_TEST_KAFKA_LOG_DIRS` fails it).
pub fn readable_log_dirs() -> Option<Vec<PathBuf>> {
    let dirs = services().log_dirs.clone();
    if dirs.is_none() {
        assert!(
            std::env::var("ESG_TEST_KAFKA_BOOTSTRAP").is_err(),
            "ESG_TEST_KAFKA_BOOTSTRAP is set but ESG_TEST_KAFKA_LOG_DIRS is not: set it to the \
             broker's log.dirs (ops/services/up.sh prints KAFKA_LOG_DIRS)"
        );
        eprintln!(
            "skipped: the broker runs in a container whose log directory this test cannot read; \
             run it with ESG_TEST_KAFKA_BOOTSTRAP and ESG_TEST_KAFKA_LOG_DIRS (ops/test-all.sh)"
        );
    }
    dirs
}

/// The partition directories under the broker's `log_dirs` of every topic whose name starts
/// with `prefix` (`<topic>-<partition>`).
pub fn partition_dirs(log_dirs: &[PathBuf], prefix: &str) -> Vec<PathBuf> {
    log_dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// The files under `dirs` that hold `needle` (no zero byte in it).
pub fn files_holding(dirs: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| super::files_under(d))
        // A file the broker removes while it is read is simply gone.
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| super::holds(&bytes, needle)))
        .collect()
}

/// One key for each of `partitions` partitions, for filler records (compaction never touches a
/// partition's open segment; a new record rolls it once it is `segment.ms` old).
pub fn filler_keys(partitions: i32) -> Vec<String> {
    (0..partitions)
        .map(|p| {
            (0..)
                .map(|i| format!("filler-{i}"))
                .find(|k| esg_bus::partition_for(k, partitions) == p)
                .expect("a key of every partition")
        })
        .collect()
}

//! Kafka over TLS: the whole day on the real broker's SSL listener, which requires a client
//! certificate (mutual TLS) and has no plaintext fallback on that port. The runner, the scorer and
//! the assembler all connect with `security.protocol = "SSL"` and the PEM files of
//! `[kafka.properties]`, as the README's example configuration shows.

mod common;

use common::kafka::{run_day_on_kafka, services, unique, use_kafka};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_runs_on_kafka_over_mutual_tls() {
    let s = services();
    let tls = s.tls.as_ref().expect(
        "the Kafka TLS listener comes with the project's services (ops/services/up.sh); \
         the container variant has none",
    );
    let ca = tls.dir.join("ca.pem");
    let cert = tls.dir.join("client.pem");
    let key = tls.dir.join("client.key");
    for f in [&ca, &cert, &key] {
        assert!(
            f.exists(),
            "{} is made by ops/services/kafka.sh",
            f.display()
        );
    }

    let world = World::start(quiet_sim(300), "").await;
    let ns = unique("tls");
    use_kafka(&world.config_path, &tls.bootstrap, &s.registry, &ns);
    let text = std::fs::read_to_string(&world.config_path).expect("config");
    std::fs::write(
        &world.config_path,
        format!(
            "{text}[kafka.properties]\n\
             \"security.protocol\" = \"SSL\"\n\
             \"ssl.ca.location\" = \"{}\"\n\
             \"ssl.certificate.location\" = \"{}\"\n\
             \"ssl.key.location\" = \"{}\"\n\
             \"ssl.endpoint.identification.algorithm\" = \"https\"\n",
            ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("config");

    let day = date("2026-11-23");
    let outcome = run_day_on_kafka(world.config(), day).await;
    assert!(outcome.completed.is_some(), "{outcome:?}");
    let rows = read_csv(&world.csv_path(day));
    let ids: Vec<String> = rows[1..].iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, active_ids(&world.sim).await, "every active account");
    assert!(
        rows[1..].iter().all(|r| !r.contains(&"Failed".to_owned())),
        "nothing failed"
    );
}

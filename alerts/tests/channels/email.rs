//! Email against a real SMTP server: STARTTLS, AUTH, routing by audience, subject and body, and
//! the failures that must not fail the caller (a refused password, a server that is down).

use crate::support::{self, SmtpServer, SMTP_PASSWORD, SMTP_USER};
use esg_alerts::{
    AlertKind, Alerter, AlertsConfig, Channel, ChannelStats, EmailConfig, Recipients, Routes,
    Secret,
};
use std::time::Duration;

const DEV: [&str; 2] = ["dev-oncall@firm.example", "esg-dev@firm.example"];
const BUSINESS: &str = "compliance@firm.example";

fn email_config(port: u16, ca: Option<&std::path::Path>, password: &str) -> EmailConfig {
    EmailConfig {
        enabled: true,
        smtp_host: "127.0.0.1".into(),
        smtp_port: port,
        starttls: true,
        tls_ca_file: ca.map(ToOwned::to_owned),
        username: Some(SMTP_USER.into()),
        password: Some(Secret::new(password)),
        from: "ESG job <esg-job@firm.example>".into(),
        timeout: Duration::from_secs(10),
        recipients: Recipients {
            development: DEV.iter().map(|s| s.to_string()).collect(),
            business: vec![BUSINESS.into()],
        },
        routes: Routes::default(),
    }
}

fn alerter(email: EmailConfig) -> Alerter {
    Alerter::new(AlertsConfig {
        email: Some(email),
        ..support::base_config()
    })
    .expect("alerter")
}

#[tokio::test]
async fn alerts_reach_each_audience_by_route_over_starttls() {
    let server = SmtpServer::start().await;
    let alerter = alerter(email_config(
        server.port,
        Some(&server.pki.ca),
        SMTP_PASSWORD,
    ));

    let missed = support::alert(
        AlertKind::MissedStart,
        "2026-11-23",
        "run 2026-11-23 did not start by 05:15 CT",
    );
    let report = alerter.send(&missed).await;
    assert_eq!(report.sent, vec![Channel::Email], "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");

    let ratio = support::alert(
        AlertKind::FailureRatio,
        "2026-11-23",
        "run 2026-11-23: 80 of 1000 accounts failed (8.00%, threshold 5%)",
    );
    let report = alerter.send(&ratio).await;
    assert_eq!(report.sent, vec![Channel::Email], "{report:?}");

    let messages = server.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");

    let first = &messages[0];
    assert_eq!(first.mail_from, "esg-job@firm.example");
    assert_eq!(first.rcpt_tos, DEV, "missed_start goes to development only");
    assert_eq!(first.login, SMTP_USER);
    assert!(first.tls, "the message came over STARTTLS");
    assert_eq!(
        first.subject,
        "[ESG job] CRITICAL missed_start: run 2026-11-23 did not start by 05:15 CT"
    );
    assert_eq!(first.content_type, "text/plain");
    for line in [
        "ESG job alert: CRITICAL missed_start",
        "run 2026-11-23 did not start by 05:15 CT",
        "Run:           2026-11-23",
        "Business date: 2026-11-23",
        "Severity:      critical",
        "  expected: 1200",
        "  summary_file: /data/out/FirmESGRatings_20261123_summary.json",
        "What to do first: Check the scheduler, then start `esg run --once` by hand.",
        "Runbook: docs/operations.md, section \"The run did not start\".",
    ] {
        assert!(
            first.body.lines().any(|l| l == line),
            "{line:?} not in body:\n{}",
            first.body
        );
    }

    let second = &messages[1];
    assert_eq!(
        second.rcpt_tos,
        [DEV[0], DEV[1], BUSINESS],
        "failure_ratio goes to development and business"
    );
    assert_eq!(
        second.subject,
        "[ESG job] ERROR failure_ratio: run 2026-11-23: 80 of 1000 accounts failed (8.00%, threshold 5%)"
    );
    assert!(second.to.contains(BUSINESS), "{}", second.to);
    assert!(
        second
            .body
            .contains("section \"Many accounts failed (`CompletedWithFailures`)\""),
        "{}",
        second.body
    );

    let resolution = ratio.resolved(
        "re-run 2026-11-23.2: 10 of 1000 accounts failed",
        support::at(),
    );
    let report = alerter.resolve(&resolution).await;
    assert_eq!(report.sent, vec![Channel::Email], "{report:?}");
    let messages = server.messages();
    let third = messages.get(2).expect("resolution message");
    assert_eq!(third.rcpt_tos, [DEV[0], DEV[1], BUSINESS]);
    assert_eq!(
        third.subject,
        "[ESG job] RESOLVED failure_ratio: re-run 2026-11-23.2: 10 of 1000 accounts failed"
    );

    assert_eq!(
        alerter.stats().email,
        ChannelStats {
            sent: 3,
            failed: 0,
            retried: 0
        }
    );
}

#[tokio::test]
async fn a_refused_password_fails_the_channel_not_the_caller_and_is_not_retried() {
    let server = SmtpServer::start().await;
    let alerter = alerter(email_config(
        server.port,
        Some(&server.pki.ca),
        "wrong password",
    ));
    let report = alerter
        .send(&support::alert(
            AlertKind::CriticalError,
            "2026-11-23",
            "run 2026-11-23 ended on a critical error: disk full",
        ))
        .await;
    assert!(report.sent.is_empty(), "{report:?}");
    let [(channel, error)] = report.failed.as_slice() else {
        panic!("one failure expected: {report:?}");
    };
    assert_eq!(*channel, Channel::Email);
    assert!(error.contains("535"), "{error}");
    assert!(error.contains("after 1 attempt"), "{error}");
    assert!(!error.contains("wrong password"), "{error}");
    assert!(server.messages().is_empty());
    assert_eq!(
        alerter.stats().email,
        ChannelStats {
            sent: 0,
            failed: 1,
            retried: 0
        }
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let server = SmtpServer::start().await;
    // No tls_ca_file: the test CA is not among the public roots.
    let alerter = alerter(email_config(server.port, None, SMTP_PASSWORD));
    let report = alerter
        .send(&support::alert(
            AlertKind::OverWindow,
            "2026-11-23",
            "run 2026-11-23 passed its deadline",
        ))
        .await;
    let [(Channel::Email, error)] = report.failed.as_slice() else {
        panic!("email must fail: {report:?}");
    };
    assert!(
        error.contains("tls") || error.contains("certificate"),
        "{error}"
    );
    assert!(
        server.messages().is_empty(),
        "nothing sent without a verified TLS"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_retried_once_reported_and_counted() {
    let closed = support::closed_port();
    let alerter = alerter(email_config(closed.port(), None, SMTP_PASSWORD));
    let started = std::time::Instant::now();
    let report = alerter
        .send(&support::alert(
            AlertKind::MissedStart,
            "2026-11-23",
            "run 2026-11-23 did not start by 05:15 CT",
        ))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(report.sent.is_empty(), "{report:?}");
    let [(Channel::Email, error)] = report.failed.as_slice() else {
        panic!("email must fail: {report:?}");
    };
    assert!(error.contains("after 2 attempts"), "{error}");
    assert_eq!(
        alerter.stats().email,
        ChannelStats {
            sent: 0,
            failed: 1,
            retried: 1
        }
    );
}

#[tokio::test]
async fn nothing_is_sent_in_clear_to_a_server_without_starttls() {
    let relay = SmtpServer::start_plain().await;
    let alerter = alerter(email_config(relay.port, None, SMTP_PASSWORD));
    let report = alerter
        .send(&support::alert(
            AlertKind::CriticalError,
            "2026-11-23",
            "run 2026-11-23 ended on a critical error",
        ))
        .await;
    let [(Channel::Email, error)] = report.failed.as_slice() else {
        panic!("email must fail without STARTTLS: {report:?}");
    };
    assert!(error.contains("after 1 attempt"), "not retried: {error}");
    assert!(relay.messages().is_empty(), "nothing sent in clear");
}

#[tokio::test]
async fn a_local_relay_without_tls_takes_mail_when_starttls_is_off() {
    let relay = SmtpServer::start_plain().await;
    let mut config = email_config(relay.port, None, SMTP_PASSWORD);
    config.starttls = false;
    config.username = None;
    config.password = None;
    let alerter = alerter(config);
    let report = alerter
        .send(&support::alert(
            AlertKind::OverWindow,
            "2026-11-23",
            "run 2026-11-23 passed its deadline",
        ))
        .await;
    assert_eq!(report.sent, vec![Channel::Email], "{report:?}");
    let messages = relay.messages();
    assert_eq!(messages.len(), 1);
    assert!(!messages[0].tls);
    assert_eq!(messages[0].rcpt_tos, [DEV[0], DEV[1], BUSINESS]);
}

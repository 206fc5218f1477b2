//! The email channel: one plain-text message per alert or resolution, to the addresses whose
//! audience's route includes the kind, sent by SMTP submission with STARTTLS and AUTH.
//!
//! Security: with `starttls = true` (the default) lettre upgrades the connection before AUTH and
//! before the message, and gives up if the server offers no STARTTLS: the password and the
//! message are never sent in clear. The server's certificate is checked against the public roots
//! plus the CAs of `tls_ca_file`, for the name `smtp_host`.
//!
//! One message goes to every recipient of the kind (they see each other in `To`); a recipient the
//! server refuses fails the whole message, as SMTP reports it.

use crate::alert::{one_line, Event};
use crate::channel::AttemptError;
use crate::config::{check_duration, AlertConfigError, EmailConfig, MAX_TIMEOUT};
use crate::AlertKind;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest subject, in characters.
const MAX_SUBJECT_CHARS: usize = 250;

/// Largest `tls_ca_file` read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The runbook every email points to.
pub const RUNBOOK: &str = "docs/operations.md";

/// A configured, validated email channel.
pub(crate) struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    recipients: BTreeMap<AlertKind, Vec<Mailbox>>,
    pub(crate) timeout: Duration,
}

impl EmailChannel {
    /// Checks `config` (addresses, credentials, CA file, timeout) and builds the transport.
    pub(crate) fn new(config: &EmailConfig) -> Result<Self, AlertConfigError> {
        let host = config.smtp_host.trim();
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(AlertConfigError::invalid(
                "alerts.email.smtp_host",
                "must be a host name",
            ));
        }
        if config.smtp_port == 0 {
            return Err(AlertConfigError::invalid(
                "alerts.email.smtp_port",
                "must not be 0",
            ));
        }
        check_duration("alerts.email.timeout", config.timeout, MAX_TIMEOUT)?;
        let from: Mailbox = config.from.parse().map_err(|e| {
            AlertConfigError::invalid(
                "alerts.email.from",
                format!("`{}` is not an email address: {e}", config.from),
            )
        })?;
        for (audience, addresses) in [
            ("development", &config.recipients.development),
            ("business", &config.recipients.business),
        ] {
            for (i, address) in addresses.iter().enumerate() {
                address.parse::<Mailbox>().map_err(|e| {
                    AlertConfigError::invalid(
                        format!("alerts.email.recipients.{audience}[{i}]"),
                        format!("`{address}` is not an email address: {e}"),
                    )
                })?;
            }
        }
        let mut recipients = BTreeMap::new();
        for kind in AlertKind::ALL {
            let mailboxes = config
                .recipients_for(kind)
                .into_iter()
                .filter_map(|address| address.parse::<Mailbox>().ok())
                .collect::<Vec<_>>();
            if !mailboxes.is_empty() {
                recipients.insert(kind, mailboxes);
            }
        }
        if recipients.is_empty() {
            return Err(AlertConfigError::invalid(
                "alerts.email.recipients",
                "names no address that any route reaches; add addresses or set `enabled = false`",
            ));
        }

        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(AlertConfigError::invalid(
                    "alerts.email.password",
                    "is missing while `username` is set",
                ))
            }
            (None, Some(_)) => {
                return Err(AlertConfigError::invalid(
                    "alerts.email.username",
                    "is missing while `password` is set",
                ))
            }
        };

        let tls = if config.starttls {
            let mut parameters = TlsParameters::builder(host.to_owned());
            if let Some(path) = &config.tls_ca_file {
                parameters = parameters.add_root_certificate(read_ca_file(path)?);
            }
            let parameters = parameters.build().map_err(|e| {
                AlertConfigError::invalid("alerts.email.tls_ca_file", format!("TLS set-up: {e}"))
            })?;
            Tls::Required(parameters)
        } else {
            if credentials.is_some() {
                return Err(AlertConfigError::invalid(
                    "alerts.email.starttls",
                    "is false while `username`/`password` are set: the password would be sent in clear",
                ));
            }
            Tls::None
        };

        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.smtp_port)
            .tls(tls)
            .timeout(Some(config.timeout));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from,
            recipients,
            timeout: config.timeout,
        })
    }

    /// True when some address receives `kind`.
    pub(crate) fn wants(&self, kind: AlertKind) -> bool {
        self.recipients.contains_key(&kind)
    }

    /// One attempt: one SMTP session, one message.
    pub(crate) async fn deliver(&self, event: &Event<'_>) -> Result<(), AttemptError> {
        let Some(to) = self.recipients.get(&event.kind()) else {
            return Ok(());
        };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(event))
            .message_id(None)
            .header(ContentType::TEXT_PLAIN);
        for mailbox in to {
            builder = builder.to(mailbox.clone());
        }
        let message = builder
            .body(body(event))
            .map_err(|e| AttemptError::permanent(format!("cannot build the message: {e}")))?;
        self.transport
            .send(message)
            .await
            .map(|_response| ())
            .map_err(classify)
    }
}

/// Reads the PEM CA file; it must hold at least one certificate.
fn read_ca_file(path: &std::path::Path) -> Result<Certificate, AlertConfigError> {
    let io_error = |source| AlertConfigError::CaFile {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io_error)?.len();
    if size > MAX_CA_FILE_BYTES {
        return Err(AlertConfigError::invalid(
            "alerts.email.tls_ca_file",
            format!(
                "{} is {size} bytes, more than {MAX_CA_FILE_BYTES}",
                path.display()
            ),
        ));
    }
    let pem = std::fs::read(path).map_err(io_error)?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(AlertConfigError::invalid(
            "alerts.email.tls_ca_file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Certificate::from_pem(&pem).map_err(|e| {
        AlertConfigError::invalid(
            "alerts.email.tls_ca_file",
            format!("{}: {e}", path.display()),
        )
    })
}

/// Sorts an SMTP failure: a 5xx answer (a refused password or recipient), an error lettre files
/// as TLS, or a client-side refusal (no STARTTLS offered, no common AUTH mechanism) will not
/// change a second later; everything else (connection refused, timeouts, 4xx, a garbled answer)
/// may. lettre reports a certificate that does not verify during STARTTLS as a connection error,
/// so that one is retried once too: a wasted attempt, bounded like any other.
fn classify(error: lettre::transport::smtp::Error) -> AttemptError {
    let message = format!("SMTP: {error}");
    if error.is_permanent() || error.is_tls() || error.is_client() {
        AttemptError::permanent(message)
    } else {
        AttemptError::retryable(message)
    }
}

/// `[ESG job] CRITICAL missed_start: run 2026-11-23 did not start by 05:15 CST`, or
/// `[ESG job] RESOLVED failure_ratio: …`.
pub(crate) fn subject(event: &Event<'_>) -> String {
    let status = match event {
        Event::Fire(alert) => alert.kind.severity().as_str().to_uppercase(),
        Event::Resolve(_) => "RESOLVED".to_owned(),
    };
    one_line(
        &format!("[ESG job] {status} {}: {}", event.kind(), event.summary()),
        MAX_SUBJECT_CHARS,
    )
}

/// The plain-text body: what happened, the run, the details, and where to start.
pub(crate) fn body(event: &Event<'_>) -> String {
    let kind = event.kind();
    let mut lines = vec![
        match event {
            Event::Fire(_) => format!(
                "ESG job alert: {} {kind}",
                kind.severity().as_str().to_uppercase()
            ),
            Event::Resolve(_) => format!("ESG job alert resolved: {kind}"),
        },
        String::new(),
        event.summary(),
        String::new(),
        format!("Run:           {}", event.run_id()),
        format!("Business date: {}", event.business_date()),
        format!("Kind:          {kind} ({})", kind.description()),
    ];
    match event {
        Event::Fire(_) => {
            lines.push(format!("Severity:      {}", kind.severity()));
            lines.push(format!("Raised at:     {}", event.at().to_rfc3339()));
        }
        Event::Resolve(_) => {
            lines.push(format!("Resolved at:   {}", event.at().to_rfc3339()));
        }
    }
    let details = event.details();
    if !details.is_empty() {
        lines.push(String::new());
        lines.push("Details:".to_owned());
        lines.extend(
            details
                .iter()
                .map(|(key, value)| format!("  {key}: {}", value.replace('\n', "\n    "))),
        );
    }
    if let Event::Fire(_) = event {
        lines.push(String::new());
        lines.push(format!("What to do first: {}", kind.first_step()));
        lines.push(format!(
            "Runbook: {RUNBOOK}, section \"{}\".",
            kind.runbook_section()
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Recipients, Routes, Secret};
    use crate::Alert;
    use chrono::{NaiveDate, TimeZone, Utc};

    fn alert() -> Alert {
        Alert::failure_ratio(
            "2026-11-23",
            NaiveDate::from_ymd_opt(2026, 11, 23).expect("date"),
            80,
            1000,
            rust_decimal::Decimal::new(5, 2),
            Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0)
                .single()
                .expect("time"),
        )
    }

    fn config() -> EmailConfig {
        EmailConfig {
            enabled: true,
            smtp_host: "smtp.firm.example".into(),
            smtp_port: 587,
            starttls: true,
            tls_ca_file: None,
            username: Some("esg".into()),
            password: Some(Secret::new("pw")),
            from: "ESG job <esg@firm.example>".into(),
            timeout: Duration::from_secs(5),
            recipients: Recipients {
                development: vec!["dev@firm.example".into()],
                business: vec![],
            },
            routes: Routes::default(),
        }
    }

    #[test]
    fn subject_has_severity_kind_and_summary() {
        let alert = alert();
        assert_eq!(
            subject(&Event::Fire(&alert)),
            "[ESG job] ERROR failure_ratio: run 2026-11-23: 80 of 1000 accounts failed (8.00%, threshold 5%)"
        );
        let resolution =
            alert.resolved("re-run 2026-11-23.2: 12 of 1000 accounts failed", alert.at);
        assert_eq!(
            subject(&Event::Resolve(&resolution)),
            "[ESG job] RESOLVED failure_ratio: re-run 2026-11-23.2: 12 of 1000 accounts failed"
        );
    }

    #[test]
    fn body_has_run_details_and_runbook_pointer() {
        let body = body(&Event::Fire(&alert()));
        for expected in [
            "ESG job alert: ERROR failure_ratio\n",
            "Run:           2026-11-23\n",
            "Business date: 2026-11-23\n",
            "Raised at:     2026-11-23T14:00:00+00:00\n",
            "  failed: 80\n",
            "  expected: 1000\n",
            "Runbook: docs/operations.md, section \"Many accounts failed (`CompletedWithFailures`)\".\n",
        ] {
            assert!(body.contains(expected), "{expected:?} not in:\n{body}");
        }
    }

    #[test]
    fn resolution_body_has_no_runbook_pointer() {
        let alert = alert();
        let resolution = alert.resolved("cleared", alert.at);
        let body = body(&Event::Resolve(&resolution));
        assert!(
            body.starts_with("ESG job alert resolved: failure_ratio\n"),
            "{body}"
        );
        assert!(!body.contains("Runbook"), "{body}");
    }

    #[test]
    fn addresses_and_credentials_are_checked() {
        assert!(EmailChannel::new(&config()).is_ok());

        let mut bad = config();
        bad.recipients.business = vec!["ok@firm.example".into(), "not an address".into()];
        let err = EmailChannel::new(&bad).err().expect("bad address");
        assert!(
            err.to_string()
                .contains("alerts.email.recipients.business[1]"),
            "{err}"
        );

        let mut bad = config();
        bad.from = "esg".into();
        let err = EmailChannel::new(&bad).err().expect("bad from");
        assert!(err.to_string().contains("alerts.email.from"), "{err}");

        let mut bad = config();
        bad.password = None;
        let err = EmailChannel::new(&bad)
            .err()
            .expect("user without password");
        assert!(err.to_string().contains("alerts.email.password"), "{err}");

        let mut bad = config();
        bad.starttls = false;
        let err = EmailChannel::new(&bad).err().expect("password in clear");
        assert!(err.to_string().contains("alerts.email.starttls"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");

        let mut bad = config();
        bad.routes.development = vec![AlertKind::MissedStart];
        bad.recipients.development = vec![];
        let err = EmailChannel::new(&bad).err().expect("nobody");
        assert!(err.to_string().contains("alerts.email.recipients"), "{err}");
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        let mut bad = config();
        bad.tls_ca_file = Some(path);
        let err = EmailChannel::new(&bad).err().expect("no certificate");
        assert!(
            err.to_string().contains("alerts.email.tls_ca_file"),
            "{err}"
        );

        bad.tls_ca_file = Some(dir.path().join("missing.pem"));
        let err = EmailChannel::new(&bad).err().expect("missing file");
        assert!(matches!(err, AlertConfigError::CaFile { .. }), "{err}");
    }

    #[test]
    fn kinds_without_recipients_are_not_wanted() {
        let channel = EmailChannel::new(&config()).expect("channel");
        assert!(channel.wants(AlertKind::MissedStart));
        let mut business_only = config();
        business_only.recipients = Recipients {
            development: vec![],
            business: vec!["biz@firm.example".into()],
        };
        let channel = EmailChannel::new(&business_only).expect("channel");
        assert!(!channel.wants(AlertKind::MissedStart));
        assert!(channel.wants(AlertKind::OverWindow));
    }
}

//! Transport security of the job's HTTP clients: which URLs may be plain `http`, and the TLS
//! files of one client (the firm's private CA, a client certificate for mutual TLS).
//!
//! Responsible for: the rule that a credential never travels in clear to another host
//! ([`check_transport`]), reading and checking a client's PEM files ([`ClientTls::load`]) and
//! applying them with TLS 1.2 as the floor ([`ClientTls::apply`]). Not responsible for: the
//! configuration keys (each client's configuration holds `tls_ca_file`, `tls_client_cert_file`
//! and `tls_client_key_file` and names them in errors) or the other settings of a client.

use std::path::{Path, PathBuf};

/// Whether `url` may carry a credential: `https` to any host, plain `http` only to this machine
/// (`localhost`, `127.0.0.0/8`, `::1`), where nothing crosses a network. The error says why, and
/// does not echo the URL (its user-info part may hold a password).
pub fn check_transport(url: &reqwest::Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "is plain http:// to {}: credentials and account data would cross the network in \
             clear; use https:// (plain http is allowed to localhost only)",
            url.host_str().unwrap_or("?")
        )),
        other => Err(format!("has scheme `{other}`; use https://")),
    }
}

/// Whether the URL's host is this machine.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The TLS files of one client, as configured (paths not yet read).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// PEM bundle of the CA certificates to trust instead of the system's (`tls_ca_file`).
    pub ca_file: Option<&'a Path>,
    /// PEM certificate chain presented to the server (`tls_client_cert_file`).
    pub client_cert_file: Option<&'a Path>,
    /// PEM private key of that certificate: PKCS#8, RSA or SEC1 (`tls_client_key_file`).
    pub client_key_file: Option<&'a Path>,
}

impl TlsFiles<'_> {
    /// Whether any file is set.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }
}

/// A problem with one TLS key of a client: `key` is the key's name within the client's section
/// (`tls_ca_file`, …) and `message` what is wrong, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsFileError {
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: String) -> TlsFileError {
    TlsFileError { key, message }
}

/// A client's TLS settings, read and checked.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// Roots trusted instead of the system's; empty: the system's.
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
    /// Where the roots came from, for the log.
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca_file)
            .field("roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads the files. A CA file must hold at least one PEM certificate; a client certificate
    /// and its key come together or not at all, and must parse. The private key is read into
    /// memory only for the TLS library, never logged.
    pub fn load(files: &TlsFiles<'_>) -> Result<ClientTls, TlsFileError> {
        let mut tls = ClientTls::default();
        if let Some(path) = files.ca_file {
            let pem = read("tls_ca_file", path)?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                bad(
                    "tls_ca_file",
                    format!("{} is not a PEM certificate bundle: {e}", path.display()),
                )
            })?;
            if roots.is_empty() {
                return Err(bad(
                    "tls_ca_file",
                    format!(
                        "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        path.display()
                    ),
                ));
            }
            tls.roots = roots;
            tls.ca_file = Some(path.to_owned());
        }
        match (files.client_cert_file, files.client_key_file) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(bad(
                    "tls_client_key_file",
                    "must be set with tls_client_cert_file (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls_client_cert_file",
                    "must be set with tls_client_key_file (the key's certificate)".into(),
                ))
            }
            (Some(cert), Some(key)) => {
                let mut pem = read("tls_client_cert_file", cert)?;
                if !contains_section(&pem, "CERTIFICATE") {
                    return Err(bad(
                        "tls_client_cert_file",
                        format!("{} holds no PEM certificate", cert.display()),
                    ));
                }
                let key_pem = read("tls_client_key_file", key)?;
                if !contains_section(&key_pem, "PRIVATE KEY") {
                    return Err(bad(
                        "tls_client_key_file",
                        format!(
                            "{} holds no PEM private key (PKCS#8, RSA or EC)",
                            key.display()
                        ),
                    ));
                }
                pem.push(b'\n');
                pem.extend_from_slice(&key_pem);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    bad(
                        "tls_client_cert_file",
                        format!(
                            "{} and {} are not a usable certificate and key: {}",
                            cert.display(),
                            key.display(),
                            crate::http::error_chain(&e)
                        ),
                    )
                })?;
                tls.identity = Some(identity);
            }
        }
        Ok(tls)
    }

    /// The builder with these settings: TLS 1.2 at least, the CA file's roots only (as `curl
    /// --cacert` does) when one is set, the client certificate when one is set.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let mut builder = builder.tls_version_min(reqwest::tls::Version::TLS_1_2);
        if !self.roots.is_empty() {
            builder = builder.tls_certs_only(self.roots.iter().cloned());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        builder
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))
}

/// Whether the PEM text has a `-----BEGIN …<label>-----` line.
fn contains_section(pem: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(pem).lines().any(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("url")
    }

    #[test]
    fn https_anywhere_and_http_only_to_this_machine() {
        for ok in [
            "https://auth.firm.example/oauth2/token",
            "https://10.0.0.1:8443",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://127.0.0.1:9",
            "http://127.8.9.10",
            "http://[::1]:8080/x",
        ] {
            assert_eq!(check_transport(&url(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "http://auth.firm.example/oauth2/token",
            "http://10.0.0.1:8080",
            "http://[2001:db8::1]/",
            "http://localhost.evil.example/",
            "http://user:secret@ams.firm.example/",
        ] {
            let message = check_transport(&url(refused)).expect_err(refused);
            assert!(message.contains("use https://"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
        assert!(check_transport(&url("ftp://x/"))
            .expect_err("ftp")
            .contains("scheme `ftp`"));
    }

    #[test]
    fn missing_and_unusable_files_name_their_key() {
        let dir = tempfile::tempdir().expect("dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let missing = dir.path().join("missing.pem");

        let err = ClientTls::load(&TlsFiles {
            ca_file: Some(&missing),
            ..TlsFiles::default()
        })
        .expect_err("missing");
        assert_eq!(err.key, "tls_ca_file");
        assert!(err.message.contains("missing.pem"), "{err}");

        let err = ClientTls::load(&TlsFiles {
            ca_file: Some(&junk),
            ..TlsFiles::default()
        })
        .expect_err("junk");
        assert_eq!(err.key, "tls_ca_file");
        assert!(err.message.contains("holds no PEM certificate"), "{err}");

        let err = ClientTls::load(&TlsFiles {
            client_cert_file: Some(&junk),
            ..TlsFiles::default()
        })
        .expect_err("cert alone");
        assert_eq!(err.key, "tls_client_key_file");

        let err = ClientTls::load(&TlsFiles {
            client_key_file: Some(&junk),
            ..TlsFiles::default()
        })
        .expect_err("key alone");
        assert_eq!(err.key, "tls_client_cert_file");

        let err = ClientTls::load(&TlsFiles {
            client_cert_file: Some(&junk),
            client_key_file: Some(&junk),
            ..TlsFiles::default()
        })
        .expect_err("junk pair");
        assert_eq!(err.key, "tls_client_cert_file");

        let tls = ClientTls::load(&TlsFiles::default()).expect("none");
        assert!(!tls.has_client_certificate());
        tls.apply(reqwest::Client::builder())
            .build()
            .expect("client");
    }
}

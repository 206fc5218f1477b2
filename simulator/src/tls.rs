//! HTTPS for the simulator: its server certificate and key, and for mutual TLS the CA whose
//! client certificates it accepts; and [`TestPki`], a throwaway CA with a server and a client
//! certificate, for tests and for a stand whose job talks to the simulator over a network.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_util::sync::CancellationToken;

use crate::SimError;

/// A connection that has not finished its handshake within this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the simulator serves HTTPS with. All three are PEM.
#[derive(Clone)]
pub struct TlsServerConfig {
    /// The server certificate, then any intermediates.
    pub cert_chain_pem: Vec<u8>,
    /// The server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// When set, a client must present a certificate issued by one of these CAs (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field(
                "client_certificates_required",
                &self.client_ca_pem.is_some(),
            )
            .finish_non_exhaustive()
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> SimError {
    SimError::InvalidConfig {
        key,
        reason: reason.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, SimError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

impl TlsServerConfig {
    /// Reads the PEM files; `key` names are the simulator's flags.
    pub fn from_files(
        cert_chain: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, SimError> {
        let config = TlsServerConfig {
            cert_chain_pem: read("tls-cert", cert_chain)?,
            key_pem: read("tls-key", key)?,
            client_ca_pem: client_ca.map(|p| read("tls-client-ca", p)).transpose()?,
        };
        config.rustls()?;
        Ok(config)
    }

    /// The rustls configuration: TLS 1.2 and 1.3, HTTP/1.1.
    pub(crate) fn rustls(&self) -> Result<Arc<ServerConfig>, SimError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("tls-cert", format!("is not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(invalid("tls-cert", "holds no PEM certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| invalid("tls-key", format!("is not a PEM private key: {e}")))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid("tls-cert", e.to_string()))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => builder.with_client_cert_verifier(client_verifier(pem, provider)?),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid("tls-key", format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn client_verifier(
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, SimError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert =
            cert.map_err(|e| invalid("tls-client-ca", format!("is not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid("tls-client-ca", format!("holds a bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("tls-client-ca", "holds no PEM certificate"));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid("tls-client-ca", e.to_string()))
}

/// A throwaway PKI: a CA, a server certificate for the given names and a client certificate,
/// both issued by the CA. Keys are P-256, generated afresh each time.
pub struct TestPki {
    /// The CA certificate: the `tls_ca_file` of a job that talks to this simulator.
    pub ca_pem: String,
    /// The server certificate (for `localhost`, `127.0.0.1`, `::1` and the names asked for).
    pub server_cert_pem: String,
    /// Its key.
    pub server_key_pem: String,
    /// A client certificate the CA issued: the job's `tls_client_cert_file` for mutual TLS.
    pub client_cert_pem: String,
    /// Its key.
    pub client_key_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// Where [`TestPki::write`] put the files.
#[derive(Debug, Clone)]
pub struct TestPkiFiles {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key` (mode 0600).
    pub server_key: PathBuf,
    /// `client.pem`.
    pub client_cert: PathBuf,
    /// `client.key` (mode 0600).
    pub client_key: PathBuf,
}

impl TestPki {
    /// A new CA named `common_name`, and its server certificate for `hosts` (DNS names or IP
    /// addresses) besides the loopback names.
    pub fn generate(common_name: &str, hosts: &[String]) -> Result<TestPki, SimError> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let fail = |e: rcgen::Error| invalid("tls-generate", e.to_string());
        let name = |cn: &str| {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            dn
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.distinguished_name = name(common_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca =
            CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(fail)?).map_err(fail)?;

        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
        names.extend(
            hosts
                .iter()
                .filter(|h| !names.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut server = CertificateParams::new(names).map_err(fail)?;
        server.distinguished_name = name("esg simulator");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().map_err(fail)?;
        let server_cert = server.signed_by(&server_key, &ca).map_err(fail)?;

        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        client.distinguished_name = name("esg job");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().map_err(fail)?;
        let client_cert = client.signed_by(&client_key, &ca).map_err(fail)?;

        Ok(TestPki {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// What the simulator serves with; `mutual` requires a client certificate of this CA.
    pub fn server(&self, mutual: bool) -> TlsServerConfig {
        TlsServerConfig {
            cert_chain_pem: self.server_cert_pem.clone().into_bytes(),
            key_pem: self.server_key_pem.clone().into_bytes(),
            client_ca_pem: mutual.then(|| self.ca_pem.clone().into_bytes()),
        }
    }

    /// Writes the five PEM files into `dir` (created if missing), the keys readable by the
    /// owner only.
    pub fn write(&self, dir: &Path) -> io::Result<TestPkiFiles> {
        std::fs::create_dir_all(dir)?;
        let files = TestPkiFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        write_file(&files.ca, &self.ca_pem, 0o644)?;
        write_file(&files.server_cert, &self.server_cert_pem, 0o644)?;
        write_file(&files.server_key, &self.server_key_pem, 0o600)?;
        write_file(&files.client_cert, &self.client_cert_pem, 0o644)?;
        write_file(&files.client_key, &self.client_key_pem, 0o600)?;
        Ok(files)
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    // Replaced, not rewritten in place: an old key file keeps nobody's handle on the new key.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Hands axum connections whose TLS handshake has finished. Handshakes run in their own tasks,
/// so a client that stalls in one holds up nobody else.
pub(crate) struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` until `stop` is cancelled.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        stop: CancellationToken,
    ) -> io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, connections) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: let it pass, as axum does.
                            tracing::warn!(error = %e, "simulator cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { connections, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor has stopped: the server is shutting down and stops asking.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

//! A test PKI shaped like Istio's: one CA, a server certificate for the sidecar's listener, and
//! client certificates whose URI SAN is a SPIFFE ID (`spiffe://cluster.local/ns/<ns>/sa/<sa>`),
//! as every mesh workload presents. Made fresh per test, written to its own temporary directory.

use crate::http::{self, Request, Response};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The files an Envoy listener needs for TLS that asks for (but does not demand) a client
/// certificate.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A workload's certificate and key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

pub struct Pki {
    _dir: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
    server: ServerTls,
}

impl Pki {
    pub fn new() -> io::Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("faas-mesh-pki-")
            .tempdir()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
        server_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let server_key = KeyPair::generate().map_err(err)?;
        let server_cert = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .map_err(err)?;

        let server = ServerTls {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            ca: dir.path().join("ca.pem"),
        };
        std::fs::write(&server.cert, server_cert.pem())?;
        std::fs::write(&server.key, server_key.serialize_pem())?;
        std::fs::write(&server.ca, ca.pem())?;
        Ok(Pki {
            _dir: dir,
            ca,
            ca_key,
            server,
        })
    }

    pub fn server(&self) -> ServerTls {
        self.server.clone()
    }

    /// A client certificate for a SPIFFE ID, signed by the mesh CA.
    pub fn identity(&self, spiffe_id: &str) -> io::Result<Identity> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().map_err(err)?)];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .map_err(err)?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: key.serialize_der(),
        })
    }

    /// Sends one HTTP/1.1 request over TLS, presenting `identity` (or no certificate).
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: Option<&Identity>,
        request: &Request,
    ) -> io::Result<Response> {
        let connector = self.connector(identity)?;
        let name = ServerName::try_from("localhost").map_err(err)?;
        let exchange = async {
            let tcp = TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            http::exchange(tls, &request.wire("localhost"), request.method == "HEAD").await
        };
        tokio::time::timeout(http::EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))?
    }

    /// A TLS client of the sidecar's listener (server name `localhost`), presenting `identity`
    /// (or no certificate): what a mesh workload's own sidecar does on its way out.
    pub fn connector(&self, identity: Option<&Identity>) -> io::Result<tokio_rustls::TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).map_err(err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_root_certificates(roots);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.cert.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone())),
                )
                .map_err(err)?,
            None => builder.with_no_client_auth(),
        };
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

//! TLS for PostgreSQL connections with rustls, following libpq's `sslmode` semantics:
//!
//! | sslmode     | encrypts | verifies chain | verifies host name |
//! |-------------|----------|----------------|--------------------|
//! | prefer      | if the server agrees | no  | no  |
//! | require     | yes      | only if `sslrootcert` is set (as libpq) | no |
//! | verify-ca   | yes      | yes            | no  |
//! | verify-full | yes      | yes            | yes |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use super::{ConnInfo, SslMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read sslrootcert {path}: {reason}\nHINT: point sslrootcert at a PEM file with the CA certificate(s) that signed the server's certificate")]
    RootCert { path: PathBuf, reason: String },
    #[error("no trusted root certificates: the system store is empty and no sslrootcert was given\nHINT: add sslrootcert=/path/to/ca.pem to the connection URL")]
    NoRoots,
    #[error("{0:?} is not a valid TLS server name for sslmode=verify-full")]
    ServerName(String),
    #[error("TLS setup failed")]
    Rustls(#[from] TlsError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsConfigError::ServerName(host.to_owned()))
}

pub fn connector(info: &ConnInfo) -> Result<TlsConnector, TlsConfigError> {
    Ok(TlsConnector::from(Arc::new(client_config(info)?)))
}

/// The rustls configuration `info.sslmode` calls for (see the table at the top).
pub fn client_config(info: &ConnInfo) -> Result<rustls::ClientConfig, TlsConfigError> {
    let verify_chain = match info.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => info.sslrootcert.is_some(),
        SslMode::Prefer | SslMode::Disable => false,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let config = if verify_chain {
        let roots = Arc::new(root_store(info.sslrootcert.as_deref())?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::General(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = if info.sslmode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(IgnoreHostName(webpki))
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    Ok(config)
}

fn root_store(path: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let mut store = RootCertStore::empty();
    match path {
        Some(path) => {
            let err = |reason: String| TlsConfigError::RootCert {
                path: path.to_owned(),
                reason,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                store.add(cert).map_err(|e| err(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(err("it holds no certificate".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A single unparsable system certificate should not disable TLS altogether.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(TlsConfigError::NoRoots);
            }
        }
    }
    Ok(store)
}

/// verify-ca: the chain must lead to a trusted root; the name in the certificate may differ.
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer / require without a root certificate: encryption without authentication, as libpq.
/// Handshake signatures are still checked so the session key belongs to the presented key.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

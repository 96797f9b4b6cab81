//! TLS for PostgreSQL connections with rustls, following libpq's `sslmode` semantics:
//!
//! | sslmode     | encrypts | verifies chain | verifies host name |
//! |-------------|----------|----------------|--------------------|
//! | prefer      | if the server agrees | no  | no  |
//! | require     | yes      | only if `sslrootcert` is set (as libpq) | no |
//! | verify-ca   | yes      | yes            | no  |
//! | verify-full | yes      | yes            | yes |
//!
//! It also computes the `tls-server-end-point` channel binding data (RFC 5929) that
//! SCRAM-SHA-256-PLUS binds the authentication to ([`server_end_point`]).

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

/// The `tls-server-end-point` channel binding data of RFC 5929, §4.1: the hash of the server's
/// end-entity certificate (DER), with the hash function of the certificate's signature
/// algorithm, SHA-256 for MD5 and SHA-1. `None` when the algorithm names no single hash
/// (Ed25519, RSASSA-PSS) or the certificate does not parse: PostgreSQL cannot bind to such a
/// certificate either.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
    use x509_cert::der::oid::db::rfc5912 as oid;
    use x509_cert::der::oid::ObjectIdentifier;
    use x509_cert::der::Decode;
    const ECDSA_WITH_SHA_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");

    let algorithm = x509_cert::Certificate::from_der(cert)
        .ok()?
        .signature_algorithm
        .oid;
    Some(match algorithm {
        oid::MD_5_WITH_RSA_ENCRYPTION
        | oid::SHA_1_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_1
        | oid::DSA_WITH_SHA_1
        | oid::SHA_256_WITH_RSA_ENCRYPTION
        | oid::ECDSA_WITH_SHA_256
        | oid::DSA_WITH_SHA_256 => Sha256::digest(cert).to_vec(),
        oid::SHA_224_WITH_RSA_ENCRYPTION | oid::ECDSA_WITH_SHA_224 | oid::DSA_WITH_SHA_224 => {
            Sha224::digest(cert).to_vec()
        }
        oid::SHA_384_WITH_RSA_ENCRYPTION | oid::ECDSA_WITH_SHA_384 => Sha384::digest(cert).to_vec(),
        oid::SHA_512_WITH_RSA_ENCRYPTION | oid::ECDSA_WITH_SHA_512 => Sha512::digest(cert).to_vec(),
        _ => return None,
    })
}

/// [`server_end_point`] of the certificate a finished handshake presented.
pub fn end_point_of(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| server_end_point(cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha384};

    /// Self-signed, ecdsa-with-SHA384 (`openssl req -x509 -newkey ec -sha384`).
    const ECDSA_SHA384: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUeM/ZDr+nyS29AXTQqIzoWxe9K1owCgYIKoZIzj0EAwMw
GDEWMBQGA1UEAwwNcGdmYW5vdXQtdGVzdDAgFw0yNjExMjcyMDA5NDNaGA8yMTI2
MTEwMzIwMDk0M1owGDEWMBQGA1UEAwwNcGdmYW5vdXQtdGVzdDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABHc/x3nVu0iY1XS5Q+vep2UIF/zdttlwDrZX7qZMSoII
XDGgs3dOToURu/PA5cpBsr4ElfxPXPVRKTSj88QJOF2jUzBRMB0GA1UdDgQWBBS3
qshelg976rmTDFNEL8ABnaNG7jAfBgNVHSMEGDAWgBS3qshelg976rmTDFNEL8AB
naNG7jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMDA0gAMEUCIHpAPI524FId
/srnKJPBQMKb4lrWP3HlbMuEtKWW5ADrAiEArcs09HBS5QfqKnNM8BDOjiZBw1e5
G2isg55Ma80u8u4=
-----END CERTIFICATE-----";
    /// Self-signed, Ed25519: a signature algorithm without a separate hash.
    const ED25519: &str = "-----BEGIN CERTIFICATE-----
MIIBRjCB+aADAgECAhQI01yz2DkcSiK3+XTiOrR5PNNPGjAFBgMrZXAwGDEWMBQG
A1UEAwwNcGdmYW5vdXQtdGVzdDAgFw0yNjExMjcyMDA5NDNaGA8yMTI2MTEwMzIw
MDk0M1owGDEWMBQGA1UEAwwNcGdmYW5vdXQtdGVzdDAqMAUGAytlcAMhANi+2Lzp
x05UkWgkUr3iKjuZsJNMIb5Al1yr6+seOuT9o1MwUTAdBgNVHQ4EFgQU53FzJZkU
sEdXbLBo5/1/xxrQamgwHwYDVR0jBBgwFoAU53FzJZkUsEdXbLBo5/1/xxrQamgw
DwYDVR0TAQH/BAUwAwEB/zAFBgMrZXADQQATRrTkRpbo3Kfr9dlwl3+PMRLI/3n4
pexIEW1Arc8kimIV95cjcUPJ3Weo9wq1mB17cXCP1hfFzuz7hStjM08H
-----END CERTIFICATE-----";

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn end_point_hashes_with_the_signature_algorithms_hash() {
        let cert = der(ECDSA_SHA384);
        assert_eq!(
            server_end_point(&cert).unwrap(),
            Sha384::digest(&cert).to_vec()
        );
        // The SHA-256 case (sha256WithRSAEncryption) is the tests' CA's certificate, bound
        // against a real server in tests/session.rs.
        assert_eq!(server_end_point(&der(ED25519)), None);
    }

    #[test]
    fn garbage_has_no_end_point_and_never_panics() {
        let cert = der(ECDSA_SHA384);
        for n in [0, 1, 10, cert.len() / 2, cert.len() - 1] {
            assert!(server_end_point(&cert[..n]).is_none(), "{n} bytes");
        }
        let mut flipped = cert.clone();
        for i in (0..flipped.len()).step_by(3) {
            flipped[i] ^= 0x5a;
            let _ = server_end_point(&flipped);
        }
    }
}

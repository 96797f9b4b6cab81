//! A throw-away certificate authority and a server certificate for the name `localhost` (not
//! for 127.0.0.1, so tests can tell verify-full from verify-ca), made with openssl: TLS for the
//! private servers of `localpg` and `localch`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("openssl {step} failed: {output}\nHINT: scripts/install-deps.sh installs openssl")]
pub struct CertError {
    pub step: &'static str,
    pub output: String,
}

/// The files [`make`] writes.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.crt`, `server.crt` and `server.key` (and the CA's key) into `dir`.
pub fn make(dir: &Path) -> Result<Certificates, CertError> {
    let failed = |step, output: String| CertError { step, output };
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")
        .map_err(|e| failed("preparing its extension file", e.to_string()))?;
    let openssl = |step: &'static str, args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| failed(step, e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(failed(step, output))
    };
    openssl(
        "making the CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=pgfanout test CA",
        ],
    )?;
    openssl(
        "making the server's key",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    openssl(
        "signing the server's certificate",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    )?;
    Ok(Certificates {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}

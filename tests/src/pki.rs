//! Certificates and keys for the test control plane, made with the openssl
//! command line: a CA, the API server's serving certificate signed by it,
//! the API server's client certificate for kubelets, the ServiceAccount token
//! signing key pair, and client certificates for node components
//! ([`client_cert`]: the kubelet as `system:node:<name>`, kube-proxy as
//! `system:kube-proxy`, the identities Kubernetes' Node authorizer and default
//! RBAC bindings expect).
//!
//! The serving certificate must satisfy rustls (kube-rs's TLS): the address
//! the client dials (the plane's own host-local address) has to be an IP SAN, and the certificate must
//! be a leaf (`CA:FALSE`) — rustls rejects a CA certificate used as the
//! end-entity, which is why the API server's self-signed default won't do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors generating the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// openssl could not be run or failed.
    #[error("openssl {step} failed: {detail}")]
    Openssl {
        /// What was being generated.
        step: &'static str,
        /// stderr or the spawn error.
        detail: String,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Paths of the generated files.
#[derive(Clone, Debug)]
pub struct Pki {
    /// CA certificate (clients trust it).
    pub ca_cert: PathBuf,
    /// CA key.
    pub ca_key: PathBuf,
    /// API server serving certificate.
    pub server_cert: PathBuf,
    /// API server serving key.
    pub server_key: PathBuf,
    /// ServiceAccount token signing key (private).
    pub sa_key: PathBuf,
    /// ServiceAccount token verification key (public).
    pub sa_pub: PathBuf,
    /// The API server's client certificate towards kubelets (logs, exec).
    pub kubelet_client_cert: PathBuf,
    /// Its key.
    pub kubelet_client_key: PathBuf,
}

/// A client certificate and its key.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// Certificate (PEM), signed by the plane's CA.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Subject alternative names of the serving certificate: the address the
/// API server listens on (what clients dial), 127.0.0.1, and the in-cluster
/// names of the `kubernetes` Service.
pub fn serving_sans(listen_ip: &str, service_ip: &str) -> String {
    [
        format!("IP:{listen_ip}"),
        "IP:127.0.0.1".to_string(),
        format!("IP:{service_ip}"),
        "DNS:localhost".to_string(),
        "DNS:kubernetes".to_string(),
        "DNS:kubernetes.default".to_string(),
        "DNS:kubernetes.default.svc".to_string(),
        "DNS:kubernetes.default.svc.cluster.local".to_string(),
    ]
    .join(",")
}

fn openssl(step: &'static str, args: &[&str]) -> Result<(), PkiError> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| PkiError::Openssl {
            step,
            detail: format!("cannot run openssl: {e}"),
        })?;
    if !out.status.success() {
        return Err(PkiError::Openssl {
            step,
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Generates everything in `dir` (which must exist) for an API server
/// listening on `listen_ip`.
pub fn generate(dir: &Path, listen_ip: &str, service_ip: &str) -> Result<Pki, PkiError> {
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    };
    openssl(
        "CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-keyout",
            s(&pki.ca_key),
            "-out",
            s(&pki.ca_cert),
            "-subj",
            "/CN=zmq-proxy-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    issue(
        &pki,
        ["serving CSR", "serving certificate"],
        "/CN=kube-apiserver",
        &format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            serving_sans(listen_ip, service_ip)
        ),
        &pki.server_cert,
        &pki.server_key,
    )?;
    openssl(
        "ServiceAccount key",
        &["genrsa", "-out", s(&pki.sa_key), "2048"],
    )?;
    openssl(
        "ServiceAccount public key",
        &[
            "rsa",
            "-in",
            s(&pki.sa_key),
            "-pubout",
            "-out",
            s(&pki.sa_pub),
        ],
    )?;
    // Kubelets authorize their API (logs, exec, port-forward) by client
    // certificate; the API server presents this one.
    sign_client(
        &pki,
        "kube-apiserver-kubelet-client",
        "system:masters",
        &pki.kubelet_client_cert,
        &pki.kubelet_client_key,
    )?;
    Ok(pki)
}

/// A client certificate for `cn` in group `org` (none if empty), signed by the plane's CA,
/// written to `dir/<stem>.crt` and `dir/<stem>.key`. The API server maps
/// CN to the user and O to its groups.
pub fn client_cert(
    pki: &Pki,
    dir: &Path,
    stem: &str,
    cn: &str,
    org: &str,
) -> Result<ClientCert, PkiError> {
    let out = ClientCert {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    sign_client(pki, cn, org, &out.cert, &out.key)?;
    Ok(out)
}

fn sign_client(pki: &Pki, cn: &str, org: &str, cert: &Path, key: &Path) -> Result<(), PkiError> {
    let subject = if org.is_empty() {
        format!("/CN={cn}")
    } else {
        format!("/O={org}/CN={cn}")
    };
    issue(
        pki,
        ["client CSR", "client certificate"],
        &subject,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        cert,
        key,
    )
}

/// A new key at `key` and its certificate at `cert`, for `subject` with
/// the X.509 `extensions`, signed by the plane's CA. The CSR and the
/// extensions file are left beside `cert`; `steps` name the CSR and the
/// signing in errors.
fn issue(
    pki: &Pki,
    steps: [&'static str; 2],
    subject: &str,
    extensions: &str,
    cert: &Path,
    key: &Path,
) -> Result<(), PkiError> {
    let csr = cert.with_extension("csr");
    let ext = cert.with_extension("ext");
    openssl(
        steps[0],
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            s(key),
            "-out",
            s(&csr),
            "-subj",
            subject,
        ],
    )?;
    std::fs::write(&ext, extensions).map_err(|source| PkiError::Io {
        path: ext.clone(),
        source,
    })?;
    openssl(
        steps[1],
        &[
            "x509",
            "-req",
            "-sha256",
            "-days",
            "3650",
            "-in",
            s(&csr),
            "-CA",
            s(&pki.ca_cert),
            "-CAkey",
            s(&pki.ca_key),
            "-set_serial",
            &serial(),
            "-extfile",
            s(&ext),
            "-out",
            s(cert),
        ],
    )
}

/// A serial number unique enough for certificates of one CA.
fn serial() -> String {
    format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_cover_the_listen_address_and_service_names() {
        let sans = serving_sans("10.252.0.7", "10.0.0.1");
        assert!(sans.contains("IP:10.252.0.7"));
        assert!(sans.contains("IP:127.0.0.1"));
        assert!(sans.contains("IP:10.0.0.1"));
        assert!(sans.contains("DNS:kubernetes.default.svc"));
    }
}

//! Kubeconfig files: rendering one for a server + bearer token (admin,
//! controller manager, ServiceAccounts, pods), and reading the cluster part
//! of an existing one so ServiceAccount kubeconfigs for an external cluster
//! reach the same server with the same trust.

use std::path::{Path, PathBuf};

use kube::config::{Kubeconfig, KubeconfigError};

/// How to reach and trust the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterAccess {
    /// `https://host:port`.
    pub server: String,
    /// CA certificate file.
    pub certificate_authority: Option<String>,
    /// Inline base64 PEM CA data (from an existing kubeconfig).
    pub certificate_authority_data: Option<String>,
    /// Skip TLS verification (only if the source kubeconfig does).
    pub insecure_skip_tls_verify: Option<bool>,
    /// SNI / verification name override.
    pub tls_server_name: Option<String>,
}

/// Errors reading a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigFileError {
    /// Unreadable or invalid file.
    #[error("cannot read kubeconfig {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: KubeconfigError,
    },
    /// No usable current context / cluster.
    #[error("kubeconfig {path}: {detail}")]
    Incomplete {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// Writing failed.
    #[error("cannot write kubeconfig {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Renders a kubeconfig with one cluster, one token user and one context.
pub fn render(cluster: &ClusterAccess, user: &str, token: &str, namespace: Option<&str>) -> String {
    render_user(
        cluster,
        user,
        serde_json::json!({ "token": token }),
        namespace,
    )
}

/// Renders a kubeconfig whose user authenticates with a client certificate
/// (kubelet, kube-proxy: the API server takes the user from its CN).
pub fn render_cert(cluster: &ClusterAccess, user: &str, cert: &Path, key: &Path) -> String {
    render_user(
        cluster,
        user,
        serde_json::json!({
            "client-certificate": cert.display().to_string(),
            "client-key": key.display().to_string(),
        }),
        None,
    )
}

fn render_user(
    cluster: &ClusterAccess,
    user: &str,
    credential: serde_json::Value,
    namespace: Option<&str>,
) -> String {
    let mut c = serde_json::Map::new();
    c.insert("server".into(), cluster.server.clone().into());
    if let Some(ca) = &cluster.certificate_authority {
        c.insert("certificate-authority".into(), ca.clone().into());
    }
    if let Some(data) = &cluster.certificate_authority_data {
        c.insert("certificate-authority-data".into(), data.clone().into());
    }
    if let Some(insecure) = cluster.insecure_skip_tls_verify {
        c.insert("insecure-skip-tls-verify".into(), insecure.into());
    }
    if let Some(name) = &cluster.tls_server_name {
        c.insert("tls-server-name".into(), name.clone().into());
    }
    let mut context = serde_json::json!({ "cluster": "harness", "user": user });
    if let Some(ns) = namespace {
        context["namespace"] = ns.into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "harness", "cluster": c }],
        "users": [{ "name": user, "user": credential }],
        "contexts": [{ "name": "harness", "context": context }],
        "current-context": "harness",
    });
    // A JSON document is valid YAML, and every kubeconfig reader accepts it.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Writes [`render`]'s output to `path` (mode 0600: it holds a token).
pub fn write(
    path: &Path,
    cluster: &ClusterAccess,
    user: &str,
    token: &str,
    namespace: Option<&str>,
) -> Result<(), KubeconfigFileError> {
    write_text(path, &render(cluster, user, token, namespace))
}

/// Writes [`render_cert`]'s output to `path`.
pub fn write_cert(
    path: &Path,
    cluster: &ClusterAccess,
    user: &str,
    cert: &Path,
    key: &Path,
) -> Result<(), KubeconfigFileError> {
    write_text(path, &render_cert(cluster, user, cert, key))
}

fn write_text(path: &Path, text: &str) -> Result<(), KubeconfigFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| KubeconfigFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// The current context's cluster of an existing kubeconfig file.
pub fn cluster_of(path: &Path) -> Result<ClusterAccess, KubeconfigFileError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| KubeconfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let incomplete = |detail: String| KubeconfigFileError::Incomplete {
        path: path.to_path_buf(),
        detail,
    };
    let ctx_name = kc
        .current_context
        .clone()
        .ok_or_else(|| incomplete("no current-context".into()))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| incomplete(format!("context {ctx_name} not found")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| incomplete(format!("cluster {} not found", ctx.cluster)))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(ClusterAccess {
        server: cluster
            .server
            .ok_or_else(|| incomplete("cluster has no server".into()))?,
        // Relative CA paths are relative to the kubeconfig's directory.
        certificate_authority: cluster
            .certificate_authority
            .map(|ca| base.join(ca).display().to_string()),
        certificate_authority_data: cluster.certificate_authority_data,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        tls_server_name: cluster.tls_server_name,
    })
}

/// A kube client config from a kubeconfig file.
pub async fn load_config(path: &Path) -> Result<kube::Config, KubeconfigFileError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| KubeconfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|source| KubeconfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfig_round_trips_through_kube() {
        let cluster = ClusterAccess {
            server: "https://127.0.0.1:6443".into(),
            certificate_authority: Some("/tmp/ca.crt".into()),
            ..Default::default()
        };
        let text = render(&cluster, "sa", "tok", Some("ns1"));
        let kc = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("harness"));
        let ctx = kc.contexts[0].context.clone().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("ns1"));
        let c = kc.clusters[0].cluster.clone().unwrap();
        assert_eq!(c.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(c.certificate_authority.as_deref(), Some("/tmp/ca.crt"));
    }

    #[test]
    fn cluster_of_reads_back_what_render_wrote() {
        let dir = std::env::temp_dir().join(format!("harness-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kc");
        let cluster = ClusterAccess {
            server: "https://127.0.0.1:1".into(),
            certificate_authority_data: Some("QUJD".into()),
            ..Default::default()
        };
        write(&path, &cluster, "u", "t", None).unwrap();
        assert_eq!(cluster_of(&path).unwrap(), cluster);
    }
}

//! Writes a pod's volumes to `<pod dir>/volumes/<name>`: ConfigMap, Secret,
//! projected (ConfigMap, Secret, downward API, ServiceAccount token),
//! downward API and emptyDir. Anything else becomes an empty directory and a
//! warning. See [`super::mounts`] for how processes find them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod};

use super::fieldref;
use super::mounts::Mount;
use super::sources::{Data, SourceError, Sources};

/// What the volume writer needs besides the API objects.
pub struct VolumeContext<'a> {
    /// The pod's ServiceAccount token (for projected token sources).
    pub token: Option<&'a str>,
    /// The pod IP (downward API).
    pub pod_ip: &'a str,
    /// The node IP (downward API).
    pub host_ip: &'a str,
}

/// Errors writing volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A referenced ConfigMap/Secret is unusable.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing files failed.
    #[error("cannot write volume file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Volume name -> host directory, plus warnings.
#[derive(Debug, Default)]
pub struct Volumes {
    /// Host directory of each volume.
    pub dirs: HashMap<String, PathBuf>,
    /// Unsupported features met.
    pub warnings: Vec<String>,
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), VolumeError> {
    let path = dir.join(rel.trim_start_matches('/'));
    let io = |source| VolumeError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, bytes).map_err(io)
}

/// Writes `data` (all keys, or only `items` renamed to their paths).
fn write_data(dir: &Path, data: &Data, items: Option<&Vec<KeyToPath>>) -> Result<(), VolumeError> {
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                if let Some(bytes) = data.get(&item.key) {
                    write_file(dir, &item.path, bytes)?;
                }
            }
        }
        _ => {
            for (k, v) in data {
                write_file(dir, k, v)?;
            }
        }
    }
    Ok(())
}

async fn object(
    sources: &mut Sources,
    kind: &'static str,
    name: &str,
    optional: bool,
) -> Result<Option<Data>, SourceError> {
    match sources.get(kind, name).await? {
        Some(d) => Ok(Some(d)),
        None if optional => Ok(None),
        None => Err(SourceError::Missing {
            kind,
            name: name.to_string(),
        }),
    }
}

/// Writes every volume of `pod` under `pod_dir/volumes`.
pub async fn materialize(
    pod: &Pod,
    pod_dir: &Path,
    sources: &mut Sources,
    ctx: &VolumeContext<'_>,
) -> Result<Volumes, VolumeError> {
    let mut out = Volumes::default();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    for vol in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&vol.name);
        std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
            path: dir.clone(),
            source,
        })?;
        if let Some(cm) = &vol.config_map {
            if let Some(data) =
                object(sources, "ConfigMap", &cm.name, cm.optional.unwrap_or(false)).await?
            {
                write_data(&dir, &data, cm.items.as_ref())?;
            }
        } else if let Some(s) = &vol.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            if let Some(data) =
                object(sources, "Secret", &name, s.optional.unwrap_or(false)).await?
            {
                write_data(&dir, &data, s.items.as_ref())?;
            }
        } else if let Some(p) = &vol.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    if let Some(data) =
                        object(sources, "ConfigMap", &cm.name, cm.optional.unwrap_or(false)).await?
                    {
                        write_data(&dir, &data, cm.items.as_ref())?;
                    }
                } else if let Some(s) = &src.secret {
                    if let Some(data) =
                        object(sources, "Secret", &s.name, s.optional.unwrap_or(false)).await?
                    {
                        write_data(&dir, &data, s.items.as_ref())?;
                    }
                } else if let Some(t) = &src.service_account_token {
                    match ctx.token {
                        Some(token) => write_file(&dir, &t.path, token.as_bytes())?,
                        None => out.warnings.push(format!(
                            "volume {}: no ServiceAccount token available",
                            vol.name
                        )),
                    }
                } else if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        write_field(pod, ctx, &dir, &vol.name, item, &mut out.warnings)?;
                    }
                } else {
                    out.warnings.push(format!(
                        "volume {}: unsupported projected source; skipped",
                        vol.name
                    ));
                }
            }
        } else if let Some(d) = &vol.downward_api {
            for item in d.items.iter().flatten() {
                write_field(pod, ctx, &dir, &vol.name, item, &mut out.warnings)?;
            }
        } else if vol.empty_dir.is_none() {
            out.warnings.push(format!(
                "volume {}: type not supported by the node agent (only configMap, secret, projected, downwardAPI, emptyDir); an empty directory stands in",
                vol.name
            ));
        }
        out.dirs.insert(vol.name.clone(), dir);
    }
    Ok(out)
}

fn write_field(
    pod: &Pod,
    ctx: &VolumeContext<'_>,
    dir: &Path,
    vol: &str,
    item: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
    warnings: &mut Vec<String>,
) -> Result<(), VolumeError> {
    match &item.field_ref {
        Some(f) => match fieldref::resolve(pod, ctx.pod_ip, ctx.host_ip, &f.field_path) {
            Some(v) => write_file(dir, &item.path, v.as_bytes()),
            None => {
                warnings.push(format!(
                    "volume {vol}: fieldRef {} not supported",
                    f.field_path
                ));
                Ok(())
            }
        },
        None => {
            warnings.push(format!("volume {vol}: resourceFieldRef not supported"));
            Ok(())
        }
    }
}

/// The container's mounts, resolved to host paths (subPath included).
pub fn container_mounts(
    container: &Container,
    volumes: &Volumes,
    warnings: &mut Vec<String>,
) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let Some(dir) = volumes.dirs.get(&vm.name) else {
            warnings.push(format!("volumeMount {}: no such volume", vm.name));
            continue;
        };
        let mut host = dir.clone();
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = host.join(sub);
        }
        mounts.push(Mount {
            mount_path: vm.mount_path.clone(),
            host: host.display().to_string(),
        });
    }
    mounts
}

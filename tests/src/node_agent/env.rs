//! A container's environment: `envFrom`, then `env` (values with `$(VAR)`
//! expansion, downward-API `fieldRef`s, ConfigMap and Secret keys), in the
//! kubelet's order and precedence.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::expand::expand;
use super::fieldref;
use super::sources::{SourceError, Sources};

/// The resolved variables in definition order (later entries win), and
/// warnings about anything the agent did not support.
#[derive(Debug, Default)]
pub struct ResolvedEnv {
    /// `NAME=value` pairs, deduplicated, in order of first definition.
    pub vars: Vec<(String, String)>,
    /// Things that were skipped (logged by the caller).
    pub warnings: Vec<String>,
}

impl ResolvedEnv {
    /// The value of `name`, if defined.
    pub fn get(&self, name: &str) -> Option<String> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn set(&mut self, name: String, value: String) {
        match self.vars.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }
}

/// Resolves `container`'s env for `pod`.
pub async fn resolve(
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
    host_ip: &str,
    sources: &mut Sources,
) -> Result<ResolvedEnv, SourceError> {
    let mut env = ResolvedEnv::default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(cm) = &from.config_map_ref {
            ("ConfigMap", cm.name.clone(), cm.optional.unwrap_or(false))
        } else if let Some(s) = &from.secret_ref {
            ("Secret", s.name.clone(), s.optional.unwrap_or(false))
        } else {
            continue;
        };
        match sources.get(kind, &name).await? {
            Some(data) => {
                for (k, v) in data {
                    env.set(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(SourceError::Missing { kind, name }),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                match fieldref::resolve(pod, pod_ip, host_ip, &f.field_path) {
                    Some(v) => v,
                    None => {
                        env.warnings.push(format!(
                            "env {}: fieldRef {} not supported; set to \"\"",
                            var.name, f.field_path
                        ));
                        String::new()
                    }
                }
            } else if let Some(r) = &from.config_map_key_ref {
                match sources
                    .key("ConfigMap", &r.name, &r.key, r.optional.unwrap_or(false))
                    .await?
                {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => continue,
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources
                    .key("Secret", &r.name, &r.key, r.optional.unwrap_or(false))
                    .await?
                {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None => continue,
                }
            } else if let Some(r) = &from.resource_field_ref {
                env.warnings.push(format!(
                    "env {}: resourceFieldRef {} not supported; set to \"0\"",
                    var.name, r.resource
                ));
                "0".to_string()
            } else {
                env.warnings.push(format!(
                    "env {}: unsupported valueFrom; set to \"\"",
                    var.name
                ));
                String::new()
            }
        } else {
            let raw = var.value.clone().unwrap_or_default();
            expand(&raw, |n| env.get(n))
        };
        env.set(var.name.clone(), value);
    }
    Ok(env)
}

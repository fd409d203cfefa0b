//! The ConfigMaps and Secrets a pod refers to (env, envFrom, volumes),
//! fetched from the API server once per container start and cached.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

/// Why a referenced object could not be used (the kubelet reports these as
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The object does not exist and the reference is not optional.
    #[error("{kind} {name} not found")]
    Missing {
        /// ConfigMap or Secret.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The key is absent and the reference is not optional.
    #[error("key {key} not found in {kind} {name}")]
    MissingKey {
        /// ConfigMap or Secret.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// The API server failed.
    #[error("cannot read {kind} {name}: {source}")]
    Api {
        /// ConfigMap or Secret.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

/// Key -> bytes of one ConfigMap or Secret.
pub type Data = BTreeMap<String, Vec<u8>>;

/// A per-pod cache of ConfigMaps and Secrets.
pub struct Sources {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
    cache: HashMap<(&'static str, String), Option<Data>>,
}

impl Sources {
    /// Reads from namespace `ns`.
    pub fn new(client: Client, ns: &str) -> Self {
        Sources {
            configmaps: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client, ns),
            cache: HashMap::new(),
        }
    }

    /// The data of ConfigMap (`kind` "ConfigMap") or Secret `name`; `None`
    /// when it does not exist.
    pub async fn get(
        &mut self,
        kind: &'static str,
        name: &str,
    ) -> Result<Option<Data>, SourceError> {
        if let Some(hit) = self.cache.get(&(kind, name.to_string())) {
            return Ok(hit.clone());
        }
        let api_err = |source| SourceError::Api {
            kind,
            name: name.to_string(),
            source,
        };
        let data = if kind == "Secret" {
            self.secrets.get_opt(name).await.map_err(api_err)?.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            })
        } else {
            self.configmaps
                .get_opt(name)
                .await
                .map_err(api_err)?
                .map(|c| {
                    let mut d: Data = c
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    d.extend(
                        c.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    d
                })
        };
        self.cache.insert((kind, name.to_string()), data.clone());
        Ok(data)
    }

    /// One key, honouring `optional` (`Ok(None)` = skip it).
    pub async fn key(
        &mut self,
        kind: &'static str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        match self.get(kind, name).await? {
            None if optional => Ok(None),
            None => Err(SourceError::Missing {
                kind,
                name: name.to_string(),
            }),
            Some(data) => match data.get(key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(SourceError::MissingKey {
                    kind,
                    name: name.to_string(),
                    key: key.to_string(),
                }),
            },
        }
    }
}

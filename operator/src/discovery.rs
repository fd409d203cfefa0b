//! API discovery: which versions of the optional and version-dependent kinds
//! the cluster serves. The decision ([`decide`]) is pure; [`discover`] only
//! asks the API server for the groups involved.

use kube::discovery::{Discovery, Scope};
use kube::Client;

use crate::resources::Capabilities;

/// The API groups whose served versions matter to the operator.
pub const GROUPS: [&str; 3] = ["policy", "discovery.k8s.io", "monitoring.coreos.com"];

/// One served resource: (group, version, plural).
pub type Served = (String, String, String);

/// Picks versions from what is served: the newest known version wins, and
/// the v1beta1 fallbacks keep 1.20 clusters working. When neither version of
/// a required kind is served (an API server in an odd state), the v1 default
/// stands and applying will report the error.
pub fn decide(served: &[Served]) -> Capabilities {
    let has = |g: &str, v: &str, p: &str| {
        served
            .iter()
            .any(|(sg, sv, sp)| sg == g && sv == v && sp == p)
    };
    let mut caps = Capabilities::default();
    if !has("policy", "v1", "poddisruptionbudgets")
        && has("policy", "v1beta1", "poddisruptionbudgets")
    {
        caps.pdb_api_version = "policy/v1beta1".into();
    }
    if !has("discovery.k8s.io", "v1", "endpointslices")
        && has("discovery.k8s.io", "v1beta1", "endpointslices")
    {
        caps.endpointslice_api_version = "discovery.k8s.io/v1beta1".into();
    }
    caps.service_monitor = has("monitoring.coreos.com", "v1", "servicemonitors");
    caps.pod_monitor = has("monitoring.coreos.com", "v1", "podmonitors");
    caps
}

/// Asks the API server what it serves in [`GROUPS`] and decides.
pub async fn discover(client: Client) -> Result<Capabilities, kube::Error> {
    let discovery = Discovery::new(client).filter(&GROUPS).run().await?;
    let mut served = Vec::new();
    for group in discovery.groups() {
        for version in group.versions() {
            for (ar, caps) in group.versioned_resources(version) {
                if caps.scope == Scope::Namespaced {
                    served.push((ar.group.clone(), ar.version.clone(), ar.plural.clone()));
                }
            }
        }
    }
    Ok(decide(&served))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(g: &str, v: &str, p: &str) -> Served {
        (g.into(), v.into(), p.into())
    }

    #[test]
    fn kubernetes_1_20_gets_beta_versions() {
        let caps = decide(&[
            s("policy", "v1beta1", "poddisruptionbudgets"),
            s("discovery.k8s.io", "v1beta1", "endpointslices"),
        ]);
        assert_eq!(caps.pdb_api_version, "policy/v1beta1");
        assert_eq!(caps.endpointslice_api_version, "discovery.k8s.io/v1beta1");
        assert!(!caps.service_monitor && !caps.pod_monitor);
    }

    #[test]
    fn newer_clusters_get_v1_and_monitors_when_installed() {
        let caps = decide(&[
            s("policy", "v1", "poddisruptionbudgets"),
            s("policy", "v1beta1", "poddisruptionbudgets"),
            s("discovery.k8s.io", "v1", "endpointslices"),
            s("monitoring.coreos.com", "v1", "servicemonitors"),
        ]);
        assert_eq!(caps.pdb_api_version, "policy/v1");
        assert_eq!(caps.endpointslice_api_version, "discovery.k8s.io/v1");
        assert!(caps.service_monitor);
        assert!(!caps.pod_monitor);
    }
}

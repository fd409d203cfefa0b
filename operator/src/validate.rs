//! The first step of a reconcile: a `ZmqProxy` as read from the API server
//! becomes a [`Validated`] value, or the reconcile stops with a
//! [`ValidationError`].
//!
//! The CRD's schema and CEL rules already reject invalid specs at the door
//! (ranges, patterns, distinct ports, refresh below expiry), and serde fills
//! the spec's defaults. What remains for the operator is what CEL cannot say:
//! the metadata the API server sets (name, namespace, uid) must be there for
//! names and owner references, and defaults that depend on the operator
//! itself (the proxy image of its own version) are resolved here, so that
//! building the children ([`crate::build`]) cannot fail.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use crate::crd::{ZmqProxy, ZmqProxySpec};
use crate::curve::{self, CurvePlan};

/// Default proxy image repository (tests/images.sh tags the proxy image so).
pub const PROXY_IMAGE_REPOSITORY: &str = "ghcr.io/zmq-proxy/zmq-proxy";

/// A ZmqProxy whose every field the builders read is present and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// metadata.name: the base of every child's name.
    pub name: String,
    /// metadata.namespace: where every child lives.
    pub namespace: String,
    /// metadata.generation, when the API server set one.
    pub generation: Option<i64>,
    /// The controller owner reference every child carries, so that garbage
    /// collection removes children with their ZmqProxy and Owns() watches map
    /// child changes back to it.
    pub owner: OwnerReference,
    /// The spec, defaults filled in.
    pub spec: ZmqProxySpec,
    /// The proxy image: spec.image, else the image of the operator's version.
    pub image: String,
    /// Where the CURVE keys live; `None` with CURVE off.
    pub curve: Option<CurvePlan>,
}

impl Validated {
    /// The ZmqProxy's uid (the owner reference's).
    pub fn uid(&self) -> &str {
        &self.owner.uid
    }
}

/// Why a ZmqProxy cannot be reconciled. Only an object without the metadata
/// the API server always sets gets here.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// metadata.name, .namespace or .uid is missing.
    #[error("ZmqProxy has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// spec.security.curve breaks a CEL rule (an object stored before the
    /// CRD had the rule).
    #[error("spec.security.curve: {0}")]
    Curve(&'static str),
}

/// Image the proxies run when the spec names none: same version as the operator.
pub fn default_proxy_image() -> String {
    format!("{PROXY_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Checks `zp` and resolves its defaults.
pub fn validate(zp: &ZmqProxy) -> Result<Validated, ValidationError> {
    let meta = &zp.metadata;
    let name = meta
        .name
        .clone()
        .ok_or(ValidationError::MissingMetadata("name"))?;
    let namespace = meta
        .namespace
        .clone()
        .ok_or(ValidationError::MissingMetadata("namespace"))?;
    let uid = meta
        .uid
        .clone()
        .ok_or(ValidationError::MissingMetadata("uid"))?;
    let owner = OwnerReference {
        api_version: ZmqProxy::api_version(&()).into_owned(),
        kind: ZmqProxy::kind(&()).into_owned(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let curve = curve::plan(&zp.spec, &name).map_err(ValidationError::Curve)?;
    Ok(Validated {
        curve,
        name,
        namespace,
        generation: meta.generation,
        owner,
        image: zp.spec.image.clone().unwrap_or_else(default_proxy_image),
        spec: zp.spec.clone(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::ZmqProxySpec;
    use serde_json::{json, Value};

    /// A ZmqProxy "alpha" in "ns1" as the API server would return it.
    pub(crate) fn zp(spec: Value) -> ZmqProxy {
        let spec: ZmqProxySpec = serde_json::from_value(spec).unwrap();
        let mut zp = ZmqProxy::new("alpha", spec);
        zp.metadata.namespace = Some("ns1".into());
        zp.metadata.uid = Some("uid-1".into());
        zp.metadata.generation = Some(1);
        zp
    }

    /// [`zp`], validated.
    pub(crate) fn validated(spec: Value) -> Validated {
        validate(&zp(spec)).unwrap()
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut z = zp(json!({}));
        z.metadata.uid = None;
        assert!(matches!(
            validate(&z),
            Err(ValidationError::MissingMetadata("uid"))
        ));
        let mut z = zp(json!({}));
        z.metadata.namespace = None;
        assert!(matches!(
            validate(&z),
            Err(ValidationError::MissingMetadata("namespace"))
        ));
    }

    #[test]
    fn curve_past_the_cel_rules_is_an_error_not_a_panic() {
        let z = zp(json!({"security": {"curve": {"enabled": true}}}));
        assert!(matches!(validate(&z), Err(ValidationError::Curve(_))));
        let on = validated(json!({"security": {"curve": {"enabled": true,
            "authorizedKeys": {"secret": {"name": "peers"}}}}}));
        assert_eq!(
            on.curve.map(|p| p.key_secret).as_deref(),
            Some("alpha-curve")
        );
        assert_eq!(validated(json!({})).curve, None);
    }

    #[test]
    fn owner_reference_makes_the_zmqproxy_the_controller() {
        let v = validated(json!({}));
        assert_eq!(v.owner.kind, "ZmqProxy");
        assert_eq!(v.owner.api_version, "zmqproxy.io/v1alpha1");
        assert_eq!((v.owner.name.as_str(), v.uid()), ("alpha", "uid-1"));
        assert_eq!(v.owner.controller, Some(true));
        assert_eq!(v.owner.block_owner_deletion, Some(true));
    }

    #[test]
    fn image_defaults_to_the_operators_version() {
        assert_eq!(validated(json!({})).image, default_proxy_image());
        assert_eq!(
            validated(json!({"image": "example/proxy:1"})).image,
            "example/proxy:1"
        );
    }
}

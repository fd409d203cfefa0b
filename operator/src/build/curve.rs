//! CURVE in the proxy pod template: the key Secret and the authorized-keys
//! file as volumes, the two `ZMQ_PROXY_CURVE_*` variables naming the files,
//! the group that may read them, and the public-key annotation.
//!
//! Whole-volume mounts, never `subPath`: the kubelet updates a Secret or
//! ConfigMap volume in place (within its sync period, about a minute) but
//! never a subPath mount, and the proxy re-reads the authorized keys every
//! second, so peers are added and removed without a restart. The proxy reads
//! its own secret key only at start; the annotation carrying its public key
//! is what rolls the pods when that key changes. Authorized keys are not in
//! the template, so their edits never roll the pods.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EnvVar, KeyToPath, PodTemplateSpec, SecretVolumeSource, Volume,
    VolumeMount,
};

use crate::curve::{AuthorizedKeysSource, ProxyCurve};

/// Pod-template annotation: the proxy's Z85 public key.
pub const PUBLIC_KEY_ANNOTATION: &str = "zmqproxy.io/curve-public-key";
/// Env naming the secret key file (the proxy's `--curve-secret-key-file`).
pub const SECRET_KEY_FILE_ENV: &str = "ZMQ_PROXY_CURVE_SECRET_KEY_FILE";
/// Env naming the authorized-keys file (`--curve-authorized-keys`).
pub const AUTHORIZED_KEYS_ENV: &str = "ZMQ_PROXY_CURVE_AUTHORIZED_KEYS";
/// Mount directory of the key Secret.
pub const KEY_DIR: &str = "/etc/zmq-proxy/curve";
/// Mount directory of the authorized-keys file.
pub const AUTHORIZED_DIR: &str = "/etc/zmq-proxy/curve-authorized";
/// File name of the secret key in [`KEY_DIR`].
const SECRET_KEY_FILE: &str = "secret-key";
/// File name of the authorized keys in [`AUTHORIZED_DIR`].
const AUTHORIZED_KEYS_FILE: &str = "authorized_keys";
const KEY_VOLUME: &str = "curve-key";
const AUTHORIZED_VOLUME: &str = "curve-authorized-keys";
/// r--r-----: the owner (root) and the pod's fsGroup may read; the proxy
/// runs as a non-root user in that group.
const FILE_MODE: i32 = 0o440;

/// The env naming the mounted files.
pub fn env() -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    vec![
        var(SECRET_KEY_FILE_ENV, format!("{KEY_DIR}/{SECRET_KEY_FILE}")),
        var(
            AUTHORIZED_KEYS_ENV,
            format!("{AUTHORIZED_DIR}/{AUTHORIZED_KEYS_FILE}"),
        ),
    ]
}

fn item(key: &str, path: &str) -> Option<Vec<KeyToPath>> {
    Some(vec![KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: None,
    }])
}

fn volumes(curve: &ProxyCurve) -> Vec<Volume> {
    let plan = &curve.plan;
    let key = Volume {
        name: KEY_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(plan.key_secret.clone()),
            items: item(&plan.key, SECRET_KEY_FILE),
            default_mode: Some(FILE_MODE),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let authorized = match &plan.authorized_keys {
        AuthorizedKeysSource::Secret { name, key } => Volume {
            name: AUTHORIZED_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                items: item(key, AUTHORIZED_KEYS_FILE),
                default_mode: Some(FILE_MODE),
                optional: Some(false),
            }),
            ..Default::default()
        },
        AuthorizedKeysSource::ConfigMap { name, key } => Volume {
            name: AUTHORIZED_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                items: item(key, AUTHORIZED_KEYS_FILE),
                default_mode: Some(FILE_MODE),
                optional: Some(false),
            }),
            ..Default::default()
        },
    };
    vec![key, authorized]
}

fn mounts() -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    vec![
        mount(KEY_VOLUME, KEY_DIR),
        mount(AUTHORIZED_VOLUME, AUTHORIZED_DIR),
    ]
}

/// Adds CURVE to a proxy pod template whose first container is the proxy
/// (its env already holds [`env`]): volumes, mounts, fsGroup, annotation.
pub fn add_to_template(template: &mut PodTemplateSpec, curve: &ProxyCurve, group: i64) {
    if let Some(meta) = template.metadata.as_mut() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(PUBLIC_KEY_ANNOTATION.into(), curve.public_key.clone());
    }
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    pod.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes(curve));
    // Secret and ConfigMap volume files belong to root; fsGroup makes them
    // group-owned by the proxy's group so that mode 0440 lets it read them.
    pod.security_context
        .get_or_insert_with(Default::default)
        .fs_group = Some(group);
    for c in pod.containers.iter_mut().take(1) {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(mounts());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{env_of, pod_spec, template_annotations};
    use crate::build::workload::CONFIG_HASH_ANNOTATION;
    use crate::build::{build, Capabilities};
    use crate::curve::CurvePlan;
    use crate::validate::tests::validated;
    use serde_json::json;

    const PUBLIC: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

    fn curve_of(spec: serde_json::Value) -> (crate::build::Validated, ProxyCurve) {
        let zp = validated(spec);
        let plan: CurvePlan = zp.curve.clone().unwrap();
        let curve = ProxyCurve {
            plan,
            public_key: PUBLIC.into(),
        };
        (zp, curve)
    }

    #[test]
    fn curve_mounts_the_key_and_authorized_keys_as_whole_volumes() {
        let (zp, curve) = curve_of(json!({"security": {"curve": {
            "enabled": true,
            "authorizedKeys": {"configMap": {"name": "peers", "key": "keys.txt"}}}}}));
        let d = build(&zp, &Capabilities::default(), Some(&curve));
        let pod = pod_spec(&d.deployment);
        let volumes = pod.volumes.clone().unwrap();
        assert_eq!(volumes.len(), 2);
        let key = volumes[0].secret.as_ref().unwrap();
        assert_eq!(key.secret_name.as_deref(), Some("alpha-curve"));
        let items = key.items.clone().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("secret-key", "secret-key")
        );
        assert_eq!(key.default_mode, Some(0o440));
        let cm = volumes[1].config_map.as_ref().unwrap();
        assert_eq!(cm.name, "peers");
        let items = cm.items.clone().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("keys.txt", "authorized_keys")
        );
        assert_eq!(cm.default_mode, Some(0o440));
        let c = &pod.containers[0];
        let mounts = c.volume_mounts.clone().unwrap();
        for m in &mounts {
            assert_eq!(m.read_only, Some(true));
            // subPath mounts never see the kubelet's updates.
            assert!(m.sub_path.is_none() && m.sub_path_expr.is_none());
        }
        let paths: Vec<_> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(paths, [KEY_DIR, AUTHORIZED_DIR]);
        let env = env_of(c);
        assert_eq!(
            env[SECRET_KEY_FILE_ENV].value.as_deref(),
            Some("/etc/zmq-proxy/curve/secret-key")
        );
        assert_eq!(
            env[AUTHORIZED_KEYS_ENV].value.as_deref(),
            Some("/etc/zmq-proxy/curve-authorized/authorized_keys")
        );
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65532));
        assert_eq!(
            template_annotations(&d.deployment)[PUBLIC_KEY_ANNOTATION],
            PUBLIC
        );
    }

    #[test]
    fn a_named_key_secret_and_secret_authorized_keys() {
        let (zp, curve) = curve_of(json!({"security": {"curve": {
            "enabled": true,
            "keySecret": {"name": "my-key", "key": "proxy.key"},
            "authorizedKeys": {"secret": {"name": "peers"}}}}}));
        let d = build(&zp, &Capabilities::default(), Some(&curve));
        let volumes = pod_spec(&d.deployment).volumes.clone().unwrap();
        let key = volumes[0].secret.as_ref().unwrap();
        assert_eq!(key.secret_name.as_deref(), Some("my-key"));
        assert_eq!(key.items.as_ref().unwrap()[0].key, "proxy.key");
        let authorized = volumes[1].secret.as_ref().unwrap();
        assert_eq!(authorized.secret_name.as_deref(), Some("peers"));
        assert_eq!(authorized.items.as_ref().unwrap()[0].key, "authorized_keys");
    }

    #[test]
    fn without_curve_the_template_has_none_of_it() {
        let d = build(&validated(json!({})), &Capabilities::default(), None);
        let pod = pod_spec(&d.deployment);
        assert!(pod.volumes.is_none());
        assert!(pod.containers[0].volume_mounts.is_none());
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, None);
        let env = env_of(&pod.containers[0]);
        assert!(!env.contains_key(SECRET_KEY_FILE_ENV) && !env.contains_key(AUTHORIZED_KEYS_ENV));
        assert!(!template_annotations(&d.deployment).contains_key(PUBLIC_KEY_ANNOTATION));
    }

    #[test]
    fn a_new_proxy_key_rolls_the_pods_and_nothing_else_changes_the_hash() {
        let (zp, curve) = curve_of(json!({"security": {"curve": {
            "enabled": true, "authorizedKeys": {"secret": {"name": "peers"}}}}}));
        let caps = Capabilities::default();
        let a = build(&zp, &caps, Some(&curve));
        let rotated = ProxyCurve {
            public_key: "another-key".into(),
            ..curve.clone()
        };
        let b = build(&zp, &caps, Some(&rotated));
        let (ta, tb) = (
            template_annotations(&a.deployment),
            template_annotations(&b.deployment),
        );
        assert_ne!(ta[PUBLIC_KEY_ANNOTATION], tb[PUBLIC_KEY_ANNOTATION]);
        assert_eq!(ta[CONFIG_HASH_ANNOTATION], tb[CONFIG_HASH_ANNOTATION]);
        // The key is not configuration: the ConfigMap is unchanged.
        assert_eq!(a.config_map, b.config_map);
    }
}

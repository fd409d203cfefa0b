//! The proxy's CURVE keys as the operator handles them, without I/O: where a
//! ZmqProxy's keys live ([`CurvePlan`], from the spec), the Secret the
//! operator generates when the spec names none ([`generated_secret`]), and
//! the public key of the secret key a Secret holds ([`public_key_of`]), with
//! what can be wrong with it ([`KeyProblem`]). [`crate::curve_secret`] reads
//! and creates the Secrets.
//!
//! The operator only ever derives the public key: the secret key stays in
//! its Secret, mounted into the proxy pods, and never reaches the pod
//! template, the status, an Event or a log line.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use zmtp::curve::z85::{self, Z85Error};
use zmtp::curve::{CryptoRngCore, KeyPair, KEY_LEN};

use crate::build::names::{child_meta, PROXY};
use crate::crd::ZmqProxySpec;
use crate::validate::Validated;

/// Data key of the Z85 secret key in a generated Secret (and the default
/// `keySecret.key`).
pub const SECRET_KEY: &str = "secret-key";
/// Data key of the Z85 public key in a generated Secret, for whoever
/// configures clients by hand (`kubectl get secret`); the operator itself
/// always derives the public key from the secret key.
pub const PUBLIC_KEY: &str = "public-key";

/// Name of the Secret the operator generates for `zp_name`.
pub fn generated_secret_name(zp_name: &str) -> String {
    format!("{zp_name}-curve")
}

/// Where the authorized-keys file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizedKeysSource {
    /// A Secret's key.
    Secret {
        /// Secret name.
        name: String,
        /// Data key.
        key: String,
    },
    /// A ConfigMap's key.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Data key.
        key: String,
    },
}

/// Where a ZmqProxy with CURVE on keeps its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurvePlan {
    /// The Secret holding the proxy's secret key.
    pub key_secret: String,
    /// Its data key.
    pub key: String,
    /// Whether the operator generates that Secret (spec without keySecret).
    pub generated: bool,
    /// The authorized-keys file.
    pub authorized_keys: AuthorizedKeysSource,
}

/// A plan with its key found good: what the pod template is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCurve {
    /// Where the keys live.
    pub plan: CurvePlan,
    /// Z85 public key of the secret key in `plan.key_secret`.
    pub public_key: String,
}

/// The CURVE plan of a spec: `None` with CURVE off; an error (a static
/// reason) for what the CRD's CEL rules reject, should an object get past
/// them (stored under an older CRD).
pub fn plan(spec: &ZmqProxySpec, zp_name: &str) -> Result<Option<CurvePlan>, &'static str> {
    let curve = &spec.security.curve;
    if !curve.enabled {
        return Ok(None);
    }
    if spec.local_publisher.enabled {
        return Err("the local publisher does not support CURVE yet");
    }
    let authorized = curve
        .authorized_keys
        .as_ref()
        .ok_or("authorizedKeys is required when CURVE is enabled")?;
    let authorized_keys = match (&authorized.secret, &authorized.config_map) {
        (Some(s), None) => AuthorizedKeysSource::Secret {
            name: s.name.clone(),
            key: s.key.clone(),
        },
        (None, Some(c)) => AuthorizedKeysSource::ConfigMap {
            name: c.name.clone(),
            key: c.key.clone(),
        },
        _ => return Err("authorizedKeys needs exactly one of secret and configMap"),
    };
    let (key_secret, key, generated) = match &curve.key_secret {
        Some(k) => (k.name.clone(), k.key.clone(), false),
        None => (generated_secret_name(zp_name), SECRET_KEY.to_string(), true),
    };
    Ok(Some(CurvePlan {
        key_secret,
        key,
        generated,
        authorized_keys,
    }))
}

/// Why the proxy's key cannot be used. The messages name the Secret and
/// key but never echo key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// The Secret does not exist.
    #[error("Secret {secret} does not exist")]
    SecretMissing {
        /// Secret name.
        secret: String,
    },
    /// The Secret has no such data key.
    #[error("Secret {secret} has no key {key}")]
    KeyMissing {
        /// Secret name.
        secret: String,
        /// Data key.
        key: String,
    },
    /// The value is not a Z85 CURVE secret key.
    #[error("key {key} of Secret {secret} is not a Z85 CURVE secret key: {reason}")]
    Malformed {
        /// Secret name.
        secret: String,
        /// Data key.
        key: String,
        /// What is wrong, without the key's characters.
        reason: String,
    },
}

/// The 32 bytes of a Z85 secret key, or what is wrong with it, without
/// quoting it (an offending character is part of a secret).
fn decode_secret(value: &[u8]) -> Result<[u8; KEY_LEN], String> {
    let text = std::str::from_utf8(value).map_err(|_| "it is not UTF-8 text".to_string())?;
    // The proxy ignores surrounding whitespace too (a trailing newline from
    // `kubectl create secret --from-file`).
    z85::decode_key(text.trim()).map_err(|e| match e {
        Z85Error::TextLength { len } | Z85Error::BinaryLength { len } => {
            format!("it has {len} characters, a Z85 key has 40")
        }
        Z85Error::BadCharacter { offset, .. } => {
            format!("the character at offset {offset} is not Z85")
        }
        Z85Error::Overflow { offset } => format!("the group at offset {offset} overflows 32 bits"),
    })
}

/// The Z85 public key of the secret key under `plan.key` in `secret`
/// (`None`: the Secret does not exist).
pub fn public_key_of(plan: &CurvePlan, secret: Option<&Secret>) -> Result<String, KeyProblem> {
    let secret_name = || plan.key_secret.clone();
    let secret = secret.ok_or_else(|| KeyProblem::SecretMissing {
        secret: secret_name(),
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&plan.key))
        .ok_or_else(|| KeyProblem::KeyMissing {
            secret: secret_name(),
            key: plan.key.clone(),
        })?;
    let bytes = decode_secret(&value.0).map_err(|reason| KeyProblem::Malformed {
        secret: secret_name(),
        key: plan.key.clone(),
        reason,
    })?;
    Ok(z85::encode_key(&KeyPair::from_secret(bytes).public()))
}

/// The Secret `<name>-curve` holding a fresh keypair: `secret-key` and
/// `public-key` in Z85, owned by the ZmqProxy so that it goes with it.
/// Called once per ZmqProxy: the operator creates it only when it does not
/// exist, and never replaces it.
pub fn generated_secret(zp: &Validated, rng: &mut impl CryptoRngCore) -> Secret {
    let mut secret = [0u8; KEY_LEN];
    rng.fill_bytes(&mut secret);
    let public = KeyPair::from_secret(secret).public();
    let data = BTreeMap::from([
        (
            SECRET_KEY.to_string(),
            ByteString(z85::encode_key(&secret).into_bytes()),
        ),
        (
            PUBLIC_KEY.to_string(),
            ByteString(z85::encode_key(&public).into_bytes()),
        ),
    ]);
    Secret {
        metadata: child_meta(zp, generated_secret_name(&zp.name), PROXY),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::validated;
    use serde_json::json;
    use zmtp::curve::OsRng;

    // RFC 32's and libzmq's test keypair.
    const SERVER_PUBLIC: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const SERVER_SECRET: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";

    fn curve_spec(curve: serde_json::Value) -> ZmqProxySpec {
        serde_json::from_value(json!({"security": {"curve": curve}})).unwrap()
    }

    fn secret_with(key: &str, value: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(value.to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn named_plan() -> CurvePlan {
        plan(
            &curve_spec(json!({"enabled": true, "keySecret": {"name": "k"},
                                "authorizedKeys": {"configMap": {"name": "a"}}})),
            "alpha",
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn plan_follows_the_spec_and_its_defaults() {
        assert_eq!(plan(&curve_spec(json!({})), "alpha"), Ok(None));
        let generated = plan(
            &curve_spec(json!({"enabled": true, "authorizedKeys": {"secret": {"name": "peers"}}})),
            "alpha",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            generated,
            CurvePlan {
                key_secret: "alpha-curve".into(),
                key: "secret-key".into(),
                generated: true,
                authorized_keys: AuthorizedKeysSource::Secret {
                    name: "peers".into(),
                    key: "authorized_keys".into()
                },
            }
        );
        let named = named_plan();
        assert_eq!(
            (named.key_secret.as_str(), named.key.as_str()),
            ("k", "secret-key")
        );
        assert!(!named.generated);
        assert_eq!(
            named.authorized_keys,
            AuthorizedKeysSource::ConfigMap {
                name: "a".into(),
                key: "authorized_keys".into()
            }
        );
    }

    #[test]
    fn plan_refuses_what_cel_refuses() {
        assert!(plan(&curve_spec(json!({"enabled": true})), "a").is_err());
        assert!(plan(
            &curve_spec(json!({"enabled": true, "authorizedKeys": {}})),
            "a"
        )
        .is_err());
        assert!(plan(
            &curve_spec(json!({"enabled": true, "authorizedKeys": {
                "secret": {"name": "s"}, "configMap": {"name": "c"}}})),
            "a"
        )
        .is_err());
        let mut spec = curve_spec(json!({"enabled": true,
            "authorizedKeys": {"secret": {"name": "s"}}}));
        spec.local_publisher.enabled = true;
        assert!(plan(&spec, "a").is_err());
    }

    #[test]
    fn public_key_is_derived_as_libzmq_does() {
        let p = named_plan();
        let s = secret_with("secret-key", format!("{SERVER_SECRET}\n").as_bytes());
        assert_eq!(public_key_of(&p, Some(&s)).unwrap(), SERVER_PUBLIC);
    }

    #[test]
    fn key_problems_are_reported_without_the_key() {
        let p = named_plan();
        assert_eq!(
            public_key_of(&p, None),
            Err(KeyProblem::SecretMissing { secret: "k".into() })
        );
        let other = secret_with("other", SERVER_SECRET.as_bytes());
        assert_eq!(
            public_key_of(&p, Some(&other)),
            Err(KeyProblem::KeyMissing {
                secret: "k".into(),
                key: "secret-key".into()
            })
        );
        let cases: [(&[u8], &str); 4] = [
            (b"short", "5 characters"),
            (b"\xff\xfe", "not UTF-8"),
            // '~' is not in the alphabet; the message must not quote it.
            (b"~TKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6", "offset 0"),
            (b"%%%%%%%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6", "overflows"),
        ];
        for (value, needle) in cases {
            let e = public_key_of(&p, Some(&secret_with("secret-key", value))).unwrap_err();
            assert!(matches!(e, KeyProblem::Malformed { .. }), "{e}");
            let message = e.to_string();
            assert!(message.contains(needle), "{message}");
            assert!(
                !message.contains('~') && !message.contains("TKVSB"),
                "{message}"
            );
        }
    }

    #[test]
    fn generated_secret_holds_a_matching_keypair_and_is_owned() {
        let zp = validated(json!({}));
        let s = generated_secret(&zp, &mut OsRng);
        assert_eq!(s.metadata.name.as_deref(), Some("alpha-curve"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("ns1"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        let data = s.data.as_ref().unwrap();
        let public = String::from_utf8(data[PUBLIC_KEY].0.clone()).unwrap();
        let mut p = named_plan();
        p.key_secret = "alpha-curve".into();
        assert_eq!(public_key_of(&p, Some(&s)).unwrap(), public);
        // Fresh each time.
        let again = generated_secret(&zp, &mut OsRng);
        assert_ne!(again.data.unwrap()[SECRET_KEY], data[SECRET_KEY]);
    }
}

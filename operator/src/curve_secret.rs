//! The I/O half of the proxy's CURVE key ([`crate::curve`] is the pure
//! half): reads the Secret holding the key and, when the spec names none,
//! makes sure the generated Secret `<name>-curve` exists.
//!
//! A generated key is created once and never replaced: proxies and the
//! clients that know its public key depend on it. So the Secret is read
//! first and created with a plain POST only when absent; an AlreadyExists
//! answer means another writer (an earlier operator leader) won, and its
//! Secret is read back. Server-side apply would overwrite the key with a
//! fresh one on every reconcile.
//!
//! The operator has `get` and `create` on Secrets, no `list`/`watch`: a
//! watch would cache every Secret of the watched namespaces in its memory.
//! So an edited key Secret is noticed at the next reconcile of its ZmqProxy
//! (the periodic resync, [`crate::context::Context::resync`], or any change
//! to the ZmqProxy or its children), which then rolls the pods.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::Client;
use zmtp::curve::OsRng;

use crate::curve::{self, KeyProblem, ProxyCurve};
use crate::validate::Validated;

/// Why the CURVE key could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The key is missing or malformed: a problem for the user to fix,
    /// reported in the status.
    #[error(transparent)]
    Key(#[from] KeyProblem),
    /// The API server refused or failed a request.
    #[error("reading the CURVE key Secret: {0}")]
    Kube(#[from] kube::Error),
}

/// The CURVE settings of `zp` with its proxy's public key; `None` with
/// CURVE off. Creates the generated Secret when the spec names no Secret
/// and it does not exist yet.
pub async fn resolve(client: &Client, zp: &Validated) -> Result<Option<ProxyCurve>, ResolveError> {
    let Some(plan) = &zp.curve else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &zp.namespace);
    let mut secret = api.get_opt(&plan.key_secret).await?;
    if secret.is_none() && plan.generated {
        secret = Some(create_generated(&api, zp).await?);
    }
    let public_key = curve::public_key_of(plan, secret.as_ref())?;
    Ok(Some(ProxyCurve {
        plan: plan.clone(),
        public_key,
    }))
}

/// Creates the generated key Secret, or reads the one another writer
/// created in the meantime.
async fn create_generated(api: &Api<Secret>, zp: &Validated) -> Result<Secret, kube::Error> {
    let fresh = curve::generated_secret(zp, &mut OsRng);
    match api.create(&PostParams::default(), &fresh).await {
        Ok(created) => {
            tracing::info!(
                namespace = %zp.namespace,
                secret = %curve::generated_secret_name(&zp.name),
                "generated the proxy's CURVE keypair"
            );
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(&curve::generated_secret_name(&zp.name)).await
        }
        Err(e) => Err(e),
    }
}

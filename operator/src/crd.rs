//! The `ZmqProxy` custom resource (group `zmqproxy.io`, version `v1alpha1`).
//!
//! The spec carries defaults and OpenAPI v3 validation (enums, ranges,
//! patterns, required fields); the cross-field rules OpenAPI cannot express
//! are CEL rules (`x-kubernetes-validations`, GA since Kubernetes 1.29), so
//! the API server rejects every invalid object at the door with the rule's
//! message and the operator only ever sees valid specs. CEL runs after
//! defaulting, so the rules may read every defaulted field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the resource.
pub const GROUP: &str = "zmqproxy.io";
/// The (only) served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Desired state of one proxy fleet: a Deployment of `zmq-proxy` pods that
/// register themselves behind a headless Service.
// Several printcolumns share `type_ = ...`; clippy reads the repeated key
// inside `#[kube(...)]` as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "zmqproxy.io",
    version = "v1alpha1",
    kind = "ZmqProxy",
    plural = "zmqproxies",
    shortname = "zp",
    category = "zmq",
    namespaced,
    status = "ZmqProxyStatus",
    derive = "PartialEq",
    doc = "A fleet of oslo.messaging ZeroMQ proxies managed by zmq-proxy-operator",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every replica runs and is registered"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired number of proxy pods"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Proxy pods that are ready",
        priority = 1
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Routing mode"
    ),
    printcolumn(
        name = "Curve",
        type_ = "boolean",
        json_path = ".spec.security.curve.enabled",
        description = "Whether the proxy sockets use CURVE",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Each listener needs its own port on the pod IP: the backend only in
// DoubleRouter mode, the publisher only with pub/sub. One rule per port so
// the message names the port that clashes. Static messages: a
// `messageExpression` with string(int) is over the API server's CEL cost
// budget (the estimated string length is unbounded).
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.ports.frontend != self.ports.metrics",
        "message": "ports.frontend and ports.metrics must differ",
        "fieldPath": ".ports",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.mode != 'DoubleRouter' || (self.ports.backend != self.ports.frontend && self.ports.backend != self.ports.metrics)",
        "message": "ports.backend must differ from ports.frontend and ports.metrics in DoubleRouter mode",
        "fieldPath": ".ports",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!self.pubSub.enabled || (self.ports.publisher != self.ports.frontend && self.ports.publisher != self.ports.metrics && (self.mode != 'DoubleRouter' || self.ports.publisher != self.ports.backend))",
        "message": "ports.publisher must differ from the other ports in use when pubSub is enabled",
        "fieldPath": ".ports",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!self.security.curve.enabled || !self.localPublisher.enabled",
        "message": "the local publisher does not support CURVE yet: disable localPublisher or security.curve",
        "reason": "FieldValueForbidden",
    },
]))]
pub struct ZmqProxySpec {
    /// Number of proxy pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Routing mode: DoubleRouter (frontend + backend ROUTER) or SingleRouter.
    #[serde(default)]
    pub mode: ProxyMode,
    /// Ports the proxy listens on.
    #[serde(default)]
    pub ports: Ports,
    /// Pub/sub for fanout and notify (oslo `use_pub_sub`).
    #[serde(default)]
    pub pub_sub: PubSub,
    /// One local publisher per node (a DaemonSet), re-publishing the central
    /// PUB sockets node-locally so fanout crosses the network once per node.
    #[serde(default)]
    pub local_publisher: LocalPublisher,
    /// Matchmaker settings: Kubernetes EndpointSlices always; Redis optionally.
    #[serde(default)]
    pub matchmaker: Matchmaker,
    /// ZeroMQ socket options.
    #[serde(default)]
    pub socket: SocketOptions,
    /// Seconds the proxy drains after SIGTERM before it exits.
    #[serde(default = "default_grace_period")]
    #[schemars(range(min = 0, max = 3600))]
    pub grace_period_seconds: i32,
    /// Seconds the kubelet waits (preStop `sleep`) before sending SIGTERM;
    /// 0 = no preStop hook. Only useful for DNS-based clients, and only with
    /// an image that has `sleep`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 300))]
    pub pre_stop_delay_seconds: i32,
    /// Container image; defaults to the proxy image matching the operator version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: Option<String>,
    /// Image pull policy of the proxy containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints; when unset, pods spread over nodes
    /// (`kubernetes.io/hostname`, maxSkew 1, ScheduleAnyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// The PodDisruptionBudget of the proxy pods.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// Log level and format of the proxies.
    #[serde(default)]
    pub logging: Logging,
    /// Prometheus integration.
    #[serde(default)]
    pub monitoring: Monitoring,
    /// Transport security of the proxy sockets.
    #[serde(default)]
    pub security: Security,
}

fn default_replicas() -> i32 {
    2
}

fn default_grace_period() -> i32 {
    10
}

/// Routing mode of the proxy (`--mode`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ProxyMode {
    /// Frontend ROUTER for clients, backend ROUTER for servers.
    #[default]
    DoubleRouter,
    /// One ROUTER for clients and servers.
    SingleRouter,
}

impl ProxyMode {
    /// The value of the proxy's `--mode` flag.
    pub fn flag_value(self) -> &'static str {
        match self {
            ProxyMode::DoubleRouter => "double-router",
            ProxyMode::SingleRouter => "single-router",
        }
    }
}

/// Listening ports of a proxy pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ports {
    /// Frontend ROUTER (clients).
    #[serde(default = "default_frontend")]
    #[schemars(range(min = 1, max = 65535))]
    pub frontend: i32,
    /// Backend ROUTER (servers); unused in SingleRouter mode.
    #[serde(default = "default_backend")]
    #[schemars(range(min = 1, max = 65535))]
    pub backend: i32,
    /// Central PUB socket; used when pub/sub is enabled.
    #[serde(default = "default_publisher")]
    #[schemars(range(min = 1, max = 65535))]
    pub publisher: i32,
    /// HTTP listener for /metrics, /healthz and /readyz.
    #[serde(default = "default_metrics")]
    #[schemars(range(min = 1, max = 65535))]
    pub metrics: i32,
}

fn default_frontend() -> i32 {
    50001
}
fn default_backend() -> i32 {
    50002
}
fn default_publisher() -> i32 {
    50003
}
fn default_metrics() -> i32 {
    9090
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            frontend: default_frontend(),
            backend: default_backend(),
            publisher: default_publisher(),
            metrics: default_metrics(),
        }
    }
}

/// Pub/sub settings (oslo `use_pub_sub`, `zmq_ack_pub_sub`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PubSub {
    /// Publish fanout and notify on the PUB socket instead of routing them.
    #[serde(default)]
    pub enabled: bool,
    /// Acknowledge fanout/notify messages received on the frontend.
    #[serde(default)]
    pub ack_pub_sub: bool,
}

/// Local publisher DaemonSet settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalPublisher {
    /// Run one local publisher per node.
    #[serde(default)]
    pub enabled: bool,
    /// Node-local port (hostPort) of the local publisher's PUB socket.
    #[serde(default = "default_local_publisher_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_local_publisher_port() -> i32 {
    50004
}

impl Default for LocalPublisher {
    fn default() -> Self {
        LocalPublisher {
            enabled: false,
            port: default_local_publisher_port(),
        }
    }
}

/// Matchmaker settings. Proxies always register in Kubernetes
/// EndpointSlices; a Redis URL additionally serves unmodified oslo services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// A registration refreshed no sooner than it expires flickers out of the
// matchmaker between refreshes.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.targetUpdateSeconds < self.targetExpireSeconds",
    "message": "matchmaker.targetUpdateSeconds must be below targetExpireSeconds",
    "reason": "FieldValueInvalid",
}]))]
pub struct Matchmaker {
    /// Secret key holding an oslo transport URL such as `zmq+redis://host:6379`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_secret: Option<SecretKeyRef>,
    /// Seconds a registration lives without refresh (oslo `zmq_target_expire`).
    #[serde(default = "default_target_expire")]
    #[schemars(range(min = 1, max = 86400))]
    pub target_expire_seconds: i32,
    /// Seconds between refreshes (oslo `zmq_target_update`); must be below
    /// targetExpireSeconds.
    #[serde(default = "default_target_update")]
    #[schemars(range(min = 1, max = 86400))]
    pub target_update_seconds: i32,
}

fn default_target_expire() -> i32 {
    300
}
fn default_target_update() -> i32 {
    180
}

impl Default for Matchmaker {
    fn default() -> Self {
        Matchmaker {
            redis_url_secret: None,
            target_expire_seconds: default_target_expire(),
            target_update_seconds: default_target_update(),
        }
    }
}

/// A key in a Secret of the ZmqProxy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Transport security of the proxy sockets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Security {
    /// CurveZMQ encryption and peer authentication on every proxy socket.
    #[serde(default)]
    pub curve: Curve,
}

/// CURVE settings. The proxy's keypair comes from `keySecret`, or from a
/// Secret `<name>-curve` the operator generates once; the peers allowed to
/// connect come from `authorizedKeys`, which the proxies re-read live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Without authorized keys a CURVE proxy would refuse every peer.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.enabled || has(self.authorizedKeys)",
    "message": "security.curve.authorizedKeys is required when CURVE is enabled",
    "reason": "FieldValueRequired",
}]))]
pub struct Curve {
    /// Encrypt and authenticate the proxy sockets with CURVE.
    #[serde(default)]
    pub enabled: bool,
    /// The proxy's secret key, from a Secret of the namespace; when unset,
    /// the operator generates a keypair once into the Secret `<name>-curve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<CurveKeySecret>,
    /// The authorized-keys file (`<Z85 public key> [identity patterns]` per
    /// line): exactly one of secret and configMap. Edits reach the running
    /// proxies without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<AuthorizedKeys>,
}

/// The Secret key holding the proxy's Z85 secret key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurveKeySecret {
    /// Secret name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key in the Secret's data holding the 40-character Z85 secret key.
    #[serde(default = "default_secret_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key_key() -> String {
    "secret-key".to_string()
}

/// Where the authorized-keys file lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.secret) != has(self.configMap)",
    "message": "security.curve.authorizedKeys needs exactly one of secret and configMap",
    "reason": "FieldValueInvalid",
}]))]
pub struct AuthorizedKeys {
    /// A Secret key holding the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<AuthorizedKeysRef>,
    /// A ConfigMap key holding the file (public keys are not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<AuthorizedKeysRef>,
}

/// A key of a Secret or ConfigMap in the ZmqProxy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizedKeysRef {
    /// Object name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key in the object's data.
    #[serde(default = "default_authorized_keys_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_authorized_keys_key() -> String {
    "authorized_keys".to_string()
}

/// ZeroMQ socket options of the proxy sockets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SocketOptions {
    /// High-water mark per socket (0 = unlimited, as in oslo).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000000))]
    pub hwm: i32,
    /// Linger on close in milliseconds (-1 = wait forever).
    #[serde(default = "default_linger")]
    #[schemars(range(min = -1, max = 3600000))]
    pub linger_ms: i32,
    /// TCP keepalive: Default keeps the OS setting.
    #[serde(default)]
    pub tcp_keepalive: KeepaliveMode,
    /// Seconds idle before the first keepalive probe (-1 = OS default).
    #[serde(default = "minus_one")]
    #[schemars(range(min = -1, max = 86400))]
    pub tcp_keepalive_idle: i32,
    /// Seconds between keepalive probes (-1 = OS default).
    #[serde(default = "minus_one")]
    #[schemars(range(min = -1, max = 86400))]
    pub tcp_keepalive_interval: i32,
    /// Unanswered probes before the connection drops (-1 = OS default).
    #[serde(default = "minus_one")]
    #[schemars(range(min = -1, max = 1000))]
    pub tcp_keepalive_count: i32,
}

fn default_linger() -> i32 {
    -1
}
fn minus_one() -> i32 {
    -1
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            hwm: 0,
            linger_ms: default_linger(),
            tcp_keepalive: KeepaliveMode::Default,
            tcp_keepalive_idle: -1,
            tcp_keepalive_interval: -1,
            tcp_keepalive_count: -1,
        }
    }
}

/// TCP keepalive switch (ZMQ_TCP_KEEPALIVE -1 / 0 / 1).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KeepaliveMode {
    /// Leave the OS default.
    #[default]
    Default,
    /// Force keepalive on.
    Enabled,
    /// Force keepalive off.
    Disabled,
}

impl KeepaliveMode {
    /// The ZMQ_TCP_KEEPALIVE value the proxy's `--tcp-keepalive` takes.
    pub fn zmq_value(self) -> i32 {
        match self {
            KeepaliveMode::Default => -1,
            KeepaliveMode::Enabled => 1,
            KeepaliveMode::Disabled => 0,
        }
    }
}

/// Image pull policy (core/v1 PullPolicy values).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when absent.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The string Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// PodDisruptionBudget settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be voluntarily disrupted at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,
}

fn default_true() -> bool {
    true
}
fn default_max_unavailable() -> i32 {
    1
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// Proxy logging.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// Log level (RUST_LOG).
    #[serde(default)]
    pub level: LogLevel,
    /// Log format.
    #[serde(default)]
    pub format: LogFormat,
}

/// Log level of the proxies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems only.
    Warn,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The RUST_LOG directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Log format of the proxies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The value of `--log-format`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Prometheus integration of the proxy pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// `prometheus.io/*` scrape annotations on the proxy pods.
    #[serde(default = "default_true")]
    pub scrape_annotations: bool,
    /// Create a monitoring.coreos.com/v1 ServiceMonitor (and a metrics Service).
    #[serde(default)]
    pub service_monitor: bool,
    /// Create a monitoring.coreos.com/v1 PodMonitor.
    #[serde(default)]
    pub pod_monitor: bool,
    /// Scrape interval of the monitors.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
}

fn default_interval() -> String {
    "30s".to_string()
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            scrape_annotations: true,
            service_monitor: false,
            pod_monitor: false,
            interval: default_interval(),
        }
    }
}

/// Observed state, computed by the operator from the children.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZmqProxyStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Proxy pods that exist (scale subresource statusReplicasPath).
    #[serde(default)]
    pub replicas: i32,
    /// Proxy pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Proxies registered in the headless Service's EndpointSlices.
    #[serde(default)]
    pub endpoints: Vec<ProxyEndpoint>,
    /// Label selector of the proxy pods (scale subresource labelSelectorPath).
    /// Unset until the first status write (no `default: ""` in the schema:
    /// an empty selector would select every pod for a scaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Z85 CURVE public key the proxy pods are configured with (from the
    /// Deployment's pod template); unset when CURVE is off.
    // Not skipped when None: a null in the status merge patch is what
    // removes the key once CURVE is turned off.
    #[serde(default)]
    pub curve_public_key: Option<String>,
}

/// One registered proxy, as read from an EndpointSlice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyEndpoint {
    /// Address the proxy advertises.
    pub address: String,
    /// Pod behind the endpoint, when the slice names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Endpoint readiness as registered.
    pub ready: bool,
    /// Named ports (frontend, backend, publisher) of the endpoint.
    #[serde(default)]
    pub ports: BTreeMap<String, i32>,
}

/// The CRD as YAML, exactly what `zmq-proxy-operator crd` prints and crds/ holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&ZmqProxy::crd())?;
    Ok(format!(
        "# Generated by `zmq-proxy-operator crd`; do not edit by hand.\n---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn schema() -> Value {
        let crd = serde_json::to_value(ZmqProxy::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Walks the schema and reports every node violating the structural
    /// schema rules of apiextensions.k8s.io/v1 (type everywhere, no $ref,
    /// no additionalProperties next to properties, anyOf/oneOf without type).
    fn structural_violations(path: &str, node: &Value, out: &mut Vec<String>) {
        let Some(obj) = node.as_object() else { return };
        if obj.contains_key("$ref") {
            out.push(format!("{path}: $ref"));
        }
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if !obj.contains_key("type") && !preserve && !int_or_string {
            out.push(format!("{path}: no type"));
        }
        if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
            out.push(format!("{path}: properties and additionalProperties"));
        }
        for key in ["properties"] {
            if let Some(Value::Object(props)) = obj.get(key) {
                for (name, sub) in props {
                    structural_violations(&format!("{path}.{name}"), sub, out);
                }
            }
        }
        if let Some(items) = obj.get("items") {
            structural_violations(&format!("{path}[]"), items, out);
        }
        if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
            structural_violations(&format!("{path}{{}}"), ap, out);
        }
        // Inside anyOf/oneOf/allOf/not only value validations may appear
        // (no type, no defaults, no descriptions are needed there).
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(branches)) = obj.get(key) {
                for b in branches {
                    if let Some(bo) = b.as_object() {
                        for forbidden in ["default", "nullable", "description", "$ref"] {
                            if bo.contains_key(forbidden) {
                                out.push(format!("{path}.{key}: {forbidden} in a junctor"));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn schema_is_structural() {
        let mut out = Vec::new();
        structural_violations("", &schema(), &mut out);
        assert!(out.is_empty(), "non-structural schema nodes: {out:#?}");
    }

    #[test]
    fn schema_carries_validation() {
        let s = schema();
        let spec = &s["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["minimum"].as_f64(), Some(0.0));
        assert_eq!(spec["replicas"]["maximum"].as_f64(), Some(1000.0));
        assert_eq!(spec["replicas"]["default"], 2);
        assert_eq!(
            spec["mode"]["enum"],
            serde_json::json!(["DoubleRouter", "SingleRouter"])
        );
        assert_eq!(
            spec["ports"]["properties"]["frontend"]["maximum"].as_f64(),
            Some(65535.0)
        );
        assert_eq!(spec["ports"]["default"]["frontend"], 50001);
        assert_eq!(spec["logging"]["properties"]["level"]["enum"][2], "info");
        assert!(spec["monitoring"]["properties"]["interval"]["pattern"].is_string());
        assert!(spec["image"]["pattern"].is_string());
        let secret = &spec["matchmaker"]["properties"]["redisUrlSecret"];
        assert_eq!(secret["required"], serde_json::json!(["key", "name"]));
        // No empty-string defaults (see ZmqProxyStatus::selector).
        assert!(!serde_json::to_string(&s)
            .unwrap()
            .contains("\"default\":\"\""));
        // The cross-field rules are CEL, each with a message (the API
        // server's rejection of each is tested in tests/validation.rs).
        let rules = |v: &Value| {
            v["x-kubernetes-validations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let spec_rules = rules(&s["properties"]["spec"]);
        let mm_rules = rules(&spec["matchmaker"]);
        assert_eq!((spec_rules.len(), mm_rules.len()), (4, 1));
        let curve = &spec["security"]["properties"]["curve"];
        let curve_rules = rules(curve);
        let authorized_rules = rules(&curve["properties"]["authorizedKeys"]);
        assert_eq!((curve_rules.len(), authorized_rules.len()), (1, 1));
        for r in spec_rules
            .iter()
            .chain(&mm_rules)
            .chain(&curve_rules)
            .chain(&authorized_rules)
        {
            assert!(r["rule"].is_string() && r["message"].is_string(), "{r}");
        }
        assert!(spec_rules.iter().any(|r| r["message"]
            .as_str()
            .is_some_and(|m| m.contains("the local publisher does not support CURVE yet"))));
        assert_eq!(
            curve_rules[0]["rule"],
            "!self.enabled || has(self.authorizedKeys)"
        );
        assert_eq!(
            authorized_rules[0]["rule"],
            "has(self.secret) != has(self.configMap)"
        );
        // The key names default, so a reference needs only a name.
        assert_eq!(
            curve["properties"]["keySecret"]["properties"]["key"]["default"],
            "secret-key"
        );
        assert_eq!(
            curve["properties"]["authorizedKeys"]["properties"]["secret"]["properties"]["key"]
                ["default"],
            "authorized_keys"
        );
        assert_eq!(spec["security"]["default"]["curve"]["enabled"], false);
    }

    #[test]
    fn crd_has_subresources_columns_and_names() {
        let crd = ZmqProxy::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["zp".to_string()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        let sub = v.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            ["Ready", "Replicas", "Available", "Mode", "Curve", "Age"]
        );
    }

    #[test]
    fn empty_spec_gets_every_default() {
        let spec: ZmqProxySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.mode, ProxyMode::DoubleRouter);
        assert_eq!(spec.ports, Ports::default());
        assert_eq!(spec.grace_period_seconds, 10);
        assert!(spec.pod_disruption_budget.enabled);
        assert!(!spec.security.curve.enabled);
    }

    /// crds/ must hold exactly what the binary prints; regenerate with
    /// `cargo run -p zmq-proxy-operator -- crd > crds/zmqproxy.yaml`.
    #[test]
    fn crds_directory_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/zmqproxy.yaml");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml().unwrap(),
            "{} is stale: run `cargo run -p zmq-proxy-operator -- crd > crds/zmqproxy.yaml`",
            path.display()
        );
    }
}

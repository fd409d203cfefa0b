//! The payload frames of RPC messages, shaped exactly as oslo.messaging's
//! ZeroMQ driver serializes them with its default `json` serialization.
//!
//! - requests: `[context, message]`, message = `{"method", "args"}` plus
//!   `"namespace"` and `"version"` when set;
//! - replies: `[body, failure]`, failure `null` or a JSON *string* holding
//!   `{"class", "module", "message", "tb", "args", "kwargs"}` (oslo's
//!   `serialize_remote_exception`), which clients raise as [`RemoteError`].
//!
//! Pure functions over bytes, so they are unit-tested without sockets.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Errors decoding a payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The frame is not JSON of the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// An RPC request: what oslo calls the message, plus its context.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Request context (oslo `ctxt`), a JSON object; `{}` when unused.
    pub context: Value,
    /// Method name on the server's endpoint.
    pub method: String,
    /// Keyword arguments, a JSON object.
    pub args: Value,
    /// Endpoint namespace (oslo `target.namespace`), if any.
    pub namespace: Option<String>,
    /// Requested API version (oslo `target.version`), if any.
    pub version: Option<String>,
}

impl Request {
    /// A request for `method` with keyword arguments `args` and an empty context.
    pub fn new(method: impl Into<String>, args: Value) -> Request {
        Request {
            context: Value::Object(Map::new()),
            method: method.into(),
            args,
            namespace: None,
            version: None,
        }
    }

    /// Sets the context.
    pub fn with_context(mut self, context: Value) -> Request {
        self.context = context;
        self
    }

    /// Sets the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Request {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, version: impl Into<String>) -> Request {
        self.version = Some(version.into());
        self
    }

    /// The payload frame: `dumps([context, message])`.
    pub fn encode(&self) -> Vec<u8> {
        let mut message = Map::new();
        message.insert("method".into(), Value::String(self.method.clone()));
        message.insert("args".into(), self.args.clone());
        if let Some(ns) = &self.namespace {
            message.insert("namespace".into(), Value::String(ns.clone()));
        }
        if let Some(v) = &self.version {
            message.insert("version".into(), Value::String(v.clone()));
        }
        encode_pair(&self.context, &Value::Object(message))
    }

    /// Parses a request payload frame.
    pub fn decode(frame: &[u8]) -> Result<Request, PayloadError> {
        let (context, message) = decode_pair(frame)?;
        let Value::Object(mut message) = message else {
            return Err(PayloadError::Malformed("message is not an object".into()));
        };
        let method = match message.remove("method") {
            Some(Value::String(m)) => m,
            _ => return Err(PayloadError::Malformed("no method".into())),
        };
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(Request {
            context,
            method,
            args: message
                .remove("args")
                .unwrap_or_else(|| Value::Object(Map::new())),
            namespace: text(message.remove("namespace")),
            version: text(message.remove("version")),
        })
    }
}

/// `dumps([first, second])`: the shape of every payload frame.
pub fn encode_pair(first: &Value, second: &Value) -> Vec<u8> {
    Value::Array(vec![first.clone(), second.clone()])
        .to_string()
        .into_bytes()
}

/// Parses `[first, second]`.
pub fn decode_pair(frame: &[u8]) -> Result<(Value, Value), PayloadError> {
    let value: Value =
        serde_json::from_slice(frame).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    match value {
        Value::Array(mut items) if items.len() == 2 => {
            let second = items.pop().unwrap_or(Value::Null);
            let first = items.pop().unwrap_or(Value::Null);
            Ok((first, second))
        }
        _ => Err(PayloadError::Malformed(
            "expected a two-element list".into(),
        )),
    }
}

/// A server-side failure, as oslo's `serialize_remote_exception` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("remote error {module}.{class}: {message}")]
pub struct RemoteError {
    /// Exception class name.
    pub class: String,
    /// Module of the exception class.
    pub module: String,
    /// `str(exception)`.
    pub message: String,
    /// Formatted traceback lines.
    #[serde(default)]
    pub tb: Vec<String>,
    /// Positional exception arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword exception arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl RemoteError {
    /// A failure with class `class` (module `builtins`) and `message`, the
    /// usual shape of an error raised by a Rust handler.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> RemoteError {
        let message = message.into();
        RemoteError {
            class: class.into(),
            module: "builtins".into(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }
}

/// The payload frame of a reply: `dumps([body, failure])`, failure being
/// a JSON string (not an object), as oslo sends it.
pub fn encode_reply(result: &Result<Value, RemoteError>) -> Vec<u8> {
    let pair = match result {
        Ok(body) => Value::Array(vec![body.clone(), Value::Null]),
        Err(failure) => {
            let text = serde_json::to_string(failure).unwrap_or_else(|_| "{}".into());
            Value::Array(vec![Value::Null, Value::String(text)])
        }
    };
    pair.to_string().into_bytes()
}

/// Parses a reply payload frame into the body or the remote failure.
pub fn decode_reply(frame: &[u8]) -> Result<Result<Value, RemoteError>, PayloadError> {
    let (body, failure) = decode_pair(frame)?;
    match failure {
        Value::Null => Ok(Ok(body)),
        Value::String(text) => serde_json::from_str::<RemoteError>(&text)
            .map(Err)
            .map_err(|e| PayloadError::Malformed(format!("failure: {e}"))),
        // Tolerate a peer that sends the failure as an object.
        other @ Value::Object(_) => serde_json::from_value::<RemoteError>(other)
            .map(Err)
            .map_err(|e| PayloadError::Malformed(format!("failure: {e}"))),
        _ => Err(PayloadError::Malformed("failure is not a string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_look_like_oslo_ones_and_round_trip() {
        let r = Request::new("echo", json!({"x": 1}));
        assert_eq!(
            String::from_utf8(r.encode()).unwrap(),
            r#"[{},{"args":{"x":1},"method":"echo"}]"#
        );
        let full = r
            .clone()
            .with_context(json!({"user": "u"}))
            .with_namespace("ns")
            .with_version("1.2");
        assert_eq!(Request::decode(&full.encode()).unwrap(), full);
        // As oslo writes it (key order and spacing differ).
        let oslo = br#"[{"project": "p"}, {"method": "ping", "args": {}, "version": "1.0"}]"#;
        let parsed = Request::decode(oslo).unwrap();
        assert_eq!(parsed.method, "ping");
        assert_eq!(parsed.version.as_deref(), Some("1.0"));
        assert!(Request::decode(b"[1]").is_err());
        assert!(Request::decode(b"not json").is_err());
        assert!(Request::decode(br#"[{}, {"args": {}}]"#).is_err());
    }

    #[test]
    fn replies_carry_body_or_an_oslo_failure_string() {
        let ok = encode_reply(&Ok(json!([1, 2])));
        assert_eq!(ok, br#"[[1,2],null]"#);
        assert_eq!(decode_reply(&ok).unwrap().unwrap(), json!([1, 2]));
        let failure = RemoteError::new("ValueError", "boom");
        let err = encode_reply(&Err(failure.clone()));
        let raw: Value = serde_json::from_slice(&err).unwrap();
        assert!(
            raw[1].is_string(),
            "oslo sends the failure as a JSON string"
        );
        assert_eq!(decode_reply(&err).unwrap().unwrap_err(), failure);
        // oslo's own failure string.
        let oslo = br#"[null, "{\"class\": \"KeyError\", \"module\": \"builtins\", \"message\": \"'k'\", \"tb\": [\"Traceback\"], \"args\": [\"k\"], \"kwargs\": {}}"]"#;
        let e = decode_reply(oslo).unwrap().unwrap_err();
        assert_eq!((e.class.as_str(), e.message.as_str()), ("KeyError", "'k'"));
        assert!(decode_reply(b"[1, 2]").is_err());
    }
}

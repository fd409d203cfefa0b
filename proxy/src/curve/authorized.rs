//! The authorized-keys file: which CURVE public keys may connect, and which
//! ZeroMQ identities (routing ids) each may use.
//!
//! One entry per line: `<40-character Z85 public key> [identity ...]`.
//! Blank lines and lines starting with `#` are ignored. An identity token
//! ending in `*` is a prefix (`node1/*` allows every identity starting with
//! `node1/`; a lone `*` allows any), any other token is exact. A token
//! starting with `hex:` gives the bytes in hex (`hex:00c0ffee`,
//! `hex:00*`), for identities that are not text, such as the 5-byte ids
//! libzmq makes up for peers that set none. A key without tokens may use
//! any identity. oslo identities are ASCII (protocol.md): clients
//! `{host}/{uuid4}`, servers `{host}/{topic}/{uuid4}` or
//! `{host}/{topic}/{server}/{uuid4}`, so `{host}/*` gives a node's key
//! every identity of that node.

use std::collections::HashMap;

use super::keys::{KeyError, PublicKey};

/// An identity pattern of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// This identity only.
    Exact(Vec<u8>),
    /// Every identity starting with these bytes.
    Prefix(Vec<u8>),
}

impl IdentityPattern {
    /// Whether `identity` matches.
    pub fn matches(&self, identity: &[u8]) -> bool {
        match self {
            IdentityPattern::Exact(id) => id == identity,
            IdentityPattern::Prefix(prefix) => identity.starts_with(prefix),
        }
    }

    /// Reads one token of the file.
    fn parse(token: &str) -> Result<IdentityPattern, String> {
        let (body, prefix) = match token.strip_suffix('*') {
            Some(body) => (body, true),
            None => (token, false),
        };
        let bytes = match body.strip_prefix("hex:") {
            Some(hex) => decode_hex(hex)?,
            None => body.as_bytes().to_vec(),
        };
        if !prefix && bytes.is_empty() {
            return Err("an identity is not empty".into());
        }
        Ok(if prefix {
            IdentityPattern::Prefix(bytes)
        } else {
            IdentityPattern::Exact(bytes)
        })
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{:?} is not hex", hex))
        })
        .collect()
}

/// Errors in an authorized-keys file, with the line (from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizedKeysError {
    /// The key at the start of the line is malformed.
    #[error("line {line}: {source}")]
    Key {
        /// Line number.
        line: usize,
        /// What is wrong with the key.
        source: KeyError,
    },
    /// An identity token is malformed.
    #[error("line {line}: identity {token:?}: {reason}")]
    Identity {
        /// Line number.
        line: usize,
        /// The token.
        token: String,
        /// What is wrong.
        reason: String,
    },
    /// The key was listed before; one line per key keeps what a key may do
    /// in one place.
    #[error("line {line}: key {key} is already listed on line {first}")]
    Duplicate {
        /// Line number.
        line: usize,
        /// Where it was listed first.
        first: usize,
        /// The key (public, so safe to print).
        key: String,
    },
}

/// What the file says about a key and an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key is listed and may use the identity.
    Allowed,
    /// The key is not listed.
    UnknownKey,
    /// The key is listed but may not use the identity.
    Identity,
}

/// The parsed authorized-keys file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizedKeys {
    /// Per key, its identity patterns (empty = any identity).
    keys: HashMap<PublicKey, Vec<IdentityPattern>>,
}

impl AuthorizedKeys {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<AuthorizedKeys, AuthorizedKeysError> {
        let mut keys = HashMap::new();
        let mut lines_of: HashMap<PublicKey, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let mut tokens = content.split_whitespace();
            let Some(key_text) = tokens.next() else {
                continue;
            };
            let key = PublicKey::from_z85(key_text)
                .map_err(|source| AuthorizedKeysError::Key { line, source })?;
            let patterns = tokens
                .map(|token| {
                    IdentityPattern::parse(token).map_err(|reason| AuthorizedKeysError::Identity {
                        line,
                        token: token.to_string(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(&first) = lines_of.get(&key) {
                return Err(AuthorizedKeysError::Duplicate {
                    line,
                    first,
                    key: key.to_z85(),
                });
            }
            lines_of.insert(key, line);
            keys.insert(key, patterns);
        }
        Ok(AuthorizedKeys { keys })
    }

    /// Whether `key` may connect at all (the handshake's question).
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Whether `key` may send as `identity` (each message's question).
    pub fn check(&self, key: &PublicKey, identity: &[u8]) -> Verdict {
        match self.keys.get(key) {
            None => Verdict::UnknownKey,
            Some(patterns) if patterns.is_empty() => Verdict::Allowed,
            Some(patterns) if patterns.iter().any(|p| p.matches(identity)) => Verdict::Allowed,
            Some(_) => Verdict::Identity,
        }
    }

    /// Number of keys listed.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is listed (every peer is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const B: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
    const C: &str = "HH39zj0D!KcTq0{e3)y6=+dkh9[pcsa(2Y/[ls3w";

    fn key(z85: &str) -> PublicKey {
        PublicKey::from_z85(z85).unwrap()
    }

    #[test]
    fn keys_identities_and_prefixes() {
        let text = format!(
            "# clients of node1\n\n{A} node1/*\n  {B}   node2/compute/srv1/x hex:00ab* \n{C}\n"
        );
        let keys = AuthorizedKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.check(&key(A), b"node1/abc"), Verdict::Allowed);
        assert_eq!(keys.check(&key(A), b"node2/abc"), Verdict::Identity);
        assert_eq!(
            keys.check(&key(B), b"node2/compute/srv1/x"),
            Verdict::Allowed
        );
        assert_eq!(
            keys.check(&key(B), b"node2/compute/srv1/xy"),
            Verdict::Identity,
            "exact, not a prefix"
        );
        assert_eq!(
            keys.check(&key(B), &[0x00, 0xab, 1, 2, 3]),
            Verdict::Allowed
        );
        assert_eq!(keys.check(&key(C), b"anything"), Verdict::Allowed);
        let other = PublicKey([9; 32]);
        assert_eq!(keys.check(&other, b"node1/abc"), Verdict::UnknownKey);
        assert!(keys.contains(&key(C)) && !keys.contains(&other));
    }

    #[test]
    fn a_lone_star_allows_any_identity_and_an_empty_file_allows_none() {
        let keys = AuthorizedKeys::parse(&format!("{A} *\n")).unwrap();
        assert_eq!(keys.check(&key(A), b"x"), Verdict::Allowed);
        let none = AuthorizedKeys::parse("# nobody yet\n").unwrap();
        assert!(none.is_empty());
        assert_eq!(none.check(&key(A), b"x"), Verdict::UnknownKey);
    }

    #[test]
    fn errors_name_their_line() {
        let err = AuthorizedKeys::parse(&format!("{A}\n\nnot-a-key\n")).unwrap_err();
        assert!(
            matches!(err, AuthorizedKeysError::Key { line: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("line 3: "), "{err}");
        let err = AuthorizedKeys::parse(&format!("{A} hex:zz\n")).unwrap_err();
        assert!(
            matches!(&err, AuthorizedKeysError::Identity { line: 1, token, .. } if token == "hex:zz"),
            "{err}"
        );
        let err = AuthorizedKeys::parse(&format!("{A} hex:abc\n")).unwrap_err();
        assert!(matches!(err, AuthorizedKeysError::Identity { line: 1, .. }));
        let err = AuthorizedKeys::parse(&format!("{A} hex:\n")).unwrap_err();
        assert!(
            matches!(err, AuthorizedKeysError::Identity { .. }),
            "empty exact identity"
        );
        let err = AuthorizedKeys::parse(&format!("{A}\n# x\n{A} a\n")).unwrap_err();
        assert_eq!(
            err,
            AuthorizedKeysError::Duplicate {
                line: 3,
                first: 1,
                key: A.to_string()
            }
        );
    }
}

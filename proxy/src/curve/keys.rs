//! CURVE keys: Z85 text (ZeroMQ RFC 32) to the 32 raw bytes libzmq takes,
//! and the public key of a secret key, both through the project's CurveZMQ
//! codec (`zmtp::curve`).
//!
//! Not `zmq::z85_decode`, which passes any length that is a multiple of 5
//! and does not report a character outside the alphabet: a key file with a
//! typo must fail at load with the reason, not turn into a different key.

use zmtp::curve::z85::{self, Z85Error};
use zmtp::curve::KeyPair;

/// Length of a CURVE key in bytes.
pub const KEY_LEN: usize = zmtp::curve::KEY_LEN;
/// Length of a CURVE key in Z85 characters.
pub const Z85_KEY_LEN: usize = 40;

/// Errors reading a Z85 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 40 characters.
    #[error("a CURVE key is {Z85_KEY_LEN} Z85 characters, this one has {0}")]
    Length(usize),
    /// A character outside the Z85 alphabet.
    #[error("{0:?} is not a Z85 character")]
    Character(char),
    /// A group of 5 characters worth more than 32 bits.
    #[error("Z85 group {0:?} is out of range")]
    Range(String),
}

/// A CURVE public key (raw bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

/// A CURVE secret key (raw bytes). Its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_LEN]);

impl PublicKey {
    /// Reads a 40-character Z85 public key.
    pub fn from_z85(text: &str) -> Result<PublicKey, KeyError> {
        decode_key(text).map(PublicKey)
    }

    /// The key in Z85, as libzmq and the key files write it.
    pub fn to_z85(&self) -> String {
        z85::encode_key(&self.0)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl SecretKey {
    /// Reads a 40-character Z85 secret key; surrounding whitespace (a
    /// trailing newline in a key file or a Kubernetes Secret) is ignored.
    pub fn from_z85(text: &str) -> Result<SecretKey, KeyError> {
        decode_key(text.trim()).map(SecretKey)
    }

    /// The raw bytes, for `ZMQ_CURVE_SECRETKEY`.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The public key of this secret key (X25519, as libzmq's
    /// `zmq_curve_public` derives it).
    pub fn public(&self) -> PublicKey {
        PublicKey(KeyPair::from_secret(self.0).public())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let chars = text.chars().count();
    if chars != Z85_KEY_LEN || text.len() != Z85_KEY_LEN {
        return Err(KeyError::Length(chars));
    }
    z85::decode_key(text).map_err(|e| match e {
        Z85Error::BadCharacter { byte, .. } => KeyError::Character(char::from(byte)),
        Z85Error::Overflow { offset } => {
            KeyError::Range(text.get(offset..offset + 5).unwrap_or(text).to_string())
        }
        // The length was checked above; these cannot occur.
        Z85Error::TextLength { .. } | Z85Error::BinaryLength { .. } => KeyError::Length(chars),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The key pair of RFC 32's and libzmq's test vectors (tests/testutil_security).
    const SERVER_PUBLIC: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const SERVER_SECRET: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";

    #[test]
    fn z85_round_trips_and_matches_libzmq() {
        let key = PublicKey::from_z85(SERVER_PUBLIC).unwrap();
        assert_eq!(key.to_z85(), SERVER_PUBLIC);
        assert_eq!(
            zmq::z85_decode(SERVER_PUBLIC).unwrap(),
            key.0.to_vec(),
            "same bytes as libzmq"
        );
    }

    #[test]
    fn the_public_key_is_derived_from_the_secret_key() {
        let secret = SecretKey::from_z85(&format!("  {SERVER_SECRET}\n")).unwrap();
        assert_eq!(secret.public().to_z85(), SERVER_PUBLIC);
        assert_eq!(format!("{secret:?}"), "SecretKey(..)", "never printed");
        let pair = zmq::CurveKeyPair::new().unwrap();
        let secret = SecretKey(pair.secret_key);
        assert_eq!(secret.public().0, pair.public_key, "same as libzmq");
    }

    #[test]
    fn malformed_keys_say_why() {
        assert_eq!(PublicKey::from_z85("abc"), Err(KeyError::Length(3)));
        let bad = format!("{}~", &SERVER_PUBLIC[..39]);
        assert_eq!(PublicKey::from_z85(&bad), Err(KeyError::Character('~')));
        let over = format!("#####{}", &SERVER_PUBLIC[5..]);
        assert!(matches!(
            PublicKey::from_z85(&over),
            Err(KeyError::Range(_))
        ));
        let wide = format!("é{}", &SERVER_PUBLIC[2..]);
        assert!(matches!(
            PublicKey::from_z85(&wide),
            Err(KeyError::Length(_))
        ));
    }
}

//! CURVE keys: Z85 text (ZeroMQ RFC 32) to the 32 raw bytes libzmq takes,
//! and the public key of a secret key.
//!
//! Z85 is coded here rather than through `zmq::z85_decode`, which passes
//! any length that is a multiple of 5 and does not report a character
//! outside the alphabet: a key file with a typo must fail at load with the
//! reason, not turn into a different key.

/// Length of a CURVE key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a CURVE key in Z85 characters.
pub const Z85_KEY_LEN: usize = 40;

/// The Z85 alphabet (RFC 32), by value.
const ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Value of each byte as a Z85 digit; `NOT_Z85` for bytes outside the
/// alphabet. A table, because each message's sender key is decoded on the
/// forwarding path.
const DECODE: [u8; 256] = {
    let mut table = [NOT_Z85; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const NOT_Z85: u8 = 0xff;

// zmq-sys declares zmq_curve_public but does not export it; libzmq, which
// zmq-sys links, has it since 4.2.
extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::os::raw::c_char,
        z85_secret_key: *const std::os::raw::c_char,
    ) -> std::os::raw::c_int;
}

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
    /// libzmq could not derive the public key.
    #[error("libzmq cannot derive the public key (built without CURVE?)")]
    Derive,
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
        encode(&self.0)
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

    /// The public key of this secret key (libzmq's `zmq_curve_public`).
    pub fn public(&self) -> Result<PublicKey, KeyError> {
        let secret = std::ffi::CString::new(encode(&self.0)).map_err(|_| KeyError::Derive)?;
        let mut public = [0u8; Z85_KEY_LEN + 1];
        // SAFETY: `public` has room for 40 characters and the terminating
        // NUL libzmq writes; `secret` is a NUL-terminated 40-character Z85
        // string, as zmq_curve_public requires.
        let rc = unsafe { zmq_curve_public(public.as_mut_ptr().cast(), secret.as_ptr()) };
        if rc != 0 {
            return Err(KeyError::Derive);
        }
        let text = std::str::from_utf8(&public[..Z85_KEY_LEN]).map_err(|_| KeyError::Derive)?;
        PublicKey::from_z85(text)
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
    let mut key = [0u8; KEY_LEN];
    for (group, out) in text.as_bytes().chunks(5).zip(key.chunks_mut(4)) {
        let mut value: u64 = 0;
        for &c in group {
            let digit = DECODE[c as usize];
            if digit == NOT_Z85 {
                return Err(KeyError::Character(char::from(c)));
            }
            value = value * 85 + u64::from(digit);
        }
        let value = u32::try_from(value)
            .map_err(|_| KeyError::Range(String::from_utf8_lossy(group).into_owned()))?;
        out.copy_from_slice(&value.to_be_bytes());
    }
    Ok(key)
}

/// Z85 of `data`, whose length is a multiple of 4 (a key's is).
fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() / 4 * 5);
    for chunk in data.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        let mut value = u32::from_be_bytes(word);
        let mut group = [0u8; 5];
        for slot in group.iter_mut().rev() {
            *slot = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.extend(group.iter().map(|&c| char::from(c)));
    }
    out
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
        assert_eq!(secret.public().unwrap().to_z85(), SERVER_PUBLIC);
        assert_eq!(format!("{secret:?}"), "SecretKey(..)", "never printed");
        let pair = zmq::CurveKeyPair::new().unwrap();
        let secret = SecretKey(pair.secret_key);
        assert_eq!(secret.public().unwrap().0, pair.public_key);
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

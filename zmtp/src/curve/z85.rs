//! Z85 (RFC 32): the printable form of CURVE keys.
//!
//! libzmq, pyzmq and every ZeroMQ configuration file carry keys as 40-char
//! Z85 strings (`zmq_curve_keypair`, `curve_publickey` options), so the
//! proxy reads its keys and logs client keys in this form. Four bytes become
//! five characters, big-endian base 85 over the alphabet below; inputs must
//! be whole groups, as RFC 32 requires.

use thiserror::Error;

/// RFC 32's alphabet: digit value -> character.
const ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Why a string or byte slice cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Z85Error {
    /// Binary input must be a multiple of 4 bytes.
    #[error("Z85 encodes whole 4-byte groups; {len} bytes is not a multiple of 4")]
    BinaryLength {
        /// The input length.
        len: usize,
    },
    /// Text input must be a multiple of 5 characters.
    #[error("Z85 text must be whole 5-character groups; {len} characters is not a multiple of 5")]
    TextLength {
        /// The input length.
        len: usize,
    },
    /// A character outside the alphabet.
    #[error("byte {byte:#04x} at offset {offset} is not a Z85 character")]
    BadCharacter {
        /// The offending byte.
        byte: u8,
        /// Its position in the input.
        offset: usize,
    },
    /// A group whose value does not fit in 32 bits (e.g. "%%%%%").
    #[error("Z85 group at offset {offset} overflows 32 bits")]
    Overflow {
        /// Position of the group in the input.
        offset: usize,
    },
}

/// Encodes `data` (a multiple of 4 bytes long) as Z85 text.
pub fn encode(data: &[u8]) -> Result<String, Z85Error> {
    if !data.len().is_multiple_of(4) {
        return Err(Z85Error::BinaryLength { len: data.len() });
    }
    let mut text = String::with_capacity(data.len() / 4 * 5);
    for group in data.chunks_exact(4) {
        let mut value = u32::from_be_bytes([group[0], group[1], group[2], group[3]]);
        let mut digits = [0u8; 5];
        for digit in digits.iter_mut().rev() {
            // value % 85 < 85, so the index is in range.
            *digit = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        text.extend(digits.iter().map(|&b| char::from(b)));
    }
    Ok(text)
}

/// Decodes Z85 text (a multiple of 5 characters long) into bytes.
pub fn decode(text: &str) -> Result<Vec<u8>, Z85Error> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(5) {
        return Err(Z85Error::TextLength { len: bytes.len() });
    }
    let mut data = Vec::with_capacity(bytes.len() / 5 * 4);
    for (index, group) in bytes.chunks_exact(5).enumerate() {
        let mut value: u64 = 0;
        for (i, &byte) in group.iter().enumerate() {
            let digit = digit_value(byte).ok_or(Z85Error::BadCharacter {
                byte,
                offset: index * 5 + i,
            })?;
            value = value * 85 + u64::from(digit);
        }
        let value = u32::try_from(value).map_err(|_| Z85Error::Overflow { offset: index * 5 })?;
        data.extend_from_slice(&value.to_be_bytes());
    }
    Ok(data)
}

/// Decodes a 40-character Z85 key into its 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; 32], Z85Error> {
    if text.len() != 40 {
        return Err(Z85Error::TextLength { len: text.len() });
    }
    let data = decode(text)?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&data);
    Ok(key)
}

/// Encodes a 32-byte key as its 40-character Z85 form.
pub fn encode_key(key: &[u8; 32]) -> String {
    // 32 is a multiple of 4, so this cannot fail; the fallback is never used.
    encode(key).unwrap_or_default()
}

/// Value of each byte as a Z85 digit, [`NOT_Z85`] outside the alphabet. A
/// table, because the proxy decodes a sender's key for every message it
/// checks.
const DIGITS: [u8; 256] = {
    let mut table = [NOT_Z85; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const NOT_Z85: u8 = 0xff;

/// The value of one Z85 character, `None` outside the alphabet.
fn digit_value(byte: u8) -> Option<u8> {
    Some(DIGITS[usize::from(byte)]).filter(|&d| d != NOT_Z85)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_32_test_vector() {
        let data = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(encode(&data).as_deref(), Ok("HelloWorld"));
        assert_eq!(decode("HelloWorld"), Ok(data.to_vec()));
    }

    #[test]
    fn libzmq_test_keys_round_trip() {
        // The server key pair of libzmq's tests/test_security_curve.cpp.
        let public = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
        let key = decode_key(public).expect("valid key");
        assert_eq!(encode_key(&key), public);
    }

    #[test]
    fn every_byte_value_round_trips() {
        let data: Vec<u8> = (0..=255u8).collect();
        let text = encode(&data).expect("256 is a multiple of 4");
        assert_eq!(text.len(), 320);
        assert_eq!(decode(&text), Ok(data));
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(encode(b"abc"), Err(Z85Error::BinaryLength { len: 3 }));
        assert_eq!(decode("Hello!"), Err(Z85Error::TextLength { len: 6 }));
        assert_eq!(
            decode("Hel\"o"),
            Err(Z85Error::BadCharacter {
                byte: b'"',
                offset: 3
            })
        );
        assert_eq!(decode("%%%%%"), Err(Z85Error::Overflow { offset: 0 }));
        assert_eq!(
            decode_key("HelloWorld"),
            Err(Z85Error::TextLength { len: 10 })
        );
    }
}

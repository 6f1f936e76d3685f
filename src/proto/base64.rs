//! Base64 (RFC 4648), written here because postern needs only four small, strict functions.
//!
//! Contract:
//! - `encode` / `decode`: standard alphabet (`+/`), padded with `=`. Used for the WebSocket
//!   accept key and for PEM bodies.
//! - `encode_url` / `decode_url`: URL-safe alphabet (`-_`), no padding. Used for tokens that
//!   travel in headers and URLs.
//! - `decode_lenient_ws`: `decode` after skipping ASCII whitespace, for PEM bodies split
//!   into lines. Nothing else is ever skipped.
//!
//! Decoders are strict: wrong alphabet, wrong length, misplaced or missing padding and
//! non-zero trailing bits are all errors, so every byte string has exactly one accepted
//! encoding. That keeps two parties from disagreeing about whether two tokens are "the same".
//! Decoding never panics; output is at most three quarters of the input length.

use std::fmt;

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Marks a byte that is not in the alphabet in a reverse table.
const INVALID: u8 = 0xff;

const STANDARD_REVERSE: [u8; 256] = reverse(STANDARD);
const URL_SAFE_REVERSE: [u8; 256] = reverse(URL_SAFE);

const fn reverse(alphabet: &[u8; 64]) -> [u8; 256] {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base64Error {
    /// A byte outside the alphabet, at this offset in the input.
    InvalidByte { offset: usize },
    /// The input length cannot be a complete encoding.
    InvalidLength,
    /// `=` where none is allowed, or the wrong amount of it.
    InvalidPadding,
    /// The last character carries bits that do not belong to any byte.
    NonCanonical,
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base64Error::InvalidByte { offset } => {
                write!(f, "invalid base64 character at offset {offset}")
            }
            Base64Error::InvalidLength => write!(f, "base64 input has an impossible length"),
            Base64Error::InvalidPadding => write!(f, "base64 input has misplaced '=' padding"),
            Base64Error::NonCanonical => {
                write!(f, "base64 input has non-zero trailing bits (not canonical)")
            }
        }
    }
}

impl std::error::Error for Base64Error {}

/// Standard alphabet, padded.
pub fn encode(data: &[u8]) -> String {
    encode_with(data, STANDARD, true)
}

/// URL-safe alphabet, unpadded.
pub fn encode_url(data: &[u8]) -> String {
    encode_with(data, URL_SAFE, false)
}

/// Standard alphabet, padding required, nothing skipped.
pub fn decode(s: &str) -> Result<Vec<u8>, Base64Error> {
    decode_padded(s.as_bytes())
}

/// URL-safe alphabet, no padding allowed.
pub fn decode_url(s: &str) -> Result<Vec<u8>, Base64Error> {
    decode_unpadded(s.as_bytes(), &URL_SAFE_REVERSE)
}

/// Like [`decode`], after skipping ASCII whitespace (PEM bodies are split into lines).
/// Error offsets refer to `s`, whitespace included.
pub fn decode_lenient_ws(s: &str) -> Result<Vec<u8>, Base64Error> {
    let significant: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    decode_padded(&significant).map_err(|e| match e {
        Base64Error::InvalidByte { offset } => Base64Error::InvalidByte {
            offset: s
                .bytes()
                .enumerate()
                .filter(|(_, b)| !b.is_ascii_whitespace())
                .nth(offset)
                .map_or(offset, |(i, _)| i),
        },
        other => other,
    })
}

fn encode_with(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    let sextet = |n: u32, shift: u32| char::from(alphabet[((n >> shift) & 0x3f) as usize]);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        // A chunk of k bytes needs k + 1 characters; the rest is padding.
        let chars = chunk.len() + 1;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i < chars {
                out.push(sextet(n, shift));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn decode_padded(input: &[u8]) -> Result<Vec<u8>, Base64Error> {
    if input.len() % 4 != 0 {
        return Err(Base64Error::InvalidLength);
    }
    let pad = input.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return Err(Base64Error::InvalidPadding);
    }
    // With len % 4 == 0 and at most two '=', the body is a valid unpadded length, and the
    // padding is exactly what that length calls for.
    decode_unpadded(&input[..input.len() - pad], &STANDARD_REVERSE)
}

fn decode_unpadded(input: &[u8], table: &[u8; 256]) -> Result<Vec<u8>, Base64Error> {
    // One leftover character would carry only 6 bits: never a whole byte.
    if input.len() % 4 == 1 {
        return Err(Base64Error::InvalidLength);
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for (chunk_index, chunk) in input.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            let v = table[usize::from(b)];
            if v == INVALID {
                return Err(if b == b'=' {
                    Base64Error::InvalidPadding
                } else {
                    Base64Error::InvalidByte {
                        offset: chunk_index * 4 + i,
                    }
                });
            }
            n |= u32::from(v) << (18 - 6 * i);
        }
        // k characters carry k * 6 bits: k - 1 whole bytes plus bits that must be zero.
        let bytes = chunk.len() - 1;
        let unused_bits = 24 - 8 * bytes;
        if n & ((1 << unused_bits) - 1) != 0 {
            return Err(Base64Error::NonCanonical);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..=bytes]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 §10.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc4648_vectors_standard() {
        for (plain, encoded) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), *encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn rfc4648_vectors_url_safe_unpadded() {
        for (plain, encoded) in VECTORS {
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(encode_url(plain.as_bytes()), unpadded);
            assert_eq!(decode_url(unpadded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn alphabets_differ_only_in_the_last_two_characters() {
        let data = [0xfb, 0xff, 0xbf];
        assert_eq!(encode(&data), "+/+/");
        assert_eq!(encode_url(&data), "-_-_");
        assert_eq!(decode("-_-_"), Err(Base64Error::InvalidByte { offset: 0 }));
        assert_eq!(
            decode_url("+/+/"),
            Err(Base64Error::InvalidByte { offset: 0 })
        );
    }

    #[test]
    fn round_trips_every_length_and_byte() {
        let data: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
        for len in 0..data.len() {
            let d = &data[..len];
            assert_eq!(decode(&encode(d)).unwrap(), d);
            assert_eq!(decode_url(&encode_url(d)).unwrap(), d);
            assert_eq!(decode_lenient_ws(&encode(d)).unwrap(), d);
        }
    }

    #[test]
    fn strict_decode_rejects_sloppy_input() {
        assert_eq!(decode("Zg"), Err(Base64Error::InvalidLength));
        assert_eq!(decode("Zg="), Err(Base64Error::InvalidLength));
        assert_eq!(decode("Z==="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("===="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Zg==Zg=="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Z=g="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Zm9v\n"), Err(Base64Error::InvalidLength));
        assert_eq!(decode("Zm 9"), Err(Base64Error::InvalidByte { offset: 2 }));
        // 'h' leaves low bits set in the second character: "Zh==" is not canonical for "f".
        assert_eq!(decode("Zh=="), Err(Base64Error::NonCanonical));
        assert_eq!(decode("Zm9="), Err(Base64Error::NonCanonical));
    }

    #[test]
    fn strict_url_decode_rejects_sloppy_input() {
        assert_eq!(decode_url("Zg=="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode_url("Zm9vY"), Err(Base64Error::InvalidLength));
        assert_eq!(decode_url("Zh"), Err(Base64Error::NonCanonical));
        assert_eq!(
            decode_url("Zm9v\u{e9}"),
            Err(Base64Error::InvalidByte { offset: 4 })
        );
    }

    #[test]
    fn lenient_skips_only_ascii_whitespace() {
        let pem_body = "Zm9v\r\nYmFy\n  Zm9v\tYg==\n";
        assert_eq!(decode_lenient_ws(pem_body).unwrap(), b"foobarfoob");
        assert_eq!(
            decode_lenient_ws("Zm9v\nYm*y"),
            Err(Base64Error::InvalidByte { offset: 7 })
        );
        assert_eq!(
            decode_lenient_ws("Zm9v\nYg"),
            Err(Base64Error::InvalidLength)
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            Base64Error::InvalidByte { offset: 3 }.to_string(),
            "invalid base64 character at offset 3"
        );
    }
}

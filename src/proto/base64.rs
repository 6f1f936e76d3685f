//! Base64 (RFC 4648) through the `base64` crate, with the four strict spellings postern uses.
//!
//! Contract:
//! - `encode` / `decode`: standard alphabet (`+/`), padded with `=`. Used for the WebSocket
//!   accept key, proxy credentials and PEM bodies that postern writes.
//! - `encode_url` / `decode_url`: URL-safe alphabet (`-_`), no padding. Used for tokens that
//!   travel in headers and URLs.
//! - `decode_lenient_ws`: `decode` after skipping ASCII whitespace, for the bodies of
//!   postern's own PEM sections (`pki`), which are split into lines. Nothing else is skipped.
//!
//! Decoders are strict: wrong alphabet, wrong length, misplaced or missing padding and
//! non-zero trailing bits are all errors, so every byte string has exactly one accepted
//! encoding. That keeps two parties from disagreeing about whether two tokens are "the same".
//! Decoding never panics.
//!
//! Not constant-time: like any table-driven decoder, the time it takes depends on the input.
//! Secret key material in PEM (`PRIVATE KEY` sections) is therefore never decoded here but by
//! `rustls-pki-types`' PEM reader, which decodes secret sections in constant time (`pki`).

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::{DecodeError, Engine as _};

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

impl From<DecodeError> for Base64Error {
    fn from(e: DecodeError) -> Base64Error {
        match e {
            // The crate reports a misplaced '=' as an invalid byte.
            DecodeError::InvalidByte(_, b'=') | DecodeError::InvalidPadding => {
                Base64Error::InvalidPadding
            }
            DecodeError::InvalidByte(offset, _) => Base64Error::InvalidByte { offset },
            DecodeError::InvalidLength(_) => Base64Error::InvalidLength,
            DecodeError::InvalidLastSymbol { .. } => Base64Error::NonCanonical,
        }
    }
}

/// Standard alphabet, padded.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// URL-safe alphabet, unpadded.
pub fn encode_url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Standard alphabet, padding required, nothing skipped.
pub fn decode(s: &str) -> Result<Vec<u8>, Base64Error> {
    Ok(STANDARD.decode(s)?)
}

/// URL-safe alphabet, no padding allowed.
pub fn decode_url(s: &str) -> Result<Vec<u8>, Base64Error> {
    Ok(URL_SAFE_NO_PAD.decode(s)?)
}

/// Like [`decode`], after skipping ASCII whitespace (PEM bodies are split into lines).
/// Error offsets refer to `s`, whitespace included.
pub fn decode_lenient_ws(s: &str) -> Result<Vec<u8>, Base64Error> {
    let significant: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(&significant).map_err(|e| match e.into() {
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
        // Missing or short padding is a padding error (a length error only without padding).
        assert_eq!(decode("Zg"), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Zg="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Zg==="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Zm9v="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Z==="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("===="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Zg==Zg=="), Err(Base64Error::InvalidPadding));
        assert_eq!(decode("Z=g="), Err(Base64Error::InvalidPadding));
        assert_eq!(
            decode("Zm9v\n"),
            Err(Base64Error::InvalidByte { offset: 4 })
        );
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
            Err(Base64Error::InvalidPadding)
        );
        assert_eq!(
            decode_lenient_ws("Zm9v\nYmFy\u{a0}"),
            Err(Base64Error::InvalidByte { offset: 9 })
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

//! One bounds-checked reader for every binary parser (after rustls' `codec::Reader`).
//! Every accessor returns `None` instead of panicking when the input is short.

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The next `len` bytes, or `None` if fewer remain.
    pub fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }

    /// A u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str16(&mut self, max: usize) -> Option<&'a str> {
        let len = usize::from(self.u16()?);
        if len > max {
            return None;
        }
        std::str::from_utf8(self.take(len)?).ok()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Appends a u16-length-prefixed string; the caller guarantees `s.len() <= u16::MAX`.
pub fn put_str16(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("bug: string longer than u16 in an encoder");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_none_not_panic() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert_eq!(r.str16(100), None);
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), None);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u8(), Some(3));
        assert!(r.is_empty());
    }

    #[test]
    fn str16_respects_max() {
        let mut out = Vec::new();
        put_str16(&mut out, "hello");
        assert_eq!(Reader::new(&out).str16(5), Some("hello"));
        assert_eq!(Reader::new(&out).str16(4), None);
    }
}

//! A bounded byte buffer: the one place data waits between a reader and a writer.
//!
//! Memory is taken on first use (an idle stream costs nothing) and never grows past the
//! capacity fixed at creation: when `space()` is 0, the owner stops reading from its source.

pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
}

impl Buf {
    pub fn new(cap: usize) -> Self {
        Buf {
            data: Vec::new(),
            start: 0,
            end: 0,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes that can still be appended.
    pub fn space(&self) -> usize {
        self.cap - self.len()
    }

    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "bug: consumed more than buffered");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// A writable tail of up to `space()` bytes; call `commit` with what was written.
    pub fn tail_mut(&mut self) -> &mut [u8] {
        self.make_room(self.space());
        &mut self.data[self.end..]
    }

    /// Allocates on first use and slides live bytes to the front so `n <= space()` fit.
    fn make_room(&mut self, n: usize) {
        if self.data.len() < self.cap {
            self.data.resize(self.cap, 0);
        }
        if self.end + n > self.cap {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.data.len(), "bug: committed past tail");
        self.end += n;
    }

    /// Appends as much of `src` as fits; returns the count taken.
    pub fn push(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.space());
        if n == 0 {
            return 0;
        }
        self.make_room(n);
        self.data[self.end..self.end + n].copy_from_slice(&src[..n]);
        self.end += n;
        n
    }

    /// Gives the memory back (used when a stream goes idle).
    pub fn release_if_empty(&mut self) {
        if self.is_empty() && !self.data.is_empty() {
            self.data = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_push_and_slide() {
        let mut b = Buf::new(8);
        assert_eq!(b.push(b"abcdef"), 6);
        assert_eq!(b.push(b"ghijk"), 2);
        assert_eq!(b.space(), 0);
        b.consume(5);
        assert_eq!(b.data(), b"fgh");
        assert_eq!(b.push(b"12345"), 5);
        assert_eq!(b.data(), b"fgh12345");
        b.consume(8);
        assert!(b.is_empty());
        b.release_if_empty();
        assert_eq!(b.push(b"z"), 1);
    }

    #[test]
    fn tail_and_commit() {
        let mut b = Buf::new(4);
        b.push(b"ab");
        b.consume(1);
        let t = b.tail_mut();
        assert_eq!(t.len(), 3);
        t[0] = b'c';
        b.commit(1);
        assert_eq!(b.data(), b"bc");
    }
}

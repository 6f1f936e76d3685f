//! A bounded byte buffer: the one place data waits between a reader and a writer.
//!
//! Memory is taken on first use and grows by doubling, from [`MIN_ALLOC`] up to the capacity
//! fixed at creation, only as data actually waits: an idle stream costs nothing, one that saw
//! only an ssh banner costs 1 KiB, a busy one reaches its capacity within a few reads. When
//! `space()` is 0, the owner stops reading from its source. [`Buf::release_if_empty`] gives
//! the memory back (owners call it on a slow timer, not per read, to avoid churn).

use std::io;

/// The first allocation of a buffer.
pub const MIN_ALLOC: usize = 1024;

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

    /// Raises the bound to `cap` (never lowers it): a window that grew lets more wait.
    pub fn raise_capacity(&mut self, cap: usize) {
        self.cap = self.cap.max(cap);
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

    /// A writable tail, empty only when `space()` is 0; call `commit` with what was written.
    /// It is what the allocation has free: when that is nothing, the allocation slides its
    /// live bytes to the front or doubles, so a reader that fills each tail grows the buffer
    /// to its capacity in a few calls.
    pub fn tail_mut(&mut self) -> &mut [u8] {
        if self.end == self.data.len() {
            let want = self.data.len().max(MIN_ALLOC).min(self.space());
            self.make_room(want);
        }
        &mut self.data[self.end..]
    }

    /// Makes `n <= space()` bytes fit after the live ones: slides them to the front, then
    /// grows the allocation (doubling, at least [`MIN_ALLOC`], at most the capacity).
    fn make_room(&mut self, n: usize) {
        debug_assert!(n <= self.space(), "bug: room beyond capacity");
        if self.end + n <= self.data.len() {
            return;
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + n > self.data.len() {
            let grown = (self.end + n)
                .max(self.data.len() * 2)
                .max(MIN_ALLOC)
                .min(self.cap);
            self.data.resize(grown, 0);
        }
    }

    /// Reads once with `read` into the free tail and keeps what came (`Ok(0)`: end of input).
    /// A buffer without memory reads through a small stack buffer first, so a read that finds
    /// nothing (`WouldBlock`) allocates nothing, and one that finds a little allocates a little.
    /// The caller makes sure `space() > 0`.
    pub fn read_from(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        debug_assert!(self.space() > 0, "bug: read into a full buffer");
        if self.data.is_empty() {
            let mut first = [0u8; MIN_ALLOC];
            let n = read(&mut first[..MIN_ALLOC.min(self.space())])?;
            self.push(&first[..n]);
            return Ok(n);
        }
        let n = read(self.tail_mut())?;
        self.commit(n);
        Ok(n)
    }

    /// Bytes currently allocated (for tests and memory accounting).
    pub fn allocated(&self) -> usize {
        self.data.len()
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

    /// Gives the memory back if nothing waits (owners call it when a stream goes idle).
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
    fn allocation_grows_with_use_and_never_past_capacity() {
        let cap = 64 * 1024;
        let mut b = Buf::new(cap);
        assert_eq!(b.allocated(), 0, "nothing before first use");
        // A read that finds nothing allocates nothing; one that finds a byte, a little.
        let would_block = b.read_from(|_| Err(io::ErrorKind::WouldBlock.into()));
        assert!(would_block.is_err());
        assert_eq!(b.allocated(), 0);
        assert_eq!(b.read_from(|t| Ok(t.len().min(1))).unwrap(), 1);
        assert_eq!(b.allocated(), MIN_ALLOC);
        b.consume(1);
        assert_eq!(
            b.tail_mut().len(),
            MIN_ALLOC,
            "a first read gets a small tail"
        );
        assert_eq!(b.allocated(), MIN_ALLOC);
        // A reader that fills every tail: doubling until the capacity, never beyond.
        let mut tails = Vec::new();
        while b.space() > 0 {
            let n = b.tail_mut().len();
            assert!(n > 0);
            tails.push(n);
            b.commit(n);
        }
        assert_eq!(tails, vec![1024, 1024, 2048, 4096, 8192, 16384, 32768]);
        assert_eq!(b.allocated(), cap);
        assert!(b.tail_mut().is_empty());
        // Consumed from the front: the next tail slides instead of growing.
        b.consume(1000);
        assert_eq!(b.tail_mut().len(), 1000);
        assert_eq!(b.allocated(), cap);
        // A push bigger than the allocation grows it at once.
        let mut p = Buf::new(cap);
        assert_eq!(p.push(&[7u8; 10_000]), 10_000);
        assert_eq!(p.allocated(), 10_000.max(MIN_ALLOC));
        p.consume(10_000);
        p.release_if_empty();
        assert_eq!(p.allocated(), 0);
    }

    #[test]
    fn tail_and_commit() {
        let mut b = Buf::new(4);
        b.push(b"ab");
        b.consume(1);
        let t = b.tail_mut();
        assert_eq!(
            t.len(),
            2,
            "what the allocation has free after the live bytes"
        );
        t[0] = b'c';
        b.commit(1);
        assert_eq!(b.data(), b"bc");
        b.tail_mut()[0] = b'd';
        b.commit(1);
        // The allocation's end is reached: the live bytes slide to make the last byte free.
        assert_eq!(b.tail_mut().len(), 1);
        assert_eq!(b.data(), b"bcd");
    }
}

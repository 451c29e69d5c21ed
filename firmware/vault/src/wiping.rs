//! A byte buffer for secrets written piece by piece (serialized JSON, a PEM): it wipes
//! every buffer it leaves behind.
//!
//! `Zeroizing<Vec<u8>>` wipes the allocation the vector holds when it drops, but a vector
//! that grows moves its bytes to a bigger allocation and frees the old one as it is, so a
//! secret serialized with `serde_json::to_vec` leaves copies of its first 128, 256, …
//! bytes in freed memory. [`WipingBuf`] grows by hand instead: it copies into a new
//! allocation and wipes the old one before freeing it.

use std::io;

use zeroize::Zeroizing;

/// An [`io::Write`] sink whose every allocation is wiped when it is let go: on growth, and
/// (through [`Zeroizing`]) when the buffer [`WipingBuf::into_inner`] returns drops.
#[derive(Default)]
pub struct WipingBuf(Zeroizing<Vec<u8>>);

impl WipingBuf {
    /// An empty buffer that can hold `capacity` bytes before it first grows.
    pub fn with_capacity(capacity: usize) -> Self {
        WipingBuf(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// The bytes written, in a buffer that wipes itself on drop.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl io::Write for WipingBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let needed = self.0.len().saturating_add(buf.len());
        if needed > self.0.capacity() {
            let capacity = needed.max(self.0.capacity().saturating_mul(2)).max(64);
            let mut bigger = Zeroizing::new(Vec::with_capacity(capacity));
            bigger.extend_from_slice(&self.0);
            // The old allocation is wiped as it drops here, before it is freed.
            self.0 = bigger;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for WipingBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WipingBuf({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_come_back_whole_and_growth_never_reallocates_in_place() {
        let mut w = WipingBuf::with_capacity(4);
        let mut expected = Vec::new();
        let mut capacities = vec![];
        for i in 0..200u8 {
            let piece = [i; 7];
            w.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
            capacities.push(w.0.capacity());
        }
        assert_eq!(w.as_slice(), expected.as_slice());
        // Grows geometrically: a handful of allocations for 1,400 bytes.
        capacities.dedup();
        assert!(capacities.len() < 12, "{capacities:?}");
        assert_eq!(w.into_inner().as_slice(), expected.as_slice());
    }

    #[test]
    fn every_growth_is_an_allocation_made_here() {
        // `Vec`'s own growth would free the old bytes unwiped; each write that does not fit
        // must instead land in an allocation sized by this type's rule (Vec's differs: it
        // starts at 8 and doubles), and a write that fits must not move anything.
        let mut w = WipingBuf::default();
        for n in [1usize, 63, 64, 65, 500, 4096, 3] {
            let (before, len) = (w.0.capacity(), w.0.len());
            let at = w.0.as_ptr();
            w.write_all(&vec![b'x'; n]).unwrap();
            if len + n <= before {
                assert_eq!((w.0.capacity(), w.0.as_ptr()), (before, at));
            } else {
                assert_eq!(w.0.capacity(), (len + n).max(before * 2).max(64));
            }
        }
    }
}

//! Protocol randomness a peer sees: branch ids, tags, probe Call-IDs, weighted draws.
//!
//! Every value comes from the kernel's CSPRNG (`getrandom(2)`), taken 4 KiB at a time so
//! the hot path pays one system call per 512 values. Nothing is derived from earlier
//! outputs, so seeing any number of branches or tags tells an attacker nothing about the
//! next one (RFC 3261 §8.1.1.7 and §19.3 ask for that much randomness; a predictable branch
//! lets whoever can send to the SIP port forge responses).
//!
//! Failure: `getrandom` on Linux blocks until the kernel pool is seeded and does not fail
//! after that; if it ever does, the process aborts rather than carry on with values a peer
//! could guess.

/// Values buffered per refill.
const WORDS: usize = 512;

/// A buffer of kernel randomness.
pub(crate) struct Csprng {
    buf: Box<[u64; WORDS]>,
    /// Next unused word; `WORDS` means empty.
    next: usize,
}

impl std::fmt::Debug for Csprng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print buffered values: they are the next branches and tags.
        f.write_str("Csprng")
    }
}

impl Csprng {
    pub(crate) fn new() -> Csprng {
        Csprng {
            buf: Box::new([0; WORDS]),
            next: WORDS,
        }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        if self.next >= WORDS {
            self.refill();
        }
        let v = self.buf.get(self.next).copied().unwrap_or_default();
        // Used values are wiped: a later memory disclosure does not reveal past branches.
        if let Some(w) = self.buf.get_mut(self.next) {
            *w = 0;
        }
        self.next += 1;
        v
    }

    fn refill(&mut self) {
        let mut bytes = [0u8; WORDS * 8];
        if let Err(e) = getrandom::fill(&mut bytes) {
            log::error!("sip: the kernel's random generator failed ({e}); stopping");
            std::process::abort();
        }
        for (w, chunk) in self.buf.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ_across_refills_and_instances() {
        let mut a = Csprng::new();
        let mut b = Csprng::new();
        let xs: Vec<u64> = (0..3 * WORDS).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..WORDS).map(|_| b.next_u64()).collect();
        let mut all: Vec<u64> = xs.iter().chain(&ys).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4 * WORDS, "64-bit values from the kernel repeat");
    }
}

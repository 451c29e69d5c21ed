//! Moving the KEK through stdin/stdout without leaving copies behind.
//!
//! `std::io::stdin()`/`stdout()` are buffered: their internal buffers would keep a copy of
//! the key that nothing wipes. So the descriptors are duplicated into plain `File`s and
//! read/written without a buffer, into and out of [`Kek`] (which zeroizes on drop).

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use zeroize::Zeroizing;

use crate::error::SealError;
use crate::tpm::{Kek, KEK_LEN};

/// Refuse a terminal where the raw key would go (or come from): 32 random bytes on a
/// screen end up in scrollback, and typed ones are not a key.
pub fn refuse_terminal(is_terminal: bool, what: &str) -> Result<(), SealError> {
    if is_terminal {
        Err(SealError::Usage(format!(
            "refusing to use a terminal as {what}: the key-encryption key is raw binary; \
             use a pipe"
        )))
    } else {
        Ok(())
    }
}

/// Read exactly [`KEK_LEN`] bytes from stdin, then require end of input.
pub fn read_kek_from_stdin() -> Result<Kek, SealError> {
    let stdin = std::io::stdin();
    refuse_terminal(stdin.is_terminal(), "stdin")?;
    let fd = stdin
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| SealError::io("cannot duplicate stdin", e))?;
    read_kek(File::from(fd))
}

/// Read exactly [`KEK_LEN`] bytes from `input`, then require end of input.
pub fn read_kek(mut input: impl Read) -> Result<Kek, SealError> {
    let mut kek: Kek = Zeroizing::new([0u8; KEK_LEN]);
    let mut got = 0;
    while got < KEK_LEN {
        match input.read(&mut kek[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SealError::io("cannot read the key from stdin", e)),
        }
    }
    if got != KEK_LEN {
        return Err(SealError::Usage(format!(
            "expected exactly {KEK_LEN} bytes on stdin, got {got}"
        )));
    }
    let mut extra = Zeroizing::new([0u8; 1]);
    loop {
        match input.read(&mut extra[..]) {
            Ok(0) => return Ok(kek),
            Ok(_) => {
                return Err(SealError::Usage(format!(
                    "expected exactly {KEK_LEN} bytes on stdin, got more"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SealError::io("cannot read the key from stdin", e)),
        }
    }
}

/// Check stdout before any TPM work: the key must not go to a terminal.
pub fn check_stdout() -> Result<(), SealError> {
    refuse_terminal(std::io::stdout().is_terminal(), "stdout")
}

/// Write the KEK to stdout, unbuffered.
pub fn write_kek_to_stdout(kek: &Kek) -> Result<(), SealError> {
    let stdout = std::io::stdout();
    refuse_terminal(stdout.is_terminal(), "stdout")?;
    let fd = stdout
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| SealError::io("cannot duplicate stdout", e))?;
    let mut out = File::from(fd);
    out.write_all(kek.as_slice())
        .map_err(|e| SealError::io("cannot write the key to stdout", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exactly_32_bytes() {
        let data: Vec<u8> = (0..32).collect();
        let kek = read_kek(&data[..]).unwrap();
        assert_eq!(kek.as_slice(), &data[..]);
    }

    #[test]
    fn refuses_short_and_long_input() {
        let short = [7u8; 31];
        let err = read_kek(&short[..]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("got 31"), "{err}");
        let long = [7u8; 33];
        assert_eq!(read_kek(&long[..]).unwrap_err().exit_code(), 2);
        assert_eq!(read_kek(&[][..]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn reads_in_pieces() {
        // A pipe may deliver the key in several reads.
        struct Trickle(Vec<u8>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0.remove(0);
                Ok(1)
            }
        }
        let kek = read_kek(Trickle(vec![9u8; 32])).unwrap();
        assert_eq!(kek.as_slice(), &[9u8; 32]);
    }

    #[test]
    fn terminal_is_refused() {
        let err = refuse_terminal(true, "stdout").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("terminal"));
        assert!(refuse_terminal(false, "stdout").is_ok());
    }
}

//! The update file `scripts/image` writes (`callgate-VERSION.update`) and its check: the
//! signature over the manifest, then the manifest's digests over every section, and no
//! downgrade, all before anything is written.
//!
//! ## Format
//! ```text
//! callgate-update 1\n
//! manifest N\n      N bytes: the manifest (text, at most 4 KiB)
//! signature N\n     N bytes: RSA PKCS#1 v1.5 SHA-256 over the manifest's bytes
//! root.squashfs N\n N bytes: the slot's root (squashfs)
//! root.verity N\n   N bytes: its dm-verity hash tree
//! callgate.efi N\n  N bytes: the slot's signed UKI
//! ```
//! The manifest, one `key=value` a line, each key once, nothing else:
//! ```text
//! format=1
//! version=v0.1-123-gabcdef0
//! generation=123
//! roothash=<64 hex>
//! root.squashfs=<size> <sha256 hex>
//! root.verity=<size> <sha256 hex>
//! callgate.efi=<size> <sha256 hex>
//! ```
//!
//! ## Design
//! - What the signature covers: the manifest alone; the manifest names each section's size
//!   and SHA-256, so the signature binds every byte. The UKI carries its own Secure Boot
//!   signature (the firmware checks it at boot), and its signed command line holds the
//!   root hash, which binds the root and hash tree again at boot; the manifest's signature
//!   is what lets the appliance refuse a bad file *before* it writes a slot.
//! - The key: the update signing key's public half in the image
//!   (`/usr/share/callgate/update-key.der`, PKCS#1 `RSAPublicKey`); `scripts/image` signs
//!   with `CALLGATE_UPDATE_KEY`, by default the Secure Boot key.
//! - Downgrades: `generation` (a number that only grows from build to build) must be
//!   greater than the running root's; the same generation is refused too.
//! - [`check`] reads the file once, as a stream, and keeps nothing of the payload: the
//!   writer checks the digests again as it writes (the file may change between passes).

use std::fmt;
use std::io::{BufRead, Read};

/// The sections after the manifest and signature, in order.
pub const SECTIONS: [&str; 3] = ["root.squashfs", "root.verity", "callgate.efi"];

/// The first line.
pub const MAGIC: &str = "callgate-update 1";

const MAX_MANIFEST: u64 = 4096;
const MAX_SIGNATURE: u64 = 1024;
const MAX_HEADER_LINE: u64 = 64;
/// A section's size at most (a slot is 512 MiB).
pub const MAX_SECTION: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot read the update file")]
    Read(#[source] std::io::Error),
    #[error("not a callgate update file: {0}")]
    Format(String),
    #[error("the update's signature does not verify with this appliance's update key")]
    Signature,
    #[error("the manifest: {0}")]
    Manifest(String),
    #[error("{section}: its SHA-256 is not the one the signed manifest names")]
    Digest { section: &'static str },
    #[error("{section}: {got} bytes where the signed manifest names {want}")]
    Size {
        section: &'static str,
        got: u64,
        want: u64,
    },
    #[error(
        "a downgrade: the update is generation {update} ({version}), this appliance runs generation {running}"
    )]
    Downgrade {
        update: u64,
        running: u64,
        version: String,
    },
}

/// One section as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// The checked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    pub generation: u64,
    pub roothash: String,
    /// In [`SECTIONS`]' order.
    pub sections: [Digest; 3],
}

impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version {} (generation {}), roothash {}",
            self.version, self.generation, self.roothash
        )
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses the manifest's text (already covered by a good signature).
pub fn parse_manifest(text: &str) -> Result<Manifest, UpdateError> {
    let bad = |m: String| UpdateError::Manifest(m);
    let mut seen = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line {}: not key=value", n + 1)))?;
        if seen.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(bad(format!("line {}: {k} a second time", n + 1)));
        }
    }
    let mut take = |k: &str| seen.remove(k).ok_or_else(|| bad(format!("no {k}")));
    if take("format")? != "1" {
        return Err(bad("format is not 1".into()));
    }
    let version = take("version")?;
    if version.is_empty()
        || version.len() > 64
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    {
        return Err(bad("version is not a plain version string".into()));
    }
    let generation: u64 = take("generation")?
        .parse()
        .map_err(|_| bad("generation is not a number".into()))?;
    let roothash = take("roothash")?;
    if hex32(&roothash).is_none() {
        return Err(bad("roothash is not 64 hex digits".into()));
    }
    let mut digest = |name: &str| -> Result<Digest, UpdateError> {
        let v = take(name)?;
        let (size, sum) = v
            .split_once(' ')
            .ok_or_else(|| bad(format!("{name}: not 'SIZE SHA256'")))?;
        let size: u64 = size
            .parse()
            .ok()
            .filter(|&s| s > 0 && s <= MAX_SECTION)
            .ok_or_else(|| bad(format!("{name}: the size is not 1 to {MAX_SECTION}")))?;
        let sha256 = hex32(sum).ok_or_else(|| bad(format!("{name}: the digest is not 64 hex")))?;
        Ok(Digest { size, sha256 })
    };
    let sections = [
        digest(SECTIONS[0])?,
        digest(SECTIONS[1])?,
        digest(SECTIONS[2])?,
    ];
    if let Some(k) = seen.keys().next() {
        return Err(bad(format!("unknown key {k}")));
    }
    Ok(Manifest {
        version,
        generation,
        roothash: roothash.to_ascii_lowercase(),
        sections,
    })
}

/// Reads a header line `NAME SIZE` (the name must be `name`); the size.
fn header(r: &mut impl BufRead, name: &str, max: u64) -> Result<u64, UpdateError> {
    let mut line = Vec::new();
    r.take(MAX_HEADER_LINE)
        .read_until(b'\n', &mut line)
        .map_err(UpdateError::Read)?;
    let text = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_suffix('\n'))
        .ok_or_else(|| UpdateError::Format(format!("no '{name} SIZE' line")))?;
    let size = text
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| UpdateError::Format(format!("expected '{name} SIZE', found {text:?}")))?;
    if size > max {
        return Err(UpdateError::Format(format!(
            "{name}: {size} bytes, more than {max}"
        )));
    }
    Ok(size)
}

fn read_exact_vec(r: &mut impl Read, n: u64, what: &str) -> Result<Vec<u8>, UpdateError> {
    let mut buf = Vec::new();
    r.take(n).read_to_end(&mut buf).map_err(UpdateError::Read)?;
    if buf.len() as u64 != n {
        return Err(UpdateError::Format(format!("{what}: the file ends early")));
    }
    Ok(buf)
}

/// Reads the header, manifest and signature and checks the signature with `key` (PKCS#1
/// `RSAPublicKey` DER) and the generation against `running`. What follows in `r` is the
/// payload, in [`SECTIONS`]' order.
pub fn read_manifest(
    r: &mut impl BufRead,
    key: &[u8],
    running: u64,
) -> Result<Manifest, UpdateError> {
    let mut first = Vec::new();
    r.take(MAX_HEADER_LINE)
        .read_until(b'\n', &mut first)
        .map_err(UpdateError::Read)?;
    if first != format!("{MAGIC}\n").as_bytes() {
        return Err(UpdateError::Format(format!(
            "the first line is not {MAGIC:?}"
        )));
    }
    let n = header(r, "manifest", MAX_MANIFEST)?;
    let manifest = read_exact_vec(r, n, "manifest")?;
    let n = header(r, "signature", MAX_SIGNATURE)?;
    let signature = read_exact_vec(r, n, "signature")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
        .verify(&manifest, &signature)
        .map_err(|_| UpdateError::Signature)?;
    let text =
        std::str::from_utf8(&manifest).map_err(|_| UpdateError::Manifest("not UTF-8".into()))?;
    let m = parse_manifest(text)?;
    if m.generation <= running {
        return Err(UpdateError::Downgrade {
            update: m.generation,
            running,
            version: m.version,
        });
    }
    Ok(m)
}

/// Reads one section's header and bytes, giving each chunk to `sink`, and checks its size
/// and digest against `want`. `sink` sees bytes that are not checked yet: it must not make
/// them count (boot them, say) unless this returns `Ok`.
pub fn read_section(
    r: &mut impl BufRead,
    section: &'static str,
    want: &Digest,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), UpdateError> {
    let n = header(r, section, MAX_SECTION)?;
    if n != want.size {
        return Err(UpdateError::Size {
            section,
            got: n,
            want: want.size,
        });
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = n;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let chunk = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let got = r.read(&mut buf[..chunk]).map_err(UpdateError::Read)?;
        if got == 0 {
            return Err(UpdateError::Format(format!(
                "{section}: the file ends early"
            )));
        }
        ctx.update(&buf[..got]);
        sink(&buf[..got]).map_err(UpdateError::Read)?;
        left -= got as u64;
    }
    if ctx.finish().as_ref() != want.sha256 {
        return Err(UpdateError::Digest { section });
    }
    Ok(())
}

/// Checks a whole update file: signature, no downgrade, every section's size and digest,
/// nothing after the last. Writes nothing.
pub fn check(r: &mut impl BufRead, key: &[u8], running: u64) -> Result<Manifest, UpdateError> {
    let m = read_manifest(r, key, running)?;
    for (name, want) in SECTIONS.iter().zip(&m.sections) {
        read_section(r, name, want, |_| Ok(()))?;
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(UpdateError::Read)? != 0 {
        return Err(UpdateError::Format("bytes after the last section".into()));
    }
    Ok(m)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A 2048-bit RSA key made with openssl, as `scripts/image` signs: the private key
    /// (PEM) and the public half as the image carries it (PKCS#1 `RSAPublicKey` DER).
    pub(crate) struct Key {
        _dir: tempfile::TempDir,
        pem: PathBuf,
        pub(crate) public: Vec<u8>,
    }

    fn openssl(args: &[&str], dir: &Path) {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    }

    pub(crate) fn key() -> Key {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "k.pem",
            ],
            dir.path(),
        );
        openssl(
            &[
                "rsa",
                "-in",
                "k.pem",
                "-RSAPublicKey_out",
                "-outform",
                "DER",
                "-out",
                "k.der",
            ],
            dir.path(),
        );
        Key {
            pem: dir.path().join("k.pem"),
            public: std::fs::read(dir.path().join("k.der")).unwrap(),
            _dir: dir,
        }
    }

    /// `openssl dgst -sha256 -sign` over `data`.
    fn sign(k: &Key, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m"), data).unwrap();
        let pem = k.pem.to_str().unwrap();
        openssl(
            &["dgst", "-sha256", "-sign", pem, "-out", "s", "m"],
            dir.path(),
        );
        std::fs::read(dir.path().join("s")).unwrap()
    }

    fn sha(b: &[u8]) -> String {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) const PARTS: [&[u8]; 3] = [b"hsqs the root", b"verity tree", b"MZ the uki"];

    pub(crate) fn manifest(generation: u64) -> String {
        let mut m = format!(
            "format=1\nversion=v1.2-3-gabc\ngeneration={generation}\nroothash={}\n",
            "ab".repeat(32)
        );
        for (name, p) in SECTIONS.iter().zip(PARTS) {
            m.push_str(&format!("{name}={} {}\n", p.len(), sha(p)));
        }
        m
    }

    pub(crate) fn file(k: &Key, manifest: &str, parts: [&[u8]; 3]) -> Vec<u8> {
        let sig = sign(k, manifest.as_bytes());
        let mut out = format!("{MAGIC}\nmanifest {}\n", manifest.len()).into_bytes();
        out.extend_from_slice(manifest.as_bytes());
        out.extend_from_slice(format!("signature {}\n", sig.len()).as_bytes());
        out.extend_from_slice(&sig);
        for (name, p) in SECTIONS.iter().zip(parts) {
            out.extend_from_slice(format!("{name} {}\n", p.len()).as_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn a_signed_update_checks_and_every_tampering_is_refused() {
        let k = key();
        let public = k.public.clone();
        let good = file(&k, &manifest(7), PARTS);
        let m = check(&mut Cursor::new(&good), &public, 6).unwrap();
        assert_eq!(m.generation, 7);
        assert_eq!(m.version, "v1.2-3-gabc");

        // One flipped byte anywhere after the header: refused.
        let header = MAGIC.len() + 1;
        for at in [header + 20, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(
                check(&mut Cursor::new(&bad), &public, 6).is_err(),
                "byte {at}"
            );
        }
        // A payload byte: the digest names the section.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert!(matches!(
            check(&mut Cursor::new(&bad), &public, 6),
            Err(UpdateError::Digest {
                section: "callgate.efi"
            })
        ));
        // Signed by another key.
        let other = key();
        let forged = file(&other, &manifest(7), PARTS);
        assert!(matches!(
            check(&mut Cursor::new(&forged), &public, 6),
            Err(UpdateError::Signature)
        ));
        // The manifest changed after signing (another generation): the signature fails.
        let mut swapped = good.clone();
        let pos = swapped
            .windows(12)
            .position(|w| w == b"generation=7")
            .unwrap();
        swapped[pos + 11] = b'9';
        assert!(matches!(
            check(&mut Cursor::new(&swapped), &public, 6),
            Err(UpdateError::Signature)
        ));
        // Same generation and older: downgrades.
        for running in [7, 8] {
            assert!(matches!(
                check(&mut Cursor::new(&good), &public, running),
                Err(UpdateError::Downgrade { .. })
            ));
        }
        // Cut short, or with bytes after the end.
        assert!(check(&mut Cursor::new(&good[..good.len() - 3]), &public, 6).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(check(&mut Cursor::new(&long), &public, 6).is_err());
        // A section that is not the size the manifest says, correctly signed otherwise.
        let wrong = file(&k, &manifest(7), [b"hsqs the rooT!", PARTS[1], PARTS[2]]);
        assert!(matches!(
            check(&mut Cursor::new(&wrong), &public, 6),
            Err(UpdateError::Size {
                section: "root.squashfs",
                ..
            })
        ));
    }

    #[test]
    fn the_manifest_takes_its_keys_once_and_nothing_else() {
        let good = manifest(3);
        assert!(parse_manifest(&good).is_ok());
        for bad in [
            format!("{good}extra=1\n"),
            format!("{good}generation=4\n"),
            good.replace("format=1", "format=2"),
            good.replace("version=v1.2-3-gabc", "version=v1 $(x)"),
            good.replace("generation=3", "generation=-3"),
            good.replace(&"ab".repeat(32), "abc"),
            good.replace("root.verity=11 ", "root.verity=0 "),
            "format=1\n".to_owned(),
            "not a manifest".to_owned(),
        ] {
            assert!(parse_manifest(&bad).is_err(), "{bad}");
        }
    }
}

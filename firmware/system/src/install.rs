//! Installing an update file into the slot that did not boot, for systemd-boot to try.
//!
//! ## Steps (each fails closed: the running slot stays the one that boots)
//! 1. The whole file is checked as [`crate::update::check`] does (signature, no
//!    downgrade, every part's size and SHA-256), before anything is written; the parts
//!    must fit the target's partitions.
//! 2. The target slot's boot entries are taken off the ESP (and a temporary file a failed
//!    install left): from here on nothing boots that slot, so a half-written slot is
//!    never tried.
//! 3. The file is read again, its manifest must be the one checked (the file may change
//!    between two reads), and each part is written as it is digested again: the root and
//!    its hash tree to the slot's partitions, the UKI to a temporary file on the ESP (a
//!    name systemd-boot does not take: a dot first, no `.efi`). Every part is synced and
//!    read back against the manifest's digest.
//! 4. The partitions' GPT UUIDs are set from the root hash (the first half names the root,
//!    the second its hash tree), as the UKI's signed command line names them; the disk's
//!    cache flushed.
//! 5. The UKI is renamed to `callgate-GENERATION-SLOT+3.efi`: systemd-boot orders entries
//!    by generation, newest first, so the next boot tries it, three times at most; an
//!    entry with no tries left goes last, and the previous slot boots again (by naming
//!    order: no EFI variable to set, so nothing to undo when a write fails). The renamed
//!    file is synced again, then its directory (vfat keeps a renamed file's size and
//!    first cluster in the new directory entry, written with the file's inode).
//!
//! [`install`] takes the partitions and the ESP's `EFI/Linux` as paths (regular files and
//! a directory in the tests) and the GPT writer as a [`Disk`].

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::esp::{self, Tries};
use crate::update::{self, Manifest, UpdateError, SECTIONS};
use crate::{BootCounting, System, ESP_MOUNT};

/// The tries an updated slot gets.
pub const TRIES: u32 = 3;

/// The temporary name of a UKI being written on the ESP.
pub const TEMP_ENTRY: &str = ".callgate-upgrade.tmp";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the update file")]
    Update(#[from] UpdateError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the update file changed between its check and its install")]
    Changed,
    #[error("{part}: {size} bytes do not fit {device} ({capacity} bytes)")]
    TooBig {
        part: &'static str,
        size: u64,
        device: PathBuf,
        capacity: u64,
    },
    #[error("{0}: what was read back is not what the manifest names")]
    ReadBack(&'static str),
    #[error("refused: {0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
    let what = what.into();
    move |source| InstallError::Io { what, source }
}

/// Where an update goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The slot (`root-a`, `root-b`): not the one this boot runs.
    pub slot: &'static str,
    /// Its root partition.
    pub root: PathBuf,
    /// Its hash tree's partition.
    pub verity: PathBuf,
    /// The ESP's `EFI/Linux`.
    pub entries: PathBuf,
}

/// What sets a partition's GPT UUID.
pub trait Disk {
    /// Sets the partition UUID of the partition `device` to `uuid`.
    fn set_partuuid(&mut self, device: &Path, uuid: &str) -> std::io::Result<()>;
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub manifest: Manifest,
    /// The entry's file name on the ESP (`callgate-813-b+3.efi`).
    pub entry: String,
}

/// `8-4-4-4-12` of 32 hex digits.
pub fn uuid_of(hex: &str) -> Option<String> {
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The partition UUIDs of a slot holding the root with `roothash`: (root, hash tree).
pub fn slot_uuids(roothash: &str) -> Option<(String, String)> {
    Some((
        uuid_of(roothash.get(..32)?)?,
        uuid_of(roothash.get(32..64)?)?,
    ))
}

fn capacity(device: &Path) -> Result<u64, InstallError> {
    let mut f = File::open(device).map_err(io(format!("cannot open {}", device.display())))?;
    f.seek(SeekFrom::End(0))
        .map_err(io(format!("cannot size {}", device.display())))
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot sync {}", dir.display())))
}

/// The SHA-256 of the first `size` bytes of `path`.
fn digest_of(path: &Path, size: u64) -> Result<[u8; 32], InstallError> {
    let f = File::open(path).map_err(io(format!("cannot read back {}", path.display())))?;
    let mut r = f.take(size);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(io(format!("cannot read back {}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        got += n as u64;
    }
    if got != size {
        return Err(InstallError::Io {
            what: format!("{}: shorter than what was written", path.display()),
            source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        });
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// The target of an update on the running system `sys` (read under `root`, `/` on the
/// appliance): the slot that did not boot, its partitions (by their GPT names) and the
/// ESP's `EFI/Linux`. Refused while this boot is on trial: the other slot is its fallback.
pub fn target_for(sys: &System, root: &Path) -> Result<Target, InstallError> {
    let refused = |m: String| InstallError::Refused(m);
    let booted = sys.booted().ok_or_else(|| {
        refused("this boot runs from no slot of the disk (see show system)".into())
    })?;
    if let BootCounting::Trial { path, tries } = &sys.boot_counting {
        return Err(refused(format!(
            "this boot is on trial ({path}: {tries}): the other slot is its fallback, so an update waits until this boot is blessed"
        )));
    }
    if sys.entries.is_none() {
        return Err(refused(format!(
            "the ESP is not mounted at /{ESP_MOUNT}: no boot entry can be written"
        )));
    }
    let other = sys
        .slots
        .iter()
        .find(|s| s.name != booted.name)
        .ok_or_else(|| refused("the disk has one root slot".into()))?;
    let slot = crate::SLOTS
        .iter()
        .copied()
        .find(|n| *n == other.name)
        .ok_or_else(|| refused(format!("no slot {}", other.name)))?;
    let device = other
        .device
        .clone()
        .ok_or_else(|| refused(format!("no partition named {slot}")))?;
    let verity = crate::resolve(
        &root
            .join("dev/disk/by-partlabel")
            .join(format!("{slot}-verity")),
    )
    .ok_or_else(|| refused(format!("no partition named {slot}-verity")))?;
    Ok(Target {
        slot,
        root: device,
        verity,
        entries: root.join(ESP_MOUNT).join(esp::ENTRIES_DIR),
    })
}

/// The GPT written by `sfdisk` (util-linux), on the whole disk a partition is on (from
/// sysfs), without asking the kernel to re-read it (its partitions are in use: the new
/// UUIDs count from the next boot, which is when the UKI looks for them).
#[derive(Debug, Default)]
pub struct Sfdisk;

impl Disk for Sfdisk {
    fn set_partuuid(&mut self, device: &Path, uuid: &str) -> std::io::Result<()> {
        let name = device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| std::io::Error::other("not a partition device"))?;
        let sys = Path::new("/sys/class/block").join(&name);
        let number = std::fs::read_to_string(sys.join("partition"))?
            .trim()
            .to_owned();
        let disk = std::fs::canonicalize(&sys)?
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| Path::new("/dev").join(n))
            .ok_or_else(|| std::io::Error::other("no disk above the partition"))?;
        let out = std::process::Command::new("sfdisk")
            .args(["--no-reread", "--no-tell-kernel", "--part-uuid"])
            .arg(&disk)
            .arg(&number)
            .arg(uuid)
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "sfdisk --part-uuid {} {number}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // sfdisk does not sync when it is told not to tell the kernel: the GPT is on the
        // disk only once the disk's cache is flushed.
        File::open(&disk)?.sync_all()
    }
}

/// Takes `slot`'s entries (and a temporary file a failed install left) off `entries`.
/// Returns their names.
pub fn remove_entries(entries: &Path, slot: &str) -> Result<Vec<String>, InstallError> {
    let mut removed = Vec::new();
    let list = std::fs::read_dir(entries).map_err(io(format!(
        "cannot read {} (is the ESP mounted?)",
        entries.display()
    )))?;
    for e in list.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours =
            name == TEMP_ENTRY || esp::parse_entry_name(&name).is_some_and(|p| p.slot == slot);
        if ours {
            std::fs::remove_file(e.path()).map_err(io(format!("cannot remove {name}")))?;
            removed.push(name);
        }
    }
    sync_dir(entries)?;
    removed.sort();
    Ok(removed)
}

/// Installs the update `file` into `target` (see the module's steps). `key`: the update
/// key's public half; `running`: the running root's generation; `say`: progress lines.
pub fn install(
    file: &Path,
    key: &[u8],
    running: u64,
    target: &Target,
    disk: &mut impl Disk,
    say: &mut impl FnMut(&str),
) -> Result<Installed, InstallError> {
    let open = || -> Result<BufReader<File>, InstallError> {
        Ok(BufReader::new(
            File::open(file).map_err(io(format!("cannot open {}", file.display())))?,
        ))
    };
    // 1. The whole file, before anything is written.
    let checked = update::check(&mut open()?, key, running)?;
    say(&format!(
        "checked: {checked}; signature and digests verified"
    ));
    let (root_uuid, verity_uuid) =
        slot_uuids(&checked.roothash).ok_or(UpdateError::Manifest("roothash".into()))?;
    for (part, device, want) in [
        (SECTIONS[0], &target.root, &checked.sections[0]),
        (SECTIONS[1], &target.verity, &checked.sections[1]),
    ] {
        let cap = capacity(device)?;
        if want.size > cap {
            return Err(InstallError::TooBig {
                part,
                size: want.size,
                device: device.clone(),
                capacity: cap,
            });
        }
    }
    // 2. Nothing boots the target slot from here on.
    let removed = remove_entries(&target.entries, target.slot)?;
    if !removed.is_empty() {
        say(&format!(
            "slot {}: its old boot entries taken off the ESP: {}",
            target.slot,
            removed.join(" ")
        ));
    }
    // 3. The parts, digested again as they are written, then read back.
    let mut r = open()?;
    let m = update::read_manifest(&mut r, key, running)?;
    if m != checked {
        return Err(InstallError::Changed);
    }
    let temp = target.entries.join(TEMP_ENTRY);
    let result = write_parts(&mut r, &m, target, &temp, say)
        .and_then(|()| finish(&m, target, &temp, &root_uuid, &verity_uuid, disk, say));
    if result.is_err() {
        // Not an entry systemd-boot takes, but not left behind either.
        let _ = std::fs::remove_file(&temp);
    }
    let entry = result?;
    Ok(Installed { manifest: m, entry })
}

/// Steps 4 and 5: the partition UUIDs, then the entry on trial. Its file name.
fn finish(
    m: &Manifest,
    target: &Target,
    temp: &Path,
    root_uuid: &str,
    verity_uuid: &str,
    disk: &mut impl Disk,
    say: &mut impl FnMut(&str),
) -> Result<String, InstallError> {
    for (device, uuid) in [(&target.root, root_uuid), (&target.verity, verity_uuid)] {
        disk.set_partuuid(device, uuid).map_err(io(format!(
            "cannot set the partition UUID of {}",
            device.display()
        )))?;
    }
    let entry = esp::entry_file_name(
        m.generation,
        target.slot,
        Tries::Counting {
            left: TRIES,
            done: 0,
        },
    )
    .ok_or(UpdateError::Format(format!("no slot {}", target.slot)))?;
    let path = target.entries.join(&entry);
    std::fs::rename(temp, &path).map_err(io(format!("cannot name the boot entry {entry}")))?;
    // The file again, then its directory: on vfat a rename makes a new directory entry
    // that holds the file's size and first cluster only once the file's inode is written.
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("cannot sync {}", path.display())))?;
    sync_dir(&target.entries)?;
    say(&format!(
        "slot {}: boot entry {entry}: the next boot tries it ({TRIES} tries)",
        target.slot
    ));
    Ok(entry)
}

/// Step 3: each part written where it goes as it is digested, synced, read back.
fn write_parts(
    r: &mut BufReader<File>,
    m: &Manifest,
    target: &Target,
    temp: &Path,
    say: &mut impl FnMut(&str),
) -> Result<(), InstallError> {
    for (i, section) in SECTIONS.iter().enumerate() {
        let want = &m.sections[i];
        let (path, create) = match i {
            0 => (target.root.as_path(), false),
            1 => (target.verity.as_path(), false),
            _ => (temp, true),
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)
            .map_err(io(format!("cannot open {} to write", path.display())))?;
        say(&format!(
            "slot {}: writing {section} ({} bytes) to {}",
            target.slot,
            want.size,
            path.display()
        ));
        update::read_section(r, section, want, |chunk| out.write_all(chunk))?;
        out.sync_all()
            .map_err(io(format!("cannot sync {}", path.display())))?;
        drop(out);
        if digest_of(path, want.size)? != want.sha256 {
            return Err(InstallError::ReadBack(section));
        }
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(UpdateError::Read)? != 0 {
        return Err(UpdateError::Format("bytes after the last section".into()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::update::tests::{file, key, manifest, PARTS};

    #[test]
    fn slot_uuids_split_the_root_hash() {
        let h = format!(
            "{}{}",
            "0123456789abcdef".repeat(2),
            "fedcba9876543210".repeat(2)
        );
        let (r, v) = slot_uuids(&h).unwrap();
        assert_eq!(r, "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(v, "fedcba98-7654-3210-fedc-ba9876543210");
        assert_eq!(slot_uuids("abc"), None);
        assert_eq!(uuid_of(&"g".repeat(32)), None);
    }

    #[derive(Default)]
    struct FakeDisk {
        set: Vec<(PathBuf, String)>,
        fail: bool,
    }

    impl Disk for FakeDisk {
        fn set_partuuid(&mut self, device: &Path, uuid: &str) -> std::io::Result<()> {
            if self.fail {
                return Err(std::io::Error::other("the GPT write failed"));
            }
            self.set.push((device.to_path_buf(), uuid.to_owned()));
            Ok(())
        }
    }

    /// Slot B's partitions (zeros) and an ESP with slot A's blessed entry and a failed
    /// entry of slot B from an earlier update.
    fn fixture(dir: &Path, part_size: usize) -> Target {
        let t = Target {
            slot: "root-b",
            root: dir.join("root-b"),
            verity: dir.join("root-b-verity"),
            entries: dir.join("esp/EFI/Linux"),
        };
        std::fs::write(&t.root, vec![0u8; part_size]).unwrap();
        std::fs::write(&t.verity, vec![0u8; part_size]).unwrap();
        std::fs::create_dir_all(&t.entries).unwrap();
        std::fs::write(t.entries.join("callgate-5-a.efi"), b"slot a").unwrap();
        std::fs::write(t.entries.join("callgate-4-b+0-3.efi"), b"old b").unwrap();
        t
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_good_update_is_written_to_the_other_slot_and_tried_next() {
        let k = key();
        let dir = tempfile::tempdir().unwrap();
        let t = fixture(dir.path(), 64);
        let update = dir.path().join("good.update");
        std::fs::write(&update, file(&k, &manifest(7), PARTS)).unwrap();
        let mut disk = FakeDisk::default();
        let mut lines = Vec::new();
        let done = install(&update, &k.public, 5, &t, &mut disk, &mut |l| {
            lines.push(l.to_owned())
        })
        .unwrap();
        assert_eq!(done.entry, "callgate-7-b+3.efi");
        assert_eq!(done.manifest.generation, 7);
        assert_eq!(
            listing(&t.entries),
            ["callgate-5-a.efi", "callgate-7-b+3.efi"]
        );
        assert_eq!(
            std::fs::read(t.entries.join("callgate-7-b+3.efi")).unwrap(),
            PARTS[2]
        );
        let root = std::fs::read(&t.root).unwrap();
        assert_eq!(&root[..PARTS[0].len()], PARTS[0]);
        assert_eq!(root.len(), 64, "a partition is written, never resized");
        assert_eq!(
            &std::fs::read(&t.verity).unwrap()[..PARTS[1].len()],
            PARTS[1]
        );
        let uuid = "abababab-abab-abab-abab-abababababab".to_owned();
        assert_eq!(
            disk.set,
            [(t.root.clone(), uuid.clone()), (t.verity.clone(), uuid)]
        );
        assert!(
            lines.iter().any(|l| l.contains("callgate-4-b+0-3.efi")),
            "{lines:?}"
        );
    }

    /// The attacker's updates and the failures: nothing written, or nothing that boots.
    #[test]
    fn a_bad_update_writes_nothing_and_a_failed_install_boots_nothing_new() {
        let k = key();
        let good = file(&k, &manifest(7), PARTS);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        let forged = file(&key(), &manifest(7), PARTS);
        for (name, bytes, running) in [
            ("flipped", flipped, 5),
            ("forged", forged, 5),
            ("downgrade", good.clone(), 7),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let t = fixture(dir.path(), 64);
            let update = dir.path().join("u");
            std::fs::write(&update, bytes).unwrap();
            let mut disk = FakeDisk::default();
            let e = install(&update, &k.public, running, &t, &mut disk, &mut |_| {});
            assert!(matches!(e, Err(InstallError::Update(_))), "{name}: {e:?}");
            // Nothing changed: the slot's partitions, the ESP, the GPT.
            assert_eq!(std::fs::read(&t.root).unwrap(), vec![0u8; 64], "{name}");
            assert_eq!(std::fs::read(&t.verity).unwrap(), vec![0u8; 64], "{name}");
            assert_eq!(
                listing(&t.entries),
                ["callgate-4-b+0-3.efi", "callgate-5-a.efi"],
                "{name}"
            );
            assert!(disk.set.is_empty(), "{name}");
        }
        // A root bigger than the slot: refused before anything is written.
        let dir = tempfile::tempdir().unwrap();
        let t = fixture(dir.path(), 4);
        let update = dir.path().join("u");
        std::fs::write(&update, &good).unwrap();
        let e = install(
            &update,
            &k.public,
            5,
            &t,
            &mut FakeDisk::default(),
            &mut |_| {},
        );
        assert!(matches!(e, Err(InstallError::TooBig { .. })), "{e:?}");
        assert_eq!(
            listing(&t.entries),
            ["callgate-4-b+0-3.efi", "callgate-5-a.efi"]
        );
        // The GPT write fails after the parts are written: no entry for the slot (the
        // running slot A is the only one that boots), no temporary file left.
        let dir = tempfile::tempdir().unwrap();
        let t = fixture(dir.path(), 64);
        let update = dir.path().join("u");
        std::fs::write(&update, &good).unwrap();
        let mut disk = FakeDisk {
            fail: true,
            ..FakeDisk::default()
        };
        let e = install(&update, &k.public, 5, &t, &mut disk, &mut |_| {});
        assert!(matches!(e, Err(InstallError::Io { .. })), "{e:?}");
        assert_eq!(listing(&t.entries), ["callgate-5-a.efi"]);
    }
}

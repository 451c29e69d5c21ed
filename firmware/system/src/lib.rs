//! # callgate-system
//!
//! The appliance's root slots and boot as the running system sees them, for `callgate
//! show system`: the two root slots (`root-a`, `root-b`), which one this boot runs, the
//! version of the running root, and the boot-counting state.
//!
//! ## Design
//! - Read from what any user may read, so the console shows it without privileges and
//!   without the daemon (an engineer looking at a boot whose daemon never became ready):
//!   the signed kernel command line (`/proc/cmdline`: `roothash=` and
//!   `systemd.verity_root_data=PARTUUID=…`), udev's `/dev/disk/by-partlabel` and
//!   `/dev/disk/by-partuuid` links, the root's `/usr/share/callgate/version`, and the boot
//!   loader's EFI variables (`LoaderBootCountPath`, `LoaderImageIdentifier`).
//! - [`parse_cmdline`] and [`efi_string`] are pure; [`read`] takes the root directory the
//!   paths hang from (`/` on the appliance, a directory in the tests).
//! - Nothing here writes.
//!
//! ## Current limitations
//! - The version of the slot that did not boot is unknown: it comes with A/B updates
//!   (planned: each slot's UKI and manifest on the ESP).
//! - Boot counting needs a boot loader that counts (systemd-boot, planned with A/B
//!   updates); the image's firmware starts the UKI directly, so it reports `off`.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod update;

/// The EFI variables' vendor GUID of systemd-boot and systemd-stub (the Boot Loader
/// Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The slots, by partition name.
pub const SLOTS: [&str; 2] = ["root-a", "root-b"];

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the signed command line says about the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `roothash=`: dm-verity's root hash of the root this boot runs.
    pub roothash: Option<String>,
    /// `systemd.verity_root_data=PARTUUID=…`: the partition it runs from (lower case).
    pub root_partuuid: Option<String>,
}

/// The parts of `text` (a kernel command line) that name the root.
pub fn parse_cmdline(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for w in text.split_ascii_whitespace() {
        if let Some(h) = w.strip_prefix("roothash=") {
            if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                c.roothash = Some(h.to_ascii_lowercase());
            }
        } else if let Some(u) = w.strip_prefix("systemd.verity_root_data=PARTUUID=") {
            c.root_partuuid = Some(u.to_ascii_lowercase());
        }
    }
    c
}

/// The string an efivarfs file holds: four bytes of attributes, then UTF-16LE, NUL
/// terminated. `None` when it is not that.
pub fn efi_string(raw: &[u8]) -> Option<String> {
    let data = raw.get(4..)?;
    if data.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// One root slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Slot {
    /// `root-a`, `root-b`.
    pub name: String,
    /// Its block device (`/dev/vda2`); `None`: the disk has no partition of that name.
    pub device: Option<PathBuf>,
    /// Its GPT partition UUID (lower case).
    pub partuuid: Option<String>,
    /// Whether this boot runs from it.
    pub booted: bool,
    /// The version of its root, when known (the booted slot's).
    pub version: Option<String>,
}

/// The boot-counting state, from the boot loader's EFI variables.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BootCounting {
    /// No boot loader that counts: the firmware starts the UKI directly.
    Off {
        /// The image the firmware started (`LoaderImageIdentifier`, set by systemd-stub).
        image: Option<String>,
    },
    /// The boot loader counts tries of the entry this boot runs (`LoaderBootCountPath`:
    /// its file name holds `+LEFT[-DONE]`); blessed once the boot is good.
    Counting { path: String },
}

/// The whole view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct System {
    pub slots: Vec<Slot>,
    pub roothash: Option<String>,
    pub boot_counting: BootCounting,
}

impl System {
    /// The slot this boot runs from.
    pub fn booted(&self) -> Option<&Slot> {
        self.slots.iter().find(|s| s.booted)
    }
}

fn read_to_string(path: &Path) -> Result<String, SystemError> {
    std::fs::read_to_string(path).map_err(|source| SystemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The device a `/dev/disk/by-…` link points to, or `None`.
fn resolve(link: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(link).ok()?;
    let joined = match link.parent() {
        Some(dir) if target.is_relative() => dir.join(target),
        _ => target,
    };
    // `../../vda2` from `/dev/disk/by-partlabel`: normalise without touching the file.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// The partition UUID whose `/dev/disk/by-partuuid` link points to `device`.
fn partuuid_of(by_partuuid: &Path, device: &Path) -> Option<String> {
    let entries = std::fs::read_dir(by_partuuid).ok()?;
    entries.flatten().find_map(|e| {
        (resolve(&e.path()).as_deref() == Some(device))
            .then(|| e.file_name().to_string_lossy().to_ascii_lowercase())
    })
}

/// Reads the view under `root` (`/` on the appliance).
pub fn read(root: &Path) -> Result<System, SystemError> {
    let cmdline = parse_cmdline(&read_to_string(&root.join("proc/cmdline"))?);
    let version = std::fs::read_to_string(root.join("usr/share/callgate/version"))
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let by_label = root.join("dev/disk/by-partlabel");
    let by_uuid = root.join("dev/disk/by-partuuid");
    let slots = SLOTS
        .iter()
        .map(|name| {
            let device = resolve(&by_label.join(name));
            let partuuid = device.as_deref().and_then(|d| partuuid_of(&by_uuid, d));
            let booted = partuuid.is_some() && partuuid == cmdline.root_partuuid;
            Slot {
                name: (*name).to_owned(),
                device,
                partuuid,
                booted,
                version: if booted { version.clone() } else { None },
            }
        })
        .collect();
    let efivars = root.join("sys/firmware/efi/efivars");
    let var = |name: &str| {
        std::fs::read(efivars.join(format!("{name}-{LOADER_GUID}")))
            .ok()
            .and_then(|raw| efi_string(&raw))
    };
    let boot_counting = match var("LoaderBootCountPath") {
        Some(path) => BootCounting::Counting { path },
        None => BootCounting::Off {
            image: var("LoaderImageIdentifier"),
        },
    };
    Ok(System {
        slots,
        roothash: cmdline.roothash,
        boot_counting,
    })
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.slots {
            write!(
                f,
                "slot {}: {}",
                s.name,
                s.device
                    .as_deref()
                    .map_or("no such partition".into(), |d| d.display().to_string())
            )?;
            if let Some(u) = &s.partuuid {
                write!(f, " partuuid={u}")?;
            }
            if s.booted {
                write!(f, " booted")?;
            }
            match &s.version {
                Some(v) => writeln!(f, " version={v}")?,
                None => writeln!(f, " version=unknown")?,
            }
        }
        match self.booted() {
            Some(s) => writeln!(f, "booted: {}", s.name)?,
            None => writeln!(
                f,
                "booted: no slot (the command line names no root partition of these)"
            )?,
        }
        if let Some(h) = &self.roothash {
            writeln!(f, "roothash: {h}")?;
        }
        match &self.boot_counting {
            BootCounting::Off { image } => {
                write!(
                    f,
                    "boot counting: off (the firmware starts the signed UKI directly: no boot loader, no tries)"
                )?;
                if let Some(i) = image {
                    write!(f, "; image {i}")?;
                }
                writeln!(f)
            }
            BootCounting::Counting { path } => writeln!(f, "boot counting: on, entry {path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HASH: &str = "9f3c0e6a1b2d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e";

    fn cmdline() -> String {
        format!("roothash={HASH} systemd.verity_root_data=PARTUUID=9F3C0E6A-1B2D-4C5E-8F7A-6B5C4D3E2F1A systemd.verity_root_hash=PARTUUID=0b9c8d7e-6f5a-4b3c-2d1e-0f9a8b7c6d5e root=/dev/mapper/root ro quiet")
    }

    #[test]
    fn the_command_line_names_the_root_hash_and_partition() {
        let c = parse_cmdline(&cmdline());
        assert_eq!(c.roothash.as_deref(), Some(HASH));
        assert_eq!(
            c.root_partuuid.as_deref(),
            Some("9f3c0e6a-1b2d-4c5e-8f7a-6b5c4d3e2f1a")
        );
        // Not a root hash: words that only look alike, or no hex.
        let c = parse_cmdline("roothash=zz noroothash=ab systemd.verity_root_hash=PARTUUID=x");
        assert_eq!(c, Cmdline::default());
    }

    #[test]
    fn efi_strings_are_utf16_after_the_attributes() {
        let mut raw = vec![6, 0, 0, 0];
        for u in "\\EFI\\BOOT\\BOOTX64.EFI".encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(
            efi_string(&raw).as_deref(),
            Some("\\EFI\\BOOT\\BOOTX64.EFI")
        );
        assert_eq!(efi_string(&[6, 0, 0]), None);
        assert_eq!(efi_string(&[6, 0, 0, 0, 0x41]), None);
    }

    /// A root with the appliance's files: slot A booted, slot B empty.
    fn fake_root(dir: &Path, with_loader: bool) {
        let mk = |p: &str| std::fs::create_dir_all(dir.join(p)).unwrap();
        mk("proc");
        mk("dev/disk/by-partlabel");
        mk("dev/disk/by-partuuid");
        mk("usr/share/callgate");
        mk("sys/firmware/efi/efivars");
        std::fs::write(dir.join("proc/cmdline"), cmdline()).unwrap();
        std::fs::write(dir.join("usr/share/callgate/version"), "v1.2-3-gabc\n").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, dir.join(at)).unwrap();
        };
        link("../../vda2", "dev/disk/by-partlabel/root-a");
        link("../../vda4", "dev/disk/by-partlabel/root-b");
        link("../../vda6", "dev/disk/by-partlabel/state");
        link(
            "../../vda2",
            "dev/disk/by-partuuid/9f3c0e6a-1b2d-4c5e-8f7a-6b5c4d3e2f1a",
        );
        link(
            "../../vda4",
            "dev/disk/by-partuuid/11111111-2222-3333-4444-555555555555",
        );
        if with_loader {
            let mut raw = vec![6, 0, 0, 0];
            for u in "\\EFI\\Linux\\callgate-v2+2-1.efi"
                .encode_utf16()
                .chain([0])
            {
                raw.extend_from_slice(&u.to_le_bytes());
            }
            std::fs::write(
                dir.join(format!(
                    "sys/firmware/efi/efivars/LoaderBootCountPath-{LOADER_GUID}"
                )),
                raw,
            )
            .unwrap();
        }
    }

    #[test]
    fn the_booted_slot_is_the_one_the_command_line_names() {
        let dir = tempfile::tempdir().unwrap();
        fake_root(dir.path(), false);
        let s = read(dir.path()).unwrap();
        let a = &s.slots[0];
        assert_eq!(a.name, "root-a");
        assert!(a.booted);
        assert_eq!(
            a.device.as_deref(),
            Some(dir.path().join("dev/vda2").as_path())
        );
        assert_eq!(a.version.as_deref(), Some("v1.2-3-gabc"));
        let b = &s.slots[1];
        assert!(!b.booted);
        assert_eq!(
            b.partuuid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(b.version, None);
        assert_eq!(s.booted().map(|b| b.name.as_str()), Some("root-a"));
        assert_eq!(s.boot_counting, BootCounting::Off { image: None });
        let text = s.to_string();
        assert!(text.contains("slot root-a: "), "{text}");
        assert!(text.contains(" booted version=v1.2-3-gabc\n"), "{text}");
        assert!(text.contains("booted: root-a\n"), "{text}");
        assert!(text.contains("boot counting: off"), "{text}");
    }

    #[test]
    fn boot_counting_shows_the_entry_the_loader_counts() {
        let dir = tempfile::tempdir().unwrap();
        fake_root(dir.path(), true);
        let s = read(dir.path()).unwrap();
        assert_eq!(
            s.boot_counting,
            BootCounting::Counting {
                path: "\\EFI\\Linux\\callgate-v2+2-1.efi".into()
            }
        );
    }

    #[test]
    fn a_command_line_naming_another_partition_boots_no_slot() {
        let dir = tempfile::tempdir().unwrap();
        fake_root(dir.path(), false);
        std::fs::write(
            dir.path().join("proc/cmdline"),
            "roothash=ab systemd.verity_root_data=PARTUUID=deadbeef-0000-0000-0000-000000000000",
        )
        .unwrap();
        let s = read(dir.path()).unwrap();
        assert!(s.booted().is_none());
        assert!(s.slots.iter().all(|s| s.version.is_none()));
        assert!(s.to_string().contains("booted: no slot"));
    }

    #[test]
    fn no_command_line_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("proc/cmdline"), "{e}");
    }
}

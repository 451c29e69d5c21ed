//! # callgate-system
//!
//! The appliance's root slots and boot as the running system sees them, for `callgate
//! show system`: the two root slots (`root-a`, `root-b`), which one this boot runs, each
//! slot's version and generation (from its boot entry on the ESP), and the boot-counting
//! state (systemd-boot's tries of an updated slot).
//!
//! ## Design
//! - Read from what any user may read, so the console shows it without privileges and
//!   without the daemon (an engineer looking at a boot whose daemon never became ready):
//!   the signed kernel command line (`/proc/cmdline`: `roothash=` and
//!   `systemd.verity_root_data=PARTUUID=…`), udev's `/dev/disk/by-partlabel` and
//!   `/dev/disk/by-partuuid` links, the root's `/usr/share/callgate/version` and
//!   `generation`, the boot entries on the ESP (mounted at `/efi` by the image's
//!   `efi.mount`, files readable by all: [`esp`]), and the boot loader's EFI variables
//!   (`LoaderInfo`, `LoaderEntrySelected`, `LoaderBootCountPath`,
//!   `LoaderImageIdentifier`).
//! - [`parse_cmdline`], [`efi_string`] and [`esp`]'s parsers are pure; [`read`] takes the
//!   root directory the paths hang from (`/` on the appliance, a directory in the tests).
//! - Nothing here writes.
//!
//! ## Current limitations
//! - A slot's version and generation come from its UKI's `.osrel` on the ESP, not from
//!   the slot's root itself (which is not mounted): an entry whose UKI does not match its
//!   name is shown as such, and a slot without an entry is `unknown`.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod esp;
pub mod install;
pub mod update;

use esp::{Entry, Tries};

/// Where the image mounts the ESP (`efi.mount`), under the root.
pub const ESP_MOUNT: &str = "efi";

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
    /// The version of its root, when known (the booted slot's own, else its entry's).
    pub version: Option<String>,
    /// Its generation, when known (likewise).
    pub generation: Option<u64>,
    /// Its boot entry on the ESP (the newest generation, if there are several).
    pub entry: Option<Entry>,
}

/// The boot-counting state, from the boot loader's EFI variables and the entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BootCounting {
    /// No boot loader that counts: the firmware started the UKI directly.
    Off {
        /// The image the firmware started (`LoaderImageIdentifier`, set by systemd-stub).
        image: Option<String>,
    },
    /// systemd-boot started this boot from an entry with no counter, or one blessed since.
    Blessed { entry: Option<String> },
    /// systemd-boot counts the tries of this boot's entry (`LoaderBootCountPath`), not
    /// blessed yet: `tries` as the entry's name has them now.
    Trial { path: String, tries: Tries },
}

/// The whole view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct System {
    pub slots: Vec<Slot>,
    pub roothash: Option<String>,
    /// The boot loader (`LoaderInfo`: `systemd-boot 252...`), if one started this boot.
    pub loader: Option<String>,
    /// The entry it started (`LoaderEntrySelected`).
    pub entry_selected: Option<String>,
    /// The ESP's `EFI/Linux`; `None`: not readable (the ESP is not mounted).
    pub entries: Option<Vec<Entry>>,
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
pub(crate) fn resolve(link: &Path) -> Option<PathBuf> {
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

/// The file name at the end of an EFI path (`\\EFI\\Linux\\x.efi` → `x.efi`).
fn efi_basename(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

/// The state of the entry this boot runs, counted by systemd-boot: the entry as its name
/// is now (blessed since, still counting, or marked bad), or as the loader named it when
/// the ESP cannot be read.
fn trial_state(path: String, entries: Option<&[Entry]>) -> BootCounting {
    let name = efi_basename(&path).to_owned();
    let named = esp::parse_entry_name(&name);
    let now = entries.and_then(|es| {
        es.iter()
            .find(|e| e.file.eq_ignore_ascii_case(&name))
            .or_else(|| {
                let stem = &named.as_ref()?.stem;
                es.iter()
                    .find(|e| esp::parse_entry_name(&e.file).is_some_and(|p| &p.stem == stem))
            })
    });
    let tries = match (now, &named) {
        (Some(e), _) => e.tries,
        (None, Some(n)) => n.tries,
        (None, None) => Tries::Counting { left: 0, done: 0 },
    };
    match tries {
        Tries::Blessed => BootCounting::Blessed {
            entry: now.map(|e| e.file.clone()),
        },
        tries => BootCounting::Trial { path, tries },
    }
}

/// Reads the view under `root` (`/` on the appliance).
pub fn read(root: &Path) -> Result<System, SystemError> {
    let cmdline = parse_cmdline(&read_to_string(&root.join("proc/cmdline"))?);
    let own = |file: &str| {
        std::fs::read_to_string(root.join("usr/share/callgate").join(file))
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let version = own("version");
    let generation = own("generation").and_then(|g| g.parse::<u64>().ok());
    let entries = esp::read_entries(&root.join(ESP_MOUNT).join(esp::ENTRIES_DIR)).ok();
    let by_label = root.join("dev/disk/by-partlabel");
    let by_uuid = root.join("dev/disk/by-partuuid");
    let slots = SLOTS
        .iter()
        .map(|name| {
            let device = resolve(&by_label.join(name));
            let partuuid = device.as_deref().and_then(|d| partuuid_of(&by_uuid, d));
            let booted = partuuid.is_some() && partuuid == cmdline.root_partuuid;
            let entry = entries.as_ref().and_then(|es| {
                es.iter()
                    .filter(|e| e.slot == Some(*name))
                    .max_by_key(|e| e.generation)
                    .cloned()
            });
            let (version, generation) = if booted {
                (
                    version.clone(),
                    generation.or(entry.as_ref().and_then(|e| e.generation)),
                )
            } else {
                (
                    entry.as_ref().and_then(|e| e.version.clone()),
                    entry.as_ref().and_then(|e| e.generation),
                )
            };
            Slot {
                name: (*name).to_owned(),
                device,
                partuuid,
                booted,
                version,
                generation,
                entry,
            }
        })
        .collect();
    let efivars = root.join("sys/firmware/efi/efivars");
    let var = |name: &str| {
        std::fs::read(efivars.join(format!("{name}-{LOADER_GUID}")))
            .ok()
            .and_then(|raw| efi_string(&raw))
    };
    let loader = var("LoaderInfo");
    let entry_selected = var("LoaderEntrySelected");
    let boot_counting = match (var("LoaderBootCountPath"), &loader) {
        (Some(path), _) => trial_state(path, entries.as_deref()),
        (None, Some(_)) => BootCounting::Blessed {
            entry: entry_selected.clone(),
        },
        (None, None) => BootCounting::Off {
            image: var("LoaderImageIdentifier"),
        },
    };
    Ok(System {
        slots,
        roothash: cmdline.roothash,
        loader,
        entry_selected,
        entries,
        boot_counting,
    })
}

impl fmt::Display for Tries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Tries::Blessed => write!(f, "blessed"),
            Tries::Counting { left: 0, done } => write!(
                f,
                "failed: no tries left, {done} done; the loader boots the other slot"
            ),
            Tries::Counting { left, done } => {
                write!(f, "on trial: {left} tries left, {done} done")
            }
        }
    }
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
                Some(v) => write!(f, " version={v}")?,
                None => write!(f, " version=unknown")?,
            }
            if let Some(g) = s.generation {
                write!(f, " generation={g}")?;
            }
            match (&s.entry, &self.entries) {
                (Some(e), _) => {
                    write!(f, " entry={} ({})", e.file, e.tries)?;
                    if !e.consistent {
                        write!(f, " MISMATCH: its UKI is not the build its name gives")?;
                    }
                }
                (None, Some(_)) => write!(f, " (no boot entry)")?,
                (None, None) => {}
            }
            writeln!(f)?;
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
        if let Some(l) = &self.loader {
            write!(f, "boot loader: {l}")?;
            if let Some(e) = &self.entry_selected {
                write!(f, ", entry {e}")?;
            }
            writeln!(f)?;
        }
        match &self.entries {
            Some(es) => {
                for e in es.iter().filter(|e| e.slot.is_none()) {
                    writeln!(f, "boot entry {}: not a callgate slot's", e.file)?;
                }
            }
            None => writeln!(
                f,
                "boot entries: unknown (the ESP is not mounted at /{ESP_MOUNT})"
            )?,
        }
        match &self.boot_counting {
            BootCounting::Off { image } => {
                write!(
                    f,
                    "boot counting: off (the firmware started the UKI directly: no boot loader, no tries)"
                )?;
                if let Some(i) = image {
                    write!(f, "; image {i}")?;
                }
                writeln!(f)
            }
            BootCounting::Blessed { .. } => {
                writeln!(f, "boot counting: on; this boot's entry is blessed")
            }
            BootCounting::Trial { path, tries } => {
                writeln!(f, "boot counting: on; this boot's entry {path}: {tries}")
            }
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

    fn efi_var(dir: &Path, name: &str, value: &str) {
        let mut raw = vec![6, 0, 0, 0];
        for u in value.encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        std::fs::write(
            dir.join(format!("sys/firmware/efi/efivars/{name}-{LOADER_GUID}")),
            raw,
        )
        .unwrap();
    }

    fn uki(generation: u64, version: &str, partuuid: &str) -> Vec<u8> {
        esp::tests::fake_uki(
            &format!("ID=callgate\nVERSION_ID=\"{version}\"\nIMAGE_ID=callgate\nIMAGE_VERSION={generation}\n"),
            &format!("roothash={HASH} systemd.verity_root_data=PARTUUID={partuuid} ro"),
        )
    }

    const PARTUUID_A: &str = "9f3c0e6a-1b2d-4c5e-8f7a-6b5c4d3e2f1a";
    const PARTUUID_B: &str = "11111111-2222-3333-4444-555555555555";

    /// A root with the appliance's files: slot A booted, slot B empty; with a loader,
    /// systemd-boot's variables and slot A's blessed entry on the ESP.
    fn fake_root(dir: &Path, with_loader: bool) {
        let mk = |p: &str| std::fs::create_dir_all(dir.join(p)).unwrap();
        mk("proc");
        mk("dev/disk/by-partlabel");
        mk("dev/disk/by-partuuid");
        mk("usr/share/callgate");
        mk("sys/firmware/efi/efivars");
        std::fs::write(dir.join("proc/cmdline"), cmdline()).unwrap();
        std::fs::write(dir.join("usr/share/callgate/version"), "v1.2-3-gabc\n").unwrap();
        std::fs::write(dir.join("usr/share/callgate/generation"), "812\n").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, dir.join(at)).unwrap();
        };
        link("../../vda2", "dev/disk/by-partlabel/root-a");
        link("../../vda4", "dev/disk/by-partlabel/root-b");
        link("../../vda6", "dev/disk/by-partlabel/state");
        link("../../vda2", &format!("dev/disk/by-partuuid/{PARTUUID_A}"));
        link("../../vda4", &format!("dev/disk/by-partuuid/{PARTUUID_B}"));
        if with_loader {
            mk("efi/EFI/Linux");
            std::fs::write(
                dir.join("efi/EFI/Linux/callgate-812-a.efi"),
                uki(812, "v1.2-3-gabc", PARTUUID_A),
            )
            .unwrap();
            efi_var(dir, "LoaderInfo", "systemd-boot 252.39-1~deb12u2");
            efi_var(dir, "LoaderEntrySelected", "callgate-812-a.efi");
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
        assert_eq!(a.generation, Some(812));
        let b = &s.slots[1];
        assert!(!b.booted);
        assert_eq!(b.partuuid.as_deref(), Some(PARTUUID_B));
        assert_eq!(b.version, None);
        assert_eq!(s.booted().map(|b| b.name.as_str()), Some("root-a"));
        assert_eq!(s.boot_counting, BootCounting::Off { image: None });
        assert_eq!(s.entries, None);
        let text = s.to_string();
        assert!(text.contains("slot root-a: "), "{text}");
        assert!(
            text.contains(" booted version=v1.2-3-gabc generation=812\n"),
            "{text}"
        );
        assert!(text.contains("booted: root-a\n"), "{text}");
        assert!(text.contains("boot entries: unknown"), "{text}");
        assert!(text.contains("boot counting: off"), "{text}");
    }

    #[test]
    fn both_slots_show_their_entries_and_the_blessed_boot() {
        let dir = tempfile::tempdir().unwrap();
        fake_root(dir.path(), true);
        let s = read(dir.path()).unwrap();
        assert_eq!(
            s.boot_counting,
            BootCounting::Blessed {
                entry: Some("callgate-812-a.efi".into())
            }
        );
        let text = s.to_string();
        assert!(
            text.contains(
                " booted version=v1.2-3-gabc generation=812 entry=callgate-812-a.efi (blessed)\n"
            ),
            "{text}"
        );
        assert!(text.contains("version=unknown (no boot entry)\n"), "{text}");
        assert!(
            text.contains("boot loader: systemd-boot 252.39-1~deb12u2, entry callgate-812-a.efi\n"),
            "{text}"
        );
        assert!(
            text.contains("boot counting: on; this boot's entry is blessed\n"),
            "{text}"
        );

        // An update in slot B, on trial (its first boot counted: +2-1), booted.
        let linux = dir.path().join("efi/EFI/Linux");
        std::fs::write(
            linux.join("callgate-813-b+2-1.efi"),
            uki(813, "v1.3", PARTUUID_B),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("proc/cmdline"),
            format!("roothash={HASH} systemd.verity_root_data=PARTUUID={PARTUUID_B}"),
        )
        .unwrap();
        std::fs::write(dir.path().join("usr/share/callgate/version"), "v1.3\n").unwrap();
        std::fs::write(dir.path().join("usr/share/callgate/generation"), "813\n").unwrap();
        efi_var(dir.path(), "LoaderEntrySelected", "callgate-813-b+2-1.efi");
        efi_var(
            dir.path(),
            "LoaderBootCountPath",
            "\\EFI\\Linux\\callgate-813-b+2-1.efi",
        );
        let s = read(dir.path()).unwrap();
        assert_eq!(s.booted().map(|b| b.name.as_str()), Some("root-b"));
        assert_eq!(
            s.boot_counting,
            BootCounting::Trial {
                path: "\\EFI\\Linux\\callgate-813-b+2-1.efi".into(),
                tries: Tries::Counting { left: 2, done: 1 }
            }
        );
        let text = s.to_string();
        assert!(
            text.contains(
                " version=v1.2-3-gabc generation=812 entry=callgate-812-a.efi (blessed)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(" booted version=v1.3 generation=813 entry=callgate-813-b+2-1.efi (on trial: 2 tries left, 1 done)\n"),
            "{text}"
        );

        // Blessed by systemd-bless-boot: the counter is off the name; the variable still
        // names the old path.
        std::fs::rename(
            linux.join("callgate-813-b+2-1.efi"),
            linux.join("callgate-813-b.efi"),
        )
        .unwrap();
        let s = read(dir.path()).unwrap();
        assert_eq!(
            s.boot_counting,
            BootCounting::Blessed {
                entry: Some("callgate-813-b.efi".into())
            }
        );

        // Failed: no tries left; and a UKI under a name that is not its build's.
        std::fs::rename(
            linux.join("callgate-813-b.efi"),
            linux.join("callgate-813-b+0-3.efi"),
        )
        .unwrap();
        std::fs::write(
            linux.join("callgate-900-a.efi"),
            uki(812, "v1.2", PARTUUID_A),
        )
        .unwrap();
        std::fs::write(linux.join("other.efi"), b"MZ").unwrap();
        let text = read(dir.path()).unwrap().to_string();
        assert!(
            text.contains("entry=callgate-813-b+0-3.efi (failed: no tries left, 3 done; the loader boots the other slot)"),
            "{text}"
        );
        assert!(
            text.contains("entry=callgate-900-a.efi (blessed) MISMATCH"),
            "{text}"
        );
        assert!(
            text.contains("boot entry other.efi: not a callgate slot's\n"),
            "{text}"
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

//! The boot entries on the EFI system partition: each slot's signed UKI in `EFI/Linux`,
//! as systemd-boot (252) finds them.
//!
//! ## Names
//! `callgate-GENERATION-SLOT.efi` (SLOT `a` or `b`) is a blessed entry; while an entry is
//! on trial its name carries systemd-boot's boot counter before `.efi`: `+LEFT` or
//! `+LEFT-DONE` (`callgate-813-b+3.efi` → `+2-1` → `+1-2` → `+0-3`: no tries left, the
//! loader puts it last and boots the other slot). `systemd-bless-boot` takes the counter
//! off once a boot of it is good.
//!
//! ## What is read of a UKI
//! Its PE section table, then two small sections: `.osrel` (`VERSION_ID`: the version;
//! `IMAGE_VERSION`: the generation, by which systemd-boot orders the entries, newest
//! first) and `.cmdline` (the root hash and the partition the entry boots). Bounded: the
//! headers in the first 64 KiB, each section at most 4 KiB. A file that is not that is
//! listed with what could not be read, never trusted for anything (the firmware checks
//! every UKI's signature at boot; this is only what `show system` prints).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::{parse_cmdline, Cmdline};

/// Where the entries are, under the ESP's mount point.
pub const ENTRIES_DIR: &str = "EFI/Linux";

/// At most this many files of `EFI/Linux` are looked at.
const MAX_ENTRIES: usize = 16;
/// The PE headers must sit in the first 64 KiB.
const MAX_HEADERS: usize = 64 * 1024;
/// `.osrel` and `.cmdline` at most.
const MAX_SECTION: u32 = 4096;

/// systemd-boot's boot counter of an entry, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Tries {
    /// No counter: a good entry (built so, or blessed after a good boot).
    Blessed,
    /// On trial: `left` boots before the loader gives up on it, `done` tried so far.
    Counting { left: u32, done: u32 },
}

impl Tries {
    /// Whether the loader still boots it before an entry with tries left or blessed
    /// (systemd-boot orders entries with no tries left last).
    pub fn exhausted(self) -> bool {
        matches!(self, Tries::Counting { left: 0, .. })
    }
}

/// What a callgate entry's file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// `callgate-GENERATION-SLOT` (no counter, no `.efi`).
    pub stem: String,
    pub generation: u64,
    /// `root-a` or `root-b`.
    pub slot: &'static str,
    pub tries: Tries,
}

/// Splits systemd-boot's counter off `name` (without `.efi`): the stem and the counter.
fn split_counter(name: &str) -> (&str, Tries) {
    let Some((stem, counter)) = name.rsplit_once('+') else {
        return (name, Tries::Blessed);
    };
    let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    match (num(left), num(done)) {
        (Some(left), Some(done)) => (stem, Tries::Counting { left, done }),
        // Not a counter systemd-boot parses: the whole name is the stem.
        _ => (name, Tries::Blessed),
    }
}

/// Parses `callgate-GENERATION-SLOT[+LEFT[-DONE]].efi` (case as on the ESP: vfat keeps
/// it, matching ignores it). `None`: not a callgate slot's entry.
pub fn parse_entry_name(file: &str) -> Option<EntryName> {
    let lower = file.to_ascii_lowercase();
    let name = lower.strip_suffix(".efi")?;
    let (stem, tries) = split_counter(name);
    let rest = stem.strip_prefix("callgate-")?;
    let (generation, slot) = rest.rsplit_once('-')?;
    if generation.is_empty()
        || generation.len() > 19
        || !generation.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let slot = match slot {
        "a" => "root-a",
        "b" => "root-b",
        _ => return None,
    };
    Some(EntryName {
        stem: stem.to_owned(),
        generation: generation.parse().ok()?,
        slot,
        tries,
    })
}

/// The file name of `slot`'s entry for `generation` with `tries` (`callgate-813-b+3.efi`).
pub fn entry_file_name(generation: u64, slot: &str, tries: Tries) -> Option<String> {
    let letter = match slot {
        "root-a" => "a",
        "root-b" => "b",
        _ => return None,
    };
    Some(match tries {
        Tries::Blessed => format!("callgate-{generation}-{letter}.efi"),
        Tries::Counting { left, done: 0 } => format!("callgate-{generation}-{letter}+{left}.efi"),
        Tries::Counting { left, done } => {
            format!("callgate-{generation}-{letter}+{left}-{done}.efi")
        }
    })
}

/// One section of a PE file: where its bytes are in the file and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The section table of the PE image whose first bytes are `head`. `None`: not a PE
/// image, or its table is not within `head`.
pub fn pe_sections(head: &[u8]) -> Option<Vec<Section>> {
    if head.get(..2)? != b"MZ" {
        return None;
    }
    let pe = usize::try_from(u32_at(head, 0x3c)?).ok()?;
    if head.get(pe..pe.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    let coff = pe + 4;
    let count = usize::from(u16_at(head, coff + 2)?);
    let optional = usize::from(u16_at(head, coff + 16)?);
    let table = coff.checked_add(20)?.checked_add(optional)?;
    (0..count)
        .map(|i| {
            let at = table.checked_add(i.checked_mul(40)?)?;
            let raw = head.get(at..at.checked_add(40)?)?;
            let name_len = raw[..8].iter().position(|&b| b == 0).unwrap_or(8);
            let name = String::from_utf8_lossy(&raw[..name_len]).into_owned();
            let virtual_size = u32_at(raw, 8)?;
            let raw_size = u32_at(raw, 16)?;
            let offset = u32_at(raw, 20)?;
            // objcopy sets the virtual size to the data's own size and pads the raw size
            // to the file alignment: the smaller of the two is the data.
            let size = if virtual_size == 0 {
                raw_size
            } else {
                virtual_size.min(raw_size)
            };
            Some(Section { name, offset, size })
        })
        .collect()
}

/// The `KEY=value` lines of an os-release text (quotes taken off).
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_owned())
    })
}

/// What is read of one UKI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UkiInfo {
    /// `.osrel`'s `VERSION_ID`.
    pub version: Option<String>,
    /// `.osrel`'s `IMAGE_VERSION`, as a number.
    pub generation: Option<u64>,
    /// `.cmdline`'s root hash and root partition.
    pub cmdline: Cmdline,
}

/// Reads the `.osrel` and `.cmdline` sections of the UKI `file`. `None`: not a PE image
/// with an `.osrel` section.
pub fn read_uki(file: &mut (impl Read + Seek)) -> Option<UkiInfo> {
    let mut head = Vec::new();
    file.by_ref()
        .take(MAX_HEADERS as u64)
        .read_to_end(&mut head)
        .ok()?;
    let sections = pe_sections(&head)?;
    let mut read = |name: &str| -> Option<String> {
        let s = sections.iter().find(|s| s.name == name)?;
        if s.size > MAX_SECTION {
            return None;
        }
        file.seek(SeekFrom::Start(u64::from(s.offset))).ok()?;
        let mut buf = Vec::new();
        file.by_ref()
            .take(u64::from(s.size))
            .read_to_end(&mut buf)
            .ok()?;
        let text = String::from_utf8(buf).ok()?;
        Some(text.trim_end_matches('\0').to_owned())
    };
    let osrel = read(".osrel")?;
    let cmdline = read(".cmdline")
        .map(|c| parse_cmdline(&c))
        .unwrap_or_default();
    Some(UkiInfo {
        version: os_release_value(&osrel, "VERSION_ID").filter(|v| !v.is_empty()),
        generation: os_release_value(&osrel, "IMAGE_VERSION").and_then(|v| v.parse().ok()),
        cmdline,
    })
}

/// One file of `EFI/Linux`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Its file name on the ESP.
    pub file: String,
    /// The slot its name gives (`root-a`, `root-b`); `None`: not a callgate slot's name.
    pub slot: Option<&'static str>,
    /// The counter in its name.
    pub tries: Tries,
    /// The generation its name gives.
    pub generation: Option<u64>,
    /// Its `.osrel` `VERSION_ID`, `None` when unreadable.
    pub version: Option<String>,
    /// Whether its `.osrel` generation is the one its name gives (`false`: a UKI put
    /// under another slot's or another build's name).
    pub consistent: bool,
    /// The root partition its command line boots (lower case).
    pub root_partuuid: Option<String>,
}

/// The entries in `dir` (the ESP's `EFI/Linux`), sorted by name. An error: `dir` cannot
/// be read (the ESP is not mounted).
pub fn read_entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_ascii_lowercase().ends_with(".efi") && !n.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(MAX_ENTRIES);
    Ok(names
        .into_iter()
        .map(|file| {
            let parsed = parse_entry_name(&file);
            let info = std::fs::File::open(dir.join(&file))
                .ok()
                .and_then(|mut f| read_uki(&mut f))
                .unwrap_or_default();
            let generation = parsed.as_ref().map(|p| p.generation);
            Entry {
                slot: parsed.as_ref().map(|p| p.slot),
                tries: parsed.as_ref().map_or(Tries::Blessed, |p| p.tries),
                consistent: generation.is_some() && info.generation == generation,
                generation,
                version: info.version,
                root_partuuid: info.cmdline.root_partuuid,
                file,
            }
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Cursor;

    #[test]
    fn entry_names_carry_generation_slot_and_counter() {
        let e = parse_entry_name("callgate-812-a.efi").unwrap();
        assert_eq!(
            (e.stem.as_str(), e.generation, e.slot, e.tries),
            ("callgate-812-a", 812, "root-a", Tries::Blessed)
        );
        let e = parse_entry_name("callgate-813-b+3.efi").unwrap();
        assert_eq!(e.tries, Tries::Counting { left: 3, done: 0 });
        assert_eq!(e.stem, "callgate-813-b");
        let e = parse_entry_name("CALLGATE-813-B+0-3.EFI").unwrap();
        assert_eq!(e.tries, Tries::Counting { left: 0, done: 3 });
        assert!(e.tries.exhausted());
        assert_eq!(e.slot, "root-b");
        for not in [
            "callgate-813-c.efi",
            "callgate--a.efi",
            "callgate-x1-a.efi",
            "linux.efi",
            "callgate-813-a.conf",
            "callgate-813-a+x.efi",
        ] {
            assert_eq!(parse_entry_name(not), None, "{not}");
        }
        for (g, s, t) in [
            (5, "root-a", Tries::Blessed),
            (6, "root-b", Tries::Counting { left: 3, done: 0 }),
            (7, "root-b", Tries::Counting { left: 1, done: 2 }),
        ] {
            let name = entry_file_name(g, s, t).unwrap();
            let back = parse_entry_name(&name).unwrap();
            assert_eq!(
                (back.generation, back.slot, back.tries),
                (g, s, t),
                "{name}"
            );
        }
        assert_eq!(
            entry_file_name(6, "root-b", Tries::Counting { left: 3, done: 0 }).as_deref(),
            Some("callgate-6-b+3.efi")
        );
        assert_eq!(entry_file_name(6, "state", Tries::Blessed), None);
    }

    /// A PE image as objcopy leaves a UKI: headers, then sections at file offsets.
    pub(crate) fn fake_uki(osrel: &str, cmdline: &str) -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        f[..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        f[coff + 2..coff + 4].copy_from_slice(&3u16.to_le_bytes());
        let optional = 0xf0u16;
        f[coff + 16..coff + 18].copy_from_slice(&optional.to_le_bytes());
        let table = coff + 20 + usize::from(optional);
        let mut data_at = 0x400u32;
        let mut body = Vec::new();
        for (i, (name, data)) in [
            (".text", &b"code"[..]),
            (".osrel", osrel.as_bytes()),
            (".cmdline", cmdline.as_bytes()),
        ]
        .into_iter()
        .enumerate()
        {
            let at = table + i * 40;
            f[at..at + name.len()].copy_from_slice(name.as_bytes());
            let len = u32::try_from(data.len()).unwrap();
            let padded = len.div_ceil(0x200) * 0x200;
            f[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            f[at + 16..at + 20].copy_from_slice(&padded.to_le_bytes());
            f[at + 20..at + 24].copy_from_slice(&data_at.to_le_bytes());
            let mut d = data.to_vec();
            d.resize(padded as usize, 0);
            body.extend_from_slice(&d);
            data_at += padded;
        }
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn a_uki_gives_its_version_generation_and_root() {
        let uki = fake_uki(
            "NAME=\"callgate\"\nID=callgate\nVERSION_ID=\"v1.2-3-gabc\"\nIMAGE_ID=callgate\nIMAGE_VERSION=813\n",
            "roothash=abcd systemd.verity_root_data=PARTUUID=9F3C0E6A-1B2D-4C5E-8F7A-6B5C4D3E2F1A ro\n",
        );
        let info = read_uki(&mut Cursor::new(&uki)).unwrap();
        assert_eq!(info.version.as_deref(), Some("v1.2-3-gabc"));
        assert_eq!(info.generation, Some(813));
        assert_eq!(info.cmdline.roothash.as_deref(), Some("abcd"));
        assert_eq!(
            info.cmdline.root_partuuid.as_deref(),
            Some("9f3c0e6a-1b2d-4c5e-8f7a-6b5c4d3e2f1a")
        );
        // Not a PE image; a PE image cut inside its section table; no .osrel.
        assert_eq!(read_uki(&mut Cursor::new(b"not a pe file")), None);
        assert_eq!(read_uki(&mut Cursor::new(&uki[..0x100])), None);
        let mut renamed = uki.clone();
        let at = renamed.windows(6).position(|w| w == b".osrel").unwrap();
        renamed[at + 1] = b'X';
        assert_eq!(read_uki(&mut Cursor::new(&renamed)), None);
        // A section bigger than any .osrel: not read.
        let big = fake_uki(&"X".repeat(5000), "");
        assert_eq!(read_uki(&mut Cursor::new(&big)), None);
    }
}

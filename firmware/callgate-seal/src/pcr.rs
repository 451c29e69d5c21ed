//! The PCR selection a KEK is sealed to: a validated, sorted, non-empty set of sha256 PCRs.

use std::fmt;
use std::str::FromStr;

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{PcrSelectSize, PcrSelectionList, PcrSelectionListBuilder, PcrSlot};

/// Highest PCR index a PC-client TPM has (PCRs 0..=23).
pub const MAX_PCR: u8 = 23;

/// PCR 7: the Secure Boot policy (db/dbx/PK/KEK and the shim/boot loader authorities).
pub const DEFAULT_PCRS: &str = "7";

/// A non-empty, strictly increasing list of PCR indices in `0..=23`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrList(Vec<u8>);

/// Why a PCR list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcrListError {
    #[error("the PCR list is empty")]
    Empty,
    #[error("{0:?} is not a PCR index (expected 0..=23)")]
    NotAnIndex(String),
    #[error("PCR {0} is listed twice")]
    Duplicate(u8),
}

impl PcrList {
    /// Build from indices in any order; rejects duplicates and out-of-range values.
    pub fn new(indices: impl IntoIterator<Item = u64>) -> Result<Self, PcrListError> {
        let mut out = Vec::new();
        for index in indices {
            let index = u8::try_from(index)
                .ok()
                .filter(|i| *i <= MAX_PCR)
                .ok_or_else(|| PcrListError::NotAnIndex(index.to_string()))?;
            if out.contains(&index) {
                return Err(PcrListError::Duplicate(index));
            }
            out.push(index);
        }
        if out.is_empty() {
            return Err(PcrListError::Empty);
        }
        out.sort_unstable();
        Ok(PcrList(out))
    }

    pub fn indices(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The selection in the sha256 bank, as the TPM commands take it.
    pub fn selection(&self) -> Result<PcrSelectionList, tss_esapi::Error> {
        let slots = self
            .0
            .iter()
            .map(|i| PcrSlot::try_from(1u32 << i))
            .collect::<Result<Vec<_>, _>>()?;
        // sizeofSelect is part of the PolicyPCR digest: pin it (3 octets = PCRs 0..=23, the
        // PC-client layout) rather than inherit the library default.
        PcrSelectionListBuilder::new()
            .with_size_of_select(PcrSelectSize::ThreeOctets)
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
    }
}

impl FromStr for PcrList {
    type Err = PcrListError;

    /// Parses `7` or `0,2,7` (spaces around commas allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let indices = s
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                // Digits only: no signs, no "0x", no leading "+".
                if part.bytes().all(|b| b.is_ascii_digit()) && part.len() <= 2 {
                    part.parse::<u64>()
                        .map_err(|_| PcrListError::NotAnIndex(part.to_string()))
                } else {
                    Err(PcrListError::NotAnIndex(part.to_string()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        PcrList::new(indices)
    }
}

impl fmt::Display for PcrList {
    /// `7` or `0,2,7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, index) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{index}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sorts() {
        let list: PcrList = "7, 0,14".parse().unwrap();
        assert_eq!(list.indices(), &[0, 7, 14]);
        assert_eq!(list.to_string(), "0,7,14");
        assert_eq!(DEFAULT_PCRS.parse::<PcrList>().unwrap().indices(), &[7]);
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!("".parse::<PcrList>(), Err(PcrListError::Empty));
        assert_eq!(",".parse::<PcrList>(), Err(PcrListError::Empty));
        assert_eq!("7,7".parse::<PcrList>(), Err(PcrListError::Duplicate(7)));
        for bad in [
            "24",
            "-1",
            "+7",
            "0x7",
            "seven",
            "007",
            "99999999999999999999",
        ] {
            assert!(
                matches!(bad.parse::<PcrList>(), Err(PcrListError::NotAnIndex(_))),
                "{bad}"
            );
        }
        assert_eq!(
            PcrList::new([300]),
            Err(PcrListError::NotAnIndex("300".into()))
        );
    }

    #[test]
    fn builds_a_sha256_selection() {
        let list: PcrList = "0,7,23".parse().unwrap();
        let sel = list.selection().unwrap();
        let selections = sel.get_selections();
        assert_eq!(selections.len(), 1);
        assert_eq!(selections[0].hashing_algorithm(), HashingAlgorithm::Sha256);
        assert_eq!(
            selections[0].selected(),
            vec![PcrSlot::Slot0, PcrSlot::Slot7, PcrSlot::Slot23]
        );
    }
}

//! Reading our table back from the kernel over netlink, and comparing it with what was
//! rendered.
//!
//! Why not `nft list`: nft fetches every set element even to list rules, so with a 100k
//! prefix set a read-back through nft costs more than the apply itself. Chains, rules
//! (comment, verdict, counters, and what each matches: [`mod@crate::matches`]) and set
//! definitions come from one netlink snapshot of the table whose cost does not depend on
//! set sizes.
//!
//! Set contents: sets of up to [`FULL_DUMP_MAX`] intervals are dumped and compared in full.
//! The kernel's interval-set dump is quadratic in the set size (it re-walks the tree for
//! every 32 KiB reply), so larger sets are checked by point lookups instead: a spread of
//! [`SAMPLES`] intended intervals must be covered at both ends, the same number of gaps
//! between them must not be, and every interval the previous ruleset had and this one does
//! not must be gone (sampled beyond [`SAMPLES`] × 4). That last check is the one that
//! catches the classic failure of a replace that leaves deleted prefixes allowed.

use std::collections::{BTreeMap, BTreeSet};

use crate::matches;
use crate::model::{Ruleset, SetDef};
use crate::netlink::{self, NetlinkError};
use crate::nft::{intended_intervals, Existing, Observed, ObservedRule};

/// Sets with at most this many intervals are read back in full.
pub const FULL_DUMP_MAX: usize = 8192;
/// Intervals (and gaps) sampled in a larger set.
pub const SAMPLES: usize = 1024;

/// Chains, rules (with what each matches) and set definitions of `table`, from one
/// ruleset generation; empty when the table does not exist. Set contents are not read
/// here, apart from the few elements of the anonymous sets rules use inline.
pub fn observe(table: &str) -> Result<Observed, NetlinkError> {
    let mut o = Observed::default();
    let Some(t) = netlink::dump_table(table)? else {
        return Ok(o);
    };
    for c in &t.chains {
        o.rules.entry(c.name.clone()).or_default();
        o.chains
            .insert(c.name.clone(), (c.hook.clone(), c.policy.clone()));
    }
    for r in &t.rules {
        o.rules
            .entry(r.chain.clone())
            .or_default()
            .push(ObservedRule {
                comment: r.comment.clone(),
                verdict: r.verdict.clone(),
                packets: r.packets,
                bytes: r.bytes,
                matches: matches::from_kernel(r, &t),
            });
    }
    for s in t.sets.into_iter().filter(|s| !s.anonymous) {
        let mut flags = s.flags;
        flags.sort();
        o.sets.insert(s.name, (s.key_types, flags));
    }
    Ok(o)
}

/// [`observe`], with a missing table read as an empty one.
fn observe_or_empty(table: &str) -> Result<Observed, NetlinkError> {
    match observe(table) {
        Err(NetlinkError::SetMissing { .. }) => Ok(Observed::default()),
        other => other,
    }
}

/// Names of the chains and named sets in `table` (empty when the table does not exist).
pub fn existing(table: &str) -> Result<(BTreeSet<String>, BTreeSet<String>), NetlinkError> {
    let o = observe_or_empty(table)?;
    Ok((o.chains.into_keys().collect(), o.sets.into_keys().collect()))
}

/// What an apply of `rs` to `table` has to take into account: the chains and sets there
/// now, and which of `rs`'s sets exist in another shape ([`Existing::of`]).
pub fn existing_for(table: &str, rs: &Ruleset) -> Result<Existing, NetlinkError> {
    Ok(Existing::of(rs, &observe_or_empty(table)?))
}

/// `n` indices spread evenly over `0..len`.
fn spread(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    (0..n).map(|i| i * (len - 1) / (n - 1).max(1)).collect()
}

/// Parts of `old` not covered by `new` (both merged and sorted).
fn removed(old: &[(u128, u128)], new: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(lo, hi) in old {
        let mut cur = lo;
        while j < new.len() && new[j].1 < cur {
            j += 1;
        }
        let mut k = j;
        while cur <= hi {
            match new.get(k) {
                Some(&(nlo, nhi)) if nlo <= hi => {
                    if nlo > cur {
                        out.push((cur, nlo - 1));
                    }
                    if nhi >= hi {
                        break;
                    }
                    cur = nhi + 1;
                    k += 1;
                }
                _ => {
                    out.push((cur, hi));
                    break;
                }
            }
        }
    }
    out
}

/// Checks the contents of one config-owned set; returns the differences found.
fn check_set(
    table: &str,
    set: &SetDef,
    previous: Option<&SetDef>,
) -> Result<Vec<String>, NetlinkError> {
    let want = intended_intervals(set);
    if want.len() <= FULL_DUMP_MAX {
        let got = netlink::dump_intervals(table, &set.name)?;
        return Ok(if got == want {
            Vec::new()
        } else {
            vec![format!(
                "set {} holds {} intervals, expected {}",
                set.name,
                got.len(),
                want.len()
            )]
        });
    }
    let mut keys: Vec<u128> = Vec::new();
    let mut expect: Vec<bool> = Vec::new();
    for i in spread(want.len(), SAMPLES) {
        let (lo, hi) = want[i];
        keys.extend([lo, hi]);
        expect.extend([true, true]);
        if let Some(&(next_lo, _)) = want.get(i + 1) {
            if hi + 1 < next_lo {
                keys.extend([hi + 1, next_lo - 1]);
                expect.extend([false, false]);
            }
        }
    }
    if let Some(prev) = previous {
        let gone = removed(&intended_intervals(prev), &want);
        for i in spread(gone.len(), SAMPLES * 4) {
            keys.push(gone[i].0);
            expect.push(false);
        }
    }
    let got = netlink::covered_many(table, &set.name, &keys)?;
    let wrong = got.iter().zip(&expect).filter(|(g, e)| g != e).count();
    Ok(if wrong == 0 {
        Vec::new()
    } else {
        vec![format!(
            "set {}: {wrong} of {} sampled lookups disagree with the rendered contents",
            set.name,
            keys.len()
        )]
    })
}

/// Compares the kernel's table with `rs`. `previous` is the ruleset applied before, so that
/// removed elements can be checked for in large sets.
pub fn verify(
    table: &str,
    rs: &Ruleset,
    previous: Option<&Ruleset>,
) -> Result<Vec<String>, NetlinkError> {
    verify_observed(table, rs, previous, &observe(table)?)
}

/// [`verify`] against a snapshot already taken with [`observe`] (set contents are still
/// read now), so that counters and differences can come from one snapshot.
pub fn verify_observed(
    table: &str,
    rs: &Ruleset,
    previous: Option<&Ruleset>,
    observed: &Observed,
) -> Result<Vec<String>, NetlinkError> {
    let mut diffs = crate::nft::diff(rs, observed);
    let prev_sets: BTreeMap<&str, &SetDef> = previous
        .map(|p| p.sets.iter().map(|s| (s.name.as_str(), s)).collect())
        .unwrap_or_default();
    for set in rs.sets.iter().filter(|s| !s.kind.is_dynamic()) {
        if observed.sets.contains_key(&set.name) {
            diffs.extend(check_set(
                table,
                set,
                prev_sets.get(set.name.as_str()).copied(),
            )?);
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_parts() {
        assert_eq!(
            removed(&[(0, 10)], &[(2, 3), (5, 5)]),
            vec![(0, 1), (4, 4), (6, 10)]
        );
        assert_eq!(removed(&[(0, 10), (20, 30)], &[(0, 30)]), vec![]);
        assert_eq!(removed(&[(0, 10)], &[]), vec![(0, 10)]);
        assert_eq!(removed(&[(5, 9)], &[(0, 6)]), vec![(7, 9)]);
        assert_eq!(removed(&[(0, 3), (8, 9)], &[(2, 8)]), vec![(0, 1), (9, 9)]);
    }

    #[test]
    fn spread_covers_ends() {
        assert_eq!(spread(3, 10), vec![0, 1, 2]);
        let s = spread(100_000, 1024);
        assert_eq!(s.len(), 1024);
        assert_eq!((s[0], s[1023]), (0, 99_999));
    }
}

//! Serial console lockouts (`pam_faillock`) as they happen: every few seconds the console
//! accounts' tally files are read, and an account that became locked (as many recent
//! failures as `deny` allows within `fail_interval`) is logged and sent to the cloud as a
//! `lockout` event.
//!
//! The tally file is pam_faillock's (Linux-PAM 1.5, `modules/pam_faillock/faillock.h`): a
//! sequence of 64-byte records `{ char source[52]; u16 reserved; u16 status; u64 time; }`
//! in host byte order, `status & 1` marking a valid failure, `time` in seconds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callgate_config::Config;
use tokio::sync::watch;

/// How often the tallies are read.
const EVERY: Duration = Duration::from_secs(5);
const RECORD: usize = 64;
const STATUS_VALID: u16 = 1;

/// pam_faillock's settings that decide a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub dir: PathBuf,
    pub deny: usize,
    pub fail_interval: u64,
    pub unlock_time: u64,
}

impl Policy {
    /// From `faillock.conf`'s text (pam_faillock's defaults for what it does not say).
    pub fn parse(text: &str) -> Policy {
        let mut p = Policy {
            dir: PathBuf::from("/run/faillock"),
            deny: 3,
            fail_interval: 900,
            unlock_time: 600,
        };
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "dir" => p.dir = PathBuf::from(v),
                "deny" => p.deny = v.parse().unwrap_or(p.deny),
                "fail_interval" => p.fail_interval = v.parse().unwrap_or(p.fail_interval),
                "unlock_time" => p.unlock_time = v.parse().unwrap_or(p.unlock_time),
                _ => {}
            }
        }
        p
    }

    /// Whether the tally `bytes` says the account is locked at `now` (seconds): `deny`
    /// valid failures within `fail_interval`, the last of them less than `unlock_time`
    /// ago (0: until an admin lifts it).
    pub fn locked(&self, bytes: &[u8], now: u64) -> bool {
        if self.deny == 0 {
            return false;
        }
        let times: Vec<u64> = bytes
            .chunks_exact(RECORD)
            .filter(|r| u16::from_ne_bytes([r[54], r[55]]) & STATUS_VALID != 0)
            .map(|r| u64::from_ne_bytes(r[56..64].try_into().unwrap_or_default()))
            .filter(|t| now.saturating_sub(*t) <= self.fail_interval)
            .collect();
        let Some(latest) = times.iter().max() else {
            return false;
        };
        times.len() >= self.deny
            && (self.unlock_time == 0 || now.saturating_sub(*latest) < self.unlock_time)
    }
}

/// Follows the console accounts' lockouts; each new one is logged and is an event.
pub fn watch(config: watch::Receiver<Arc<Config>>, uplink: crate::uplink::Uplink) {
    tokio::spawn(async move {
        let mut locked: BTreeSet<String> = BTreeSet::new();
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            let users: Vec<String> = {
                let cfg = config.borrow();
                let mut u: Vec<String> = cfg.user.iter().map(|u| u.name.to_string()).collect();
                if cfg.console.break_glass_password.is_some() {
                    u.push(callgate_config::BREAK_GLASS_USER.to_owned());
                }
                u
            };
            let now_locked = tokio::task::spawn_blocking(move || {
                let policy = Policy::parse(
                    &std::fs::read_to_string("/etc/security/faillock.conf").unwrap_or_default(),
                );
                let now = callgate_revisions::now_ms() / 1000;
                users
                    .into_iter()
                    .filter(|u| read(&policy.dir, u).is_some_and(|b| policy.locked(&b, now)))
                    .collect::<BTreeSet<String>>()
            })
            .await
            .unwrap_or_default();
            for u in now_locked.difference(&locked) {
                log::warn!("console: the account {u} is locked after repeated wrong passwords");
                uplink.event("lockout", serde_json::json!({"user": u}));
            }
            locked = now_locked;
        }
    });
}

fn read(dir: &Path, user: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(user)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(entries: &[(u16, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (status, time) in entries {
            let mut r = [0u8; RECORD];
            r[..9].copy_from_slice(b"/dev/pts0");
            r[54..56].copy_from_slice(&status.to_ne_bytes());
            r[56..64].copy_from_slice(&time.to_ne_bytes());
            out.extend_from_slice(&r);
        }
        out
    }

    #[test]
    fn three_recent_valid_failures_lock_until_the_unlock_time() {
        let p = Policy::parse(
            "dir = /x\ndeny = 3\nfail_interval = 900\nunlock_time = 900\n# deny = 9\n",
        );
        assert_eq!((p.dir.as_path(), p.deny), (Path::new("/x"), 3));
        let now = 10_000;
        let three = tally(&[(5, now - 30), (5, now - 20), (1, now - 10)]);
        assert!(p.locked(&three, now));
        assert!(!p.locked(&three, now + 900), "unlocked after unlock_time");
        // Two, one of them invalid (reset), or old ones: not locked.
        assert!(!p.locked(&tally(&[(1, now - 2), (1, now - 1)]), now));
        assert!(!p.locked(&tally(&[(0, now - 3), (1, now - 2), (1, now - 1)]), now));
        assert!(!p.locked(&tally(&[(1, now - 5000), (1, now - 2), (1, now - 1)]), now));
        // A truncated file counts its whole records only; an empty one nothing.
        let mut cut = three.clone();
        cut.truncate(RECORD * 2 + 10);
        assert!(!p.locked(&cut, now));
        assert!(!p.locked(&[], now));
        // unlock_time 0: locked until lifted (while the failures are recent).
        let never = Policy::parse("unlock_time = 0\n");
        assert!(never.locked(&three, now + 800));
    }
}

//! Network-namespace primitives: entering one from a thread, listing, sweeping, deleting.

use std::fs::File;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{ip, POLL};
use crate::error::{LabError, Result};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Every lab namespace name starts with this (then `{pid}x{counter}-{suffix}`).
pub(crate) const NAME_TAG: &str = "cg";

/// Namespace suffixes the harness creates (hosts plus the hidden switch).
pub(crate) const SUFFIXES: [&str; 7] = ["carrier", "a", "b", "pbx", "mgmt", "cloud", "sw"];

/// Runs `f` on a fresh thread that has joined network namespace `ns` (by name, as listed
/// by `ip netns list`). Sockets created inside `f` belong to that namespace and keep it
/// after `f` returns; threads spawned inside `f` inherit it.
///
/// If the namespace cannot be joined, `f` is not run at all (it never falls back to the
/// caller's namespace). A panic inside `f` is propagated to the caller.
pub fn try_run_in_netns<F, R>(ns: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let setns_err = |source| LabError::Setns {
        ns: ns.to_owned(),
        source,
    };
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        return Err(setns_err(std::io::Error::other("invalid namespace name")));
    }
    let handle = File::open(Path::new(NETNS_DIR).join(ns)).map_err(setns_err)?;
    thread::scope(|s| {
        let joined = s.spawn(move || {
            setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|e| setns_err(e.into()))?;
            Ok(f())
        });
        match joined.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// All namespace names known to `ip netns`.
pub(crate) fn all_namespaces() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    // Lines look like `name (id: 3)` or just `name`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Namespaces that still exist whose name belongs to the lab with `prefix`
/// (i.e. `{prefix}-{suffix}`, the switch included). Empty on any error listing them.
pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    let tag = format!("{prefix}-");
    all_namespaces()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&tag))
        .collect()
}

/// Parses a lab namespace name `cg{pid}x{counter}-{suffix}`; returns `(pid, prefix)`.
pub(crate) fn parse_name(name: &str) -> Option<(u32, &str)> {
    let (prefix, suffix) = name.split_once('-')?;
    if !SUFFIXES.contains(&suffix) {
        return None;
    }
    let (pid, counter) = prefix.strip_prefix(NAME_TAG)?.split_once('x')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(counter) {
        return None;
    }
    Some((pid.parse().ok()?, prefix))
}

/// Whether a process with this pid exists (from our pid namespace's point of view).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes lab namespaces left behind by runs whose process is gone. With `include_own`,
/// namespaces carrying our own pid are treated as stale too (only valid before this
/// process created any lab: a crashed earlier run may have had the same pid).
pub(crate) fn sweep_stale(include_own: bool) {
    let me = std::process::id();
    let names = match all_namespaces() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("lab sweep: cannot list namespaces: {e}");
            return;
        }
    };
    for name in names {
        let Some((pid, _)) = parse_name(&name) else {
            continue;
        };
        let stale = if pid == me {
            include_own
        } else {
            !pid_alive(pid)
        };
        if stale {
            log::info!("lab sweep: deleting leftover namespace {name} (pid {pid} is gone)");
            if let Err(e) = delete_namespace(&name) {
                eprintln!("hil-tests: lab sweep: cannot delete leftover namespace {name}: {e}");
            }
        }
    }
}

/// Pids of processes living in lab namespace `ns`.
pub(crate) fn namespace_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process still inside lab namespace `ns` (by pid; each of them was
/// started by the harness or its children), then deletes the namespace.
pub(crate) fn delete_namespace(ns: &str) -> Result<()> {
    if parse_name(ns).is_none() {
        return Err(
            std::io::Error::other(format!("refusing to delete non-lab namespace {ns}")).into(),
        );
    }
    let mut pids = namespace_pids(ns);
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    pids.retain(|&p| p != me);
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.is_empty() && Instant::now() < deadline {
        // Processes we are not the parent of are reaped by their own parent / init.
        pids.retain(|&p| u32::try_from(p).is_ok_and(pid_alive_not_zombie));
        thread::sleep(POLL);
    }
    let mut last = None;
    for _ in 0..3 {
        match ip(&["netns", "del", ns]) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !Path::new(NETNS_DIR).join(ns).exists() {
                    return Ok(());
                }
                last = Some(e);
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("ip netns del failed").into()))
}

/// Alive and not a zombie (a zombie is dead; its parent just has not reaped it yet).
pub(crate) fn pid_alive_not_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: `pid (comm) S ...`; comm may contain spaces and parens: take the last ')'.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `ip netns add NAME`, a few tries: it fails now and then while another lab of this
/// machine adds or deletes a namespace at the same moment (both set up the shared
/// `/run/netns` mount).
pub fn netns_add(name: &str) -> crate::Result<()> {
    let mut tries = 0;
    loop {
        match crate::cmd::ip(&["netns", "add", name]) {
            Ok(_) => return Ok(()),
            Err(e) if tries >= 4 => return Err(e),
            Err(_) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_lab_names() {
        assert_eq!(parse_name("cg1234x0-a"), Some((1234, "cg1234x0")));
        assert_eq!(parse_name("cg1x17-sw"), Some((1, "cg1x17")));
        assert_eq!(parse_name("cg1x17-carrier"), Some((1, "cg1x17")));
        assert_eq!(parse_name("cg1x17-cloud"), Some((1, "cg1x17")));
        assert_eq!(parse_name("cg1x17-other"), None);
        assert_eq!(parse_name("cgx17-a"), None);
        assert_eq!(parse_name("cg12x-a"), None);
        assert_eq!(parse_name("cg12y3-a"), None);
        assert_eq!(parse_name("foo12x3-a"), None);
        assert_eq!(parse_name("cg1a2x3-a"), None);
        assert_eq!(parse_name("cg12x3"), None);
    }
}

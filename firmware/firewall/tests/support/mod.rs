//! Scaffolding shared by the network-namespace system tests: a throw-away
//! namespace, a command runner, the root check, address helpers, and the
//! rulesets and sizes the set read-back tests share.
//!
//! These tests need root (network namespaces, nftables): run as anyone else
//! they fail, saying so, rather than pass without having tested anything.
//!
//! Each test file includes this module (`mod support;`) and is its own crate,
//! and not every file uses every item here: without this allow, each test
//! crate would warn (and clippy `-D warnings` fail) about the items it happens
//! not to use.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};

/// A network namespace that is deleted when dropped, on panic too.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `cg<tag><pid>x<n>`; `tag` (at most 6 characters) names the test
    /// file, so a leftover namespace says where it came from.
    pub fn new(tag: &str) -> Self {
        assert!(tag.len() <= 6, "netns tag {tag:?} is longer than 6");
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cg{tag}{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name], None);
        NetNs { name }
    }

    /// For a test that needs root: a fresh namespace (see [`NetNs::new`]).
    /// Panics when not root (see [`require_root`]).
    pub fn for_test(test: &str, tag: &str) -> Self {
        require_root(test);
        Self::new(tag)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads `ruleset` with `nft -f -` inside the namespace.
    pub fn nft_load(&self, ruleset: &str) {
        self.exec("nft", &["-f", "-"], Some(ruleset));
    }

    /// Runs `cmd args` inside the namespace, panics on failure, returns stdout.
    pub fn exec(&self, cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full, stdin)
    }

    /// Runs `f` on a thread that has joined the namespace (the calling
    /// thread stays where it is). A panic in `f` is re-raised here.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        let joined = thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join();
        match joined {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}: {status:?}", self.name);
        }
    }
}

/// Runs `cmd args` (feeding `stdin`), panics on failure, returns stdout.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("write stdin of {cmd}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics unless running as root: a system test that cannot run has not
/// passed.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root: run as root (scripts/test does)"
    );
}

pub fn v4(s: &str) -> u128 {
    u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()))
}

pub fn v6(s: &str) -> u128 {
    u128::from(s.parse::<Ipv6Addr>().unwrap())
}

/// The variable `name` of the environment parsed, or `default` when it is
/// unset or does not parse (for test sizes that may be overridden).
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Interval sets of every key type `dump_intervals` and `covered_many` read
/// (ranges up to the maximum and from 0, adjacent ranges, a plain set, an
/// empty one), a concatenation they refuse, and a second table.
pub const INTERVAL_SETS: &str = "
table inet callgate {
    set s4 { type ipv4_addr; flags interval;
             elements = { 10.0.0.0/8, 192.0.2.7, 198.51.100.0/25, 203.0.113.0/26,
                          203.0.113.64/26, 172.16.0.1-172.16.0.9, 255.255.255.0/24 } }
    set s4zero { type ipv4_addr; flags interval; elements = { 0.0.0.0/24, 1.0.0.0-1.0.0.10 } }
    set s6 { type ipv6_addr; flags interval;
             elements = { 2001:db8::/32, ::1, fe80::1-fe80::5, ffff::/16 } }
    set sp { type inet_service; flags interval;
             elements = { 0-22, 5060, 10000-20000, 20001, 65000-65535 } }
    set empty4 { type ipv4_addr; flags interval; }
    set hosts4 { type ipv4_addr; elements = { 1.2.3.4, 5.6.7.8, 1.2.3.5 } }
    set concat { type ipv4_addr . inet_service; flags interval;
                 elements = { 10.0.0.0/8 . 1-2 } }
}
table inet other {
}
";

/// First address of [`spaced_prefixes`].
pub const SPACED_BASE: u32 = Ipv4Addr::new(100, 64, 0, 0).to_bits();

/// `n` IPv4 /30 prefixes, every other one from [`SPACED_BASE`] on (none
/// adjacent): the `i`-th starts at `SPACED_BASE + 8 * i`. As nft elements,
/// "100.64.0.0/30, 100.64.0.8/30, ...".
pub fn spaced_prefixes(n: u32) -> String {
    let mut elems = String::with_capacity(n as usize * 20);
    for i in 0..n {
        if i > 0 {
            elems.push_str(", ");
        }
        write!(elems, "{}/30", Ipv4Addr::from(SPACED_BASE + i * 8)).unwrap();
    }
    elems
}

/// Table `inet callgate` with one interval set `big4` of `elems`.
pub fn big4_ruleset(elems: &str) -> String {
    format!(
        "table inet callgate {{\n set big4 {{ type ipv4_addr; flags interval; elements = {{ {elems} }} }}\n}}\n"
    )
}

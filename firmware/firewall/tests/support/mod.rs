//! Scaffolding shared by the network-namespace system tests: a throw-away
//! namespace, a command runner, the root check and address helpers.
//!
//! Each test file includes this module (`mod support;`) and is its own crate,
//! and not every file uses every item here: without this allow, each test
//! crate would warn (and clippy `-D warnings` fail) about the items it happens
//! not to use.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
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

    pub fn name(&self) -> &str {
        &self.name
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

/// True when running as root; otherwise says that `test` is skipped.
pub fn is_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: {test} needs root (network namespaces, nftables)");
        false
    }
}

pub fn v4(s: &str) -> u128 {
    u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()))
}

pub fn v6(s: &str) -> u128 {
    u128::from(s.parse::<Ipv6Addr>().unwrap())
}

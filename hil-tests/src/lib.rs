//! # hil-tests: the network-namespace lab
//!
//! A harness that builds the lab of ARCHITECTURE.md §5 out of Linux network namespaces,
//! so that the demo, the system tests and the benchmarks run real components
//! (`callgated`, `sipp`, an MQTT broker, ...) against real kernels' networking.
//!
//! ## What
//! [`Lab::start`] creates one namespace per [`Host`] asked for (`carrier`, `a`, `b`, `pbx`,
//! `mgmt`, `cloud`), wires them through a hidden switch namespace, and gives each host the
//! addresses of the plan in [`addr`]. [`Lab::ns`] returns an [`Ns`] handle to run commands
//! ([`Ns::command`], [`Ns::exec`], [`Ns::spawn`]), run Rust code ([`Ns::run_in`]), or probe
//! reachability ([`Ns::ping`], [`Ns::tcp_connect`], [`Ns::udp_send`], [`Ns::udp_probe`],
//! listeners from [`Ns::tcp_listen`] / [`Ns::udp_listen`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use hil_tests::{addr, Host, Lab, Token};
//! # fn main() -> Result<(), hil_tests::LabError> {
//! let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Mgmt])?;
//! let (carrier, a) = (lab.ns(Host::Carrier), lab.ns(Host::A));
//! let l = a.udp_listen(addr::A_WAN_V4, 5060)?;
//! let t = Token::new();
//! assert!(carrier.udp_send(None, addr::A_WAN_V4, 5060, &t));
//! assert!(l.wait_for(&t, Duration::from_secs(1)));
//! # Ok(()) }
//! ```
//!
//! ## Design
//! - **Naming.** Every lab has a prefix `cg{pid}x{counter}`; its namespaces are
//!   `{prefix}-{carrier,a,b,pbx,mgmt,cloud,sw}`. Labs in one process (parallel tests) never
//!   collide; the pid lets [`Lab::start`] delete leftovers of runs whose process is gone
//!   (killed with SIGKILL, say), including the processes still inside them.
//! - **Switch.** `{prefix}-sw` holds one Linux bridge per segment (`br-wan`, `br-priv`,
//!   `br-mgmt`, `br-sync`; STP and multicast snooping off, no IPv6 of its own). Each host
//!   interface is one end of a veth pair whose other end (`{host}-{segment}`) is a bridge
//!   port. The veth is created *inside* the switch namespace with its peer placed
//!   directly into the host namespace: no lab interface ever exists in the root
//!   namespace, and nothing in the lab has a route out of it. [`Lab::set_link`] pulls a
//!   cable by setting a switch port down.
//! - **Hosts.** `lo` up everywhere; DAD off (IPv6 usable at once); A and B forward IPv4
//!   and IPv6. Carrier and pbx have default routes via A (via B in a lab without A; via
//!   the pair's virtual addresses in a [`Lab::start_pair`] lab); the mgmt host and the
//!   cloud have none (their peers are on-link).
//! - **Processes.** [`Ns::spawn`] starts a process group leader and registers it: the lab
//!   SIGTERMs, then SIGKILLs (after 2 s) and reaps each group when dropped. A test can
//!   also kill or wait one itself through its [`Proc`].
//! - **Namespaced Rust code.** [`Ns::run_in`] runs a closure on a fresh thread that has
//!   `setns(CLONE_NEWNET)`-ed into the namespace; it never runs the closure elsewhere.
//!   Sockets made there keep belonging to the namespace when used from other threads;
//!   that is how the probes work.
//! - **Teardown.** `Drop for Lab` (which also runs while a panic unwinds) kills the
//!   registered processes, then for every namespace of the lab kills what is still inside
//!   (by pid, from `ip netns pids`) and deletes it. [`lab_namespaces`] tells what remains.
//! - **Never hangs.** Helper commands have a 30 s limit, probes take a timeout, listener
//!   threads stop on drop.
//!
//! ## Limits
//! - Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), `ip` (iproute2), `sysctl` and
//!   `ping` (iputils). Tests run in parallel threads; each builds its own lab.
//! - Cleanup relies on `Drop`: a test binary killed by SIGKILL, or built with
//!   `panic = "abort"`, leaves its namespaces behind until the next [`Lab::start`] on the
//!   machine sweeps them. A leftover whose pid was reused by a live process waits until
//!   that process is gone too.
//! - A socket (e.g. a probe listener) that outlives its [`Lab`] keeps the kernel object
//!   of its namespace alive (not its name) until it is closed; drop listeners first (by
//!   declaring them after the lab).
//! - All namespaces share one kernel: sysctls that are not per-namespace, conntrack
//!   table limits, nf modules and the clock are common to every lab and to the machine.
//! - Hosts share the machine's mount namespace and file system: give each appliance its
//!   own paths (the firmware makes them all configurable).
//! - `Ns::spawn` does not touch stdin: use `Stdio::null()` for daemons.

// Not an async crate: the listeners' shared state is a plain Mutex + Condvar.
#![allow(clippy::disallowed_types)]

pub mod addr;
pub mod appliance;
pub mod bench;
pub mod broker;
pub mod calls;
mod cmd;
pub mod console;
mod error;
mod lab;
mod netns;
pub mod pair;
pub mod probe;
mod proc;
pub mod sipp;
pub mod spoof;
pub mod swtpm;
pub mod tls;
pub mod vm;

pub use addr::{Host, Segment};
pub use appliance::{bin, Appliance, Cli};
pub use broker::{Broker, BrokerOpts, Identity, Pki, Subscriber};
pub use error::{LabError, Result};
pub use lab::{Lab, Ns, PortScan, VmPort};
pub use netns::{lab_namespaces, netns_add, try_run_in_netns, NETNS_DIR};
pub use probe::{Datagram, TcpProbeListener, Token, UdpProbeListener};
pub use proc::Proc;
pub use swtpm::Swtpm;

/// Every file under `dir` (recursively) whose raw bytes hold `needle`: the scans for PII
/// or key material in a state directory.
pub fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

/// Calls `f` every `step` until it holds (true) or `timeout` has passed (false).
pub fn poll_until(
    timeout: std::time::Duration,
    step: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

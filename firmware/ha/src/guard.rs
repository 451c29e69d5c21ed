//! The VIP guard: a small child process that takes the virtual addresses away when the
//! daemon can no longer be trusted to.
//!
//! keepalived leaves its addresses on the interfaces when it is killed (both nodes then
//! hold them), and a stopped daemon keeps them while its peer takes over. The guard closes
//! both holes. It runs as `callgated --vip-guard IFACE=ADDR/LEN ...` with a pipe from the
//! heartbeat thread on its standard input, and reads one byte at a time:
//!
//! | byte | meaning |
//! |---|---|
//! | `A` | the daemon holds the addresses (the guard arms) |
//! | `S` | the daemon released them (the guard disarms) |
//! | `.` | the heartbeat thread is alive (sent every tick) |
//!
//! - **End of file** (the daemon died, SIGKILL included: the kernel closes the pipe): the
//!   guard removes every address and exits.
//! - **Silence while armed** for longer than the silence limit (the daemon is stopped or
//!   starved): the guard removes every address and disarms. The limit is shorter than the
//!   peer's dead interval, so the addresses are gone before the peer takes them; and longer
//!   than the daemon's own late-timer limit, so the daemon, when it runs again, has already
//!   seen its timers run late and stepped down (it re-adds the addresses only when elected
//!   again).

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::vip::{release_all, VipSpec};

/// The bytes of the guard protocol.
pub const ARM: u8 = b'A';
pub const DISARM: u8 = b'S';
pub const ALIVE: u8 = b'.';

/// Runs the guard on standard input until end of file. Returns the process exit code.
pub fn run(vips: &[VipSpec], silence: Duration) -> u8 {
    crate::realtime("callgate VIP guard");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut armed = false;
    let mut last = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        let timeout = if armed {
            let left = silence.saturating_sub(last.elapsed());
            PollTimeout::try_from(left.as_millis().min(60_000) as u64 as i32)
                .unwrap_or(PollTimeout::ZERO)
        } else {
            PollTimeout::NONE
        };
        let ready = {
            let fd = input.as_fd();
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(n) => n > 0,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    log::error!("VIP guard: poll failed ({e}); releasing the virtual addresses");
                    release_all(vips);
                    return 1;
                }
            }
        };
        if !ready {
            if armed && last.elapsed() >= silence {
                let failed = release_all(vips);
                log::error!(
                    "VIP guard: the heartbeat thread was silent for {} ms while active; the virtual addresses are released ({failed} failed)",
                    last.elapsed().as_millis()
                );
                armed = false;
            }
            continue;
        }
        match input.read(&mut buf) {
            Ok(0) => {
                let failed = release_all(vips);
                if armed {
                    log::warn!("VIP guard: the daemon is gone; the virtual addresses are released ({failed} failed)");
                }
                return 0;
            }
            Ok(n) => {
                last = Instant::now();
                for b in &buf[..n] {
                    match *b {
                        ARM => armed = true,
                        DISARM => armed = false,
                        _ => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("VIP guard: read failed ({e}); releasing the virtual addresses");
                release_all(vips);
                return 1;
            }
        }
    }
}

//! `upgrade`: an update file installed into the root slot that did not boot
//! (`callgate_system::install` does the work and says how each step fails closed).
//!
//! Three ways in, one install:
//! - `callgate upgrade FILE` as root ([`install_file`]);
//! - the console's `upgrade` (admins), over SSH: `ssh ADMIN@APPLIANCE upgrade <
//!   callgate.update`. The console runs as the engineer's account, which holds neither the
//!   raw disk nor the ESP: [`client`] streams the file to `callgate-upgrade.socket`, and
//!   the root-only helper behind it ([`helper`], `callgate upgrade-helper`, one instance
//!   of `callgate-upgrade@.service` per connection) checks the peer is root or in
//!   `callgate-admin` (the kernel's peer credentials), keeps the file on the state disk
//!   (root's, encrypted) while it checks and installs it, and answers with its progress.
//!
//! Both ways put each install on the daemon's audit trail under the account that asked
//! ([`on_record`]): `started` before anything is read, then the outcome.
//!
//! The helper checks the update's signature and generation before it keeps more than the
//! file's head, keeps no more bytes than the signed manifest names, and removes the kept
//! file whatever the outcome.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use callgate_firewall::error_chain as chain;
use callgate_system::install;
use callgate_system::update::{self, SECTIONS};

/// The helper's socket (`callgate-upgrade.socket`).
pub const SOCKET: &str = "/run/callgate-upgrade.sock";

/// Where the helper keeps a streamed update while it checks and installs it: the state
/// disk (root's, LUKS2).
pub const STAGED: &str = "/var/lib/callgate-state/upgrade.staged";

/// The accounts allowed to install, besides root.
pub const ADMIN_GROUP: &str = "callgate-admin";

/// The running root's generation (`scripts/image` writes it).
pub const GENERATION_FILE: &str = "/usr/share/callgate/generation";

/// The running root's generation.
pub fn running_generation() -> Result<u64, String> {
    std::fs::read_to_string(GENERATION_FILE)
        .map_err(|e| format!("{GENERATION_FILE}: {e}"))?
        .trim()
        .parse()
        .map_err(|_| format!("{GENERATION_FILE}: not a number"))
}

/// The update key's public half, read from `key`.
pub fn read_key(key: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))
}

/// Installs `file` (checked with `key`, against the running root's generation `running`)
/// into the slot that did not boot; `say` gets the progress lines.
pub fn install_file(
    file: &Path,
    key: &[u8],
    running: u64,
    say: &mut impl FnMut(&str),
) -> Result<install::Installed, String> {
    let root = Path::new("/");
    let sys = callgate_system::read(root).map_err(|e| chain(&e))?;
    let target = install::target_for(&sys, root).map_err(|e| chain(&e))?;
    install::install(file, key, running, &target, &mut install::Sfdisk, say).map_err(|e| chain(&e))
}

/// The line that ends a good install (the console's client looks for it).
fn installed_line(done: &install::Installed) -> String {
    format!(
        "installed: {}; boot entry {}: the next boot tries it, and falls back to this slot unless it becomes healthy",
        done.manifest, done.entry
    )
}

/// `callgate upgrade FILE` (root): the install on the same record as the console's, under
/// root's own process (the daemon reads the login uid behind it, so an engineer who became
/// root is named).
pub fn run(file: &Path, key: &Path, control: &Path) -> ExitCode {
    let from = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getpid().as_raw(),
    );
    let mut say = |line: &str| println!("upgrade: {line}");
    let (done, _) = on_record(control, from, &mut say, |say| {
        let key = read_key(key)?;
        install_file(file, &key, running_generation()?, &mut |l| say(l))
    });
    match done {
        Ok(done) => {
            println!("{}: {}", file.display(), installed_line(&done));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: refused: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

/// Runs `install` on the record of the daemon's audit trail, for the account and process
/// `from` that asked: `started` goes in before `install` runs (a running daemon that cannot
/// record it refuses the install, as it refuses any change it cannot record; a daemon that
/// is not running leaves this process's journal as the only record, and `say` says so),
/// then the outcome. The outcome's line comes back with the result.
fn on_record(
    control: &Path,
    from: (u32, i32),
    say: &mut dyn FnMut(&str),
    install: impl FnOnce(&mut dyn FnMut(&str)) -> Result<install::Installed, String>,
) -> (Result<install::Installed, String>, String) {
    let result = match record(control, from, "started") {
        Err(e) => Err(format!("not on record, so nothing is installed: {e}")),
        Ok(recorded) => {
            if let Recorded::NoDaemon(why) = recorded {
                say(&format!(
                    "note: the daemon is not running ({why}): this install is in the installer's journal only"
                ));
            }
            install(say)
        }
    };
    let last = outcome_line(&result);
    record_outcome(control, from, &last);
    (result, last)
}

/// The line that ends an install, good or refused.
fn outcome_line(result: &Result<install::Installed, String>) -> String {
    match result {
        Ok(done) => installed_line(done),
        Err(e) => format!("refused: {e}"),
    }
}

/// The outcome on record; only the journal says when it could not be.
fn record_outcome(control: &Path, from: (u32, i32), last: &str) {
    if let Err(e) = record(control, from, last) {
        eprintln!("callgate upgrade: the outcome is not in the audit trail: {e}");
    }
}

/// The peer on standard input (the helper's socket), as the kernel reports it: its uid
/// and its process.
fn peer() -> Result<(u32, i32), String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stdin = std::io::stdin();
    let cred = getsockopt(&stdin.as_fd(), PeerCredentials)
        .map_err(|e| format!("standard input is not a local socket: {e}"))?;
    Ok((cred.uid(), cred.pid()))
}

/// Whether the account `uid` may install: root, or an account in [`ADMIN_GROUP`]. Its
/// name.
fn allowed(uid: u32) -> Result<String, String> {
    use nix::unistd::{Group, Uid, User};
    let uid = Uid::from_raw(uid);
    if uid.is_root() {
        return Ok("root".into());
    }
    let user = User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or_else(|| format!("uid {uid}: no such account"))?;
    let admins = Group::from_name(ADMIN_GROUP)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no group {ADMIN_GROUP}"))?;
    if user.gid == admins.gid || admins.mem.contains(&user.name) {
        Ok(user.name)
    } else {
        Err(format!(
            "{}: only an admin may install an update",
            user.name
        ))
    }
}

/// How the daemon took one step of an install for its audit trail.
enum Recorded {
    /// In the audit trail (or, on a locked appliance, the daemon's journal).
    Yes,
    /// The daemon is not running: the step is in this helper's journal only.
    NoDaemon(String),
}

/// Hands one step of the install to the daemon's audit trail, under the account `uid`
/// (process `pid`) that asked for it (`Request::UpgradeRecord`: the daemon takes it from
/// root only). `Err`: the daemon answered and refused, or could not write its trail.
fn record(control: &Path, (uid, pid): (u32, i32), step: &str) -> Result<Recorded, String> {
    let step: String = step
        .replace(['\n', '\r'], " ")
        .chars()
        .take(callgate_control::MAX_TYPED_LINE / 4)
        .collect();
    eprintln!("callgate upgrade: uid {uid} pid {pid}: {step}");
    let mut client = match callgate_control::Client::connect(control) {
        Ok(c) => c,
        Err(e) => return Ok(Recorded::NoDaemon(chain(&e))),
    };
    match client.request(&callgate_control::Request::UpgradeRecord { uid, pid, step }) {
        Ok(r) if r.ok => Ok(Recorded::Yes),
        Ok(r) => Err(r.text),
        Err(e) => Ok(Recorded::NoDaemon(chain(&e))),
    }
}

/// What is read is also written to `out`, up to `cap` bytes in all.
struct Tee<R, W> {
    inner: R,
    out: W,
    n: u64,
    cap: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.n += got as u64;
        if self.n > self.cap {
            return Err(std::io::Error::other(
                "more bytes than the signed manifest names",
            ));
        }
        self.out.write_all(&buf[..got])?;
        Ok(got)
    }
}

/// The bytes of an update file after its signature: each section's header line and data.
fn payload_len(m: &update::Manifest) -> u64 {
    SECTIONS
        .iter()
        .zip(&m.sections)
        .map(|(name, d)| format!("{name} {}\n", d.size).len() as u64 + d.size)
        .sum()
}

/// Keeps the update streamed on standard input at [`STAGED`]: its head first, whose
/// signature and generation must pass before more is kept, then exactly the payload its
/// manifest names.
fn stage(key: &[u8], running: u64) -> Result<(), String> {
    let _ = std::fs::remove_file(STAGED);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(STAGED)
        .map_err(|e| format!("{STAGED}: {e}"))?;
    let tee = Tee {
        inner: std::io::stdin().lock(),
        out: BufWriter::new(file),
        n: 0,
        // The head (a header line, at most 4 KiB of manifest and 1 KiB of signature, as
        // update::read_manifest bounds them) and what the reader buffers past it.
        cap: 64 * 1024,
    };
    let mut r = BufReader::new(tee);
    let m = update::read_manifest(&mut r, key, running).map_err(|e| chain(&e))?;
    let head = r.get_ref().n - r.buffer().len() as u64;
    r.get_mut().cap = head + payload_len(&m);
    std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| format!("the update: {e}"))?;
    let tee = r.into_inner();
    let file = tee
        .out
        .into_inner()
        .map_err(|e| format!("{STAGED}: {}", e.error()))?;
    file.sync_all().map_err(|e| format!("{STAGED}: {e}"))?;
    Ok(())
}

/// `callgate upgrade-helper`: the root-only end of `callgate-upgrade.socket` (standard
/// input and output are the connection). Each step goes to the daemon's audit trail
/// (`control`: its socket) under the account that asked: a refusal at the gate, then
/// `started` before a byte is kept (a daemon that cannot write its trail refuses the
/// install, as it refuses any change it cannot record; a daemon that is not running leaves
/// the helper's journal as the only record, and the answer says so), then the outcome.
pub fn helper(key: &Path, control: &Path) -> ExitCode {
    let mut out = std::io::stdout();
    let mut say = |line: &str| {
        let _ = writeln!(out, "upgrade: {line}");
        let _ = out.flush();
    };
    // The gate: who asks, and whether they may. A refusal here is on record too, once the
    // kernel has named the asker.
    let (result, last) = match peer() {
        Err(e) => {
            let result = Err(e);
            let last = outcome_line(&result);
            (result, last)
        }
        Ok(from) => match allowed(from.0) {
            Err(e) => {
                let result = Err(e);
                let last = outcome_line(&result);
                record_outcome(control, from, &last);
                (result, last)
            }
            Ok(who) => on_record(control, from, &mut say, |say| {
                say(&format!("from {who}: receiving the update file"));
                let key = read_key(key)?;
                let running = running_generation()?;
                stage(&key, running)?;
                say("received; checking it and installing it into the other slot");
                install_file(Path::new(STAGED), &key, running, &mut |l| say(l))
            }),
        },
    };
    let _ = std::fs::remove_file(STAGED);
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{last}");
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callgate upgrade-helper: refused: {e}");
            ExitCode::from(1)
        }
    }
}

/// The console's `upgrade`: the file on standard input streamed to the helper, its lines
/// printed as they come. `Ok` when it says `installed:`.
pub fn client(socket: &Path) -> Result<String, String> {
    use std::io::IsTerminal;
    use std::os::unix::net::UnixStream;
    if std::io::stdin().is_terminal() {
        return Err(
            "upgrade reads the update file from standard input: ssh ADMIN@APPLIANCE upgrade < callgate.update"
                .into(),
        );
    }
    let sock = UnixStream::connect(socket)
        .map_err(|e| format!("the update installer ({}): {e}", socket.display()))?;
    let mut w = sock
        .try_clone()
        .map_err(|e| format!("the update installer: {e}"))?;
    let pump = std::thread::spawn(move || {
        let r = std::io::copy(&mut std::io::stdin().lock(), &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
        r
    });
    let mut last = String::new();
    for line in BufReader::new(sock).lines() {
        let line = line.map_err(|e| format!("the update installer: {e}"))?;
        println!("{line}");
        last = line;
    }
    // The helper may stop reading early (a refusal): what the pump then gets is no news.
    let _ = pump.join();
    if last.starts_with("installed: ") {
        Ok(String::new())
    } else if last.is_empty() {
        Err("the update installer closed without an answer".into())
    } else {
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tee_keeps_what_it_reads_and_no_more_than_its_cap() {
        let mut kept = Vec::new();
        let mut t = Tee {
            inner: &b"hello world"[..],
            out: &mut kept,
            n: 0,
            cap: 5,
        };
        let mut buf = [0u8; 5];
        assert_eq!(t.read(&mut buf).ok(), Some(5));
        assert!(t.read(&mut buf).is_err());
        assert_eq!(kept, b"hello");
    }
}

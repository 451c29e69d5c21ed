//! What the console's system tests share: the appliance's OpenSSH server (Debian's sshd
//! with `images/ssh/sshd_config`, in the appliance's namespaces and /etc), key pairs, and
//! the `ssh` client run from another lab host. Failures panic: these are test helpers.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Appliance, Cli, Ns, Proc};

/// An ed25519 key pair made for a test (`ssh-keygen`), in `dir`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: String,
}

impl KeyPair {
    pub fn new(dir: &Path, name: &str) -> KeyPair {
        let private = dir.join(name);
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(private.with_extension("pub"));
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ssh-keygen {name}");
        let public = std::fs::read_to_string(format!("{}.pub", private.display()))
            .unwrap_or_else(|e| panic!("{name}.pub: {e}"))
            .trim()
            .to_owned();
        KeyPair { private, public }
    }
}

/// Starts the appliance's sshd on `listen`:22 with the shipped config and PAM stack and a
/// fresh host key, all in the appliance's own /etc; returns once it accepts connections.
pub fn start_sshd(a: &Appliance<'_>, listen: IpAddr) -> Proc {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/ssh/sshd_config");
    let etc_ssh = a.etc().join("ssh");
    std::fs::create_dir_all(&etc_ssh).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&shipped, etc_ssh.join("sshd_config")).unwrap_or_else(|e| panic!("{e}"));
    let pam = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/pam/sshd");
    std::fs::copy(&pam, a.etc().join("pam.d/sshd")).unwrap_or_else(|e| panic!("{e}"));
    let host_key = etc_ssh.join("ssh_host_ed25519_key");
    if !host_key.exists() {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "host key");
    }
    // sshd's privilege separation directory (made by its unit on a system that runs it).
    std::fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("/run/sshd: {e}"));
    let log = std::fs::File::create(a.dir().join("sshd.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = a.command("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f", "/etc/ssh/sshd_config", "-o"])
        .arg(format!("ListenAddress={listen}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log);
    let p = a.ns().spawn(cmd).unwrap_or_else(|e| panic!("sshd: {e}"));
    let start = Instant::now();
    while !a
        .ns()
        .tcp_connect(None, listen, 22, Duration::from_millis(200))
    {
        assert!(
            p.is_running() && start.elapsed() < Duration::from_secs(10),
            "sshd did not start: {}",
            sshd_log(a)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// Applies the image's network sysctls (`images/sysctl.d/*.conf`, the `net.` keys: those
/// are per network namespace) in the appliance's namespace, as systemd-sysctl does at boot.
pub fn apply_image_sysctls(a: &Appliance<'_>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/sysctl.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{e}"));
        for line in text.lines().map(str::trim) {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.starts_with("net.") && !line.starts_with('#') {
                a.ns()
                    .exec(&["sysctl", "-q", "-w", &format!("{k}={v}")])
                    .unwrap_or_else(|e| panic!("sysctl {k}: {e}"));
            }
        }
    }
}

/// What sshd wrote.
pub fn sshd_log(a: &Appliance<'_>) -> String {
    std::fs::read_to_string(a.dir().join("sshd.log")).unwrap_or_default()
}

/// The client options the tests run ssh with: no agent, no known-hosts file, never a
/// prompt, 3 s to connect, quiet.
pub const SSH_OPTIONS: &[&str] = &[
    "-o",
    "IdentityAgent=none",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=3",
    "-o",
    "LogLevel=ERROR",
];

/// `PROGRAM` (`ssh`, `sftp`) from `from` as the tests run it: no config, no agent, no
/// known-hosts file, never a prompt, 3 s to connect; with `key` as the only identity.
pub fn ssh_command(from: &Ns<'_>, program: &str, key: Option<&Path>) -> Command {
    let mut cmd = from.command(program);
    cmd.args(["-F", "/dev/null"]);
    if let Some(k) = key {
        cmd.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    cmd.args(SSH_OPTIONS).stdin(Stdio::null());
    cmd
}

/// `ssh -i KEY USER@HOST ARGS…` from `from` ([`ssh_command`]).
pub fn ssh(from: &Ns<'_>, key: &Path, user: &str, host: IpAddr, args: &[&str]) -> Cli {
    let mut cmd = ssh_command(from, "ssh", Some(key));
    cmd.arg(format!("{user}@{host}")).args(args);
    Cli::run(cmd)
}

/// `ssh -i KEY ARGS…` from `from` ([`ssh_command`]) with `input` on its standard input
/// (a secret, a script of console lines): what it printed, and how it ended.
pub fn ssh_with_input(from: &Ns<'_>, key: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut cmd = ssh_command(from, "ssh", Some(key));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("ssh: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        // The console may end before it read everything: what it printed says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("ssh: {e}"))
}

/// The command for an interactive login as `user@host` from `from` on a terminal (`ssh
/// -tt`, `TERM=xterm`), for `rexpect::session::spawn_command`.
pub fn ssh_terminal(from: &Ns<'_>, key: &Path, user: &str, host: IpAddr) -> Command {
    let mut cmd = ssh_command(from, "ssh", Some(key));
    cmd.arg("-tt")
        .arg(format!("{user}@{host}"))
        .env("TERM", "xterm")
        .stdin(Stdio::inherit());
    cmd
}

/// A yescrypt hash of `password`, as `mkpasswd -m yescrypt` makes it (what an admin puts
/// in `console_password`).
pub fn yescrypt(password: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("mkpasswd")
        .args(["-m", "yescrypt", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("mkpasswd: {e}"));
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(password.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("mkpasswd: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Installs the shipped PAM stack for `login` and pam_faillock's settings in the
/// appliance's /etc; the lockout records go to the appliance's own directory (the shipped
/// file says /run/faillock, which the machine's other labs share).
pub fn install_serial_login(a: &Appliance<'_>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
    std::fs::copy(root.join("pam/login"), a.etc().join("pam.d/login"))
        .unwrap_or_else(|e| panic!("pam.d/login: {e}"));
    let conf = std::fs::read_to_string(root.join("security/faillock.conf"))
        .unwrap_or_else(|e| panic!("faillock.conf: {e}"));
    let dir = a.dir().join("faillock");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let conf = conf.replace("dir = /run/faillock", &format!("dir = {}", dir.display()));
    std::fs::create_dir_all(a.etc().join("security")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(a.etc().join("security/faillock.conf"), conf)
        .unwrap_or_else(|e| panic!("faillock.conf: {e}"));
}

/// `agetty` on the terminal it is given (the serial console's getty, on a pty here), in
/// the appliance's namespaces and /etc: it asks for the login and runs `login`.
pub fn serial_getty(a: &Appliance<'_>) -> Command {
    let mut cmd = a.command("/usr/sbin/agetty");
    cmd.args(["--noclear", "--noissue", "-L", "-", "115200", "xterm"])
        .env("TERM", "xterm");
    cmd
}

/// What a terminal shows of `s`: `\r` and ANSI/VT100 escape sequences taken out (an SSH
/// console session's transcript; a VM's serial console, where OVMF clears the screen and
/// systemd colours its status).
pub fn strip_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // parameters, then one final byte in @..~
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_terminal;

    #[test]
    fn terminal_sequences_and_carriage_returns_go() {
        assert_eq!(
            strip_terminal(
                "\u{1b}[2J\u{1b}[01;01H\u{1b}[=3hBdsDxe: x\r\n[\u{1b}[0;32m  OK  \u{1b}[0m] y"
            ),
            "BdsDxe: x\n[  OK  ] y"
        );
    }
}

//! What the console's system tests share: the appliance's OpenSSH server (Debian's sshd
//! with `images/ssh/sshd_config`, in the appliance's namespaces and /etc), key pairs, and
//! the `ssh` client run from another lab host. Failures panic: these are test helpers.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Starts the appliance's sshd on `listen`:22 with the shipped config and a fresh host
/// key, both in the appliance's own /etc; returns once it accepts connections.
pub fn start_sshd(a: &Appliance<'_>, listen: IpAddr) -> Proc {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/ssh/sshd_config");
    let etc_ssh = a.etc().join("ssh");
    std::fs::create_dir_all(&etc_ssh).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&shipped, etc_ssh.join("sshd_config")).unwrap_or_else(|e| panic!("{e}"));
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

/// What sshd wrote.
pub fn sshd_log(a: &Appliance<'_>) -> String {
    std::fs::read_to_string(a.dir().join("sshd.log")).unwrap_or_default()
}

/// `PROGRAM` (`ssh`, `sftp`) from `from` as the tests run it: no config, no agent, no
/// known-hosts file, never a prompt, 3 s to connect; with `key` as the only identity.
pub fn ssh_command(from: &Ns<'_>, program: &str, key: Option<&Path>) -> Command {
    let mut cmd = from.command(program);
    cmd.args(["-F", "/dev/null"]);
    if let Some(k) = key {
        cmd.arg("-i").arg(k).args(["-o", "IdentitiesOnly=yes"]);
    }
    cmd.args([
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
    ])
    .stdin(Stdio::null());
    cmd
}

/// `ssh -i KEY USER@HOST ARGS…` from `from` ([`ssh_command`]).
pub fn ssh(from: &Ns<'_>, key: &Path, user: &str, host: IpAddr, args: &[&str]) -> Cli {
    let mut cmd = ssh_command(from, "ssh", Some(key));
    cmd.arg(format!("{user}@{host}")).args(args);
    Cli::run(cmd)
}

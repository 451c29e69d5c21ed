//! A real `callgated` running inside an appliance namespace of a [`Lab`], with its own config
//! file, state directory and control socket, plus the `callgate` tool pointed at it.
//!
//! Binaries come from `$CALLGATE_BIN_DIR` when set (scripts/test sets it), else from the
//! workspace's `target/debug`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{Host, Lab, LabError, Ns, Proc, Result, Swtpm};

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CALLGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    dir.join(name)
}

/// The result of one `callgate` invocation.
#[derive(Debug, Clone)]
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// Parses `--json` output.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Cli {
    /// Runs `cmd` to completion and keeps what it printed (code -1: it did not start).
    pub fn run(mut cmd: Command) -> Cli {
        match cmd.output() {
            Ok(o) => o.into(),
            Err(e) => Cli {
                code: -1,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }
}

impl From<Output> for Cli {
    fn from(o: Output) -> Self {
        Cli {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One appliance under test: its own swtpm (PCR 7 measured as a boot would), `callgated`
/// provisioned on first start. Its files live in a private temporary directory that is
/// removed on drop; the lab removes the namespace and any process left in it.
pub struct Appliance<'lab> {
    ns: Ns<'lab>,
    dir: PathBuf,
    daemon: Option<Proc>,
    tpm: Option<Swtpm<'lab>>,
    /// The recovery key printed at provisioning.
    pub recovery_key: Option<String>,
    /// Environment variables the daemon gets at its next [`Appliance::launch`].
    env: Vec<(String, String)>,
    /// Arguments the daemon gets at its next [`Appliance::launch`], after the paths.
    args: Vec<String>,
}

impl std::fmt::Debug for Appliance<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appliance")
            .field("ns", &self.ns.name())
            .field("dir", &self.dir)
            .finish()
    }
}

impl<'lab> Appliance<'lab> {
    /// Writes `config` as the appliance's config file, starts its swtpm and the daemon, and
    /// provisions the keys; returns once the daemon runs the config.
    pub fn start(lab: &'lab Lab, host: Host, config: &str) -> Result<Appliance<'lab>> {
        let mut a = Appliance::start_locked(lab, host, config)?;
        let p = a.cli(&["--json", "provision"]);
        if !p.ok() {
            return Err(LabError::Io(std::io::Error::other(format!(
                "provisioning failed: {}\n{}",
                p.stderr,
                a.log()
            ))));
        }
        a.recovery_key = p.json()["recovery_key"].as_str().map(str::to_owned);
        Ok(a)
    }

    /// Starts swtpm and the daemon without provisioning (the daemon answers, locked until
    /// provisioned).
    pub fn start_locked(lab: &'lab Lab, host: Host, config: &str) -> Result<Appliance<'lab>> {
        let ns = lab.try_ns(host)?;
        let dir = std::env::temp_dir().join(format!("callgate-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("callgate.toml"), config)?;
        // The appliance's own /etc: its accounts (useradd at a commit), sshd's and PAM's
        // files. Its processes see it over /etc in a mount namespace of their own
        // ([`Appliance::command`]); the machine's /etc is never written.
        crate::cmd::run_checked(
            std::process::Command::new("cp")
                .arg("-a")
                .arg("/etc")
                .arg(dir.join("etc")),
            None,
            Duration::from_secs(30),
        )?;
        // Where the appliance's console finds this daemon (its default is /run/callgate).
        std::fs::create_dir_all(dir.join("etc/callgate"))?;
        std::fs::write(
            dir.join("etc/callgate/control-socket"),
            format!("{}\n", dir.join("control.sock").display()),
        )?;
        let tpm = Swtpm::start(ns.clone(), &dir.join("tpm"))?;
        tpm.measure_boot()?;
        let mut a = Appliance {
            ns,
            dir,
            daemon: None,
            tpm: Some(tpm),
            recovery_key: None,
            env: Vec::new(),
            args: Vec::new(),
        };
        a.launch()?;
        Ok(a)
    }

    /// The appliance's TPM.
    pub fn tpm(&self) -> Option<&Swtpm<'lab>> {
        self.tpm.as_ref()
    }

    /// Replaces the TPM: stops the current swtpm and starts one with its state in `state`
    /// (a new directory is a different TPM; the previous directory is the same TPM again).
    pub fn swap_tpm(&mut self, state: &Path) -> Result<()> {
        if let Some(mut t) = self.tpm.take() {
            t.stop();
        }
        self.tpm = Some(Swtpm::start(self.ns.clone(), state)?);
        Ok(())
    }

    pub fn ns(&self) -> &Ns<'lab> {
        &self.ns
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("callgate.toml")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("callgated.log")
    }
    /// Everything the daemon (and its rollback guard) logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the daemon and waits until it answers `status` (10 s at most).
    pub fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = self.command(&bin("callgated").to_string_lossy());
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--seal-helper")
            .arg(bin("callgate-seal"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--control-socket")
            .arg(self.socket())
            .arg("--console-shell")
            .arg(bin("callgate"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let proc = self.ns.spawn(cmd)?;
        let start = Instant::now();
        loop {
            if self.cli(&["status"]).ok() {
                self.daemon = Some(proc);
                return Ok(());
            }
            if !proc.is_running() || start.elapsed() > Duration::from_secs(10) {
                return Err(LabError::Io(std::io::Error::other(format!(
                    "callgated did not become ready; log:\n{}",
                    self.log()
                ))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The appliance's own /etc (a copy of the machine's, made at the start).
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// `program` as a process of the appliance: in its network namespace, and in a mount
    /// namespace of its own where [`Appliance::etc`] is `/etc` (so the accounts the daemon
    /// makes, and sshd's and PAM's files, are the appliance's, never the machine's).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = self.ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc && exec \"$@\"")
            .arg(self.etc())
            .arg(program);
        cmd
    }

    /// Runs `callgate --socket … ARGS` as the appliance's account `user` (inside the
    /// appliance, with that user's uid, gid and groups).
    pub fn cli_as(&self, user: &str, args: &[&str]) -> Cli {
        let mut cmd = self.command("setpriv");
        cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
            .arg(bin("callgate"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null());
        Cli::run(cmd)
    }

    /// Runs `callgate --socket … ARGS` (outside the namespace: the socket is a file).
    pub fn cli(&self, args: &[&str]) -> Cli {
        match Command::new(bin("callgate"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => o.into(),
            Err(e) => Cli {
                code: -1,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// The last `n` audit entries (`show audit --json`), oldest first.
    pub fn audit(&self, n: usize) -> Vec<serde_json::Value> {
        self.cli(&["--json", "show", "audit", "--last", &n.to_string()])
            .json()["audit"]
            .as_array()
            .map(|rows| rows.iter().map(|r| r["entry"].clone()).collect())
            .unwrap_or_default()
    }

    /// Runs `callgate --socket … ARGS` with `input` on its standard input.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Cli {
        use std::io::Write as _;
        let child = Command::new(bin("callgate"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let out = child.and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                i.write_all(input.as_bytes())?;
            }
            c.wait_with_output()
        });
        match out {
            Ok(o) => o.into(),
            Err(e) => Cli {
                code: -1,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// Writes `text` to a file in the appliance's directory and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        // The directory is ours; a failure here is a broken test machine.
        if let Err(e) = std::fs::write(&p, text) {
            panic!("cannot write {}: {e}", p.display());
        }
        p
    }

    /// `callgate commit FILE EXTRA…` with `text` written to a file first.
    pub fn commit(&self, text: &str, extra: &[&str]) -> Cli {
        let p = self.write_file("candidate.toml", text);
        let mut args = vec!["commit", p.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// SIGKILLs the daemon only (not its rollback guard, which runs in its own group).
    pub fn kill9(&mut self) {
        if let Some(p) = self.daemon.take() {
            let _ = p.kill();
        }
    }

    /// Sets an environment variable for the daemon's next launch.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Adds an argument for the daemon's next launch.
    pub fn set_arg(&mut self, arg: &str) {
        self.args.push(arg.to_owned());
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.daemon.as_ref()?.wait_timeout(timeout).ok().flatten()?;
        self.daemon = None;
        Some(status)
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let p = self.daemon.take()?;
        let _ = p.signal(Signal::SIGTERM);
        p.wait_timeout(Duration::from_secs(10))
            .ok()
            .flatten()
            .and_then(|s| s.code())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|p| p.pid())
    }

    pub fn is_running(&self) -> bool {
        self.daemon.as_ref().is_some_and(|p| p.is_running())
    }

    /// `nft ARGS` inside the appliance's namespace; stdout.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["nft"];
        full.extend_from_slice(args);
        self.ns.exec(&full)
    }

    /// The kernel's `inet callgate` table as nft prints it (counters included).
    pub fn ruleset(&self) -> String {
        self.nft(&["list", "table", "inet", "callgate"])
            .unwrap_or_default()
    }

    /// The table with counters zeroed out, for byte-for-byte comparisons of policy.
    pub fn ruleset_without_counters(&self) -> String {
        let text = self.ruleset();
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let mut words: Vec<&str> = line.split(' ').collect();
            for i in 0..words.len() {
                if i > 0 && (words[i - 1] == "packets" || words[i - 1] == "bytes") {
                    words[i] = "N";
                }
            }
            out.push_str(&words.join(" "));
            out.push('\n');
        }
        out
    }

    /// Packets counted by the rules named `entry` in `chain`, read from the kernel.
    pub fn packets(&self, chain: &str, entry: &str) -> u64 {
        let Ok(out) = self.nft(&["-j", "list", "chain", "inet", "callgate", chain]) else {
            return 0;
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["comment"].as_str() == Some(entry))
            .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
            .sum()
    }
}

impl Drop for Appliance<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.daemon.take() {
            let _ = p.terminate(Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

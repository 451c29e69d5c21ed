//! A software TPM (`swtpm`) inside a lab namespace: the appliance's TPM in system tests.
//!
//! Each namespace has its own loopback, so every appliance's swtpm listens on the same
//! fixed ports (127.0.0.1:2321 commands, :2322 control) without clashing with another lab.
//! Its state lives in a directory the caller owns: keep it to model "the same board", start a
//! new one for "a different TPM".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{LabError, Ns, Proc, Result};

pub const SWTPM_PORT: u16 = 2321;

/// A running swtpm. Stopped when dropped (and by the lab's teardown in any case).
pub struct Swtpm<'lab> {
    ns: Ns<'lab>,
    state: PathBuf,
    proc: Option<Proc>,
}

impl std::fmt::Debug for Swtpm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swtpm")
            .field("ns", &self.ns.name())
            .field("state", &self.state)
            .finish()
    }
}

impl<'lab> Swtpm<'lab> {
    /// Starts swtpm in `ns` with its state in `state` (created if missing; an existing
    /// state is the same TPM as before).
    pub fn start(ns: Ns<'lab>, state: &Path) -> Result<Swtpm<'lab>> {
        std::fs::create_dir_all(state)?;
        let mut cmd = ns.command("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                SWTPM_PORT + 1
            ))
            .arg("--server")
            .arg(format!("type=tcp,port={SWTPM_PORT},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = ns.spawn(cmd)?;
        let tpm = Swtpm {
            ns,
            state: state.to_path_buf(),
            proc: Some(proc),
        };
        tpm.wait_ready()?;
        Ok(tpm)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.proc.as_ref().is_some_and(|p| !p.is_running()) {
                return Err(LabError::Io(std::io::Error::other("swtpm exited early")));
            }
            let up = self.ns.run_in(|| {
                std::net::TcpStream::connect(("127.0.0.1", SWTPM_PORT)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", SWTPM_PORT + 1)).is_ok()
            });
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Io(std::io::Error::other(
                    "swtpm did not listen within 10 s",
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI string for the appliance's config (`[vault] tcti`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={SWTPM_PORT}")
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Extends a sha256 PCR with a digest (64 hex digits), as firmware measuring boot would.
    pub fn extend(&self, pcr: u8, digest_hex: &str) -> Result<()> {
        let out = self.ns.exec(&[
            "tpm2_pcrextend",
            "-T",
            &self.tcti(),
            &format!("{pcr}:sha256={digest_hex}"),
        ]);
        out.map(|_| ())
    }

    /// PCR 7 as a measured boot leaves it (a fixed "secure boot state" digest).
    pub fn measure_boot(&self) -> Result<()> {
        self.extend(7, &"5b".repeat(32))
    }

    /// Stops swtpm (its state stays on disk).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.terminate(Duration::from_secs(2));
        }
    }
}

impl Drop for Swtpm<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tpm2-tools` present (the lab's PCR manipulation needs it).
pub fn tpm2_tools_installed() -> bool {
    Command::new("tpm2_pcrextend")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

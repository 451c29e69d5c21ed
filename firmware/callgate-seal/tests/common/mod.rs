//! A real swtpm per test: started on free loopback ports with its own state directory,
//! killed on drop (also when the test panics).

#![allow(dead_code)] // not every test binary uses every helper
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test fixture is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_callgate-seal");

/// One running `swtpm socket --tpm2` instance.
pub struct Swtpm {
    child: Child,
    port: u16,
    state: tempfile::TempDir,
    bus_log: Option<PathBuf>,
}

impl Swtpm {
    /// Start a fresh TPM (PCRs all zero, empty hierarchies) and wait until it accepts.
    pub fn start() -> Swtpm {
        Swtpm::start_with(false)
    }

    /// Start a fresh TPM that hex-dumps every command and response it sees (swtpm log
    /// level 20) to [`Swtpm::bus_bytes`]: what an attacker probing the TPM bus would see.
    pub fn start_logging_bus() -> Swtpm {
        Swtpm::start_with(true)
    }

    fn start_with(log_bus: bool) -> Swtpm {
        let mut last_error = String::new();
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            let state = tempfile::tempdir().expect("state dir");
            let log = state.path().join("swtpm.log");
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .arg("--log")
                .arg(if log_bus {
                    format!("file={},level=20", log.display())
                } else {
                    format!("file={}", log.display())
                })
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm is installed (apt-get install swtpm swtpm-tools)");
            let mut tpm = Swtpm {
                child,
                port,
                state,
                bus_log: log_bus.then_some(log),
            };
            match tpm.wait_ready() {
                Ok(()) => return tpm,
                // Lost a race for the port, or swtpm failed: try other ports.
                Err(e) => last_error = e,
            }
        }
        panic!("could not start swtpm: {last_error}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("swtpm exited early: {status}"));
            }
            let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(self.port) && up(self.port + 1) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("swtpm did not start listening within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCTI string for callgate-seal and tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Every byte of every command and response so far, in order (from the level-20
    /// hex dump of [`Swtpm::start_logging_bus`]).
    pub fn bus_bytes(&self) -> Vec<u8> {
        let path = self
            .bus_log
            .as_ref()
            .expect("started with start_logging_bus");
        let text = std::fs::read_to_string(path).expect("read the swtpm log");
        let mut bytes = Vec::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let is_dump = !words.is_empty()
                && words
                    .iter()
                    .all(|w| w.len() == 2 && w.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_dump {
                bytes.extend(words.iter().map(|w| u8::from_str_radix(w, 16).unwrap()));
            }
        }
        bytes
    }

    /// Extend a sha256 PCR with a 32-byte digest given as 64 hex digits.
    pub fn extend(&self, pcr: u8, digest_hex: &str) {
        let out = Command::new("tpm2_pcrextend")
            .arg("-T")
            .arg(self.tcti())
            .arg(format!("{pcr}:sha256={digest_hex}"))
            .output()
            .expect("tpm2-tools is installed");
        assert!(
            out.status.success(),
            "tpm2_pcrextend failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Extend PCR 7 the way a measured boot would (a fixed "secure boot state" digest).
    pub fn measure_boot(&self) {
        self.extend(7, &"5b".repeat(32));
    }

    /// Transient objects and loaded sessions currently in the TPM (must be none between
    /// runs of callgate-seal).
    pub fn loaded_handles(&self) -> Vec<String> {
        let mut handles = Vec::new();
        for what in ["handles-transient", "handles-loaded-session"] {
            let out = Command::new("tpm2_getcap")
                .arg("-T")
                .arg(self.tcti())
                .arg(what)
                .output()
                .expect("tpm2-tools is installed");
            assert!(out.status.success(), "tpm2_getcap {what} failed");
            handles.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{what}: {l}")),
            );
        }
        handles
    }

    pub fn assert_no_leaked_contexts(&self) {
        let handles = self.loaded_handles();
        assert!(handles.is_empty(), "leaked TPM contexts: {handles:?}");
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port P such that P and P+1 are both free on 127.0.0.1 (swtpm's TCTI uses P+1 for
/// its control channel).
fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = first.local_addr().ok()?.port();
    let next = port.checked_add(1)?;
    let second = TcpListener::bind(("127.0.0.1", next)).ok()?;
    drop((first, second));
    Some(port)
}

/// A port with nothing listening on it (and nothing on the next one).
pub fn dead_port() -> u16 {
    (0..100)
        .find_map(|_| free_port_pair())
        .expect("a free pair of loopback ports")
}

/// 32 random bytes.
pub fn random_kek() -> Vec<u8> {
    let mut kek = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut kek))
        .expect("read /dev/urandom");
    kek
}

/// Result of one callgate-seal run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}; stderr: {}",
            self.code, self.stderr
        );
        self
    }
}

/// Run callgate-seal with `args`, feeding `stdin` through a pipe.
pub fn run(args: &[&str], stdin: &[u8]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callgate-seal");
    {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // The tool may exit before reading (e.g. usage errors): ignore EPIPE.
        let _ = pipe.write_all(stdin);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait callgate-seal");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    // A panic would exit 101 and print "panicked": never acceptable.
    assert!(
        !stderr.contains("panicked"),
        "callgate-seal panicked: {stderr}"
    );
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
        elapsed,
    }
}

pub fn seal(tpm: &Swtpm, blob: &Path, kek: &[u8], extra: &[&str]) -> Run {
    let tcti = tpm.tcti();
    let blob = blob.to_string_lossy();
    let mut args = vec!["--tcti", &tcti, "seal", "--blob", &blob];
    args.extend_from_slice(extra);
    run(&args, kek)
}

pub fn unseal(tpm: &Swtpm, blob: &Path) -> Run {
    let tcti = tpm.tcti();
    let blob = blob.to_string_lossy();
    run(&["--tcti", &tcti, "unseal", "--blob", &blob], b"")
}

/// A random KEK sealed on `tpm` with the default PCRs and checked to unseal again:
/// (its directory, the blob, the KEK).
pub fn sealed_kek(tpm: &Swtpm) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let blob = blob_path(&dir);
    let kek = random_kek();
    seal(tpm, &blob, &kek, &[]).assert_code(0);
    assert_eq!(unseal(tpm, &blob).assert_code(0).stdout, kek);
    (dir, blob, kek)
}

pub fn blob_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("kek.blob")
}

//! Running helper commands with a time limit (the harness never waits unboundedly).

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// Default time limit for harness helper commands (`ip`, `sysctl`).
pub(crate) const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll interval for waiting on processes.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// Human-readable command line.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdout and stderr captured, `stdin` written then closed), killing it after
/// `timeout`. Does not check the exit status.
pub(crate) fn output_with_timeout(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let what = describe(cmd);
    let spawn_err = |source| LabError::Spawn {
        cmd: what.clone(),
        source,
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs only (ip batches): fit into the pipe buffer, no deadlock.
        pipe.write_all(data).map_err(spawn_err)?;
    }
    let readers: Vec<thread::JoinHandle<Vec<u8>>> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Timeout {
                    cmd: what,
                    secs: timeout.as_secs_f64(),
                });
            }
            None => thread::sleep(POLL),
        }
    };
    let mut outs = readers.into_iter().map(|h| h.join().unwrap_or_default());
    let stdout = outs.next().unwrap_or_default();
    let stderr = outs.next().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`output_with_timeout`], but a non-zero exit is an error. Returns stdout.
pub(crate) fn run_checked(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<String> {
    let out = output_with_timeout(cmd, stdin, timeout)?;
    if !out.status.success() {
        return Err(LabError::Failed {
            cmd: describe(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with all output discarded; `None` if it had to be killed after `timeout`.
pub(crate) fn status_with_timeout(cmd: &mut Command, timeout: Duration) -> Option<ExitStatus> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// `ip ARGS...` (runs in the caller's namespace: only ever used with `-n LABNS` or
/// `netns add|del|pids|list`, never to change the root namespace).
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run_checked(Command::new("ip").args(args), None, HELPER_TIMEOUT)
}

//! Child processes started inside lab namespaces.

use std::io;
use std::process::{Child, ChildStderr, ChildStdout, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::cmd::POLL;

/// Grace period between SIGTERM and SIGKILL at lab teardown.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct ProcInner {
    pid: u32,
    label: String,
    child: Mutex<Child>,
}

/// A process started with [`Ns::spawn`](crate::Ns::spawn).
///
/// The lab keeps its own reference: whatever the test does with this handle, the process
/// (and its whole process group) is terminated and reaped when the [`Lab`](crate::Lab) is
/// dropped. Dropping the handle itself does nothing. Cloning gives another handle to the
/// same process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub(crate) inner: Arc<ProcInner>,
}

impl ProcInner {
    pub(crate) fn new(child: Child, label: String) -> Self {
        ProcInner {
            pid: child.id(),
            label,
            child: Mutex::new(child),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        // A poisoned lock only means another thread panicked while holding it; the
        // `Child` inside is still consistent.
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signals the process group, unless the child has already been reaped (its pid and
    /// process group id could then belong to somebody else).
    fn signal(&self, sig: Signal) -> io::Result<bool> {
        let mut child = self.lock();
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        let pgid = i32::try_from(self.pid).map_err(io::Error::other)?;
        // The child leads its own process group (see `Ns::spawn`): this reaches its
        // descendants too.
        match killpg(Pid::from_raw(pgid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.lock().try_wait()
    }

    fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            // Lock released between polls: other handles (and the lab) stay usable.
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    fn kill_and_reap(&self) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        // SIGKILL cannot be blocked; the wait is only a safety net against a process
        // stuck in uninterruptible sleep.
        self.wait_timeout(Duration::from_secs(10))?
            .ok_or_else(|| io::Error::other(format!("pid {} survived SIGKILL", self.pid)))
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL; always reaps.
    pub(crate) fn terminate(&self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        self.signal(Signal::SIGTERM)?;
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        self.kill_and_reap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Sends SIGTERM to the group if still running (first half of a lab teardown).
    pub(crate) fn start_terminate(&self) {
        let _ = self.signal(Signal::SIGTERM);
    }
}

impl Proc {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The command line it was started with.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Whether it is still running (reaps it if it has exited).
    pub fn is_running(&self) -> bool {
        matches!(self.inner.try_wait(), Ok(None))
    }

    /// Non-blocking wait.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.inner.try_wait()
    }

    /// Waits at most `timeout` for it to exit; `Ok(None)` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        self.inner.wait_timeout(timeout)
    }

    /// Sends `sig` to its process group (no-op once it has been reaped).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        self.inner.signal(sig).map(drop)
    }

    /// SIGKILLs its process group and reaps it.
    pub fn kill(&self) -> io::Result<ExitStatus> {
        self.inner.kill_and_reap()
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn terminate(&self, grace: Duration) -> io::Result<ExitStatus> {
        self.inner.terminate(grace)
    }

    /// Takes its stdout pipe (only if the command was spawned with `Stdio::piped()`).
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.inner.lock().stdout.take()
    }

    /// Takes its stderr pipe (only if the command was spawned with `Stdio::piped()`).
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.inner.lock().stderr.take()
    }
}

/// Terminates a set of processes together: SIGTERM to all, one shared grace period,
/// SIGKILL to the rest, reap all. Never panics.
pub(crate) fn terminate_all(procs: &[Arc<ProcInner>], grace: Duration) {
    for p in procs {
        p.start_terminate();
    }
    let deadline = Instant::now() + grace;
    for p in procs {
        let left = deadline.saturating_duration_since(Instant::now());
        let done = matches!(p.wait_timeout(left), Ok(Some(_)));
        if !done {
            if let Err(e) = p.kill_and_reap() {
                eprintln!(
                    "hil-tests: cannot kill pid {} ({}): {e}",
                    p.pid(),
                    p.label()
                );
            }
        }
    }
}

//! The harness error type.

use std::io;

/// Everything that can go wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A helper command (`ip`, `sysctl`, ...) could not be started or waited for.
    #[error("{cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A helper command exited unsuccessfully.
    #[error("{cmd}: exited with {status}: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
    /// A helper command ran longer than allowed and was killed.
    #[error("{cmd}: timed out after {secs:.1}s")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The time limit.
        secs: f64,
    },
    /// Joining a network namespace failed (the closure was *not* run).
    #[error("cannot enter network namespace {ns}: {source}")]
    Setns {
        /// Namespace name.
        ns: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The host is not part of this lab.
    #[error("host {0:?} is not part of this lab")]
    NoSuchHost(crate::Host),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Result alias of the harness.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

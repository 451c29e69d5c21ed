//! The records the store keeps, as their users see them (call records: `callgate-cdr`).

use serde::{Deserialize, Serialize};

/// One audited action. Append-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: u64,
    pub user: String,
    pub action: String,
    pub detail: String,
    /// The uid the kernel reported for the connection.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The role the daemon gave the user (`None`: no account).
    #[serde(default)]
    pub role: Option<String>,
    /// The uid the login session began as (`/proc/PID/loginuid`).
    #[serde(default)]
    pub loginuid: Option<u32>,
    /// The kernel's audit session id (`/proc/PID/sessionid`).
    #[serde(default)]
    pub session: Option<u32>,
}

/// One committed config revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRevision {
    pub revision: u64,
    pub time_ms: u64,
    pub author: String,
    pub note: String,
    pub text: String,
}

/// A console session. `id` is stored in clear as the key: an opaque handle, never the
/// session's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub started_ms: u64,
    pub last_seen_ms: u64,
    pub source: String,
}

/// A record read back: its id, the data key it was sealed under, and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<T, K = u64> {
    pub id: K,
    pub key_id: u32,
    pub value: T,
}

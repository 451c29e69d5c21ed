//! The console's accounts: `[[user]]` entries, each with a role, and `[console]`.
//!
//! ```toml
//! [[user]]
//! name = "ann"                       # a Linux login: a-z, 0-9, '-', '_'; starts with a letter
//! role = "admin"                     # "operator": reads everything but personal data,
//!                                    # changes nothing; "admin": may change and commit
//! ssh_keys = ["ssh-ed25519 AAAAC3Nza… ann@laptop"]
//! console_password = "$y$j9T$…"      # optional: a yescrypt hash (`mkpasswd -m yescrypt`),
//!                                    # for the serial console only; SSH takes keys only
//!
//! [console]
//! idle_timeout_secs = { operator = 900, admin = 900 }   # the defaults (15 minutes)
//! break_glass_password = "$y$j9T$…"   # optional: the serial console's `breakglass` admin
//! ```
//!
//! The accounts are committed, confirmed and rolled back with the rest of the config; a
//! commit makes the system's accounts and key files match. A key is refused unless it is
//! one of the types below (RSA of at least 3072 bits), with no `authorized_keys` options;
//! a password is refused unless it is a yescrypt hash: no plain text ever reaches the
//! config.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::{ConfigError, ErrorKind, Locator};

/// A console account's name: a Linux login, 1 to 32 characters of `a-z`, `0-9`, `-` and
/// `_`, starting with a letter, and none of the system's own accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

/// Names the system's own accounts (and the appliance's) use: never a console user.
pub const RESERVED_USER_NAMES: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "sshd",
    "messagebus",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
    "systemd-journal",
    "systemd-coredump",
    "polkitd",
    "tss",
    "callgate",
    "breakglass",
    "admin",
    "operator",
];

impl UserName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            return Err(format!(
                "invalid user name {s:?}: expected 1 to 32 characters of a-z, 0-9, '-' and '_', starting with a letter"
            ));
        }
        if RESERVED_USER_NAMES.contains(&s) || s.starts_with("systemd-") {
            return Err(format!(
                "user name {s:?} is reserved for the system; choose another"
            ));
        }
        Ok(UserName(s.to_owned()))
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_newtype!(UserName);

/// What an account may do. The daemon decides from it for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the state and the config (personal data masked); changes nothing.
    Operator,
    /// Everything an operator does, plus changes, commits and personal data.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The Unix group of the role's accounts (`sshd` admits only these).
    pub fn group(self) -> &'static str {
        match self {
            Role::Operator => "callgate-operator",
            Role::Admin => "callgate-admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key types accepted for SSH logins.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 3072;

/// One SSH public key, as an `authorized_keys` line without options: `TYPE BASE64
/// [COMMENT]`, its type one of [`SSH_KEY_TYPES`] and the same as the type inside the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey(String);

impl SshKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Reads one SSH wire-format string (u32 length, bytes) off the front of `b`.
fn ssh_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(u32::from_be_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
    let v = b.get(4..4 + len)?;
    *b = &b[4 + len..];
    Some(v)
}

impl FromStr for SshKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains(['\n', '\r', '\0']) {
            return Err("an SSH key is one line".into());
        }
        let mut parts = s.split_whitespace();
        let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
            return Err("expected an SSH public key: TYPE BASE64 [COMMENT]".into());
        };
        if !SSH_KEY_TYPES.contains(&kind) {
            return Err(format!(
                "SSH key type {kind:?} is not accepted (options such as command= are not \
                 either): expected one of {}",
                SSH_KEY_TYPES.join(", ")
            ));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| "the SSH key's data is not base64".to_owned())?;
        let mut rest = blob.as_slice();
        let inner = ssh_string(&mut rest).ok_or("the SSH key's data is truncated")?;
        if inner != kind.as_bytes() {
            return Err(format!(
                "the SSH key says {kind:?} but its data is a {:?} key",
                String::from_utf8_lossy(inner)
            ));
        }
        if kind == "ssh-rsa" {
            let _e = ssh_string(&mut rest).ok_or("the RSA key is truncated")?;
            let n = ssh_string(&mut rest).ok_or("the RSA key is truncated")?;
            let n = n.strip_prefix(&[0]).unwrap_or(n);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits is too weak: at least {MIN_RSA_BITS} (or use ssh-ed25519)"
                ));
            }
        }
        let comment: Vec<&str> = parts.collect();
        let mut line = format!("{kind} {data}");
        if !comment.is_empty() {
            line.push(' ');
            line.push_str(&comment.join(" "));
        }
        Ok(SshKey(line))
    }
}

impl fmt::Display for SshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(SshKey);

/// A console password as `pam_unix` keeps it: a yescrypt hash (`$y$…`), never the
/// password itself.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A hash is not a secret to hide from logs, but it is not printed either.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash($y$…)")
    }
}

impl FromStr for PasswordHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let fields: Vec<&str> = s.split('$').collect();
        let charset = |f: &str| {
            !f.is_empty()
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/')
        };
        // "$y$PARAMS$SALT$HASH": an empty first field, then four.
        let ok = fields.len() == 5
            && fields[0].is_empty()
            && fields[1] == "y"
            && fields[2..].iter().all(|f| charset(f))
            && fields[4].len() == 43;
        if !ok {
            return Err(
                "console_password: expected a yescrypt hash ($y$…, as `mkpasswd -m yescrypt` prints it), never a password"
                    .into(),
            );
        }
        Ok(PasswordHash(s.to_owned()))
    }
}

// No `Display` (so no `string_newtype!`): a hash is never formatted into a message.
impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One console account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Spanned<UserName>,
    pub role: Role,
    #[serde(default)]
    pub ssh_keys: Vec<SshKey>,
    #[serde(default)]
    pub console_password: Option<PasswordHash>,
}

/// Idle times, per role.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleTimeouts {
    #[serde(default = "default_idle")]
    pub operator: u64,
    #[serde(default = "default_idle")]
    pub admin: u64,
}

/// 15 minutes.
pub const DEFAULT_IDLE_SECS: u64 = 900;

fn default_idle() -> u64 {
    DEFAULT_IDLE_SECS
}

impl Default for IdleTimeouts {
    fn default() -> Self {
        IdleTimeouts {
            operator: DEFAULT_IDLE_SECS,
            admin: DEFAULT_IDLE_SECS,
        }
    }
}

/// `[console]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// Seconds without input before the console logs out (60 to [`MAX_IDLE_SECS`]).
    #[serde(default = "default_idle_timeouts")]
    pub idle_timeout_secs: Spanned<IdleTimeouts>,
    /// The break-glass account ([`BREAK_GLASS_USER`]): an admin that logs in on the serial
    /// console only, with this yescrypt hash. Absent: no such account.
    #[serde(default)]
    pub break_glass_password: Option<PasswordHash>,
}

/// The break-glass account's name.
pub const BREAK_GLASS_USER: &str = "breakglass";

/// The longest idle time a role may have: the image's sshd (`ChannelTimeout session=20m`)
/// and logind (`StopIdleSessionSec=1200`) end any session idle this long, whatever the
/// console's own timer says.
pub const MAX_IDLE_SECS: u64 = 1200;

fn default_idle_timeouts() -> Spanned<IdleTimeouts> {
    Spanned::new(0..0, IdleTimeouts::default())
}

impl Default for Console {
    fn default() -> Self {
        Console {
            idle_timeout_secs: default_idle_timeouts(),
            break_glass_password: None,
        }
    }
}

impl Console {
    pub fn idle_timeout(&self, role: Role) -> std::time::Duration {
        let t = self.idle_timeout_secs.get_ref();
        std::time::Duration::from_secs(match role {
            Role::Operator => t.operator,
            Role::Admin => t.admin,
        })
    }

    pub(crate) fn validate(&self, loc: &Locator<'_>, errs: &mut Vec<ConfigError>) {
        let t = self.idle_timeout_secs.get_ref();
        for (role, v) in [("operator", t.operator), ("admin", t.admin)] {
            if !(60..=MAX_IDLE_SECS).contains(&v) {
                errs.push(loc.error(
                    Some(self.idle_timeout_secs.span()),
                    ErrorKind::InvalidValue,
                    format!("console.idle_timeout_secs.{role}: {v} is out of range: expected 60 to {MAX_IDLE_SECS} (sessions expire when idle; sshd and logind end any session idle for 20 minutes)"),
                ));
            }
        }
    }
}

/// Checks the accounts together: no name twice.
pub(crate) fn validate_users(users: &[User], loc: &Locator<'_>, errs: &mut Vec<ConfigError>) {
    let mut seen = BTreeSet::new();
    for u in users {
        if !seen.insert(u.name.get_ref().clone()) {
            errs.push(loc.error(
                Some(u.name.span()),
                ErrorKind::DuplicateName,
                format!("user {} is defined twice", u.name.get_ref()),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ann@laptop";

    #[test]
    fn keys_of_accepted_types_only_and_never_with_options() {
        let k: SshKey = ED.parse().unwrap();
        assert_eq!(k.as_str(), ED);
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            "command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-ed25519 !!!notbase64",
            // the data is an ed25519 key, the label says ecdsa
            "ecdsa-sha2-nistp256 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\nssh-ed25519 AAAA",
        ] {
            assert!(bad.parse::<SshKey>().is_err(), "{bad:?}");
        }
        // A 1024-bit RSA key is refused (e = 65537, n of 128 bytes).
        let mut blob = Vec::new();
        for part in [&b"ssh-rsa"[..], &[1, 0, 1][..], &[0xc5; 128][..]] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        let weak = format!(
            "ssh-rsa {}",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        let e = weak.parse::<SshKey>().unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
    }

    #[test]
    fn names_and_password_hashes() {
        assert!("ann".parse::<UserName>().is_ok());
        for bad in [
            "",
            "Ann",
            "1ann",
            "root",
            "sshd",
            "systemd-foo",
            "a b",
            &"a".repeat(33),
        ] {
            assert!(bad.parse::<UserName>().is_err(), "{bad:?}");
        }
        let h = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7";
        assert!(h.parse::<PasswordHash>().is_ok());
        for bad in ["hunter2", "$6$salt$hash", "$y$j9T$salt$short", "$y$$$"] {
            assert!(bad.parse::<PasswordHash>().is_err(), "{bad:?}");
        }
        assert!(!format!("{:?}", h.parse::<PasswordHash>().unwrap()).contains("F5Jx"));
    }
}

//! # callgate-accounts
//!
//! The system's console accounts made to match the config's `[[user]]` entries, as VyOS
//! does at commit: `useradd`, `usermod`, `userdel` (Debian's `passwd` package, so
//! `/etc/passwd`, `/etc/shadow` and `/etc/group` stay theirs to write), and one
//! root-owned `authorized_keys` file per account for sshd.
//!
//! ## Design
//! - [`read_current`] reads the accounts this crate manages: members of [`CONSOLE_GROUP`]
//!   whose GECOS is [`MARKER`]. An account it did not make is never changed or removed.
//! - [`plan`] is pure: what is there and what the config wants, in, the steps out.
//! - [`apply`] carries the steps out; a failed step is reported and the others still run
//!   (the next reconcile retries).
//! - Console accounts get uids in [`UID_RANGE`], their role's group
//!   ([`Role::group`]) and [`CONSOLE_GROUP`] (the control socket's group), the console as
//!   their login shell, and `/` as home (root's, read only to them): nothing of theirs is
//!   read from a directory they could write.
//! - Removing an account (or all its keys and its password) first ends its sessions: every
//!   process running as its uid gets SIGHUP, then SIGKILL.
//! - Passwords: the config's yescrypt hash is set as is (`usermod -p`); an account without
//!   one gets `*` (no password login; SSH keys only).
//!
//! - [`privileged`]: the same work done for a daemon that is not root, by
//!   `callgate accounts-helper` (root) over a socket; with the login uid, audit session and
//!   origin of a console process, which such a daemon cannot read from `/proc`.
//!
//! ## Current limitations
//! - Reconciling runs after a commit has been applied; a failed step is logged and retried
//!   at the next commit or start, it does not roll the commit back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use callgate_config::{PasswordHash, Role, User, BREAK_GLASS_USER};

pub mod privileged;

/// Every console account is a member (it owns the control socket).
pub const CONSOLE_GROUP: &str = "callgate-console";
/// The GECOS field of the accounts this crate made.
pub const MARKER: &str = "callgate console account";
/// The uids of console accounts (away from the system's and from a desktop's users).
pub const UID_RANGE: (u32, u32) = (20_000, 29_999);

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {detail}")]
    Step { step: String, detail: String },
}

/// Where things go.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `/etc` (the files are read from there; the tools write them).
    pub etc: PathBuf,
    /// One `authorized_keys` file per account, named after it (sshd's
    /// `AuthorizedKeysFile /etc/callgate/ssh/authorized_keys/%u`).
    pub keys_dir: PathBuf,
    /// The login shell of every console account: the console itself.
    pub shell: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            etc: PathBuf::from("/etc"),
            keys_dir: PathBuf::from("/etc/callgate/ssh/authorized_keys"),
            shell: PathBuf::from("/usr/bin/callgate"),
        }
    }
}

/// A console account as the system has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub role: Option<Role>,
    pub shell: String,
    /// The shadow hash (`*`, `!…`, `$y$…`).
    pub password: String,
    /// The key lines in its `authorized_keys` file.
    pub keys: Vec<String>,
}

/// An account the config wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub name: String,
    /// `None`: the break-glass account (the console group only: sshd admits only the role
    /// groups, so it logs in on the serial console alone).
    pub role: Option<Role>,
    pub keys: Vec<String>,
    /// The shadow hash to set (`*`: none).
    pub hash: String,
}

/// What the config wants: its `[[user]]`s, and the break-glass account when it has a
/// password.
pub fn wants(users: &[User], break_glass: Option<&PasswordHash>) -> Vec<Want> {
    let mut w: Vec<Want> = users
        .iter()
        .map(|u| Want {
            name: u.name.get_ref().as_str().to_owned(),
            role: Some(u.role),
            keys: u.ssh_keys.iter().map(|k| k.as_str().to_owned()).collect(),
            hash: u
                .console_password
                .as_ref()
                .map_or("*".to_owned(), |h| h.as_str().to_owned()),
        })
        .collect();
    if let Some(h) = break_glass {
        w.push(Want {
            name: BREAK_GLASS_USER.to_owned(),
            role: None,
            keys: Vec::new(),
            hash: h.as_str().to_owned(),
        });
    }
    w
}

/// The groups of an account of `role` (the console group, and the role's).
fn groups_of(role: Option<Role>) -> String {
    match role {
        Some(r) => format!("{CONSOLE_GROUP},{}", r.group()),
        None => CONSOLE_GROUP.to_owned(),
    }
}

/// One step of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create a group the accounts need.
    Group(&'static str),
    Add {
        name: String,
        role: Option<Role>,
    },
    /// Set the role's group and the shell (an account whose role changed, or whose shell
    /// is not the console).
    Modify {
        name: String,
        role: Option<Role>,
    },
    Password {
        name: String,
        hash: String,
    },
    Keys {
        name: String,
        keys: Vec<String>,
    },
    /// End every process of the account (before a removal, or when it lost every way in).
    EndSessions {
        name: String,
        uid: u32,
    },
    Remove {
        name: String,
    },
}

/// For the log: names and counts, never a hash or a key.
impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Group(g) => write!(f, "group {g} created"),
            Step::Add { name, role } => write!(f, "account {name} added ({})", role_name(*role)),
            Step::Modify { name, role } => {
                write!(f, "account {name} is now {}", role_name(*role))
            }
            Step::Password { name, hash } if hash == "*" => {
                write!(f, "account {name}: no console password")
            }
            Step::Password { name, .. } => write!(f, "account {name}: console password set"),
            Step::Keys { name, keys } => write!(f, "account {name}: {} SSH key(s)", keys.len()),
            Step::EndSessions { name, uid } => {
                write!(f, "account {name} (uid {uid}): open sessions ended")
            }
            Step::Remove { name } => write!(f, "account {name} removed"),
        }
    }
}

fn role_name(role: Option<Role>) -> &'static str {
    role.map_or("break-glass", Role::as_str)
}

/// What the system has, from `/etc/passwd`, `/etc/shadow`, `/etc/group` and the key files.
pub fn read_current(s: &Settings) -> Result<(Vec<Account>, BTreeSet<String>), AccountsError> {
    let read = |f: &str| {
        let path = s.etc.join(f);
        std::fs::read_to_string(&path).map_err(|source| AccountsError::Read { path, source })
    };
    let group = read("group")?;
    let passwd = read("passwd")?;
    let shadow = read("shadow")?;
    let mut members: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut groups = BTreeSet::new();
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4 {
            groups.insert(f[0].to_owned());
            members
                .entry(f[0])
                .or_default()
                .extend(f[3].split(',').filter(|m| !m.is_empty()));
        }
    }
    let hashes: BTreeMap<&str, &str> = shadow
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.next()?))
        })
        .collect();
    let is_member = |g: &str, n: &str| members.get(g).is_some_and(|m| m.contains(n));
    let mut out = Vec::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 || f[4] != MARKER || !is_member(CONSOLE_GROUP, f[0]) {
            continue;
        }
        let role = if is_member(Role::Admin.group(), f[0]) {
            Some(Role::Admin)
        } else if is_member(Role::Operator.group(), f[0]) {
            Some(Role::Operator)
        } else {
            None
        };
        let keys = std::fs::read_to_string(s.keys_dir.join(f[0]))
            .map(|t| {
                t.lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        out.push(Account {
            name: f[0].to_owned(),
            uid: f[2].parse().unwrap_or(0),
            role,
            shell: f[6].to_owned(),
            password: hashes.get(f[0]).copied().unwrap_or("!").to_owned(),
            keys,
        });
    }
    Ok((out, groups))
}

/// The steps that make `current` (and `groups`) what `wanted` says. Pure.
pub fn plan(
    current: &[Account],
    groups: &BTreeSet<String>,
    wanted: &[Want],
    shell: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if wanted.is_empty() && current.is_empty() {
        // No console accounts wanted or made: the system's accounts are not touched.
        return steps;
    }
    for g in [CONSOLE_GROUP, Role::Operator.group(), Role::Admin.group()] {
        if !groups.contains(g) {
            steps.push(Step::Group(g));
        }
    }
    let want: BTreeMap<&str, &Want> = wanted.iter().map(|w| (w.name.as_str(), w)).collect();
    for a in current {
        if !want.contains_key(a.name.as_str()) {
            steps.push(Step::EndSessions {
                name: a.name.clone(),
                uid: a.uid,
            });
            steps.push(Step::Remove {
                name: a.name.clone(),
            });
        }
    }
    for (name, w) in &want {
        let name = (*name).to_owned();
        match current.iter().find(|a| a.name == name) {
            None => {
                steps.push(Step::Add {
                    name: name.clone(),
                    role: w.role,
                });
                steps.push(Step::Password {
                    name: name.clone(),
                    hash: w.hash.clone(),
                });
                steps.push(Step::Keys {
                    name,
                    keys: w.keys.clone(),
                });
            }
            Some(a) => {
                // A lost role or way in ends what the account has open now.
                let demoted = a.role == Some(Role::Admin) && w.role != Some(Role::Admin);
                let lost_keys = a.keys.iter().any(|k| !w.keys.contains(k));
                let lost_password = a.password != w.hash && a.password.starts_with('$');
                if demoted || lost_keys || lost_password {
                    steps.push(Step::EndSessions {
                        name: name.clone(),
                        uid: a.uid,
                    });
                }
                if a.role != w.role || a.shell != shell {
                    steps.push(Step::Modify {
                        name: name.clone(),
                        role: w.role,
                    });
                }
                if a.password != w.hash {
                    steps.push(Step::Password {
                        name: name.clone(),
                        hash: w.hash.clone(),
                    });
                }
                if a.keys != w.keys {
                    steps.push(Step::Keys {
                        name,
                        keys: w.keys.clone(),
                    });
                }
            }
        }
    }
    steps
}

fn run(step: &str, cmd: &mut Command) -> Result<(), AccountsError> {
    let out = cmd.output().map_err(|e| AccountsError::Step {
        step: step.to_owned(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AccountsError::Step {
            step: step.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Writes `keys` as the account's `authorized_keys` file: root-owned, 0644, atomically.
fn write_keys(dir: &Path, name: &str, keys: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let tmp = dir.join(format!(".{name}.new"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        for k in keys {
            writeln!(f, "{k}")?;
        }
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Ends every process that `select` picks among this appliance's (those in the network
/// namespace of process `daemon`, the daemon's: on an appliance every one; in the lab,
/// where several appliances share the machine and their uids, only this one's), never the
/// caller: SIGHUP, then SIGKILL for what is left after 200 ms. How many got the SIGHUP.
/// Nothing, when the daemon's namespace cannot be read.
pub fn end_processes(daemon: i32, select: impl Fn(i32) -> bool) -> usize {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Ok(own_net) = std::fs::read_link(format!("/proc/{daemon}/ns/net")) else {
        return 0;
    };
    let own_net = Some(own_net);
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let pids = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == own_net)
            .filter(|pid| select(*pid))
            .collect()
    };
    let first = pids();
    for p in &first {
        let _ = kill(Pid::from_raw(*p), Signal::SIGHUP);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    for p in pids() {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    first.len()
}

/// A number field of `/proc/PID/status` (its first value: `Uid:` gives the real uid).
fn status_field(pid: i32, field: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Carries out `steps` for the daemon, process `daemon`; the errors of the steps that
/// failed (the others ran).
pub fn apply(steps: &[Step], s: &Settings, daemon: i32) -> Vec<AccountsError> {
    let mut errors = Vec::new();
    let shell = s.shell.to_string_lossy().into_owned();
    let uid_min = format!("UID_MIN={}", UID_RANGE.0);
    let uid_max = format!("UID_MAX={}", UID_RANGE.1);
    for step in steps {
        let r = match step {
            Step::Group(g) => run(
                &format!("groupadd {g}"),
                Command::new("groupadd").args(["--system", g]),
            ),
            Step::Add { name, role } => run(
                &format!("useradd {name}"),
                Command::new("useradd")
                    .args(["-K", &uid_min, "-K", &uid_max, "-U", "-M"])
                    .args(["-d", "/", "-s", &shell, "-c", MARKER])
                    .args(["-G", &groups_of(*role)])
                    .arg(name),
            ),
            Step::Modify { name, role } => run(
                &format!("usermod {name}"),
                Command::new("usermod")
                    .args(["-s", &shell])
                    .args(["-G", &groups_of(*role)])
                    .arg(name),
            ),
            Step::Password { name, hash } => run(
                &format!("password of {name}"),
                Command::new("usermod").args(["-p", hash, name]),
            ),
            Step::Keys { name, keys } => {
                write_keys(&s.keys_dir, name, keys).map_err(|e| AccountsError::Step {
                    step: format!("keys of {name}"),
                    detail: e.to_string(),
                })
            }
            Step::EndSessions { uid, .. } => {
                end_processes(daemon, |pid| status_field(pid, "Uid:") == Some(*uid));
                Ok(())
            }
            Step::Remove { name } => {
                // The keys first: no login starts while the account goes.
                let _ = std::fs::remove_file(s.keys_dir.join(name));
                run(
                    &format!("userdel {name}"),
                    Command::new("userdel").args(["-f", name]),
                )
            }
        };
        if let Err(e) = r {
            errors.push(e);
        }
    }
    errors
}

/// Reads, plans and applies for the daemon, process `daemon`; the steps taken and the
/// errors.
pub fn reconcile(
    wanted: &[Want],
    s: &Settings,
    daemon: i32,
) -> Result<(Vec<Step>, Vec<AccountsError>), AccountsError> {
    let (current, groups) = read_current(s)?;
    let steps = plan(&current, &groups, wanted, &s.shell.to_string_lossy());
    let errors = apply(&steps, s, daemon);
    Ok((steps, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ann@laptop";

    fn users(toml: &str) -> Vec<Want> {
        let text = format!(
            "[appliance]\nname = \"t\"\n[zones.mgmt]\ninterfaces = [\"m0\"]\n[services.ssh]\nzones = [\"mgmt\"]\n{toml}"
        );
        let cfg = callgate_config::Config::parse(&text, Path::new("t.toml")).unwrap();
        wants(&cfg.user, cfg.console.break_glass_password.as_ref())
    }

    fn account(name: &str, role: Role, keys: &[&str]) -> Account {
        Account {
            name: name.into(),
            uid: 20_001,
            role: Some(role),
            shell: "/usr/bin/callgate".into(),
            password: "*".into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn all_groups() -> BTreeSet<String> {
        [CONSOLE_GROUP, "callgate-operator", "callgate-admin"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_new_user_is_added_with_its_role_password_and_keys() {
        let want = users(&format!(
            "[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{KEY}\"]\n"
        ));
        let steps = plan(&[], &BTreeSet::new(), &want, "/usr/bin/callgate");
        assert_eq!(
            steps,
            vec![
                Step::Group(CONSOLE_GROUP),
                Step::Group("callgate-operator"),
                Step::Group("callgate-admin"),
                Step::Add {
                    name: "ann".into(),
                    role: Some(Role::Admin)
                },
                Step::Password {
                    name: "ann".into(),
                    hash: "*".into()
                },
                Step::Keys {
                    name: "ann".into(),
                    keys: vec![KEY.into()]
                },
            ]
        );
    }

    #[test]
    fn without_console_accounts_the_system_is_not_touched() {
        assert!(plan(&[], &BTreeSet::new(), &[], "/usr/bin/callgate").is_empty());
    }

    #[test]
    fn nothing_to_do_when_the_system_matches() {
        let want = users(&format!(
            "[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{KEY}\"]\n"
        ));
        let have = [account("ann", Role::Admin, &[KEY])];
        assert!(plan(&have, &all_groups(), &want, "/usr/bin/callgate").is_empty());
    }

    #[test]
    fn a_removed_user_or_key_ends_its_sessions_first() {
        let have = [account("ann", Role::Admin, &[KEY])];
        let steps = plan(&have, &all_groups(), &[], "/usr/bin/callgate");
        assert_eq!(
            steps,
            vec![
                Step::EndSessions {
                    name: "ann".into(),
                    uid: 20_001
                },
                Step::Remove { name: "ann".into() }
            ]
        );
        let want = users("[[user]]\nname = \"ann\"\nrole = \"operator\"\n");
        let steps = plan(&have, &all_groups(), &want, "/usr/bin/callgate");
        assert_eq!(
            steps[0],
            Step::EndSessions {
                name: "ann".into(),
                uid: 20_001
            }
        );
        assert!(steps.contains(&Step::Modify {
            name: "ann".into(),
            role: Some(Role::Operator)
        }));
        assert!(steps.contains(&Step::Keys {
            name: "ann".into(),
            keys: vec![]
        }));
    }

    #[test]
    fn only_marked_console_group_members_are_read_as_ours() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path();
        std::fs::write(
            etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\n\
                 ann:x:20001:20001:{MARKER}:/nonexistent:/usr/bin/callgate\n\
                 bob:x:1000:1000:Bob:/home/bob:/bin/bash\n\
                 eve:x:20002:20002:{MARKER}:/nonexistent:/usr/bin/callgate\n"
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            format!("{CONSOLE_GROUP}:x:999:ann,bob\ncallgate-admin:x:998:ann\n"),
        )
        .unwrap();
        std::fs::write(etc.join("shadow"), "ann:*:1::::::\nbob:$y$x:1::::::\n").unwrap();
        let keys = etc.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join("ann"), format!("# managed\n{KEY}\n")).unwrap();
        let s = Settings {
            etc: etc.to_path_buf(),
            keys_dir: keys,
            shell: "/usr/bin/callgate".into(),
        };
        let (current, groups) = read_current(&s).unwrap();
        // bob is in the group but not ours; eve is marked but not in the group
        assert_eq!(current, vec![account("ann", Role::Admin, &[KEY])]);
        assert!(groups.contains("callgate-admin") && !groups.contains("callgate-operator"));
    }

    #[test]
    fn the_break_glass_account_has_no_role_group() {
        let want = users("[console]\nbreak_glass_password = \"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7\"\n");
        let steps = plan(&[], &all_groups(), &want, "/usr/bin/callgate");
        assert_eq!(
            steps[0],
            Step::Add {
                name: BREAK_GLASS_USER.into(),
                role: None
            }
        );
        assert_eq!(groups_of(None), CONSOLE_GROUP);
        assert!(
            !format!("{}", steps[1]).contains("$y$"),
            "hashes stay out of the log"
        );
    }
}

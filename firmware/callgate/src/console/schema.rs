//! The console's commands: one tree drives parsing, `?` help, Tab completion and the role
//! filter, so they can never disagree. Words may be shortened to any unique prefix
//! (`sh conf` is `show config`).

use callgate_control::Role;

/// What a command does once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ShowFirewall,
    ShowConfig,
    ShowHistory,
    ShowCalls,
    ShowCdrs,
    ShowSipStats,
    ShowPair,
    ShowAudit,
    ShowUplink,
    ShowSubject,
    SubjectExport,
    SubjectErase,
    UplinkCsr,
    UplinkInstallCert,
    SipTlsCsr,
    SipTlsInstallCert,
    IntakeCsr,
    IntakeInstallCert,
    Status,
    Whoami,
    Compare,
    Configure,
    Failover,
    PairInit,
    PairJoin,
    PairRekey,
    Unpair,
    ClearLockout,
    ShowSessions,
    ShowSystem,
    Upgrade,
    EndSession,
    Ping,
    Traceroute,
    MonitorCalls,
    Help,
    Exit,
    // configuration mode
    Set,
    Delete,
    ShowCandidate,
    Commit,
    CommitConfirmed,
    Confirm,
    Rollback,
    LoadOverride,
    Discard,
    ExitConfigure,
}

/// A value a command takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A whole number, named for help.
    Number(&'static str),
    /// One word (a name).
    Word(&'static str),
    /// One or more words to the end of the line (config paths and values).
    Words(&'static str),
}

/// One word of a command, with what may follow it.
#[derive(Debug)]
pub struct Node {
    pub word: &'static str,
    pub help: &'static str,
    /// The role that may run it (and see it in help and completion).
    pub role: Role,
    /// Values that follow the word, in order.
    pub values: &'static [Value],
    /// Optional keywords after it (`last`, `confirmed`).
    pub children: &'static [Node],
    /// What it does when the line ends here (None: a child must follow).
    pub action: Option<Action>,
}

const fn leaf(word: &'static str, help: &'static str, action: Action) -> Node {
    Node {
        word,
        help,
        role: Role::Operator,
        values: &[],
        children: &[],
        action: Some(action),
    }
}

const fn admin(mut n: Node) -> Node {
    n.role = Role::Admin;
    n
}

/// `csr` and `install-cert` of a server identity whose key is made and sealed here.
const fn identity(csr: Action, install: Action) -> [Node; 2] {
    [
        admin(leaf(
            "csr",
            "the certificate signing request (the key stays sealed here)",
            csr,
        )),
        admin(leaf(
            "install-cert",
            "install the signed certificate chain, pasted or piped in (PEM, leaf first)",
            install,
        )),
    ]
}

const SIP_TLS_IDENTITY: [Node; 2] = identity(Action::SipTlsCsr, Action::SipTlsInstallCert);
const INTAKE_IDENTITY: [Node; 2] = identity(Action::IntakeCsr, Action::IntakeInstallCert);

const LAST: Node = Node {
    word: "last",
    help: "only the newest N",
    role: Role::Operator,
    values: &[Value::Number("N")],
    children: &[],
    action: None,
};

/// Operational mode.
pub static OPERATIONAL: &[Node] = &[
    Node {
        word: "show",
        help: "show the appliance's state",
        role: Role::Operator,
        values: &[],
        children: &[
            leaf(
                "firewall",
                "allowlist entries with counters, and any drift of the kernel's table",
                Action::ShowFirewall,
            ),
            leaf("config", "the running config", Action::ShowConfig),
            leaf(
                "history",
                "the numbered config revisions",
                Action::ShowHistory,
            ),
            leaf(
                "calls",
                "calls in progress (caller numbers masked)",
                Action::ShowCalls,
            ),
            Node {
                word: "cdrs",
                help: "the last call detail records (caller number and name masked for operators)",
                role: Role::Operator,
                values: &[],
                children: &[LAST],
                action: Some(Action::ShowCdrs),
            },
            Node {
                word: "sip",
                help: "SIP proxy counters",
                role: Role::Operator,
                values: &[],
                children: &[leaf(
                    "stats",
                    "counters since the daemon started",
                    Action::ShowSipStats,
                )],
                action: None,
            },
            leaf(
                "pair",
                "the redundant pair: roles, heartbeat paths, replication",
                Action::ShowPair,
            ),
            leaf(
                "uplink",
                "the cloud uplink: broker, certificate and expiry, backlog, acknowledgements",
                Action::ShowUplink,
            ),
            admin(Node {
                word: "audit",
                help: "the audit trail: who did what, from which session",
                role: Role::Admin,
                values: &[],
                children: &[LAST],
                action: Some(Action::ShowAudit),
            }),
            admin(Node {
                word: "subject",
                help: "what is held about a caller: records, key, erasures (personal data: admins)",
                role: Role::Admin,
                values: &[Value::Word("NUMBER")],
                children: &[],
                action: Some(Action::ShowSubject),
            }),
            leaf("status", "daemon status", Action::Status),
            leaf(
                "sessions",
                "who is logged in to the console, from where, since when",
                Action::ShowSessions,
            ),
            leaf(
                "system",
                "the root slots, the running version, which slot booted, boot counting",
                Action::ShowSystem,
            ),
        ],
        action: None,
    },
    leaf("status", "daemon status", Action::Status),
    leaf("whoami", "your user, role and session", Action::Whoami),
    admin(leaf(
        "upgrade",
        "install the update file on standard input into the other root slot (ssh ADMIN@APPLIANCE upgrade < callgate.update)",
        Action::Upgrade,
    )),
    Node {
        word: "ping",
        help:
            "ICMP echo to an address or host name from the appliance (5 by default; Ctrl-C stops)",
        role: Role::Operator,
        values: &[Value::Word("HOST")],
        children: &[Node {
            word: "count",
            help: "send N echoes (1-100)",
            role: Role::Operator,
            values: &[Value::Number("N")],
            children: &[],
            action: None,
        }],
        action: Some(Action::Ping),
    },
    Node {
        word: "traceroute",
        help: "the path to an address or host name, hop by hop, with ICMP probes (Ctrl-C stops)",
        role: Role::Operator,
        values: &[Value::Word("HOST")],
        children: &[],
        action: Some(Action::Traceroute),
    },
    Node {
        word: "monitor",
        help: "watch a state as it changes (Ctrl-C stops)",
        role: Role::Operator,
        values: &[],
        children: &[leaf(
            "calls",
            "calls in progress, refreshed every 2 s",
            Action::MonitorCalls,
        )],
        action: None,
    },
    Node {
        word: "compare",
        help: "differences between two config revisions",
        role: Role::Operator,
        values: &[Value::Number("A"), Value::Number("B")],
        children: &[],
        action: Some(Action::Compare),
    },
    admin(leaf(
        "configure",
        "configuration mode: edit a candidate, compare, commit (takes the configuration lock)",
        Action::Configure,
    )),
    admin(leaf(
        "failover",
        "on the active appliance of a pair: hand over to the standby",
        Action::Failover,
    )),
    admin(Node {
        word: "pair",
        help: "the redundant pair's key: make it, join the peer's, replace it, forget it",
        role: Role::Admin,
        values: &[],
        children: &[
            admin(leaf(
                "init",
                "make the pair key here (sealed by the TPM); shows the pairing secret once, for `pair join` on the peer",
                Action::PairInit,
            )),
            admin(leaf(
                "join",
                "join the peer's pair: the secret its `pair init` showed, typed (not echoed) or piped in",
                Action::PairJoin,
            )),
            admin(leaf(
                "rekey",
                "replace the pair key with a new one, sent to the peer over the sync link",
                Action::PairRekey,
            )),
            admin(leaf(
                "unpair",
                "forget the pair key: release the virtual addresses and hold none until paired again",
                Action::Unpair,
            )),
        ],
        action: None,
    }),
    admin(Node {
        word: "end",
        help: "end something that runs",
        role: Role::Admin,
        values: &[],
        children: &[admin(Node {
            word: "session",
            help: "end another user's console session (its number in `show sessions`)",
            role: Role::Admin,
            values: &[Value::Number("SESSION")],
            children: &[],
            action: Some(Action::EndSession),
        })],
        action: None,
    }),
    admin(Node {
        word: "uplink",
        help: "the cloud uplink's identity",
        role: Role::Admin,
        values: &[],
        children: &[
            admin(leaf(
                "csr",
                "the certificate signing request for the fleet CA (the key stays sealed here)",
                Action::UplinkCsr,
            )),
            admin(leaf(
                "install-cert",
                "install the signed certificate chain, pasted or piped in (PEM, leaf first)",
                Action::UplinkInstallCert,
            )),
        ],
        action: None,
    }),
    admin(Node {
        word: "sip",
        help: "SIP: the server identity for SIP over TLS",
        role: Role::Admin,
        values: &[],
        children: &[admin(Node {
            word: "tls",
            help: "SIP over TLS's server certificate",
            role: Role::Admin,
            values: &[],
            children: &SIP_TLS_IDENTITY,
            action: None,
        })],
        action: None,
    }),
    admin(Node {
        word: "intake",
        help: "the transcript intake's server identity (HTTPS with mutual TLS on the private side)",
        role: Role::Admin,
        values: &[],
        children: &INTAKE_IDENTITY,
        action: None,
    }),
    admin(Node {
        word: "request",
        help: "carry out a data subject's request (audited)",
        role: Role::Admin,
        values: &[],
        children: &[admin(Node {
            word: "subject",
            help: "a caller's rights, by number (E.164)",
            role: Role::Admin,
            values: &[],
            children: &[
                admin(Node {
                    word: "export",
                    help: "every record of the caller, decrypted (JSON unless `format csv`)",
                    role: Role::Admin,
                    values: &[Value::Word("NUMBER")],
                    children: &[admin(Node {
                        word: "format",
                        help: "json or csv",
                        role: Role::Admin,
                        values: &[Value::Word("json|csv")],
                        children: &[],
                        action: None,
                    })],
                    action: Some(Action::SubjectExport),
                }),
                admin(Node {
                    word: "erase",
                    help: "destroy the caller's key; prints the signed erasure receipt",
                    role: Role::Admin,
                    values: &[Value::Word("NUMBER")],
                    children: &[],
                    action: Some(Action::SubjectErase),
                }),
            ],
            action: None,
        })],
        action: None,
    }),
    admin(Node {
        word: "clear",
        help: "clear a state",
        role: Role::Admin,
        values: &[],
        children: &[admin(Node {
            word: "login-lockout",
            help: "lift a user's serial console lockout after wrong passwords",
            role: Role::Admin,
            values: &[Value::Word("USER")],
            children: &[],
            action: Some(Action::ClearLockout),
        })],
        action: None,
    }),
    leaf("help", "the commands you may run", Action::Help),
    leaf("exit", "log out", Action::Exit),
    leaf("quit", "log out", Action::Exit),
];

/// Configuration mode (admins only).
pub static CONFIGURE: &[Node] = &[
    admin(Node {
        word: "set",
        help: "set a value in the candidate: set PATH… VALUE (e.g. set allow wan-ssh ports 22)",
        role: Role::Admin,
        values: &[Value::Words("PATH… VALUE")],
        children: &[],
        action: Some(Action::Set),
    }),
    admin(Node {
        word: "delete",
        help: "delete a value, an entry or a table from the candidate: delete PATH…",
        role: Role::Admin,
        values: &[Value::Words("PATH…")],
        children: &[],
        action: Some(Action::Delete),
    }),
    admin(leaf(
        "show",
        "the candidate (`show | compare`: its differences from the running config)",
        Action::ShowCandidate,
    )),
    admin(Node {
        word: "commit",
        help: "apply the candidate (in a pair: on both appliances or on neither)",
        role: Role::Admin,
        values: &[],
        children: &[Node {
            word: "confirmed",
            help: "roll back by itself unless `confirm` comes within MINUTES (or 30s)",
            role: Role::Admin,
            values: &[Value::Number("MINUTES")],
            children: &[],
            action: Some(Action::CommitConfirmed),
        }],
        action: Some(Action::Commit),
    }),
    admin(leaf(
        "confirm",
        "keep the commit made with `commit confirmed`",
        Action::Confirm,
    )),
    admin(Node {
        word: "rollback",
        help: "load revision N into the candidate (then `show | compare`, `commit`)",
        role: Role::Admin,
        values: &[Value::Number("N")],
        children: &[],
        action: Some(Action::Rollback),
    }),
    admin(Node {
        word: "load",
        help: "load a whole configuration into the candidate",
        role: Role::Admin,
        values: &[],
        children: &[admin(leaf(
            "override",
            "replace the candidate with a configuration (TOML) pasted or piped in, ended by Ctrl-D (then `show | compare`, `commit`)",
            Action::LoadOverride,
        ))],
        action: None,
    }),
    admin(leaf(
        "discard",
        "throw the candidate's changes away",
        Action::Discard,
    )),
    admin(leaf(
        "exit",
        "leave configuration mode (refused while the candidate has changes: commit or discard)",
        Action::ExitConfigure,
    )),
    leaf("help", "the commands of configuration mode", Action::Help),
];

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub action: Action,
    /// Values, in the order given (`last N` gives N, `compare A B` gives A and B).
    pub values: Vec<String>,
}

fn visible(nodes: &'static [Node], role: Role) -> impl Iterator<Item = &'static Node> {
    nodes.iter().filter(move |n| n.role <= role)
}

/// The node `word` names among `nodes`: itself or the one node it is a prefix of.
fn find(nodes: &'static [Node], role: Role, word: &str) -> Result<&'static Node, String> {
    if let Some(n) = visible(nodes, role).find(|n| n.word == word) {
        return Ok(n);
    }
    let matches: Vec<&Node> = visible(nodes, role)
        .filter(|n| n.word.starts_with(word))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "unknown word '{word}': expected one of {}",
            words(nodes, role).join(", ")
        )),
        many => Err(format!(
            "'{word}' is ambiguous: {}",
            many.iter().map(|n| n.word).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn words(nodes: &'static [Node], role: Role) -> Vec<&'static str> {
    visible(nodes, role).map(|n| n.word).collect()
}

/// Parses the words of one command.
pub fn parse(tree: &'static [Node], role: Role, line: &[String]) -> Result<Parsed, String> {
    let mut nodes = tree;
    let mut path = Vec::new();
    let mut values = Vec::new();
    let mut action = None;
    let mut i = 0;
    while i < line.len() {
        let n = find(nodes, role, &line[i])?;
        path.push(n.word);
        i += 1;
        for v in n.values {
            match v {
                Value::Number(name) => {
                    let w = line
                        .get(i)
                        .ok_or_else(|| format!("{} needs {name}: a whole number", n.word))?;
                    let ok = w.parse::<u64>().is_ok()
                        || (n.word == "confirmed"
                            && w.strip_suffix('s')
                                .is_some_and(|s| s.parse::<u64>().is_ok()));
                    if !ok {
                        return Err(format!(
                            "{} needs {name}: a whole number, not '{w}'",
                            n.word
                        ));
                    }
                    values.push(w.clone());
                    i += 1;
                }
                Value::Word(name) => {
                    let w = line
                        .get(i)
                        .ok_or_else(|| format!("{} needs {name}", n.word))?;
                    values.push(w.clone());
                    i += 1;
                }
                Value::Words(name) => {
                    if i >= line.len() {
                        return Err(format!("{} needs {name}", n.word));
                    }
                    values.extend(line[i..].iter().cloned());
                    i = line.len();
                }
            }
        }
        if let Some(a) = n.action {
            action = Some(a);
        } else if !n.children.is_empty() {
            // A keyword that needs one of its children (`show`, `sip`).
            action = None;
        }
        // else an option (`last N`): the command before it stands.
        nodes = n.children;
        if i < line.len() && nodes.is_empty() {
            return Err(format!("'{}' takes nothing after it", n.word));
        }
    }
    match action {
        Some(action) => Ok(Parsed { action, values }),
        None if line.is_empty() => Err("empty command".into()),
        None => Err(format!(
            "incomplete: {} needs one of {}",
            path.join(" "),
            words(nodes, role).join(", ")
        )),
    }
}

/// What may come next after the complete words `done`, and the partial word `partial`:
/// (word, help) pairs for `?`, the words alone for Tab. `None` when the words before do
/// not parse (nothing to offer).
pub fn next(
    tree: &'static [Node],
    role: Role,
    done: &[String],
    partial: &str,
) -> Option<Vec<(String, &'static str)>> {
    let mut nodes = tree;
    let mut i = 0;
    let mut pending: &[Value] = &[];
    while i < done.len() {
        if let Some((v, rest)) = pending.split_first() {
            if matches!(v, Value::Words(_)) {
                return Some(Vec::new());
            }
            pending = rest;
            i += 1;
            continue;
        }
        let n = find(nodes, role, &done[i]).ok()?;
        pending = n.values;
        nodes = n.children;
        i += 1;
    }
    if let Some(v) = pending.first() {
        let (Value::Number(name) | Value::Word(name) | Value::Words(name)) = *v;
        return Some(vec![(format!("<{name}>"), "a value")]);
    }
    Some(
        visible(nodes, role)
            .filter(|n| n.word.starts_with(partial))
            .map(|n| (n.word.to_owned(), n.help))
            .collect(),
    )
}

/// Every command of a tree, as `words <VALUES>` with its help and role (for `help` and
/// the README's console table).
pub fn listing(tree: &'static [Node], role: Role) -> Vec<(String, &'static str, Role)> {
    fn walk(
        nodes: &'static [Node],
        role: Role,
        prefix: &str,
        out: &mut Vec<(String, &'static str, Role)>,
    ) {
        for n in visible(nodes, role) {
            let mut cmd = if prefix.is_empty() {
                n.word.to_owned()
            } else {
                format!("{prefix} {}", n.word)
            };
            for v in n.values {
                let (Value::Number(name) | Value::Word(name) | Value::Words(name)) = *v;
                cmd.push_str(&format!(" <{name}>"));
            }
            if n.action.is_some() {
                out.push((cmd.clone(), n.help, n.role));
            }
            walk(n.children, role, &cmd, out);
        }
    }
    let mut out = Vec::new();
    walk(tree, role, "", &mut out);
    out
}

/// The README's table of console commands, made from the tree (a test keeps the README's
/// copy equal to it).
#[cfg(test)]
pub fn readme_table() -> String {
    let mut t = String::from("| mode | command | role | what it does |\n|---|---|---|---|\n");
    for (mode, tree) in [("operational", OPERATIONAL), ("configuration", CONFIGURE)] {
        for (cmd, help, role) in listing(tree, Role::Admin) {
            // A bar inside a cell would end it.
            let help = help.replace('|', "\\|");
            t.push_str(&format!("| {mode} | `{cmd}` | {role} | {help} |\n"));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_parse_with_abbreviations_and_values() {
        let p = parse(OPERATIONAL, Role::Admin, &w("sh conf")).unwrap();
        assert_eq!(p.action, Action::ShowConfig);
        let p = parse(OPERATIONAL, Role::Admin, &w("show cdrs last 5")).unwrap();
        assert_eq!((p.action, p.values.clone()), (Action::ShowCdrs, w("5")));
        let p = parse(
            OPERATIONAL,
            Role::Admin,
            &w("req sub exp +12025550101 format csv"),
        )
        .unwrap();
        assert_eq!(
            (p.action, p.values.clone()),
            (Action::SubjectExport, w("+12025550101 csv"))
        );
        let p = parse(
            OPERATIONAL,
            Role::Admin,
            &w("request subject erase +12025550101"),
        )
        .unwrap();
        assert_eq!(p.action, Action::SubjectErase);
        let p = parse(OPERATIONAL, Role::Admin, &w("show subject +12025550101")).unwrap();
        assert_eq!(p.action, Action::ShowSubject);
        for line in [
            "request subject erase +12025550101",
            "show subject +12025550101",
        ] {
            assert!(
                parse(OPERATIONAL, Role::Operator, &w(line)).is_err(),
                "{line}"
            );
        }
        let p = parse(OPERATIONAL, Role::Admin, &w("show cdrs")).unwrap();
        assert_eq!(p.action, Action::ShowCdrs);
        let p = parse(OPERATIONAL, Role::Operator, &w("compare 1 2")).unwrap();
        assert_eq!(p.values, w("1 2"));
        let p = parse(CONFIGURE, Role::Admin, &w("commit confirmed 2")).unwrap();
        assert_eq!((p.action, p.values), (Action::CommitConfirmed, w("2")));
        let p = parse(CONFIGURE, Role::Admin, &w("set allow x ports 22")).unwrap();
        assert_eq!((p.action, p.values), (Action::Set, w("allow x ports 22")));
    }

    #[test]
    fn errors_say_what_was_expected() {
        let e = parse(OPERATIONAL, Role::Admin, &w("show")).unwrap_err();
        assert!(e.contains("incomplete") && e.contains("firewall"), "{e}");
        let e = parse(OPERATIONAL, Role::Admin, &w("shw")).unwrap_err();
        assert!(
            e.contains("unknown word 'shw'") && e.contains("show"),
            "{e}"
        );
        let e = parse(OPERATIONAL, Role::Admin, &w("s")).unwrap_err();
        assert!(e.contains("ambiguous"), "{e}");
        let e = parse(OPERATIONAL, Role::Admin, &w("compare 1 x")).unwrap_err();
        assert!(e.contains("whole number"), "{e}");
        let e = parse(OPERATIONAL, Role::Admin, &w("status now")).unwrap_err();
        assert!(e.contains("takes nothing"), "{e}");
        assert!(parse(OPERATIONAL, Role::Admin, &w("/bin/sh")).is_err());
    }

    #[test]
    fn an_operator_neither_sees_nor_runs_admin_commands() {
        assert!(parse(OPERATIONAL, Role::Operator, &w("configure")).is_err());
        for admin_only in ["pair init", "pair join", "pair rekey", "pair unpair"] {
            assert!(
                parse(OPERATIONAL, Role::Operator, &w(admin_only)).is_err(),
                "{admin_only}"
            );
        }
        assert_eq!(
            parse(OPERATIONAL, Role::Admin, &w("pa j")).unwrap().action,
            Action::PairJoin
        );
        assert_eq!(
            parse(CONFIGURE, Role::Admin, &w("load override"))
                .unwrap()
                .action,
            Action::LoadOverride
        );
        assert!(parse(OPERATIONAL, Role::Operator, &w("show subject +15551234567")).is_err());
        // The daemon masks what an operator's `show cdrs` holds.
        assert!(parse(OPERATIONAL, Role::Operator, &w("show cdrs")).is_ok());
        let seen: Vec<String> = next(OPERATIONAL, Role::Operator, &[], "")
            .unwrap()
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert!(!seen.contains(&"configure".to_owned()), "{seen:?}");
        assert!(seen.contains(&"show".to_owned()));
        let all = listing(OPERATIONAL, Role::Operator);
        assert!(all.iter().all(|(_, _, r)| *r == Role::Operator));
    }

    #[test]
    fn completion_offers_what_parse_accepts() {
        let n = next(OPERATIONAL, Role::Admin, &w("show"), "c").unwrap();
        let words: Vec<&str> = n.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, vec!["config", "calls", "cdrs"]);
        let n = next(OPERATIONAL, Role::Admin, &w("compare"), "").unwrap();
        assert_eq!(n[0].0, "<A>");
        // Every listed command parses, and every word of the tree has help.
        for tree in [OPERATIONAL, CONFIGURE] {
            for (cmd, help, _) in listing(tree, Role::Admin) {
                assert!(!help.is_empty(), "{cmd}");
                let line: Vec<String> = cmd
                    .split_whitespace()
                    .map(|w| {
                        if w.starts_with('<') {
                            "1".to_owned()
                        } else {
                            w.to_owned()
                        }
                    })
                    .collect();
                parse(tree, Role::Admin, &line).unwrap_or_else(|e| panic!("{cmd}: {e}"));
            }
        }
    }

    #[test]
    fn the_readme_lists_exactly_the_console_commands() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let start = "<!-- console-commands: made by schema::readme_table -->\n";
        let end = "<!-- /console-commands -->";
        let from = readme.find(start).expect("the README's console table") + start.len();
        let to = readme[from..].find(end).expect("its end") + from;
        assert_eq!(
            &readme[from..to],
            readme_table(),
            "the README's console table differs from the command tree; put this between the markers:\n{}",
            readme_table()
        );
    }
}

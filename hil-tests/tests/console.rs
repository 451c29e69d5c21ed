#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The console's accounts and roles against the real daemon: accounts from `[[user]]` made
//! by the daemon's commit (useradd in the appliance's own /etc), every request authorised
//! by the daemon from the kernel's peer credentials, and the audit trail.

use std::time::Duration;

use hil_tests::{bin, Appliance, Host, Lab};

const LAB: &str = include_str!("../../config/lab.toml");
const ANN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ann@laptop";

fn users(extra: &str) -> String {
    format!(
        "{LAB}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{ANN_KEY}\"]\n\n\
         [[user]]\nname = \"olga\"\nrole = \"operator\"\n{extra}"
    )
}

fn wait_until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    hil_tests::poll_until(limit, Duration::from_millis(50), f)
}

/// The appliance's account `name` as its /etc/passwd has it.
fn passwd_line(a: &Appliance<'_>, name: &str) -> Option<String> {
    std::fs::read_to_string(a.etc().join("passwd"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .map(str::to_owned)
}

/// The last `n` entries of `x`'s audit trail (`show audit --json`).
fn audit_entries(x: &Appliance<'_>, n: usize) -> Vec<serde_json::Value> {
    let audit = x
        .cli(&["--json", "show", "audit", "--last", &n.to_string()])
        .json();
    audit["audit"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["entry"].clone()).collect())
        .unwrap_or_default()
}

/// Sends raw request lines to the control socket as `user`: no console in between.
fn raw_as(a: &Appliance<'_>, user: &str, lines: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = a.command("setpriv");
    cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_control-raw"))
        .arg(a.socket())
        .args(lines);
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_operator_reads_but_the_daemon_refuses_every_change_and_records_it() {
    let lab = Lab::start(&[Host::A]).unwrap();
    let a = Appliance::start(&lab, Host::A, &users("")).unwrap();
    // The daemon made both accounts in the appliance's /etc, with the console as shell.
    assert!(
        wait_until(Duration::from_secs(10), || passwd_line(&a, "olga")
            .is_some()
            && passwd_line(&a, "ann").is_some()
            && a.cli_as("olga", &["status"]).ok()),
        "{}",
        a.log()
    );
    let ann = passwd_line(&a, "ann").unwrap();
    assert!(
        ann.ends_with(":/usr/bin/callgate") || ann.contains("callgate"),
        "{ann}"
    );
    let keys = std::fs::read_to_string(a.etc().join("callgate/ssh/authorized_keys/ann")).unwrap();
    assert_eq!(keys.trim(), ANN_KEY);
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !host_passwd.contains("olga:"),
        "the machine's own accounts are untouched"
    );

    // The operator reads …
    let st = a.cli_as("olga", &["status"]);
    assert!(st.ok(), "{} {}", st.stdout, st.stderr);
    assert!(a.cli_as("olga", &["show", "config"]).ok());
    // … and every change is refused, through the console and on the raw socket.
    let file = a.write_file("candidate.toml", &users(""));
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let r = a.cli_as("olga", &["commit", file.to_str().unwrap()]);
    assert!(
        !r.ok() && r.stderr.contains("needs the admin role"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let raw = raw_as(
        &a,
        "olga",
        &[
            r#"{"cmd":"commit","text":"x","origin":"x.toml"}"#,
            r#"{"cmd":"decommission","confirm":true}"#,
            r#"{"cmd":"show_subject","number":"+15551234567"}"#,
            r#"{"cmd":"show_audit","last":5}"#,
            r#"{"cmd":"status"}"#,
        ],
    );
    assert_eq!(raw.len(), 5, "{raw:?}");
    for r in &raw[..4] {
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["text"].as_str().unwrap().contains("needs the admin role"),
            "{r}"
        );
    }
    assert_eq!(raw[4]["ok"], true, "{}", raw[4]);
    // A request too large for an operator is refused unread.
    let big = format!(r#"{{"cmd":"status","pad":"{}"}}"#, "x".repeat(70_000));
    let r = raw_as(&a, "olga", &[&big]);
    assert!(
        r[0]["text"].as_str().unwrap().contains("over 65536 bytes"),
        "{r:?}"
    );

    // An account of the system that is not a console account gets nothing at all.
    a.command("useradd")
        .args(["-M", "-s", "/usr/sbin/nologin", "mallory"])
        .status()
        .unwrap();
    // The socket's mode keeps it out …
    let r = raw_as(&a, "mallory", &[r#"{"cmd":"status"}"#]);
    assert!(r.is_empty(), "{r:?}");
    // … and put in the socket's group by hand, the daemon still gives it nothing.
    a.command("usermod")
        .args(["-aG", "callgate-console", "mallory"])
        .status()
        .unwrap();
    let r = raw_as(&a, "mallory", &[r#"{"cmd":"status"}"#]);
    assert_eq!(r.len(), 1, "{r:?}");
    let text = r[0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("no console account"), "{r:?}");

    // The admin may change; the trail names each of them, refusals included.
    let r = a.cli_as("ann", &["commit", file.to_str().unwrap()]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    let rows = audit_entries(&a, 100);
    let has = |user: &str, action: &str, detail: &str| {
        rows.iter().any(|e| {
            e["user"] == user
                && e["action"] == action
                && e["detail"].as_str().is_some_and(|d| d.starts_with(detail))
        })
    };
    assert!(has("olga", "commit", "refused"), "{rows:#?}");
    assert!(has("olga", "decommission", "refused"), "{rows:#?}");
    assert!(has("olga", "status", "ok"), "{rows:#?}");
    assert!(has("mallory", "connect", "refused"), "{rows:#?}");
    assert!(has("ann", "commit", "started"), "{rows:#?}");
    assert!(has("ann", "commit", "ok"), "{rows:#?}");
    assert!(rows
        .iter()
        .any(|e| e["user"] == "olga" && e["role"] == "operator"));

    // A commit without olga removes her account.
    let r = a.commit(
        &format!("{LAB}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{ANN_KEY}\"]\n"),
        &[],
    );
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    assert!(wait_until(Duration::from_secs(10), || passwd_line(
        &a, "olga"
    )
    .is_none()));
    assert!(!a.etc().join("callgate/ssh/authorized_keys/olga").exists());
    // And one that leaves no admin is refused by the lockout guard.
    let r = a.commit(LAB, &[]);
    assert!(
        !r.ok() && r.stderr.contains("leaves no admin"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

/// Over SSH (Debian's sshd with the shipped config, in A's namespaces and /etc), from the
/// management host: a console account's key gets the console and nothing else.
#[test]
fn over_ssh_a_key_gets_the_console_and_nothing_else() {
    use hil_tests::addr::{A_MGMT_V4, A_WAN_V4};
    use hil_tests::console::{ssh, ssh_command, sshd_log, start_sshd, KeyPair};
    use hil_tests::Cli;
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Mgmt]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (ann, olga) = (
        KeyPair::new(keys.path(), "ann"),
        KeyPair::new(keys.path(), "olga"),
    );
    let config = |ann_key: &str| {
        format!(
            "{LAB}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{ann_key}\"]\n\n\
             [[user]]\nname = \"olga\"\nrole = \"operator\"\nssh_keys = [\"{}\"]\n",
            olga.public
        )
    };
    let a = Appliance::start(&lab, Host::A, &config(&ann.public)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || a
        .cli_as("olga", &["status"])
        .ok()));
    let _sshd = start_sshd(&a, A_MGMT_V4.into());
    let mgmt = lab.ns(Host::Mgmt);
    let host = A_MGMT_V4.into();

    // The admin's key: console commands run; the output is the console's.
    let r = ssh(&mgmt, &ann.private, "ann", host, &["show", "config"]);
    assert!(r.ok(), "{} {}\n{}", r.stdout, r.stderr, sshd_log(&a));
    assert!(r.stdout.contains("[appliance]"), "{}", r.stdout);
    let r = ssh(&mgmt, &olga.private, "olga", host, &["status"]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    // The operator's changes are refused by the daemon.
    let r = ssh(&mgmt, &olga.private, "olga", host, &["failover"]);
    assert!(
        !r.ok() && r.stderr.contains("needs the admin role"),
        "{} {}",
        r.stdout,
        r.stderr
    );

    // No shell, no escape: the command is the console's to parse.
    for cmd in [
        &["/bin/sh"][..],
        &["sh", "-c", "id"],
        &["show calls; id"],
        &["$(id)"],
    ] {
        let r = ssh(&mgmt, &ann.private, "ann", host, cmd);
        assert!(!r.ok(), "{cmd:?}: {}", r.stdout);
        assert!(!r.stdout.contains("uid="), "{cmd:?}: {}", r.stdout);
    }
    // No forwarding and no sftp.
    let mut fwd = ssh_command(&mgmt, "ssh", Some(&ann.private));
    fwd.args(["-W", "127.0.0.1:22"])
        .arg(format!("ann@{A_MGMT_V4}"));
    let r = Cli::run(fwd);
    assert!(
        !r.ok() && !r.stdout.contains("SSH-2.0"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let mut sftp = ssh_command(&mgmt, "sftp", Some(&ann.private));
    sftp.args(["-b", "/dev/null"])
        .arg(format!("ann@{A_MGMT_V4}"));
    let r = Cli::run(sftp);
    assert!(!r.ok(), "sftp: {} {}", r.stdout, r.stderr);

    // Root, a password, another user's key: refused.
    let r = ssh(&mgmt, &ann.private, "root", host, &["status"]);
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "{}",
        r.stderr
    );
    let r = ssh(&mgmt, &olga.private, "ann", host, &["status"]);
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "{}",
        r.stderr
    );
    let mut pw = ssh_command(&mgmt, "ssh", None);
    pw.args([
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-o",
        "PubkeyAuthentication=no",
    ])
    .arg(format!("ann@{A_MGMT_V4}"))
    .arg("status");
    let r = Cli::run(pw);
    assert!(
        !r.ok() && r.stderr.contains("Permission denied (publickey)"),
        "{}",
        r.stderr
    );
    // From the WAN the firewall drops it.
    let r = ssh(
        &lab.ns(Host::Carrier),
        &ann.private,
        "ann",
        A_WAN_V4.into(),
        &["status"],
    );
    assert!(!r.ok(), "{}", r.stdout);

    // A commit that replaces ann's key: the old one no longer gets in, the new one does.
    let new = KeyPair::new(keys.path(), "ann2");
    let r = a.commit(&config(&new.public), &[]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    assert!(wait_until(Duration::from_secs(10), || {
        !ssh(&mgmt, &ann.private, "ann", host, &["status"]).ok()
    }));
    let r = ssh(&mgmt, &new.private, "ann", host, &["status"]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);

    // The audit trail names ann, with the login session sshd opened for her.
    let entries = audit_entries(&a, 200);
    let ann_show = entries
        .iter()
        .find(|e| e["user"] == "ann" && e["action"] == "show config")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(ann_show["role"], "admin");
    let pw_ann = passwd_line(&a, "ann").unwrap();
    let ann_uid: u64 = pw_ann.split(':').nth(2).unwrap().parse().unwrap();
    assert_eq!(ann_show["uid"], ann_uid);
    // pam_loginuid set the session's login uid at the SSH login: ann's, whatever runs later.
    assert_eq!(ann_show["loginuid"], ann_uid, "{ann_show}");
    assert!(ann_show["session"].as_u64().is_some(), "{ann_show}");
    assert!(
        entries.iter().any(|e| e["user"] == "olga"
            && e["action"] == "failover"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("refused"))),
        "{entries:#?}"
    );
}

/// An interactive login on a terminal (`ssh -tt`, driven on a pty): `?` and Tab from the
/// command tree, configuration mode with its lock, `show | compare`, a confirmed commit
/// that lapses and rolls back, one that is confirmed, the pager, and the audit trail.
#[test]
fn an_engineer_configures_over_an_interactive_ssh_session() {
    use hil_tests::addr::{A_MGMT_V4, MGMT_V4};
    use hil_tests::console::{apply_image_sysctls, ssh_terminal, start_sshd, KeyPair};
    let lab = Lab::start(&[Host::A, Host::Mgmt]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (ann, ben, olga) = (
        KeyPair::new(keys.path(), "ann"),
        KeyPair::new(keys.path(), "ben"),
        KeyPair::new(keys.path(), "olga"),
    );
    let config = format!(
        "{LAB}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\n\n\
         [[user]]\nname = \"ben\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\n\n\
         [[user]]\nname = \"olga\"\nrole = \"operator\"\nssh_keys = [\"{}\"]\n",
        ann.public, ben.public, olga.public
    );
    let a = Appliance::start(&lab, Host::A, &config).unwrap();
    assert!(wait_until(Duration::from_secs(10), || a
        .cli_as("olga", &["status"])
        .ok()));
    apply_image_sysctls(&a);
    let _sshd = start_sshd(&a, A_MGMT_V4.into());
    let mgmt = lab.ns(Host::Mgmt);
    let login = |key: &KeyPair, user: &str| {
        // On the pty rexpect gives it (not the null input the one-shot runs get).
        let cmd = ssh_terminal(&mgmt, &key.private, user, A_MGMT_V4.into());
        let mut p = rexpect::session::spawn_command(cmd, Some(15_000)).unwrap();
        let greeting = p.exp_string(&format!("{user}@lab-a> ")).unwrap();
        // The console is the first thing shown: no distribution motd (images/pam/sshd).
        assert!(!greeting.contains("Debian"), "{greeting}");
        p
    };
    let ports_in_kernel = || a.ruleset().contains("33434-33500");

    // The operator: `?` lists what an operator may run, not `configure`.
    let mut o = login(&olga, "olga");
    o.send("?").unwrap();
    o.flush().unwrap();
    let help = o.exp_string("olga@lab-a> ").unwrap();
    assert!(help.contains("show") && help.contains("whoami"), "{help}");
    assert!(!help.contains("configure"), "{help}");
    o.send_line("").unwrap();
    o.exp_string("olga@lab-a> ").unwrap();
    o.send_line("configure").unwrap();
    let e = o.exp_string("olga@lab-a> ").unwrap();
    assert!(e.contains("unknown word 'configure'"), "{e}");

    let mut p = login(&ann, "ann");
    // Tab completes from the tree: `sh` becomes `show`, `show c` offers three words.
    p.send("sh\t").unwrap();
    p.flush().unwrap();
    p.exp_string("show ").unwrap();
    p.send("ca\t").unwrap();
    p.flush().unwrap();
    p.exp_string("calls ").unwrap();
    p.send_line("").unwrap();
    let out = p.exp_string("ann@lab-a> ").unwrap();
    assert!(!out.contains("error"), "{out}");
    // The pager: the running config is longer than the terminal; q leaves it.
    let ann_uid = passwd_line(&a, "ann")
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .to_owned();
    let pager_runs = || {
        std::process::Command::new("pgrep")
            .args(["-x", "-u", &ann_uid, "--nslist", "net", "--ns"])
            .arg(a.pid().unwrap().to_string())
            .arg("less")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    p.send_line("show config").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), pager_runs),
        "less pages it"
    );
    p.send("q").unwrap();
    p.flush().unwrap();
    p.exp_string("ann@lab-a> ").unwrap();
    assert!(!pager_runs());
    p.send_line("show config | match zone | count").unwrap();
    p.exp_regex("Count: [0-9]+ lines").unwrap();
    p.exp_string("ann@lab-a> ").unwrap();

    // ping from the appliance; nothing typed becomes one of ping's options; Ctrl-C stops a
    // long ping and not the console.
    p.send_line(&format!("ping {MGMT_V4} count 2")).unwrap();
    let out = p.exp_string("ann@lab-a> ").unwrap();
    assert!(out.contains("2 received"), "{out}");
    p.send_line("ping -f").unwrap();
    let out = p.exp_string("ann@lab-a> ").unwrap();
    assert!(out.contains("not a host"), "{out}");
    p.send_line(&format!("ping {MGMT_V4} count 100")).unwrap();
    p.exp_string("icmp_seq=2").unwrap();
    p.send_control('c').unwrap();
    let out = p.exp_string("ann@lab-a> ").unwrap();
    assert!(out.contains("packets transmitted"), "{out}");
    p.send_line("whoami").unwrap();
    let out = p.exp_string("ann@lab-a> ").unwrap();
    assert!(out.contains("ann (admin)"), "{out}");
    p.send_line(&format!("traceroute {MGMT_V4}")).unwrap();
    let out = p.exp_string("ann@lab-a> ").unwrap();
    assert!(out.contains(&format!(" 1  {MGMT_V4}")), "{out}");
    p.send_line("monitor calls").unwrap();
    p.exp_string("monitor calls: every 2 s").unwrap();
    p.exp_string("monitor calls: every 2 s").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("ann@lab-a> ").unwrap();

    // Configuration mode: the lock is ann's; ben is told.
    p.send_line("configure").unwrap();
    p.exp_string("ann@lab-a# ").unwrap();
    let mut b = login(&ben, "ben");
    b.send_line("configure").unwrap();
    let e = b.exp_string("ben@lab-a> ").unwrap();
    assert!(e.contains("configuration is locked by ann"), "{e}");

    p.send_line("set allow wan-traceroute ports 33434-33500")
        .unwrap();
    p.exp_string("ann@lab-a# ").unwrap();
    p.send_line("show | compare | no-more").unwrap();
    let d = p.exp_string("ann@lab-a# ").unwrap();
    assert!(d.contains("+ports = [\"33434-33500\"]"), "{d}");
    // A confirmed commit that nobody confirms rolls back by itself.
    p.send_line("commit confirmed 3s").unwrap();
    let c = p.exp_string("ann@lab-a# ").unwrap();
    assert!(c.contains("committed revision"), "{c}");
    assert!(ports_in_kernel());
    assert!(
        wait_until(Duration::from_secs(15), || !ports_in_kernel()),
        "rolled back"
    );
    // Again, and this time confirmed.
    p.send_line("discard").unwrap();
    p.exp_string("ann@lab-a# ").unwrap();
    p.send_line("set allow wan-traceroute ports 33434-33500")
        .unwrap();
    p.exp_string("ann@lab-a# ").unwrap();
    p.send_line("commit confirmed 1").unwrap();
    p.exp_string("ann@lab-a# ").unwrap();
    p.send_line("confirm").unwrap();
    let c = p.exp_string("ann@lab-a# ").unwrap();
    assert!(c.contains("confirmed"), "{c}");
    p.send_line("exit").unwrap();
    p.exp_string("ann@lab-a> ").unwrap();
    // Out of configuration mode, the lock is free for ben.
    b.send_line("configure").unwrap();
    b.exp_string("ben@lab-a# ").unwrap();
    b.send_line("exit").unwrap();
    b.exp_string("ben@lab-a> ").unwrap();
    p.send_line("exit").unwrap();
    p.exp_eof().unwrap();
    assert!(ports_in_kernel(), "the confirmed commit stays");

    // Who is logged in: olga over SSH from the management host; ben ends her session.
    b.send_line("show sessions | match olga").unwrap();
    let who = b.exp_string("ben@lab-a> ").unwrap();
    assert!(
        who.contains("olga") && who.contains("ssh from 192.0.2."),
        "{who}"
    );
    let sessions = a.cli(&["--json", "show", "sessions"]).json();
    let olga_session = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["user"] == "olga")
        .and_then(|s| s["session"].as_u64())
        .unwrap_or_else(|| panic!("{sessions}"));
    b.send_line(&format!("end session {olga_session}")).unwrap();
    let ended = b.exp_string("ben@lab-a> ").unwrap();
    assert!(ended.contains("ended"), "{ended}");
    o.exp_eof().unwrap();
    let sessions = a.cli(&["--json", "show", "sessions"]).json();
    assert!(
        !sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["user"] == "olga"),
        "{sessions}"
    );

    // History per user, kept by the daemon: ben's next login reaches his earlier lines.
    b.send_line("exit").unwrap();
    b.exp_eof().unwrap();
    let mut b = login(&ben, "ben");
    b.send("\x1b[A").unwrap();
    b.flush().unwrap();
    b.exp_string("exit").unwrap();
    b.send("\x1b[A").unwrap();
    b.flush().unwrap();
    b.exp_string(&format!("end session {olga_session}"))
        .unwrap();
    b.send_control('u').unwrap();
    b.send_line("exit").unwrap();
    b.exp_eof().unwrap();

    // The audit trail names ann for each step.
    let audit = audit_entries(&a, 1000);
    let steps: Vec<String> = audit
        .iter()
        .filter(|e| e["user"] == "ann")
        .map(|e| {
            format!(
                "{} -> {}",
                e["action"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "configure -> ok",
        "commit -> ok",
        "confirm -> ok",
        "exit configure -> ok",
        "typed -> set allow wan-traceroute ports 33434-33500",
        "typed -> commit confirmed 3s",
    ] {
        assert!(steps.iter().any(|s| s == want), "{want}: {steps:#?}");
    }
    let ben_refused = audit.iter().any(|e| {
        e["user"] == "ben"
            && e["action"] == "configure"
            && e["detail"].as_str().unwrap_or("").contains("locked by ann")
    });
    assert!(ben_refused, "{audit:#?}");
}

/// The serial console, on a pty: agetty and login with the shipped PAM stack; a console
/// password logs in to the console; three wrong ones lock the account (the right one too)
/// until an admin lifts it; the break-glass account is an admin there; an idle session is
/// warned and logged out.
#[test]
fn on_the_serial_console_passwords_log_in_and_wrong_ones_lock_the_account() {
    use hil_tests::console::{install_serial_login, serial_getty, yescrypt};
    let lab = Lab::start(&[Host::A]).unwrap();
    let (olga_pw, glass_pw) = ("tr0ub4dor&3", "correct horse battery");
    let config = format!(
        "{LAB}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{ANN_KEY}\"]\n\n\
         [[user]]\nname = \"olga\"\nrole = \"operator\"\nconsole_password = \"{}\"\n\n\
         [console]\nidle_timeout_secs = {{ operator = 60 }}\nbreak_glass_password = \"{}\"\n",
        yescrypt(olga_pw),
        yescrypt(glass_pw)
    );
    let a = Appliance::start(&lab, Host::A, &config).unwrap();
    assert!(wait_until(Duration::from_secs(10), || passwd_line(
        &a,
        "breakglass"
    )
    .is_some()
        && a.cli_as("olga", &["status"]).ok()));
    install_serial_login(&a);
    let getty = || {
        let mut p = rexpect::session::spawn_command(serial_getty(&a), Some(10_000)).unwrap();
        p.exp_string("login: ").unwrap();
        p
    };
    let attempt = |p: &mut rexpect::session::PtySession, user: &str, pw: &str| {
        p.send_line(user).unwrap();
        p.exp_string("Password: ").unwrap();
        p.send_line(pw).unwrap();
    };

    // The right password gets the console.
    let mut p = getty();
    attempt(&mut p, "olga", olga_pw);
    let shadow = std::fs::read_to_string(a.etc().join("shadow")).unwrap();
    let line = shadow
        .lines()
        .find(|l| l.starts_with("olga:"))
        .unwrap_or_default()
        .to_owned();
    p.exp_string("olga@lab-a> ")
        .unwrap_or_else(|e| panic!("{e}\n{line}"));
    p.send_line("exit").unwrap();
    drop(p);
    // Three wrong passwords, then the right one: still refused (locked).
    let mut p = getty();
    for _ in 0..3 {
        attempt(&mut p, "olga", "wrong");
        p.exp_string("Login incorrect").unwrap();
        p.exp_string("login: ").unwrap();
    }
    attempt(&mut p, "olga", olga_pw);
    p.exp_string("Login incorrect").unwrap();
    drop(p);
    // The daemon saw the lockout in pam_faillock's own tally (an event for the cloud).
    assert!(
        wait_until(Duration::from_secs(15), || a
            .log()
            .contains("the account olga is locked")),
        "{}",
        a.log()
    );
    // An admin lifts it (through the console); the password works again.
    let mut admin = rexpect::session::spawn_command(
        {
            let mut c = a.command("setpriv");
            c.args(["--reuid", "ann", "--regid", "ann", "--init-groups", "--"])
                .arg(hil_tests::bin("callgate"))
                .args(["-c", "clear login-lockout olga"]);
            c
        },
        Some(10_000),
    )
    .unwrap();
    admin.exp_string("lockout is lifted").unwrap();
    // (This session's expectations may wait for the idle logout: 75 s.)
    let mut p = rexpect::session::spawn_command(serial_getty(&a), Some(75_000)).unwrap();
    p.exp_string("login: ").unwrap();
    attempt(&mut p, "olga", olga_pw);
    p.exp_string("olga@lab-a> ").unwrap();
    p.send_line("whoami").unwrap();
    let who = p.exp_string("olga@lab-a> ").unwrap();
    assert!(who.contains("olga (operator)"), "{who}");
    // Idle: the warning a minute before (at once, with 60 s), then the logout.
    let start = std::time::Instant::now();
    p.exp_string("this session ends in").unwrap();
    p.exp_string("logged out").unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(50),
        "{:?}",
        start.elapsed()
    );
    p.exp_string("login: ").unwrap_or_default();

    // The break-glass account is an admin on the serial console.
    let mut p = getty();
    attempt(&mut p, "breakglass", glass_pw);
    p.exp_string("breakglass@lab-a> ").unwrap();
    p.send_line("configure").unwrap();
    p.exp_string("breakglass@lab-a# ").unwrap();
    p.send_line("exit").unwrap();
    p.exp_string("breakglass@lab-a> ").unwrap();
    p.send_line("exit").unwrap();
    p.exp_eof().unwrap();
}

/// The update installer (`callgate upgrade-helper`, behind `callgate-upgrade.socket` on the
/// appliance) as an attacker meets it: any local account can reach its socket with any
/// socket tool, not through the console. The helper itself decides, from the kernel's
/// peer credentials and the appliance's own accounts: an operator and an account outside
/// the console are refused before it reads a byte of the file or even its key; an admin
/// gets past the gate (and here on to the key, which this lab does not have). Each step is
/// in the daemon's audit trail under the account that asked, which the daemon reads from
/// `/proc` itself; an admin who forges such a record on the control socket is refused, and
/// that is on record too. Root's own `callgate upgrade FILE` is on the same record.
#[test]
fn the_update_installer_refuses_an_operator_and_every_attempt_is_on_record() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::start(&[Host::A]).unwrap();
    let a = Appliance::start(&lab, Host::A, &users("")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || passwd_line(&a, "olga")
            .is_some()
            && passwd_line(&a, "ann").is_some()),
        "{}",
        a.log()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("upgrade.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // What the helper's key would be: the gate comes first, so only an admin learns that
    // this one is missing.
    let key = dir.path().join("no-such-update-key.der");
    let attempt = |who: &[&str]| -> (String, bool) {
        let mut client = a.command("setpriv");
        client
            .args(who)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_control-raw"))
            .arg(&sock)
            .arg("CALLGATE-UPDATE not really an update")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let client = client.spawn().unwrap();
        let (conn, _) = listener.accept().unwrap();
        // As systemd hands it the connection (`Accept=yes`): standard input and output.
        let reply = conn.try_clone().unwrap();
        let mut helper = a.command(bin("callgate").to_str().unwrap());
        let helper = helper
            .args(["upgrade-helper", "--key"])
            .arg(&key)
            .arg("--control-socket")
            .arg(a.socket())
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(conn)))
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(reply)))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let out = client.wait_with_output().unwrap();
        (
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&helper.stderr)
            ),
            helper.status.success(),
        )
    };
    let (olga, ok) = attempt(&["--reuid", "olga", "--regid", "olga", "--init-groups"]);
    assert!(!ok, "{olga}");
    assert!(
        olga.contains("refused: olga: only an admin may install an update"),
        "{olga}"
    );
    assert!(!olga.contains("receiving"), "{olga}");
    assert!(!olga.contains("no-such-update-key"), "{olga}");
    let (nobody, ok) = attempt(&["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    assert!(!ok, "{nobody}");
    assert!(
        nobody.contains("refused: ") && !nobody.contains("receiving"),
        "{nobody}"
    );
    let (ann, ok) = attempt(&["--reuid", "ann", "--regid", "ann", "--init-groups"]);
    assert!(!ok, "{ann}");
    assert!(
        ann.contains("upgrade: from ann: receiving the update file"),
        "{ann}"
    );
    assert!(ann.contains("no-such-update-key"), "{ann}");

    // An admin forges an install's record on the control socket: refused, on record.
    let forged = raw_as(
        &a,
        "ann",
        &[r#"{"cmd":"upgrade_record","uid":0,"pid":1,"step":"installed: nothing at all"}"#],
    );
    assert_eq!(forged[0]["ok"], false, "{forged:?}");
    assert!(
        forged[0]["text"]
            .as_str()
            .unwrap()
            .contains("only the update installer (root) records an install"),
        "{forged:?}"
    );

    // The trail, oldest first: each attempt under the account that made it.
    let trail = audit_entries(&a, 16);
    let rows: Vec<(String, String, String)> = trail
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap_or("").to_owned(),
                e["action"].as_str().unwrap_or("").to_owned(),
                e["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .filter(|(_, action, _)| action.starts_with("upgrade"))
        .collect();
    let find = |user: &str, action: &str, detail: &str| {
        rows.iter()
            .any(|(u, a, d)| u == user && a == action && d.contains(detail))
    };
    assert!(
        find(
            "olga",
            "upgrade",
            "refused: olga: only an admin may install an update"
        ),
        "{rows:#?}"
    );
    assert!(find("nobody", "upgrade", "refused: "), "{rows:#?}");
    assert!(find("ann", "upgrade", "started"), "{rows:#?}");
    assert!(
        find("ann", "upgrade", "refused: ") && find("ann", "upgrade", "no-such-update-key"),
        "{rows:#?}"
    );
    assert!(
        find(
            "ann",
            "upgrade record",
            "refused: only the update installer (root) records an install"
        ),
        "{rows:#?}"
    );
    assert!(
        !find("ann", "upgrade", "installed: nothing at all"),
        "{rows:#?}"
    );
    assert!(
        !rows.iter().any(|(u, _, _)| u == "root"),
        "the installer's own account is not the one on record: {rows:#?}"
    );

    // Root's own `callgate upgrade FILE` goes on the same record: started before anything
    // is read (here the missing key stops it), then the refusal, under the account the
    // daemon finds behind the process.
    let file = dir.path().join("not-an.update");
    std::fs::write(&file, "CALLGATE-UPDATE not really an update").unwrap();
    let out = a
        .command(bin("callgate").to_str().unwrap())
        .arg("--socket")
        .arg(a.socket())
        .arg("upgrade")
        .arg(&file)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refused: ") && said.contains("no-such-update-key"),
        "{said}"
    );
    let trail = audit_entries(&a, 32);
    // Root's process, or the engineer behind it when this test runs in a login session.
    let login = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    let unset = matches!(login.trim(), "" | "4294967295");
    let rows: Vec<(String, String)> = trail
        .iter()
        .filter(|e| e["action"] == "upgrade")
        .filter(|e| !matches!(e["user"].as_str(), Some("ann" | "olga" | "nobody")))
        .map(|e| {
            (
                e["user"].as_str().unwrap_or("").to_owned(),
                e["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        rows.iter()
            .all(|(u, _)| !u.is_empty() && (!unset || u == "root")),
        "{rows:#?}"
    );
    assert!(
        rows.iter().any(|(_, d)| d == "started")
            && rows
                .iter()
                .any(|(_, d)| d.starts_with("refused: ") && d.contains("no-such-update-key")),
        "{rows:#?}"
    );
}

/// The pair made and configured from the engineers' host over SSH with the console alone,
/// as on the image, where nobody has a root shell: `pair init` on A shows the pairing
/// secret once, `pair join` on B takes it on standard input, and a whole configuration
/// is loaded into the candidate (`load override`) and committed on both, once piped in as
/// a script of console lines and once pasted on a terminal. An operator may do none of it;
/// a malformed secret changes nothing; each step is in the audit trail under ann.
#[test]
fn over_ssh_an_admin_pairs_two_appliances_and_loads_a_whole_configuration() {
    use hil_tests::addr::{A_MGMT_V4, B_MGMT_V4};
    use hil_tests::console::{
        apply_image_sysctls, ssh, ssh_terminal, ssh_with_input, start_sshd, KeyPair,
    };
    use hil_tests::pair::{pair_toml, role, settled, show_pair, TEST_TIMING};
    let lab = Lab::start_pair(&[Host::Carrier, Host::A, Host::B, Host::Pbx, Host::Mgmt]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (ann, olga) = (
        KeyPair::new(keys.path(), "ann"),
        KeyPair::new(keys.path(), "olga"),
    );
    let config = |host: Host, traceroute: &str| {
        let t = pair_toml(host).replacen(TEST_TIMING.0, TEST_TIMING.1, 1);
        assert!(t.contains("ports = [\"33434-33534\"]"));
        format!(
            "{}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\n\n\
             [[user]]\nname = \"olga\"\nrole = \"operator\"\nssh_keys = [\"{}\"]\n",
            t.replacen(
                "ports = [\"33434-33534\"]",
                &format!("ports = [\"{traceroute}\"]"),
                1
            ),
            ann.public,
            olga.public
        )
    };
    let a = Appliance::start(&lab, Host::A, &config(Host::A, "33434-33534")).unwrap();
    let b = Appliance::start(&lab, Host::B, &config(Host::B, "33434-33534")).unwrap();
    let mgmt = lab.ns(Host::Mgmt);
    let mut sshd = Vec::new();
    for (x, at) in [(&a, A_MGMT_V4), (&b, B_MGMT_V4)] {
        assert!(wait_until(Duration::from_secs(10), || x
            .cli_as("olga", &["status"])
            .ok()));
        apply_image_sysctls(x);
        sshd.push(start_sshd(x, at.into()));
        assert!(
            wait_until(Duration::from_secs(20), || ssh(
                &mgmt,
                &ann.private,
                "ann",
                at.into(),
                &["status"]
            )
            .ok()),
            "{}",
            x.log()
        );
    }
    let unpaired = |x: &Appliance<'_>| show_pair(x)["state"] == "unpaired";
    assert!(unpaired(&a) && unpaired(&b));

    // An operator may not pair.
    let r = ssh(
        &mgmt,
        &olga.private,
        "olga",
        A_MGMT_V4.into(),
        &["pair", "init"],
    );
    assert!(!r.ok() && !r.stdout.contains("PAIRING SECRET"), "{r:?}");
    assert!(unpaired(&a));

    // ann makes the pair key on A: the secret, once.
    let r = ssh(
        &mgmt,
        &ann.private,
        "ann",
        A_MGMT_V4.into(),
        &["pair", "init", "|", "display", "json"],
    );
    assert!(r.ok(), "{r:?}\n{}", a.log());
    let secret = r.json()["pairing_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(secret.len(), 71, "{}", r.stdout);

    // `pair join` on B, the secret on standard input: a malformed one changes nothing.
    let ssh_in = |args: &[&str], input: &str| ssh_with_input(&mgmt, &ann.private, args, input);
    let b_at = format!("ann@{B_MGMT_V4}");
    let join = |secret: &str| ssh_in(&[&b_at, "pair", "join"], &format!("{secret}\n"));
    let out = join("not-a-pairing-secret");
    assert!(!out.status.success(), "{out:?}");
    assert!(unpaired(&b), "{}", show_pair(&b));
    let out = join(&secret);
    assert!(out.status.success(), "{out:?}\n{}", b.log());
    assert!(
        wait_until(Duration::from_secs(10), || settled(&a, &b)),
        "the pair did not settle: A {} B {}",
        show_pair(&a),
        show_pair(&b)
    );
    // The secret was never a console line: not in ann's history, nor in the trail.
    for (x, what) in [(&a, "pair init"), (&b, "pair join")] {
        let trail = audit_entries(x, 50);
        assert!(
            trail
                .iter()
                .any(|e| e["user"] == "ann" && e.to_string().contains(what)),
            "{what}: {trail:?}"
        );
        assert!(
            !trail.iter().any(|e| e.to_string().contains(&secret)),
            "{trail:?}"
        );
    }

    // A whole configuration piped in as a script of console lines (no terminal): loaded
    // over the candidate, compared, committed on both appliances.
    let ports_in = |x: &Appliance<'_>| x.ruleset().contains("33434-33500");
    assert!(!ports_in(&a) && !ports_in(&b));
    let script = format!(
        "configure\nload override\n{}\u{4}\nshow | compare | no-more\ncommit\nexit\nexit\n",
        config(Host::A, "33434-33500")
    );
    let out = ssh_in(&["-T", &format!("ann@{A_MGMT_V4}")], &script);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("+ports = [\"33434-33500\"]") && text.contains("committed revision"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || ports_in(&a) && ports_in(&b)),
        "the loaded config is not enforced on both"
    );

    // The same on a terminal: pasted, ended by Ctrl-D, the way back to the first config.
    let cmd = ssh_terminal(&mgmt, &ann.private, "ann", A_MGMT_V4.into());
    let mut p = rexpect::session::spawn_command(cmd, Some(15_000)).unwrap();
    p.exp_string("ann@lab-a> ").unwrap();
    p.send_line("configure").unwrap();
    p.exp_string("ann@lab-a# ").unwrap();
    p.send_line("load override").unwrap();
    p.exp_string("then Ctrl-D on a line of its own:").unwrap();
    for l in config(Host::A, "33434-33534").lines() {
        p.send_line(l).unwrap();
    }
    p.send_control('d').unwrap();
    let loaded = p.exp_string("ann@lab-a# ").unwrap();
    assert!(
        loaded.contains("the candidate is the configuration loaded"),
        "{loaded}"
    );
    p.send_line("show | compare | no-more").unwrap();
    let d = p.exp_string("ann@lab-a# ").unwrap();
    assert!(d.contains("-ports = [\"33434-33500\"]"), "{d}");
    p.send_line("commit").unwrap();
    let c = p.exp_string("ann@lab-a# ").unwrap();
    assert!(c.contains("committed revision"), "{c}");
    p.send_line("exit").unwrap();
    p.exp_string("ann@lab-a> ").unwrap();
    p.send_line("exit").unwrap();
    p.exp_eof().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !ports_in(&a) && !ports_in(&b)),
        "the pasted config is not enforced on both"
    );

    // A pair-wide commit that would stop the SIP proxy takes a restart of both daemons at
    // once: refused, nothing changes, both run on.
    let listen = "listen = [\"203.0.113.5:5060\", \"[2001:db8:1::5]:5060\", \"198.51.100.5:5060\", \"[2001:db8:2::5]:5060\"]";
    let base = config(Host::A, "33434-33500");
    assert!(base.contains(listen));
    let script = format!(
        "configure\nload override\n{}\u{4}\ncommit\ndiscard\nexit\nexit\n",
        base.replacen(listen, "listen = []", 1)
    );
    let out = ssh_in(&["-T", &format!("ann@{A_MGMT_V4}")], &script);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("refused: this change means the SIP proxy stops"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_secs(1));
    for x in [&a, &b] {
        assert!(x.is_running(), "{}", x.log());
        assert!(!ports_in(x), "a refused commit changed the ruleset");
    }
    assert!(role(&a) == "active" && role(&b) == "standby");
}

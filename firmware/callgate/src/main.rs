//! # callgate — the engineers' console and admin tool
//!
//! Talks to `callgated` over its control socket. `check` and `render` work without a
//! daemon: they only read the file.
//!
//! Exit codes: 0 success; 1 the daemon refused or failed the request; 2 bad command line;
//! 3 the config file is invalid (`check`, `render`); 4 the daemon is unreachable;
//! 5 `show firewall` found drift: the kernel's table differs from the ruleset the daemon
//! applied (the counters and the differences are still printed, `"drift"` in `--json`).

mod console;
mod shell;
mod upgrade;
use callgate_firewall::error_chain as chain;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use upgrade::{read_key, running_generation};

use callgate_config::Config;
use callgate_control::{Client, Request, Response};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "callgate", version, about = "callgate console and admin tool")]
struct Args {
    /// The daemon's control socket (default: the path in /etc/callgate/control-socket if
    /// that file exists, else /run/callgate/control.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the structured reply as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate a config file; exits non-zero with its errors.
    Check { file: PathBuf },
    /// Print what a config produces, without applying it.
    Render {
        #[command(subcommand)]
        what: RenderWhat,
    },
    /// Show state from the running daemon.
    Show {
        #[command(subcommand)]
        what: ShowWhat,
    },
    /// Daemon status.
    Status,
    /// The interactive console (what a console account's login starts).
    Console,
    /// Validate and apply a config atomically, and record it as a new revision.
    Commit {
        file: PathBuf,
        /// Roll back by itself unless `callgate confirm` arrives within SECS seconds.
        #[arg(long, value_name = "SECS")]
        confirmed: Option<u64>,
        /// Apply even if it would cut management SSH from the mgmt zone.
        #[arg(long)]
        force: bool,
        /// In a pair: change this appliance alone (by default both change, or neither).
        #[arg(long)]
        this_node: bool,
    },
    /// Keep the commit made with --confirmed (in a pair: on both appliances).
    Confirm {
        /// In a pair: confirm on this appliance alone.
        #[arg(long)]
        this_node: bool,
    },
    /// Commit the text of revision N again (in a pair: on both appliances).
    Rollback {
        number: u64,
        #[arg(long)]
        force: bool,
        /// In a pair: this appliance alone.
        #[arg(long)]
        this_node: bool,
    },
    /// Differences between revisions N and M.
    Compare { a: u64, b: u64 },
    /// First start: create the key-encryption key, seal it in the TPM, print the recovery
    /// key once.
    Provision,
    /// Bring the keys back with the recovery key (read from standard input, never from the
    /// command line): a replacement board, or a measured boot that changed on purpose.
    Recover,
    /// Seal the key-encryption key again to the configured PCRs as they are now.
    Reseal,
    /// New records use a new data key; older records stay readable.
    RotateDataKey,
    /// Clear the TPM and destroy every record: nothing can be decrypted afterwards.
    Decommission {
        #[arg(long)]
        yes_destroy_all_data: bool,
    },
    /// Pair this appliance with its peer (see `[pair]` in the config).
    Pair {
        #[command(subcommand)]
        what: PairWhat,
    },
    /// A planned handover: the active appliance hands its role and addresses to the standby.
    Failover,
    /// The cloud uplink's identity.
    Uplink {
        #[command(subcommand)]
        what: UplinkWhat,
    },
    /// A data subject's request (access and export, erasure).
    Request {
        #[command(subcommand)]
        what: RequestWhat,
    },
    /// SIP: the server identity for SIP over TLS.
    Sip {
        #[command(subcommand)]
        what: SipIdWhat,
    },
    /// The transcript intake's server identity (HTTPS with mutual TLS on the private side).
    Intake {
        #[command(subcommand)]
        what: SipTlsWhat,
    },
    /// Check an update file (`scripts/image`'s callgate.update) against this appliance:
    /// the manifest's signature with the update key, every part's size and SHA-256, and
    /// no downgrade. Writes nothing.
    VerifyUpdate {
        file: PathBuf,
        /// The update key's public half (PKCS#1 RSAPublicKey, DER).
        #[arg(long, default_value = "/usr/share/callgate/update-key.der")]
        key: PathBuf,
        /// The generation the update must exceed (default: the running root's).
        #[arg(long)]
        running_generation: Option<u64>,
    },
    /// Install an update file into the root slot that did not boot (root only: it writes
    /// the raw disk): every check of `verify-update` first, then the slot's root, hash
    /// tree and boot entry; the next boot tries it (systemd-boot, 3 tries) and falls back
    /// to this slot unless it becomes healthy.
    Upgrade {
        file: PathBuf,
        /// The update key's public half (PKCS#1 RSAPublicKey, DER).
        #[arg(long, default_value = "/usr/share/callgate/update-key.der")]
        key: PathBuf,
    },
    /// The root-only end of callgate-upgrade.socket: standard input and output are a
    /// connection from an admin's console `upgrade` (see images/README.md).
    #[command(hide = true)]
    UpgradeHelper {
        #[arg(long, default_value = "/usr/share/callgate/update-key.der")]
        key: PathBuf,
        /// The daemon's control socket: each step of the install goes to its audit trail.
        #[arg(long, default_value = "/run/callgate/control.sock")]
        control_socket: PathBuf,
    },
    /// The root-only end of callgate-accounts.socket: standard input and output are the
    /// daemon's connection (the console accounts, ending console sessions, reading console
    /// processes; see images/README.md).
    #[command(hide = true)]
    AccountsHelper {
        /// The account the daemon runs as: it alone (and root) is answered.
        #[arg(long, default_value = "callgate")]
        daemon_user: String,
        /// The login shell of every console account.
        #[arg(long, default_value = "/usr/bin/callgate")]
        console_shell: PathBuf,
        /// Where each console account's `authorized_keys` file goes.
        #[arg(long, default_value = "/etc/callgate/ssh/authorized_keys")]
        authorized_keys_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SipIdWhat {
    /// SIP over TLS's server identity.
    Tls {
        #[command(subcommand)]
        what: SipTlsWhat,
    },
}

#[derive(Debug, Subcommand)]
enum SipTlsWhat {
    /// Print the certificate signing request (the key is made on the appliance, sealed
    /// under its TPM-held key, the first time).
    Csr,
    /// Install the certificate chain (PEM, leaf first) a CA signed; `-` reads it from
    /// standard input.
    InstallCert { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum UplinkWhat {
    /// Print the certificate signing request for the fleet CA (the key is made on the
    /// appliance, sealed under its TPM-held key, the first time).
    Csr,
    /// Install the certificate chain (PEM, leaf first) the fleet CA signed; `-` reads it
    /// from standard input.
    InstallCert { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum PairWhat {
    /// Make the pair key; print the pairing secret once, for `pair join` on the peer.
    Init,
    /// Join the pair: reads the secret `pair init` printed on the peer from standard input
    /// (never from the command line).
    Join,
    /// Forget the pair key: release the virtual addresses and hold none until paired again.
    Unpair,
    /// Replace the pair key with a new one, made here and sent to the peer over the sync
    /// channel (both keep it; heartbeats under the old key are refused 10 s later).
    Rekey,
}

#[derive(Debug, Subcommand)]
enum RenderWhat {
    /// The exact nftables ruleset (nft JSON) the config produces.
    Firewall { file: PathBuf },
    /// The baseline ruleset (nft JSON) the config produces: what `callgated baseline`
    /// loads, and what the image's initrd carries (`scripts/image`).
    Baseline { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum ShowWhat {
    /// Allowlist entries with packet and byte counters, and any drift of the kernel's table
    /// from the applied ruleset (exit code 5 when there is).
    Firewall,
    /// The running config.
    Config,
    /// Numbered revisions.
    History,
    /// Calls in progress (caller numbers masked).
    Calls,
    /// The last call detail records, decrypted (caller number and name masked for operators;
    /// an admin's listing shows them and is audited).
    Cdrs {
        /// How many, newest last.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// The pair: role, peer, term, heartbeat paths, virtual addresses.
    Pair,
    /// SIP proxy counters (`show sip stats`).
    Sip {
        #[command(subcommand)]
        what: SipWhat,
    },
    /// The interactive console sessions: who, from where, since when.
    Sessions,
    /// The cloud uplink: state, broker, certificate and expiry, backlog, acknowledgements.
    Uplink,
    /// The audit trail: who did what, from which login session, and the result (admins).
    Audit {
        /// How many, newest last.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// What is held about a caller (by number, E.164): records, key, erasures (admins).
    Subject { number: String },
    /// The root slots, the version of the running one, which one booted, boot counting
    /// (read here, without the daemon).
    System,
}

#[derive(Debug, Subcommand)]
enum RequestWhat {
    /// A subject's (a caller's) rights: access and export, erasure (admins; audited).
    Subject {
        #[command(subcommand)]
        what: SubjectWhat,
    },
}

#[derive(Debug, Subcommand)]
enum SubjectWhat {
    /// Every record of the caller, decrypted, as JSON or CSV (printed).
    Export {
        number: String,
        #[arg(long, default_value = "json")]
        format: callgate_control::ExportFormat,
    },
    /// Destroy the caller's key (their number and name become unreadable in every record)
    /// and print the erasure receipt, signed with the uplink identity.
    Erase { number: String },
}

#[derive(Debug, Subcommand)]
enum SipWhat {
    /// Counters since the daemon started.
    Stats,
}

const EXIT_REFUSED: u8 = 1;
const EXIT_INVALID: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;
const EXIT_DRIFT: u8 = 5;

fn load(file: &Path) -> Result<(String, Config), ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("{}: cannot read the file: {e}", file.display());
        ExitCode::from(EXIT_INVALID)
    })?;
    let cfg = Config::parse(&text, file).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_INVALID)
    })?;
    Ok((text, cfg))
}

/// Where the daemon listens: `/etc/callgate/control-socket` names it where the appliance
/// moved it (the lab does), else the default.
fn default_socket() -> PathBuf {
    std::fs::read_to_string("/etc/callgate/control-socket")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map_or_else(
            || PathBuf::from("/run/callgate/control.sock"),
            PathBuf::from,
        )
}

/// `verify-update`: the whole file checked, nothing written.
fn verify_update(file: &Path, key: &Path, running: Option<u64>) -> ExitCode {
    let run = || -> Result<callgate_system::update::Manifest, String> {
        let key = read_key(key)?;
        let running = match running {
            Some(g) => g,
            None => running_generation()?,
        };
        let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        callgate_system::update::check(&mut std::io::BufReader::new(f), &key, running)
            .map_err(|e| chain(&e))
    };
    match run() {
        Ok(m) => {
            println!(
                "{}: good: {m}; signature and digests verified",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: refused: {e}", file.display());
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// `show system`: read from the running system, not from the daemon (it works while the
/// daemon is down).
fn show_system(json: bool) -> ExitCode {
    match callgate_system::read(Path::new("/")) {
        Ok(s) => {
            let text = if json {
                serde_json::to_string_pretty(&s).unwrap_or_default() + "\n"
            } else {
                s.to_string()
            };
            let _ = write!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callgate show system: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = match shell::invocation(&argv) {
        Ok(shell::Invocation::Tool) => Args::parse(),
        // A login shell: the console, with its own command tree.
        Ok(shell::Invocation::Command(words)) => {
            return console::run_once(&default_socket(), &words);
        }
        Ok(shell::Invocation::Interactive) => return console::run(&default_socket()),
        Err(e) => {
            eprintln!("callgate: {e}");
            return ExitCode::from(2);
        }
    };
    let req = match args.cmd {
        Cmd::Check { file } => {
            return match load(&file) {
                Ok((text, cfg)) => match cfg.lockout_check(&file, &text) {
                    Ok(()) => {
                        println!("{}: ok", file.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::from(EXIT_INVALID)
                    }
                },
                Err(code) => code,
            };
        }
        Cmd::Render { what } => {
            let (file, baseline) = match what {
                RenderWhat::Firewall { file } => (file, false),
                RenderWhat::Baseline { file } => (file, true),
            };
            return match load(&file) {
                Ok((_, cfg)) => {
                    let rs = if baseline {
                        callgate_firewall::render_baseline(Some(&cfg))
                    } else {
                        callgate_firewall::render(&cfg)
                    };
                    let doc = callgate_firewall::nft::document(&rs);
                    match serde_json::to_string_pretty(&doc) {
                        Ok(s) => {
                            // A closed pipe (`| head`) is not an error worth a panic.
                            let _ = writeln!(std::io::stdout().lock(), "{s}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("cannot encode the ruleset: {e}");
                            ExitCode::from(EXIT_REFUSED)
                        }
                    }
                }
                Err(code) => code,
            };
        }
        Cmd::Show { what } => match what {
            ShowWhat::System => return show_system(args.json),
            ShowWhat::Firewall => Request::ShowFirewall,
            ShowWhat::Config => Request::ShowConfig,
            ShowWhat::History => Request::ShowHistory,
            ShowWhat::Audit { last } => Request::ShowAudit { last },
            ShowWhat::Sessions => Request::ShowSessions,
            ShowWhat::Calls => Request::ShowCalls,
            ShowWhat::Cdrs { last } => {
                if !args.json {
                    // Printed as the parts arrive: neither side holds the whole listing.
                    let socket = args.socket.clone().unwrap_or_else(default_socket);
                    return print_streamed(
                        &socket,
                        &Request::ShowCdrs {
                            last,
                            text_only: true,
                        },
                    );
                }
                Request::ShowCdrs {
                    last,
                    text_only: false,
                }
            }
            ShowWhat::Subject { number } => Request::ShowSubject { number },
            ShowWhat::Pair => Request::ShowPair,
            ShowWhat::Uplink => Request::ShowUplink,
            ShowWhat::Sip {
                what: SipWhat::Stats,
            } => Request::ShowSipStats,
        },
        Cmd::Status => Request::Status,
        Cmd::VerifyUpdate {
            file,
            key,
            running_generation,
        } => return verify_update(&file, &key, running_generation),
        Cmd::Upgrade { file, key } => {
            let socket = args.socket.clone().unwrap_or_else(default_socket);
            return upgrade::run(&file, &key, &socket);
        }
        Cmd::UpgradeHelper {
            key,
            control_socket,
        } => return upgrade::helper(&key, &control_socket),
        Cmd::AccountsHelper {
            daemon_user,
            console_shell,
            authorized_keys_dir,
        } => return accounts_helper(&daemon_user, console_shell, authorized_keys_dir),
        Cmd::Console => {
            return console::run(&args.socket.clone().unwrap_or_else(default_socket));
        }
        Cmd::Commit {
            file,
            confirmed,
            force,
            this_node,
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: cannot read the file: {e}", file.display());
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            Request::Commit {
                text,
                origin: file,
                force,
                confirmed_secs: confirmed,
                this_node,
            }
        }
        Cmd::Confirm { this_node } => Request::Confirm { this_node },
        Cmd::Rollback {
            number,
            force,
            this_node,
        } => Request::Rollback {
            number,
            force,
            this_node,
        },
        Cmd::Compare { a, b } => Request::Compare { a, b },
        Cmd::Provision => Request::Provision,
        Cmd::Recover => {
            let mut key = String::new();
            if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
                eprintln!("callgate recover: type or pipe the recovery key on standard input");
                return ExitCode::from(2);
            }
            Request::Recover {
                recovery_key: key.trim().to_owned(),
            }
        }
        Cmd::Reseal => Request::Reseal,
        Cmd::RotateDataKey => Request::RotateDataKey,
        Cmd::Decommission {
            yes_destroy_all_data,
        } => Request::Decommission {
            confirm: yes_destroy_all_data,
        },
        Cmd::Pair { what } => match what {
            PairWhat::Init => Request::PairInit,
            PairWhat::Join => {
                let mut secret = String::new();
                if std::io::stdin().read_line(&mut secret).is_err() || secret.trim().is_empty() {
                    eprintln!(
                        "callgate pair join: type or pipe the pairing secret on standard input"
                    );
                    return ExitCode::from(2);
                }
                Request::PairJoin {
                    secret: secret.trim().to_owned(),
                }
            }
            PairWhat::Unpair => Request::Unpair,
            PairWhat::Rekey => Request::PairRekey,
        },
        Cmd::Failover => Request::Failover,
        Cmd::Request {
            what: RequestWhat::Subject { what },
        } => match what {
            SubjectWhat::Export { number, format } => Request::SubjectExport { number, format },
            SubjectWhat::Erase { number } => Request::SubjectErase { number },
        },
        Cmd::Uplink { what } => match what {
            UplinkWhat::Csr => Request::UplinkCsr,
            UplinkWhat::InstallCert { file } => match read_pem_file(&file) {
                Ok(pem) => Request::UplinkInstallCert { pem },
                Err(code) => return code,
            },
        },
        Cmd::Sip {
            what: SipIdWhat::Tls { what },
        } => match what {
            SipTlsWhat::Csr => Request::SipTlsCsr,
            SipTlsWhat::InstallCert { file } => match read_pem_file(&file) {
                Ok(pem) => Request::SipTlsInstallCert { pem },
                Err(code) => return code,
            },
        },
        Cmd::Intake { what } => match what {
            SipTlsWhat::Csr => Request::IntakeCsr,
            SipTlsWhat::InstallCert { file } => match read_pem_file(&file) {
                Ok(pem) => Request::IntakeInstallCert { pem },
                Err(code) => return code,
            },
        },
    };
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    let resp: Response = match Client::connect(&socket).and_then(|mut c| c.request(&req)) {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("callgate: {msg}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp.data).unwrap_or_default()
        );
    } else if resp.ok {
        print!("{}", resp.text);
        if !resp.text.ends_with('\n') {
            println!();
        }
    }
    if resp.ok {
        if drifted(&req, &resp) {
            ExitCode::from(EXIT_DRIFT)
        } else {
            ExitCode::SUCCESS
        }
    } else {
        eprintln!("{}", resp.text);
        ExitCode::from(EXIT_REFUSED)
    }
}

/// Sends `req` and prints each part's text as it arrives.
fn print_streamed(socket: &Path, req: &Request) -> ExitCode {
    let mut refused: Option<String> = None;
    let mut out = std::io::stdout().lock();
    let r = Client::connect(socket).and_then(|mut c| {
        c.request_parts(req, |part| {
            if part.ok {
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = out.write_all(part.text.as_bytes());
            } else {
                refused = Some(part.text);
            }
        })
    });
    let _ = out.flush();
    match (r, refused) {
        (Err(e), _) => {
            eprintln!("callgate: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        (Ok(()), Some(why)) => {
            eprintln!("{why}");
            ExitCode::from(EXIT_REFUSED)
        }
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

/// Whether a `show firewall` reply reports drift (for monitoring scripts: exit code 5).
fn drifted(req: &Request, resp: &Response) -> bool {
    matches!(req, Request::ShowFirewall)
        && resp.data["drift"].as_array().is_some_and(|d| !d.is_empty())
}

/// A certificate chain from `file` (`-`: standard input), or the exit code after saying
/// why not.
fn read_pem_file(file: &std::path::Path) -> Result<String, ExitCode> {
    let read = if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
    } else {
        std::fs::read_to_string(file)
    };
    read.map_err(|e| {
        eprintln!("{}: cannot read the file: {e}", file.display());
        ExitCode::from(EXIT_INVALID)
    })
}

/// `callgate accounts-helper`: serves the daemon's connection on standard input (socket
/// activation) with `callgate_accounts::privileged::serve`, for root and `daemon_user`.
fn accounts_helper(daemon_user: &str, shell: PathBuf, keys_dir: PathBuf) -> ExitCode {
    use std::os::fd::AsFd;
    let mut allowed = vec![0];
    match nix::unistd::User::from_name(daemon_user) {
        Ok(Some(u)) => allowed.push(u.uid.as_raw()),
        _ => eprintln!("callgate accounts-helper: no user {daemon_user}: root alone is answered"),
    }
    let stream = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::os::unix::net::UnixStream::from(fd),
        Err(e) => {
            eprintln!("callgate accounts-helper: standard input: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = callgate_accounts::Settings {
        etc: PathBuf::from("/etc"),
        keys_dir,
        shell,
    };
    match callgate_accounts::privileged::serve(stream, &allowed, &settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callgate accounts-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_show_firewall_reply_with_differences_is_drift() {
        let reply = |drift: serde_json::Value| {
            Response::ok("", serde_json::json!({"entries": [], "drift": drift}))
        };
        let one = reply(serde_json::json!([
            "chain input, rule 3 \"x\": matches differ"
        ]));
        assert!(drifted(&Request::ShowFirewall, &one));
        assert!(!drifted(
            &Request::ShowFirewall,
            &reply(serde_json::json!([]))
        ));
        assert!(!drifted(&Request::ShowConfig, &one));
        assert!(!drifted(&Request::ShowFirewall, &Response::err("locked")));
    }
}

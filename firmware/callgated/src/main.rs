//! # callgated — the callgate appliance daemon
//!
//! Wiring only: it parses its command line, sets up logging, and starts the fixed set of
//! long-lived components (firewall, config, control, the SIP proxy and its record writer,
//! the pair's heartbeat thread), each a handle plus a task or thread from its own crate.
//! The uplink plugs in here later. `callgated --vip-guard` is the pair's VIP guard
//! (callgate-ha), started by the heartbeat thread, never by hand.
//!
//! Boot order: baseline ruleset (only if no callgate table is in force yet) → settle an
//! expired confirm window → load and verify the config → apply the full policy → control
//! socket → `READY=1` to systemd.
//!
//! ## Exit codes
//! | code | meaning |
//! |---|---|
//! | 0 | clean shutdown (SIGTERM/SIGINT), or a one-shot subcommand succeeded |
//! | 1 | internal error (thread or runtime could not start) |
//! | 2 | bad command line |
//! | 3 | the config is invalid or unreadable: the baseline ruleset stays in force |
//! | 4 | the firewall could not be applied: the previous ruleset stays in force |
//! | 5 | the state directory or control socket is unusable |
//! | 75 | a commit changed what the daemon starts with (the SIP proxy, the pair: `restart`); it stopped in order to be started again by its supervisor |
//! | SIGABRT | a panic in any thread (see `abort_on_panic`): systemd restarts the daemon |

/// mimalloc, not the C library's allocator. With glibc's, the daemon's resident memory kept
/// growing with the records written (per-thread arenas: the SIP thread builds a record, the
/// record writer seals it, sled's threads keep and free its pages; rounds of 15,000 calls
/// gave 110 → 174 → 236 → 255 MiB), where mimalloc levels off (102 → 118 → 132 → 134 MiB).
/// The shipped binary is static musl, whose allocator is slow under this many small
/// allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod accounts;
mod calls;
mod calls_view;
mod cloud_subjects;
mod dispatch;
mod human;
mod identity;
mod intake;
mod lifecycle;
mod lockouts;
mod logging;
mod pair;
mod pair_config;
mod replica;
mod restart;
mod retention;
mod sessions;
mod sip_tls;
mod subjects;
mod uplink;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use callgate_accounts::privileged::{self, Privileged};
use callgate_config::Config;
use callgate_firewall::{error_chain, render_baseline, Firewall, FirewallHandle, Nft, Ruleset};
use callgate_revisions::{Applier, Pending, RevisionError, Revisions};
use callgate_vault::Custody;
use clap::{Parser, Subcommand};

pub const EXIT_INTERNAL: u8 = 1;
pub const EXIT_CONFIG: u8 = 3;
pub const EXIT_FIREWALL: u8 = 4;
pub const EXIT_STATE: u8 = 5;
/// A commit changed what the daemon is built with as it starts (`restart`): it stopped in
/// order, for its supervisor to start it again.
pub const EXIT_RESTART: u8 = 75;

#[derive(Debug, Parser)]
#[command(name = "callgated", version, about = "The callgate appliance daemon")]
struct Args {
    /// The config file (always holds the running config).
    #[arg(long, default_value = "/etc/callgate/callgate.toml", global = true)]
    config: PathBuf,
    /// Where revisions and the pending-confirm record live.
    #[arg(long, default_value = "/var/lib/callgate", global = true)]
    state_dir: PathBuf,
    /// The control socket the `callgate` tool talks to.
    #[arg(long, default_value = "/run/callgate/control.sock")]
    control_socket: PathBuf,
    /// The TPM helper (the only program that talks to the TPM).
    #[arg(
        long,
        default_value = "/usr/libexec/callgate/callgate-seal",
        global = true
    )]
    seal_helper: PathBuf,
    /// The nft binary.
    #[arg(long, default_value = "nft", global = true)]
    nft: PathBuf,
    /// How long shutdown may take before remaining work is abandoned.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// The console: the login shell of every console account.
    #[arg(long, default_value = "/usr/bin/callgate")]
    console_shell: PathBuf,
    /// Where each console account's `authorized_keys` file goes (sshd reads them there).
    #[arg(long, default_value = "/etc/callgate/ssh/authorized_keys")]
    authorized_keys_dir: PathBuf,
    /// The accounts helper's socket (`callgate accounts-helper`, root): the console
    /// accounts, ending a console session and reading a console process's login uid,
    /// session and origin are asked of it. Without it the daemon does them itself, which
    /// takes root (the image runs the daemon as a user of its own, with the helper).
    #[arg(long)]
    accounts_helper: Option<PathBuf>,
    /// The size at which the call-record log starts a new segment, KiB (64 MiB by
    /// default). A segment's space comes back once retention or erasure left no record
    /// in it: smaller segments give it back sooner, in more files.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    record_segment_kib: u64,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the baseline ruleset (management and sync only) and exit. Runs before any
    /// interface comes up; with an unreadable config it allows only loopback and replies.
    Baseline,
    /// Internal: wait for a confirm deadline and roll back unless confirmed. Started by the
    /// daemon in its own session so that it outlives a killed daemon.
    #[command(hide = true)]
    RollbackGuard {
        #[arg(long)]
        candidate: u64,
    },
}

/// Applies straight through nft (for one-shot subcommands and the guard).
struct DirectApplier(Firewall);

impl Applier for DirectApplier {
    fn apply(&self, ruleset: &Ruleset, _generation: u64) -> Result<(), String> {
        self.0
            .apply(ruleset, None)
            .map(|_| ())
            .map_err(|e| error_chain(&e))
    }
}

/// Applies through the firewall thread (the daemon's config thread uses this).
struct HandleApplier(FirewallHandle);

impl Applier for HandleApplier {
    fn apply(&self, ruleset: &Ruleset, generation: u64) -> Result<(), String> {
        self.0
            .blocking_apply(Arc::new(ruleset.clone()), generation)
            .map(|r| {
                log::info!(
                    "firewall generation {generation} applied: {} elements, apply {:.1} ms, verify {:.1} ms",
                    r.elements,
                    r.apply_ms,
                    r.verify_ms
                );
            })
            .map_err(|e| error_chain(&e))
    }
}

fn main() -> ExitCode {
    // The VIP guard (started by the heartbeat thread, never by hand): a child that removes
    // the virtual addresses when this daemon dies or stalls. See callgate_ha's guard docs.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--vip-guard") {
        return vip_guard(&argv[2..]);
    }
    let thp = no_huge_pages();
    let args = Args::parse();
    logging::init();
    abort_on_panic();
    if let Err(e) = thp {
        log::warn!("transparent huge pages stay allowed: {e}");
    }
    let fw = Firewall::new(Nft {
        program: args.nft.clone(),
    });
    match &args.cmd {
        Some(Cmd::Baseline) => baseline(&args, &fw),
        Some(Cmd::RollbackGuard { candidate }) => guard(&args, fw, *candidate),
        None => daemon(args, fw),
    }
}

/// `callgated --vip-guard SILENCE_MS IFACE=ADDR/LEN...`
fn vip_guard(args: &[String]) -> ExitCode {
    logging::init();
    let Some(silence) = args.first().and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("usage: callgated --vip-guard SILENCE_MS IFACE=ADDR/LEN...");
        return ExitCode::from(2);
    };
    let mut vips = Vec::new();
    for a in &args[1..] {
        match a.parse::<callgate_ha::VipSpec>() {
            Ok(v) => vips.push(v),
            Err(e) => {
                eprintln!("callgated --vip-guard: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::from(callgate_ha::run_guard(
        &vips,
        Duration::from_millis(silence),
    ))
}

/// A panic anywhere (the SIP thread, the record writer, a runtime worker) ends the whole
/// daemon at once, so systemd restarts it (`Restart=always`): a task that died quietly
/// while the rest keeps answering `status` would stop calls without anyone noticing. The
/// kernel keeps enforcing the last ruleset meanwhile, and records of answered calls are
/// already durable.
///
/// The log line names the thread and the place; of the message, what cannot hold a caller
/// ([`panic_message`]).
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let place = info
            .location()
            .map_or_else(|| "?".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
        let message = panic_message(info.payload());
        log::error!("panic in thread {name} at {place}: {message}; stopping the daemon");
        log::logger().flush();
        std::process::abort();
    }));
}

/// A panic's message as the log may show it. A literal (`panic!("…")`) is the code's
/// own words; a formatted message may quote what the daemon was handling (the standard
/// library quotes a string it could not slice, `unwrap` the error's contents), so every
/// backquoted part is cut and every number-like run replaced by its keyed tag.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        return (*s).to_owned();
    }
    let Some(s) = payload.downcast_ref::<String>() else {
        return "(no message)".to_owned();
    };
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str("`…`");
        }
    }
    callgate_cdr::scrub(&out).into_owned()
}

/// No transparent huge pages for this process. mimalloc asks for them on its arena
/// (`MADV_HUGEPAGE`), and with the kernel's `madvise` THP mode every 2 MiB region it
/// touches then becomes resident whole, though most of it holds no live data. Measured on
/// a lab daemon warmed by 1,000 calls: VmRSS 79 MiB idle and 108 MiB with 10,000 dialogs
/// (58–65 MiB of it huge pages), against 47 and 74 MiB without. The same as mimalloc's
/// `allow_thp=0` option, set before anything else runs.
fn no_huge_pages() -> nix::Result<()> {
    nix::sys::prctl::set_thp_disable(true)
}

fn baseline(args: &Args, fw: &Firewall) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => Some(c),
        Err(e) => {
            log::error!("config unusable, baseline allows only loopback and replies: {e}");
            None
        }
    };
    match fw.apply(&render_baseline(cfg.as_ref()), None) {
        Ok(_) => {
            log::info!("baseline ruleset installed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("baseline ruleset failed: {}", error_chain(&e));
            ExitCode::from(EXIT_FIREWALL)
        }
    }
}

fn guard(args: &Args, fw: Firewall, candidate: u64) -> ExitCode {
    let revs = match Revisions::new(&args.state_dir, &args.config, None, None) {
        Ok(r) => r,
        Err(e) => {
            log::error!("rollback guard: {}", error_chain(&e));
            return ExitCode::from(EXIT_STATE);
        }
    };
    let applier = DirectApplier(fw);
    loop {
        let pending = match revs.store.pending() {
            Ok(Some(p)) if p.candidate == candidate => p,
            // confirmed, rolled back by the daemon, or superseded: nothing left to guard
            Ok(_) => return ExitCode::SUCCESS,
            Err(e) => {
                log::error!("rollback guard: {}", error_chain(&e));
                return ExitCode::from(EXIT_STATE);
            }
        };
        // The daemon's own timer goes first; the guard acts one second later.
        let now = callgate_revisions::now_ms();
        if now >= pending.deadline_ms.saturating_add(1000) {
            return match revs.rollback_if_due(now, &applier) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("rollback guard: rollback failed: {}", error_chain(&e));
                    ExitCode::from(EXIT_FIREWALL)
                }
            };
        }
        let left = pending.deadline_ms.saturating_add(1000).saturating_sub(now);
        std::thread::sleep(Duration::from_millis(left.min(500)));
    }
}

fn spawn_guard(config: &Path, state: &Path, nft: &Path) -> callgate_revisions::GuardSpawner {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("callgated"));
    let config = config.to_path_buf();
    let state = state.to_path_buf();
    let nft = nft.to_path_buf();
    Box::new(move |p: &Pending| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--nft")
            .arg(&nft)
            .arg("rollback-guard")
            .arg("--candidate")
            .arg(p.candidate.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // its own process group: a signal to the daemon's group does not reach it
            .process_group(0)
            .spawn()
            .map(|child| {
                log::info!(
                    "rollback guard pid {} watches commit {}",
                    child.id(),
                    p.candidate
                );
            })
    })
}

fn exit_for(e: &RevisionError) -> u8 {
    match e {
        RevisionError::Invalid(_)
        | RevisionError::Lockout(_)
        | RevisionError::ConfigFile { .. } => EXIT_CONFIG,
        RevisionError::Apply(_) => EXIT_FIREWALL,
        _ => EXIT_STATE,
    }
}

fn daemon(args: Args, fw: Firewall) -> ExitCode {
    // 1. Baseline, only when nothing of ours is enforcing yet (a restart keeps the last
    //    applied policy in force; replacing it with the baseline would cut live flows).
    match callgate_firewall::readback::existing(callgate_firewall::model::TABLE) {
        Ok((chains, _)) if chains.is_empty() => {
            if baseline(&args, &fw) != ExitCode::SUCCESS {
                return ExitCode::from(EXIT_FIREWALL);
            }
        }
        Ok(_) => log::info!(
            "the last applied ruleset is in force; keeping it until the config is applied"
        ),
        Err(e) => {
            log::error!("cannot read the firewall: {}", error_chain(&e));
            return ExitCode::from(EXIT_FIREWALL);
        }
    }

    // 2. The config file says where the keys are; a config that does not parse stops here
    //    (the baseline stays in force).
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            log::error!("the config is invalid; the baseline stays in force:\n{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    // 3. The firewall component.
    let (firewall, fw_thread) = match FirewallHandle::spawn(fw) {
        Ok(x) => x,
        Err(e) => {
            log::error!("cannot start the firewall thread: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };

    // 4. Keys: unseal the KEK. Without it the appliance stays locked (baseline, no
    //    records, no call routing) until an engineer provisions or recovers.
    let custody = Custody {
        state_dir: args.state_dir.clone(),
        seal_bin: args.seal_helper.clone(),
        tcti: cfg.vault.tcti.as_str().to_owned(),
        pcrs: cfg.vault.pcr_list().to_vec(),
        software: cfg.vault.danger_software_keys,
        allow_unmeasured: cfg.vault.danger_allow_unmeasured_pcrs,
    };
    if custody.software {
        log::warn!(
            "danger_software_keys = true: records are encrypted under a key kept in a plain \
             file ({}), not in the TPM; a copy of the disk can be decrypted",
            custody.blob_path().display()
        );
    }
    let initial = custody.unlock();

    // 5. The async side: control socket, lifecycle, signals.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("callgated-rt")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let ctx = lifecycle::Ctx {
        config_path: args.config.clone(),
        state_dir: args.state_dir.clone(),
        control_socket: args.control_socket.clone(),
        drain: Duration::from_secs(args.drain_secs),
        record_segment_bytes: args.record_segment_kib * 1024,
        nft: args.nft.clone(),
        custody,
        firewall,
        accounts: Arc::new(match &args.accounts_helper {
            Some(socket) => Privileged::Helper(privileged::Client::new(socket.clone())),
            None => Privileged::InProcess(callgate_accounts::Settings {
                etc: PathBuf::from("/etc"),
                keys_dir: args.authorized_keys_dir.clone(),
                shell: args.console_shell.clone(),
            }),
        }),
    };
    let code = rt.block_on(lifecycle::run(ctx, initial));
    rt.shutdown_timeout(Duration::from_secs(args.drain_secs));
    join_with_deadline(vec![fw_thread], Duration::from_secs(args.drain_secs));
    log::info!("callgated stopped");
    code
}

fn join_with_deadline(threads: Vec<std::thread::JoinHandle<()>>, deadline: Duration) {
    let start = std::time::Instant::now();
    for t in threads {
        while !t.is_finished() && start.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::warn!("a component did not stop within {deadline:?}; exiting anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_message_keeps_no_caller() {
        let literal: &'static str = "fault injection: CALLGATE_FAULT_SIP_PANIC is set";
        assert_eq!(panic_message(&literal), literal);
        // What the standard library says when a string cannot be sliced.
        let sliced = "byte index 3 is not a char boundary; it is inside 'é' (bytes 2..4) of \
                      `Zoë Quimby <sip:+14155550142@x>`"
            .to_owned();
        let m = panic_message(&sliced);
        assert!(m.starts_with("byte index 3 is not a char boundary"), "{m}");
        assert!(!m.contains("Quimby") && !m.contains("4155550142"), "{m}");
        let unwrapped =
            "called `Result::unwrap()` on an `Err` value: Parse(\"+14155550142\")".to_owned();
        let m = panic_message(&unwrapped);
        assert!(!m.contains("4155550142"), "{m}");
        assert_eq!(panic_message(&42u8), "(no message)");
    }
}

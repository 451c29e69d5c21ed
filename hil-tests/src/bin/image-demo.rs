//! The appliance image on the built-in lab (`scripts/demo --image`): the image that
//! `scripts/image` built boots under QEMU (TCG) with Secure Boot on and a swtpm as its TPM,
//! in appliance A's place on the namespace lab, handed a provisioning item with a first
//! admin. It shows what the boot established (the boot report on the serial console), the
//! admin's SSH login with the real OpenSSH client and `show system` / `show firewall`, the
//! WAN side dropping what the factory config does not allow, and, once the VM is off, that
//! a byte scan of the raw disk does not find the admin's key that the state disk holds.
//! Everything is torn down at the end, on failure too.
//!
//! Needs `$CALLGATE_IMAGE_DIR` (the image's directory). Exit code 0 when every step did
//! what the image promises, 1 otherwise.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use hil_tests::vm::{file_contains, Board, Image, Ready, Vm};
use hil_tests::{addr, Host};

/// RAM of the VM.
const MEM_MIB: u32 = 1024;
/// Power-on to the ready marker, under TCG.
const BOOT: Duration = Duration::from_secs(360);
/// The ready marker to the boot report's last line on the console (through the journal).
const REPORT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("\nimage demo ok: the image booted verified, enforcing and provisioned, and kept its state disk sealed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nimage demo FAILED: a step above did not do what the image promises");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("\nimage demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a check's outcome; its verdict.
fn check(ok: bool, what: &str) -> bool {
    println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
    ok
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let image = Image::from_env()?;
    println!("==> the lab: management host, carrier, and appliance A's place for the VM");
    let b = Board::with_hosts(
        &image,
        "# the installer's provisioning item\n",
        MEM_MIB,
        &[Host::Carrier],
    )?;
    let carrier = b.lab.ns(Host::Carrier);
    let (board, disk) = (&b.boot, &b.boot.disk);

    println!(
        "==> powering on (QEMU TCG, OVMF with Secure Boot, swtpm); this takes a minute or two"
    );
    let mut vm = Vm::start(&image, board)?;
    let marker = vm.wait_ready(BOOT);
    // The port's marker line (the firmware writes its own text to every serial port).
    println!(
        "the ready marker on the second serial port (ttyS1): {}",
        vm.marker_lines().join(" / ")
    );
    // The report's last line reaches the console through the journal: a moment later.
    vm.wait_for_any(
        &["callgate-boot: ready", "callgate-boot: NOT READY"],
        REPORT,
    );
    let console = vm.console();
    let report: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("callgate-boot: "))
        .map(|(_, r)| r)
        .collect();
    println!("\nthe boot report on the serial console (ttyS0):");
    for l in &report {
        println!("  {l}");
    }
    let mut ok = check(
        matches!(marker, Ready::Ready(_)) && report.contains(&"ready"),
        "the ready marker and the boot report say ready",
    );
    let starts = |p: &str| report.iter().any(|l| l.starts_with(p));
    ok &= check(starts("secure_boot=on"), "Secure Boot on");
    ok &= check(starts("lockdown=integrity"), "kernel lockdown (integrity)");
    ok &= check(
        report.iter().any(|l| {
            l.starts_with("root=/dev/mapper/root ") && l.ends_with("ro=yes verity=verified")
        }),
        "the root read-only, verified by dm-verity",
    );
    ok &= check(starts("tpm=2 "), "a TPM 2.0");
    ok &= check(
        starts("firewall=enforcing ") && report.iter().any(|l| l.ends_with("input_policy=drop")),
        "the firewall enforcing, input policy drop",
    );
    ok &= check(
        starts("state=unlocked type=LUKS2 "),
        "the state disk made and unlocked by the TPM",
    );
    ok &= check(
        console.contains("callgate-provision: provisioned: admin 'ann'"),
        "the provisioning item made the first admin, ann",
    );
    if !ok {
        println!("\nconsole:\n{console}");
        return Ok(false);
    }

    println!("\n==> ann logs in over SSH from the management host (OpenSSH, her key)");
    let as_ann = |args: &[&str]| b.ssh_ann(args, None);
    // Any answer (a `show system` output always holds the empty string).
    let (up, last) = match b.show_system("", Duration::from_secs(90)) {
        Ok(out) => (true, out),
        Err(last) => (false, last),
    };
    println!("$ ssh ann@{} show system\n{last}", addr::A_MGMT_V4);
    ok &= check(up, "ann's console answers `show system`");
    let shell = as_ann(&["id"])?;
    ok &= check(
        !shell.ok() && !shell.stdout.contains("uid="),
        "a shell command over SSH gets the console, not a shell",
    );

    println!("\n==> the carrier side (WAN): the factory config allows nothing there");
    for (what, a) in [
        ("IPv4", IpAddr::from(addr::A_WAN_V4)),
        ("IPv6", IpAddr::from(addr::A_WAN_V6)),
    ] {
        ok &= check(
            !carrier.tcp_connect(None, a, 22, Duration::from_secs(2)),
            &format!("SSH to the WAN address ({what} {a}) gets no answer"),
        );
        ok &= check(
            !carrier.tcp_connect(None, a, 5060, Duration::from_secs(2)),
            &format!("SIP over TCP to the WAN address ({what}) gets no answer"),
        );
    }

    let fw = as_ann(&["show", "firewall"])?;
    println!(
        "$ ssh ann@{} show firewall   (the input chain)\n{}",
        addr::A_MGMT_V4,
        fw.stdout
            .lines()
            .filter(|l| l.starts_with("chain") || l.starts_with("input"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The probes above are what the input chain's default drop counted.
    let dropped = fw
        .stdout
        .lines()
        .find(|l| l.starts_with("input") && l.split_whitespace().nth(1) == Some("default-drop"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    ok &= check(
        fw.ok() && dropped > 0,
        &format!("`show firewall`: the default drop counted {dropped} packets"),
    );

    println!("\n==> powered off: a byte scan of the raw disk for ann's key (on the state disk)");
    drop(vm);
    let key_b64 = b.ann.public.split_whitespace().nth(1).unwrap_or_default();
    let found = !key_b64.is_empty() && file_contains(disk, key_b64)?;
    ok &= check(
        !found,
        "the raw disk does not hold the admin's key in the clear (LUKS2 sealed to the TPM)",
    );
    Ok(ok)
}

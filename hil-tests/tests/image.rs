#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The appliance image (`scripts/image`, found through `$CALLGATE_IMAGE_DIR`) booted under
//! QEMU with Secure Boot on (Debian's secboot OVMF, the image's certificate enrolled) and a
//! swtpm as its TPM. What is asserted is what the guest printed on its serial console (the
//! firmware's refusals, the kernel's panic, the image's boot report) and, for the VM on the
//! namespace lab, what a port scan from the lab sees.
//!
//! - the image boots to a ready daemon with the firewall enforcing, on a verified,
//!   read-only root, with Secure Boot, lockdown and the TPM; on the lab in appliance A's
//!   place, a port scan (nmap) of its WAN side finds nothing that answers (all 65,535 TCP
//!   ports, IPv4 and IPv6, and a UDP sample with SIP), and of its management side SSH
//!   only;
//! - one flipped byte in the root partition stops the boot (dm-verity);
//! - the firmware refuses a slot's UKI unsigned, or signed by a key it does not trust
//!   (systemd-boot, signed, asks for it; nothing of Linux runs);
//! - A/B updates over an admin's SSH console: a tampered update refused with nothing
//!   written, a good one installed into the other slot, booted, found healthy and
//!   blessed; a broken one (its daemon never ready) tried three times and the previous
//!   slot booted again by itself;
//! - the state disk: made at first boot (LUKS2, sealed to the TPM's PCR 7, a recovery key
//!   shown once on the console), unlocked by the same TPM alone at the next boot with what
//!   the appliance left there; moved to another board it stays locked, the daemon does not
//!   run and the raw disk holds none of it in the clear; under another Secure Boot state
//!   it stays locked, the console says why, and the recovery key opens it;
//! - the installer's provisioning item makes the first admin once: SSH from the lab's
//!   management host with the real OpenSSH client runs `show system`, the account is back
//!   after a reboot (the committed config is on the state disk), a second item is ignored;
//!   an item with anything more than a login and a key is refused whole;
//! - (no VM) the update file the build wrote verifies with the shipped `callgate` and the
//!   key in the root; a flipped byte, another key, the same generation are refused;
//! - (no VM) the root holds the firmware, its units and the factory config, and no
//!   package manager, compiler, docs or SSH host key;
//! - (no VM) the network item a hypervisor hands the image sets addresses and nothing else:
//!   any other text refuses it whole;
//! - (no VM) every service of ours is sandboxed: `systemd-analyze security` scores each
//!   unit at or under its ceiling (2.0 for all but the daemon and the state disk's unit,
//!   whose jobs keep them above it: images/README.md says why).
//!
//! scripts/test runs the VM tests apart from the other system tests (their names start
//! with `image_vm_`): TCG boots load both cores.

use std::net::IpAddr;
use std::time::Duration;

use hil_tests::console::{ssh, KeyPair};
use hil_tests::vm::{
    copy_disk, esp_entries, file_contains, flip_byte, luks_key_opens, partition, replace_uki,
    uki_signed_by_another_key, unsigned_uki, write_at, Board, Boot, Image, Ready, Seen, Vm, VmNet,
};
use hil_tests::{addr, Host, Lab, Segment};

/// The factory config the image must carry as /etc/callgate/callgate.toml.
const FACTORY: &str = include_str!("../../config/factory.toml");

/// RAM per VM.
const MEM_MIB: u32 = 1024;
/// Power-on to the boot report, under TCG (57–98 s measured on the build machines).
const BOOT: Duration = Duration::from_secs(360);
/// The ready marker to the boot report's last line on the console (which goes there
/// through the journal; the marker straight to its port).
const REPORT_AFTER_MARKER: Duration = Duration::from_secs(60);
/// Power-on to the firmware's verdict on the UKI.
const FIRMWARE: Duration = Duration::from_secs(180);

/// The boot report's lines (`callgate-boot: ...`), prefix off, in order.
fn report(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| l.split_once("callgate-boot: ").map(|(_, r)| r.to_owned()))
        .collect()
}

fn has(report: &[String], line: &str) -> bool {
    report.iter().any(|l| l == line)
}

#[test]
fn image_vm_boots_verified_to_ready() {
    let image = Image::from_env().unwrap();
    // The VM sits where appliance A sits in the namespace lab: the carrier and the cloud
    // on its WAN segment, the engineers' host on its management segment.
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Mgmt, Host::Cloud]).unwrap();
    let net = VmNet::on_lab(&lab, Host::A).unwrap();
    // The attacker's provisioning item: a well-formed admin, then a second account smuggled
    // in as config text. Refused whole: the appliance stays factory-fresh (locked, no
    // account).
    let keys = tempfile::tempdir().unwrap();
    let ann = KeyPair::new(keys.path(), "ann");
    let boot = Boot {
        net: Some(net.clone()),
        provision: Some(format!(
            "user ann\nssh-key {}\n[[user]]\nname = \"mallory\"\n",
            ann.public
        )),
        ..Boot::new(&image.disk(), MEM_MIB)
    };
    let mut vm = Vm::start(&image, &boot).unwrap();
    let marker = vm.wait_ready(BOOT);
    let Ready::Ready(at) = marker else {
        panic!("no ready marker ({marker:?}); console:\n{}", vm.console());
    };
    // The marker is one line on the second port (boot_report checks that the console,
    // ttyS0, does not carry it).
    assert_eq!(vm.marker_lines(), ["CALLGATE-READY"]);
    let (r, ready) = boot_report(&mut vm, "boot");
    let console = vm.console();
    assert!(ready, "the boot report says not ready:\n{}", r.join("\n"));
    let expect = [
        "secure_boot=on".to_owned(),
        "lockdown=integrity".to_owned(),
        format!("roothash={}", image.roothash().unwrap()),
        "root=/dev/mapper/root fstype=squashfs ro=yes verity=verified".to_owned(),
        "tpm=2 device=/dev/tpmrm0".to_owned(),
        "firewall=enforcing table=\"inet callgate\" input_policy=drop".to_owned(),
        // The baseline came from the initrd, before systemd-networkd brought any link up.
        "baseline from=initrd before_network=yes".to_owned(),
        "ready".to_owned(),
    ];
    for e in &expect {
        assert!(has(&r, e), "the boot report lacks {e:?}:\n{}", r.join("\n"));
    }
    // The factory config has no provisioned key yet: the daemon is ready and locked, with
    // the baseline enforcing.
    let daemon = r
        .iter()
        .find(|l| l.starts_with("callgated="))
        .unwrap_or_else(|| panic!("no daemon line:\n{}", r.join("\n")));
    assert!(
        daemon.starts_with("callgated=ready user=callgate status=\"locked: not provisioned"),
        "{daemon}"
    );
    let times = r.iter().find(|l| l.starts_with("times ")).unwrap();
    println!(
        "image boot: power-on to the ready marker {:.1} s under TCG; {times}",
        at.as_secs_f64()
    );
    assert!(
        console.contains("callgate-network: lab addresses for 3 interfaces, from fw_cfg"),
        "{console}"
    );
    assert!(
        console.contains(
            "callgate-provision: REFUSED: line 3: unknown word '[[user]]' (expected 'user' or 'ssh-key'); nothing changed"
        ),
        "{console}"
    );
    assert!(
        !console.contains("callgate-provision: provisioned"),
        "{console}"
    );
    wan_scan_finds_nothing_but_management_ssh(&lab, &net, &mut vm);
    // SSH answers, but nobody gets in: the refused item made no account.
    ssh_is_refused(&lab.ns(Host::Mgmt), "ann", &ann.private);
}

/// An SSH login to appliance A's management address as `user` with `key` is refused.
fn ssh_is_refused(from: &hil_tests::Ns<'_>, user: &str, key: &std::path::Path) {
    let r = ssh(from, key, user, addr::A_MGMT_V4.into(), &["show", "system"]);
    assert!(
        !r.ok() && r.stderr.contains("Permission denied"),
        "{user}: {} {}",
        r.stdout,
        r.stderr
    );
}

/// The port scans of the booted factory appliance (locked: the baseline ruleset) on the
/// lab: from the carrier, its WAN addresses answer on no TCP port of 65,535 and no UDP
/// port of a sample (SIP among them); from the engineers' host, the same scan of its
/// management address finds SSH open and nothing else (the control: the scan sees what
/// is open through the VM's NICs and firewall). The UDP scan's own control: a namespace
/// on the WAN segment with a UDP service is seen open, and its other ports closed.
/// nmap's SYN scan of every TCP port, one retry, at least 4,000 probes a second.
const TCP_ALL: [&str; 8] = [
    "-sS",
    "-p",
    "1-65535",
    "-T4",
    "--max-retries",
    "1",
    "--min-rate",
    "4000",
];

fn wan_scan_finds_nothing_but_management_ssh(lab: &Lab, net: &VmNet, vm: &mut Vm) {
    let (carrier, mgmt, cloud) = (
        lab.ns(Host::Carrier),
        lab.ns(Host::Mgmt),
        lab.ns(Host::Cloud),
    );
    // networkd sets the addresses around the time the daemon is ready: wait for SSH.
    assert!(
        hil_tests::poll_until(Duration::from_secs(90), Duration::from_millis(500), || {
            mgmt.tcp_connect(None, addr::A_MGMT_V4, 22, Duration::from_secs(1))
        }),
        "no SSH on the management address; console:\n{}",
        vm.console()
    );
    let (wan4, wan6, mgmt4) = std::thread::scope(|s| {
        let wan4 = s.spawn(|| carrier.port_scan(addr::A_WAN_V4.into(), &TCP_ALL));
        let wan6 = s.spawn(|| carrier.port_scan(addr::A_WAN_V6.into(), &TCP_ALL));
        let mgmt4 = s.spawn(|| mgmt.port_scan(addr::A_MGMT_V4.into(), &TCP_ALL));
        (
            wan4.join().unwrap().unwrap(),
            wan6.join().unwrap().unwrap(),
            mgmt4.join().unwrap().unwrap(),
        )
    });
    // The control: the management side answers SSH, only SSH.
    assert_eq!(mgmt4.scanned(), 65535, "{mgmt4:?}");
    assert_eq!(
        mgmt4.answered(),
        vec!["22/tcp open".to_owned()],
        "{mgmt4:?}"
    );
    // The WAN side: all 65,535 TCP ports scanned, none answered, over IPv4 and IPv6.
    for (what, scan) in [("IPv4", &wan4), ("IPv6", &wan6)] {
        assert_eq!(scan.scanned(), 65535, "WAN {what}: {scan:?}");
        assert!(
            scan.answered().is_empty(),
            "WAN {what}: answered {:?}",
            scan.answered()
        );
    }
    // UDP: SIP and a sample of the usual services and of the high ports.
    let udp_ports =
        "53,67,69,123,137,161,500,1194,1900,3478,4500,5060,5061,5353,5405,10000,33434,51820,60000";
    let udp = ["-sU", "-p", udp_ports, "--max-retries", "2"];
    for a in [IpAddr::from(addr::A_WAN_V4), IpAddr::from(addr::A_WAN_V6)] {
        let scan = carrier.port_scan(a, &udp).unwrap();
        assert_eq!(scan.scanned(), 19, "{a}: {scan:?}");
        assert!(
            scan.answered().is_empty(),
            "WAN UDP {a}: answered {:?}",
            scan.answered()
        );
    }
    // The UDP scan's control, on the same segment: the cloud namespace (no firewall; its
    // port unreachables not rate-limited) with an echoing service on 5060 is seen open
    // there, and its other ports closed.
    cloud
        .exec(&["sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0"])
        .unwrap();
    let echo = cloud.udp_listen(addr::CLOUD_V4, 5060).unwrap();
    let control = carrier.port_scan(addr::CLOUD_V4.into(), &udp).unwrap();
    drop(echo);
    assert_eq!(
        control.in_state("open"),
        vec![("udp".to_owned(), 5060)],
        "{control:?}"
    );
    assert_eq!(control.answered_count(), 19, "{control:?}");
    // And the address scanned is the VM's: the carrier's kernel resolves it to the VM's
    // WAN NIC (a connection to SIP, refused by the locked appliance, makes it look).
    let wan_mac = &net.nic(Segment::Wan).unwrap().mac;
    for a in [IpAddr::from(addr::A_WAN_V4), IpAddr::from(addr::A_WAN_V6)] {
        assert!(!carrier.tcp_connect(None, a, 5060, Duration::from_secs(2)));
        let neigh = carrier.ip(&["neigh", "show", &a.to_string()]).unwrap();
        assert!(neigh.contains(wan_mac.as_str()), "{a}: {neigh}");
    }
    println!(
        "image scan: WAN {} TCP ports (IPv4 and IPv6) and 19 UDP: none answered; management: {:?}",
        wan4.scanned(),
        mgmt4.answered()
    );
}

/// The raw scans' control: `needle` written in the clear into the middle of the `state`
/// partition of a copy of `disk` (made in `dir`, removed after) is found by
/// [`file_contains`].
fn scan_finds_a_plant(disk: &std::path::Path, dir: &std::path::Path, needle: &str) {
    let state = partition(disk, "state").unwrap();
    let control = dir.join("control.img");
    copy_disk(disk, &control).unwrap();
    write_at(
        &control,
        state.offset + state.size / 2 + 4093,
        needle.as_bytes(),
    )
    .unwrap();
    assert!(
        file_contains(&control, needle).unwrap(),
        "the scan finds no plant"
    );
    std::fs::remove_file(&control).unwrap();
}

/// Waits for the ready marker (the second serial port), then for the end of the boot
/// report on the console; the report's lines, and whether the marker said ready. The two
/// say the same (the marker's words are the report's `NOT READY (...)`), the marker is one
/// line, and it is not on the console.
fn boot_report(vm: &mut Vm, what: &str) -> (Vec<String>, bool) {
    let marker = vm.wait_ready(BOOT);
    let verdict = match &marker {
        Ready::Ready(_) => "ready".to_owned(),
        Ready::NotReady(failed, _) => format!("NOT READY ({})", failed.join(" ")),
        _ => panic!(
            "{what}: no ready marker ({marker:?}); console:\n{}",
            vm.console()
        ),
    };
    let seen = vm.wait_for(&format!("callgate-boot: {verdict}"), REPORT_AFTER_MARKER);
    let console = vm.console();
    assert!(
        matches!(seen, Seen::At(_)),
        "{what}: the marker says {verdict:?}, the console's report does not ({seen:?}); console:\n{console}"
    );
    assert_eq!(
        vm.marker_lines().len(),
        1,
        "{what}: the marker's port: {:?}",
        vm.marker()
    );
    for m in ["CALLGATE-READY", "CALLGATE-NOT-READY"] {
        assert!(
            !console.contains(m),
            "{what}: the marker {m} on the console:\n{console}"
        );
    }
    (report(&console), marker.is_ready())
}

/// The report's line starting with `prefix`.
fn line<'a>(report: &'a [String], prefix: &str) -> &'a str {
    report
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", report.join("\n")))
}

/// The report shows the state disk unlocked for the `boots`th time with the daemon's
/// directory on it, the host key `host_key` (made at the first boot, kept there), and the
/// daemon ready.
fn state_kept(r: &[String], boots: u32, host_key: &str) {
    assert_eq!(
        line(r, "state="),
        format!(
            "state=unlocked type=LUKS2 boots={boots} callgated_dir=/dev/mapper/callgate-state[/callgate]"
        )
    );
    assert_eq!(
        line(r, "ssh_host_key="),
        format!("ssh_host_key=ssh-ed25519 {host_key}")
    );
    assert!(line(r, "callgated=").starts_with("callgated=ready"));
}

/// The recovery key the first boot printed on the console.
fn recovery_key(console: &str) -> Option<String> {
    console
        .lines()
        .find_map(|l| l.split_once("callgate-state: recovery-key="))
        .map(|(_, k)| k.trim().to_owned())
}

/// The state disk's prompt for the recovery key (attempt `n`).
fn prompt(n: u32) -> String {
    format!("callgate-state: enter the recovery key to open it (attempt {n} of 3")
}

#[test]
fn image_vm_state_disk_sealed_to_pcr7_moved_or_other_secure_boot_stays_locked() {
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("board-a.img");
    copy_disk(&image.disk(), &disk).unwrap();
    let tpm = tmp.path().join("tpm-a");
    std::fs::create_dir(&tpm).unwrap();
    let board_a = Boot {
        writable: true,
        tpm_state: Some(tpm.clone()),
        ..Boot::new(&disk, MEM_MIB)
    };

    // 1. First boot: the state disk is made, sealed to PCR 7, the recovery key shown once.
    let mut vm = Vm::start(&image, &board_a).unwrap();
    let (r, ready) = boot_report(&mut vm, "first boot");
    let console = vm.console();
    assert!(ready, "first boot not ready:\n{}", r.join("\n"));
    assert!(
        console.contains("callgate-state: first boot: creating the state disk"),
        "{console}"
    );
    let key = recovery_key(&console).unwrap_or_else(|| panic!("no recovery key:\n{console}"));
    // systemd-cryptenroll's recovery key: 8 groups of 8 modhex characters.
    assert_eq!(key.len(), 71, "{key:?}");
    let host_key = line(&r, "ssh_host_key=")
        .strip_prefix("ssh_host_key=ssh-ed25519 ")
        .unwrap_or_else(|| panic!("no Ed25519 host key:\n{}", r.join("\n")))
        .to_owned();
    state_kept(&r, 1, &host_key);
    // A control for the raw scans below: the scan finds the host key where it is in the
    // clear (this console).
    let console_copy = tmp.path().join("first-boot-console.log");
    std::fs::write(&console_copy, vm.console_raw()).unwrap();
    assert!(file_contains(&console_copy, &host_key).unwrap());
    assert!(file_contains(&console_copy, &key).unwrap());
    drop(vm);

    // 2. The same board again: the TPM alone unlocks it; what the appliance left is there
    //    (its host key, the boot count); no new disk, no recovery key shown again.
    let mut vm = Vm::start(&image, &board_a).unwrap();
    let (r, ready) = boot_report(&mut vm, "second boot");
    let console = vm.console();
    assert!(ready, "second boot not ready:\n{}", r.join("\n"));
    state_kept(&r, 2, &host_key);
    assert!(console.contains("callgate-state: unlocked by=tpm2 created=no boots=2"));
    for never in [
        "first boot: creating",
        "recovery-key=",
        "enter the recovery key",
    ] {
        assert!(
            !console.contains(never),
            "{never:?} on the second boot:\n{console}"
        );
    }
    drop(vm);

    // 3. The disk as a thief has it: none of the appliance's state in the clear. The
    //    scan's control: the same host key written in the clear into the state partition
    //    of a copy is found.
    for needle in [host_key.as_str(), key.as_str()] {
        assert!(
            !file_contains(&disk, needle).unwrap(),
            "{needle:?} is in the clear on the disk"
        );
    }
    scan_finds_a_plant(&disk, tmp.path(), &host_key);
    // The recovery key opens a key slot of the disk; another key does not.
    let scratch = tmp.path().join("state.part");
    assert!(luks_key_opens(&disk, "state", &key, &scratch).unwrap());
    let mut wrong = key.clone().into_bytes();
    wrong[0] = if wrong[0] == b'c' { b'b' } else { b'c' };
    assert!(!luks_key_opens(
        &disk,
        "state",
        &String::from_utf8(wrong.clone()).unwrap(),
        &scratch
    )
    .unwrap());
    std::fs::remove_file(&scratch).unwrap();

    // 4. The disk in another board (a fresh TPM): it stays locked, the console says why;
    //    without the recovery key nothing of the appliance runs but the baseline firewall.
    let moved = tmp.path().join("board-b.img");
    copy_disk(&disk, &moved).unwrap();
    let mut vm = Vm::start(&image, &Boot::new(&moved, MEM_MIB)).unwrap();
    let (which, seen) = vm.wait_for_any(&[&prompt(1), "callgate-boot:"], BOOT);
    let console = vm.console();
    assert!(
        matches!(seen, Seen::At(_)) && which == 0,
        "no recovery prompt on another board ({seen:?}):\n{console}"
    );
    assert!(
        console.contains("callgate-state: the TPM did not release the state disk's key"),
        "{console}"
    );
    assert!(
        console.contains("not the board whose TPM sealed it"),
        "{console}"
    );
    vm.type_line("").unwrap();
    let (r, ready) = boot_report(&mut vm, "another board");
    let console = vm.console();
    assert!(!ready, "ready on another board:\n{console}");
    let marker = vm.marker_lines();
    assert!(
        marker.len() == 1
            && marker[0].starts_with("CALLGATE-NOT-READY ")
            && marker[0].split(' ').any(|w| w == "state"),
        "{marker:?}"
    );
    assert!(has(&r, "state=locked"), "{}", r.join("\n"));
    assert!(has(&r, "ssh_host_key=none"), "{}", r.join("\n"));
    assert!(
        !line(&r, "callgated=").starts_with("callgated=ready"),
        "the daemon runs on another board:\n{}",
        r.join("\n")
    );
    assert!(has(
        &r,
        "firewall=enforcing table=\"inet callgate\" input_policy=drop"
    ));
    assert!(console.contains("callgate-state: LOCKED: the state disk stays locked"));
    assert!(!console.contains("callgate-state: unlocked"), "{console}");
    // Asked once: nothing that fails for want of the disk later (sshd's restarts pull the
    // host key unit, which requires the disk) starts the unlock again, so the prompt does
    // not come back on its own. Some seconds for any such restart to show.
    std::thread::sleep(std::time::Duration::from_secs(20));
    let console = vm.console();
    assert_eq!(
        console.matches(&prompt(1)).count(),
        1,
        "the recovery prompt came back:\n{console}"
    );
    assert!(
        !console.contains("login:"),
        "a login prompt on another board:\n{console}"
    );
    drop(vm);
    std::fs::remove_file(&moved).unwrap();

    // 5. The same board, another Secure Boot state (Secure Boot off: another PCR 7): the
    //    state disk stays locked and the console says why; a wrong recovery key is
    //    refused; the right one opens it and seals it again to this PCR 7.
    let other_sb = Boot {
        vars: Some(image.ovmf_vars_setup_mode()),
        ..board_a.clone()
    };
    let mut vm = Vm::start(&image, &other_sb).unwrap();
    let (which, seen) = vm.wait_for_any(&[&prompt(1), "callgate-boot:"], BOOT);
    let console = vm.console();
    assert!(
        matches!(seen, Seen::At(_)) && which == 0,
        "no recovery prompt under another Secure Boot state ({seen:?}):\n{console}"
    );
    assert!(console.contains("the key is sealed to PCR 7"), "{console}");
    vm.type_line(&String::from_utf8(wrong).unwrap()).unwrap();
    assert!(
        matches!(vm.wait_for(&prompt(2), BOOT), Seen::At(_)),
        "{}",
        vm.console()
    );
    assert!(vm
        .console()
        .contains("callgate-state: that recovery key does not open the state disk"));
    vm.type_line(&key).unwrap();
    let (r, _) = boot_report(&mut vm, "another Secure Boot state");
    let console = vm.console();
    assert!(
        console.contains("callgate-state: opened with the recovery key"),
        "{console}"
    );
    assert!(
        console.contains("callgate-state: the key is sealed again to this TPM's PCR 7"),
        "{console}"
    );
    assert!(has(&r, "secure_boot=off"), "{}", r.join("\n"));
    state_kept(&r, 3, &host_key);
    // Only Secure Boot itself is reported as wrong, on the console and by the marker.
    assert!(has(&r, "NOT READY (secure_boot)"), "{}", r.join("\n"));
    assert_eq!(vm.marker_lines(), ["CALLGATE-NOT-READY secure_boot"]);
    // The recovery key typed is not echoed on the console.
    assert!(
        !console.contains(&key),
        "the recovery key is on the console:\n{console}"
    );
}

#[test]
fn image_vm_flipped_root_byte_stops_the_boot() {
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("flipped.img");
    copy_disk(&image.disk(), &disk).unwrap();
    // One byte of the root's first 4 KiB block (past the squashfs superblock, which is 96
    // bytes: squashfs itself would not notice it), read as the root is mounted.
    let root = partition(&disk, "root-a").unwrap();
    flip_byte(&disk, root.offset + 1000).unwrap();

    let mut vm = Vm::boot(&image, &disk, MEM_MIB).unwrap();
    // The boot report or a login prompt would mean the tampered root came up: stop
    // waiting at once.
    let (which, seen) = vm.wait_for_any(
        &["dm-verity device corrupted", "callgate-boot:", "login:"],
        BOOT,
    );
    let console = vm.console();
    assert!(
        matches!(seen, Seen::At(_)) && which == 0,
        "no dm-verity panic ({seen:?}); console:\n{console}"
    );
    assert!(console.contains("Kernel panic"), "{console}");
    // Nothing of the appliance ran: no daemon, no report, no login prompt, no marker.
    for never in ["callgate-boot:", "callgated", "login:"] {
        assert!(
            !console.contains(never),
            "{never:?} on the console:\n{console}"
        );
    }
    // (The port has the firmware's text, which it writes to every serial port.)
    assert!(
        vm.marker_lines().is_empty(),
        "a ready marker from a tampered root: {:?}",
        vm.marker()
    );
    println!(
        "flipped byte: panic {:.1} s after power-on",
        vm.uptime().as_secs_f64()
    );
}

/// Boots `disk` (whose UKI the firmware must not trust) and checks it was refused:
/// systemd-boot (signed, so it runs) asks the firmware to load slot A's entry, the
/// firmware's signature check refuses it (`Error loading \EFI\Linux\...: Security
/// Violation` or `Access Denied`), and nothing of Linux runs.
fn refused_by_the_firmware(image: &Image, disk: &std::path::Path) {
    let mut vm = Vm::boot(image, disk, MEM_MIB).unwrap();
    // The boot report or a login prompt would mean the UKI ran: stop waiting at once.
    let (which, seen) = vm.wait_for_any(
        &[
            "No bootable option or device was found",
            "callgate-boot:",
            "login:",
        ],
        FIRMWARE,
    );
    let console = vm.console();
    assert!(
        matches!(seen, Seen::At(_)) && which == 0,
        "the firmware did not give up ({seen:?}); console:\n{console}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.contains("Error loading \\EFI\\Linux\\callgate-")
                && (l.contains("Security Violation") || l.contains("Access Denied"))),
        "no Secure Boot refusal of the entry:\n{console}"
    );
    for never in [
        "EFI stub",
        "Linux version",
        "Kernel",
        "callgate-boot:",
        "login:",
    ] {
        assert!(
            !console.contains(never),
            "{never:?} on the console:\n{console}"
        );
    }
    assert!(
        vm.marker_lines().is_empty(),
        "a ready marker from a refused UKI: {:?}",
        vm.marker()
    );
}

#[test]
fn image_vm_unsigned_uki_is_refused() {
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (disk, uki) = (tmp.path().join("unsigned.img"), tmp.path().join("u.efi"));
    unsigned_uki(&image.uki(), &uki).unwrap();
    copy_disk(&image.disk(), &disk).unwrap();
    replace_uki(&disk, &uki).unwrap();
    refused_by_the_firmware(&image, &disk);
}

#[test]
fn image_vm_uki_signed_by_another_key_is_refused() {
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (disk, uki) = (tmp.path().join("other.img"), tmp.path().join("o.efi"));
    uki_signed_by_another_key(&image.uki(), tmp.path(), &uki).unwrap();
    copy_disk(&image.disk(), &disk).unwrap();
    replace_uki(&disk, &uki).unwrap();
    refused_by_the_firmware(&image, &disk);
}

#[test]
fn image_root_holds_the_firmware_and_no_package_manager_compiler_or_host_key() {
    let image = Image::from_env().unwrap();
    let paths = image.root_paths().unwrap();
    for must in [
        "/usr/sbin/callgated",
        "/usr/bin/callgate",
        "/usr/libexec/callgate/callgate-seal",
        "/usr/libexec/callgate/boot-report",
        "/usr/libexec/callgate/state-unlock",
        "/usr/libexec/callgate/state-disk",
        "/usr/lib/systemd/system/callgate-state-unlock.service",
        "/usr/lib/systemd/system/var-lib-callgate\\x2dstate.mount",
        // The daemon requires its directory bound from the state disk.
        "/etc/systemd/system/callgated.service.requires/var-lib-callgate.mount",
        "/usr/libexec/callgate/network",
        "/usr/libexec/callgate/provision",
        "/usr/share/callgate/update-key.der",
        "/usr/share/callgate/generation",
        "/etc/systemd/system/sysinit.target.wants/callgate-network.service",
        // /tmp a tmpfs: the sandboxed units' private /dev and /tmp are made there.
        "/etc/systemd/system/local-fs.target.wants/tmp.mount",
        "/etc/systemd/system/multi-user.target.wants/callgate-provision.service",
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/usr/lib/systemd/system/serial-getty@ttyS0.service.d/60-callgate-state.conf",
        // The ESP at /efi (the boot entries), systemd-boot's boot assessment.
        "/efi",
        // efi.mount is made at boot for the ESP the loader booted from.
        "/usr/lib/systemd/system-generators/callgate-esp",
        "/usr/lib/systemd/systemd-bless-boot",
        "/usr/lib/systemd/system-generators/systemd-bless-boot-generator",
        "/usr/sbin/sfdisk",
        "/etc/systemd/system/sockets.target.wants/callgate-upgrade.socket",
        // The daemon's user and its accounts helper.
        "/usr/lib/sysusers.d/callgate.conf",
        "/etc/systemd/system/sockets.target.wants/callgate-accounts.socket",
        "/usr/libexec/callgate/health",
        "/etc/systemd/system/boot-complete.target.requires/callgate-health.service",
        "/usr/lib/systemd/system/systemd-bless-boot.service.d/60-callgate.conf",
        "/usr/sbin/cryptsetup",
        "/usr/bin/systemd-cryptenroll",
        "/usr/lib/systemd/systemd-cryptsetup",
        "/usr/lib/x86_64-linux-gnu/libtss2-esys.so.0",
        "/usr/lib/x86_64-linux-gnu/libtss2-rc.so.0",
        "/usr/sbin/mkfs.ext4",
        "/usr/sbin/nft",
        "/usr/sbin/sshd",
        "/etc/protocols",
        "/etc/callgate/callgate.toml",
        "/etc/ssh/sshd_config",
        "/etc/pam.d/login",
        "/etc/systemd/system/sysinit.target.wants/callgate-baseline.service",
        "/etc/systemd/system/multi-user.target.wants/callgated.service",
        "/etc/systemd/system/multi-user.target.wants/callgate-state.service",
        "/etc/systemd/system/multi-user.target.wants/callgate-boot-report.service",
    ] {
        assert!(paths.iter().any(|p| p == must), "{must} is not in the root");
    }
    let never = [
        "/usr/bin/apt",
        "/usr/bin/dpkg",
        "/usr/lib/apt",
        "/etc/apt",
        "/usr/bin/gcc",
        "/usr/bin/cc",
        "/usr/bin/rustc",
        "/usr/bin/make",
        "/usr/lib/dracut",
        "/usr/share/doc/",
        "/usr/share/man/",
        "/usr/share/locale/",
        "/etc/ssh/ssh_host_",
        "/boot/",
        // it would hold the daemon two minutes on a board with no link configured
        "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online",
        // the unsigned loader binaries of systemd-boot-efi (the ESP's is signed at build)
        "/usr/lib/systemd/boot/efi",
    ];
    let found: Vec<&String> = paths
        .iter()
        .filter(|p| never.iter().any(|n| p.starts_with(n)))
        .collect();
    assert!(found.is_empty(), "in the root: {found:?}");

    // The daemon and the console are static (no program interpreter), the machine id is
    // made at boot, and the factory config is the repository's, which parses.
    for bin in ["/usr/sbin/callgated", "/usr/bin/callgate"] {
        let elf = image.root_file(bin).unwrap();
        assert!(elf.starts_with(b"\x7fELF"), "{bin} is not an ELF file");
        assert!(
            !elf.windows(b"ld-linux".len()).any(|w| w == b"ld-linux"),
            "{bin} names a dynamic loader"
        );
    }
    assert!(image.root_file("/etc/machine-id").unwrap().is_empty());
    let cfg = image.root_file("/etc/callgate/callgate.toml").unwrap();
    assert_eq!(String::from_utf8(cfg).unwrap(), FACTORY);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("callgate.toml");
    std::fs::write(&path, FACTORY).unwrap();
    callgate_config::Config::load(&path).unwrap();
}

/// The network item a hypervisor hands the image (`images/libexec/network`, fed here a file
/// of our own): addresses only. What an attacker who can set it would try (another
/// networkd key, a section of its own, shell text, a broken MAC, too many NICs, a huge
/// item) refuses the whole item and writes nothing; a well-formed one writes exactly its
/// addresses and nothing else.
#[test]
fn image_network_item_sets_addresses_and_nothing_else() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/libexec/network");
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, item: &str| {
        let (path, out) = (
            dir.path().join(name),
            dir.path().join(format!("{name}.out")),
        );
        std::fs::write(&path, item).unwrap();
        let st = std::process::Command::new("bash")
            .arg(&script)
            .args([
                "--item".as_ref(),
                path.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ])
            .output()
            .unwrap();
        let files: Vec<String> = std::fs::read_dir(&out)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        (st.status.success(), files)
    };
    let mac = "52:54:00:12:34:56";
    let (ok, files) = run(
        "good",
        &format!("# lab\n{mac} 203.0.113.1/24 2001:db8:1::1/64\n"),
    );
    assert!(ok);
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert!(f.contains(&format!("MACAddress={mac}\n")), "{f}");
    assert!(
        f.contains("DHCP=no\n") && f.contains("IPv6AcceptRA=no\n"),
        "{f}"
    );
    let addresses: Vec<&str> = f.lines().filter(|l| l.starts_with("Address=")).collect();
    assert_eq!(
        addresses,
        ["Address=203.0.113.1/24", "Address=2001:db8:1::1/64"]
    );
    let big = format!("{mac} 203.0.113.1/24\n{}", "#".repeat(5000));
    let nine: String = (0..9)
        .map(|i| format!("52:54:00:12:34:5{i} 203.0.113.{}/24\n", i + 1))
        .collect();
    for (name, item) in [
        ("key", format!("{mac} 203.0.113.1/24 DHCP=yes\n")),
        (
            "gateway",
            format!("{mac} 203.0.113.1/24\nGateway=203.0.113.254\n"),
        ),
        ("section", format!("{mac} 203.0.113.1/24\n[Route]\n")),
        ("shell", format!("{mac} $(touch${{IFS}}/tmp/pwned)/24\n")),
        ("glued", format!("{mac} 203.0.113.1/24;DNS=203.0.113.9\n")),
        ("mac", "52:54:00:12:34 203.0.113.1/24\n".to_owned()),
        ("no-address", format!("{mac}\n")),
        ("octet", format!("{mac} 203.0.113.256/24\n")),
        ("prefix", format!("{mac} 203.0.113.1/33\n")),
        ("nine", nine),
        ("big", big),
    ] {
        let (ok, files) = run(name, &item);
        assert!(!ok, "{name}: accepted");
        assert!(files.is_empty(), "{name}: wrote {files:?}");
    }
}

/// Each of our units and the highest `systemd-analyze security` exposure it may score. A
/// new unit without a line here fails the test: it has to be sandboxed and scored first.
const EXPOSURE_CEILINGS: &[(&str, f64)] = &[
    // The accounts helper behind callgate-accounts.socket: root with the account tools'
    // capabilities, CAP_KILL and read access to other users' processes; no network.
    ("callgate-accounts@.service", 2.0),
    ("callgate-baseline.service", 1.4),
    ("callgate-boot-report.service", 2.0),
    ("callgate-health.service", 1.8),
    ("callgate-network.service", 1.7),
    ("callgate-provision.service", 1.6),
    ("callgate-ssh-hostkeys.service", 0.5),
    // Opens the state disk (mounts nothing): CAP_SYS_ADMIN and CAP_IPC_LOCK, the partition,
    // the device mapper and the TPM as its only devices, in a mount namespace of its own.
    ("callgate-state-unlock.service", 1.4),
    // Readies the mounted state disk: root without any capability, writes only there.
    ("callgate-state.service", 0.5),
    // The update installer behind callgate-upgrade.socket: root (the raw disk, the ESP,
    // the state disk are root's) with no capability, no network, block devices only.
    ("callgate-upgrade@.service", 1.1),
    // The user `callgate` with CAP_NET_ADMIN and CAP_NET_RAW, on the host's network with
    // packet sockets; what only root may do is the accounts helper's: images/README.md.
    ("callgated.service", 2.0),
];

/// systemd's own scoring of a unit file, offline (as the image ships it: the same files).
fn exposure(root: &std::path::Path, unit: &str) -> f64 {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{unit}: no overall exposure in {text}"));
    let score = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    score.unwrap_or_else(|| panic!("{unit}: unreadable score line {line:?}"))
}

#[test]
fn image_services_are_sandboxed_to_their_exposure_ceilings() {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/systemd");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ours = Vec::new();
    for e in std::fs::read_dir(&units).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".service") {
            std::fs::copy(units.join(&name), dir.join(&name)).unwrap();
            ours.push(name);
        }
    }
    ours.sort();
    let named: Vec<&str> = EXPOSURE_CEILINGS.iter().map(|(u, _)| *u).collect();
    assert_eq!(
        ours, named,
        "every unit of ours has a ceiling, and only ours"
    );
    // The scorer can fail: a unit with no sandbox at all scores far above any ceiling.
    std::fs::write(dir.join("bare.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    assert!(exposure(root.path(), "bare.service") > 9.0);
    for (unit, ceiling) in EXPOSURE_CEILINGS {
        let score = exposure(root.path(), unit);
        println!("{unit}: exposure {score}");
        assert!(
            score <= *ceiling,
            "{unit}: exposure {score} above {ceiling}"
        );
    }
}

/// Where [`rogue_esp_disk`]'s blank partition named `state` is: its first sector and
/// its size, in 512-byte sectors.
const ROGUE_STATE: (u64, u64) = (67_584, 8_192);

/// A disk with a GPT partition named `esp` (an EFI system partition, FAT) holding a boot
/// entry `EFI/Linux/callgate-999999-a.efi`, and a blank one named `state`: another disk's
/// ESP and state partition, as a USB stick could carry them. `esp_uuid`: the ESP's
/// partition GUID (a copy of the boot disk's); `None`: a fresh one.
fn rogue_esp_disk(dir: &std::path::Path, esp_uuid: Option<&str>) -> std::path::PathBuf {
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    let disk = dir.join("rogue.img");
    let fat = dir.join("rogue-esp.fat");
    let entry = dir.join("callgate-999999-a.efi");
    std::fs::write(&entry, b"not a UKI").unwrap();
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    run(std::process::Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(
            std::fs::File::open(write_tmp(
                dir,
                "rogue.sfdisk",
                &format!(
                    "label: gpt\nstart=2048, size=65536, type=U, name=esp{}\nstart={}, size={}, name=state\n",
                    esp_uuid.map(|u| format!(", uuid={u}")).unwrap_or_default(),
                    ROGUE_STATE.0,
                    ROGUE_STATE.1,
                ),
            ))
            .unwrap(),
        ));
    run(std::process::Command::new("mkfs.vfat")
        .arg("-C")
        .arg(&fat)
        .arg("32768"));
    run(std::process::Command::new("mmd")
        .arg("-i")
        .arg(&fat)
        .args(["::/EFI", "::/EFI/Linux"]));
    run(std::process::Command::new("mcopy")
        .arg("-i")
        .arg(&fat)
        .arg(&entry)
        .arg("::/EFI/Linux/callgate-999999-a.efi"));
    run(std::process::Command::new("dd")
        .arg(format!("if={}", fat.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]));
    disk
}

/// Whether `len` bytes of `file` from `offset` are all zeros (a partition nothing wrote).
fn zeros(file: &std::path::Path, offset: u64, len: u64) -> bool {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(file).unwrap();
    f.seek(std::io::SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf.iter().all(|&b| b == 0)
}

/// Whether the blank `state` partition of [`rogue_esp_disk`] is blank still.
fn rogue_state_blank(disk: &std::path::Path) -> bool {
    zeros(disk, ROGUE_STATE.0 * 512, ROGUE_STATE.1 * 512)
}

/// A disk plugged in that copies the boot disk's ESP partition GUID (and carries a blank
/// `state`): which disk booted is then ambiguous, so the state disk's unlock refuses: the
/// state disk stays locked and says why, neither `state` partition is formatted, nothing
/// of the appliance runs but the baseline firewall.
#[test]
fn image_vm_a_disk_copying_the_loaders_partition_guid_keeps_the_state_disk_locked() {
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("board.img");
    copy_disk(&image.disk(), &disk).unwrap();
    let esp = partition(&disk, "esp").unwrap();
    let state = partition(&disk, "state").unwrap();
    assert!(
        zeros(&disk, state.offset, 1 << 20),
        "the image's state is not blank"
    );
    let rogue = rogue_esp_disk(tmp.path(), Some(&esp.uuid));
    assert_eq!(partition(&rogue, "esp").unwrap().uuid, esp.uuid);
    let tpm = tmp.path().join("tpm");
    std::fs::create_dir(&tpm).unwrap();
    let boot = Boot {
        writable: true,
        tpm_state: Some(tpm),
        extra_disk: Some(rogue.clone()),
        ..Boot::new(&disk, MEM_MIB)
    };
    let mut vm = Vm::start(&image, &boot).unwrap();
    let (r, ready) = boot_report(&mut vm, "a disk copying the boot disk's GUID");
    let console = vm.console();
    assert!(
        !ready,
        "ready with two disks claiming to be the boot disk:\n{console}"
    );
    assert!(
        console.contains(&format!(
            "callgate-state: LOCKED: 2 partitions carry the boot loader's partition GUID {}",
            esp.uuid.to_lowercase()
        )),
        "{console}"
    );
    assert!(has(&r, "state=locked"), "{}", r.join("\n"));
    assert!(
        !line(&r, "callgated=").starts_with("callgated=ready"),
        "{}",
        r.join("\n")
    );
    assert!(!console.contains("first boot: creating"), "{console}");
    drop(vm);
    assert!(
        zeros(&disk, state.offset, 1 << 20),
        "the boot disk's state partition was written"
    );
    assert!(
        rogue_state_blank(&rogue),
        "the rogue disk's state partition was written"
    );
}

fn write_tmp(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A text file of the image's root (`/usr/share/callgate/version`), trimmed.
fn root_text(image: &Image, path: &str) -> String {
    String::from_utf8(image.root_file(path).unwrap())
        .unwrap()
        .trim()
        .to_owned()
}

/// The installer's way in: the provisioning item (fw_cfg `opt/org.callgate/provision`)
/// with the first admin's login and SSH key. The first boot provisions the vault (its
/// recovery key on the console), commits the admin through the daemon, and the admin
/// logs in from the lab's management host with OpenSSH and runs `show system`. A reboot
/// of the same board (the same disk and TPM, /etc's writable layer gone) brings the
/// account back from the committed config on the state disk; an item handed in then
/// (another login and key: someone with the installer's medium later) is ignored.
#[test]
fn image_vm_provisioned_admin_logs_in_over_ssh_and_stays_after_reboot() {
    let image = Image::from_env().unwrap();
    let Board {
        tmp,
        ann,
        lab,
        boot: board,
    } = Board::new(&image, "# callgate provisioning (the installer)\n", MEM_MIB).unwrap();
    let mallory = KeyPair::new(tmp.path(), "mallory");
    let mgmt = lab.ns(Host::Mgmt);
    let version = root_text(&image, "/usr/share/callgate/version");
    let generation = root_text(&image, "/usr/share/callgate/generation");
    // `show system` over SSH as `user`, once sshd answers and the account works.
    let show_system = |user: &str, key: &std::path::Path, vm: &Vm| {
        let mut last = None;
        let ok = hil_tests::poll_until(Duration::from_secs(90), Duration::from_secs(2), || {
            let r = ssh(
                &mgmt,
                key,
                user,
                addr::A_MGMT_V4.into(),
                &["show", "system"],
            );
            let ok = r.ok();
            last = Some(r);
            ok
        });
        let r = last.unwrap();
        assert!(
            ok,
            "{user}: show system over SSH: {} {}\nconsole:\n{}",
            r.stdout,
            r.stderr,
            vm.console()
        );
        r.stdout
    };

    // 1. The first boot applies the item. A second disk is plugged in, with a partition
    // named `esp` like the boot disk's, holding a boot entry of its own, and a blank one
    // named `state`: the ESP mounted at /efi must still be the one the loader booted from,
    // and the state disk made on the boot disk (the rogue `state` is left blank).
    let rogue = rogue_esp_disk(tmp.path(), None);
    let first = Boot {
        extra_disk: Some(rogue.clone()),
        ..board.clone()
    };
    let mut vm = Vm::start(&image, &first).unwrap();
    let (r, ready) = boot_report(&mut vm, "first boot");
    let console = vm.console();
    assert!(ready, "not ready:\n{console}");
    assert!(
        console.contains("callgate-provision: provisioned: admin 'ann' (ssh-ed25519) committed"),
        "{console}"
    );
    assert!(
        console.contains("callgate-provision: RECOVERY KEY (shown once"),
        "{console}"
    );
    let daemon = line(&r, "callgated=");
    assert!(
        daemon.starts_with("callgated=ready") && !daemon.contains("locked"),
        "{daemon}"
    );
    let out = show_system("ann", &ann.private, &vm);
    // Both slots: A booted from its blessed entry (systemd-boot's, no counter), B empty.
    assert!(
        !out.contains("callgate-999999"),
        "the rogue ESP's entry:\n{out}"
    );
    for want in [
        "slot root-a: /dev/vda2 partuuid=".to_owned(),
        format!(
            " booted version={version} generation={generation} entry=callgate-{generation}-a.efi (blessed)\n"
        ),
        "slot root-b: /dev/vda4 partuuid=".to_owned(),
        " version=unknown (no boot entry)\n".to_owned(),
        "booted: root-a\n".to_owned(),
        format!("roothash: {}\n", image.roothash().unwrap()),
        "boot loader: systemd-boot 252".to_owned(),
        format!(", entry callgate-{generation}-a.efi\n"),
        "boot counting: on; this boot's entry is blessed\n".to_owned(),
    ] {
        assert!(
            out.contains(&want),
            "no {want:?} in:\n{out}\nconsole:\n{}",
            vm.console()
        );
    }
    // The account is the console's: a shell is not what it gets.
    let r = ssh(&mgmt, &ann.private, "ann", addr::A_MGMT_V4.into(), &["id"]);
    assert!(
        !r.ok() && !r.stdout.contains("uid="),
        "{} {}",
        r.stdout,
        r.stderr
    );
    // The daemon is not root: its control socket is its own user's. What it may not do
    // as that user its accounts helper did: ann's account (above), and the audit
    // session of ann's console process, which the daemon cannot see, in the trail.
    assert!(daemon.contains(" user=callgate "), "{daemon}");
    let r = ssh(
        &mgmt,
        &ann.private,
        "ann",
        addr::A_MGMT_V4.into(),
        &["show", "audit", "last", "20"],
    );
    let with_session = r.stdout.lines().any(|l| {
        l.contains(" ann ")
            && l.contains("show system")
            && l.split_once(" session ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|s| s.parse::<u32>().is_ok())
    });
    assert!(with_session, "{} {}", r.stdout, r.stderr);
    drop(vm);
    assert!(
        rogue_state_blank(&rogue),
        "the second disk's `state` partition was written"
    );

    // 2. The same board again, now with an item for another admin: ignored; ann is back.
    let again = Boot {
        provision: Some(format!("user mallory\nssh-key {}\n", mallory.public)),
        ..board.clone()
    };
    let mut vm = Vm::start(&image, &again).unwrap();
    let (r, ready) = boot_report(&mut vm, "second boot");
    let console = vm.console();
    assert!(ready, "not ready:\n{}", r.join("\n"));
    assert!(
        console.contains(
            "callgate-provision: the provisioning item is ignored: this appliance was provisioned from one already"
        ),
        "{console}"
    );
    assert!(!console.contains("RECOVERY KEY (shown once"), "{console}");
    let out = show_system("ann", &ann.private, &vm);
    assert!(out.contains("booted: root-a\n"), "{out}");
    ssh_is_refused(&mgmt, "mallory", &mallory.private);
}

/// The provisioning item's checks (`images/libexec/provision --check`, fed files of our
/// own): a login and a key of an allowed type, nothing else. What an attacker who can hand
/// the appliance an item would try (config text, authorized_keys options, a second admin,
/// shell text, a DSA key, a huge item, binary bytes) is refused whole.
#[test]
fn image_provision_item_holds_a_login_and_a_key_and_nothing_else() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/libexec/provision");
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::new(dir.path(), "ann").public;
    let run = |name: &str, item: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, item).unwrap();
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("--check")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = run(
        "good",
        format!("# installer\n\nuser ann\nssh-key {key}\n").as_bytes(),
    );
    assert!(ok, "{out}");
    assert_eq!(out, format!("user=ann\nkey={key}\n"));
    let b64 = key.split(' ').nth(1).unwrap();
    for (name, item) in [
        (
            "toml",
            format!("user ann\nssh-key {key}\n[[user]]\nname = \"m\"\n"),
        ),
        (
            "options",
            format!("user ann\nssh-key command=\"/bin/sh\" {key}\n"),
        ),
        ("two-users", format!("user ann\nuser bob\nssh-key {key}\n")),
        (
            "two-keys",
            format!("user ann\nssh-key {key}\nssh-key {key}\n"),
        ),
        ("no-key", "user ann\n".to_owned()),
        ("no-user", format!("ssh-key {key}\n")),
        ("root-ish", format!("user Root\nssh-key {key}\n")),
        ("shell", format!("user $(reboot)\nssh-key {key}\n")),
        (
            "quote",
            format!("user ann\nssh-key ssh-ed25519 {b64} a\"b\n"),
        ),
        ("dsa", format!("user ann\nssh-key ssh-dss {b64}\n")),
        (
            "not-b64",
            "user ann\nssh-key ssh-ed25519 AAAA$$$$AAAAAAAAAAAA\n".to_owned(),
        ),
        (
            "big",
            format!("user ann\nssh-key {key}\n#{}\n", "x".repeat(5000)),
        ),
    ] {
        let (ok, out) = run(name, item.as_bytes());
        assert!(!ok, "{name}: accepted: {out}");
        assert!(
            out.contains("callgate-provision: REFUSED: "),
            "{name}: {out}"
        );
    }
    let (ok, out) = run("binary", b"user ann\x01\nssh-key x\n");
    assert!(!ok && out.contains("not printable text"), "{out}");
}

/// The update file `scripts/image` wrote, checked by the image's own `callgate` (the static
/// binary in the root) with the update key the root carries: good for an appliance of an
/// older generation; refused as a downgrade by one running the same build; refused with one
/// flipped byte in the root it carries (before anything would be written: the check
/// writes nothing), and refused against another key.
#[test]
fn image_update_file_verifies_and_tampered_or_old_ones_are_refused() {
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cli = tmp.path().join("callgate");
    std::fs::write(&cli, image.root_file("/usr/bin/callgate").unwrap()).unwrap();
    std::fs::set_permissions(&cli, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let key = tmp.path().join("update-key.der");
    std::fs::write(
        &key,
        image
            .root_file("/usr/share/callgate/update-key.der")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(image.update_key()).unwrap()
    );
    let generation: u64 =
        String::from_utf8(image.root_file("/usr/share/callgate/generation").unwrap())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let verify = |file: &std::path::Path, key: &std::path::Path, running: u64| {
        let out = std::process::Command::new(&cli)
            .arg("verify-update")
            .arg(file)
            .arg("--key")
            .arg(key)
            .arg("--running-generation")
            .arg(running.to_string())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let file = image.update_file();
    let (ok, out) = verify(&file, &key, generation.saturating_sub(1));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "(generation {generation}), roothash {}",
            image.roothash().unwrap()
        )),
        "{out}"
    );
    // The same build is no upgrade.
    let (ok, out) = verify(&file, &key, generation);
    assert!(!ok && out.contains("a downgrade"), "{out}");
    // Another key.
    let other = tmp.path().join("other.der");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | openssl rsa -RSAPublicKey_out -outform DER -out {} 2>/dev/null",
            other.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let (ok, out) = verify(&file, &other, 0);
    assert!(!ok && out.contains("signature does not verify"), "{out}");
    // One flipped byte in the middle of the root it carries.
    let bad = tmp.path().join("flipped.update");
    copy_disk(&file, &bad).unwrap();
    let len = std::fs::metadata(&bad).unwrap().len();
    flip_byte(&bad, len / 2).unwrap();
    let (ok, out) = verify(&bad, &key, 0);
    assert!(
        !ok && out.contains("root.squashfs: its SHA-256 is not the one the signed manifest names"),
        "{out}"
    );
}

/// `upgrade` from an admin's console over SSH, `ssh ann@A upgrade < FILE`, on one board
/// (disk and TPM kept) through its whole A/B walk:
/// 1. a bad update (one flipped byte in the root it carries) is refused and nothing is
///    written: slot B's partition and the ESP's entries as they were;
/// 2. a good one (`next`: generation + 1) is installed into slot B with three tries; the
///    next boot runs slot B, is healthy, is blessed, and `show system` says so;
/// 3. a broken one (`broken`: generation + 2, its daemon exits) goes into slot A; it boots
///    three times, never healthy (each boot's health unit fails and reboots), and the
///    fourth boot is slot B again by itself: `show system` shows slot A's entry with no
///    tries left.
///
/// Named `image_vm_ab_…` so that libtest, which starts tests in name order, starts this
/// longest one (eight TCG boots) first and the others run beside it.
#[test]
fn image_vm_ab_update_installs_boots_blessed_and_a_broken_one_falls_back() {
    let image = Image::from_env().unwrap();
    let next = image.test_update("next").unwrap();
    let broken = image.test_update("broken").unwrap();
    let b = Board::new(&image, "", MEM_MIB).unwrap();
    let (board, tmp) = (&b.boot, b.tmp.path());
    let disk = board.disk.clone();
    let generation: u64 = root_text(&image, "/usr/share/callgate/generation")
        .parse()
        .unwrap();
    let ssh_ann = |args: &[&str], stdin: Option<&std::path::Path>| b.ssh_ann(args, stdin).unwrap();
    // `show system` once the account answers (sshd and the account come up around READY).
    let show_system = |vm: &Vm, want: &str| {
        b.show_system(want, Duration::from_secs(120))
            .unwrap_or_else(|last| {
                panic!(
                    "no {want:?} in show system:\n{last}\nconsole:\n{}",
                    vm.console()
                )
            })
    };
    let slot_b = partition(&disk, "root-b").unwrap();
    let slot_b_head = |disk: &std::path::Path| {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(disk).unwrap();
        f.seek(SeekFrom::Start(slot_b.offset)).unwrap();
        let mut head = vec![0u8; 1 << 20];
        f.read_exact(&mut head).unwrap();
        head
    };

    // 1. The first boot (provisioned); a bad update refused, nothing written.
    let mut vm = Vm::start(&image, board).unwrap();
    let (_, ready) = boot_report(&mut vm, "first boot");
    assert!(ready, "first boot not ready:\n{}", vm.console());
    show_system(&vm, "booted: root-a\n");
    let entries = esp_entries(&disk).unwrap();
    assert_eq!(entries, [format!("callgate-{generation}-a.efi")]);
    let bad = tmp.join("flipped.update");
    copy_disk(&next, &bad).unwrap();
    let len = std::fs::metadata(&bad).unwrap().len();
    flip_byte(&bad, len / 2).unwrap();
    let before = slot_b_head(&disk);
    let r = ssh_ann(&["upgrade"], Some(&bad));
    assert!(!r.ok(), "a flipped update installed: {}", r.stdout);
    assert!(
        r.stdout.contains("refused: ")
            && r.stdout
                .contains("its SHA-256 is not the one the signed manifest names"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(slot_b_head(&disk) == before, "slot B was written");
    assert_eq!(esp_entries(&disk).unwrap(), entries, "the ESP changed");

    // 2. The good update: slot B, three tries, then a blessed boot of it.
    let started = std::time::Instant::now();
    let r = ssh_ann(&["upgrade"], Some(&next));
    let entry_b = format!("callgate-{}-b+3.efi", generation + 1);
    assert!(
        r.ok() && r.stdout.contains(&format!("boot entry {entry_b}")),
        "{} {}\nconsole:\n{}",
        r.stdout,
        r.stderr,
        vm.console()
    );
    println!(
        "upgrade: the good update installed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let out = show_system(&vm, "(on trial: 3 tries left, 0 done)");
    assert!(out.contains(&format!("entry={entry_b}")), "{out}");
    // The install is in the audit trail under ann (the helper runs as root): the flipped
    // file's refusal, then this one's start and outcome.
    let r = ssh_ann(&["show", "audit", "last", "30"], None);
    let trail: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" upgrade -> "))
        .collect();
    let by_ann = |what: &str| {
        trail
            .iter()
            .any(|l| l.contains(" ann ") && l.contains(" admin ") && l.contains(what))
    };
    assert!(
        by_ann("upgrade -> refused: ")
            && by_ann("upgrade -> started")
            && by_ann("upgrade -> installed: "),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(!trail.iter().any(|l| l.contains(" root ")), "{trail:#?}");
    assert!(slot_b_head(&disk) != before, "slot B was not written");
    // On the disk itself (the host's view of the file), not only in the guest's cache.
    assert!(
        esp_entries(&disk).unwrap().contains(&entry_b),
        "{:?}",
        esp_entries(&disk)
    );
    drop(vm);
    let mut vm = Vm::start(&image, board).unwrap();
    let (_, ready) = boot_report(&mut vm, "the updated slot");
    assert!(ready, "the updated slot is not ready:\n{}", vm.console());
    let next_version = format!("{}+next", root_text(&image, "/usr/share/callgate/version"));
    let blessed_b = format!(
        " booted version={next_version} generation={} entry=callgate-{}-b.efi (blessed)\n",
        generation + 1,
        generation + 1
    );
    let out = show_system(&vm, &blessed_b);
    assert!(out.contains("booted: root-b\n"), "{out}");
    assert!(
        vm.console()
            .contains("callgate-health: healthy (firewall, daemon, store)"),
        "{}",
        vm.console()
    );
    println!(
        "upgrade: the good update's slot booted and blessed {:.1} s after the upgrade began",
        started.elapsed().as_secs_f64()
    );

    // 3. The broken update: slot A, tried three times, then slot B again by itself.
    let r = ssh_ann(&["upgrade"], Some(&broken));
    let entry_a = format!("callgate-{}-a+3.efi", generation + 2);
    assert!(
        r.ok() && r.stdout.contains(&format!("boot entry {entry_a}")),
        "{} {}",
        r.stdout,
        r.stderr
    );
    drop(vm);
    for try_no in 1..=3 {
        let mut vm = Vm::start(&image, board).unwrap();
        let (which, seen) = vm.wait_for_any(
            &["callgate-health: NOT HEALTHY", "callgate-health: healthy"],
            BOOT,
        );
        assert!(
            matches!(seen, Seen::At(_)) && which == 0,
            "try {try_no}: no failed health check ({seen:?}):\n{}",
            vm.console()
        );
        // The unit's FailureAction reboots: QEMU (-no-reboot) ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while vm.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            vm.exited().is_some(),
            "try {try_no}: no reboot after the failed health check:\n{}",
            vm.console()
        );
    }
    let mut vm = Vm::start(&image, board).unwrap();
    let (_, ready) = boot_report(&mut vm, "the fallback");
    assert!(ready, "the fallback is not ready:\n{}", vm.console());
    let out = show_system(&vm, "booted: root-b\n");
    assert!(out.contains(&blessed_b), "{out}");
    assert!(
        out.contains(&format!(
            "entry=callgate-{}-a+0-3.efi (failed: no tries left, 3 done; the loader boots the other slot)",
            generation + 2
        )),
        "{out}"
    );
    assert!(
        out.contains("boot counting: on; this boot's entry is blessed\n"),
        "{out}"
    );
}

/// The heartbeat timing of the pair of VMs: two TCG guests (and sipp) on two cores, with
/// image tests running beside them, stall for far longer than the namespace pair's
/// threads do; 250 ms × 20 (a peer dead after 5 s) and a stall of 2 s noticed as late.
const VM_PAIR_TIMING: &str =
    "heartbeat_interval_ms = 250\ndead_after_misses = 20\nlate_after_ms = 2000\n";

/// The lab pair's config for `host` (`config/lab-pair-*.toml`) on a VM board: its zones on
/// the VM's NICs (`eth0` for the first of `net`, and so on), the board's own TPM device,
/// [`VM_PAIR_TIMING`], and `ann`'s account kept (the config replaces the provisioned one),
/// now also with a console password (`password_hash`, yescrypt) for the serial console.
fn vm_pair_config(host: Host, net: &VmNet, ann: &KeyPair, password_hash: &str) -> String {
    let mut t = hil_tests::pair::pair_toml(host);
    let mut edit = |from: &str, to: &str| {
        assert!(t.contains(from), "the pair config no longer holds {from:?}");
        t = t.replacen(from, to, 1);
    };
    for (i, nic) in net.nics.iter().enumerate() {
        edit(
            &format!("interfaces = [\"{}\"]", nic.segment.appliance_iface()),
            &format!("interfaces = [\"eth{i}\"]"),
        );
    }
    edit(
        "tcti = \"swtpm:host=127.0.0.1,port=2321\"",
        "tcti = \"device:/dev/tpmrm0\"",
    );
    edit(hil_tests::pair::TEST_TIMING.0, VM_PAIR_TIMING);
    format!(
        "{t}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\nconsole_password = \"{password_hash}\"\n",
        ann.public
    )
}

/// `ARGS | display json` over SSH as ann on `at`: the reply's data.
fn ann_json(
    mgmt: &hil_tests::Ns<'_>,
    ann: &KeyPair,
    at: IpAddr,
    args: &[&str],
) -> serde_json::Value {
    let mut words = args.to_vec();
    words.extend(["|", "display", "json"]);
    let r = ssh(mgmt, &ann.private, "ann", at, &words);
    if !r.ok() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null)
}

/// Two image VMs as the redundant pair, on the namespace lab's pair segments (carrier,
/// PBX, management, sync), each provisioned with ann by its installer's item, then made a
/// pair the way an engineer does it on an appliance with no root shell: over SSH, the
/// site's pair config loaded and committed on each (`load override`), `pair init` on A,
/// `pair join` on B. Calls from the carrier's sipp to the WAN VIP, answered by the PBX's
/// sipp, are held across a kill of A's VM (QEMU killed: power gone); every call succeeds:
/// the ones held at the kill end through B, which records them as answered by lab-a and
/// ended by lab-b, and the calls placed after it are answered through B. Before the calls a
/// scan of the WAN VIP's TCP ports finds SIP alone; after them neither board's disk holds
/// the caller's number or name in the clear.
#[test]
fn image_vm_pair_the_active_vm_killed_calls_go_on_through_the_other() {
    use hil_tests::addr::{A_MGMT_V4, B_MGMT_V4, CARRIER_V4, PBX_V4, WAN_VIP_V4};
    use hil_tests::calls::{u, CALLER, CALLER_NAME, UDP_NUMBER};
    use hil_tests::console::ssh_with_input;
    use hil_tests::sipp::{Sipp, Transport};
    let image = Image::from_env().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab::start_pair(&[Host::Carrier, Host::A, Host::B, Host::Pbx, Host::Mgmt]).unwrap();
    let ann = KeyPair::new(tmp.path(), "ann");
    let boots: Vec<Boot> = [Host::A, Host::B]
        .into_iter()
        .map(|h| hil_tests::vm::board_boot(&image, tmp.path(), &lab, h, "", &ann, MEM_MIB).unwrap())
        .collect();
    let mut vm_a = Vm::start(&image, &boots[0]).unwrap();
    let mut vm_b = Vm::start(&image, &boots[1]).unwrap();
    for (vm, what) in [(&mut vm_a, "A"), (&mut vm_b, "B")] {
        let (r, ready) = boot_report(vm, what);
        assert!(ready, "{what} not ready:\n{}", r.join("\n"));
    }
    let mgmt = lab.ns(Host::Mgmt);
    let (at_a, at_b): (IpAddr, IpAddr) = (A_MGMT_V4.into(), B_MGMT_V4.into());
    let consoles = |vm_a: &Vm, vm_b: &Vm| {
        format!(
            "A's console:\n{}\nB's console:\n{}",
            vm_a.console(),
            vm_b.console()
        )
    };

    // 1. Each VM gets its pair config over SSH: a script of console lines.
    const ANN_PASSWORD: &str = "correct horse battery staple";
    let hash = hil_tests::console::yescrypt(ANN_PASSWORD);
    for (host, at, boot) in [(Host::A, at_a, &boots[0]), (Host::B, at_b, &boots[1])] {
        let net = boot.net.as_ref().unwrap();
        let config = vm_pair_config(host, net, &ann, &hash);
        let script = format!("configure\nload override\n{config}\u{4}\ncommit\nexit\nexit\n");
        let mut out = None;
        // sshd and ann's account come up around READY.
        let ok = hil_tests::poll_until(Duration::from_secs(90), Duration::from_secs(3), || {
            let o = ssh_with_input(&mgmt, &ann.private, &["-T", &format!("ann@{at}")], &script);
            // The proxy and the pair are wired in as the daemon starts: it says it restarts.
            let done = String::from_utf8_lossy(&o.stdout)
                .contains("the SIP proxy starts and the pair is added: callgated restarts now");
            out = Some(o);
            done
        });
        assert!(ok, "{host:?}: {out:?}\n{}", consoles(&vm_a, &vm_b));
    }

    // 2. Paired from the consoles: A makes the key, B joins with the secret. Each daemon
    //    restarted to wire in the proxy and the pair its commit added (systemd starts it
    //    again): both are asked until they answer.
    let mut init = serde_json::Value::Null;
    let made = hil_tests::poll_until(Duration::from_secs(90), Duration::from_secs(2), || {
        init = ann_json(&mgmt, &ann, at_a, &["pair", "init"]);
        init["pairing_secret"].is_string()
    });
    let secret = init["pairing_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        made && secret.len() == 71,
        "{init}\n{}",
        consoles(&vm_a, &vm_b)
    );
    let mut join = None;
    let joined = hil_tests::poll_until(Duration::from_secs(90), Duration::from_secs(2), || {
        let o = ssh_with_input(
            &mgmt,
            &ann.private,
            &[&format!("ann@{at_b}"), "pair", "join"],
            &format!("{secret}\n"),
        );
        let ok = o.status.success();
        join = Some(o);
        ok
    });
    assert!(joined, "{join:?}\n{}", consoles(&vm_a, &vm_b));
    let pair = |at: IpAddr| ann_json(&mgmt, &ann, at, &["show", "pair"]);
    let settled = hil_tests::poll_until(Duration::from_secs(60), Duration::from_secs(1), || {
        let (a, b) = (pair(at_a), pair(at_b));
        a["role"] == "active"
            && b["role"] == "standby"
            && a["peer_alive"] == true
            && b["peer_alive"] == true
    });
    assert!(
        settled,
        "the pair did not settle: A {} B {}\n{}",
        pair(at_a),
        pair(at_b),
        consoles(&vm_a, &vm_b)
    );

    // The engineer's shell on B's serial console (ttyS0): ann's console password, then the
    // console's prompt, where `show pair` says B is the standby.
    vm_b.type_line("ann").unwrap();
    let seen = vm_b.wait_for("Password:", Duration::from_secs(60));
    assert!(matches!(seen, Seen::At(_)), "{seen:?}\n{}", vm_b.console());
    vm_b.type_line(ANN_PASSWORD).unwrap();
    let seen = vm_b.wait_for("ann@lab-b> ", Duration::from_secs(60));
    assert!(matches!(seen, Seen::At(_)), "{seen:?}\n{}", vm_b.console());
    vm_b.type_line("show pair | display json").unwrap();
    let seen = vm_b.wait_for("\"role\": \"standby\"", Duration::from_secs(30));
    assert!(matches!(seen, Seen::At(_)), "{seen:?}\n{}", vm_b.console());
    vm_b.type_line("exit").unwrap();

    // The WAN side with the site's config: a scan of every TCP port of the WAN VIP from
    // the carrier finds SIP, which its allowlist admits, and nothing else.
    let scan = lab
        .ns(Host::Carrier)
        .port_scan(WAN_VIP_V4.into(), &TCP_ALL)
        .unwrap();
    assert_eq!(scan.scanned(), 65535, "{scan:?}");
    assert_eq!(
        scan.answered(),
        vec!["5060/tcp open".to_owned()],
        "{scan:?}"
    );

    // 3. Calls through the WAN VIP, held 20 s; A's VM is killed while they are held.
    let pbx = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(PBX_V4, 5060)
        .transport(Transport::Udp)
        .spawn()
        .unwrap();
    pbx.wait_ready(Duration::from_secs(10)).unwrap();
    const CALLS: u64 = 20;
    let calls = Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(CARRIER_V4, 5060)
        .remote(WAN_VIP_V4, 5060)
        .transport(Transport::Udp)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(CALLS)
        .rate(2.0)
        .duration(Duration::from_secs(20))
        .timeout(Duration::from_secs(180))
        .spawn()
        .unwrap();
    // About half the calls are answered by then, none ended.
    std::thread::sleep(Duration::from_secs(6));
    let a_console = vm_a.console();
    drop(vm_a);
    let r = calls.wait(Duration::from_secs(240)).unwrap();
    let _ = pbx.stop();
    assert_eq!(
        (r.successful, r.failed),
        (CALLS, 0),
        "{}\nA's console:\n{a_console}\nB's console:\n{}",
        r.summary(),
        vm_b.console()
    );
    assert_eq!(pair(at_b)["role"], "active", "{}", pair(at_b));

    // 4. B holds a complete record of every call; the ones held at the kill were answered
    //    by A and ended by B.
    let mut records = Vec::new();
    let all = hil_tests::poll_until(Duration::from_secs(30), Duration::from_secs(1), || {
        records = ann_json(&mgmt, &ann, at_b, &["show", "cdrs", "last", "100"])["cdrs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| r["cdr"].clone())
            .collect();
        records.len() >= CALLS as usize
    });
    assert!(all, "{records:#?}");
    let mut carried = 0;
    for id in r.answered() {
        let mine: Vec<&serde_json::Value> =
            records.iter().filter(|c| c["call_id"] == *id).collect();
        assert_eq!(mine.len(), 1, "call {id}: {mine:#?}");
        let c = mine[0];
        assert_eq!(c["disposition"], "answered", "{c}");
        assert!(!c["end_at"].is_null(), "{c}");
        // Which node answered it says which side of the kill it was on (the records' times
        // are each guest's own clock, not the harness's): every call A answered was held
        // across the kill (held 20 s, A killed 6 s in) and so ended through B.
        if c["appliance"] == "lab-a" {
            assert_eq!(c["ended_by"], "lab-b", "{c}");
            assert!(u(&c["duration_ms"]) > 0, "{c}");
            carried += 1;
        } else {
            assert_eq!(c["appliance"], "lab-b", "{c}");
        }
    }
    assert!(
        carried > 0,
        "no call was held across the kill: {records:#?}"
    );
    assert!(
        carried < CALLS,
        "no call was placed after the kill: {records:#?}"
    );

    // 5. Both disks as a thief has them: neither holds the caller's number or name in the
    //    clear anywhere (the state disk is LUKS2 sealed to the board's TPM, and the records
    //    in it are sealed by the vault), though B showed ann both just now.
    drop(vm_b);
    assert!(
        records
            .iter()
            .all(|c| c["caller"] == CALLER && c["caller_name"] == CALLER_NAME),
        "{records:#?}"
    );
    for boot in &boots {
        for needle in [CALLER, CALLER.trim_start_matches('+'), CALLER_NAME] {
            assert!(
                !file_contains(&boot.disk, needle).unwrap(),
                "{needle:?} in the clear on {}",
                boot.disk.display()
            );
        }
    }
    scan_finds_a_plant(&boots[1].disk, tmp.path(), CALLER);
}

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The appliance image (`scripts/image`, found through `$CALLGATE_IMAGE_DIR`) booted under
//! QEMU with Secure Boot on (Debian's secboot OVMF, the image's certificate enrolled) and a
//! swtpm as its TPM, no network card. What is asserted is what the guest printed on its
//! serial console: the firmware's refusals, the kernel's panic, the image's boot report.
//!
//! - the image boots to a ready daemon with the firewall enforcing, on a verified,
//!   read-only root, with Secure Boot, lockdown and the TPM;
//! - one flipped byte in the root partition stops the boot (dm-verity);
//! - the firmware refuses the UKI unsigned, or signed by a key it does not trust;
//! - (no VM) the root holds the firmware, its units and the factory config, and no
//!   package manager, compiler, docs or SSH host key.
//!
//! scripts/test runs the VM tests apart from the other system tests (their names start
//! with `image_vm_`): TCG boots load both cores.

use std::time::Duration;

use hil_tests::vm::{
    copy_disk, flip_byte, partition, replace_uki, uki_signed_by_another_key, unsigned_uki, Image,
    Seen, Vm,
};

/// The factory config the image must carry as /etc/callgate/callgate.toml.
const FACTORY: &str = include_str!("../../config/factory.toml");

/// RAM per VM.
const MEM_MIB: u32 = 1024;
/// Power-on to the boot report, under TCG (57–98 s measured on the build machines).
const BOOT: Duration = Duration::from_secs(360);
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
    let mut vm = Vm::boot(&image, &image.disk(), MEM_MIB).unwrap();
    let (which, seen) =
        vm.wait_for_any(&["callgate-boot: ready", "callgate-boot: NOT READY"], BOOT);
    let console = vm.console();
    let Seen::At(at) = seen else {
        panic!("no boot report ({seen:?}); console:\n{console}");
    };
    let r = report(&console);
    assert_eq!(
        which,
        0,
        "the boot report says not ready:\n{}",
        r.join("\n")
    );
    let expect = [
        "secure_boot=on".to_owned(),
        "lockdown=integrity".to_owned(),
        format!("roothash={}", image.roothash().unwrap()),
        "root=/dev/mapper/root fstype=squashfs ro=yes verity=verified".to_owned(),
        "tpm=2 device=/dev/tpmrm0".to_owned(),
        "firewall=enforcing table=\"inet callgate\" input_policy=drop".to_owned(),
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
        daemon.starts_with("callgated=ready status=\"locked: not provisioned"),
        "{daemon}"
    );
    let times = r.iter().find(|l| l.starts_with("times ")).unwrap();
    println!(
        "image boot: power-on to the report {:.1} s under TCG; {times}",
        at.as_secs_f64()
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
    // Nothing of the appliance ran: no daemon, no report, no login prompt.
    for never in ["callgate-boot:", "callgated", "login:"] {
        assert!(
            !console.contains(never),
            "{never:?} on the console:\n{console}"
        );
    }
    println!(
        "flipped byte: panic {:.1} s after power-on",
        vm.uptime().as_secs_f64()
    );
}

/// Boots `disk` (whose UKI the firmware must not trust) and checks the firmware refused
/// it: "Access Denied" for the disk, nothing of Linux afterwards.
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
            .any(|l| l.contains("failed to load Boot") && l.ends_with("Access Denied")),
        "no Secure Boot refusal of the disk:\n{console}"
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
        "/usr/sbin/nft",
        "/usr/sbin/sshd",
        "/etc/protocols",
        "/etc/callgate/callgate.toml",
        "/etc/ssh/sshd_config",
        "/etc/pam.d/login",
        "/etc/systemd/system/sysinit.target.wants/callgate-baseline.service",
        "/etc/systemd/system/multi-user.target.wants/callgated.service",
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

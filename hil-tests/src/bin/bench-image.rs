//! `bench-image`: the boot part of `scripts/bench image`. Boots the appliance image
//! (`$CALLGATE_IMAGE_DIR`, built with `CALLGATE_IMAGE_TEST_UPDATES=1`) and its anchor, a
//! stock Debian 12 root with the same kernel (`images/anchor/build`), in turn, `--runs N`
//! times each, one VM at a time, the same way: QEMU TCG, q35, the image's OVMF, a swtpm,
//! the same memory, no NIC; then one upgrade.
//!
//! - **Appliance**: power-on (QEMU started) to the baseline ruleset in the kernel
//!   (`boot_to_enforcing_s`) and to the daemon's READY (`boot_to_ready_s`). The boot report
//!   (`callgate-boot: times baseline_s=… ready_s=… report_s=…`) gives both on the kernel's
//!   clock and the moment it printed, which its ready marker (the second serial port,
//!   written right after) gives on ours: the kernel's start on our clock is when the marker
//!   arrived less `report_s`.
//! - **Anchor**: power-on to its `login:` prompt on the serial console (`debian_boot_s`).
//! - **Upgrade** (`upgrade_s`, one run: `upgrade_runs=1`): a provisioned board on the lab
//!   (`hil_tests::vm::Board`, as the A/B VM test sets it up: A's place, the admin `ann`)
//!   booted to its marker and `ann`'s `show system`; then the clock runs from the start of
//!   `ssh ann@A upgrade < next.update` (the image's `next` test update: streamed, checked,
//!   written into slot B) through the power cycle (QEMU runs with `-no-reboot`: the VM is
//!   killed and started again on the same disk and TPM, as the test does) to
//!   `callgate-health: healthy` on the console of the new slot's first boot. Checked after
//!   the clock stops: `show system` says slot B booted and its entry blessed.
//!
//! Output: one line per boot on stderr; last line on stdout:
//! `BENCH-IMAGE-BOOT boot_to_enforcing_s=… boot_to_ready_s=… debian_boot_s=… runs=…
//! upgrade_s=… upgrade_runs=1` (medians of the boots). Usage: `bench-image --anchor DIR
//! [--runs N]`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hil_tests::vm::{Board, Boot, DirectKernel, Image, Ready, Seen, Vm};

/// RAM per VM (the image tests' figure).
const MEM_MIB: u32 = 1024;
/// One boot, at most.
const BOOT: Duration = Duration::from_secs(420);
/// The ready marker to the boot report's times line on the console (through the journal).
const REPORT: Duration = Duration::from_secs(60);

fn fail(what: &str, why: impl std::fmt::Display) -> ! {
    eprintln!("bench-image: {what}: {why}");
    std::process::exit(1);
}

/// A `key=value` of the boot report's times line, as seconds.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// One boot of the appliance: (power-on to enforcing, power-on to ready), seconds.
fn appliance(image: &Image) -> (f64, f64) {
    let mut vm = Vm::boot(image, &image.disk(), MEM_MIB).unwrap_or_else(|e| fail("boot", e));
    let printed = match vm.wait_ready(BOOT) {
        Ready::Ready(at) => at,
        marker => fail(
            "appliance boot",
            format!("{marker:?}, console:\n{}", vm.console()),
        ),
    };
    let needle = "callgate-boot: times ";
    if !matches!(vm.wait_for(needle, REPORT), Seen::At(_)) {
        fail("appliance boot", "no times line");
    }
    let console = vm.console();
    let line = console
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| fail("appliance boot", "no times line"));
    let (Some(base), Some(ready), Some(report)) = (
        field(line, "baseline_s"),
        field(line, "ready_s"),
        field(line, "report_s"),
    ) else {
        fail("appliance boot", format!("unreadable times line {line:?}"));
    };
    // Our clock at the kernel's start: the marker's arrival less the kernel's time when
    // the times line was made (the marker is written right after it).
    let kernel_at = printed.as_secs_f64() - report;
    (kernel_at + base, kernel_at + ready)
}

/// One boot of the anchor: power-on to its login prompt, seconds.
fn anchor(image: &Image, dir: &std::path::Path) -> f64 {
    let cmdline =
        std::fs::read_to_string(dir.join("cmdline")).unwrap_or_else(|e| fail("anchor cmdline", e));
    let boot = Boot {
        vars: Some(image.ovmf_vars_setup_mode()),
        direct_kernel: Some(DirectKernel {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline: cmdline.trim().to_owned(),
        }),
        ..Boot::new(&dir.join("root.img"), MEM_MIB)
    };
    let mut vm = Vm::start(image, &boot).unwrap_or_else(|e| fail("anchor boot", e));
    match vm.wait_for("login:", BOOT) {
        Seen::At(at) => at.as_secs_f64(),
        seen => fail(
            "anchor boot",
            format!("{seen:?}, console:\n{}", vm.console()),
        ),
    }
}

/// One upgrade of a provisioned board: seconds from the start of `upgrade` to the first
/// healthy boot of the new slot.
fn upgrade(image: &Image) -> f64 {
    let next = image
        .test_update("next")
        .unwrap_or_else(|e| fail("upgrade", e));
    let board = Board::new(image, "", MEM_MIB).unwrap_or_else(|e| fail("upgrade: board", e));
    let mut vm = Vm::start(image, &board.boot).unwrap_or_else(|e| fail("upgrade: boot", e));
    let marker = vm.wait_ready(BOOT);
    if !marker.is_ready() {
        fail(
            "upgrade: first boot",
            format!("{marker:?}, console:\n{}", vm.console()),
        );
    }
    // The admin's account answers (it comes up around READY).
    if let Err(last) = board.show_system("booted: root-a\n", Duration::from_secs(120)) {
        fail("upgrade: show system before", last);
    }
    let started = Instant::now();
    let r = board
        .ssh_ann(&["upgrade"], Some(&next))
        .unwrap_or_else(|e| fail("upgrade: ssh", e));
    if !(r.ok() && r.stdout.contains("-b+3.efi")) {
        fail("upgrade", format!("{}{}", r.stdout, r.stderr));
    }
    let installed = started.elapsed().as_secs_f64();
    // The power cycle (QEMU runs with -no-reboot): off, then the same board on again.
    drop(vm);
    let mut vm = Vm::start(image, &board.boot).unwrap_or_else(|e| fail("upgrade: reboot", e));
    let (which, seen) = vm.wait_for_any(
        &["callgate-health: healthy", "callgate-health: NOT HEALTHY"],
        BOOT,
    );
    let upgrade_s = started.elapsed().as_secs_f64();
    if !(which == 0 && matches!(seen, Seen::At(_))) {
        fail(
            "upgrade: the new slot",
            format!("{seen:?}, console:\n{}", vm.console()),
        );
    }
    // What was timed is an upgrade: slot B booted, its entry blessed.
    match board.show_system(
        "boot counting: on; this boot's entry is blessed\n",
        Duration::from_secs(120),
    ) {
        Ok(out) if out.contains("booted: root-b\n") => {}
        Ok(out) | Err(out) => fail("upgrade: show system after", out),
    }
    eprintln!(
        "bench-image: upgrade: installed {installed:.1} s, the new slot healthy {upgrade_s:.1} s after the upgrade began"
    );
    upgrade_s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let anchor_dir = PathBuf::from(
        value("--anchor").unwrap_or_else(|| fail("usage", "bench-image --anchor DIR [--runs N]")),
    );
    let runs: usize = value("--runs")
        .map_or(Ok(5), |r| r.parse())
        .unwrap_or_else(|e| fail("--runs", e));
    let image = Image::from_env().unwrap_or_else(|e| fail("image", e));
    let (mut enforcing, mut ready, mut debian) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (e, r) = appliance(&image);
        eprintln!("bench-image: run {run}/{runs}: appliance enforcing {e:.1} s, ready {r:.1} s");
        let d = anchor(&image, &anchor_dir);
        eprintln!("bench-image: run {run}/{runs}: debian login prompt {d:.1} s");
        enforcing.push(e);
        ready.push(r);
        debian.push(d);
    }
    let upgrade_s = upgrade(&image);
    println!(
        "BENCH-IMAGE-BOOT boot_to_enforcing_s={:.1} boot_to_ready_s={:.1} debian_boot_s={:.1} runs={runs} upgrade_s={upgrade_s:.1} upgrade_runs=1",
        median(enforcing),
        median(ready),
        median(debian)
    );
}

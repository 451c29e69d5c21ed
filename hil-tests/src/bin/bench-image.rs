//! `bench-image`: the boot part of `scripts/bench image`. Boots the appliance image
//! (`$CALLGATE_IMAGE_DIR`) and its anchor, a stock Debian 12 root with the same kernel
//! (`images/anchor/build`), in turn, `--runs N` times each, one VM at a time, the same way:
//! QEMU TCG, q35, the image's OVMF, a swtpm, the same memory, no NIC.
//!
//! - **Appliance**: power-on (QEMU started) to the baseline ruleset in the kernel
//!   (`boot_to_enforcing_s`) and to the daemon's READY (`boot_to_ready_s`). The boot report
//!   (`callgate-boot: times baseline_s=… ready_s=… report_s=…`) gives both on the kernel's
//!   clock and the moment it printed, which its ready marker (the second serial port,
//!   written right after) gives on ours: the kernel's start on our clock is when the marker
//!   arrived less `report_s`.
//! - **Anchor**: power-on to its `login:` prompt on the serial console (`debian_boot_s`).
//!
//! Output: one line per boot on stderr; last line on stdout:
//! `BENCH-IMAGE-BOOT boot_to_enforcing_s=… boot_to_ready_s=… debian_boot_s=… runs=…`
//! (medians). Usage: `bench-image --anchor DIR [--runs N]`.

use std::path::PathBuf;
use std::time::Duration;

use hil_tests::vm::{Boot, DirectKernel, Image, Ready, Seen, Vm};

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
    println!(
        "BENCH-IMAGE-BOOT boot_to_enforcing_s={:.1} boot_to_ready_s={:.1} debian_boot_s={:.1} runs={runs}",
        median(enforcing),
        median(ready),
        median(debian)
    );
}

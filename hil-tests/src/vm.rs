//! The appliance image under QEMU: the disk `scripts/image` built, booted the way a board
//! boots it, with Secure Boot on and a TPM.
//!
//! ## What
//! [`Image::from_env`] finds the build (`$CALLGATE_IMAGE_DIR`, which `scripts/test` sets
//! after running `scripts/image`). [`Vm::boot`] starts a VM: `qemu-system-x86_64 -machine
//! q35,smm=on` (TCG: KVM is not usable on the build machines) with Debian's secboot OVMF and
//! a copy of the variable store that has the image's certificate enrolled as PK, KEK and
//! db, a `swtpm` as its TPM 2.0, and the serial console in a file; no network card
//! (`-nic none`) unless the [`Boot`] puts it on a lab ([`VmNet`]). [`Vm::wait_for`] watches
//! that console: what the tests assert is what the guest itself printed there (the kernel,
//! the firmware, the image's boot report); [`Vm::type_line`] types on it, as an engineer at
//! the serial console does.
//!
//! A second serial port (the guest's ttyS1) carries the **ready marker** alone: the boot
//! report writes exactly one line there at its end, `CALLGATE-READY` or
//! `CALLGATE-NOT-READY WHAT...` (`images/libexec/boot-report`). [`Vm::wait_ready`] waits
//! for it: "is the appliance up" without reading the console, whose report lines the
//! tests still read where they check what the boot established.
//!
//! [`Vm::start`] boots with a [`Boot`]: a disk the guest writes to (the state disk's tests
//! boot one disk several times), a TPM state kept across VMs (the same board booted again)
//! or a fresh one (another board), another variable store (another Secure Boot state), the
//! installer's provisioning item (the fw_cfg item `opt/org.callgate/provision`: the first
//! admin's login and SSH key, which `images/libexec/provision` applies once).
//!
//! [`VmNet::on_lab`] puts the VM where a namespace appliance sits on a [`Lab`]: QEMU runs
//! inside that host's namespace (`ip netns exec`) with a `virtio-net-pci` NIC per segment
//! on a tap [`Lab::wire_vm`] made there, and the host's addresses go to the guest as the
//! fw_cfg item `opt/org.callgate/network` (`images/libexec/network` reads it; see
//! `images/README.md` for why that does not weaken the verified boot).
//!
//! [`Board`] is one provisioned board on a lab, booted again and again (the image tests,
//! the benchmark's upgrade, `image-demo`): its own disk and TPM, appliance A's place, the admin `ann`,
//! and `ssh ann@A ...` from the engineers' host ([`Board::ssh_ann`],
//! [`Board::show_system`]).
//!
//! The attacker's side works on copies of the disk: [`copy_disk`], [`flip_byte`],
//! [`replace_uki`], [`esp_entries`], [`partition`] (offsets from the GPT), [`unsigned_uki`],
//! [`uki_signed_by_another_key`].
//!
//! ## Design
//! - Each VM has its own temporary directory (the variable store copy, the TPM's state, the
//!   console log, the marker's file, QEMU's stderr), removed when the [`Vm`] is dropped.
//! - QEMU and swtpm each lead a process group of their own; dropping the [`Vm`] SIGKILLs
//!   both groups and reaps them, also while a failed test unwinds.
//! - [`Vm::boot`] attaches the disk with `snapshot=on`: the guest's writes never reach the
//!   file. A [`Boot`] with `writable` lets them through (QEMU writes through to the host's
//!   page cache, so a guest `sync` is on the file even when the VM is killed).
//! - The serial port is a Unix socket (QEMU logs all the guest writes to the console file
//!   whether or not anyone is connected); [`Vm::type_line`] connects once and keeps the
//!   connection, and a thread drains what the guest writes to it so the UART never stalls.
//! - The marker's port is a `file` chardev (`marker.log`): output only, the guest can send
//!   nothing back through it and nobody types on it. The firmware (OVMF) writes its own
//!   console to every serial port, so before Linux starts the port carries the firmware's
//!   and the loader's text too; the kernel's console is ttyS0 alone, so after that only
//!   the marker goes there. The marker is the line with `CALLGATE-` ([`Vm::marker_lines`]).
//!   It comes straight from the boot report's write to the port, while the console's lines
//!   go through the journal: the marker may arrive a moment before the report's last
//!   console lines.
//!
//! ## Limits
//! - On a lab, the guest's addresses are set by `systemd-networkd` around the time the
//!   daemon is ready (nothing waits for them): wait for a service before probing.
//! - Under TCG a boot to the daemon's readiness takes about a minute here; run few VMs at
//!   once on a 2-core machine.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::cmd::{describe, run_checked, HELPER_TIMEOUT};
use crate::{Host, Lab, LabError, Result, Segment};

/// How often the console file is read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// The serial console's file in a VM's directory.
const CONSOLE: &str = "serial.log";

/// The serial port's socket in a VM's directory (for typing on the console).
const SERIAL_SOCKET: &str = "serial.sock";

/// The second serial port's file in a VM's directory: the ready marker.
const MARKER: &str = "marker.log";

/// One build of `scripts/image`.
#[derive(Debug, Clone)]
pub struct Image {
    dir: PathBuf,
}

impl Image {
    /// The build in `$CALLGATE_IMAGE_DIR`. An error (never a skip) when it is unset or
    /// incomplete: `scripts/image DIR` makes one.
    pub fn from_env() -> Result<Image> {
        let dir = std::env::var_os("CALLGATE_IMAGE_DIR").map(PathBuf::from).ok_or_else(|| {
            LabError::Io(std::io::Error::other(
                "CALLGATE_IMAGE_DIR is not set: run scripts/image DIR and set it to DIR (scripts/test does both)",
            ))
        })?;
        let image = Image { dir };
        for f in [
            image.disk(),
            image.uki(),
            image.ovmf_code(),
            image.ovmf_vars(),
            image.cert(),
            image.squashfs(),
        ] {
            if !f.exists() {
                return Err(LabError::Io(std::io::Error::other(format!(
                    "{}: missing (run scripts/image {})",
                    f.display(),
                    image.dir.display()
                ))));
            }
        }
        Ok(image)
    }

    /// The GPT disk (`callgate.img`).
    pub fn disk(&self) -> PathBuf {
        self.dir.join("callgate.img")
    }

    /// The signed UKI, as it is on the ESP (`callgate.efi`).
    pub fn uki(&self) -> PathBuf {
        self.dir.join("callgate.efi")
    }

    /// Debian's OVMF built with Secure Boot and SMM.
    pub fn ovmf_code(&self) -> PathBuf {
        self.dir.join("ovmf-code.fd")
    }

    /// The variable store with the image's certificate enrolled (copied for each VM).
    pub fn ovmf_vars(&self) -> PathBuf {
        self.dir.join("ovmf-vars.fd")
    }

    /// Debian's empty variable store: the firmware in setup mode, Secure Boot off (another
    /// Secure Boot state, so another PCR 7).
    pub fn ovmf_vars_setup_mode(&self) -> PathBuf {
        self.dir.join("ovmf-vars-setup-mode.fd")
    }

    /// Slot A's root filesystem (squashfs), as it went into the disk.
    pub fn squashfs(&self) -> PathBuf {
        self.dir.join("root.squashfs")
    }

    /// The paths in the root (`/usr/sbin/callgated`, ...), from `unsquashfs -l`.
    pub fn root_paths(&self) -> Result<Vec<String>> {
        let out = run(Command::new("unsquashfs")
            .args(["-l", "-d", ""])
            .arg(self.squashfs()))?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(str::to_owned)
            .collect())
    }

    /// One file of the root, read from the squashfs (`unsquashfs -cat`).
    pub fn root_file(&self, path: &str) -> Result<Vec<u8>> {
        let out = crate::cmd::output_with_timeout(
            Command::new("unsquashfs")
                .arg("-cat")
                .arg(self.squashfs())
                .arg(path.trim_start_matches('/')),
            None,
            HELPER_TIMEOUT,
        )?;
        if !out.status.success() {
            return Err(LabError::Failed {
                cmd: format!("unsquashfs -cat {path}"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// This build as a signed update file (`callgate.update`).
    pub fn update_file(&self) -> PathBuf {
        self.dir.join("callgate.update")
    }

    /// A test update `scripts/image` made with `CALLGATE_IMAGE_TEST_UPDATES=1`
    /// (`test-updates/NAME.update`: `next`, a good later build; `broken`, one whose daemon
    /// never becomes ready). An error naming how to make it when it is not there.
    pub fn test_update(&self, name: &str) -> Result<PathBuf> {
        let f = self.dir.join("test-updates").join(format!("{name}.update"));
        if !f.exists() {
            return Err(LabError::Io(std::io::Error::other(format!(
                "{}: missing (CALLGATE_IMAGE_TEST_UPDATES=1 scripts/image {})",
                f.display(),
                self.dir.display()
            ))));
        }
        Ok(f)
    }

    /// The update key's public half, as the root carries it (`update-key.der`).
    pub fn update_key(&self) -> PathBuf {
        self.dir.join("update-key.der")
    }

    /// The certificate the image is signed with.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("db.crt")
    }

    /// The root hash of slot A's dm-verity (hex), as the build wrote it.
    pub fn roothash(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("roothash"))?
            .trim()
            .to_owned())
    }
}

/// How [`Vm::start`] boots a VM.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The disk (the image's or a copy).
    pub disk: PathBuf,
    /// Whether the guest's writes reach `disk` (otherwise `snapshot=on`).
    pub writable: bool,
    /// The swtpm's state directory, kept by the caller across VMs (the same board again);
    /// `None`: a fresh TPM in the VM's own directory (another board).
    pub tpm_state: Option<PathBuf>,
    /// The variable store to copy for this VM; `None`: the image's enrolled one.
    pub vars: Option<PathBuf>,
    /// RAM.
    pub memory_mib: u32,
    /// The VM's NICs on a lab; `None`: no NIC at all.
    pub net: Option<VmNet>,
    /// A kernel the firmware takes from QEMU instead of the disk's ESP (the benchmark's
    /// stock Debian anchor, `images/anchor/build`); `None`: the disk boots itself.
    pub direct_kernel: Option<DirectKernel>,
    /// The installer's provisioning item (`images/libexec/provision`: the first admin's
    /// login and SSH key), as the fw_cfg item `opt/org.callgate/provision`; `None`: none.
    pub provision: Option<String>,
    /// A second disk (after the boot disk: the guest's `vdb`), written through (a test
    /// reads back what the guest did to it); `None`: none.
    pub extra_disk: Option<PathBuf>,
}

/// A kernel, its initrd and command line, handed to the firmware by QEMU (`-kernel`,
/// `-initrd`, `-append`).
#[derive(Debug, Clone)]
pub struct DirectKernel {
    /// The kernel image.
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: PathBuf,
    /// Its command line.
    pub cmdline: String,
}

/// A VM's place on a [`Lab`]: QEMU runs inside the namespace of a lab host, with one NIC
/// per tap [`Lab::wire_vm`] made there, and the guest learns the host's addresses through
/// QEMU's firmware configuration device (`images/libexec/network` reads them).
#[derive(Debug, Clone)]
pub struct VmNet {
    /// The lab namespace QEMU runs in (its taps are there).
    pub netns: String,
    /// The NICs in the guest's order: the first is `eth0`.
    pub nics: Vec<Nic>,
}

/// One NIC of a VM on a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The segment its cable goes to.
    pub segment: Segment,
    /// The tap QEMU opens, in [`VmNet::netns`].
    pub tap: String,
    /// Its MAC address (`52:54:00:ca:HH:SS`, locally administered).
    pub mac: String,
    /// The addresses the guest gives it (`203.0.113.1/24`, `2001:db8:1::1/64`, ...).
    pub addrs: Vec<String>,
}

impl VmNet {
    /// The VM in `host`'s place on `lab` (which wires the namespace for it: its own
    /// interfaces lose their addresses), with the host's addresses on each segment. The
    /// NIC on the management segment comes first (`eth0`: the factory config's management
    /// zone), then WAN, private, sync.
    pub fn on_lab(lab: &Lab, host: Host) -> Result<VmNet> {
        let mut ports = lab.wire_vm(host)?;
        ports.sort_by_key(|p| (p.segment != Segment::Mgmt, p.segment));
        let host_byte = Host::ALL.iter().position(|&h| h == host).unwrap_or(0);
        let nics = ports
            .into_iter()
            .map(|p| {
                let seg_byte = Segment::ALL
                    .iter()
                    .position(|&s| s == p.segment)
                    .unwrap_or(0);
                let (_, len4) = p.segment.v4_net();
                let (_, len6) = p.segment.v6_net();
                let v4 = host
                    .v4_addrs(p.segment)
                    .iter()
                    .map(|a| format!("{a}/{len4}"));
                let v6 = host
                    .v6_addrs(p.segment)
                    .iter()
                    .map(|a| format!("{a}/{len6}"));
                Nic {
                    segment: p.segment,
                    tap: p.tap,
                    mac: format!("52:54:00:ca:{host_byte:02x}:{seg_byte:02x}"),
                    addrs: v4.chain(v6).collect(),
                }
            })
            .collect();
        Ok(VmNet {
            netns: lab.ns_name(host),
            nics,
        })
    }

    /// The NIC on `segment`.
    pub fn nic(&self, segment: Segment) -> Option<&Nic> {
        self.nics.iter().find(|n| n.segment == segment)
    }

    /// The fw_cfg item `opt/org.callgate/network`: one line per NIC, `MAC ADDR/LEN ...`.
    fn fw_cfg_item(&self) -> String {
        let mut text = String::from("# callgate lab network: MAC ADDRESS/PREFIX ...\n");
        for n in &self.nics {
            text.push_str(&n.mac);
            for a in &n.addrs {
                text.push(' ');
                text.push_str(a);
            }
            text.push('\n');
        }
        text
    }
}

impl Boot {
    /// `disk` as [`Vm::boot`] boots it: snapshot, a fresh TPM, the enrolled variables.
    pub fn new(disk: &Path, memory_mib: u32) -> Boot {
        Boot {
            disk: disk.to_path_buf(),
            writable: false,
            tpm_state: None,
            vars: None,
            memory_mib,
            net: None,
            direct_kernel: None,
            provision: None,
            extra_disk: None,
        }
    }
}

/// A running VM. Killed (QEMU and its swtpm) when dropped.
#[derive(Debug)]
pub struct Vm {
    // Dropped in this order: the console connection, QEMU, its TPM, then the directory
    // they used.
    serial_in: Option<UnixStream>,
    qemu: Group,
    _swtpm: Group,
    dir: tempfile::TempDir,
    started: Instant,
}

/// What [`Vm::wait_ready`] saw on the ready marker's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// `CALLGATE-READY`, this long after QEMU started.
    Ready(Duration),
    /// `CALLGATE-NOT-READY WHAT...`: what the boot report found wrong (`state`,
    /// `callgated`, ...), this long after QEMU started.
    NotReady(Vec<String>, Duration),
    /// A line on the port that is no marker (the port carries nothing else).
    Unreadable(String),
    /// QEMU ended before a marker.
    Exited(String),
    /// No marker in time.
    Timeout,
}

impl Ready {
    /// Whether the marker said `CALLGATE-READY`.
    pub fn is_ready(&self) -> bool {
        matches!(self, Ready::Ready(_))
    }
}

/// The prefix of both forms of the marker.
const MARKER_PREFIX: &str = "CALLGATE-";

/// The marker lines of `text` (the port's file): the whole lines (ended by a newline) that
/// hold [`MARKER_PREFIX`], from there on, carriage return off. The rest is the firmware's
/// text (it writes to every serial port) and is skipped.
fn marker_lines(text: &str) -> Vec<&str> {
    let whole = text.rsplit_once('\n').map_or("", |(w, _)| w);
    whole
        .split('\n')
        .filter_map(|l| l.find(MARKER_PREFIX).map(|i| l[i..].trim_end_matches('\r')))
        .collect()
}

/// The marker in `text` (the port's file): its first marker line, as [`Ready`] (with `at`
/// for when it was seen); `None` while there is none.
fn parse_marker(text: &str, at: Duration) -> Option<Ready> {
    let line = *marker_lines(text).first()?;
    let mut words = line.split(' ');
    Some(match (words.next(), line) {
        (_, "CALLGATE-READY") => Ready::Ready(at),
        (Some("CALLGATE-NOT-READY"), _) => {
            let what: Vec<String> = words.map(str::to_owned).collect();
            if what.is_empty() || what.iter().any(String::is_empty) {
                Ready::Unreadable(line.to_owned())
            } else {
                Ready::NotReady(what, at)
            }
        }
        _ => Ready::Unreadable(line.to_owned()),
    })
}

/// A child leading its own process group: SIGKILLed (the group) and reaped when dropped.
#[derive(Debug)]
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Ok(pgid) = i32::try_from(self.0.id()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = self.0.wait();
        }
    }
}

/// What [`Vm::wait_for`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The text appeared, this long after QEMU started.
    At(Duration),
    /// QEMU ended before it appeared.
    Exited(String),
    /// It did not appear in time.
    Timeout,
}

fn spawn_group(cmd: &mut Command) -> Result<Group> {
    cmd.process_group(0)
        .spawn()
        .map(Group)
        .map_err(|source| LabError::Spawn {
            cmd: describe(cmd),
            source,
        })
}

/// Runs a helper command (30 s at most); its stdout, or an error naming it.
fn run(cmd: &mut Command) -> Result<String> {
    run_checked(cmd, None, HELPER_TIMEOUT)
}

impl Vm {
    /// Boots `disk` (the image's or an attacker's copy) with the image's firmware and
    /// enrolled variables, a fresh swtpm, no NIC, `memory_mib` of RAM; the guest's writes
    /// do not reach `disk`.
    pub fn boot(image: &Image, disk: &Path, memory_mib: u32) -> Result<Vm> {
        Vm::start(image, &Boot::new(disk, memory_mib))
    }

    /// Boots as `boot` says, with the image's firmware code (and NICs only on a lab).
    pub fn start(image: &Image, boot: &Boot) -> Result<Vm> {
        let dir = tempfile::Builder::new().prefix("callgate-vm").tempdir()?;
        let vars = dir.path().join("vars.fd");
        std::fs::copy(
            boot.vars.clone().unwrap_or_else(|| image.ovmf_vars()),
            &vars,
        )?;
        let tpm_dir = match &boot.tpm_state {
            Some(d) => d.clone(),
            None => {
                let d = dir.path().join("tpm");
                std::fs::create_dir(&d)?;
                d
            }
        };
        let tpm_sock = dir.path().join("swtpm.sock");
        let swtpm = spawn_group(
            Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", tpm_dir.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", tpm_sock.display()))
                .arg("--log")
                .arg(format!("file={}", dir.path().join("swtpm.log").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        if !crate::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            tpm_sock.exists()
        }) {
            return Err(LabError::Io(std::io::Error::other(
                "swtpm did not open its socket within 10 s",
            )));
        }
        let serial = dir.path().join(CONSOLE);
        let serial_sock = dir.path().join(SERIAL_SOCKET);
        let marker = dir.path().join(MARKER);
        let stderr = File::create(dir.path().join("qemu.stderr"))?;
        let snapshot = if boot.writable { "off" } else { "on" };
        // On a lab, QEMU runs inside the host's namespace, where its taps are: nothing of
        // the VM's network is in ours.
        let mut qemu = match &boot.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.netns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        if let Some(text) = &boot.provision {
            let item = dir.path().join("provision.txt");
            std::fs::write(&item, text)?;
            qemu.arg("-fw_cfg").arg(format!(
                "name=opt/org.callgate/provision,file={}",
                item.display()
            ));
        }
        if let Some(net) = &boot.net {
            let item = dir.path().join("network.txt");
            std::fs::write(&item, net.fw_cfg_item())?;
            qemu.arg("-fw_cfg").arg(format!(
                "name=opt/org.callgate/network,file={}",
                item.display()
            ));
            for (i, nic) in net.nics.iter().enumerate() {
                // Fixed PCI slots in the guest's order (eth0 first); no option ROM, so
                // the firmware has no network boot to try.
                qemu.arg("-netdev")
                    .arg(format!(
                        "tap,id=nic{i},ifname={},script=no,downscript=no",
                        nic.tap
                    ))
                    .arg("-device")
                    .arg(format!(
                        "virtio-net-pci,netdev=nic{i},mac={},addr=0x{:x},romfile=",
                        nic.mac,
                        0x10 + i
                    ));
            }
        }
        if let Some(extra) = &boot.extra_disk {
            // At a high PCI slot: the boot disk (an earlier slot) stays the guest's vda.
            qemu.arg("-drive")
                .arg(format!(
                    "if=none,id=extra,format=raw,file={}",
                    extra.display()
                ))
                .args(["-device", "virtio-blk-pci,drive=extra,addr=0x18"]);
        }
        if let Some(k) = &boot.direct_kernel {
            qemu.arg("-kernel")
                .arg(&k.kernel)
                .arg("-initrd")
                .arg(&k.initrd)
                .arg("-append")
                .arg(&k.cmdline);
        }
        let qemu = spawn_group(
            qemu.args(["-machine", "q35,smm=on,accel=tcg", "-m"])
                .arg(boot.memory_mib.to_string())
                .args(["-nic", "none", "-display", "none", "-monitor", "none"])
                .arg("-no-reboot")
                .arg("-chardev")
                .arg(format!(
                    "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=off",
                    serial_sock.display(),
                    serial.display()
                ))
                .args(["-serial", "chardev:ser0"])
                // ttyS1: the ready marker, to a file (output only).
                .arg("-chardev")
                .arg(format!("file,id=marker,path={}", marker.display()))
                .args(["-serial", "chardev:marker"])
                .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    image.ovmf_code().display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ))
                .arg("-chardev")
                .arg(format!("socket,id=chrtpm,path={}", tpm_sock.display()))
                .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                .args(["-device", "tpm-tis,tpmdev=tpm0"])
                .arg("-drive")
                .arg(format!(
                    "if=virtio,format=raw,snapshot={snapshot},file={}",
                    boot.disk.display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr),
        )?;
        Ok(Vm {
            serial_in: None,
            qemu,
            _swtpm: swtpm,
            dir,
            started: Instant::now(),
        })
    }

    /// Everything the guest printed on its serial console so far: carriage returns and
    /// terminal escape sequences taken out.
    pub fn console(&self) -> String {
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(self.dir.path().join(CONSOLE)) {
            let _ = f.read_to_end(&mut raw);
        }
        crate::console::strip_terminal(&String::from_utf8_lossy(&raw))
    }

    /// The console's raw bytes, as the guest wrote them.
    pub fn console_raw(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join(CONSOLE)).unwrap_or_default()
    }

    /// The console's file (for a raw scan).
    pub fn console_path(&self) -> PathBuf {
        self.dir.path().join(CONSOLE)
    }

    /// Types `line` and Enter on the serial console.
    pub fn type_line(&mut self, line: &str) -> Result<()> {
        if self.serial_in.is_none() {
            let stream = UnixStream::connect(self.dir.path().join(SERIAL_SOCKET))?;
            // What the guest writes comes to this connection too (the console file has
            // it already): drained, so the UART never waits for us.
            let mut drain = stream.try_clone()?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
            });
            self.serial_in = Some(stream);
        }
        let Some(stream) = self.serial_in.as_mut() else {
            return Err(LabError::Io(std::io::Error::other("no serial connection")));
        };
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\r")?;
        stream.flush()?;
        Ok(())
    }

    /// QEMU's own error output (why it could not start, say).
    pub fn qemu_stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default()
    }

    /// Whether QEMU has ended (reaps it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.qemu.0.try_wait().ok().flatten()
    }

    /// Time since QEMU started (power-on).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// What the guest wrote on the marker's port (ttyS1) so far, as it wrote it (the
    /// terminal's carriage returns included; bytes that are not UTF-8 replaced).
    pub fn marker(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join(MARKER)).unwrap_or_default())
            .into_owned()
    }

    /// The marker lines on its port so far (the firmware's text on it skipped): one, once
    /// the boot report has run.
    pub fn marker_lines(&self) -> Vec<String> {
        marker_lines(&self.marker())
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the ready marker's line is whole on its port, QEMU ends, or `timeout`
    /// passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Ready {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = parse_marker(&self.marker(), self.started.elapsed()) {
                return r;
            }
            if let Some(st) = self.exited() {
                // one last look: the line may have come with the exit
                if let Some(r) = parse_marker(&self.marker(), self.started.elapsed()) {
                    return r;
                }
                return Ready::Exited(format!("{st}; {}", self.qemu_stderr().trim()));
            }
            if Instant::now() >= deadline {
                return Ready::Timeout;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the console shows `needle`, QEMU ends, or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Seen {
        self.wait_for_any(&[needle], timeout).1
    }

    /// Waits until the console shows one of `needles` (the first that does, by index),
    /// QEMU ends, or `timeout` passes.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: Duration) -> (usize, Seen) {
        let deadline = Instant::now() + timeout;
        let find = |console: &str| needles.iter().position(|n| console.contains(n));
        loop {
            if let Some(i) = find(&self.console()) {
                return (i, Seen::At(self.started.elapsed()));
            }
            if let Some(st) = self.exited() {
                // one last look: the line may have come with the exit
                if let Some(i) = find(&self.console()) {
                    return (i, Seen::At(self.started.elapsed()));
                }
                let why = format!("{st}; {}", self.qemu_stderr().trim());
                return (0, Seen::Exited(why));
            }
            if Instant::now() >= deadline {
                return (0, Seen::Timeout);
            }
            std::thread::sleep(POLL);
        }
    }
}

/// One board on a lab in appliance A's place, booted again and again (the image tests, the
/// benchmark's upgrade, `image-demo`): its own copy of the image's disk (written through) and a TPM
/// state kept across boots, its NICs on a lab of A and the engineers' host (`Mgmt`), and
/// the installer's provisioning item for the admin `ann` (after a `preamble` of the
/// caller's: comment lines, or an attacker's extra text).
#[derive(Debug)]
pub struct Board {
    /// How to boot it ([`Vm::start`]) again.
    pub boot: Boot,
    /// `ann`'s SSH key pair (in [`Board::tmp`]).
    pub ann: crate::console::KeyPair,
    /// The lab it sits on.
    pub lab: Lab,
    /// Its directory: the disk, the TPM's state, the keys. Removed when dropped.
    pub tmp: tempfile::TempDir,
}

impl Board {
    /// A fresh board: the image's disk copied, a blank TPM, a lab with A and `Mgmt`.
    pub fn new(image: &Image, preamble: &str, memory_mib: u32) -> Result<Board> {
        Board::with_hosts(image, preamble, memory_mib, &[])
    }

    /// [`Board::new`] on a lab that also has the hosts `more` (the demo's carrier).
    pub fn with_hosts(
        image: &Image,
        preamble: &str,
        memory_mib: u32,
        more: &[Host],
    ) -> Result<Board> {
        let tmp = tempfile::tempdir()?;
        let ann = crate::console::KeyPair::new(tmp.path(), "ann");
        let hosts: Vec<Host> = [Host::A, Host::Mgmt].iter().chain(more).copied().collect();
        let lab = Lab::start(&hosts)?;
        let boot = board_boot(image, tmp.path(), &lab, Host::A, preamble, &ann, memory_mib)?;
        Ok(Board {
            boot,
            ann,
            lab,
            tmp,
        })
    }

    /// `ssh ann@A ARGS` from the engineers' host with the real OpenSSH client (`ann`'s key
    /// only), its standard input from `stdin` (`upgrade < FILE`) or empty.
    pub fn ssh_ann(&self, args: &[&str], stdin: Option<&Path>) -> Result<crate::Cli> {
        let mgmt = self.lab.ns(Host::Mgmt);
        let mut cmd = crate::console::ssh_command(&mgmt, "ssh", Some(self.ann.private.as_path()));
        cmd.arg(format!("ann@{}", crate::addr::A_MGMT_V4))
            .args(args);
        if let Some(f) = stdin {
            cmd.stdin(File::open(f)?);
        }
        Ok(crate::Cli::run(cmd))
    }

    /// `show system` as `ann`, again every 3 s until its output holds `want` (sshd and the
    /// account come up around READY) or `timeout` passes: the output, or the last output
    /// (and error) seen.
    pub fn show_system(
        &self,
        want: &str,
        timeout: Duration,
    ) -> std::result::Result<String, String> {
        let mut last = String::new();
        let ok = crate::poll_until(timeout, Duration::from_secs(3), || {
            match self.ssh_ann(&["show", "system"], None) {
                Ok(r) => {
                    last = format!("{}{}", r.stdout, r.stderr);
                    r.ok() && r.stdout.contains(want)
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        if ok {
            Ok(last)
        } else {
            Err(last)
        }
    }
}

/// A board in `host`'s place on `lab` (its NICs there), for [`Vm::start`]: the image's disk
/// copied into `dir` (`board-HOST.img`, written through), a blank TPM kept across boots
/// (`tpm-HOST`), and the installer's provisioning item for the admin `ann` with `ann`'s
/// key (after the caller's `preamble`). Two of them on one lab make the pair.
pub fn board_boot(
    image: &Image,
    dir: &Path,
    lab: &Lab,
    host: Host,
    preamble: &str,
    ann: &crate::console::KeyPair,
    memory_mib: u32,
) -> Result<Boot> {
    let name = format!("{host:?}").to_lowercase();
    let disk = dir.join(format!("board-{name}.img"));
    copy_disk(&image.disk(), &disk)?;
    let tpm = dir.join(format!("tpm-{name}"));
    std::fs::create_dir(&tpm)?;
    Ok(Boot {
        writable: true,
        tpm_state: Some(tpm),
        net: Some(VmNet::on_lab(lab, host)?),
        provision: Some(format!("{preamble}user ann\nssh-key {}\n", ann.public)),
        ..Boot::new(&disk, memory_mib)
    })
}

/// A GPT partition of a disk file, from `sfdisk --json`.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Its name in the GPT (`esp`, `root-a`, ...).
    pub name: String,
    /// Where it starts, in bytes from the start of the disk.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its unique partition GUID (upper case, as `sfdisk` prints it).
    pub uuid: String,
}

/// The partition named `name` in the GPT of `disk`.
pub fn partition(disk: &Path, name: &str) -> Result<Partition> {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk))?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| LabError::Io(std::io::Error::other(format!("sfdisk --json: {e}"))))?;
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| {
            Some(Partition {
                name: name.to_owned(),
                offset: p["start"].as_u64()? * sector,
                size: p["size"].as_u64()? * sector,
                uuid: p["uuid"].as_str()?.to_owned(),
            })
        })
        .ok_or_else(|| {
            LabError::Io(std::io::Error::other(format!(
                "{}: no partition named {name}",
                disk.display()
            )))
        })
}

/// A copy of `src` at `dst` (sparse: the image's empty slots cost nothing).
pub fn copy_disk(src: &Path, dst: &Path) -> Result<()> {
    run(Command::new("cp").arg("--sparse=always").arg(src).arg(dst)).map(drop)
}

/// Whether `file` holds `needle` anywhere, byte for byte: a raw scan of the whole file
/// (`grep -F` in the C locale: any byte matches itself, across any block boundary; in a
/// binary file GNU grep skips the holes, which read as zeros, so a sparse disk image is
/// scanned in well under a second).
pub fn file_contains(file: &Path, needle: &str) -> Result<bool> {
    if needle.is_empty() || needle.contains(['\n', '\0']) {
        return Err(LabError::Io(std::io::Error::other(
            "file_contains: the needle must be one non-empty line",
        )));
    }
    let out = crate::cmd::output_with_timeout(
        Command::new("grep")
            .env("LC_ALL", "C")
            .args(["-q", "-F", "-e", needle])
            .arg(file),
        None,
        Duration::from_secs(300),
    )?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(LabError::Failed {
            cmd: format!("grep -F ... {}", file.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

/// Writes `bytes` at `offset` of `file` (a plant in the clear, for a scan's control case).
pub fn write_at(file: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new().write(true).open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Whether `key` opens a LUKS2 key slot of the partition `name` of `disk`: the partition
/// is copied out to `scratch` (sparse) and `cryptsetup open --test-passphrase` tries the
/// key on the copy (no device is made, nothing is mounted).
pub fn luks_key_opens(disk: &Path, name: &str, key: &str, scratch: &Path) -> Result<bool> {
    let part = partition(disk, name)?;
    run(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", scratch.display()))
        .args([
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            "conv=sparse",
            "status=none",
        ])
        .arg(format!("skip={}", part.offset))
        .arg(format!("count={}", part.size)))?;
    let out = crate::cmd::output_with_timeout(
        Command::new("cryptsetup")
            .args([
                "open",
                "--test-passphrase",
                "--type",
                "luks2",
                "--key-file=-",
            ])
            .arg(scratch),
        Some(key.as_bytes()),
        Duration::from_secs(120),
    )?;
    Ok(out.status.success())
}

/// Flips every bit of the byte at `offset` of `file`; returns the byte it was.
pub fn flip_byte(file: &Path, offset: u64) -> Result<u8> {
    let mut f = OpenOptions::new().read(true).write(true).open(file)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut b)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&[!b[0]])?;
    f.sync_all()?;
    Ok(b[0])
}

/// The files of the ESP's `EFI/Linux` on `disk` (the boot entries systemd-boot finds:
/// `callgate-GENERATION-SLOT[+LEFT[-DONE]].efi`), by mtools: nothing is mounted.
pub fn esp_entries(disk: &Path) -> Result<Vec<String>> {
    let esp = partition(disk, "esp")?;
    let out = run(Command::new("mdir")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), esp.offset))
        .arg("::/EFI/Linux"))?;
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next().map(str::to_owned))
        .filter(|n| n.to_ascii_lowercase().ends_with(".efi"))
        .collect();
    names.sort();
    Ok(names)
}

/// Puts `uki` in place of slot A's boot entry (`EFI/Linux/callgate-*-a.efi`, the one the
/// build made) on the ESP of `disk` (mtools: nothing is mounted).
pub fn replace_uki(disk: &Path, uki: &Path) -> Result<()> {
    let entry = esp_entries(disk)?
        .into_iter()
        .find(|n| n.starts_with("callgate-") && n.ends_with("-a.efi"))
        .ok_or_else(|| {
            LabError::Io(std::io::Error::other(format!(
                "{}: no slot A entry in the ESP's EFI/Linux",
                disk.display()
            )))
        })?;
    let esp = partition(disk, "esp")?;
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), esp.offset))
        .arg(uki)
        .arg(format!("::/EFI/Linux/{entry}")))
    .map(drop)
}

/// A copy of `uki` at `dst` with its signature taken off (`sbattach --remove`).
pub fn unsigned_uki(uki: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(uki, dst)?;
    run(Command::new("sbattach").arg("--remove").arg(dst)).map(drop)
}

/// A copy of `uki` at `dst`, signed with a key of its own made in `dir` (well-formed, but
/// not the one the firmware trusts).
pub fn uki_signed_by_another_key(uki: &Path, dir: &Path, dst: &Path) -> Result<()> {
    let (key, cert) = (dir.join("other.key"), dir.join("other.crt"));
    run(Command::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args([
            "-sha256",
            "-days",
            "1",
            "-subj",
            "/CN=not the appliance's key/",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))?;
    let unsigned = dir.join("unsigned-for-other.efi");
    unsigned_uki(uki, &unsigned)?;
    run(Command::new("sbsign")
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&cert)
        .arg("--output")
        .arg(dst)
        .arg(&unsigned))
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_one_whole_line_of_one_of_two_forms() {
        let at = Duration::from_secs(7);
        assert_eq!(parse_marker("", at), None);
        // Not whole yet: no verdict.
        assert_eq!(parse_marker("CALLGATE-READY", at), None);
        assert_eq!(
            parse_marker("CALLGATE-READY\r\n", at),
            Some(Ready::Ready(at))
        );
        assert_eq!(
            parse_marker("CALLGATE-NOT-READY state callgated\r\n", at),
            Some(Ready::NotReady(
                vec!["state".into(), "callgated".into()],
                at
            ))
        );
        // Only the first line counts.
        assert_eq!(
            parse_marker("CALLGATE-NOT-READY report\nCALLGATE-READY\n", at),
            Some(Ready::NotReady(vec!["report".into()], at))
        );
        // The firmware's text before it (OVMF writes to every serial port) is skipped.
        let firmware = "\u{1b}[2J\u{1b}[01;01HBdsDxe: starting Boot0002\r\nError loading x\r\n";
        assert_eq!(parse_marker(firmware, at), None);
        assert_eq!(
            parse_marker(&format!("{firmware}\u{1b}[0mCALLGATE-READY\r\n"), at),
            Some(Ready::Ready(at))
        );
        assert_eq!(
            marker_lines(&format!("{firmware}CALLGATE-READY\r\nCALLGATE-NOT")),
            ["CALLGATE-READY"]
        );
        for bad in [
            "CALLGATE-READY now\n",
            "CALLGATE-NOT-READY\n",
            "CALLGATE-NOT-READY  state\n",
            "CALLGATE-\n",
            "x CALLGATE-READYx\n",
        ] {
            assert!(
                matches!(parse_marker(bad, at), Some(Ready::Unreadable(_))),
                "{bad:?}"
            );
        }
        assert!(!Ready::NotReady(vec!["tpm".into()], at).is_ready());
        assert!(Ready::Ready(at).is_ready());
    }
}

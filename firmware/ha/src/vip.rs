//! The virtual addresses: added when this appliance becomes active, announced at
//! [`ANNOUNCE_AT_MS`], removed when it stops being active.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::announce::{Announcer, ANNOUNCE_AT_MS};
use crate::rtnl::Rtnl;
use crate::HaError;

/// One virtual address on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub interface: String,
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for VipSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.addr, self.prefix, self.interface)
    }
}

impl std::str::FromStr for VipSpec {
    type Err = String;
    /// `IFACE=ADDR/LEN`, the form the VIP guard takes on its command line.
    fn from_str(s: &str) -> Result<Self, String> {
        let (iface, net) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected IFACE=ADDR/LEN"))?;
        let (addr, len) = net
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected IFACE=ADDR/LEN"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("{s:?}: bad length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if iface.is_empty() || prefix > max {
            return Err(format!("{s:?}: expected IFACE=ADDR/LEN"));
        }
        Ok(VipSpec {
            interface: iface.to_owned(),
            addr,
            prefix,
        })
    }
}

pub(crate) fn ifindex(name: &str) -> Result<u32, HaError> {
    nix::net::if_::if_nametoindex(name).map_err(|e| HaError::Interface {
        name: name.to_owned(),
        source: e.into(),
    })
}

/// Removes every address in `vips` (absent ones are fine). Returns how many failed.
pub fn release_all(vips: &[VipSpec]) -> usize {
    let mut rtnl = match Rtnl::open() {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot release the virtual addresses: {e}");
            return vips.len();
        }
    };
    let mut failed = 0;
    for v in vips {
        let r = ifindex(&v.interface).and_then(|i| rtnl.del_address(i, v.addr, v.prefix));
        if let Err(e) = r {
            log::error!("cannot remove virtual address {v}: {e}");
            failed += 1;
        }
    }
    failed
}

/// The addresses, whether we hold them, and the announcements still to send.
pub(crate) struct Vips {
    specs: Vec<(VipSpec, u32)>,
    rtnl: Rtnl,
    announcer: Option<Announcer>,
    held: bool,
    /// When we took them: announcements go out relative to this.
    taken_at: Option<Instant>,
    /// How many of [`ANNOUNCE_AT_MS`] have gone out.
    sent: usize,
}

impl Vips {
    pub(crate) fn new(specs: &[VipSpec]) -> Result<Vips, HaError> {
        let mut resolved = Vec::with_capacity(specs.len());
        for s in specs {
            resolved.push((s.clone(), ifindex(&s.interface)?));
        }
        let announcer = match Announcer::open() {
            Ok(a) => Some(a),
            Err(e) => {
                log::error!("cannot open the announcement sockets; neighbours will learn a moved address only when their cache expires: {e}");
                None
            }
        };
        Ok(Vips {
            specs: resolved,
            rtnl: Rtnl::open()?,
            announcer,
            held: false,
            taken_at: None,
            sent: 0,
        })
    }

    pub(crate) fn held(&self) -> bool {
        self.held
    }

    /// Adds every address and starts the announcements. An address that cannot be added
    /// is logged; the others are still taken (a partial takeover serves more than none).
    pub(crate) fn take(&mut self, now: Instant) -> usize {
        let mut failed = 0;
        for (v, idx) in &self.specs {
            if let Err(e) = self.rtnl.add_address(*idx, v.addr, v.prefix) {
                log::error!("cannot add virtual address {v}: {e}");
                failed += 1;
            }
        }
        self.held = true;
        self.taken_at = Some(now);
        self.sent = 0;
        self.poll(now);
        failed
    }

    /// Removes every address.
    pub(crate) fn release(&mut self) -> usize {
        let mut failed = 0;
        for (v, idx) in &self.specs {
            if let Err(e) = self.rtnl.del_address(*idx, v.addr, v.prefix) {
                log::error!("cannot remove virtual address {v}: {e}");
                failed += 1;
            }
        }
        self.held = false;
        self.taken_at = None;
        failed
    }

    /// Sends the announcements that are due.
    pub(crate) fn poll(&mut self, now: Instant) {
        let Some(t0) = self.taken_at else { return };
        while self.sent < ANNOUNCE_AT_MS.len()
            && now >= t0 + Duration::from_millis(ANNOUNCE_AT_MS[self.sent])
        {
            self.sent += 1;
            self.announce();
        }
    }

    /// When the next announcement is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let t0 = self.taken_at?;
        ANNOUNCE_AT_MS
            .get(self.sent)
            .map(|ms| t0 + Duration::from_millis(*ms))
    }

    fn announce(&mut self) {
        let Some(a) = &self.announcer else { return };
        // One read of each interface's MAC per round (several addresses share one).
        let mut macs: Vec<(u32, Option<[u8; 6]>)> = Vec::new();
        for (v, idx) in &self.specs {
            let mac = match macs.iter().find(|(i, _)| i == idx) {
                Some((_, m)) => *m,
                None => {
                    let m = match self.rtnl.link(*idx) {
                        Ok(l) => l.mac,
                        Err(e) => {
                            log::warn!("cannot read the MAC of {}: {e}", v.interface);
                            None
                        }
                    };
                    macs.push((*idx, m));
                    m
                }
            };
            let Some(mac) = mac else { continue };
            let r = match v.addr {
                IpAddr::V4(ip) => a.arp(*idx, mac, ip),
                IpAddr::V6(ip) => a.na(*idx, mac, ip),
            };
            if let Err(e) = r {
                log::warn!("announcement of {v} failed: {e}");
            }
        }
    }
}

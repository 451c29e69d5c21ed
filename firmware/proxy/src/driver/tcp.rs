//! The driver's TCP bookkeeping, without I/O: the caps on open connections ([`Book`]), the
//! deadlines of one connection ([`Clock`]) and the counters ([`TcpStats`]). Time comes in
//! as arguments, so the tests drive it without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use callgate_config::Config;
use callgate_sip::FramerPhase;
use serde::Serialize;
use tokio::time::Instant;

/// `[sip.tcp]` as the driver applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TcpLimits {
    /// Open connections, accepted and ours; past it inbound ones are refused.
    pub max_connections: usize,
    /// Accepted connections per source address.
    pub max_per_source: usize,
    /// No message and no keepalive for this long: closed.
    pub idle: Duration,
    /// A message begun must complete its header section within this...
    pub header: Duration,
    /// ... and then its body within this.
    pub body: Duration,
    /// Bytes of an incomplete message a connection may hold.
    pub max_buffer: usize,
}

impl TcpLimits {
    pub fn from_config(cfg: &Config) -> Self {
        let t = &cfg.sip.tcp;
        let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        let secs = |v: u32| Duration::from_secs(u64::from(v));
        TcpLimits {
            max_connections: n(t.max_connections()),
            max_per_source: n(t.max_connections_per_source()),
            idle: secs(t.idle_timeout_secs()),
            header: secs(t.header_timeout_secs()),
            body: secs(t.body_timeout_secs()),
            max_buffer: n(t.max_buffer_bytes()),
        }
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Accepted from this source address.
    Inbound(IpAddr),
    /// Opened by us toward a destination.
    Outbound,
}

/// Why an inbound connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_source` are open from its source.
    Source,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// The peer closed it, a read or write failed, or (ours) the connect failed.
    Peer,
    /// Neither a message nor a keepalive for `idle_timeout_secs`.
    Idle,
    /// A message's header section took longer than `header_timeout_secs`.
    HeaderTimeout,
    /// A message's body took longer than `body_timeout_secs` after its header section.
    BodyTimeout,
    /// An incomplete message grew past `max_buffer_bytes`.
    BufferFull,
    /// The stream lost its framing (Content-Length missing or bad, limits).
    Framing,
    /// The peer stopped reading what we send.
    WriteStalled,
}

impl Close {
    /// Closed by us on purpose (the peer did not behave): log- and counter-worthy.
    pub fn is_cut(self) -> bool {
        self != Close::Peer
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Close::Peer => "closed by the peer",
            Close::Idle => "idle timeout",
            Close::HeaderTimeout => "header timeout",
            Close::BodyTimeout => "body timeout",
            Close::BufferFull => "buffer full",
            Close::Framing => "framing lost",
            Close::WriteStalled => "peer not reading",
        }
    }
}

/// TCP counters since start ([`super::SipHandle::tcp_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpStats {
    /// Accepted connections open now.
    pub open_inbound: u64,
    /// Connections we opened, open now (or connecting).
    pub open_outbound: u64,
    /// Inbound connections admitted.
    pub accepted: u64,
    /// Connections we opened toward destinations.
    pub opened: u64,
    /// Inbound connections closed at once: `max_connections` were open.
    pub refused_max_connections: u64,
    /// Inbound connections closed at once: `max_connections_per_source` were open from
    /// their source.
    pub refused_per_source: u64,
    /// Ended by the peer, an I/O error or a failed connect.
    pub closed_by_peer: u64,
    pub closed_idle: u64,
    pub closed_header_timeout: u64,
    pub closed_body_timeout: u64,
    pub closed_buffer_full: u64,
    pub closed_framing: u64,
    pub closed_write_stalled: u64,
}

/// Open connections by direction and source, against the caps.
#[derive(Debug)]
pub(super) struct Book {
    limits: TcpLimits,
    per_source: HashMap<IpAddr, usize>,
    stats: TcpStats,
}

impl Book {
    pub fn new(limits: TcpLimits) -> Self {
        Book {
            limits,
            per_source: HashMap::new(),
            stats: TcpStats::default(),
        }
    }

    /// New caps apply to new connections; open ones stay.
    pub fn set_limits(&mut self, limits: TcpLimits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> TcpLimits {
        self.limits
    }

    fn open(&self) -> u64 {
        self.stats.open_inbound + self.stats.open_outbound
    }

    /// Counts an inbound connection from `ip` in, or says (and counts) why it is refused.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.open() >= self.limits.max_connections as u64 {
            self.stats.refused_max_connections += 1;
            return Err(Refusal::Total);
        }
        let n = self.per_source.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_source {
            self.stats.refused_per_source += 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
            return Err(Refusal::Source);
        }
        *n += 1;
        self.stats.open_inbound += 1;
        self.stats.accepted += 1;
        Ok(())
    }

    /// Counts a connection we open. Never refused: ours go only to addresses we send to,
    /// one at a time per address, and a destination's source cap is not for us.
    pub fn opened(&mut self) {
        self.stats.open_outbound += 1;
        self.stats.opened += 1;
    }

    /// Counts a connection out.
    pub fn closed(&mut self, dir: Dir, why: Close) {
        match dir {
            Dir::Inbound(ip) => {
                self.stats.open_inbound = self.stats.open_inbound.saturating_sub(1);
                if let Some(n) = self.per_source.get_mut(&ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_source.remove(&ip);
                    }
                }
            }
            Dir::Outbound => {
                self.stats.open_outbound = self.stats.open_outbound.saturating_sub(1);
            }
        }
        let s = &mut self.stats;
        *match why {
            Close::Peer => &mut s.closed_by_peer,
            Close::Idle => &mut s.closed_idle,
            Close::HeaderTimeout => &mut s.closed_header_timeout,
            Close::BodyTimeout => &mut s.closed_body_timeout,
            Close::BufferFull => &mut s.closed_buffer_full,
            Close::Framing => &mut s.closed_framing,
            Close::WriteStalled => &mut s.closed_write_stalled,
        } += 1;
    }

    /// Accepted connections open from `ip`.
    #[cfg(test)]
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.per_source.get(&ip).copied().unwrap_or(0)
    }

    pub fn stats(&self) -> TcpStats {
        self.stats.clone()
    }
}

/// The deadlines of one connection: idle since its last message or keepalive (or since it
/// opened); the header section of a message since its first byte; its body since its
/// header section ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Clock {
    active: Instant,
    phase: FramerPhase,
    since: Instant,
}

impl Clock {
    pub fn new(now: Instant) -> Self {
        Clock {
            active: now,
            phase: FramerPhase::Idle,
            since: now,
        }
    }

    /// After a read: `messages` were framed, keepalive bytes were (`keepalive`) or were not
    /// seen, and the framer is now in `phase`.
    pub fn after_read(
        &mut self,
        now: Instant,
        messages: usize,
        keepalive: bool,
        phase: FramerPhase,
    ) {
        if messages > 0 || keepalive {
            self.active = now;
        }
        // A new message (or a new phase of the same one) starts its own clock.
        if messages > 0 || phase != self.phase {
            self.phase = phase;
            self.since = now;
        }
    }

    /// When the connection is to be closed unless something arrives first, and why.
    pub fn deadline(&self, l: &TcpLimits) -> (Instant, Close) {
        let idle = (self.active + l.idle, Close::Idle);
        let message = match self.phase {
            FramerPhase::Idle => return idle,
            FramerPhase::Head => (self.since + l.header, Close::HeaderTimeout),
            FramerPhase::Body => (self.since + l.body, Close::BodyTimeout),
        };
        if message.0 <= idle.0 {
            message
        } else {
            idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TcpLimits {
        TcpLimits {
            max_connections: 5,
            max_per_source: 2,
            idle: Duration::from_secs(300),
            header: Duration::from_secs(10),
            body: Duration::from_secs(20),
            max_buffer: 65536,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, n])
    }

    #[test]
    fn the_config_sets_the_limits() {
        let cfg = callgate_config::Config::parse(
            "[appliance]\nname = \"t\"\n[zones]\n[services]\n[sip.tcp]\nmax_connections = 9\nheader_timeout_secs = 2\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let l = TcpLimits::from_config(&cfg);
        assert_eq!((l.max_connections, l.max_per_source), (9, 256));
        assert_eq!(l.header, Duration::from_secs(2));
        assert_eq!(l.idle, Duration::from_secs(300));
        assert_eq!(l.max_buffer, 65536);
    }

    #[test]
    fn per_source_and_total_caps() {
        let mut b = Book::new(limits());
        assert_eq!(b.admit(ip(10)), Ok(()));
        assert_eq!(b.admit(ip(10)), Ok(()));
        // The third from one source is refused; other sources still get in.
        assert_eq!(b.admit(ip(10)), Err(Refusal::Source));
        assert_eq!(b.admit(ip(66)), Ok(()));
        assert_eq!(b.open_from(ip(10)), 2);
        // Ours count toward the total, and are never refused.
        b.opened();
        b.opened();
        assert_eq!(b.admit(ip(67)), Err(Refusal::Total));
        b.opened();
        assert_eq!(b.stats().open_outbound, 3);
        // One closes: room for one more, from a source under its cap.
        b.closed(Dir::Outbound, Close::Idle);
        b.closed(Dir::Outbound, Close::Peer);
        assert_eq!(b.admit(ip(10)), Err(Refusal::Source));
        assert_eq!(b.admit(ip(67)), Ok(()));
        b.closed(Dir::Inbound(ip(10)), Close::HeaderTimeout);
        assert_eq!(b.open_from(ip(10)), 1);
        assert_eq!(b.admit(ip(10)), Ok(()));
        let s = b.stats();
        assert_eq!(
            (s.open_inbound, s.open_outbound, s.accepted, s.opened),
            (4, 1, 5, 3)
        );
        assert_eq!((s.refused_per_source, s.refused_max_connections), (2, 1));
        assert_eq!(
            (s.closed_idle, s.closed_by_peer, s.closed_header_timeout),
            (1, 1, 1)
        );
    }

    #[test]
    fn sources_are_forgotten_when_their_last_connection_closes() {
        let mut b = Book::new(limits());
        for n in 0..100u8 {
            if b.admit(ip(n)).is_ok() {
                b.closed(Dir::Inbound(ip(n)), Close::Peer);
            }
        }
        assert!(b.per_source.is_empty());
        // A cap of 0 per source refuses without keeping an entry.
        b.set_limits(TcpLimits {
            max_per_source: 0,
            ..limits()
        });
        assert_eq!(b.admit(ip(1)), Err(Refusal::Source));
        assert!(b.per_source.is_empty());
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout() {
        let l = limits();
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        assert_eq!(c.deadline(&l), (t0 + l.idle, Close::Idle));
        // A keepalive or a message restarts the idle clock.
        let t1 = t0 + Duration::from_secs(100);
        c.after_read(t1, 0, true, FramerPhase::Idle);
        assert_eq!(c.deadline(&l), (t1 + l.idle, Close::Idle));
        let t2 = t1 + Duration::from_secs(100);
        c.after_read(t2, 1, false, FramerPhase::Idle);
        assert_eq!(c.deadline(&l), (t2 + l.idle, Close::Idle));
    }

    #[test]
    fn a_drip_is_cut_at_the_header_timeout() {
        let l = limits();
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        // The first byte of a message starts the header clock; more bytes do not move it.
        let t1 = t0 + Duration::from_secs(250);
        c.after_read(t1, 0, false, FramerPhase::Head);
        for i in 1..100 {
            c.after_read(
                t1 + Duration::from_millis(100 * i),
                0,
                false,
                FramerPhase::Head,
            );
        }
        assert_eq!(c.deadline(&l), (t1 + l.header, Close::HeaderTimeout));
        // Near the idle deadline, that one comes first.
        let t2 = t0 + Duration::from_secs(295);
        let mut c = Clock::new(t0);
        c.after_read(t2, 0, false, FramerPhase::Head);
        assert_eq!(c.deadline(&l), (t0 + l.idle, Close::Idle));
    }

    #[test]
    fn the_body_has_its_own_clock_and_each_message_a_new_one() {
        let l = limits();
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        let t1 = t0 + Duration::from_secs(1);
        c.after_read(t1, 0, false, FramerPhase::Head);
        let t2 = t1 + Duration::from_secs(9);
        c.after_read(t2, 0, false, FramerPhase::Body);
        assert_eq!(c.deadline(&l), (t2 + l.body, Close::BodyTimeout));
        // A message completes and the next one begins in the same read.
        let t3 = t2 + Duration::from_secs(19);
        c.after_read(t3, 1, false, FramerPhase::Head);
        assert_eq!(c.deadline(&l), (t3 + l.header, Close::HeaderTimeout));
        let t4 = t3 + Duration::from_secs(1);
        c.after_read(t4, 1, false, FramerPhase::Idle);
        assert_eq!(c.deadline(&l), (t4 + l.idle, Close::Idle));
    }
}

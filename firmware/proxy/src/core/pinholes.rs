//! Media and pinholes of a call: descriptions checked against the config, pinholes
//! shared between calls and kept in step with both parties' media.

use super::*;

impl Proxy {
    /// The media one party of call `seq` describes in `msg` (`callee`: which party), checked
    /// against what the config allows that side; the reason when it is refused.
    pub(super) fn described_media(
        &self,
        seq: u64,
        msg: &Message<'_>,
        callee: bool,
    ) -> Result<Media, &'static str> {
        let m = media::media_of(msg)?;
        let side = if callee {
            Side::Private
        } else {
            let caller = self.calls.get(&seq).map(|c| c.caller.addr.ip());
            Side::Carrier(caller.and_then(|ip| self.routes.carrier_of(ip)))
        };
        self.s.media.check(side, &m)?;
        Ok(Media::from(m))
    }

    /// Counts and logs a media description the config does not allow.
    pub(super) fn media_refused(&mut self, now: Now, seq: u64, why: &str, out: &mut Vec<Output>) {
        self.stats.refused_media += 1;
        let line = format!("call {seq}: media refused ({why})");
        self.log(now, "media-refused", log::Level::Warn, line, out);
    }

    /// Records the media one party described in a response or an ACK (`callee`: which
    /// party), together with the other party's pending offer, and once the callee has
    /// described its media keeps the pinholes equal to both parties' addresses: new ones
    /// open, ones no longer named close (re-INVITEs, late offers answered in the ACK).
    pub(super) fn update_media(
        &mut self,
        now: Now,
        seq: u64,
        callee: bool,
        addrs: Media,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if addrs.is_empty() {
            return;
        }
        let before = call.pinholes();
        if let Some((side, offer)) = call.offered.take().map(|o| *o) {
            if side != callee && !offer.is_empty() {
                call.media[usize::from(side)] = offer;
            }
        }
        call.media[usize::from(callee)] = addrs;
        if callee {
            call.media_open = true;
        }
        let want = call.pinholes();
        for a in &want {
            if !before.contains(a) {
                self.pinhole_open(now, *a, out);
            }
        }
        for a in &before {
            if !want.contains(a) {
                self.pinhole_close(*a, out);
            }
        }
    }

    /// A call starts using the pinhole `a` (source, destination): opens it, or renews the
    /// shared one when the call could outlive its timeout.
    pub(super) fn pinhole_open(&mut self, now: Now, a: (IpNet, SocketAddr), out: &mut Vec<Output>) {
        self.pinhole_for(now, a, self.s.max_call, out);
    }

    /// [`Self::pinhole_open`] for a call that may last `left` more: the pinhole a minute
    /// longer.
    pub(super) fn pinhole_for(
        &mut self,
        now: Now,
        a: (IpNet, SocketAddr),
        left: Millis,
        out: &mut Vec<Output>,
    ) {
        let ttl = Millis(left.0.saturating_add(60_000));
        let need = now.mono + left;
        let until = now.mono + ttl;
        let e = self.pinholes.entry(a).or_insert((0, Millis(0)));
        e.0 += 1;
        if e.1 < need {
            e.1 = until;
            out.push(Output::Pinhole {
                open: true,
                src: a.0,
                dst: a.1,
                ttl: Duration::from_millis(ttl.0),
            });
            self.stats.pinholes_opened += 1;
        }
    }

    /// A call stops using `a`: the pinhole closes with the last call that used it.
    pub(super) fn pinhole_close(&mut self, a: (IpNet, SocketAddr), out: &mut Vec<Output>) {
        let Some(e) = self.pinholes.get_mut(&a) else {
            return;
        };
        e.0 = e.0.saturating_sub(1);
        if e.0 == 0 {
            self.pinholes.remove(&a);
            out.push(Output::Pinhole {
                open: false,
                src: a.0,
                dst: a.1,
                ttl: Duration::ZERO,
            });
            self.stats.pinholes_closed += 1;
        }
    }
}

//! Records of answered calls: the held 2xx released once the answer-time record is
//! durable, and calls carried on from their records after a restart.

use super::*;

impl Proxy {
    /// The store has made the answer-time record of call `seq` durable (`ok`), or could
    /// not: the held 2xx now goes to the caller, or the call is ended from here (BYE both
    /// ways) because an answered call without a record must not exist.
    pub fn on_record_stored(&mut self, now: Now, seq: u64, ok: bool, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        let Some(answer) = self.held.remove(&seq) else {
            return;
        };
        if ok {
            let (peer, local) = (call.caller, self.locals.addr(call.caller_local));
            self.send(peer, local, answer, out);
            return;
        }
        let line = format!("call {seq}: its record could not be stored; ending it");
        self.log(now, "record-failed", log::Level::Error, line, out);
        self.bye_both_ways(now, seq, "call record not stored", out);
    }

    /// Carries on a call that was in progress when the daemon last stopped, from its
    /// answer-time record: its in-dialog requests are relayed again, its record completed
    /// at BYE or at the maximum call length (counted from its answer), its pinholes
    /// renewed for what is left of that and closed at the end. Our own BYEs at the maximum
    /// length need the dialog's headers, which the record does not keep: such a call ends
    /// there without them (the parties' media stops with the pinholes). Returns the call's
    /// `seq` (its records use it), or `None` for a record that cannot be resumed.
    pub fn resume(&mut self, now: Now, cdr: &Cdr, out: &mut Vec<Output>) -> Option<u64> {
        let r = cdr.resume.as_ref()?;
        let answer_at = cdr.answer_at?;
        let caller_number = cdr.caller.reveal()?;
        if self.by_call_id.get(&cdr.call_id, &self.calls).is_some() {
            return None;
        }
        let peer = |p: &callgate_cdr::Party| Peer {
            transport: match (p.tcp, p.tls) {
                (_, true) => Transport::Tls,
                (true, false) => Transport::Tcp,
                (false, false) => Transport::Udp,
            },
            addr: p.addr,
            conn: None,
        };
        // A record is input too (a restart's own, or one a pair's peer replicated): the
        // parties must still be a configured carrier and destination, reached from our own
        // listen addresses, and the carrier's media pool is the config's, not the record's.
        let carrier = self.routes.carrier_of(r.caller.addr.ip());
        let known = carrier.is_some()
            && self.dest_ips.contains(&r.callee.addr.ip().to_canonical())
            && self.is_listen(r.caller.local)
            && self.is_listen(r.callee.local);
        if !known {
            let line = format!(
                "call {:?} not carried on: its parties are not a configured carrier and destination",
                cdr.call_id
            );
            self.log(now, "resume-refused", log::Level::Warn, line, out);
            return None;
        }
        let pool: Option<Arc<[IpNet]>> = carrier.and_then(|c| c.media_pool.clone());
        let media_ok = self
            .s
            .media
            .check(Side::Carrier(carrier), &r.caller.media)
            .and_then(|()| self.s.media.check(Side::Private, &r.callee.media));
        if let Err(why) = media_ok {
            let line = format!(
                "call {:?} carried on without media: {why} (the config changed)",
                cdr.call_id
            );
            self.log(now, "media-refused", log::Level::Warn, line, out);
        }
        let media_ok = media_ok.is_ok();
        let seq = self.next_seq;
        self.next_seq += 1;
        let caller_name = cdr.caller_name.as_ref().and_then(|n| n.reveal());
        let names = Names::new(
            &cdr.call_id,
            &r.from_tag,
            &cdr.tracking_number,
            caller_number,
            caller_name,
        )?;
        let caller_local = self.locals.id(r.caller.local)?;
        let callee_local = self.locals.id(r.callee.local)?;
        let call = Call {
            seq,
            answered_by: (cdr.appliance != self.s.appliance).then(|| cdr.appliance.as_str().into()),
            resumed: true,
            names,
            setup: None,
            caller: peer(&r.caller),
            caller_local,
            campaign: Arc::from(cdr.campaign.as_str()),
            callee: peer(&r.callee),
            callee_local,
            destination: cdr.destination.as_str().into(),
            state: CallState::Answered,
            cancel: None,
            last_code: Some(200),
            invite_at: cdr.invite_at,
            ring_at: cdr.ring_at.map_or(Stamp::NONE, Stamp),
            answer_at: Stamp(answer_at),
            deadlines: Deadlines::new(),
            media: [
                Media::from(r.caller.media.clone()),
                Media::from(r.callee.media.clone()),
            ],
            // The media is checked again against the config as it is now (it may have
            // changed while the daemon was down): pinholes only for what it still allows.
            media_open: media_ok,
            pool,
            offered: None,
            permit: self.admission.as_mut().map(|a| a.carry_over()),
            dialog: None,
        };
        let caller_ip = call.caller.addr.ip();
        let pinholes = call.pinholes();
        self.calls.insert(seq, Box::new(call));
        self.by_call_id.insert(seq, &self.calls);
        self.flood
            .carry_dialog(guard::Millis(now.mono.0), caller_ip);
        // What is left of the maximum call length, by the wall clock of its answer.
        let left = answer_at
            .saturating_add(self.s.max_call.0)
            .saturating_sub(now.unix_ms);
        self.set_timer(seq, TimerKind::MaxCall, now.mono + Millis(left));
        for a in pinholes {
            self.pinhole_for(now, a, Millis(left), out);
        }
        Some(seq)
    }
}

impl Proxy {
    /// A planned handover: while draining, new INVITEs get no answer (their callers
    /// retransmit, and the retransmission reaches the peer once it holds the addresses);
    /// calls already in setup go on. Returns how many calls are still in setup.
    pub fn set_draining(&mut self, on: bool) -> usize {
        self.draining = on;
        self.calls
            .values()
            .filter(|c| c.state != CallState::Answered || self.held.contains_key(&c.seq))
            .count()
    }

    /// Forgets every call, dialog and transaction, as a pair node that stops being active
    /// must: its peer carries the calls on from their replicated records, so this node
    /// neither ends them (no BYE, no record) nor keeps their timers. Counters and call
    /// numbers carry on, so no number is given twice. Every media pinhole the calls held
    /// closes (into `out`): a node that is not active forwards no media. Returns how many
    /// calls it forgot.
    pub fn forget_all(
        &mut self,
        s: Settings,
        cfg: &Config,
        now: Now,
        out: &mut Vec<Output>,
    ) -> usize {
        let n = self.calls.len();
        for (src, dst) in std::mem::take(&mut self.pinholes).into_keys() {
            out.push(Output::Pinhole {
                open: false,
                src,
                dst,
                ttl: Duration::ZERO,
            });
            self.stats.pinholes_closed += 1;
        }
        let next_seq = self.next_seq;
        let stats = self.stats.clone();
        *self = Proxy::new(s, cfg, now);
        self.next_seq = next_seq;
        self.stats = stats;
        n
    }
}

/// What a restarted daemon needs to carry `c` on (kept in its answer-time record).
pub(super) fn resume_of(c: &Call, locals: &Locals) -> callgate_cdr::Resume {
    let party = |p: Peer, local: SocketAddr, media: &Media| callgate_cdr::Party {
        tcp: p.transport.is_stream(),
        tls: p.transport == Transport::Tls,
        addr: p.addr,
        local,
        media: media.to_vec(),
    };
    callgate_cdr::Resume {
        from_tag: c.names.tag_of_caller().to_string(),
        caller: party(c.caller, locals.addr(c.caller_local), &c.media[0]),
        callee: party(c.callee, locals.addr(c.callee_local), &c.media[1]),
        media_pool: c
            .pool
            .iter()
            .flat_map(|p| p.iter().map(ToString::to_string))
            .collect(),
    }
}

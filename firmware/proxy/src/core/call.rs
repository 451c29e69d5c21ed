//! A call from first attempt to end: destinations in turn, responses, the answer, CANCEL,
//! refusals, records of calls that end unanswered, and forgetting a call.

use super::dialog::dialog_info;
use super::records::resume_of;
use super::*;

impl Proxy {
    /// Sends the call's INVITE to its next destination, or ends it when none is left.
    pub(super) fn try_next(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        self.try_next_with(now, seq, None, out);
    }

    /// [`Self::try_next`] with the INVITE already parsed (the first attempt).
    pub(super) fn try_next_with(
        &mut self,
        now: Now,
        seq: u64,
        parsed: Option<&Message<'_>>,
        out: &mut Vec<Output>,
    ) {
        loop {
            let Some(call) = self.calls.get(&seq) else {
                return;
            };
            if call.cancel.is_some() {
                self.finish_unanswered(now, seq, 487, &[], out);
                return;
            }
            let Some(setup) = call.setup.as_deref() else {
                return;
            };
            let Some(dest) = setup.dests.get(setup.attempt).copied() else {
                let code = match call.last_code {
                    Some(c) if c >= 300 => c,
                    _ => 408,
                };
                self.finish_unanswered(now, seq, code, &[], out);
                return;
            };
            if setup.attempt > 0 {
                self.stats.failovers += 1;
            }
            let invite = setup.invite.clone();
            let number: Box<str> = call.names.number().into();
            let caller_local = self.locals.addr(call.caller_local);
            let caller_transport = call.caller.transport;
            let transport = dest_transport(&dest);
            let local = self.local_for(
                self.local_toward(dest.uri.addr.ip(), caller_local),
                transport,
            );
            let (via, branch) = self.our_via(local, transport);
            let reparsed;
            let original = match parsed {
                Some(m) => m,
                None => match sip::parse(&invite) {
                    Ok(m) => {
                        reparsed = m;
                        &reparsed
                    }
                    Err(_) => return,
                },
            };
            let Some(bytes) = self.forward_invite(
                original,
                &number,
                &dest,
                &via,
                (caller_local, caller_transport),
                (local, transport),
            ) else {
                if let Some(s) = self.calls.get_mut(&seq).and_then(|c| c.setup.as_mut()) {
                    s.attempt += 1;
                }
                continue;
            };
            let Ok(ckey) = TransactionKey::client(&branch, "INVITE") else {
                return;
            };
            let peer = Peer {
                transport,
                addr: dest.uri.addr,
                conn: None,
            };
            let bytes: Payload = bytes.into();
            let destination = self
                .dest_text
                .entry(dest.uri)
                .or_insert_with(|| dest.uri.to_string().into())
                .clone();
            let Some(callee_local) = self.locals.id(local) else {
                self.finish_unanswered(now, seq, 503, &[], out);
                return;
            };
            if let Some(c) = self.calls.get_mut(&seq) {
                if let Some(s) = c.setup.as_mut() {
                    s.attempt += 1;
                    s.forwarded = Some(bytes.clone());
                    s.got_provisional = false;
                    s.client_key = Some(ckey.clone());
                }
                c.callee = peer;
                c.callee_local = callee_local;
                c.destination = destination;
            }
            if self.start_client(now, ckey, Owner::Call(seq), (peer, local), bytes, out) {
                self.set_timer(seq, TimerKind::Response, now.mono + self.s.response_timeout);
            } else {
                self.finish_unanswered(now, seq, 503, &[], out);
            }
            return;
        }
    }

    pub(super) fn forward_invite(
        &self,
        invite: &Message<'_>,
        number: &str,
        dest: &Dest,
        via: &str,
        (in_local, in_transport): (SocketAddr, Transport),
        (out_local, out_transport): (SocketAddr, Transport),
    ) -> Option<Vec<u8>> {
        let mut m = invite.clone();
        // A sips: request stays sips: (TLS implied, every hop; admission saw to that).
        let secure = matches!(invite.request_uri(), Some(Ok(Uri::Sip(u))) if u.is_secure());
        let (scheme, tparam) = match (secure, out_transport) {
            (true, _) => ("sips", ""),
            (false, Transport::Tcp) => ("sip", ";transport=tcp"),
            (false, Transport::Tls) => ("sip", ";transport=tls"),
            (false, Transport::Udp) => ("sip", ""),
        };
        let mut uri = String::with_capacity(64);
        uri.push_str(scheme);
        uri.push(':');
        if !number.is_empty() {
            uri.push_str(number);
            uri.push('@');
        }
        push_host_port(&mut uri, dest.uri.addr);
        uri.push_str(tparam);
        m.set_request_uri(uri).ok()?;
        // Our own preloaded Routes are consumed here (loose routing, §16.4).
        self.strip_our_routes(&mut m)?;
        m.decrement_max_forwards().ok()??;
        // Double Record-Route when the call crosses interfaces (RFC 5658): the upstream
        // side's entry below, the downstream side's on top.
        let rr = |local, t| {
            if secure {
                format!("sips:{};lr", self.locals.host_port(local))
            } else {
                self.record_route(local, t)
            }
        };
        m.add_record_route(&rr(in_local, in_transport)).ok()?;
        if in_local != out_local || in_transport != out_transport {
            m.add_record_route(&rr(out_local, out_transport)).ok()?;
        }
        m.prepend_built_via(via.to_string());
        Some(m.serialize())
    }

    pub(super) fn on_cancel(
        &mut self,
        rq: &Req<'_, '_>,
        key: TransactionKey,
        branch: &str,
        sent_by: &str,
        out: &mut Vec<Output>,
    ) {
        let Req { now, peer, .. } = *rq;
        let inv_key = TransactionKey::server(branch, sent_by, "INVITE").ok();
        let seq = inv_key
            .as_ref()
            .and_then(|k| self.tx_info.get(k))
            .and_then(|i| match i.owner {
                Owner::Call(seq) => Some(seq),
                _ => None,
            })
            .filter(|s| self.calls.contains_key(s));
        let Some(seq) = seq else {
            self.reply_stateful(rq, &key, Owner::Own, 481, &[], out);
            return;
        };
        // Only the party that sent the INVITE may cancel it.
        let caller = self
            .calls
            .get(&seq)
            .map(|c| c.caller.addr.ip().to_canonical());
        if caller != Some(peer.addr.ip().to_canonical()) {
            self.stats.refused_wrong_party += 1;
            let line = format!("refused a CANCEL from {}: not the caller (403)", peer.addr);
            self.log(now, "wrong-party", log::Level::Info, line, out);
            self.reply_stateful(rq, &key, Owner::Own, 403, &[], out);
            return;
        }
        self.reply_stateful(rq, &key, Owner::Own, 200, &[], out);
        self.cancel_call(now, seq, Cancel::Caller, out);
    }

    /// Cancels the pending INVITE of a call (caller CANCEL or ring timeout).
    pub(super) fn cancel_call(&mut self, now: Now, seq: u64, why: Cancel, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if call.state == CallState::Answered || call.cancel.is_some() {
            return;
        }
        call.cancel = Some(why);
        if call.setup.as_ref().is_some_and(|s| s.got_provisional) {
            self.send_cancel(now, seq, out);
        }
        // Answer the caller now; the callee's 487 is absorbed when it comes.
        match why {
            Cancel::NoAnswer => self.finish_unanswered(now, seq, 480, &[], out),
            Cancel::MediaRefused => {
                let local = self
                    .calls
                    .get(&seq)
                    .map(|c| self.locals.addr(c.caller_local));
                let extra: Vec<_> = local
                    .map(|l| warning(l, 305, "early media not allowed"))
                    .into_iter()
                    .collect();
                self.finish_unanswered(now, seq, 488, &extra, out);
            }
            Cancel::Caller => {}
        }
    }

    pub(super) fn send_cancel(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        let Some(setup) = call.setup.as_mut() else {
            return;
        };
        if setup.cancel_sent {
            return;
        }
        setup.cancel_sent = true;
        let (Some(fwd), Some(ckey)) = (setup.forwarded.clone(), setup.client_key.clone()) else {
            return;
        };
        let peer = call.callee;
        let local = self.locals.addr(call.callee_local);
        let guard = now.mono + self.s.timers.timeout();
        self.set_timer(seq, TimerKind::CancelGuard, guard);
        let Some(bytes) = msgs::cancel_for(&fwd) else {
            return;
        };
        let Ok(key) = TransactionKey::client(ckey.branch(), "CANCEL") else {
            return;
        };
        self.start_client(now, key, Owner::Own, (peer, local), bytes.into(), out);
    }

    pub(super) fn call_response(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        code: u16,
        key: &TransactionKey,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get_mut(&seq) else {
            if (200..300).contains(&code) {
                self.release_late_answer(now, msg, out);
            }
            return;
        };
        // A response from an attempt we have left behind.
        let current = call.client_key() == Some(key);
        if !current {
            return;
        }
        call.last_code = Some(code);
        if code < 200 {
            let first = call
                .setup
                .as_mut()
                .is_some_and(|s| !std::mem::replace(&mut s.got_provisional, true));
            if first {
                // Any provisional ends the wait for a first response and starts the wait
                // for an answer (Timer C, RFC 3261 §16.6 step 11): a destination that
                // sends 100 and then nothing is cancelled as no-answer.
                self.clear_timer(seq, TimerKind::Response);
                self.set_timer(seq, TimerKind::Ring, now.mono + self.s.ring_timeout);
            }
            let Some(call) = self.calls.get_mut(&seq) else {
                return;
            };
            if call.cancel.is_some() {
                self.send_cancel(now, seq, out);
                return;
            }
            if code == 100 {
                return;
            }
            if call.ring_at.is_none() {
                call.ring_at = Stamp(now.unix_ms);
                call.state = CallState::Ringing;
            }
            if !msg.body().is_empty() {
                match self.described_media(seq, msg, true) {
                    Ok(answer) => self.update_media(now, seq, true, answer, out),
                    Err(why) => {
                        // Early media the config does not allow: the call ends, nothing
                        // opens, the caller gets 488.
                        self.media_refused(now, seq, why, out);
                        self.cancel_call(now, seq, Cancel::MediaRefused, out);
                        return;
                    }
                }
            }
            self.forward_upstream(now, seq, msg, code, out);
            return;
        }
        self.clear_timer(seq, TimerKind::Response);
        self.clear_timer(seq, TimerKind::Ring);
        if (200..300).contains(&code) {
            self.answered(now, seq, msg, out);
            return;
        }
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let more = call
            .setup
            .as_ref()
            .is_some_and(|s| s.attempt < s.dests.len());
        if call.cancel.is_none() && FAILOVER_CODES(code) && more {
            self.try_next(now, seq, out);
            return;
        }
        if matches!(call.cancel, Some(Cancel::NoAnswer | Cancel::MediaRefused)) {
            return; // already answered upstream (480, 488)
        }
        self.forward_upstream(now, seq, msg, code, out);
        self.end_unanswered(now, seq, code, out);
    }

    pub(super) fn forward_upstream(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        code: u16,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let Some(key) = call.server_key().cloned() else {
            return;
        };
        self.respond_stripped(now, &key, msg, code, out);
    }

    /// Sends a response from downstream upstream through the server transaction `key`,
    /// without our Via.
    pub(super) fn respond_stripped(
        &mut self,
        now: Now,
        key: &TransactionKey,
        msg: &Message<'_>,
        code: u16,
        out: &mut Vec<Output>,
    ) {
        if let Some(b) = strip_via(msg) {
            self.respond(now, key, code, b.into(), out);
        }
    }

    pub(super) fn answered(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        out: &mut Vec<Output>,
    ) {
        let answer = match self.described_media(seq, msg, true) {
            Ok(a) => a,
            Err(why) => {
                self.refuse_answer(now, seq, msg, why, out);
                return;
            }
        };
        self.stats.calls_answered += 1;
        self.update_media(now, seq, true, answer, out);
        let max_call = self.s.max_call;
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        // The 2xx goes upstream once the answer-time record is durable
        // ([`Proxy::on_record_stored`]): an answered call always has a record.
        let held = strip_via(msg).map(Payload::from);
        call.state = CallState::Answered;
        call.answer_at = Stamp(now.unix_ms);
        if call.ring_at.is_none() {
            call.ring_at = Stamp(now.unix_ms);
        }
        // Both INVITE transactions are now in Accepted (RFC 6026; the 2xx goes upstream
        // statelessly): for their 64·T1 only their keys are kept (ACKs are end to end, 2xx
        // retransmissions are matched by key and Call-ID). An answered call keeps only what
        // its dialog needs: its setup (the INVITE, the transaction keys) goes.
        let setup = call.setup.take();
        if let Some(h) = held {
            self.held.insert(seq, h);
        }
        let until = now.mono + self.s.timers.timeout();
        let (caller_side, keys) = match setup.map(|s| *s) {
            Some(s) => (s.caller_side, [Some(s.server_key), s.client_key]),
            None => (None, [None, None]),
        };
        let keys = keys.into_iter().flatten();
        for k in keys {
            self.txs.remove(&k);
            self.tx_info.remove(&k);
            self.accepted.insert(&k, until);
        }
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        // What our own BYEs would need (maximum call length).
        let ours = if call.caller_local != call.callee_local
            || call.caller.transport != call.callee.transport
        {
            2
        } else {
            1
        };
        call.dialog = caller_side.and_then(|c| dialog_info(&c, msg, ours));
        let cdr = self.cdr_of(seq, Disposition::Answered, 200, None);
        self.set_timer(seq, TimerKind::MaxCall, now.mono + max_call);
        if let Some(mut cdr) = cdr {
            cdr.resume = self.calls.get(&seq).map(|c| resume_of(c, &self.locals));
            out.push(Output::Record {
                seq,
                cdr: Box::new(cdr),
                ended: false,
            });
        }
    }

    /// A 2xx whose media the config does not allow: it never reaches the caller, the callee
    /// gets ACK and BYE, the caller 488, and nothing opens.
    pub(super) fn refuse_answer(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        why: &'static str,
        out: &mut Vec<Output>,
    ) {
        self.media_refused(now, seq, why, out);
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let local = self.locals.addr(call.caller_local);
        // Retransmissions of this 2xx then come in as strays and are ACKed.
        if let Some(k) = call.client_key().cloned() {
            self.txs.remove(&k);
            self.tx_info.remove(&k);
        }
        self.finish_unanswered(now, seq, 488, &[warning(local, 305, why)], out);
        self.release_late_answer(now, msg, out);
    }

    pub(super) fn cdr_of(
        &self,
        seq: u64,
        disposition: Disposition,
        code: u16,
        end: Option<u64>,
    ) -> Option<Cdr> {
        let c = self.calls.get(&seq)?;
        let duration_ms = match (c.answer_at.get(), end) {
            (Some(a), Some(e)) => e.saturating_sub(a),
            _ => 0,
        };
        Some(Cdr {
            call_id: c.names.call_id().to_string(),
            tracking_number: c.names.number().to_string(),
            campaign: c.campaign.to_string(),
            caller: Pii::new(c.names.caller_number().to_string()),
            caller_name: c.names.caller_name().map(Pii::new),
            destination: c.destination.to_string(),
            invite_at: c.invite_at,
            ring_at: c.ring_at.get(),
            answer_at: c.answer_at.get(),
            end_at: end,
            duration_ms,
            disposition,
            final_code: code,
            appliance: c
                .answered_by
                .as_deref()
                .map_or_else(|| self.s.appliance.clone(), str::to_owned),
            ended_by: c.answered_by.is_some().then(|| self.s.appliance.clone()),
            resume: None,
        })
    }

    /// Answers the caller with `code` (we generate it, with `extra` headers) and ends the
    /// unanswered call.
    pub(super) fn finish_unanswered(
        &mut self,
        now: Now,
        seq: u64,
        code: u16,
        extra: &[(&'static str, String)],
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        if let Some((inv, key)) = call
            .setup
            .as_ref()
            .map(|s| (s.invite.clone(), s.server_key.clone()))
        {
            if let Ok(req) = sip::parse(&inv) {
                let tag = format!("cg{:x}", self.rand());
                if let Some(b) = msgs::response(&req, code, Some(&tag), extra) {
                    self.respond(now, &key, code, b.into(), out);
                }
            }
        }
        self.end_unanswered(now, seq, code, out);
    }

    pub(super) fn end_unanswered(&mut self, now: Now, seq: u64, code: u16, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let disposition = match call.cancel {
            Some(Cancel::Caller) => Disposition::Cancelled,
            Some(Cancel::NoAnswer) => Disposition::NoAnswer,
            Some(Cancel::MediaRefused) => Disposition::Failed,
            None => disposition_for(code),
        };
        match disposition {
            Disposition::Cancelled => self.stats.calls_cancelled += 1,
            Disposition::NoAnswer => self.stats.calls_no_answer += 1,
            Disposition::Busy => self.stats.calls_busy += 1,
            _ => self.stats.calls_failed += 1,
        }
        let cdr = self.cdr_of(seq, disposition, code, Some(now.unix_ms));
        self.remove_call(now, seq, out);
        if let Some(cdr) = cdr {
            out.push(Output::Record {
                seq,
                cdr: Box::new(cdr),
                ended: true,
            });
        }
    }

    pub(super) fn end_answered(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let cdr = self.cdr_of(seq, Disposition::Answered, 200, Some(now.unix_ms));
        self.remove_call(now, seq, out);
        if let Some(cdr) = cdr {
            out.push(Output::Record {
                seq,
                cdr: Box::new(cdr),
                ended: true,
            });
        }
    }

    pub(super) fn abandon(&mut self, now: Now, branch: &str, peer: Peer, local: SocketAddr) {
        let until = now.mono + self.s.timers.timeout();
        self.abandoned.insert(
            branch.into(),
            Abandoned {
                peer,
                local,
                until,
                released: false,
            },
        );
    }

    /// A 2xx for an INVITE we gave up on: ACK it and end that dialog with BYE, so the
    /// destination does not hold a call nobody is on (RFC 3261 §16.7 leaves it to us).
    pub(super) fn release_late_answer(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        out: &mut Vec<Output>,
    ) {
        let Some(branch) = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_owned))
        else {
            return;
        };
        let Some(ab) = self.abandoned.get(branch.as_str()).cloned() else {
            return;
        };
        let (Some(from), Some(to), Ok(call_id), Ok(cseq)) = (
            msg.single(HeaderName::From).ok().flatten(),
            msg.single(HeaderName::To).ok().flatten(),
            msg.call_id(),
            msg.cseq(),
        ) else {
            return;
        };
        let Some(target) = msg
            .contacts()
            .ok()
            .flatten()
            .and_then(|c| c.first().map(|c| c.uri.as_str().to_string()))
        else {
            return;
        };
        let (ack_via, _) = self.our_via(ab.local, ab.peer.transport);
        let mut spec = msgs::ByeSpec {
            target: &target,
            route: &[],
            via: &ack_via,
            from,
            to,
            call_id,
            cseq: cseq.seq,
        };
        let ack = msgs::ack_2xx(&spec);
        self.send(ab.peer, ab.local, ack.into(), out);
        if ab.released {
            return; // a retransmission of the 2xx: the BYE is on its way
        }
        let (via, bye_branch) = self.our_via(ab.local, ab.peer.transport);
        spec.via = &via;
        spec.cseq = cseq.seq.saturating_add(1);
        let bye = msgs::bye(&spec, "call already ended");
        if let Ok(key) = TransactionKey::client(&bye_branch, "BYE") {
            self.start_client(now, key, Owner::Own, (ab.peer, ab.local), bye.into(), out);
        }
        if let Some(a) = self.abandoned.get_mut(branch.as_str()) {
            a.released = true;
        }
        let line =
            format!("released a destination that answered after the call ended (call {call_id:?})");
        self.log(now, "late-answer", log::Level::Info, line, out);
    }

    /// Forgets a call: timers, pinholes, permit. Transactions finish on their own.
    pub(super) fn remove_call(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let Some(call) = self.calls.remove(&seq) else {
            return;
        };
        self.held.remove(&seq);
        if call.state != CallState::Answered {
            if let Some(k) = call.client_key() {
                let local = self.locals.addr(call.callee_local);
                self.abandon(now, k.branch(), call.callee, local);
            }
        }
        self.by_call_id.remove(call.names.call_id(), seq);
        for (k, at) in call.deadlines.pending() {
            self.timers.remove(&(at, seq, k));
        }
        for a in call.pinholes() {
            self.pinhole_close(a, out);
        }
        if let (Some(a), Some(p)) = (self.admission.as_mut(), call.permit) {
            a.release(p);
        }
        self.flood.dialog_ended(call.caller.addr.ip());
    }
}

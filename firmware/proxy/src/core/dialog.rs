//! In-dialog requests: who may send them, relaying them to the other party, ACKs of 2xx,
//! re-INVITE answers, and our own BYEs.

use super::*;

impl Proxy {
    pub(super) fn on_ack(
        &mut self,
        rq: &Req<'_, '_>,
        branch: &str,
        sent_by: &str,
        out: &mut Vec<Output>,
    ) {
        let Req { now, msg, peer, .. } = *rq;
        // ACK for a non-2xx final response: absorbed by its INVITE server transaction. An
        // ACK matching a transaction in Accepted acknowledges a 2xx: end to end.
        if let Ok(key) = TransactionKey::server(branch, sent_by, "ACK") {
            if let Some(tx) = self.txs.get(&key) {
                if tx.state() != TxState::Accepted {
                    // Only the party that sent the INVITE acknowledges its final response.
                    let sender = self.tx_info.get(&key).map(|i| i.peer);
                    if sender.is_some_and(|s| {
                        s.addr.ip().to_canonical() != peer.addr.ip().to_canonical()
                    }) {
                        self.stats.refused_wrong_party += 1;
                        return;
                    }
                    if let Ok(acts) =
                        self.txs
                            .handle(now.mono, &key, Event::Received(Incoming::Ack))
                    {
                        self.run_actions(now, &key, acts, out);
                    }
                    return;
                }
            }
        }
        // ACK for a 2xx: end to end, forwarded statelessly within the dialog.
        self.forward_in_dialog_stateless(now, msg, peer, rq.our_routes, out);
    }

    /// Finds the call of an in-dialog request and which way it goes; `None` (with the
    /// status to answer) when it is not ours to relay.
    pub(super) fn dialog_side(&self, msg: &Message<'_>, peer: Peer) -> Result<(u64, bool), u16> {
        let call_id = msg.call_id().map_err(|_| 400u16)?;
        let seq = self.by_call_id.get(call_id, &self.calls).ok_or(481u16)?;
        let call = self.calls.get(&seq).ok_or(481u16)?;
        let from_tag = msg.from_tag().ok().flatten().unwrap_or_default();
        let from_caller = from_tag == call.names.tag_of_caller();
        let expected = if from_caller {
            call.caller.addr.ip()
        } else {
            call.callee.addr.ip()
        };
        if peer.addr.ip().to_canonical() != expected.to_canonical() {
            return Err(403);
        }
        Ok((seq, from_caller))
    }

    /// Takes our own entries off the top of `m`'s route set, parsing one value at a time
    /// (requests were validated: every Route value is a name-addr). `None` if a value does
    /// not parse.
    pub(super) fn strip_our_routes(&self, m: &mut Message<'_>) -> Option<()> {
        loop {
            let ours = match m.each_value(HeaderName::Route).next() {
                None => false,
                Some(top) => {
                    let r = sip::parse_name_addr(top.ok()?).ok()?;
                    r.angle && self.uri_is_ours(&r.uri)
                }
            };
            if !ours {
                return Some(());
            }
            m.remove_top_route().ok()?;
        }
    }

    /// The edited in-dialog request toward the other party: the `our_routes` Route values
    /// on top that name us ([`Req::our_routes`]) removed, Max-Forwards decremented, our
    /// Via on top.
    pub(super) fn edit_in_dialog(
        &self,
        msg: &Message<'_>,
        via: &str,
        our_routes: usize,
    ) -> Option<Vec<u8>> {
        let mut m = msg.clone();
        for _ in 0..our_routes {
            m.remove_top_route().ok()?;
        }
        m.decrement_max_forwards().ok()??;
        m.prepend_built_via(via.to_string());
        Some(m.serialize())
    }

    pub(super) fn forward_in_dialog_stateless(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        peer: Peer,
        our_routes: usize,
        out: &mut Vec<Output>,
    ) {
        let (seq, from_caller) = match self.dialog_side(msg, peer) {
            Ok(v) => v,
            Err(code) => {
                if code == 403 {
                    self.stats.refused_wrong_party += 1;
                }
                return;
            }
        };
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let (to, local) = if from_caller {
            (call.callee, self.locals.addr(call.callee_local))
        } else {
            (call.caller, self.locals.addr(call.caller_local))
        };
        let (via, _) = self.our_via(local, to.transport);
        if let Some(b) = self.edit_in_dialog(msg, &via, our_routes) {
            // Media of a late offer (offer in the 2xx, answer in the ACK).
            if !msg.body().is_empty() {
                match self.described_media(seq, msg, !from_caller) {
                    Ok(side) => self.update_media(now, seq, !from_caller, side, out),
                    Err(why) => {
                        self.send(to, local, b.into(), out);
                        self.media_refused(now, seq, why, out);
                        self.bye_both_ways(now, seq, "media refused", out);
                        return;
                    }
                }
            }
            self.send(to, local, b.into(), out);
        }
    }

    pub(super) fn in_dialog(
        &mut self,
        rq: &Req<'_, '_>,
        key: TransactionKey,
        out: &mut Vec<Output>,
    ) {
        let Req {
            now,
            msg,
            peer,
            local,
            ..
        } = *rq;
        let (seq, from_caller) = match self.dialog_side(msg, peer) {
            Ok(v) => v,
            Err(code) => {
                if code == 403 {
                    self.stats.refused_wrong_party += 1;
                }
                self.reply_stateful(rq, &key, Owner::Own, code, &[], out);
                return;
            }
        };
        let Some(method) = msg.method() else { return };
        let offer = if method == "INVITE" && !msg.body().is_empty() {
            match self.described_media(seq, msg, !from_caller) {
                Ok(m) => Some(m),
                Err(why) => {
                    // An offer the config does not allow: 488, not relayed, nothing opens.
                    self.media_refused(now, seq, why, out);
                    let extra = [warning(local, 305, why)];
                    self.reply_stateful(rq, &key, Owner::Own, 488, &extra, out);
                    return;
                }
            }
        } else {
            None
        };
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if let (Ok(cseq), Some(d)) = (msg.cseq(), call.dialog.as_mut()) {
            if from_caller {
                d.caller_cseq = d.caller_cseq.max(cseq.seq);
            } else {
                d.callee_cseq = d.callee_cseq.max(cseq.seq);
            }
        }
        let (to, out_local) = if from_caller {
            (call.callee, self.locals.addr(call.callee_local))
        } else {
            (call.caller, self.locals.addr(call.caller_local))
        };
        let (via, branch) = self.our_via(out_local, to.transport);
        let Some(bytes) = self.edit_in_dialog(msg, &via, rq.our_routes) else {
            self.reply_stateful(rq, &key, Owner::Own, 400, &[], out);
            return;
        };
        let Ok(ckey) = TransactionKey::client(&branch, method) else {
            return;
        };
        let rid = self.next_seq;
        self.next_seq += 1;
        let started = self
            .txs
            .start_server(now.mono, key.clone(), tx_transport(peer.transport))
            .and_then(|a| {
                let c = self.txs.start_client(
                    now.mono,
                    ckey.clone(),
                    tx_transport(to.transport),
                    bytes.into(),
                );
                if c.is_err() {
                    self.txs.remove(&key);
                }
                c.map(|c| (a, c))
            });
        let Ok((sacts, cacts)) = started else {
            let extra = [("Retry-After", guard::FULL_RETRY_AFTER_SECS.to_string())];
            self.reply_stateless(rq, 503, &extra, out);
            return;
        };
        self.tx_info.insert(
            key.clone(),
            TxInfo {
                owner: Owner::Relay(rid),
                peer,
                local,
            },
        );
        self.tx_info.insert(
            ckey.clone(),
            TxInfo {
                owner: Owner::Relay(rid),
                peer: to,
                local: out_local,
            },
        );
        self.relays.insert(
            rid,
            Relay {
                call: seq,
                server_key: key.clone(),
                client_key: ckey.clone(),
                method: method.into(),
                from_caller,
            },
        );
        self.relay_requests
            .insert(rid, Payload::from(msg.serialize()));
        if let Some(offer) = offer {
            // An offer: applied when its answer comes.
            if let Some(c) = self.calls.get_mut(&seq) {
                c.offered = Some(Box::new((!from_caller, offer)));
            }
        }
        self.run_actions(now, &key, sacts, out);
        if method == "INVITE" {
            if let Some(b) = msgs::response(msg, 100, None, &[]) {
                self.respond(now, &key, 100, b.into(), out);
            }
        }
        self.run_actions(now, &ckey, cacts, out);
        if method == "BYE" {
            let answered = self
                .calls
                .get(&seq)
                .is_some_and(|c| c.state == CallState::Answered);
            if answered {
                self.end_answered(now, seq, out);
            } else {
                // BYE in an early dialog: the caller gave up.
                if let Some(c) = self.calls.get_mut(&seq) {
                    c.cancel = Some(Cancel::Caller);
                }
                self.finish_unanswered(now, seq, 487, &[], out);
            }
        }
    }

    pub(super) fn relay_response(
        &mut self,
        now: Now,
        rid: u64,
        msg: &Message<'_>,
        code: u16,
        out: &mut Vec<Output>,
    ) {
        let Some(relay) = self.relays.get(&rid) else {
            return;
        };
        let key = relay.server_key.clone();
        let (call, is_invite) = (relay.call, &*relay.method == "INVITE");
        let callee_answers = relay.from_caller;
        let refused = if is_invite && (200..300).contains(&code) && !msg.body().is_empty() {
            match self.described_media(call, msg, callee_answers) {
                Ok(answer) => {
                    self.update_media(now, call, callee_answers, answer, out);
                    None
                }
                Err(why) => Some(why),
            }
        } else {
            None
        };
        self.respond_stripped(now, &key, msg, code, out);
        if let Some(why) = refused {
            // A re-INVITE answered with media the config does not allow: the call ends.
            self.media_refused(now, call, why, out);
            self.bye_both_ways(now, call, "media refused", out);
        }
    }

    /// Ends an answered call from here: BYE to both parties (`reason` in its Reason
    /// header), pinholes closed, the final record.
    pub(super) fn bye_both_ways(
        &mut self,
        now: Now,
        seq: u64,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let dialog = call.dialog.clone();
        let (caller, caller_local, callee, callee_local) = (
            call.caller,
            self.locals.addr(call.caller_local),
            call.callee,
            self.locals.addr(call.callee_local),
        );
        let call_id = call.names.call_id().to_string();
        if let Some(d) = dialog {
            for (to_caller, peer, local) in
                [(true, caller, caller_local), (false, callee, callee_local)]
            {
                let target = d.contact_of(to_caller);
                let route = d.route_toward(to_caller);
                // Each URI is checked before it goes into a request of ours: the callee's
                // side is kept as its 2xx wrote it.
                if sip::parse_uri(target).is_err()
                    || route.iter().any(|r| sip::parse_uri(r).is_err())
                {
                    let side = if to_caller { "caller" } else { "callee" };
                    let line = format!(
                        "call {seq}: no BYE to the {side}: its Contact or route does not parse"
                    );
                    self.log(now, "bye-skipped", log::Level::Warn, line, out);
                    continue;
                }
                let (via, branch) = self.our_via(local, peer.transport);
                let (from, to) = (d.from(), d.to());
                let spec = msgs::ByeSpec {
                    target,
                    route: &route,
                    via: &via,
                    from: if to_caller { to } else { from },
                    to: if to_caller { from } else { to },
                    call_id: &call_id,
                    // Below 2^31 (requests with more are refused), so never wraps.
                    cseq: if to_caller {
                        d.callee_cseq.saturating_add(1)
                    } else {
                        d.caller_cseq.saturating_add(1)
                    },
                };
                let bytes = msgs::bye(&spec, reason);
                if let Ok(key) = TransactionKey::client(&branch, "BYE") {
                    self.start_client(now, key, Owner::Own, (peer, local), bytes.into(), out);
                }
            }
        }
        self.end_answered(now, seq, out);
    }
}

/// What our own BYEs need for an answered call: the dialog's From and To, both parties'
/// Contacts, the route toward each, and the highest CSeq each party has used. The URIs
/// are kept as written, not parsed: the caller's were validated with its INVITE, the
/// callee's are checked when a BYE is built ([`Proxy::bye_both_ways`]). It lives in
/// the call, with one allocation (it lasts as long as the call; memory per dialog is a
/// figure of the benchmark): where each text ends (u32 LE each), then the texts back to
/// back, read through the named accessors below.
#[derive(Debug, Clone)]
pub(super) struct DialogInfo {
    buf: Box<[u8]>,
    pub(super) caller_cseq: u32,
    pub(super) callee_cseq: u32,
}

/// Bytes before the texts in a [`DialogInfo`]'s allocation: where each part ends.
const ENDS: usize = 4 * Part::COUNT;

/// The texts of a [`DialogInfo`], in their order in its allocation.
#[derive(Debug, Clone, Copy)]
enum Part {
    From,
    To,
    CallerContact,
    CalleeContact,
    /// Route URIs toward the caller, one per line.
    RouteToCaller,
    /// Route URIs toward the callee, one per line.
    RouteToCallee,
}

impl Part {
    const COUNT: usize = 6;
}

/// What a [`DialogInfo`] is made of.
#[derive(Debug)]
pub(super) struct DialogParts<'a> {
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) caller_contact: &'a str,
    pub(super) callee_contact: &'a str,
    pub(super) route_to_caller: &'a [String],
    pub(super) route_to_callee: &'a [String],
}

impl DialogInfo {
    pub(super) fn new(p: DialogParts<'_>, caller_cseq: u32) -> DialogInfo {
        let (to_caller, to_callee) = (p.route_to_caller.join("\n"), p.route_to_callee.join("\n"));
        let parts: [&str; Part::COUNT] = [
            p.from,
            p.to,
            p.caller_contact,
            p.callee_contact,
            &to_caller,
            &to_callee,
        ];
        let mut buf = vec![0u8; ENDS];
        buf.reserve_exact(parts.iter().map(|p| p.len()).sum());
        for (i, p) in parts.into_iter().enumerate() {
            buf.extend_from_slice(p.as_bytes());
            let end = u32::try_from(buf.len() - ENDS).unwrap_or(u32::MAX);
            if let Some(slot) = buf.get_mut(4 * i..4 * i + 4) {
                slot.copy_from_slice(&end.to_le_bytes());
            }
        }
        DialogInfo {
            buf: buf.into_boxed_slice(),
            caller_cseq,
            callee_cseq: 0,
        }
    }

    /// Where part `i` ends among the texts.
    fn end(&self, i: usize) -> usize {
        let mut b = [0u8; 4];
        if let Some(s) = self.buf.get(4 * i..4 * i + 4) {
            b.copy_from_slice(s);
        }
        u32::from_le_bytes(b) as usize
    }

    fn part(&self, p: Part) -> &str {
        let i = p as usize;
        let start = i.checked_sub(1).map_or(0, |prev| self.end(prev));
        let end = self.end(i).max(start);
        // The bytes are a `&str`'s (from `new`), split where one ended: always UTF-8.
        self.buf
            .get(ENDS + start..ENDS + end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// The dialog's From (the caller's).
    pub(super) fn from(&self) -> &str {
        self.part(Part::From)
    }

    /// The dialog's To (the callee's, with its tag).
    pub(super) fn to(&self) -> &str {
        self.part(Part::To)
    }

    /// The Contact of the caller (`caller`) or of the callee.
    pub(super) fn contact_of(&self, caller: bool) -> &str {
        self.part(if caller {
            Part::CallerContact
        } else {
            Part::CalleeContact
        })
    }

    /// The route toward the caller (`caller`) or toward the callee.
    pub(super) fn route_toward(&self, caller: bool) -> Vec<String> {
        let p = if caller {
            Part::RouteToCaller
        } else {
            Part::RouteToCallee
        };
        self.part(p)
            .split('\n')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The caller's side of a dialog, taken from its INVITE when the call is admitted (the
/// message is parsed then; the answer need not parse it again): From, Contact, the
/// Record-Route it carried, CSeq.
#[derive(Debug)]
pub(super) struct CallerSide {
    from: String,
    contact: String,
    record_route: Vec<String>,
    cseq: u32,
}

impl CallerSide {
    /// `None` when the INVITE lacks what a dialog needs (no Contact, a malformed header):
    /// the call goes on, without BYEs of our own.
    pub(super) fn of(inv: &Message<'_>) -> Option<CallerSide> {
        // The INVITE passed validation (`sip::check`), which parsed its Contact and
        // Record-Route values in full: their URIs are taken as written.
        Some(CallerSide {
            from: inv.single(HeaderName::From).ok()??.to_owned(),
            contact: inv.first_contact_uri().ok()??.to_owned(),
            record_route: inv
                .record_route_uris()
                .ok()?
                .into_iter()
                .map(str::to_owned)
                .collect(),
            cseq: inv.cseq().ok()?.seq,
        })
    }
}

/// What our own BYEs need, from the caller's side of the INVITE and the 2xx.
pub(super) fn dialog_info(
    caller: &CallerSide,
    ok: &Message<'_>,
    ours: usize,
) -> Option<DialogInfo> {
    // The 2xx is not validated as a whole: its Contact and Record-Route URIs are kept as
    // written, and `bye_both_ways` checks each before it writes it into a BYE.
    let callee_contact = ok.first_contact_uri().ok()??;
    // Record-Route of the 2xx: [callee side..., ours..., caller side...].
    let rr = ok.record_route_uris().ok()?;
    // The caller side is what the INVITE already carried; ours are `ours` entries above it.
    let n_callee = rr.len().saturating_sub(caller.record_route.len() + ours);
    let mut route_to_callee: Vec<String> =
        rr.iter().take(n_callee).map(|r| (*r).to_owned()).collect();
    route_to_callee.reverse();
    Some(DialogInfo::new(
        DialogParts {
            from: &caller.from,
            to: ok.single(HeaderName::To).ok()??,
            caller_contact: &caller.contact,
            callee_contact,
            route_to_caller: &caller.record_route,
            route_to_callee: &route_to_callee,
        },
        caller.cseq,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_info_gives_back_each_named_part() {
        let routes_up = [
            "sip:203.0.113.9;lr".to_owned(),
            "sip:203.0.113.8;lr".to_owned(),
        ];
        let d = DialogInfo::new(
            DialogParts {
                from: "<sip:a@x>;tag=1",
                to: "<sip:b@y>;tag=2",
                caller_contact: "sip:a@203.0.113.10",
                callee_contact: "sip:b@198.51.100.10",
                route_to_caller: &routes_up,
                route_to_callee: &[],
            },
            7,
        );
        assert_eq!(d.from(), "<sip:a@x>;tag=1");
        assert_eq!(d.to(), "<sip:b@y>;tag=2");
        assert_eq!(d.contact_of(true), "sip:a@203.0.113.10");
        assert_eq!(d.contact_of(false), "sip:b@198.51.100.10");
        assert_eq!(d.route_toward(true), routes_up.to_vec());
        assert!(d.route_toward(false).is_empty());
        assert_eq!((d.caller_cseq, d.callee_cseq), (7, 0));
    }
}

//! Transactions: stateful replies, client transactions, responses (taken only from where
//! their request went) and what the transaction layer asks for.

use super::health::probe_uri;
use super::*;

impl Proxy {
    /// Starts a server transaction and answers through it (absorbs retransmissions).
    pub(super) fn reply_stateful(
        &mut self,
        rq: &Req<'_, '_>,
        key: &TransactionKey,
        owner: Owner,
        code: u16,
        extra: &[(&'static str, String)],
        out: &mut Vec<Output>,
    ) {
        let Req {
            now,
            msg: req,
            peer,
            local,
            ..
        } = *rq;
        match self
            .txs
            .start_server(now.mono, key.clone(), tx_transport(peer.transport))
        {
            Ok(acts) => {
                self.tx_info
                    .insert(key.clone(), TxInfo { owner, peer, local });
                self.run_actions(now, key, acts, out);
                let tag = format!("cg{:x}", self.rand());
                if let Some(b) = msgs::response(req, code, Some(&tag), extra) {
                    self.respond(now, key, code, b.into(), out);
                }
            }
            Err(_) => self.reply_stateless(rq, code, extra, out),
        }
    }

    /// Sends a response through the server transaction `key`.
    pub(super) fn respond(
        &mut self,
        now: Now,
        key: &TransactionKey,
        code: u16,
        bytes: Payload,
        out: &mut Vec<Output>,
    ) {
        if let Ok(acts) = self.txs.handle(
            now.mono,
            key,
            Event::Send(Outgoing::Response { code, msg: bytes }),
        ) {
            self.run_actions(now, key, acts, out);
        }
    }

    /// Starts a client transaction sending `bytes` to `peer` from our `local` socket on
    /// behalf of `owner`; false when the table refuses it (full).
    pub(super) fn start_client(
        &mut self,
        now: Now,
        key: TransactionKey,
        owner: Owner,
        (peer, local): (Peer, SocketAddr),
        bytes: Payload,
        out: &mut Vec<Output>,
    ) -> bool {
        match self
            .txs
            .start_client(now.mono, key.clone(), tx_transport(peer.transport), bytes)
        {
            Ok(acts) => {
                self.tx_info
                    .insert(key.clone(), TxInfo { owner, peer, local });
                self.run_actions(now, &key, acts, out);
                true
            }
            Err(_) => false,
        }
    }

    /// A 2xx for the INVITE of a call carried on from its record, from that call's callee:
    /// the proxy that died may have stored the answer but not relayed it, so the caller may
    /// still be waiting: relay it upstream (statelessly, to the caller's known address), as
    /// an Accepted INVITE transaction would. Whether it was one.
    fn relay_resumed_2xx(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        peer: Peer,
        out: &mut Vec<Output>,
    ) -> bool {
        let from_tag = msg.from_tag().ok().flatten();
        let call = msg
            .call_id()
            .ok()
            .and_then(|id| self.by_call_id.get(id, &self.calls))
            .and_then(|seq| self.calls.get(&seq))
            .filter(|c| c.resumed && from_tag == Some(c.names.tag_of_caller()))
            .map(|c| (c.callee, c.caller, self.locals.addr(c.caller_local)));
        let Some((callee, caller, local)) = call else {
            return false;
        };
        if !from_where_sent(callee, peer) {
            self.wrong_source(now, peer, out);
            return true;
        }
        if let Some(b) = strip_via(msg) {
            self.send(caller, local, b.into(), out);
        }
        true
    }

    pub(super) fn on_response(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        peer: Peer,
        out: &mut Vec<Output>,
    ) {
        let (Ok(via), Ok(cseq), Some(code)) = (msg.top_via(), msg.cseq(), msg.status()) else {
            self.stats.malformed_dropped += 1;
            return;
        };
        if msg.call_id().is_err() {
            self.stats.malformed_dropped += 1;
            return;
        }
        let Some(branch) = via.branch() else { return };
        let Ok(key) = TransactionKey::client(branch, cseq.method) else {
            return;
        };
        let Some(info) = self.tx_info.get(&key).copied() else {
            if (200..300).contains(&code) && self.accepted.contains(&key) {
                // The INVITE transaction of an answered call (Accepted, RFC 6026): a
                // retransmitted 2xx from the callee goes upstream statelessly while the
                // call lasts.
                let call = msg
                    .call_id()
                    .ok()
                    .and_then(|id| self.by_call_id.get(id, &self.calls))
                    .and_then(|seq| self.calls.get(&seq))
                    .map(|c| {
                        (
                            c.callee,
                            c.caller,
                            self.locals.addr(c.caller_local),
                            self.held.contains_key(&c.seq),
                        )
                    });
                let Some((callee, caller, local, held)) = call else {
                    return;
                };
                if !from_where_sent(callee, peer) {
                    self.wrong_source(now, peer, out);
                    return;
                }
                if held {
                    return; // the first copy waits for its record; so does this one
                }
                if let Some(b) = strip_via(msg) {
                    self.send(caller, local, b.into(), out);
                }
                return;
            }
            if (200..300).contains(&code)
                && cseq.method == "INVITE"
                && self.relay_resumed_2xx(now, msg, peer, out)
            {
                return;
            }
            self.stats.stray_responses += 1;
            if (200..300).contains(&code) && cseq.method == "INVITE" {
                match self.abandoned.get(branch).map(|a| a.peer) {
                    Some(sent) if from_where_sent(sent, peer) => {
                        self.release_late_answer(now, msg, out)
                    }
                    Some(_) => self.wrong_source(now, peer, out),
                    None => {}
                }
            }
            return;
        };
        if !from_where_sent(info.peer, peer) {
            self.wrong_source(now, peer, out);
            return;
        }
        let Some(incoming) = Incoming::response(code) else {
            return;
        };
        let Ok(acts) = self.txs.handle(now.mono, &key, Event::Received(incoming)) else {
            self.stats.stray_responses += 1;
            return;
        };
        for act in acts {
            match act {
                Action::PassUp(Incoming::Provisional(c)) | Action::PassUp(Incoming::Final(c)) => {
                    match info.owner {
                        Owner::Call(seq) => self.call_response(now, seq, msg, c, &key, out),
                        Owner::Relay(rid) => self.relay_response(now, rid, msg, c, out),
                        Owner::Probe => {
                            if c >= 200 {
                                let uri = probe_uri(info.peer);
                                self.probes_pending.retain(|(u, _)| *u != uri);
                                self.health.set_healthy(uri, c != 503);
                            }
                        }
                        Owner::Own => {}
                    }
                }
                Action::PassUpRetransmitted2xx(_) => {
                    // RFC 6026: forward 2xx retransmissions statelessly upstream.
                    if let Owner::Call(seq) | Owner::Relay(seq) = info.owner {
                        let up = match info.owner {
                            Owner::Call(_) => self
                                .calls
                                .get(&seq)
                                .map(|c| (c.caller, self.locals.addr(c.caller_local))),
                            _ => self.relays.get(&seq).and_then(|r| {
                                let s = self.tx_info.get(&r.server_key)?;
                                Some((s.peer, s.local))
                            }),
                        };
                        if let Some((peer, local)) = up {
                            if let Some(b) = strip_via(msg) {
                                self.send(peer, local, b.into(), out);
                            }
                        }
                    }
                }
                Action::Transmit(MessageRef::Ack { request }) => {
                    if let Some(b) = msgs::ack_for(&request, msg) {
                        self.send(info.peer, info.local, b.into(), out);
                    }
                }
                other => self.run_actions(now, &key, [other], out),
            }
        }
    }

    /// A response that matches a transaction but not where its request went: counted
    /// and dropped (forged responses would tear calls down or open pinholes).
    pub(super) fn wrong_source(&mut self, now: Now, peer: Peer, out: &mut Vec<Output>) {
        self.stats.responses_wrong_source += 1;
        let line = format!(
            "dropped a response from {}: its request went elsewhere",
            peer.addr
        );
        self.log(now, "wrong-source", log::Level::Warn, line, out);
    }

    pub(super) fn run_actions(
        &mut self,
        now: Now,
        key: &TransactionKey,
        acts: impl IntoIterator<Item = Action<Payload>>,
        out: &mut Vec<Output>,
    ) {
        for act in acts {
            match act {
                Action::Transmit(MessageRef::Request(m))
                | Action::Transmit(MessageRef::Response(m)) => {
                    if let Some(info) = self.tx_info.get(key).copied() {
                        self.send(info.peer, info.local, m, out);
                    }
                }
                Action::Transmit(MessageRef::Ack { .. }) => {}
                Action::PassUp(_) | Action::PassUpRetransmitted2xx(_) => {}
                Action::Timeout | Action::TransportError => self.tx_failed(now, key, out),
                Action::Terminated => {
                    if let Some(TxInfo {
                        owner: Owner::Relay(rid),
                        ..
                    }) = self.tx_info.remove(key)
                    {
                        let other_live = self.relays.get(&rid).is_some_and(|r| {
                            self.tx_info.contains_key(&r.server_key)
                                || self.tx_info.contains_key(&r.client_key)
                        });
                        if !other_live {
                            self.relays.remove(&rid);
                            self.relay_requests.remove(&rid);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn tx_failed(&mut self, now: Now, key: &TransactionKey, out: &mut Vec<Output>) {
        let Some(info) = self.tx_info.get(key).copied() else {
            return;
        };
        match info.owner {
            Owner::Call(seq) => {
                let current = self
                    .calls
                    .get(&seq)
                    .is_some_and(|c| c.client_key() == Some(key));
                if current {
                    self.clear_timer(seq, TimerKind::Response);
                    if let Some(c) = self.calls.get_mut(&seq) {
                        c.last_code = Some(408);
                        if let Some(s) = c.setup.as_mut() {
                            s.client_key = None;
                        }
                    }
                    if self
                        .calls
                        .get(&seq)
                        .is_some_and(|c| c.state != CallState::Answered)
                    {
                        self.try_next(now, seq, out);
                    }
                }
            }
            Owner::Relay(rid) => {
                // The other party never answered a relayed request: 408 upstream.
                let Some(relay) = self.relays.get(&rid) else {
                    return;
                };
                if &relay.client_key == key {
                    let skey = relay.server_key.clone();
                    if let Some(b) = self.relay_requests.remove(&rid) {
                        if let Ok(req) = sip::parse(&b) {
                            if let Some(r) = msgs::response(&req, 408, None, &[]) {
                                self.respond(now, &skey, 408, r.into(), out);
                            }
                        }
                    }
                }
            }
            Owner::Probe => self.health.set_healthy(probe_uri(info.peer), false),
            Owner::Own => {}
        }
    }
}

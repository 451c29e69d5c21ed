//! Admission of new calls: the per-source flood guard, the checks a new INVITE passes
//! (carrier, domain, Route, Call-ID, number, media offer, dialog cap, overload) and the
//! call it starts.

use super::*;

impl Proxy {
    /// Per-source flood guard, for every source (carriers and destinations with limits of
    /// their own, and never blocked); false: drop the message. The per-source dialog cap
    /// is applied where a call is admitted ([`FloodGuard::open_dialog`]).
    pub(super) fn flood_check(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        peer: Peer,
        out: &mut Vec<Output>,
    ) -> bool {
        let ua = msg.single(HeaderName::UserAgent).ok().flatten();
        let scanner = ua.is_some_and(|u| self.flood.is_scanner(u));
        match self
            .flood
            .check(guard::Millis(now.mono.0), peer.addr.ip(), ua)
        {
            guard::Verdict::Allow => true,
            guard::Verdict::Drop => {
                if scanner {
                    self.stats.scanner_dropped += 1;
                } else {
                    self.stats.flood_dropped += 1;
                }
                false
            }
            guard::Verdict::Block { ttl_secs } => {
                self.stats.sources_blocked += 1;
                self.stats.flood_dropped += 1;
                let ip = peer.addr.ip().to_canonical();
                out.push(Output::Block {
                    ip,
                    ttl: Duration::from_secs(u64::from(ttl_secs)),
                });
                let line = format!("blocked source {ip} for {ttl_secs} s (flood or scanner)");
                self.log(now, "block", log::Level::Warn, line, out);
                false
            }
        }
    }

    pub(super) fn new_call(
        &mut self,
        rq: &Req<'_, '_>,
        bytes: &[u8],
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
        let src = peer.addr.ip();
        if self.routes.carrier_of(src).is_none() {
            self.stats.refused_not_carrier += 1;
            let line = format!("refused INVITE from {src}: not a carrier peer (403)");
            self.log(now, "not-carrier", log::Level::Info, line, out);
            self.reply_stateless(rq, 403, &[], out);
            return;
        }
        self.stats.calls_offered += 1;
        let Some(Ok(uri)) = msg.request_uri() else {
            return;
        };
        let (host_ok, user) = match &uri {
            Uri::Sip(u) => (
                self.routes.serves_domain(&host_text(&u.host)) || self.is_ours(&u.host, u.port),
                u.user.unwrap_or("").to_string(),
            ),
            Uri::Tel(t) => (true, t.number.to_string()),
            Uri::Absolute(_) => (false, String::new()),
        };
        let from = msg.from().ok();
        let caller_number = from
            .as_ref()
            .and_then(|f| f.uri.as_sip().and_then(|u| u.user).map(str::to_owned))
            .unwrap_or_default();
        let caller_name = from
            .as_ref()
            .and_then(|f| f.display_name())
            .map(|d| d.to_string());
        let from_tag = from
            .as_ref()
            .and_then(|f| f.tag())
            .unwrap_or("")
            .to_string();
        let number = normalize_number(&user).unwrap_or(user.clone());
        let call_id = msg.call_id().unwrap_or("").to_string();
        // Before anything is counted or admitted: it fails only for texts over 4 GiB, which
        // no message holds.
        let Some(names) = Names::new(
            &call_id,
            &from_tag,
            &number,
            &caller_number,
            caller_name.as_deref(),
        ) else {
            return;
        };
        // The address it came to: one of a handful (the listeners), so it always has a
        // number; a full table would be refused like an overload.
        let Some(local_id) = self.locals.id(local) else {
            self.stats.calls_shed += 1;
            self.reply_stateless(
                rq,
                503,
                &[("Retry-After", guard::FULL_RETRY_AFTER_SECS.to_string())],
                out,
            );
            return;
        };

        let reject = |p: &mut Proxy,
                      code: u16,
                      campaign: &str,
                      why: &'static str,
                      extra: &[(&'static str, String)],
                      out: &mut Vec<Output>| {
            p.stats.calls_rejected += 1;
            // The number is shown only when it is a configured tracking number (a campaign
            // names it); anything else a peer dialled may be a person's: a keyed tag.
            let line = if campaign.is_empty() {
                let n = callgate_cdr::Redacted(&number);
                format!("refused call {call_id:?} to number {n}: {why} ({code})")
            } else {
                format!("refused call {call_id:?} to {number}: {why} ({code})")
            };
            p.log(now, why, log::Level::Info, line, out);
            p.reply_stateful(rq, &key, Owner::Own, code, extra, out);
            let seq = p.next_seq;
            p.next_seq += 1;
            out.push(Output::Record {
                seq,
                cdr: Box::new(Cdr {
                    call_id: call_id.clone(),
                    tracking_number: number.clone(),
                    campaign: campaign.to_string(),
                    caller: Pii::new(caller_number.clone()),
                    caller_name: caller_name.clone().map(Pii::new),
                    destination: String::new(),
                    invite_at: now.unix_ms,
                    ring_at: None,
                    answer_at: None,
                    end_at: Some(now.unix_ms),
                    duration_ms: 0,
                    disposition: Disposition::Rejected,
                    final_code: code,
                    appliance: p.s.appliance.clone(),
                    ended_by: None,
                    resume: None,
                }),
                ended: true,
            });
        };

        if !host_ok {
            self.stats.refused_domain += 1;
            reject(self, 403, "", "foreign domain", &[], out);
            return;
        }
        // A sips: Request-URI asks for TLS on every hop (RFC 3261 §26.2.2, RFC 5630 §3.1.3,
        // no last-hop exception): it must have come over TLS.
        let secure = uri.as_sip().is_some_and(|u| u.is_secure());
        if secure && peer.transport != Transport::Tls {
            self.stats.refused_sips += 1;
            let extra = [warning(local, 399, "sips: requires TLS on every hop")];
            reject(self, 416, "", "sips: Request-URI not over TLS", &extra, out);
            return;
        }
        let routes_ok = msg
            .routes()
            .map(|rs| rs.iter().all(|r| self.uri_is_ours(&r.uri)))
            .unwrap_or(false);
        if !routes_ok {
            self.stats.refused_route += 1;
            reject(self, 403, "", "Route header names another host", &[], out);
            return;
        }
        if self.by_call_id.get(&call_id, &self.calls).is_some() {
            self.stats.refused_loop += 1;
            reject(
                self,
                482,
                "",
                "Call-ID already in a call (merged request)",
                &[],
                out,
            );
            return;
        }
        let Some(entry) = self.routes.lookup(&number).cloned() else {
            self.stats.refused_number += 1;
            reject(self, 404, "", "unknown number", &[], out);
            return;
        };
        // ... and on to the destination: only TLS ones may take it.
        let tls_dest = |d: &Dest| d.uri.transport == callgate_config::Transport::Tls;
        if secure && !entry.destinations.iter().any(tls_dest) {
            self.stats.refused_sips += 1;
            let extra = [warning(
                local,
                399,
                "no TLS destination for a sips: request",
            )];
            reject(
                self,
                480,
                &entry.campaign,
                "sips: request and no TLS destination",
                &extra,
                out,
            );
            return;
        }
        // The offer: exact, and inside what the config allows this carrier's media to be
        // (488 otherwise; nothing is relayed and no pinhole opens).
        let (offer, pool) = {
            let carrier = self.routes.carrier_of(src);
            let offer = media::media_of(msg).and_then(|m| {
                self.s
                    .media
                    .check(Side::Carrier(carrier), &m)
                    .map(|()| Media::from(m))
            });
            (offer, carrier.and_then(|c| c.media_pool.clone()))
        };
        let offer = match offer {
            Ok(m) => m,
            Err(why) => {
                self.stats.refused_media += 1;
                let extra = [warning(local, 305, why)];
                reject(self, 488, &entry.campaign, why, &extra, out);
                return;
            }
        };
        let retry_full = || ("Retry-After", guard::FULL_RETRY_AFTER_SECS.to_string());
        if !self.flood.open_dialog(guard::Millis(now.mono.0), src) {
            self.stats.calls_shed += 1;
            let extra = [retry_full()];
            reject(
                self,
                503,
                &entry.campaign,
                "source at its dialog cap",
                &extra,
                out,
            );
            return;
        }
        let permit = match self
            .admission
            .as_mut()
            .map(|a| a.try_admit(guard::Millis(now.mono.0)))
        {
            Some(Err(shed)) => {
                self.flood.dialog_ended(src);
                self.stats.calls_shed += 1;
                let extra = [("Retry-After", shed.retry_after_secs.to_string())];
                reject(self, 503, &entry.campaign, "overload", &extra, out);
                return;
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        match self
            .txs
            .start_server(now.mono, key.clone(), tx_transport(peer.transport))
        {
            Ok(acts) => {
                self.tx_info.insert(
                    key.clone(),
                    TxInfo {
                        owner: Owner::Call(self.next_seq),
                        peer,
                        local,
                    },
                );
                self.run_actions(now, &key, acts, out);
            }
            Err(TableError::Overloaded { .. }) | Err(_) => {
                if let (Some(a), Some(p)) = (self.admission.as_mut(), permit) {
                    a.release(p);
                }
                self.flood.dialog_ended(src);
                self.stats.calls_shed += 1;
                self.reply_stateless(rq, 503, &[retry_full()], out);
                return;
            }
        }
        // 100 Trying: the caller stops retransmitting (RFC 3261 §16.2).
        if let Some(b) = msgs::response(msg, 100, None, &[]) {
            self.respond(now, &key, 100, b.into(), out);
        }
        let mut dests = {
            let rng = &mut self.rng;
            self.selector
                .select(&entry, &self.health, &mut || rng.next_u64())
        };
        if secure {
            dests.retain(tls_dest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let call = Call {
            seq,
            answered_by: None,
            resumed: false,
            names,
            setup: Some(Box::new(Setup {
                invite: Payload::copy_from_slice(bytes),
                forwarded: None,
                dests,
                server_key: key,
                caller_side: dialog::CallerSide::of(msg),
                client_key: None,
                attempt: 0,
                got_provisional: false,
                cancel_sent: false,
            })),
            caller: peer,
            caller_local: local_id,
            campaign: entry.campaign.clone(),
            callee: peer,
            callee_local: local_id,
            destination: Arc::from(""),
            state: CallState::Trying,
            cancel: None,
            last_code: None,
            invite_at: now.unix_ms,
            ring_at: Stamp::NONE,
            answer_at: Stamp::NONE,
            deadlines: Deadlines::new(),
            media: [Media::default(), Media::default()],
            media_open: false,
            pool,
            offered: Some(Box::new((false, offer))),
            permit,
            dialog: None,
        };
        self.calls.insert(seq, Box::new(call));
        self.by_call_id.insert(seq, &self.calls);
        self.try_next_with(now, seq, Some(msg), out);
    }
}

//! Destination health: OPTIONS probes; a destination that does not answer leaves the
//! rotation until it does.

use super::*;

impl Proxy {
    pub(super) fn probe(&mut self, now: Now, out: &mut Vec<Output>) {
        let mut dests: Vec<Dest> = self
            .routes
            .routes()
            .iter()
            .flat_map(|r| r.destinations.iter().copied())
            .collect();
        dests.sort_by_key(|d| d.uri);
        dests.dedup_by_key(|d| d.uri);
        // Unanswered since the last round: out of rotation until a probe is answered.
        for (uri, key) in std::mem::take(&mut self.probes_pending) {
            if self.txs.remove(&key) {
                self.tx_info.remove(&key);
            }
            if self.health.is_healthy(&uri) {
                let line = format!("destination {uri} does not answer OPTIONS: out of rotation");
                self.log(now, "health", log::Level::Warn, line, out);
            }
            self.health.set_healthy(uri, false);
        }
        let mut down = 0;
        for d in dests {
            if !self.health.is_healthy(&d.uri) {
                down += 1;
            }
            let transport = dest_transport(&d);
            let local = self.local_for(self.local_toward(d.uri.addr.ip(), d.uri.addr), transport);
            let (via, branch) = self.our_via(local, transport);
            let n = self.rand();
            let target = format!("sip:{}", host_port(d.uri.addr));
            let bytes = msgs::options_probe(&target, &via, &host_port(local), n);
            let Ok(key) = TransactionKey::client(&branch, "OPTIONS") else {
                continue;
            };
            let peer = Peer {
                transport,
                addr: d.uri.addr,
                conn: None,
            };
            if self.start_client(
                now,
                key.clone(),
                Owner::Probe,
                (peer, local),
                bytes.into(),
                out,
            ) {
                self.probes_pending.push((d.uri, key));
            }
        }
        self.stats.destinations_down = down;
    }
}

pub(super) fn probe_uri(peer: Peer) -> callgate_config::SipUri {
    callgate_config::SipUri {
        addr: peer.addr,
        transport: match peer.transport {
            Transport::Udp => callgate_config::Transport::Udp,
            Transport::Tcp => callgate_config::Transport::Tcp,
            Transport::Tls => callgate_config::Transport::Tls,
        },
    }
}

//! SIP over TLS in the core: Via and Record-Route name TLS and the TLS port, `sips:`
//! Request-URIs only over TLS and only to TLS destinations, and they stay `sips:`.

use super::*;

/// The carrier over TLS, on connection `conn`.
fn carrier_tls(conn: u64) -> Peer {
    Peer {
        transport: Transport::Tls,
        addr: sa("203.0.113.10:40001"),
        conn: Some(conn),
    }
}

/// Our WAN TLS socket.
fn wan_tls() -> SocketAddr {
    sa("203.0.113.1:5061")
}

/// Our private TLS socket.
fn lan_tls() -> SocketAddr {
    sa("198.51.100.1:5061")
}

fn tls_invite(call_id: &str, ruri: &str) -> Invite {
    let mut inv = Invite::new(call_id);
    inv.ruri = ruri.to_owned();
    inv.transport = "TLS";
    inv.via_host = "203.0.113.10:40001".to_owned();
    inv
}

#[test]
fn a_call_over_tls_record_routes_the_tls_port_and_answers_on_the_connection() {
    let mut lab = Lab::new();
    lab.at(1_000);
    let inv = tls_invite(
        "tls-a@x",
        &format!("sip:{NUMBER}@203.0.113.1:5061;transport=tls"),
    );
    let out = lab.recv(carrier_tls(7), wan_tls(), &inv.bytes());
    // The 100 goes back on the caller's connection.
    let trying = out.response_to(carrier_tls(7).addr);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.peer, carrier_tls(7));
    assert_eq!(trying.local, wan_tls());
    // On to the PBX over UDP, our TLS side recorded as such (RFC 5658 double Record-Route).
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    assert_eq!(fwd.peer, pbx1());
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec![
            "<sip:198.51.100.1:5060;lr>",
            "<sip:203.0.113.1:5061;transport=tls;lr>"
        ]
    );
    // Our own Route toward the TLS port is recognised as ours (loose routing).
    let mut routed = tls_invite("tls-b@x", &format!("sip:{NUMBER}@203.0.113.1"));
    routed
        .extra
        .push("Route: <sip:203.0.113.1:5061;transport=tls;lr>".to_owned());
    let out = lab.recv(carrier_tls(7), wan_tls(), &routed.bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
}

#[test]
fn a_route_over_tls_leaves_from_the_tls_port_over_tls() {
    let mut lab = Lab::new();
    lab.at(1_000);
    let mut inv = tls_invite("tls-c@x", "sip:+15550100300@203.0.113.1");
    inv.to_user = "+15550100300".to_owned();
    let out = lab.recv(carrier_tls(3), wan_tls(), &inv.bytes());
    let fwd = out
        .requests_to(sa("198.51.100.10:5061"), "INVITE")
        .pop()
        .unwrap();
    assert_eq!(fwd.peer.transport, Transport::Tls);
    assert_eq!(fwd.peer.conn, None, "any connection to it, or a new one");
    assert_eq!(fwd.local, lan_tls());
    assert_eq!(
        fwd.ruri(),
        "sip:+15550100300@198.51.100.10:5061;transport=tls"
    );
    let m = fwd.msg();
    let via = &m.vias().unwrap()[0];
    assert_eq!((via.transport, via.port), ("TLS", Some(5061)));
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec![
            "<sip:198.51.100.1:5061;transport=tls;lr>",
            "<sip:203.0.113.1:5061;transport=tls;lr>"
        ]
    );
}

#[test]
fn a_sips_request_comes_over_tls_goes_only_to_tls_destinations_and_stays_sips() {
    let mut lab = Lab::new();
    lab.at(1_000);
    // Over UDP and over TCP: 416, nothing relayed, a rejected record.
    for (i, peer) in [carrier(), tcp("203.0.113.10:40002", 9)]
        .into_iter()
        .enumerate()
    {
        let mut inv = Invite::new(&format!("sips-plain-{i}@x"));
        inv.ruri = format!("sips:{NUMBER}@203.0.113.1");
        if peer.transport == Transport::Tcp {
            inv.transport = "TCP";
        }
        let out = lab.recv(peer, wan(), &inv.bytes());
        assert_eq!(out.response_to(peer.addr).status(), Some(416), "{out:#?}");
        assert!(out.requests_to(pbx1().addr, "INVITE").is_empty());
        assert_eq!(out.record().1.disposition, Disposition::Rejected);
    }
    // Over TLS to a route with no TLS destination: 480.
    let inv = tls_invite("sips-udp-route@x", &format!("sips:{NUMBER}@203.0.113.1"));
    let out = lab.recv(carrier_tls(4), wan_tls(), &inv.bytes());
    assert_eq!(
        out.response_to(carrier_tls(4).addr).status(),
        Some(480),
        "{out:#?}"
    );
    assert!(out.call_sends().iter().all(|s| s.method().is_none()));
    // Over TLS to the TLS route: only its TLS destination, the request stays sips:, and so
    // do both Record-Routes (no transport parameter: sips implies TLS).
    let mut inv = tls_invite("sips-ok@x", "sips:+15550100300@203.0.113.1");
    inv.to_user = "+15550100300".to_owned();
    let out = lab.recv(carrier_tls(4), wan_tls(), &inv.bytes());
    let fwd = out
        .requests_to(sa("198.51.100.10:5061"), "INVITE")
        .pop()
        .unwrap();
    assert_eq!(fwd.ruri(), "sips:+15550100300@198.51.100.10:5061");
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec!["<sips:198.51.100.1:5061;lr>", "<sips:203.0.113.1:5061;lr>"]
    );
    // The TLS destination fails: the UDP one of the same route is never tried.
    lab.at(1_100);
    let out = lab.pbx_says(
        Peer {
            transport: Transport::Tls,
            addr: sa("198.51.100.10:5061"),
            conn: Some(11),
        },
        &pbx_reply(&fwd, 503, "p", None),
    );
    assert!(
        out.requests_to(pbx2().addr, "INVITE").is_empty(),
        "{out:#?}"
    );
    let st = lab.proxy.stats();
    assert_eq!(st.refused_sips, 3);
}

#[test]
fn a_connection_is_aliased_to_its_sent_by_only_when_asked_and_only_to_its_own_address() {
    let mut lab = Lab::new();
    lab.at(1_000);
    let aliases = |out: &Out| -> Vec<(u64, SocketAddr)> {
        out.0
            .iter()
            .filter_map(|o| match o {
                Output::Alias { conn, addr } => Some((*conn, *addr)),
                _ => None,
            })
            .collect()
    };
    // Asked for, from its own address: requests to 203.0.113.10:5061 reuse connection 5.
    let mut inv = tls_invite("alias-a@x", &format!("sip:{NUMBER}@203.0.113.1"));
    inv.via_host = "203.0.113.10;alias".to_owned();
    let out = lab.recv(carrier_tls(5), wan_tls(), &inv.bytes());
    assert_eq!(aliases(&out), vec![(5, sa("203.0.113.10:5061"))]);
    // Not asked for: nothing.
    let inv = tls_invite("alias-b@x", &format!("sip:{NUMBER}@203.0.113.1"));
    let out = lab.recv(carrier_tls(5), wan_tls(), &inv.bytes());
    assert!(aliases(&out).is_empty());
    // Another address in the Via (someone else's): nothing.
    let mut inv = tls_invite("alias-c@x", &format!("sip:{NUMBER}@203.0.113.1"));
    inv.via_host = "198.51.100.10:5060;alias".to_owned();
    let out = lab.recv(carrier_tls(5), wan_tls(), &inv.bytes());
    assert!(aliases(&out).is_empty());
    // Over UDP: no connection to alias.
    let mut inv = Invite::new("alias-d@x");
    inv.via_host = "203.0.113.10:5060;alias".to_owned();
    let out = lab.carrier_says(&inv.bytes());
    assert!(aliases(&out).is_empty());
}

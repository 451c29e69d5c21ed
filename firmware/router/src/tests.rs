use std::path::Path;

use super::*;

const CFG: &str = r#"
[appliance]
name = "t"

[zones.mgmt]
interfaces = ["mgmt0"]

[services.ssh]
zones = ["mgmt"]

[sip]
domains = ["calls.example.com", "203.0.113.1", "2001:db8:1::1"]

[[sip.carrier]]
name = "carrier-a"
sources = ["203.0.113.10/32", "2001:db8:1::10/128"]

[[sip.carrier]]
name = "carrier-b"
sources = ["192.0.2.0/28"]

[[sip.route]]
numbers = ["+15550100000-+15550100099", "+4930123"]
campaign = "spring-radio"
strategy = "sequential"
destinations = [
  { uri = "sip:198.51.100.10:5060;transport=udp" },
  { uri = "sip:198.51.100.11:5060;transport=udp" },
]

[[sip.route]]
numbers = ["+15550100100"]
campaign = "billboard-i5"
strategy = "round-robin"
destinations = [
  { uri = "sip:198.51.100.10" },
  { uri = "sip:198.51.100.11" },
  { uri = "sip:198.51.100.12" },
]

[[sip.route]]
numbers = ["+15550100200-+15550100299"]
campaign = "web"
strategy = "weighted"
destinations = [
  { uri = "sip:198.51.100.10", weight = 6 },
  { uri = "sip:198.51.100.11", weight = 3 },
  { uri = "sip:[2001:db8:2::10];transport=tcp", weight = 1 },
]
"#;

fn table() -> RouteTable {
    let cfg = Config::parse(CFG, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    RouteTable::build(&cfg)
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn uri(s: &str) -> SipUri {
    s.parse().unwrap()
}

fn campaign_of(t: &RouteTable, n: &str) -> Option<String> {
    t.lookup(n).map(|r| r.campaign.to_string())
}

#[test]
fn lookup_at_range_boundaries() {
    let t = table();
    assert_eq!(
        campaign_of(&t, "+15550100000").as_deref(),
        Some("spring-radio")
    );
    assert_eq!(
        campaign_of(&t, "+15550100099").as_deref(),
        Some("spring-radio")
    );
    assert_eq!(
        campaign_of(&t, "+15550100100").as_deref(),
        Some("billboard-i5")
    );
    assert_eq!(campaign_of(&t, "+15550100101"), None);
    assert_eq!(campaign_of(&t, "+15550100199"), None);
    assert_eq!(campaign_of(&t, "+15550100200").as_deref(), Some("web"));
    assert_eq!(campaign_of(&t, "+15550100299").as_deref(), Some("web"));
    assert_eq!(campaign_of(&t, "+15550100300"), None);
    assert_eq!(campaign_of(&t, "+15550099999"), None);
    // Other lengths never fall into a range: +4930123 is 7 digits.
    assert_eq!(campaign_of(&t, "+4930123").as_deref(), Some("spring-radio"));
    assert_eq!(campaign_of(&t, "+49301230"), None);
    assert_eq!(campaign_of(&t, "+1555010005"), None);
    assert_eq!(campaign_of(&t, "+155501000500"), None);
    assert_eq!(campaign_of(&t, "+1"), None);
    assert_eq!(campaign_of(&t, "15550100000"), None);
    assert_eq!(campaign_of(&t, "+"), None);
    assert_eq!(campaign_of(&t, "+1234567890123456"), None);
    assert!(RouteTable::default().lookup("+15550100000").is_none());
}

#[test]
fn normalisation() {
    assert_eq!(
        normalize_number("+15550100000").as_deref(),
        Some("+15550100000")
    );
    assert_eq!(
        normalize_number("+1-555-010-0000").as_deref(),
        Some("+15550100000")
    );
    assert_eq!(
        normalize_number("+1.(555).010.0000;user=phone").as_deref(),
        Some("+15550100000")
    );
    assert_eq!(
        normalize_number("+15550100000;isub=12").as_deref(),
        Some("+15550100000")
    );
    for bad in [
        "15550100000",
        "5550100;phone-context=example.com",
        "+1 555 0100",
        "+1555a",
        "+",
        "+-",
        "+0123",
        "+1234567890123456",
        "",
        "alice",
        "+1%35",
    ] {
        assert_eq!(normalize_number(bad), None, "{bad}");
    }
}

#[test]
fn route_request_checks_carrier_then_number() {
    let t = table();
    let v4: IpAddr = "203.0.113.10".parse().unwrap();
    let v6: IpAddr = "2001:db8:1::10".parse().unwrap();
    let mapped: IpAddr = "::ffff:203.0.113.10".parse().unwrap();
    let b: IpAddr = "192.0.2.15".parse().unwrap();
    for src in [v4, v6, mapped] {
        let r = route_request(&t, "+1-555-010-0042", src).unwrap();
        assert_eq!(r.campaign(), "spring-radio");
        assert_eq!(r.carrier.name, "carrier-a");
    }
    assert_eq!(
        route_request(&t, "+15550100100", b).unwrap().carrier.name,
        "carrier-b"
    );
    for stranger in [
        "203.0.113.11",
        "2001:db8:1::11",
        "192.0.2.16",
        "198.51.100.10",
    ] {
        let src: IpAddr = stranger.parse().unwrap();
        assert_eq!(
            route_request(&t, "+15550100000", src),
            Err(Refusal::NotFromCarrier),
            "{stranger}"
        );
    }
    // A stranger dialling an unknown number still gets 403, not 404.
    let stranger: IpAddr = "203.0.113.66".parse().unwrap();
    assert_eq!(
        route_request(&t, "+19999999999", stranger).map(|r| r.entry.id),
        Err(Refusal::NotFromCarrier)
    );
    let e = route_request(&t, "+19999999999", v6).unwrap_err();
    assert_eq!(e, Refusal::UnknownNumber);
    assert_eq!(e.status(), 404);
    assert_eq!(Refusal::NotFromCarrier.status(), 403);
    assert_eq!(
        route_request(&t, "alice", v4).unwrap_err(),
        Refusal::UnknownNumber
    );
}

#[test]
fn domains() {
    let t = table();
    assert!(t.serves_domain("calls.example.com"));
    assert!(t.serves_domain("CALLS.example.com"));
    assert!(t.serves_domain("203.0.113.1"));
    assert!(t.serves_domain("[2001:db8:1::1]"));
    assert!(!t.serves_domain("evil.example.net"));
    assert!(!t.serves_domain("203.0.113.2"));
}

#[test]
fn sequential_keeps_config_order() {
    let t = table();
    let sel = Selector::new(&t);
    let r = t.lookup("+15550100000").unwrap();
    let mut rand = xorshift(1);
    for _ in 0..3 {
        let order: Vec<SipUri> = sel
            .select(r, &Health::new(), &mut rand)
            .iter()
            .map(|d| d.uri)
            .collect();
        assert_eq!(order, [uri("sip:198.51.100.10"), uri("sip:198.51.100.11")]);
    }
}

#[test]
fn round_robin_rotates_evenly() {
    let t = table();
    let sel = Selector::new(&t);
    let r = t.lookup("+15550100100").unwrap();
    let mut rand = xorshift(1);
    let mut firsts = [0usize; 3];
    for call in 0..300 {
        let order = sel.select(r, &Health::new(), &mut rand);
        assert_eq!(order.len(), 3);
        let i = r
            .destinations
            .iter()
            .position(|d| d.uri == order[0].uri)
            .unwrap();
        assert_eq!(i, call % 3, "rotation is per call");
        // The rest follow in config order (as failover).
        assert_eq!(order[1].uri, r.destinations[(i + 1) % 3].uri);
        firsts[i] += 1;
    }
    assert_eq!(firsts, [100, 100, 100]);
}

#[test]
fn weighted_is_roughly_proportional() {
    let t = table();
    let sel = Selector::new(&t);
    let r = t.lookup("+15550100250").unwrap();
    let mut rand = xorshift(0x9E37_79B9_7F4A_7C15);
    let mut firsts = [0u32; 3];
    for _ in 0..10_000 {
        let order = sel.select(r, &Health::new(), &mut rand);
        assert_eq!(order.len(), 3, "every destination appears once");
        let i = r
            .destinations
            .iter()
            .position(|d| d.uri == order[0].uri)
            .unwrap();
        firsts[i] += 1;
    }
    // Expected 6000 / 3000 / 1000; allow a few standard deviations.
    for (got, want) in firsts.iter().zip([6000i64, 3000, 1000]) {
        assert!((i64::from(*got) - want).abs() < 200, "{firsts:?}");
    }
}

#[test]
fn weighted_is_deterministic_for_a_seed() {
    let t = table();
    let sel = Selector::new(&t);
    let r = t.lookup("+15550100200").unwrap();
    let a = sel.select(r, &Health::new(), &mut xorshift(42));
    let b = sel.select(r, &Health::new(), &mut xorshift(42));
    assert_eq!(a, b);
}

#[test]
fn unhealthy_destinations_are_skipped_and_all_down_fails_open() {
    let t = table();
    let sel = Selector::new(&t);
    let mut rand = xorshift(7);
    let seq = t.lookup("+15550100000").unwrap();
    let mut health = Health::new();
    health.set_healthy(uri("sip:198.51.100.10"), false);
    let order = sel.select(seq, &health, &mut rand);
    assert_eq!(order.len(), 1);
    assert_eq!(order[0].uri, uri("sip:198.51.100.11"));

    // Weighted: the down destination never shows.
    let w = t.lookup("+15550100200").unwrap();
    for _ in 0..100 {
        let order = sel.select(w, &health, &mut rand);
        assert_eq!(order.len(), 2);
        assert!(order.iter().all(|d| d.uri != uri("sip:198.51.100.10")));
    }

    // Round-robin rotates over the healthy ones only.
    let rr = t.lookup("+15550100100").unwrap();
    let firsts: HashSet<SipUri> = (0..10)
        .map(|_| sel.select(rr, &health, &mut rand)[0].uri)
        .collect();
    assert_eq!(firsts.len(), 2);
    assert!(!firsts.contains(&uri("sip:198.51.100.10")));

    // All down: all returned, in strategy order.
    health.set_healthy(uri("sip:198.51.100.11"), false);
    let order: Vec<SipUri> = sel
        .select(seq, &health, &mut rand)
        .iter()
        .map(|d| d.uri)
        .collect();
    assert_eq!(order, [uri("sip:198.51.100.10"), uri("sip:198.51.100.11")]);

    // Back up.
    health.set_healthy(uri("sip:198.51.100.10"), true);
    assert!(health.is_healthy(&uri("sip:198.51.100.10")));
    assert_eq!(sel.select(seq, &health, &mut rand).len(), 1);
}

#[test]
fn lab_config_routes_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = RouteTable::build(&cfg);
    let carrier: IpAddr = "2001:db8:1::10".parse().unwrap();
    let r = route_request(&t, "+15550100099", carrier).unwrap();
    assert_eq!(r.campaign(), "spring-radio");
    assert_eq!(r.carrier.name, "lab-carrier");
    assert_eq!(r.entry.strategy, Strategy::Sequential);
    assert_eq!(r.entry.destinations.len(), 2);
    let r = route_request(&t, "+15550100100", "203.0.113.10".parse().unwrap()).unwrap();
    assert_eq!(r.campaign(), "billboard-i5");
    assert_eq!(r.entry.strategy, Strategy::RoundRobin);
    assert_eq!(
        route_request(&t, "+15550100101", carrier).unwrap_err(),
        Refusal::UnknownNumber
    );
    assert!(t.serves_domain("203.0.113.1"));
}

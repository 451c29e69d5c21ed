use super::*;

const BASE: &str = r#"
[appliance]
name = "t"

[zones.wan]
interfaces = ["wan0"]

[zones.mgmt]
interfaces = ["mgmt0"]

[services.ssh]
zones = ["mgmt"]
"#;

fn parse(extra: &str) -> Result<Config, ConfigErrors> {
    Config::parse(&format!("{BASE}{extra}"), Path::new("t.toml"))
}

fn one_error(extra: &str) -> ConfigError {
    let errs = parse(extra).expect_err("config should be refused");
    assert_eq!(errs.0.len(), 1, "{errs}");
    errs.0[0].clone()
}

/// Line (1-based) of the first occurrence of `needle` in BASE + extra.
fn line_of(extra: &str, needle: &str) -> usize {
    let full = format!("{BASE}{extra}");
    let off = full.find(needle).expect("needle");
    full[..off].matches('\n').count() + 1
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        cfg.lockout_check(&path, &src)
            .unwrap_or_else(|e| panic!("{}: lockout: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 2, "expected the shipped configs in {}", dir.display());
}

#[test]
fn minimal_is_valid() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.ssh_port(), 22);
    assert_eq!(cfg.zones.interfaces(ZoneName::Wan)[0].as_str(), "wan0");
}

#[test]
fn syntax_error_is_located() {
    let extra = "\n[[allow]\nname = \"x\"\n";
    let e = one_error(extra);
    assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
    assert_eq!(e.line, line_of(extra, "[[allow]"), "{e}");
    assert!(e.to_string().starts_with("t.toml:"), "{e}");
}

#[test]
fn unknown_field_is_located() {
    let extra = "\n[zones.sync]\ninterfaces = [\"s0\"]\ncolour = \"red\"\n";
    let e = one_error(extra);
    assert_eq!(e.kind, ErrorKind::UnknownField, "{e}");
    assert_eq!(e.line, line_of(extra, "colour"));
    assert!(e.message.contains("colour"), "{e}");
}

#[test]
fn unknown_zone_name_is_invalid_value() {
    let extra = "\n[zones.dmz]\ninterfaces = [\"d0\"]\n";
    let e = one_error(extra);
    assert_eq!(e.kind, ErrorKind::UnknownField, "{e}");
    assert!(e.message.contains("dmz"), "{e}");
}

#[test]
fn missing_field_is_located() {
    let extra = "\n[[allow]]\nname = \"a\"\nzone = \"wan\"\nprotocol = \"udp\"\nports = [1]\n";
    let e = one_error(extra);
    assert_eq!(e.kind, ErrorKind::MissingField, "{e}");
    assert!(e.message.contains("sources"), "{e}");
    assert!(e.line >= line_of(extra, "[[allow]]"), "{e}");
}

const ENTRY: &str = "\n[[allow]]\nname = \"a\"\nzone = \"wan\"\nsources = [SRC]\nprotocol = \"PROTO\"\nports = [PORTS]\n";

fn entry(src: &str, proto: &str, ports: &str) -> String {
    ENTRY
        .replace("SRC", src)
        .replace("PROTO", proto)
        .replace("PORTS", ports)
}

#[test]
fn bad_prefix_is_located() {
    let extra = entry("\"203.0.113.7/24\"", "udp", "5060");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "sources"));
    assert!(e.message.contains("host bits"), "{e}");
}

#[test]
fn bad_port_is_located() {
    let extra = entry("\"203.0.113.0/24\"", "udp", "\"9-1\"");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "ports"));
    let extra = entry("\"203.0.113.0/24\"", "udp", "70000");
    assert_eq!(one_error(&extra).kind, ErrorKind::InvalidValue);
}

#[test]
fn bad_protocol_is_located() {
    let extra = entry("\"203.0.113.0/24\"", "sctp", "1");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "protocol"));
}

#[test]
fn undefined_zone_is_located() {
    let extra = "\n[[allow]]\nname = \"a\"\nzone = \"private\"\nsources = [\"::/0\"]\nprotocol = \"icmp\"\n";
    let e = one_error(extra);
    assert_eq!(e.kind, ErrorKind::UndefinedZone, "{e}");
    assert_eq!(e.line, line_of(extra, "zone = \"private\""));
}

#[test]
fn duplicate_name_is_located() {
    let one = entry("\"203.0.113.0/24\"", "udp", "1");
    let extra = format!("{one}{one}");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::DuplicateName, "{e}");
    assert!(
        e.line > line_of(&extra, "name = \"a\""),
        "second one is reported: {e}"
    );
}

#[test]
fn icmp_with_ports_and_tcp_without_are_refused() {
    let e = one_error(&entry("\"203.0.113.0/24\"", "icmp", "1"));
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    let e = one_error(&entry("\"203.0.113.0/24\"", "tcp", ""));
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    let e = one_error(&entry("", "tcp", "1"));
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
}

#[test]
fn family_mismatch_is_refused() {
    let extra = format!(
        "{}destination = [\"2001:db8::1\"]\n",
        entry("\"203.0.113.0/24\"", "udp", "1")
    );
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "destination"));
}

#[test]
fn interface_in_two_zones_is_refused() {
    let e = one_error("\n[zones.sync]\ninterfaces = [\"wan0\"]\n");
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert!(e.message.contains("wan0"), "{e}");
}

#[test]
fn lockout_guard() {
    let src = BASE.replace("zones = [\"mgmt\"]", "zones = [\"wan\"]");
    let cfg = Config::parse(&src, Path::new("t.toml")).unwrap();
    let e = cfg.lockout_check(Path::new("t.toml"), &src).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lockout, "{e}");
    assert!(e.message.contains("--force"), "{e}");
    assert_eq!(e.line, line_of("", "zones = [\"mgmt\"]"), "{e}");

    let no_ssh = BASE.replace("[services.ssh]\nzones = [\"mgmt\"]", "[services]");
    let cfg = Config::parse(&no_ssh, Path::new("t.toml")).unwrap();
    assert_eq!(
        cfg.lockout_check(Path::new("t.toml"), &no_ssh)
            .unwrap_err()
            .kind,
        ErrorKind::Lockout
    );

    let ok = parse("").unwrap();
    ok.lockout_check(Path::new("t.toml"), BASE).unwrap();
}

#[test]
fn io_error_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/callgate.toml")).unwrap_err();
    assert_eq!(e.0[0].kind, ErrorKind::Io);
    assert!(e.to_string().contains("/nonexistent/callgate.toml"));
}

#[test]
fn several_semantic_errors_are_all_reported() {
    let extra = "\n[[allow]]\nname = \"a\"\nzone = \"sync\"\nsources = []\nprotocol = \"icmp\"\nports = [1]\n";
    let errs = parse(extra).unwrap_err();
    let kinds = errs.kinds();
    assert!(kinds.contains(&ErrorKind::UndefinedZone), "{errs}");
    assert!(kinds.contains(&ErrorKind::InvalidEntry), "{errs}");
    assert!(errs.0.len() >= 3, "{errs}");
}

/// Mutations of a valid config never panic the parser, and every refusal is located inside
/// the text (a poor man's fuzzer that runs in every test run; xorshift keeps it repeatable).
#[test]
fn mutated_configs_never_panic_and_errors_are_located() {
    let lab = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml"),
    )
    .unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet = b"[]=\"\n#,.:/-_ 0123456789abcdefxyz{}'\\";
    for _ in 0..3000 {
        let mut bytes = lab.clone().into_bytes();
        for _ in 0..(1 + next() % 4) {
            let i = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[i] = alphabet[(next() % alphabet.len() as u64) as usize],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[(next() % alphabet.len() as u64) as usize]),
            }
        }
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        if let Err(errs) = Config::parse(&text, Path::new("m.toml")) {
            let lines = text.lines().count().max(1) + 1;
            for e in &errs.0 {
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "{e} (text has {lines} lines)"
                );
                assert!(e.column >= 1, "{e}");
                assert!(!e.message.is_empty());
            }
        }
    }
}

#[test]
fn vault_defaults_and_errors() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.vault.tcti.as_str(), "device:/dev/tpmrm0");
    assert_eq!(cfg.vault.pcr_list(), &[7]);
    assert!(!cfg.vault.danger_software_keys);
    let cfg =
        parse("\n[vault]\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\npcrs = [0, 7]\n").unwrap();
    assert_eq!(cfg.vault.pcr_list(), &[0, 7]);
    let extra = "\n[vault]\npcrs = [7, 7, 30]\n";
    let e = one_error(extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(extra, "pcrs"));
    let e = one_error("\n[vault]\ntcti = \"floppy:a\"\n");
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    let e = one_error("\n[vault]\ndanger_software_key = true\n");
    assert_eq!(e.kind, ErrorKind::UnknownField, "{e}");
}

// ----- [sip] -------------------------------------------------------------------------------

const SIP: &str = r#"
[sip]
domains = ["calls.example.com", "203.0.113.1"]
max_cps = 10
max_calls = 100

[[sip.carrier]]
name = "c1"
sources = ["203.0.113.10/32", "2001:db8:1::10/128"]

[[sip.route]]
numbers = ["+15550100000-+15550100099"]
campaign = "spring-radio"
destinations = [{ uri = "sip:198.51.100.10:5060;transport=udp" }]
"#;

/// A route appended to the valid SIP section.
fn sip_error(route: &str) -> (ConfigError, String) {
    let extra = format!("{SIP}{route}");
    (one_error(&extra), extra)
}

#[test]
fn sip_happy_path() {
    let extra = format!(
        "{SIP}\n[[sip.route]]\nnumbers = [\"+15550100100\", \"+4930123-+4930999\"]\ncampaign = \"spring-radio\"\nstrategy = \"weighted\"\ndestinations = [{{ uri = \"sip:198.51.100.10\", weight = 3 }}, {{ uri = \"sip:[2001:db8:2::10]:5070;transport=tcp\", weight = 1 }}]\n"
    );
    let cfg = parse(&extra).unwrap_or_else(|e| panic!("{e}"));
    let sip = &cfg.sip;
    assert_eq!(sip.domains.len(), 2);
    assert_eq!(sip.max_cps.as_ref().map(|c| *c.get_ref()), Some(10));
    assert_eq!(sip.carriers[0].name.get_ref().as_str(), "c1");
    assert_eq!(sip.routes.len(), 2);
    let r = &sip.routes[1];
    assert_eq!(*r.strategy.get_ref(), Strategy::Weighted);
    assert_eq!(*sip.routes[0].strategy.get_ref(), Strategy::Sequential);
    let d = r.destinations.get_ref();
    assert_eq!(d[1].uri.get_ref().transport, Transport::Tcp);
    assert_eq!(d[1].uri.get_ref().addr.port(), 5070);
    assert_eq!(d[0].weight_or_one(), 3);
    assert_eq!(
        r.numbers.get_ref()[1].get_ref().to_string(),
        "+4930123-+4930999"
    );
    // No [sip] at all: empty, valid, every call refused later.
    let cfg = parse("").unwrap();
    assert!(cfg.sip.routes.is_empty() && cfg.sip.domains.is_empty());
}

#[test]
fn sip_bad_e164_is_located() {
    let route = "\n[[sip.route]]\nnumbers = [\"5550100\"]\ncampaign = \"x\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "\"5550100\""), "{e}");
    assert!(e.message.contains("E.164"), "{e}");
}

#[test]
fn sip_bad_range_is_located() {
    for bad in ["+15550100999-+15550100000", "+1555-+155501"] {
        let route = format!("\n[[sip.route]]\nnumbers = [\"{bad}\"]\ncampaign = \"x\"\ndestinations = [{{ uri = \"sip:198.51.100.10\" }}]\n");
        let (e, extra) = sip_error(&route);
        assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
        assert_eq!(e.line, line_of(&extra, bad), "{e}");
        assert!(e.message.contains("range"), "{e}");
    }
}

#[test]
fn sip_overlap_across_routes_names_both() {
    let route = "\n[[sip.route]]\nnumbers = [\"+15550100050-+15550100150\"]\ncampaign = \"billboard\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "+15550100050-"), "{e}");
    assert!(e.message.contains("billboard"), "{e}");
    assert!(e.message.contains("spring-radio"), "{e}");
    assert!(e.message.contains("+15550100000-+15550100099"), "{e}");
}

#[test]
fn sip_duplicate_number_is_refused_but_shared_campaign_is_not() {
    // The same single number in two routes.
    let route = "\n[[sip.route]]\nnumbers = [\"+15550100042\"]\ncampaign = \"spring-radio\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "+15550100042"), "{e}");
    // Twice within one route.
    let route = "\n[[sip.route]]\nnumbers = [\"+15550200000\", \"+15550200000\"]\ncampaign = \"b\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let (e, _) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert!(e.message.contains("once"), "{e}");
    // A second route feeding the same campaign, with other numbers, is fine.
    let route = "\n[[sip.route]]\nnumbers = [\"+15550100100\"]\ncampaign = \"spring-radio\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    parse(&format!("{SIP}{route}")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sip_empty_destinations_is_located() {
    let route =
        "\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\ndestinations = []\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "destinations = []"), "{e}");
}

#[test]
fn sip_bad_uri_and_transport_are_located() {
    for bad in [
        "sip:pbx.example.com",
        "sip:198.51.100.10;transport=sctp",
        "http://198.51.100.10",
    ] {
        let route = format!("\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\ndestinations = [{{ uri = \"{bad}\" }}]\n");
        let (e, extra) = sip_error(&route);
        assert_eq!(e.kind, ErrorKind::InvalidValue, "{bad}: {e}");
        assert_eq!(e.line, line_of(&extra, bad), "{e}");
    }
}

#[test]
fn sip_weights_missing_zero_or_extra_are_located() {
    let route = "\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\nstrategy = \"weighted\"\ndestinations = [\n  { uri = \"sip:198.51.100.10\", weight = 2 },\n  { uri = \"sip:198.51.100.11\" },\n]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "sip:198.51.100.11"), "{e}");
    assert!(e.message.contains("no weight"), "{e}");

    let route = "\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\nstrategy = \"weighted\"\ndestinations = [{ uri = \"sip:198.51.100.10\", weight = 0 }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "weight = 0"), "{e}");

    let route = "\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\nstrategy = \"round-robin\"\ndestinations = [{ uri = \"sip:198.51.100.10\", weight = 5 }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "weight = 5"), "{e}");
    assert!(e.message.contains("round-robin"), "{e}");
}

#[test]
fn sip_bad_strategy_campaign_domain_and_caps_are_located() {
    let route = "\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\nstrategy = \"random\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "\"random\""), "{e}");

    let route = "\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"Spring Radio\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let (e, extra) = sip_error(route);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "Spring Radio"), "{e}");

    let extra = SIP.replace("\"calls.example.com\"", "\"bad domain\"");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "bad domain"), "{e}");

    let extra = SIP.replace("max_cps = 10", "max_cps = 0");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "max_cps"), "{e}");

    let extra = SIP.replace("max_calls = 100", "max_calls = -1");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "max_calls"), "{e}");

    let extra = SIP.replace("max_calls = 100", "max_calls = 100\nmax_cpu = 1");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::UnknownField, "{e}");
    assert_eq!(e.line, line_of(&extra, "max_cpu"), "{e}");
}

#[test]
fn sip_carrier_errors_are_located() {
    let extra = format!("{SIP}\n[[sip.carrier]]\nname = \"c1\"\nsources = [\"198.51.100.0/24\"]\n");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::DuplicateName, "{e}");
    assert_eq!(
        e.line,
        line_of(&extra, "name = \"c1\"\nsources = [\"198"),
        "{e}"
    );

    let extra = format!("{SIP}\n[[sip.carrier]]\nname = \"c2\"\nsources = []\n");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
    assert_eq!(e.line, line_of(&extra, "sources = []"), "{e}");

    let extra = format!("{SIP}\n[[sip.carrier]]\nname = \"c2\"\nsources = [\"203.0.113.7/24\"]\n");
    let e = one_error(&extra);
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    assert_eq!(e.line, line_of(&extra, "203.0.113.7/24"), "{e}");
}

#[test]
fn sip_media_and_carrier_limits_parse_with_defaults_and_located_errors() {
    // Defaults: the carrier's media is its sources, the private side is the destinations,
    // RTP ports from 1024.
    let cfg = parse(SIP).unwrap_or_else(|e| panic!("{e}"));
    let c = &cfg.sip.carriers[0];
    assert_eq!(c.media_prefixes(), c.sources.get_ref().as_slice());
    assert!(c.media_pool().is_empty());
    assert_eq!(
        cfg.sip.private_media(),
        vec!["198.51.100.10/32".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(cfg.sip.rtp_ports(), crate::DEFAULT_RTP_PORTS);

    let extra = SIP.replace(
        "sources = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
        "sources = [\"203.0.113.10/32\"]\nmedia = [\"203.0.113.0/28\"]\nmedia_sources = [\"203.0.113.32/28\"]\nmax_requests_per_sec = 500\nmax_dialogs = 20",
    ) + "\n[sip.media]\nprivate = [\"198.51.100.0/24\"]\nrtp_ports = \"10000-20000\"\n";
    let cfg = parse(&extra).unwrap_or_else(|e| panic!("{e}"));
    let c = &cfg.sip.carriers[0];
    assert_eq!(c.media_prefixes()[0].to_string(), "203.0.113.0/28");
    assert_eq!(c.media_pool()[0].to_string(), "203.0.113.32/28");
    assert_eq!(c.max_dialogs.as_ref().map(|v| *v.get_ref()), Some(20));
    assert_eq!(cfg.sip.rtp_ports().to_string(), "10000-20000");
    assert_eq!(cfg.sip.private_media()[0].to_string(), "198.51.100.0/24");

    for (bad, needle, kind) in [
        (
            "rtp_ports = \"161-2000\"",
            "161-2000",
            ErrorKind::InvalidValue,
        ),
        ("private = []", "private = []", ErrorKind::InvalidEntry),
        ("rtp_ports = \"70000\"", "70000", ErrorKind::InvalidValue),
        ("portz = 1", "portz", ErrorKind::UnknownField),
    ] {
        let extra = format!("{SIP}\n[sip.media]\n{bad}\n");
        let e = one_error(&extra);
        assert_eq!(e.kind, kind, "{bad}: {e}");
        assert_eq!(e.line, line_of(&extra, needle), "{bad}: {e}");
    }
    for (bad, needle, kind) in [
        ("media = []", "media = []", ErrorKind::InvalidEntry),
        (
            "media_sources = []",
            "media_sources = []",
            ErrorKind::InvalidEntry,
        ),
        (
            "max_dialogs = 0",
            "max_dialogs = 0",
            ErrorKind::InvalidValue,
        ),
        (
            "max_requests_per_sec = 0",
            "max_requests_per_sec",
            ErrorKind::InvalidValue,
        ),
        (
            "media = [\"203.0.113.7/24\"]",
            "203.0.113.7/24",
            ErrorKind::InvalidValue,
        ),
    ] {
        let extra = SIP.replace("name = \"c1\"", &format!("name = \"c1\"\n{bad}"));
        let e = one_error(&extra);
        assert_eq!(e.kind, kind, "{bad}: {e}");
        assert_eq!(e.line, line_of(&extra, needle), "{bad}: {e}");
    }
}

#[test]
fn sip_routes_without_domains_or_carriers_are_refused() {
    let extra = "\n[sip]\n\n[[sip.route]]\nnumbers = [\"+15550200000\"]\ncampaign = \"b\"\ndestinations = [{ uri = \"sip:198.51.100.10\" }]\n";
    let errs = parse(extra).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
    for e in &errs.0 {
        assert_eq!(e.kind, ErrorKind::InvalidEntry, "{e}");
        assert_eq!(e.line, line_of(extra, "numbers ="), "{e}");
    }
}

#[test]
fn lab_routing_is_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let sip = &cfg.sip;
    assert!(sip
        .domains
        .iter()
        .any(|d| d.get_ref().matches("203.0.113.1")));
    assert_eq!(sip.carriers[0].name.get_ref().as_str(), "lab-carrier");
    let campaigns: Vec<&str> = sip
        .routes
        .iter()
        .map(|r| r.campaign.get_ref().as_str())
        .collect();
    assert_eq!(campaigns, ["spring-radio", "billboard-i5", "tv-spot"]);
    assert_eq!(*sip.routes[1].strategy.get_ref(), Strategy::RoundRobin);
}

// ----- [sip.tcp] ---------------------------------------------------------------------------

#[test]
fn sip_tcp_defaults_values_and_located_errors() {
    let cfg = parse(SIP).unwrap_or_else(|e| panic!("{e}"));
    let t = &cfg.sip.tcp;
    assert_eq!(
        (
            t.max_connections(),
            t.max_connections_per_source(),
            t.idle_timeout_secs(),
            t.header_timeout_secs(),
            t.body_timeout_secs(),
            t.max_buffer_bytes(),
        ),
        (4096, 256, 300, 10, 10, 65536),
        "defaults"
    );
    let extra = format!(
        "{SIP}\n[sip.tcp]\nmax_connections = 100\nmax_connections_per_source = 10\nidle_timeout_secs = 60\nheader_timeout_secs = 2\nbody_timeout_secs = 3\nmax_buffer_bytes = 8192\n"
    );
    let cfg = parse(&extra).unwrap_or_else(|e| panic!("{e}"));
    let t = &cfg.sip.tcp;
    assert_eq!(
        (
            t.max_connections(),
            t.max_connections_per_source(),
            t.idle_timeout_secs(),
            t.header_timeout_secs(),
            t.body_timeout_secs(),
            t.max_buffer_bytes(),
        ),
        (100, 10, 60, 2, 3, 8192)
    );

    for (body, needle, kind, says) in [
        (
            "idle_timeout_secs = 0\n",
            "idle_timeout_secs",
            ErrorKind::InvalidValue,
            "greater than 0",
        ),
        (
            "max_connections = 10\nmax_connections_per_source = 11\n",
            "max_connections_per_source",
            ErrorKind::InvalidValue,
            "more than max_connections (10)",
        ),
        (
            "max_connections_per_source = 4097\n",
            "max_connections_per_source",
            ErrorKind::InvalidValue,
            "more than max_connections (4096)",
        ),
        (
            "max_buffer_bytes = 100\n",
            "max_buffer_bytes",
            ErrorKind::InvalidValue,
            "4096 to 131072",
        ),
        (
            "max_idle_secs = 5\n",
            "max_idle_secs",
            ErrorKind::UnknownField,
            "unknown field",
        ),
        (
            "header_timeout_secs = -1\n",
            "header_timeout_secs",
            ErrorKind::InvalidValue,
            "",
        ),
    ] {
        let extra = format!("{SIP}\n[sip.tcp]\n{body}");
        let e = one_error(&extra);
        assert_eq!(e.kind, kind, "{body}: {e}");
        assert_eq!(e.line, line_of(&extra, needle), "{body}: {e}");
        assert!(e.message.contains(says), "{body}: {e}");
    }
}

const PAIR_ZONES: &str = r#"
[zones.private]
interfaces = ["priv0"]

[zones.sync]
interfaces = ["sync0"]
"#;

fn pair(body: &str) -> Result<Config, ConfigErrors> {
    parse(&format!("{PAIR_ZONES}\n{body}"))
}

const PAIR_OK: &str = r#"
[pair]
[[pair.node]]
name = "t"
priority = 200
heartbeat = { sync = "192.0.2.1", private = "198.51.100.1" }
[[pair.node]]
name = "u"
priority = 100
heartbeat = { sync = "192.0.2.2", private = "198.51.100.2" }
[[pair.vip]]
zone = "wan"
address = "203.0.113.5/24"
[[pair.vip]]
zone = "private"
address = "2001:db8:2::5/64"
"#;

#[test]
fn a_pair_names_this_appliance_and_its_peer() {
    let cfg = pair(PAIR_OK).unwrap();
    let p = cfg.pair.as_ref().unwrap();
    let me: EntryName = "t".parse().unwrap();
    assert_eq!(p.index_of(&me), Some(0));
    let (mine, peer) = p.split(&me).unwrap();
    assert_eq!(mine.name.get_ref().as_str(), "t");
    assert_eq!(peer.name.get_ref().as_str(), "u");
    let paths = p.paths(&me);
    assert_eq!(paths.len(), 2);
    assert_eq!(paths[0].zone, ZoneName::Private);
    assert_eq!(paths[0].peer.to_string(), "198.51.100.2");
    assert_eq!(paths[1].zone, ZoneName::Sync);
    assert_eq!(paths[1].local.to_string(), "192.0.2.1");
    assert_eq!(p.heartbeat_interval_ms(), DEFAULT_HEARTBEAT_INTERVAL_MS);
    assert_eq!(p.dead_after_misses(), DEFAULT_DEAD_AFTER_MISSES);
    assert_eq!(p.preempt_delay_secs(), None);
    assert_eq!(p.late_after_ms(), 2 * DEFAULT_HEARTBEAT_INTERVAL_MS);
    assert_eq!(p.vip[0].address.get_ref().prefix_len(), 24);
    assert_eq!(p.vip[1].interface(&cfg.zones).unwrap().as_str(), "priv0");
}

#[test]
fn pair_mistakes_are_refused_where_they_are() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "\"t\"\npriority = 200",
            "\"x\"\npriority = 200",
            "is not one of the pair's nodes",
        ),
        (
            "\"u\"\npriority = 100",
            "\"t\"\npriority = 100",
            "both nodes are named",
        ),
        (
            "priority = 100",
            "priority = 0",
            "priority: expected 1 to 254",
        ),
        (
            "{ sync = \"192.0.2.2\", private = \"198.51.100.2\" }",
            "{ sync = \"192.0.2.2\" }",
            "at least two zones",
        ),
        (
            "{ sync = \"192.0.2.2\", private = \"198.51.100.2\" }",
            "{ sync = \"192.0.2.1\", private = \"198.51.100.2\" }",
            "both nodes have heartbeat address 192.0.2.1",
        ),
        (
            "{ sync = \"192.0.2.2\", private = \"198.51.100.2\" }",
            "{ sync = \"2001:db8:3::2\", private = \"198.51.100.2\" }",
            "different families",
        ),
        (
            "{ sync = \"192.0.2.2\", private = \"198.51.100.2\" }",
            "{ sync = \"192.0.2.2\", mgmt = \"198.51.100.2\" }",
            "same heartbeat zones",
        ),
        (
            "address = \"203.0.113.5/24\"",
            "address = \"192.0.2.2/25\"",
            "own heartbeat address",
        ),
        (
            "address = \"203.0.113.5/24\"",
            "address = \"224.0.0.5/24\"",
            "expected a unicast",
        ),
        (
            "address = \"203.0.113.5/24\"",
            "address = \"203.0.113.5/40\"",
            "invalid address",
        ),
        (
            "zone = \"wan\"",
            "zone = \"wan\"\ninterface = \"eth9\"",
            "not in zone wan",
        ),
        (
            "[pair]",
            "[pair]\nheartbeat_interval_ms = 5",
            "expected 10 to 1000",
        ),
        (
            "[pair]",
            "[pair]\ndead_after_misses = 1",
            "expected 2 to 50",
        ),
        (
            "[pair]",
            "[pair]\ndead_after_misses = 3",
            "must not exceed the dead interval",
        ),
    ];
    for (from, to, want) in cases {
        // Only the last occurrence of `from` changes (so the second node is the one edited).
        let at = PAIR_OK.rfind(from).unwrap_or_else(|| panic!("{from}"));
        let body = format!("{}{}{}", &PAIR_OK[..at], to, &PAIR_OK[at + from.len()..]);
        let errs = pair(&body).expect_err(want);
        assert!(errs.to_string().contains(want), "{want}: {errs}");
        assert!(errs.0.iter().all(|e| e.line > 1), "{errs}");
    }
    let three = format!("{PAIR_OK}\n[[pair.node]]\nname = \"v\"\npriority = 1\nheartbeat = {{ sync = \"192.0.2.3\", private = \"198.51.100.3\" }}\n");
    let errs = pair(&three).expect_err("three nodes");
    assert!(errs.to_string().contains("exactly two"), "{errs}");
}

#[test]
fn the_pair_labs_configs_are_one_config_for_two_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let a = std::fs::read_to_string(root.join("lab-pair-a.toml")).unwrap();
    let b = std::fs::read_to_string(root.join("lab-pair-b.toml")).unwrap();
    let lab_b: EntryName = "lab-b".parse().unwrap();
    let as_b = for_appliance(&a, &lab_b).unwrap();
    let cfg = Config::parse(&as_b, Path::new("b.toml")).unwrap();
    assert_eq!(cfg.appliance.name.as_str(), "lab-b");
    // Only the value changed: the comments and everything else are A's, byte for byte.
    let (ha, hb) = (
        a.lines().collect::<Vec<_>>(),
        as_b.lines().collect::<Vec<_>>(),
    );
    assert_eq!(ha.len(), hb.len());
    let differ: Vec<_> = ha.iter().zip(&hb).filter(|(x, y)| x != y).collect();
    assert_eq!(differ, vec![(&"name = \"lab-a\"", &"name = \"lab-b\"")]);
    // and the way back
    let lab_a: EntryName = "lab-a".parse().unwrap();
    assert_eq!(for_appliance(&as_b, &lab_a).unwrap(), a);
    assert_ne!(as_b, b, "the files' own comments name the other appliance");
    // A name in another spelling (literal string, dotted key) is replaced just as well.
    let dotted = "appliance.name = 'x' # here\n[zones.wan]\ninterfaces = [\"wan0\"]\n";
    assert_eq!(
        for_appliance(dotted, &lab_b).unwrap(),
        "appliance.name = \"lab-b\" # here\n[zones.wan]\ninterfaces = [\"wan0\"]\n"
    );
    assert!(for_appliance("[appliance\n", &lab_b).is_err());
    assert!(for_appliance("x = 1\n", &lab_b).is_err());
}

#[test]
fn console_idle_times_stay_within_what_sshd_and_logind_back() {
    let c = parse("[console]\nidle_timeout_secs = { operator = 1200, admin = 60 }\n").unwrap();
    assert_eq!(
        c.console.idle_timeout(Role::Operator),
        std::time::Duration::from_secs(MAX_IDLE_SECS)
    );
    for v in ["59", "1201", "86400"] {
        let e = one_error(&format!(
            "[console]\nidle_timeout_secs = {{ operator = {v} }}\n"
        ));
        assert!(e.to_string().contains("expected 60 to 1200"), "{v}: {e}");
    }
}

const FLEET_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUYLbhDRT7KCbvbdl+lXv/IUazMVYwCgYIKoZIzj0EAwIw\nGDEWMBQGA1UEAwwNdGVzdCBmbGVldCBDQTAeFw0yNjEyMDQxNzUzNTRaFw0zNjEy\nMDExNzUzNTRaMBgxFjAUBgNVBAMMDXRlc3QgZmxlZXQgQ0EwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAS4i5gf1tfZmVy/UX5xw9+CiCqUrc04HBKvrVZuG0AQChCz\npaEUMkpvW/eYYcoJ6qPlhaC9t78rEtrTAvMzTTRYo1MwUTAdBgNVHQ4EFgQUgkT4\nL601O+mxxdk7VaZ15YGQTRAwHwYDVR0jBBgwFoAUgkT4L601O+mxxdk7VaZ15YGQ\nTRAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEArReUUiIuV1Oi\nwKJqEbe9mFarrqvLke3hea2ActGKt/ICIEGhy128AQ2x3qFRBy01iBfRaAIl84zh\npNnS6bkLUyRe\n-----END CERTIFICATE-----";

fn uplink(extra: &str) -> String {
    format!(
        "[[egress]]\nname = \"uplink\"\nzone = \"wan\"\ndestinations = [\"203.0.113.200/32\"]\nprotocol = \"tcp\"\nports = [8883]\n\n\
         [uplink]\nbroker = \"broker.fleet.test\"\naddress = \"203.0.113.200\"\nca = \"\"\"\n{FLEET_CA}\n\"\"\"\n{extra}"
    )
}

#[test]
fn the_uplink_needs_a_ca_a_dns_name_and_an_egress_entry() {
    let c = parse(&uplink("")).unwrap();
    let u = c.uplink.as_ref().unwrap();
    assert_eq!(u.port(), 8883);
    assert_eq!(u.topic_prefix(&c.appliance.name), "callgate/t");
    assert_eq!((u.batch_records(), u.inflight()), (100, 16));
    assert_eq!(pem_certificates(u.ca.get_ref()), 1);
    let key = "fleet_key = \"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"\n";
    assert!(parse(&uplink(key))
        .unwrap()
        .uplink
        .unwrap()
        .fleet_key()
        .is_some());
    for (extra, says) in [
        ("fleet_key = \"c2hvcnQ=\"\n", "32 bytes"),
        ("topic_prefix = \"callgate/#\"\n", "topic_prefix"),
        ("topic_prefix = \"/lead\"\n", "topic_prefix"),
        ("batch_records = 0\n", "batch_records"),
        (
            "port = 8884\n",
            "no [[egress]] entry allows TCP to 203.0.113.200 port 8884",
        ),
    ] {
        let e = one_error(&uplink(extra));
        assert!(e.to_string().contains(says), "{extra}: {e}");
    }
    let e = one_error(&uplink("").replace("broker.fleet.test", "broker_fleet"));
    assert!(e.to_string().contains("not a DNS name"), "{e}");
    let e = one_error(&uplink("").replace("-----BEGIN CERTIFICATE-----", "-----BEGIN KEY-----"));
    assert!(e.to_string().contains("uplink.ca"), "{e}");
    let e = one_error(&uplink("").replace("203.0.113.200/32", "203.0.113.201/32"));
    assert!(e.to_string().contains("no [[egress]]"), "{e}");
}

// ----- [sip.tls] and a carrier's tls -------------------------------------------------------

/// A self-signed certificate (any DER long enough parses as PEM here; the proxy checks it
/// for real when it builds its TLS settings).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBkTCCATegAwIBAgIUXrOPNYVzYvX9LkJPfhj1fWwYyAgwCgYIKoZIzj0EAwIwEjEQMA4GA1UEAwwHbGFiIENBMB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEwMTAwMDAwMFowEjEQMA4GA1UEAwwHbGFiIENB\n-----END CERTIFICATE-----\n";

#[test]
fn sip_tls_settings_parse_with_their_defaults() {
    let cfg = parse(&format!(
        "{}\n[sip.tls]\nlisten = [\"203.0.113.1:5061\"]\n",
        SIP.replace(
            "sources = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
            &format!("sources = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\ntls = {{ ca = \"\"\"{CA_PEM}\"\"\", fingerprints = [\"{}\"] }}", "AB:".repeat(31) + "CD")
        )
    ))
    .unwrap();
    let t = &cfg.sip.tls;
    assert_eq!(t.listen_addrs(), vec!["203.0.113.1:5061".parse().unwrap()]);
    assert_eq!(t.min_version(), TlsVersion::V1_2);
    assert_eq!(
        (
            t.handshake_timeout_secs(),
            t.max_handshakes_per_sec(),
            t.cert_warn_days()
        ),
        (5, 20, 30)
    );
    let pin = cfg.sip.carriers[0].tls.as_ref().unwrap().get_ref();
    assert_eq!(pin.fingerprint_list()[0][31], 0xcd);
    // Without [sip.tls]: no TLS listener.
    assert!(parse(SIP).unwrap().sip.tls.listen.is_empty());
}

#[test]
fn sip_tls_mistakes_are_refused_where_they_are() {
    let with_pin = |pin: &str| {
        SIP.replace(
            "sources = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
            &format!("sources = [\"203.0.113.10/32\"]\ntls = {pin}"),
        )
    };
    for (extra, want) in [
        (
            format!("{SIP}\n[sip.tls]\nlisten = [\"203.0.113.1:0\"]\n"),
            "port other than 0",
        ),
        (
            format!("{SIP}\nlisten = [\"203.0.113.1:5061\"]\n[sip.tls]\nlisten = [\"203.0.113.1:5061\"]\n")
                .replacen("max_calls = 100\n", "max_calls = 100\nlisten = [\"203.0.113.1:5061\"]\n", 1)
                .replacen("\nlisten = [\"203.0.113.1:5061\"]\n[sip.tls]", "\n[sip.tls]", 1),
            "also in sip.listen",
        ),
        (
            format!("{SIP}\n[sip.tls]\nlisten = [\"203.0.113.1:5061\", \"203.0.113.1:5061\"]\n"),
            "listed twice",
        ),
        (
            format!("{SIP}\n[sip.tls]\nhandshake_timeout_secs = 0\n"),
            "greater than 0",
        ),
        (
            format!("{SIP}\n[sip.tls]\nmin_version = \"1.1\"\n"),
            "unknown variant",
        ),
        (with_pin("{}"), "pins nothing"),
        (with_pin("{ fingerprints = [] }"), "pins nothing"),
        (with_pin("{ ca = \"not a certificate\" }"), "expected PEM certificates"),
        (with_pin("{ fingerprints = [\"AB:CD\"] }"), "invalid fingerprint"),
        (
            SIP.replace("transport=udp", "transport=tls"),
            "needs [sip.tls] destinations",
        ),
        (
            format!("{SIP}\n[sip.tls]\ndestinations = {{}}\n"),
            "sip.tls.destinations: tls pins nothing",
        ),
    ] {
        let errs = parse(&extra).expect_err(want);
        assert!(errs.to_string().contains(want), "{want}: {errs}");
        assert!(errs.0.iter().all(|e| e.line > 1), "{errs}");
    }
}

//! The `[uplink]` table: the cloud's MQTT broker, reached over TLS 1.3 with this
//! appliance's own certificate, trusting only the fleet's CA.
//!
//! ```toml
//! [uplink]
//! broker = "broker.fleet.example"   # the DNS name the broker's certificate must carry
//! address = "203.0.113.200"         # optional: where to connect (else `broker` is resolved)
//! port = 8883                       # optional (default 8883)
//! ca = """
//! -----BEGIN CERTIFICATE-----
//! …the fleet CA: the only CA trusted for the broker…
//! -----END CERTIFICATE-----
//! """
//! topic_prefix = "callgate/lab-a"   # optional (default "callgate/" + appliance name)
//! fleet_key = "…"                   # optional: the fleet's Ed25519 public key (base64, 32
//!                                   # bytes): config documents from the cloud must carry its
//!                                   # signature; absent: config from the cloud is refused
//! keepalive_secs = 30               # optional (default 30), 5 to 600
//! batch_records = 100               # optional (default 100), 1 to 1000 records per message
//! inflight = 16                     # optional (default 16), 1 to 100 messages unacknowledged
//! backlog_alarm = 1000              # optional (default 1000): records waiting; an event past it
//! boot_delay_max_secs = 30          # optional (default 30), 0 to 3600: a random delay after boot
//! backoff_max_secs = 60             # optional (default 60), 1 to 3600: the reconnect ceiling
//! cert_warn_days = 30               # optional (default 30), 1 to 365
//! config_confirm_secs = 120         # optional (default 120), 30 to 3600: a config from the
//!                                   # cloud rolls back unless the broker is reached again
//! ```
//!
//! The appliance's own TCP connection to the broker must be allowed by an `[[egress]]`
//! entry (TCP, the port, and the address when one is given): the config says so if not.

use std::net::IpAddr;

use base64::Engine as _;
use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, EgressEntry, EntryName, ErrorKind, Locator, Protocol};

/// Default MQTT-over-TLS port.
pub const DEFAULT_UPLINK_PORT: u16 = 8883;

/// The `[uplink]` table. Absent: records stay on the appliance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub broker: Spanned<String>,
    #[serde(default)]
    pub address: Option<Spanned<IpAddr>>,
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
    pub ca: Spanned<String>,
    #[serde(default)]
    pub topic_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub fleet_key: Option<Spanned<String>>,
    #[serde(default)]
    pub keepalive_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub batch_records: Option<Spanned<u32>>,
    #[serde(default)]
    pub inflight: Option<Spanned<u32>>,
    #[serde(default)]
    pub backlog_alarm: Option<Spanned<u32>>,
    #[serde(default)]
    pub boot_delay_max_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub backoff_max_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub cert_warn_days: Option<Spanned<u32>>,
    #[serde(default)]
    pub config_confirm_secs: Option<Spanned<u32>>,
}

fn or(v: &Option<Spanned<u32>>, default: u32) -> u32 {
    v.as_ref().map_or(default, |v| *v.get_ref())
}

impl Uplink {
    pub fn port(&self) -> u16 {
        self.port
            .as_ref()
            .map_or(DEFAULT_UPLINK_PORT, |p| *p.get_ref())
    }
    /// The topic prefix: `topic_prefix`, or `callgate/` and the appliance's name.
    pub fn topic_prefix(&self, appliance: &EntryName) -> String {
        self.topic_prefix
            .as_ref()
            .map_or_else(|| format!("callgate/{appliance}"), |p| p.get_ref().clone())
    }
    /// The fleet's Ed25519 public key, if configured (checked at parse: 32 bytes).
    pub fn fleet_key(&self) -> Option<[u8; 32]> {
        let k = self.fleet_key.as_ref()?;
        decode_key(k.get_ref()).ok()
    }
    pub fn keepalive_secs(&self) -> u32 {
        or(&self.keepalive_secs, 30)
    }
    pub fn batch_records(&self) -> u32 {
        or(&self.batch_records, 100)
    }
    pub fn inflight(&self) -> u32 {
        or(&self.inflight, 16)
    }
    pub fn backlog_alarm(&self) -> u32 {
        or(&self.backlog_alarm, 1000)
    }
    pub fn boot_delay_max_secs(&self) -> u32 {
        or(&self.boot_delay_max_secs, 30)
    }
    pub fn backoff_max_secs(&self) -> u32 {
        or(&self.backoff_max_secs, 60)
    }
    pub fn cert_warn_days(&self) -> u32 {
        or(&self.cert_warn_days, 30)
    }
    pub fn config_confirm_secs(&self) -> u32 {
        or(&self.config_confirm_secs, 120)
    }

    pub(crate) fn validate(
        &self,
        egress: &[EgressEntry],
        loc: &Locator<'_>,
        errs: &mut Vec<ConfigError>,
    ) {
        let mut bad = |span: Option<std::ops::Range<usize>>, msg: String| {
            errs.push(loc.error(span, ErrorKind::InvalidValue, msg));
        };
        if !is_dns_name(self.broker.get_ref()) {
            bad(
                Some(self.broker.span()),
                format!(
                    "uplink.broker: '{}' is not a DNS name (the name the broker's certificate carries)",
                    self.broker.get_ref()
                ),
            );
        }
        let certs = pem_certificates(self.ca.get_ref());
        if certs == 0 {
            bad(
                Some(self.ca.span()),
                "uplink.ca: expected the fleet CA's certificate in PEM (-----BEGIN CERTIFICATE-----)".into(),
            );
        }
        if let Some(p) = &self.topic_prefix {
            if !is_topic_prefix(p.get_ref()) {
                bad(
                    Some(p.span()),
                    "uplink.topic_prefix: expected levels of letters, digits, '-' and '_' joined by '/', without wildcards, at most 100 characters".into(),
                );
            }
        }
        if let Some(k) = &self.fleet_key {
            if let Err(e) = decode_key(k.get_ref()) {
                bad(Some(k.span()), format!("uplink.fleet_key: {e}"));
            }
        }
        for (key, v, lo, hi) in [
            ("keepalive_secs", &self.keepalive_secs, 5, 600),
            ("batch_records", &self.batch_records, 1, 1000),
            ("inflight", &self.inflight, 1, 100),
            ("backlog_alarm", &self.backlog_alarm, 1, u32::MAX),
            ("boot_delay_max_secs", &self.boot_delay_max_secs, 0, 3600),
            ("backoff_max_secs", &self.backoff_max_secs, 1, 3600),
            ("cert_warn_days", &self.cert_warn_days, 1, 365),
            ("config_confirm_secs", &self.config_confirm_secs, 30, 3600),
        ] {
            if let Some(v) = v {
                if !(lo..=hi).contains(v.get_ref()) {
                    bad(
                        Some(v.span()),
                        format!("uplink.{key}: expected {lo} to {hi}"),
                    );
                }
            }
        }
        if let Some(p) = &self.port {
            if *p.get_ref() == 0 {
                bad(Some(p.span()), "uplink.port: expected 1 to 65535".into());
            }
        }
        // The firewall must let the appliance reach the broker.
        let port = self.port();
        let addr = self.address.as_ref().map(|a| *a.get_ref());
        let allowed = egress.iter().any(|e| {
            *e.protocol.get_ref() == Protocol::Tcp
                && e.ports
                    .as_ref()
                    .is_none_or(|ps| ps.get_ref().iter().any(|r| r.contains(port)))
                && addr.is_none_or(|a| {
                    e.destinations
                        .get_ref()
                        .iter()
                        .any(|d| d.net().contains(&a))
                })
        });
        if !allowed {
            let to = addr.map_or_else(|| format!("port {port}"), |a| format!("{a} port {port}"));
            bad(
                Some(self.broker.span()),
                format!("uplink: no [[egress]] entry allows TCP to {to}: the firewall would drop the uplink; add one"),
            );
        }
    }
}

/// How many PEM certificates `pem` holds (0 if it holds something else or nothing).
pub fn pem_certificates(pem: &str) -> usize {
    let mut n = 0;
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + 27..];
        let Some(end) = body.find("-----END CERTIFICATE-----") else {
            return 0;
        };
        let b64: String = body[..end].split_whitespace().collect();
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(der) if der.len() > 64 => n += 1,
            _ => return 0,
        }
        rest = &body[end + 25..];
    }
    n
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "expected an Ed25519 public key in base64 (32 bytes)".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "expected 32 bytes (an Ed25519 public key), got {}",
            bytes.len()
        )
    })
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_topic_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.split('/').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

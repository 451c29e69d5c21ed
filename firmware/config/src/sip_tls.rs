//! SIP over TLS: the `[sip.tls]` table (the proxy's TLS listeners and their guards) and a
//! carrier's `tls` pinning (mutual TLS).
//!
//! ```toml
//! [sip.tls]
//! listen = ["203.0.113.1:5061"]    # TLS over TCP; empty or absent: no TLS listener
//! min_version = "1.2"              # optional: "1.2" (default) or "1.3"; 1.0 and 1.1 never
//! handshake_timeout_secs = 5       # optional: a handshake not done by then is cut
//! max_handshakes_per_sec = 20      # optional: per source address; past it connections are
//!                                  # closed before any cryptography, and a source that is
//!                                  # not a peer is blocked
//! cert_warn_days = 30              # optional: `show sip stats` warns this long before the
//!                                  # certificate expires
//!
//! [[sip.carrier]]
//! name = "lab-carrier"
//! sources = ["203.0.113.10/32"]
//! # Mutual TLS: its connections must present a client certificate that chains to `ca`
//! # and/or whose SHA-256 fingerprint is listed (both, when both are given).
//! tls = { ca = """-----BEGIN CERTIFICATE-----
//! ...
//! -----END CERTIFICATE-----""", fingerprints = ["AB:CD:…"] }
//! ```
//!
//! `sips:` Request-URIs are taken only over TLS (416 otherwise) and go only to the route's
//! `transport=tls` destinations (480 when it has none), staying `sips:` (RFC 5630: TLS on
//! every hop). A peer that asks for it with a Via `alias` parameter (RFC 5923) has its
//! connection reused for requests to its sent-by address, when that address is the
//! connection's own.
//!
//! The server certificate and its key are not in the config: the key is made on the
//! appliance and rests sealed under the vault's key-encryption key, the certificate is
//! installed with `callgate sip tls install-cert`. TLS connections count toward
//! `[sip.tcp]`'s caps and timeouts like plain TCP ones. Only sources that are carriers
//! or destinations get a handshake; every other connection is closed unanswered.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, ErrorKind, Locator};

/// `[sip.tls]`. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipTls {
    /// Addresses the proxy accepts SIP over TLS on (TCP).
    #[serde(default)]
    pub listen: Vec<Spanned<SocketAddr>>,
    #[serde(default)]
    pub min_version: Option<Spanned<TlsVersion>>,
    #[serde(default)]
    pub handshake_timeout_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_handshakes_per_sec: Option<Spanned<u32>>,
    #[serde(default)]
    pub cert_warn_days: Option<Spanned<u32>>,
    /// What the destinations' certificates must be, for routes with `transport=tls`
    /// (the proxy connects to them and checks their certificate for their address).
    #[serde(default)]
    pub destinations: Option<Spanned<TlsPin>>,
}

/// Oldest TLS version a peer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

impl SipTls {
    fn get(v: &Option<Spanned<u32>>, default: u32) -> u32 {
        v.as_ref().map_or(default, |v| *v.get_ref())
    }
    /// The listen addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|l| *l.get_ref()).collect()
    }
    /// `min_version` or its default (1.2).
    pub fn min_version(&self) -> TlsVersion {
        self.min_version
            .as_ref()
            .map_or(TlsVersion::V1_2, |v| *v.get_ref())
    }
    /// `handshake_timeout_secs` or its default (5).
    pub fn handshake_timeout_secs(&self) -> u32 {
        Self::get(&self.handshake_timeout_secs, 5)
    }
    /// `max_handshakes_per_sec` or its default (20).
    pub fn max_handshakes_per_sec(&self) -> u32 {
        Self::get(&self.max_handshakes_per_sec, 20)
    }
    /// `cert_warn_days` or its default (30).
    pub fn cert_warn_days(&self) -> u32 {
        Self::get(&self.cert_warn_days, 30)
    }

    /// Checks of the `[sip.tls]` table against the rest of `[sip]`.
    pub(crate) fn validate(
        &self,
        sip: &super::Sip,
        loc: &Locator<'_>,
        errs: &mut Vec<ConfigError>,
    ) {
        let sip_listen = &sip.listen_addrs();
        if let Some(d) = &self.destinations {
            d.get_ref()
                .validate("sip.tls.destinations", d.span(), loc, errs);
        }
        let tls_dest = sip
            .routes
            .iter()
            .flat_map(|r| r.destinations.get_ref())
            .find(|d| d.uri.get_ref().transport == super::Transport::Tls);
        if let (Some(d), None) = (tls_dest, &self.destinations) {
            errs.push(loc.error(
                Some(d.uri.span()),
                ErrorKind::InvalidEntry,
                format!("destination {}: transport=tls needs [sip.tls] destinations = {{ ca = \"PEM\" }} and/or fingerprints: what its certificate must be", d.uri.get_ref()),
            ));
        }
        for (key, v) in [
            ("handshake_timeout_secs", &self.handshake_timeout_secs),
            ("max_handshakes_per_sec", &self.max_handshakes_per_sec),
        ] {
            if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
                errs.push(loc.error(
                    Some(v.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "sip.tls.{key}: expected a number greater than 0 (omit it for the default)"
                    ),
                ));
            }
        }
        let mut seen: Vec<SocketAddr> = Vec::new();
        for l in &self.listen {
            let a = *l.get_ref();
            let problem = if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                Some((
                    ErrorKind::InvalidValue,
                    format!(
                        "sip.tls.listen: {a}: expected a unicast address and a port other than 0"
                    ),
                ))
            } else if seen.contains(&a) {
                Some((
                    ErrorKind::DuplicateName,
                    format!("sip.tls.listen: {a} is listed twice"),
                ))
            } else if sip_listen.contains(&a) {
                Some((
                    ErrorKind::InvalidValue,
                    format!("sip.tls.listen: {a} is also in sip.listen (plain TCP): TLS needs a port of its own, usually 5061"),
                ))
            } else {
                None
            };
            if let Some((kind, message)) = problem {
                errs.push(loc.error(Some(l.span()), kind, message));
            }
            seen.push(a);
        }
    }
}

/// A peer's certificate pinning: a carrier's (mutual TLS: its client certificate, and its
/// server certificate when the proxy connects to it) or the destinations'.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPin {
    /// CA certificates (PEM) its certificate must chain to.
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    /// SHA-256 fingerprints its certificate must be one of.
    #[serde(default)]
    pub fingerprints: Option<Spanned<Vec<Spanned<Fingerprint>>>>,
}

impl TlsPin {
    /// The fingerprints, if any are pinned.
    pub fn fingerprint_list(&self) -> Vec<[u8; 32]> {
        self.fingerprints
            .as_ref()
            .map(|f| f.get_ref().iter().map(|f| f.get_ref().0).collect())
            .unwrap_or_default()
    }

    pub(crate) fn validate(
        &self,
        whose: &str,
        span: std::ops::Range<usize>,
        loc: &Locator<'_>,
        errs: &mut Vec<ConfigError>,
    ) {
        let empty_fps = self
            .fingerprints
            .as_ref()
            .is_none_or(|f| f.get_ref().is_empty());
        match &self.ca {
            None if empty_fps => errs.push(loc.error(
                Some(span),
                ErrorKind::InvalidEntry,
                format!("{whose}: tls pins nothing: expected ca = \"PEM\" and/or fingerprints = [\"AB:CD:…\"]"),
            )),
            Some(ca) if super::uplink::pem_certificates(ca.get_ref()) == 0 => {
                errs.push(loc.error(
                    Some(ca.span()),
                    ErrorKind::InvalidValue,
                    format!("{whose}: tls.ca: expected PEM certificates (-----BEGIN CERTIFICATE-----)"),
                ))
            }
            _ => {}
        }
    }
}

/// A SHA-256 certificate fingerprint: 64 hex digits, in pairs separated by colons or not
/// (`openssl x509 -fingerprint -sha256` prints the first form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Fingerprint, String> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let bad = || {
            format!("invalid fingerprint {s:?}: expected the SHA-256 of the certificate, 64 hex digits (AB:CD:… or abcd…)")
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *o = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}
string_newtype!(Fingerprint);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_nothing_else() {
        let colons = "AB:".repeat(31) + "CD";
        let f: Fingerprint = colons.parse().unwrap();
        assert_eq!(f.0[0], 0xab);
        assert_eq!(f.0[31], 0xcd);
        assert_eq!(f.to_string(), colons);
        let plain: Fingerprint = colons.replace(':', "").to_lowercase().parse().unwrap();
        assert_eq!(plain, f);
        for bad in [
            "",
            "AB",
            &"AB:".repeat(33),
            &"ZZ".repeat(32),
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}

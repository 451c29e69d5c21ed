//! The `[intake]` table: the HTTPS endpoint on the private segment where the PBX side hands
//! the appliance call transcripts and notes, redacted here before they leave the site.
//!
//! ```toml
//! [intake]
//! listen = "198.51.100.1:8444"       # an address of the appliance on the private side
//! sources = ["198.51.100.10/32"]     # who may connect (the firewall admits only these,
//!                                    # on the private zone's interfaces)
//! client_ca = """
//! -----BEGIN CERTIFICATE-----
//! …the CA the PBX's client certificates must chain to (the only one trusted)…
//! -----END CERTIFICATE-----
//! """
//! body_limit = 65536                 # optional (default 65536), 256 to 1048576 bytes
//! rate_per_minute = 600              # optional (default 600), 1 to 60000 requests per
//!                                    # source address per minute
//! burst = 20                         # optional (default 20), 1 to 10000: requests a source
//!                                    # may send at once before the rate applies
//! ```
//!
//! The server's key is made on the appliance and sealed under the vault's KEK
//! (`callgate intake csr`), its certificate installed with `callgate intake install-cert`;
//! until then the endpoint is not served. It needs `[zones.private]`.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{pem_certificates, ConfigError, ErrorKind, Locator, Prefix, Zones};

/// Default body limit (bytes).
pub const DEFAULT_BODY_LIMIT: u32 = 64 * 1024;
/// Default requests per source per minute.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 600;
/// Default burst per source.
pub const DEFAULT_BURST: u32 = 20;

/// The `[intake]` table. Absent: no intake endpoint, its port stays closed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intake {
    pub listen: Spanned<SocketAddr>,
    pub sources: Spanned<Vec<Prefix>>,
    pub client_ca: Spanned<String>,
    #[serde(default)]
    pub body_limit: Option<Spanned<u32>>,
    #[serde(default)]
    pub rate_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    pub burst: Option<Spanned<u32>>,
}

fn or(v: &Option<Spanned<u32>>, default: u32) -> u32 {
    v.as_ref().map_or(default, |v| *v.get_ref())
}

impl Intake {
    pub fn listen(&self) -> SocketAddr {
        *self.listen.get_ref()
    }
    pub fn sources(&self) -> &[Prefix] {
        self.sources.get_ref()
    }
    pub fn body_limit(&self) -> u32 {
        or(&self.body_limit, DEFAULT_BODY_LIMIT)
    }
    pub fn rate_per_minute(&self) -> u32 {
        or(&self.rate_per_minute, DEFAULT_RATE_PER_MINUTE)
    }
    pub fn burst(&self) -> u32 {
        or(&self.burst, DEFAULT_BURST)
    }

    pub(crate) fn validate(&self, zones: &Zones, loc: &Locator<'_>, errs: &mut Vec<ConfigError>) {
        let mut bad = |span: std::ops::Range<usize>, kind: ErrorKind, msg: String| {
            errs.push(loc.error(Some(span), kind, msg));
        };
        if zones.private.is_none() {
            bad(
                self.listen.span(),
                ErrorKind::UndefinedZone,
                "intake: the intake listens on the private side: expected a [zones.private] table"
                    .into(),
            );
        }
        let a = self.listen();
        let ip = a.ip();
        if a.port() == 0 || ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            bad(
                self.listen.span(),
                ErrorKind::InvalidValue,
                format!("intake.listen: {a}: expected an address of the appliance on the private side and a port other than 0"),
            );
        }
        if self.sources().is_empty() {
            bad(
                self.sources.span(),
                ErrorKind::InvalidEntry,
                "intake.sources is empty: expected the PBX hosts' prefixes".into(),
            );
        } else if !self.sources().iter().any(|p| p.is_ipv4() == ip.is_ipv4()) {
            bad(
                self.sources.span(),
                ErrorKind::InvalidEntry,
                format!("intake.sources: none is of the family of intake.listen ({ip}), so no source could ever connect"),
            );
        }
        if pem_certificates(self.client_ca.get_ref()) == 0 {
            bad(
                self.client_ca.span(),
                ErrorKind::InvalidValue,
                "intake.client_ca: expected the PBX client CA's certificate in PEM (-----BEGIN CERTIFICATE-----)".into(),
            );
        }
        for (key, v, lo, hi) in [
            ("body_limit", &self.body_limit, 256, 1 << 20),
            ("rate_per_minute", &self.rate_per_minute, 1, 60_000),
            ("burst", &self.burst, 1, 10_000),
        ] {
            if let Some(v) = v {
                if !(lo..=hi).contains(v.get_ref()) {
                    bad(
                        v.span(),
                        ErrorKind::InvalidValue,
                        format!("intake.{key}: expected {lo} to {hi}"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use std::path::Path;

    use crate::{Config, ConfigErrors};

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUYLbhDRT7KCbvbdl+lXv/IUazMVYwCgYIKoZIzj0EAwIw\nGDEWMBQGA1UEAwwNdGVzdCBmbGVldCBDQTAeFw0yNjEyMDQxNzUzNTRaFw0zNjEy\nMDExNzUzNTRaMBgxFjAUBgNVBAMMDXRlc3QgZmxlZXQgQ0EwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAS4i5gf1tfZmVy/UX5xw9+CiCqUrc04HBKvrVZuG0AQChCz\npaEUMkpvW/eYYcoJ6qPlhaC9t78rEtrTAvMzTTRYo1MwUTAdBgNVHQ4EFgQUgkT4\nL601O+mxxdk7VaZ15YGQTRAwHwYDVR0jBBgwFoAUgkT4L601O+mxxdk7VaZ15YGQ\nTRAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEArReUUiIuV1Oi\nwKJqEbe9mFarrqvLke3hea2ActGKt/ICIEGhy128AQ2x3qFRBy01iBfRaAIl84zh\npNnS6bkLUyRe\n-----END CERTIFICATE-----";

    fn doc(private: bool, extra: &str) -> String {
        let zone = if private {
            "[zones.private]\ninterfaces = [\"priv0\"]\n"
        } else {
            ""
        };
        format!(
            "[appliance]\nname = \"t\"\n[zones.mgmt]\ninterfaces = [\"mgmt0\"]\n{zone}\
             [services.ssh]\nzones = [\"mgmt\"]\n\
             [intake]\nlisten = \"198.51.100.1:8444\"\nsources = [\"198.51.100.10/32\"]\n\
             client_ca = \"\"\"\n{CA}\n\"\"\"\n{extra}"
        )
    }

    fn parse(private: bool, extra: &str) -> Result<Config, ConfigErrors> {
        Config::parse(&doc(private, extra), Path::new("t.toml"))
    }

    #[test]
    fn the_intake_parses_with_its_defaults() {
        let c = parse(true, "").unwrap();
        let i = c.intake.unwrap();
        assert_eq!(i.listen().to_string(), "198.51.100.1:8444");
        assert_eq!(i.sources().len(), 1);
        assert_eq!(
            (i.body_limit(), i.rate_per_minute(), i.burst()),
            (65536, 600, 20)
        );
        let c = parse(true, "body_limit = 1024\nrate_per_minute = 5\nburst = 2\n").unwrap();
        let i = c.intake.unwrap();
        assert_eq!(
            (i.body_limit(), i.rate_per_minute(), i.burst()),
            (1024, 5, 2)
        );
    }

    #[test]
    fn bad_intake_values_are_refused_with_their_place() {
        for (private, extra, edit, says) in [
            (false, "", None, "[zones.private]"),
            (
                true,
                "body_limit = 0\n",
                None,
                "intake.body_limit: expected 256 to 1048576",
            ),
            (true, "body_limit = 2000000\n", None, "intake.body_limit"),
            (
                true,
                "rate_per_minute = 0\n",
                None,
                "intake.rate_per_minute",
            ),
            (true, "burst = 0\n", None, "intake.burst"),
            (
                true,
                "",
                Some(("198.51.100.1:8444", "198.51.100.1:0")),
                "port other than 0",
            ),
            (
                true,
                "",
                Some(("198.51.100.1:8444", "0.0.0.0:8444")),
                "intake.listen",
            ),
            (
                true,
                "",
                Some(("\"198.51.100.10/32\"", "")),
                "intake.sources is empty",
            ),
            (
                true,
                "",
                Some(("\"198.51.100.10/32\"", "\"2001:db8::/64\"")),
                "family",
            ),
            (
                true,
                "",
                Some(("BEGIN CERTIFICATE", "BEGIN KEY")),
                "intake.client_ca",
            ),
            (
                true,
                "",
                Some(("198.51.100.10/32", "198.51.100.300/32")),
                "198.51.100.300",
            ),
            (true, "port = 1\n", None, "unknown field"),
        ] {
            let mut text = doc(private, extra);
            if let Some((from, to)) = edit {
                text = text.replace(from, to);
            }
            let errs = Config::parse(&text, Path::new("t.toml")).expect_err(says);
            assert_eq!(errs.0.len(), 1, "{says}: {errs}");
            let e = &errs.0[0];
            assert!(e.to_string().contains(says), "{says}: {e}");
            assert!(e.line > 1, "{says}: located: {e}");
        }
    }
}

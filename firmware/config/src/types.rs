//! Validating newtypes: each checks itself when deserialized, so a bad value is reported at
//! its own line and column by the TOML parser.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize};

/// The four zones an appliance knows. Each is bound to interfaces in `[zones.NAME]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneName {
    Wan,
    Private,
    Mgmt,
    Sync,
}

impl ZoneName {
    pub const ALL: [ZoneName; 4] = [
        ZoneName::Wan,
        ZoneName::Private,
        ZoneName::Mgmt,
        ZoneName::Sync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ZoneName::Wan => "wan",
            ZoneName::Private => "private",
            ZoneName::Mgmt => "mgmt",
            ZoneName::Sync => "sync",
        }
    }
}

impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of an allowlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP echo request (ping) for IPv4, ICMPv6 echo request for IPv6.
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// Builds a newtype that parses from a TOML string through `FromStr`, so the TOML parser
/// reports the error at the value's own location.
macro_rules! string_newtype {
    ($name:ident) => {
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
        impl ::serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A name of an allowlist entry: it becomes the nftables rule comment and part of set names,
/// so it is restricted to `[a-z0-9-]`, starts with a letter and is at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryName(String);

impl EntryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a label: 1 to `max` characters of `a-z`, `0-9` and `-`, starting with a letter
/// (names that end up in nft identifiers, rule comments and records).
pub(crate) fn check_label(s: &str, what: &str, max: usize) -> Result<(), String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts_alpha = s.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if s.is_empty() || s.len() > max || !ok_chars || !starts_alpha {
        return Err(format!(
            "invalid {what} {s:?}: expected 1 to {max} characters of a-z, 0-9 and '-', starting with a letter"
        ));
    }
    Ok(())
}

impl FromStr for EntryName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_label(s, "name", 32)?;
        Ok(EntryName(s.to_owned()))
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(EntryName);

/// A Linux interface name (at most 15 bytes, no '/', no whitespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(format!(
                "invalid interface name {s:?}: expected 1 to 15 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
            ));
        }
        Ok(IfName(s.to_owned()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(IfName);

/// An IPv4 or IPv6 prefix with no host bits set. A bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(IpNet);

impl Prefix {
    pub fn net(&self) -> IpNet {
        self.0
    }
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    /// True for a /32 or /128.
    pub fn is_host(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }
}

impl From<IpNet> for Prefix {
    fn from(n: IpNet) -> Self {
        Prefix(n.trunc())
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Prefix(IpNet::from(addr)));
        }
        let net: IpNet = s.parse().map_err(|_| {
            format!("invalid prefix {s:?}: expected an IPv4 or IPv6 address or prefix, like 203.0.113.0/24 or 2001:db8::/32")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "invalid prefix {s:?}: host bits are set (did you mean {}?)",
                net.trunc()
            ));
        }
        Ok(Prefix(net))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_newtype!(Prefix);

/// A TPM connection string (TCTI): `device:PATH`, `swtpm:host=H,port=P`, `mssim:…` or
/// `tabrmd[:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcti(String);

impl Tcti {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tcti {
    fn default() -> Self {
        Tcti("device:/dev/tpmrm0".into())
    }
}

impl FromStr for Tcti {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let ok = match kind {
            "device" => rest.starts_with('/'),
            "swtpm" | "mssim" => !rest.is_empty(),
            "tabrmd" => true,
            _ => false,
        };
        if !ok || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "invalid TPM connection {s:?}: expected device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:… or tabrmd"
            ));
        }
        Ok(Tcti(s.to_owned()))
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(Tcti);

/// A destination port or an inclusive range `lo-hi`. Written as an integer or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn single(p: u16) -> Self {
        PortRange { lo: p, hi: p }
    }
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid port {s:?}: expected a port 1-65535 or a range like \"10000-20000\"")
        };
        let parse = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(bad()),
                Ok(v) => Ok(v),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!(
                "invalid port range {s:?}: the first port must not exceed the second"
            ));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) => match u16::try_from(i) {
                Ok(p) if p > 0 => Ok(PortRange::single(p)),
                _ => Err(de::Error::custom(format!(
                    "invalid port {i}: expected a port 1-65535 or a range like \"10000-20000\""
                ))),
            },
            Raw::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            "203.0.113.7".parse::<Prefix>().unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            "2001:db8::/32".parse::<Prefix>().unwrap().to_string(),
            "2001:db8::/32"
        );
        let e = "203.0.113.7/24".parse::<Prefix>().unwrap_err();
        assert!(e.contains("host bits"), "{e}");
        assert!("nonsense".parse::<Prefix>().is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(
            "5060".parse::<PortRange>().unwrap(),
            PortRange::single(5060)
        );
        assert_eq!(
            "10000-20000".parse::<PortRange>().unwrap(),
            PortRange {
                lo: 10000,
                hi: 20000
            }
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("20-10".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn tctis() {
        assert!("device:/dev/tpmrm0".parse::<Tcti>().is_ok());
        assert!("swtpm:host=127.0.0.1,port=2321".parse::<Tcti>().is_ok());
        assert!("tabrmd".parse::<Tcti>().is_ok());
        assert!("device:tpm0".parse::<Tcti>().is_err());
        assert!("carrier-pigeon:1".parse::<Tcti>().is_err());
        assert!("swtpm:host=a; rm -rf".parse::<Tcti>().is_err());
    }

    #[test]
    fn names() {
        assert!("carrier-sip".parse::<EntryName>().is_ok());
        assert!("Carrier".parse::<EntryName>().is_err());
        assert!("1abc".parse::<EntryName>().is_err());
        assert!("a".repeat(33).parse::<EntryName>().is_err());
        assert!("eth0".parse::<IfName>().is_ok());
        assert!("a/b".parse::<IfName>().is_err());
    }
}

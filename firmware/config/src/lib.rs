//! # callgate-config
//!
//! The appliance's one configuration file (`/etc/callgate/callgate.toml`), parsed into types.
//!
//! ## Design
//! - Every table is `deny_unknown_fields`; values are validating newtypes ([`Prefix`],
//!   [`PortRange`], [`EntryName`], [`IfName`]) that check themselves while the TOML is read,
//!   so the parser locates their errors.
//! - Checks that need the whole document (zones referenced but not bound, duplicate names,
//!   ports on ICMP, entries that can never match) run after parsing on `Spanned` values and
//!   are reported with the same `file:line:column: kind: message` shape.
//! - The management lockout guard ([`Config::lockout_check`]) is separate because an
//!   operator may override it with `--force`; `callgate check` reports it as an error.
//!
//! ## Current limitations
//! - The TOML parser stops at the first syntax or type error; semantic errors are all
//!   collected.

mod intake;
mod pair;
mod retention;
mod sip;
#[macro_use]
mod types;
mod sip_tls;
mod uplink;
mod users;

pub use intake::{Intake, DEFAULT_BODY_LIMIT, DEFAULT_BURST, DEFAULT_RATE_PER_MINUTE};
pub use pair::{
    for_appliance, HeartbeatPath, Pair, PairNode, Vip, VipAddr, DEFAULT_DEAD_AFTER_MISSES,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
};
pub use retention::{Days, Retention, MAX_DAYS};
pub use sip::SipTcp;
pub use sip_tls::{Fingerprint, SipTls, TlsPin, TlsVersion};
pub use uplink::{pem_certificates, Uplink, DEFAULT_UPLINK_PORT};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

pub use sip::{
    Campaign, Carrier, Destination, NumberRange, Sip, SipDomain, SipMedia, SipRoute, SipUri,
    Strategy, Transport, DEFAULT_RTP_PORTS, E164,
};
pub use types::{EntryName, IfName, PortRange, Prefix, Protocol, Tcti, ZoneName};
pub use users::{
    Console, IdleTimeouts, PasswordHash, Role, SshKey, User, UserName, BREAK_GLASS_USER,
    DEFAULT_IDLE_SECS, MAX_IDLE_SECS, MIN_RSA_BITS, RESERVED_USER_NAMES, SSH_KEY_TYPES,
};

/// Default port of the management SSH service.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Default SIP port (UDP and TCP).
pub const DEFAULT_SIP_PORT: u16 = 5060;
/// Default SIP over TLS port.
pub const DEFAULT_SIP_TLS_PORT: u16 = 5061;
/// Default heartbeat port of the pair's sync link (UDP).
pub const DEFAULT_HEARTBEAT_PORT: u16 = 5405;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub appliance: Appliance,
    pub zones: Zones,
    pub services: Services,
    /// Inbound allowlist: named entries, default deny for everything else.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    /// What the appliance itself may send beyond replies, loopback and neighbour discovery.
    #[serde(default)]
    pub egress: Vec<EgressEntry>,
    /// How the keys that encrypt records at rest are protected.
    #[serde(default)]
    pub vault: Vault,
    /// SIP domains, carrier peers, overload caps and routes (see the `sip` module docs).
    #[serde(default)]
    pub sip: Sip,
    /// The redundant pair (see the `pair` module docs). Absent: this appliance runs alone.
    #[serde(default)]
    pub pair: Option<Pair>,
    /// The console's accounts (see the `users` module docs).
    #[serde(default)]
    pub user: Vec<User>,
    /// The console's settings.
    #[serde(default)]
    pub console: Console,
    /// The cloud uplink (see the `uplink` module docs). Absent: records stay on the
    /// appliance.
    #[serde(default)]
    pub uplink: Option<Uplink>,
    /// How long records are kept (see the `retention` module docs). Absent: until removed.
    #[serde(default)]
    pub retention: Retention,
    /// The transcript intake on the private segment (see the `intake` module docs).
    /// Absent: none, its port stays closed.
    #[serde(default)]
    pub intake: Option<Intake>,
}

/// The TPM (or, only when asked for loudly, a software stand-in) that protects the
/// key-encryption key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vault {
    /// TPM connection: `device:/dev/tpmrm0` on the appliance, `swtpm:host=…,port=…` in the lab.
    #[serde(default)]
    pub tcti: Tcti,
    /// PCRs (sha256 bank) the key is sealed to.
    #[serde(default = "default_pcrs")]
    pub pcrs: Spanned<Vec<u8>>,
    /// Development and TPM-less machines only: keep the key-encryption key in a root-only
    /// file instead of the TPM. Warned about at every start.
    #[serde(default)]
    pub danger_software_keys: bool,
    /// Allow sealing to PCRs that hold nothing measured (all zero).
    #[serde(default)]
    pub danger_allow_unmeasured_pcrs: bool,
}

fn default_pcrs() -> Spanned<Vec<u8>> {
    Spanned::new(0..0, vec![7])
}

impl Default for Vault {
    fn default() -> Self {
        Vault {
            tcti: Tcti::default(),
            pcrs: default_pcrs(),
            danger_software_keys: false,
            danger_allow_unmeasured_pcrs: false,
        }
    }
}

impl Vault {
    pub fn pcr_list(&self) -> &[u8] {
        self.pcrs.get_ref()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// A label for this appliance (shows in records and logs).
    pub name: EntryName,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zones {
    pub wan: Option<Zone>,
    pub private: Option<Zone>,
    pub mgmt: Option<Zone>,
    pub sync: Option<Zone>,
}

impl Zones {
    pub fn get(&self, z: ZoneName) -> Option<&Zone> {
        match z {
            ZoneName::Wan => self.wan.as_ref(),
            ZoneName::Private => self.private.as_ref(),
            ZoneName::Mgmt => self.mgmt.as_ref(),
            ZoneName::Sync => self.sync.as_ref(),
        }
    }

    /// Interfaces bound to the zone (empty when the zone is not configured).
    pub fn interfaces(&self, z: ZoneName) -> Vec<IfName> {
        self.get(z)
            .map(|zone| zone.interfaces.get_ref().clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub interfaces: Spanned<Vec<IfName>>,
}

/// The appliance's own services and the zones that may reach them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// Management SSH (TCP, default port 22).
    pub ssh: Option<Service>,
    /// SIP signalling (UDP and TCP, default port 5060).
    pub sip: Option<Service>,
    /// The pair's heartbeat (UDP, default port 5405).
    pub heartbeat: Option<Service>,
    /// ICMP / ICMPv6 echo to the appliance itself.
    pub ping: Option<Service>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub zones: Vec<Spanned<ZoneName>>,
    pub port: Option<u16>,
}

impl Service {
    pub fn zone_names(&self) -> BTreeSet<ZoneName> {
        self.zones.iter().map(|z| *z.get_ref()).collect()
    }
}

/// A named allowlist entry. Without `destination` it admits traffic to the appliance itself;
/// with one, traffic to those addresses (on the appliance or routed through it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub name: Spanned<EntryName>,
    pub zone: Spanned<ZoneName>,
    pub sources: Spanned<Vec<Prefix>>,
    pub protocol: Spanned<Protocol>,
    #[serde(default)]
    pub ports: Option<Spanned<Vec<PortRange>>>,
    #[serde(default)]
    pub destination: Option<Spanned<Vec<Prefix>>>,
}

impl AllowEntry {
    pub fn ports(&self) -> &[PortRange] {
        self.ports
            .as_ref()
            .map(|p| p.get_ref().as_slice())
            .unwrap_or(&[])
    }
    pub fn destinations(&self) -> &[Prefix] {
        self.destination
            .as_ref()
            .map(|d| d.get_ref().as_slice())
            .unwrap_or(&[])
    }
}

/// A named egress entry: what the appliance itself may open towards a zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressEntry {
    pub name: Spanned<EntryName>,
    pub zone: Spanned<ZoneName>,
    pub destinations: Spanned<Vec<Prefix>>,
    pub protocol: Spanned<Protocol>,
    #[serde(default)]
    pub ports: Option<Spanned<Vec<PortRange>>>,
}

/// What kind of mistake a config error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid TOML.
    Syntax,
    /// A key the schema does not know.
    UnknownField,
    /// A required key is absent.
    MissingField,
    /// A value of the wrong type or out of range.
    InvalidValue,
    /// A zone is referenced but not bound to interfaces.
    UndefinedZone,
    /// Two entries share a name.
    DuplicateName,
    /// An entry is inconsistent in itself (ports on ICMP, no ports on TCP, families that
    /// cannot match).
    InvalidEntry,
    /// The config would cut management SSH from the mgmt zone.
    Lockout,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Syntax => "syntax",
            ErrorKind::UnknownField => "unknown field",
            ErrorKind::MissingField => "missing field",
            ErrorKind::InvalidValue => "invalid value",
            ErrorKind::UndefinedZone => "undefined zone",
            ErrorKind::DuplicateName => "duplicate name",
            ErrorKind::InvalidEntry => "invalid entry",
            ErrorKind::Lockout => "lockout",
        }
    }
}

/// One located config error: `file:line:column: kind: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.kind.as_str(),
            self.message
        )
    }
}

/// All errors found in one file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn kinds(&self) -> Vec<ErrorKind> {
        self.0.iter().map(|e| e.kind).collect()
    }
}

/// Maps byte offsets to line and column.
struct Locator<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Option<Range<usize>>, kind: ErrorKind, message: String) -> ConfigError {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.src.len());
        let before = self.src.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            kind,
            message,
        }
    }
}

/// Kind of an error from typed deserialization (the text already parsed as TOML).
fn classify_schema_error(message: &str) -> ErrorKind {
    if message.starts_with("unknown field") {
        ErrorKind::UnknownField
    } else if message.starts_with("missing field") {
        ErrorKind::MissingField
    } else {
        ErrorKind::InvalidValue
    }
}

impl Config {
    /// Reads and validates a config file (the lockout guard is not applied; see
    /// [`Config::lockout_check`]).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(src) => Config::parse(&src, path),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                kind: ErrorKind::Io,
                message: format!("cannot read the file: {e}"),
            }])),
        }
    }

    /// Parses and validates config text; `origin` names the file in errors.
    pub fn parse(src: &str, origin: &Path) -> Result<Config, ConfigErrors> {
        let loc = Locator { file: origin, src };
        // One typed pass; only when it fails, a second, untyped pass tells a syntax error
        // from a schema error.
        let cfg: Config = match toml::from_str(src) {
            Ok(cfg) => cfg,
            Err(e) => {
                let msg = e.message().trim().to_owned();
                let kind = if src.parse::<toml::Table>().is_err() {
                    ErrorKind::Syntax
                } else {
                    classify_schema_error(&msg)
                };
                return Err(ConfigErrors(vec![loc.error(e.span(), kind, msg)]));
            }
        };
        let errors = cfg.validate(&loc);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn validate(&self, loc: &Locator<'_>) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let defined: BTreeSet<ZoneName> = ZoneName::ALL
            .into_iter()
            .filter(|z| self.zones.get(*z).is_some())
            .collect();

        for z in ZoneName::ALL {
            if let Some(zone) = self.zones.get(z) {
                if zone.interfaces.get_ref().is_empty() {
                    errs.push(loc.error(
                        Some(zone.interfaces.span()),
                        ErrorKind::InvalidValue,
                        format!("zone {z} has no interfaces: expected at least one interface name"),
                    ));
                }
            }
        }
        // An interface belongs to one zone only; otherwise zone matching is ambiguous.
        let mut owner: BTreeMap<&IfName, ZoneName> = BTreeMap::new();
        for z in ZoneName::ALL {
            if let Some(zone) = self.zones.get(z) {
                for ifname in zone.interfaces.get_ref() {
                    if let Some(prev) = owner.insert(ifname, z) {
                        errs.push(loc.error(
                            Some(zone.interfaces.span()),
                            ErrorKind::InvalidValue,
                            format!("interface {ifname} is bound to both zone {prev} and zone {z}"),
                        ));
                    }
                }
            }
        }

        let check_zone = |z: &Spanned<ZoneName>, errs: &mut Vec<ConfigError>| {
            if !defined.contains(z.get_ref()) {
                errs.push(loc.error(
                    Some(z.span()),
                    ErrorKind::UndefinedZone,
                    format!(
                        "zone {} is not bound to any interface: expected a [zones.{}] table",
                        z.get_ref(),
                        z.get_ref()
                    ),
                ));
            }
        };
        for svc in [
            &self.services.ssh,
            &self.services.sip,
            &self.services.heartbeat,
            &self.services.ping,
        ]
        .into_iter()
        .flatten()
        {
            for z in &svc.zones {
                check_zone(z, &mut errs);
            }
        }

        let mut names: BTreeMap<String, ()> = BTreeMap::new();
        let mut check_name = |n: &Spanned<EntryName>, what: &str, errs: &mut Vec<ConfigError>| {
            let key = format!("{what}:{}", n.get_ref());
            if names.insert(key, ()).is_some() {
                errs.push(loc.error(
                    Some(n.span()),
                    ErrorKind::DuplicateName,
                    format!(
                        "{what} entry {:?} is defined twice: names must be unique",
                        n.get_ref().as_str()
                    ),
                ));
            }
        };

        for e in &self.allow {
            check_name(&e.name, "allow", &mut errs);
            check_zone(&e.zone, &mut errs);
            check_entry(
                loc,
                &mut errs,
                &e.name,
                &e.sources,
                "sources",
                *e.protocol.get_ref(),
                &e.protocol,
                &e.ports,
            );
            if let Some(dst) = &e.destination {
                if dst.get_ref().is_empty() {
                    errs.push(loc.error(
                        Some(dst.span()),
                        ErrorKind::InvalidEntry,
                        format!(
                            "entry {}: destination is empty: omit it to mean the appliance itself",
                            e.name.get_ref()
                        ),
                    ));
                } else {
                    let src_fams = families(e.sources.get_ref());
                    let dst_fams = families(dst.get_ref());
                    if src_fams.is_disjoint(&dst_fams) {
                        errs.push(loc.error(
                            Some(dst.span()),
                            ErrorKind::InvalidEntry,
                            format!(
                                "entry {}: sources and destination share no address family, so the entry can never match",
                                e.name.get_ref()
                            ),
                        ));
                    }
                }
            }
        }
        for e in &self.egress {
            check_name(&e.name, "egress", &mut errs);
            check_zone(&e.zone, &mut errs);
            check_entry(
                loc,
                &mut errs,
                &e.name,
                &e.destinations,
                "destinations",
                *e.protocol.get_ref(),
                &e.protocol,
                &e.ports,
            );
        }
        let pcrs = self.vault.pcrs.get_ref();
        let unique: BTreeSet<u8> = pcrs.iter().copied().collect();
        if pcrs.is_empty() || pcrs.iter().any(|p| *p > 23) || unique.len() != pcrs.len() {
            errs.push(
                loc.error(
                    Some(self.vault.pcrs.span()),
                    ErrorKind::InvalidValue,
                    "vault.pcrs: expected a non-empty list of distinct PCR numbers 0-23, like [7]"
                        .into(),
                ),
            );
        }
        self.sip.validate(loc, &mut errs);
        self.sip.tcp.validate(loc, &mut errs);
        self.sip.tls.validate(&self.sip, loc, &mut errs);
        if let Some(p) = &self.pair {
            p.validate(&self.appliance.name, &self.zones, loc, &mut errs);
        }
        users::validate_users(&self.user, loc, &mut errs);
        self.console.validate(loc, &mut errs);
        if let Some(u) = &self.uplink {
            u.validate(&self.egress, loc, &mut errs);
        }
        if let Some(i) = &self.intake {
            i.validate(&self.zones, loc, &mut errs);
        }
        errs.sort_by_key(|e| (e.line, e.column));
        errs
    }

    /// The console account named `name`, if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.user.iter().find(|u| u.name.get_ref().as_str() == name)
    }

    /// Whether some account may log in as an admin (a key or a console password).
    pub fn has_admin(&self) -> bool {
        self.user.iter().any(|u| {
            u.role == Role::Admin && (!u.ssh_keys.is_empty() || u.console_password.is_some())
        })
    }

    /// The lockout guard's second half: refuses a config that leaves no admin account
    /// where the running one (`running`) has one.
    pub fn lockout_against(
        &self,
        running: &Config,
        origin: &Path,
        src: &str,
    ) -> Result<(), ConfigError> {
        if !running.has_admin() || self.has_admin() {
            return Ok(());
        }
        let loc = Locator { file: origin, src };
        Err(loc.error(
            self.user.first().map(|u| u.name.span()),
            ErrorKind::Lockout,
            "this config leaves no admin account that can log in (a [[user]] with role \"admin\" and an SSH key or a console password); commit with --force to apply it anyway".into(),
        ))
    }

    /// The lockout guard: refuses a config that would cut management SSH from the mgmt zone.
    pub fn lockout_check(&self, origin: &Path, src: &str) -> Result<(), ConfigError> {
        let loc = Locator { file: origin, src };
        let mgmt_bound = self
            .zones
            .mgmt
            .as_ref()
            .is_some_and(|z| !z.interfaces.get_ref().is_empty());
        let ssh_on_mgmt = self
            .services
            .ssh
            .as_ref()
            .is_some_and(|s| s.zone_names().contains(&ZoneName::Mgmt));
        let why = if !mgmt_bound {
            "no [zones.mgmt] with interfaces"
        } else if !ssh_on_mgmt {
            "[services.ssh] does not list zone \"mgmt\""
        } else {
            return Ok(());
        };
        let span = self
            .services
            .ssh
            .as_ref()
            .and_then(|s| s.zones.first().map(|z| z.span()));
        Err(loc.error(
            span,
            ErrorKind::Lockout,
            format!("this config would cut management SSH from the mgmt zone ({why}); commit with --force to apply it anyway"),
        ))
    }

    /// Port of the SSH service.
    pub fn ssh_port(&self) -> u16 {
        self.services
            .ssh
            .as_ref()
            .and_then(|s| s.port)
            .unwrap_or(DEFAULT_SSH_PORT)
    }
    /// Port of the SIP service.
    pub fn sip_port(&self) -> u16 {
        self.services
            .sip
            .as_ref()
            .and_then(|s| s.port)
            .unwrap_or(DEFAULT_SIP_PORT)
    }
    /// Port of the heartbeat service.
    pub fn heartbeat_port(&self) -> u16 {
        self.services
            .heartbeat
            .as_ref()
            .and_then(|s| s.port)
            .unwrap_or(DEFAULT_HEARTBEAT_PORT)
    }
}

fn families(prefixes: &[Prefix]) -> BTreeSet<bool> {
    prefixes.iter().map(|p| p.is_ipv4()).collect()
}

#[allow(clippy::too_many_arguments)]
fn check_entry(
    loc: &Locator<'_>,
    errs: &mut Vec<ConfigError>,
    name: &Spanned<EntryName>,
    addrs: &Spanned<Vec<Prefix>>,
    addrs_key: &str,
    proto: Protocol,
    proto_span: &Spanned<Protocol>,
    ports: &Option<Spanned<Vec<PortRange>>>,
) {
    let port_list = ports
        .as_ref()
        .map(|p| p.get_ref().as_slice())
        .unwrap_or(&[]);
    let ports_span = ports.as_ref().map(|p| p.span());
    let name = name.get_ref();
    if addrs.get_ref().is_empty() {
        errs.push(loc.error(
            Some(addrs.span()),
            ErrorKind::InvalidEntry,
            format!("entry {name}: {addrs_key} is empty: expected at least one prefix (0.0.0.0/0 or ::/0 for any)"),
        ));
    }
    match proto {
        Protocol::Icmp if !port_list.is_empty() => errs.push(loc.error(
            ports_span,
            ErrorKind::InvalidEntry,
            format!("entry {name}: ports make no sense with protocol icmp: remove them"),
        )),
        Protocol::Tcp | Protocol::Udp if port_list.is_empty() => errs.push(loc.error(
            Some(proto_span.span()),
            ErrorKind::InvalidEntry,
            format!(
                "entry {name}: protocol {} needs ports: expected ports = [...]",
                proto.as_str()
            ),
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests;

impl EgressEntry {
    pub fn ports(&self) -> &[PortRange] {
        self.ports
            .as_ref()
            .map(|p| p.get_ref().as_slice())
            .unwrap_or(&[])
    }
}

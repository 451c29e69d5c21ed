//! The cloud's MQTT broker in the lab: Debian's Mosquitto 2.0 inside the [`Host::Cloud`]
//! namespace, mutual TLS only, with a test PKI made by the `openssl` command line.
//!
//! ## What
//! - [`Pki`]: a fleet CA (ECDSA P-256, self-signed) and what it signs: the broker's server
//!   certificate ([`BROKER_NAME`] and both cloud addresses), appliance client certificates
//!   (CN = appliance name), an expired one, a server certificate for the wrong name, and
//!   [`Pki::sign_csr`] for a CSR an appliance made. Also a second, unrelated CA
//!   ([`Pki::other_ca`]) with a server certificate for the same name: the "broker
//!   certificate from another CA" attack.
//! - [`Broker`]: `/usr/sbin/mosquitto -c <conf>` as a lab child process, listening on
//!   `CLOUD_V4:8883` and `[CLOUD_V6]:8883` only (no plain listener, not even on loopback),
//!   TLS 1.3 only, `require_certificate`, the certificate's CN as the user name, no
//!   anonymous clients, persistence in its own directory, and an ACL: each client reads and
//!   writes only under `callgate/<its CN>/`; the `cloud` identity under all of `callgate/`.
//!   [`Broker::kill9`], [`Broker::restart`] (same persistence) and
//!   [`Broker::wipe_persistence`] model the cloud's failures.
//! - [`Subscriber`]: `mosquitto_sub` as `cloud` (or any identity) with a persistent MQTT 5
//!   session, so it also gets what was published while it was away.
//! - [`publish`] (as `cloud`), [`pub_as`] / [`pub_with`] (as an appliance or any identity),
//!   each reporting how the broker answered ([`PubOutcome`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use hil_tests::broker::{pub_as, Broker, BrokerOpts, Pki, PubOutcome, Subscriber};
//! use hil_tests::{Host, Lab};
//! # fn main() -> Result<(), hil_tests::LabError> {
//! let dir = tempfile::tempdir()?;
//! let lab = Lab::start(&[Host::Carrier, Host::Cloud])?;
//! let pki = Pki::new(dir.path())?;
//! let broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default())?;
//! let sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/#")?;
//! let out = pub_as(&lab.ns(Host::Carrier), &pki, "lab-a", "callgate/lab-a/cdr", b"{}")?;
//! assert_eq!(out, PubOutcome::Accepted(0));
//! assert!(sub.wait_for(1, Duration::from_secs(5)));
//! # drop(broker); Ok(()) }
//! ```
//!
//! ## Design
//! - **Files.** Everything lives under the directory given to [`Pki::new`] (normally a
//!   test's temporary directory): each CA in its own subdirectory with an `openssl ca`
//!   database, private keys next to their certificates (mode 0600, as openssl writes
//!   them), each broker in `broker-N/` (config, ACL, log, persistence), each subscriber's
//!   output in `sub-N.out`.
//! - **Runs as root.** Debian's binary, started as root, switches to user `mosquitto`
//!   *before* it opens the log, the ACL file and the persistence file, which a test's 0700
//!   temporary directory does not let it do (it exits with "Unable to open log file").
//!   The config says `user root`: the broker stays root (and logs a warning saying it
//!   should not). It only ever runs inside the lab's cloud namespace.
//! - **Persistence.** Mosquitto saves its database on a clean shutdown and every
//!   `autosave_interval` (default 1800 s). A SIGKILL would lose everything since, so the
//!   config saves after every change (`autosave_on_changes true`, `autosave_interval 1`).
//!   There is still a short window between acknowledging a message and saving it: before a
//!   `kill9` that must not lose a message, wait until the persistence file holds it
//!   ([`Broker::wait_for_saved`]). The log's [`SAVED`] line is not enough: Mosquitto logs
//!   it as a save *starts*, writes `mosquitto.db.new`, fsyncs and only then renames it
//!   over `mosquitto.db`; a SIGKILL in between restarts from the save before (a CI run
//!   lost a queued message so, under load).
//! - **Output parsing.** The subscriber prints each message as one line
//!   `MSG <retain> <qos> <payload hex> <topic>` (`-F 'MSG %r %q %x %t'`): hex keeps binary
//!   payloads and newlines on one line, and Mosquitto refuses topics with control
//!   characters, so a topic cannot end the line. `-d` debug lines (CONNACK, SUBACK, ...)
//!   are in the same file and tell when it is subscribed. Publishers run with `-d` as well:
//!   the PUBACK's reason code is read from there.
//!
//! ## Mosquitto 2.0.11 (Debian 12), as found
//! - `tls_version tlsv1.3` on a listener works: a TLS 1.2 ClientHello gets a
//!   `protocol_version` alert. Mosquitto's own clients read `--tls-version tlsv1.2` as
//!   "1.2 or later", so they cannot show that; `openssl s_client -tls1_2` can.
//! - In TLS 1.3 the client's handshake is complete before the server has checked the
//!   client certificate: a refused certificate shows on the client as an alert on a later
//!   read (`tlsv1 alert unknown ca`, `sslv3 alert certificate expired`; `mosquitto_pub`
//!   exits 7, "The connection was lost"), or, depending on timing, only as a closed
//!   connection ("Protocol error", exit 1). The broker reliably logs
//!   `certificate verify failed` and `Client <unknown> disconnected: Protocol error`.
//! - An ACL-denied MQTT 5 QoS 1 publish is answered with a PUBACK with reason code 0x87
//!   (not authorized) and dropped; the broker logs `Denied PUBLISH` only at debug level
//!   (hence `log_type all`). `mosquitto_pub` prints "Warning: Publish 1 failed: Not
//!   authorized." and still exits 0: [`PubOutcome`] comes from the PUBACK, not the exit code.
//! - The `acl_file` never refuses a SUBSCRIBE: a subscription wider than the client may
//!   read is granted (SUBACK reason code 1), and read access is checked per message at
//!   delivery, so the client just never gets the others' messages.
//! - `mosquitto_sub` exits ("The connection was lost.") when the broker goes away; it does
//!   not reconnect by itself. [`Subscriber::reconnect`] starts it again on the same session.
//! - `persistence_location` is joined with `/` by Mosquitto itself.
//! - `mosquitto_pub -s` refuses an empty standard input ("Zero length input"); an empty
//!   payload is sent with `-n`.
//!
//! ## Limits
//! - Needs `/usr/sbin/mosquitto`, `mosquitto_sub`, `mosquitto_pub` (Debian packages
//!   `mosquitto`, `mosquitto-clients`) and `openssl`; `scripts/setup` installs them.
//! - One broker per lab at a time (both listeners use fixed addresses and port 8883).
//! - Clients connect to the broker's IP addresses (the lab has no DNS, and the machine's
//!   `/etc/hosts` is not the lab's to change); the broker certificate carries IP SANs for
//!   them. [`Pki::wrong_name_server_cert`] carries neither the name nor the addresses.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::addr::{BROKER_NAME, CLOUD_V4, CLOUD_V6};
use crate::cmd::{output_with_timeout, run_checked, HELPER_TIMEOUT};
use crate::{poll_until, Host, LabError, Ns, Proc, Result};

/// The broker's (only) port: MQTT over TLS.
pub const MQTT_TLS_PORT: u16 = 8883;
/// CN of the cloud's own client identity (subscriber, signed-config publisher).
pub const CLOUD_CN: &str = "cloud";
/// Every appliance topic lives under `callgate/<appliance CN>/`.
pub const TOPIC_ROOT: &str = "callgate";
/// MQTT 5 reason code "Not authorized".
pub const NOT_AUTHORIZED: u8 = 0x87;
/// What the broker logs each time it has written its persistence file.
pub const SAVED: &str = "Saving in-memory database";
/// A name no certificate of the fleet is made out to except
/// [`Pki::wrong_name_server_cert`].
pub const WRONG_NAME: &str = "other.fleet.test";

/// Time limit for one `mosquitto_pub` run.
const PUB_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a starting broker or subscriber may take.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Validity of leaf certificates, days.
const LEAF_DAYS: &str = "365";
/// Validity of CA certificates, days.
const CA_DAYS: &str = "3650";

pub(crate) fn other(msg: impl Into<String>) -> LabError {
    LabError::Io(std::io::Error::other(msg.into()))
}

/// Unique per process: file name stems and MQTT client ids.
fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A CN or DNS name the PKI accepts: 1..=64 of `[A-Za-z0-9._-]`. Keeps subjects,
/// file names and ACL patterns (`%u`) free of anything with a meaning there.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(other(format!(
            "{what} {name:?}: only 1 to 64 of A-Z a-z 0-9 . _ - allowed"
        )))
    }
}

/// A path that can go into mosquitto's config as it is (one token, one line).
fn conf_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| other(format!("{}: not UTF-8", p.display())))?;
    if s.chars().any(char::is_whitespace) || s.contains('#') {
        return Err(other(format!(
            "{s}: whitespace or '#' in a path mosquitto's config must hold"
        )));
    }
    Ok(s.to_owned())
}

/// A certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject's common name.
    pub cn: String,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

impl Identity {
    /// The certificate, PEM text.
    pub fn cert_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.cert)?)
    }

    /// The private key, PEM text.
    pub fn key_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.key)?)
    }
}

/// The `openssl ca` configuration every CA of the PKI uses (paths relative to the CA's
/// directory, the working directory of every openssl run).
const CA_CONF: &str = "\
# hil-tests broker PKI (hil-tests/src/broker.rs)
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ ca ]
default_ca = this_ca
[ this_ca ]
dir = .
database = index.txt
serial = serial
new_certs_dir = issued
certificate = ca.pem
private_key = ca.key
default_md = sha256
# Only the CN of a request is kept (fields not in the policy are dropped), and none of
# its extensions: what a certificate may do is decided here, not by the requester.
policy = policy_cn
copy_extensions = none
unique_subject = no
email_in_dn = no
[ policy_cn ]
commonName = supplied
[ v3_ca ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy)]
enum Usage {
    Client,
    Server,
    /// Both: a SIP peer's certificate, presented when it accepts and when it connects.
    Both,
}

/// A certificate authority (ECDSA P-256, self-signed) made with the `openssl` command
/// line, with its own `openssl ca` database.
#[derive(Debug)]
pub struct Ca {
    dir: PathBuf,
    cert: PathBuf,
    /// `openssl ca` updates its database files: one signing at a time.
    lock: Mutex<()>,
}

impl Ca {
    /// Creates a new CA with subject `CN=<cn>` in `dir` (created; must not hold a CA yet).
    pub fn create(dir: &Path, cn: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir.join("issued"))?;
        if dir.join("ca.pem").exists() {
            return Err(other(format!("{}: already holds a CA", dir.display())));
        }
        std::fs::write(dir.join("ca.cnf"), CA_CONF)?;
        std::fs::write(dir.join("index.txt"), "")?;
        std::fs::write(dir.join("serial"), "1000\n")?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
            lock: Mutex::new(()),
        };
        ca.openssl(
            "req -config ca.cnf -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
             -keyout ca.key -out ca.pem -extensions v3_ca",
            &["-days", CA_DAYS, "-subj", &format!("/CN={cn}")],
        )?;
        Ok(ca)
    }

    /// `openssl` with the words of `fixed`, then `args`, in the CA's directory.
    fn openssl(&self, fixed: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("openssl");
        cmd.args(fixed.split_whitespace())
            .args(args)
            .current_dir(&self.dir);
        run_checked(&mut cmd, None, HELPER_TIMEOUT)
    }

    /// The CA certificate (PEM file): the trust anchor to give clients or the broker.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The CA certificate, PEM text.
    pub fn cert_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.cert)?)
    }

    /// A new key and a certificate for a server called `name`: SAN `DNS:<name>` plus both
    /// cloud addresses, `serverAuth`, valid for a year.
    pub fn server_cert(&self, name: &str) -> Result<Identity> {
        check_name("server name", name)?;
        let sans = format!("DNS:{name}, IP:{CLOUD_V4}, IP:{CLOUD_V6}");
        self.issue(name, Usage::Server, Some(&sans), None)
    }

    /// A new key and a client certificate (`clientAuth`, subject `CN=<cn>`, a year).
    pub fn client_cert(&self, cn: &str) -> Result<Identity> {
        check_name("CN", cn)?;
        self.issue(cn, Usage::Client, None, None)
    }

    /// Like [`Ca::client_cert`], but valid only on 2020-01-01: expired long ago.
    pub fn expired_client_cert(&self, cn: &str) -> Result<Identity> {
        check_name("CN", cn)?;
        self.issue(
            cn,
            Usage::Client,
            None,
            Some(("20200101000000Z", "20200102000000Z")),
        )
    }

    /// Signs a PEM certificate request as a client certificate (`clientAuth`, a year).
    /// The subject is the request's CN alone; its other fields and any extensions it asks
    /// for are ignored. Refused: an invalid signature, no CN or several, a CN outside
    /// `[A-Za-z0-9._-]{1,64}`, and [`CLOUD_CN`] (that identity may write every
    /// appliance's topics). Returns the certificate, PEM.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String> {
        self.sign_csr_for(csr_pem, None)
    }

    /// [`Ca::sign_csr`] with the validity `window` (notBefore, notAfter as
    /// `YYYYMMDDHHMMSSZ`): a certificate that expires during a test, or has expired.
    pub fn sign_csr_valid(&self, csr_pem: &str, from: &str, to: &str) -> Result<String> {
        self.sign_csr_for(csr_pem, Some((from, to)))
    }

    /// Signs a PEM certificate request as a server certificate (`serverAuth` and
    /// `clientAuth`: a SIP peer's certificate serves both ways; a year, or
    /// the validity `window`) with the subject alternative names `sans` (openssl's form,
    /// `IP:203.0.113.1, DNS:x`): the request's own extensions are ignored. Returns the
    /// certificate, PEM.
    pub fn sign_server_csr(
        &self,
        csr_pem: &str,
        sans: &str,
        window: Option<(&str, &str)>,
    ) -> Result<String> {
        let stem = format!("server-csr-{}", next_id());
        let csr = format!("{stem}.csr");
        std::fs::write(self.dir.join(&csr), csr_pem)?;
        self.openssl("req -noout -verify -in", &[&csr])?;
        let cert = self.sign(&csr, &stem, Usage::Both, Some(sans), window)?;
        Ok(std::fs::read_to_string(cert)?)
    }

    /// A new key and a certificate for a SIP peer called `cn` with the subject alternative
    /// names `sans` (openssl's form), for both server and client authentication, a year.
    pub fn peer_cert(&self, cn: &str, sans: &str) -> Result<Identity> {
        check_name("CN", cn)?;
        self.issue(cn, Usage::Both, Some(sans), None)
    }

    fn sign_csr_for(&self, csr_pem: &str, window: Option<(&str, &str)>) -> Result<String> {
        let stem = format!("csr-{}", next_id());
        let csr = format!("{stem}.csr");
        std::fs::write(self.dir.join(&csr), csr_pem)?;
        let subject = self.openssl("req -noout -verify -subject -nameopt RFC2253 -in", &[&csr])?;
        let subject = subject
            .lines()
            .find_map(|l| l.strip_prefix("subject="))
            .ok_or_else(|| other("CSR: no subject"))?;
        let cns: Vec<&str> = subject
            .split(',')
            .filter_map(|rdn| rdn.trim().strip_prefix("CN="))
            .collect();
        let [cn] = cns[..] else {
            return Err(other(format!(
                "CSR subject {subject:?}: not exactly one CN"
            )));
        };
        check_name("CSR CN", cn)?;
        if cn == CLOUD_CN {
            return Err(other(format!(
                "CSR CN {cn:?} is the cloud's own identity: refused"
            )));
        }
        let cert = self.sign(&csr, &stem, Usage::Client, None, window)?;
        Ok(std::fs::read_to_string(cert)?)
    }

    fn issue(
        &self,
        cn: &str,
        usage: Usage,
        sans: Option<&str>,
        window: Option<(&str, &str)>,
    ) -> Result<Identity> {
        let stem = format!("{cn}-{}", next_id());
        let (key, csr) = (format!("{stem}.key"), format!("{stem}.csr"));
        self.openssl(
            "req -config ca.cnf -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256",
            &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")],
        )?;
        let cert = self.sign(&csr, &stem, usage, sans, window)?;
        Ok(Identity {
            cn: cn.to_owned(),
            cert,
            key: self.dir.join(key),
        })
    }

    /// `openssl ca` on `csr`; the certificate goes to `<stem>.pem`. `window` is
    /// (notBefore, notAfter) as `YYYYMMDDHHMMSSZ`, else a year from now.
    fn sign(
        &self,
        csr: &str,
        stem: &str,
        usage: Usage,
        sans: Option<&str>,
        window: Option<(&str, &str)>,
    ) -> Result<PathBuf> {
        let (section, eku) = match usage {
            Usage::Client => ("client", "clientAuth"),
            Usage::Server => ("server", "serverAuth"),
            Usage::Both => ("both", "serverAuth, clientAuth"),
        };
        let mut ext = format!(
            "[ {section} ]\n\
             basicConstraints = critical, CA:false\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = {eku}\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n"
        );
        if let Some(sans) = sans {
            let _ = writeln!(ext, "subjectAltName = {sans}");
        }
        let (extfile, pem) = (format!("{stem}.ext"), format!("{stem}.pem"));
        std::fs::write(self.dir.join(&extfile), ext)?;
        let mut args = vec![
            "-in",
            csr,
            "-out",
            &pem,
            "-extfile",
            &extfile,
            "-extensions",
            section,
        ];
        match window {
            Some((from, to)) => args.extend(["-startdate", from, "-enddate", to]),
            None => args.extend(["-days", LEAF_DAYS]),
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.openssl("ca -config ca.cnf -batch -notext", &args)?;
        Ok(self.dir.join(pem))
    }
}

/// The lab's test PKI: the fleet CA and what it signed, plus an unrelated second CA.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    fleet: Ca,
    other: Ca,
    broker: Identity,
    wrong_name: Identity,
    other_server: Identity,
    cloud: Identity,
    /// Client identities by CN, made on first use by [`Pki::client`].
    clients: Mutex<HashMap<String, Identity>>,
}

impl Pki {
    /// Makes the PKI in `dir` (created): the fleet CA (`fleet/`), the broker's server
    /// certificate for [`BROKER_NAME`], the `cloud` client identity, a server certificate
    /// for [`WRONG_NAME`], and the second CA (`other/`) with its own server certificate
    /// for [`BROKER_NAME`].
    pub fn new(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let fleet = Ca::create(&dir.join("fleet"), "callgate fleet test CA")?;
        let other = Ca::create(&dir.join("other"), "unrelated test CA")?;
        let broker = fleet.server_cert(BROKER_NAME)?;
        // Neither the broker's name nor its addresses: wrong however a client checks.
        let wrong_name = fleet.issue(
            WRONG_NAME,
            Usage::Server,
            Some(&format!("DNS:{WRONG_NAME}")),
            None,
        )?;
        let other_server = other.server_cert(BROKER_NAME)?;
        let cloud = fleet.client_cert(CLOUD_CN)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            fleet,
            other,
            broker,
            wrong_name,
            other_server,
            cloud,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The directory everything is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fleet CA.
    pub fn fleet(&self) -> &Ca {
        &self.fleet
    }

    /// The fleet CA certificate (PEM file): what the broker and the appliances trust.
    pub fn ca_cert(&self) -> &Path {
        self.fleet.cert()
    }

    /// The fleet CA certificate, PEM text (for an appliance's config).
    pub fn ca_pem(&self) -> Result<String> {
        self.fleet.cert_pem()
    }

    /// The broker's certificate: fleet CA, [`BROKER_NAME`] and both cloud addresses.
    pub fn broker_cert(&self) -> &Identity {
        &self.broker
    }

    /// A new server certificate from the fleet CA for `name` (and both cloud addresses).
    pub fn server_cert(&self, name: &str) -> Result<Identity> {
        self.fleet.server_cert(name)
    }

    /// Signed by the fleet CA, but for [`WRONG_NAME`] only (no IP SANs either).
    pub fn wrong_name_server_cert(&self) -> &Identity {
        &self.wrong_name
    }

    /// The second, unrelated CA (for client certificates from another CA, say).
    pub fn other_ca(&self) -> &Ca {
        &self.other
    }

    /// The other CA's server certificate for [`BROKER_NAME`] and both cloud addresses.
    pub fn other_ca_server_cert(&self) -> &Identity {
        &self.other_server
    }

    /// The cloud's own client identity (CN [`CLOUD_CN`]): reads and writes `callgate/#`.
    pub fn cloud(&self) -> &Identity {
        &self.cloud
    }

    /// A new client certificate from the fleet CA with CN `cn` (an appliance name).
    pub fn client_cert(&self, cn: &str) -> Result<Identity> {
        self.fleet.client_cert(cn)
    }

    /// The client identity for `cn`, made by [`Pki::client_cert`] on first use.
    pub fn client(&self, cn: &str) -> Result<Identity> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = clients.get(cn) {
            return Ok(id.clone());
        }
        let id = self.fleet.client_cert(cn)?;
        clients.insert(cn.to_owned(), id.clone());
        Ok(id)
    }

    /// A fleet client certificate for `cn` that expired in 2020.
    pub fn expired_client_cert(&self, cn: &str) -> Result<Identity> {
        self.fleet.expired_client_cert(cn)
    }

    /// The fleet CA signs an appliance's CSR (see [`Ca::sign_csr`]).
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String> {
        self.fleet.sign_csr(csr_pem)
    }
}

/// Which certificate the broker presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerCert {
    /// [`Pki::broker_cert`]: the right one.
    #[default]
    Fleet,
    /// [`Pki::other_ca_server_cert`]: right name, untrusted issuer.
    OtherCa,
    /// [`Pki::wrong_name_server_cert`]: trusted issuer, wrong name.
    WrongName,
    /// Any other certificate and key.
    Custom(Identity),
}

/// How to start a [`Broker`].
#[derive(Debug, Clone, Default)]
pub struct BrokerOpts {
    /// The certificate it presents.
    pub server_cert: ServerCert,
    /// Its directory (config, ACL, log, persistence). Default: a new `broker-N` in the
    /// PKI's directory. Name an existing one to start on an earlier broker's persistence.
    pub dir: Option<PathBuf>,
}

/// Mosquitto running in the cloud namespace. Stopped (SIGTERM: it saves) when dropped,
/// and by the lab's teardown in any case.
pub struct Broker<'lab> {
    ns: Ns<'lab>,
    dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    /// Mosquitto's stdout and stderr (errors from before the log is open).
    out: PathBuf,
    server: Identity,
    proc: Option<Proc>,
}

impl std::fmt::Debug for Broker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("ns", &self.ns.name())
            .field("dir", &self.dir)
            .field("server", &self.server.cn)
            .field("pid", &self.proc.as_ref().map(Proc::pid))
            .finish()
    }
}

impl<'lab> Broker<'lab> {
    /// Writes the config and starts mosquitto in `lab_ns` (the [`Host::Cloud`]
    /// namespace); returns once both listeners accept TCP connections.
    pub fn start(lab_ns: &Ns<'lab>, pki: &Pki, opts: BrokerOpts) -> Result<Broker<'lab>> {
        if lab_ns.host() != Some(Host::Cloud) {
            return Err(other(format!(
                "the broker runs in the cloud namespace, not in {}",
                lab_ns.name()
            )));
        }
        let server = match opts.server_cert {
            ServerCert::Fleet => pki.broker_cert().clone(),
            ServerCert::OtherCa => pki.other_ca_server_cert().clone(),
            ServerCert::WrongName => pki.wrong_name_server_cert().clone(),
            ServerCert::Custom(id) => id,
        };
        let dir = opts
            .dir
            .unwrap_or_else(|| pki.dir().join(format!("broker-{}", next_id())));
        let persist = dir.join("persist");
        std::fs::create_dir_all(&persist)?;
        let (conf, acl, log, out) = (
            dir.join("mosquitto.conf"),
            dir.join("acl"),
            dir.join("mosquitto.log"),
            dir.join("mosquitto.out"),
        );
        std::fs::write(
            &acl,
            format!(
                "# Each client reads and writes only under {TOPIC_ROOT}/<its certificate CN>/.\n\
                 pattern readwrite {TOPIC_ROOT}/%u/#\n\
                 # The cloud: subscriber of every appliance, publisher of signed configs.\n\
                 user {CLOUD_CN}\n\
                 topic readwrite {TOPIC_ROOT}/#\n"
            ),
        )?;
        let mut text = format!(
            "# hil-tests broker (hil-tests/src/broker.rs)\n\
             # Stay root: the Debian binary would switch to user mosquitto before opening the\n\
             # log, the ACL and the persistence, all in a test's 0700 directory.\n\
             user root\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             acl_file {acl}\n\
             persistence true\n\
             persistence_location {persist}/\n\
             # Save after every change: a SIGKILL loses (almost) nothing.\n\
             autosave_on_changes true\n\
             autosave_interval 1\n\
             log_dest file {log}\n\
             log_type all\n\
             log_timestamp true\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n\
             connection_messages true\n\
             set_tcp_nodelay true\n",
            acl = conf_path(&acl)?,
            persist = conf_path(&persist)?,
            log = conf_path(&log)?,
        );
        // No other listener: nothing in plain text, not even on loopback.
        for ip in [IpAddr::V4(CLOUD_V4), IpAddr::V6(CLOUD_V6)] {
            let _ = write!(
                text,
                "\nlistener {MQTT_TLS_PORT} {ip}\n\
                 protocol mqtt\n\
                 cafile {ca}\n\
                 certfile {cert}\n\
                 keyfile {key}\n\
                 tls_version tlsv1.3\n\
                 require_certificate true\n\
                 use_identity_as_username true\n",
                ca = conf_path(pki.ca_cert())?,
                cert = conf_path(&server.cert)?,
                key = conf_path(&server.key)?,
            );
        }
        std::fs::write(&conf, text)?;
        let mut broker = Broker {
            ns: lab_ns.clone(),
            dir,
            conf,
            log,
            out,
            server,
            proc: None,
        };
        broker.launch()?;
        Ok(broker)
    }

    fn launch(&mut self) -> Result<()> {
        let out = File::options().create(true).append(true).open(&self.out)?;
        let mut cmd = self.ns.command("/usr/sbin/mosquitto");
        cmd.arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let proc = self.ns.spawn(cmd)?;
        self.proc = Some(proc.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        for ip in [IpAddr::V4(CLOUD_V4), IpAddr::V6(CLOUD_V6)] {
            loop {
                if !proc.is_running() {
                    self.proc = None;
                    return Err(other(format!(
                        "mosquitto exited at start: {}{}",
                        read_lossy(&self.out),
                        read_lossy(&self.log)
                    )));
                }
                if self
                    .ns
                    .tcp_connect(None, ip, MQTT_TLS_PORT, Duration::from_millis(200))
                {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = proc.kill();
                    self.proc = None;
                    return Err(other(format!(
                        "mosquitto does not listen on {ip}:{MQTT_TLS_PORT} after {START_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &Ns<'lab> {
        &self.ns
    }

    /// Its directory (config, ACL, log, persistence).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its config file.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// Its log file (`log_type all`; appended to across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The log's length now: a mark for [`Broker::wait_for_log`].
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0))
    }

    /// Whether `needle` appears in the log after byte `mark` within `timeout`.
    pub fn wait_for_log(&self, needle: &str, mark: usize, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(20), || {
            let log = std::fs::read(&self.log).unwrap_or_default();
            log.get(mark..)
                .is_some_and(|tail| String::from_utf8_lossy(tail).contains(needle))
        })
    }

    /// Whether `needles` appear in the log after byte `mark`, in this order, within
    /// `timeout`. E.g. `["Received PUBLISH from", SAVED]`: a message is on disk.
    pub fn wait_for_log_in_order(&self, needles: &[&str], mark: usize, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(20), || {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let Some(tail) = log.get(mark..) else {
                return false;
            };
            let mut rest: &str = &String::from_utf8_lossy(tail);
            needles.iter().all(|n| match rest.find(n) {
                Some(i) => {
                    rest = &rest[i + n.len()..];
                    true
                }
                None => false,
            })
        })
    }

    /// Whether the persistence file holds `payload` within `timeout`: a save that stored a
    /// message has completed. Mosquitto stores payloads as they are, and renames each save
    /// over the file whole, so the restarted broker reads what this saw.
    pub fn wait_for_saved(&self, payload: &[u8], timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(20), || {
            let db = std::fs::read(self.persistence_file()).unwrap_or_default();
            !payload.is_empty() && db.windows(payload.len()).any(|w| w == payload)
        })
    }

    /// The persistence file (`persist/mosquitto.db`; exists once something was saved).
    pub fn persistence_file(&self) -> PathBuf {
        self.dir.join("persist").join("mosquitto.db")
    }

    /// The certificate it presents.
    pub fn server_cert(&self) -> &Identity {
        &self.server
    }

    /// Whether mosquitto is running.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    /// SIGKILL: no goodbye to clients, no final save (what was autosaved stays).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGTERM (it saves its database and closes its clients' connections).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            p.terminate(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Stops it if it runs, then starts it again with the same config and persistence:
    /// it comes back with its saved sessions, subscriptions and queued messages.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Stops it, deletes its persistence file, starts it again: every session is lost.
    pub fn wipe_persistence(&mut self) -> Result<()> {
        self.stop()?;
        match std::fs::remove_file(self.persistence_file()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.launch()
    }
}

impl Drop for Broker<'_> {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// One message as a [`Subscriber`] received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The retain flag as delivered (set for a retained message sent on subscribing).
    pub retained: bool,
    /// The QoS it was delivered with.
    pub qos: u8,
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Messages in a subscriber's output: complete `MSG <retain> <qos> <hex> <topic>` lines.
fn parse_messages(out: &str) -> Vec<Message> {
    let complete = out.rfind('\n').map_or("", |i| &out[..i]);
    complete
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("MSG ")?.splitn(4, ' ');
            let retained = f.next()? == "1";
            let qos = f.next()?.parse().ok()?;
            let payload = parse_hex(f.next()?)?;
            let topic = f.next()?.to_owned();
            Some(Message {
                topic,
                payload,
                retained,
                qos,
            })
        })
        .collect()
}

/// `mosquitto_sub` with a persistent MQTT 5 session (`-c`, a fixed client id, session
/// expiry one day), QoS 1, in some lab namespace, connected to the broker's IPv4 address.
/// Stopped when dropped (and by the lab's teardown in any case).
pub struct Subscriber<'lab> {
    ns: Ns<'lab>,
    id: String,
    args: Vec<String>,
    out: PathBuf,
    err: PathBuf,
    proc: Option<Proc>,
}

impl std::fmt::Debug for Subscriber<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("ns", &self.ns.name())
            .field("id", &self.id)
            .field("out", &self.out)
            .finish()
    }
}

impl<'lab> Subscriber<'lab> {
    /// Subscribes to `topic_filter` as the `cloud` identity; returns once the broker has
    /// answered the SUBSCRIBE.
    pub fn start(ns: &Ns<'lab>, pki: &Pki, topic_filter: &str) -> Result<Subscriber<'lab>> {
        Subscriber::start_as(ns, pki, pki.cloud(), topic_filter)
    }

    /// Subscribes as `identity` (trusting the fleet CA for the broker). Returns once the
    /// broker has answered the SUBSCRIBE, a refusal too: see [`Subscriber::suback_codes`].
    pub fn start_as(
        ns: &Ns<'lab>,
        pki: &Pki,
        identity: &Identity,
        topic_filter: &str,
    ) -> Result<Subscriber<'lab>> {
        // A persistent session (`-c`, a day's expiry): the broker queues for it while it
        // is away. Each message printed: retained flag, QoS, payload in hex, topic.
        let session = ["-c", "-x", "86400"];
        Subscriber::launch(
            ns,
            pki,
            identity,
            "hil-sub",
            &session,
            topic_filter,
            "MSG %r %q %x %t",
        )
    }

    /// A load subscriber as `cloud`: a clean session (nothing queued for it while it is
    /// away) that prints neither payloads nor anything [`Subscriber::messages`] reads, so a
    /// benchmark's cloud side costs the broker's delivery and little else. Returns once
    /// the broker has answered the SUBSCRIBE.
    pub fn start_quiet(ns: &Ns<'lab>, pki: &Pki, topic_filter: &str) -> Result<Subscriber<'lab>> {
        Subscriber::launch(ns, pki, pki.cloud(), "hil-quiet", &[], topic_filter, "%q")
    }

    /// `mosquitto_sub` (MQTT 5, QoS 1, debug output for the SUBACK) as `identity`, client
    /// id `<kind>-<pid>-<n>`, with `session` options, printing each message as `format`.
    fn launch(
        ns: &Ns<'lab>,
        pki: &Pki,
        identity: &Identity,
        kind: &str,
        session: &[&str],
        topic_filter: &str,
        format: &str,
    ) -> Result<Subscriber<'lab>> {
        let n = next_id();
        let id = format!("{kind}-{}-{n}", std::process::id());
        let dir = pki.dir();
        let mut args: Vec<String> = tls_args(pki.ca_cert(), identity, IpAddr::V4(CLOUD_V4));
        args.extend(["-V", "mqttv5", "-q", "1"].map(str::to_owned));
        args.extend(session.iter().map(|s| s.to_string()));
        args.extend(["-i", &id, "-d", "-t", topic_filter, "-F", format].map(str::to_owned));
        let mut sub = Subscriber {
            ns: ns.clone(),
            out: dir.join(format!("sub-{n}.out")),
            err: dir.join(format!("sub-{n}.err")),
            id,
            args,
            proc: None,
        };
        sub.reconnect()?;
        Ok(sub)
    }

    /// Starts `mosquitto_sub` again (same client id, same session) after
    /// [`Subscriber::stop`]; returns once the broker has answered the SUBSCRIBE. Messages
    /// queued for the session while it was away arrive now.
    pub fn reconnect(&mut self) -> Result<()> {
        self.stop();
        let mark = std::fs::metadata(&self.out).map_or(0, |m| m.len());
        let mark = usize::try_from(mark).unwrap_or(0);
        let open = |p: &Path| File::options().create(true).append(true).open(p);
        // Line-buffered: its `-d` lines (the SUBACK) would otherwise sit in a stdio buffer
        // until a message arrives and flushes them.
        let mut cmd = self.ns.command("stdbuf");
        cmd.arg("-oL")
            .arg("mosquitto_sub")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(open(&self.out)?)
            .stderr(open(&self.err)?);
        let proc = self.ns.spawn(cmd)?;
        self.proc = Some(proc.clone());
        let answered = |out: &str| {
            out.get(mark..)
                .is_some_and(|t| t.contains(" received SUBACK"))
        };
        poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            answered(&read_lossy(&self.out)) || !proc.is_running()
        });
        let out = read_lossy(&self.out);
        if !answered(&out) {
            let why = if proc.is_running() {
                "no SUBACK"
            } else {
                "exited"
            };
            return Err(other(format!(
                "mosquitto_sub {} ({why}): {}{}",
                self.id,
                out.get(mark..).unwrap_or(""),
                read_lossy(&self.err)
            )));
        }
        Ok(())
    }

    /// Its MQTT client id (the session's name at the broker).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// SIGTERM: it disconnects cleanly; the session (subscription, queued messages) stays
    /// at the broker until it expires (a day).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = p.terminate(Duration::from_secs(2));
        }
    }

    /// Whether `mosquitto_sub` is running. It exits by itself when the broker closes its
    /// connection, and mostly when the broker is killed; after a reset it may instead
    /// retry every second. [`Subscriber::reconnect`] stops it first in either case.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    /// Everything received so far, in order, across reconnects.
    pub fn received(&self) -> Vec<Message> {
        parse_messages(&read_lossy(&self.out))
    }

    /// `(topic, payload)` of everything received so far, in order.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.received()
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect()
    }

    /// Whether at least `n` messages have arrived within `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(20), || {
            self.received().len() >= n
        })
    }

    /// Whether a message on `topic` with `payload` has arrived within `timeout`.
    pub fn wait_for_message(&self, topic: &str, payload: &[u8], timeout: Duration) -> bool {
        poll_until(timeout, Duration::from_millis(20), || {
            self.received()
                .iter()
                .any(|m| m.topic == topic && m.payload == payload)
        })
    }

    /// The reason codes of every SUBACK so far, one per connection: 1 = granted QoS 1, 0x80
    /// and up = refused (Mosquitto's `acl_file` grants every subscription and filters at
    /// delivery; a refusal would come from elsewhere, e.g. an invalid filter).
    pub fn suback_codes(&self) -> Vec<u8> {
        // `-d` prints `Subscribed (mid: 1): 1` (one code per topic filter).
        read_lossy(&self.out)
            .lines()
            .filter_map(|l| l.strip_prefix("Subscribed (mid: "))
            .filter_map(|l| l.split_once("): ").map(|(_, c)| c))
            .flat_map(|codes| codes.split(", ").filter_map(|c| c.trim().parse().ok()))
            .collect()
    }

    /// Its raw output (debug lines and message lines), for failure messages.
    pub fn output(&self) -> String {
        format!("{}{}", read_lossy(&self.out), read_lossy(&self.err))
    }
}

impl Drop for Subscriber<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_args(ca: &Path, identity: &Identity, server: IpAddr) -> Vec<String> {
    vec![
        "-h".into(),
        server.to_string(),
        "-p".into(),
        MQTT_TLS_PORT.to_string(),
        "--cafile".into(),
        ca.display().to_string(),
        "--cert".into(),
        identity.cert.display().to_string(),
        "--key".into(),
        identity.key.display().to_string(),
    ]
}

/// How the broker answered a QoS 1 MQTT 5 publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubOutcome {
    /// A PUBACK with a success reason code (0, or 0x10 "no matching subscribers").
    Accepted(u8),
    /// A PUBACK with a failure reason code (e.g. [`NOT_AUTHORIZED`]): the broker dropped it.
    Refused(u8),
    /// No PUBACK: the TLS handshake, the CONNECT or the connection failed. What
    /// `mosquitto_pub` said (`-d` lines, errors) and its exit status.
    Failed(String),
}

/// PUBACK reason code in `mosquitto_pub -d` output: `received PUBACK (Mid: 1, RC:135)`.
fn puback_code(out: &str) -> Option<u8> {
    let rest = out.split(" received PUBACK (").nth(1)?;
    let rc = rest.split("RC:").nth(1)?;
    let digits: String = rc.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Publishes `payload` on `topic` at QoS 1 (MQTT 5) from `ns` as `identity`, trusting
/// `ca` for the broker at `server`, and reports the broker's answer.
pub fn pub_with(
    ns: &Ns<'_>,
    ca: &Path,
    identity: &Identity,
    server: IpAddr,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> Result<PubOutcome> {
    let mut cmd = ns.command("mosquitto_pub");
    cmd.args(tls_args(ca, identity, server))
        .args(["-V", "mqttv5", "-q", "1", "-d", "-t", topic]);
    if retain {
        cmd.arg("-r");
    }
    // `-s` (standard input) is binary-safe but refuses an empty payload.
    cmd.arg(if payload.is_empty() { "-n" } else { "-s" });
    let out = output_with_timeout(&mut cmd, Some(payload), PUB_TIMEOUT)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(match puback_code(&text) {
        Some(rc) if rc < 0x80 => PubOutcome::Accepted(rc),
        Some(rc) => PubOutcome::Refused(rc),
        None => PubOutcome::Failed(format!("{text}({})", out.status)),
    })
}

/// Publishes as the `cloud` identity (e.g. a signed config bundle for an appliance);
/// an error unless the broker accepted it.
pub fn publish(ns: &Ns<'_>, pki: &Pki, topic: &str, payload: &[u8], retain: bool) -> Result<()> {
    let server = IpAddr::V4(CLOUD_V4);
    match pub_with(
        ns,
        pki.ca_cert(),
        pki.cloud(),
        server,
        topic,
        payload,
        retain,
    )? {
        PubOutcome::Accepted(_) => Ok(()),
        o => Err(other(format!("publish on {topic} as {CLOUD_CN}: {o:?}"))),
    }
}

/// Publishes as the appliance called `cn` (its fleet client certificate, made on first
/// use) and reports the broker's answer: under `callgate/<cn>/` it is accepted, elsewhere
/// refused with [`NOT_AUTHORIZED`].
pub fn pub_as(ns: &Ns<'_>, pki: &Pki, cn: &str, topic: &str, payload: &[u8]) -> Result<PubOutcome> {
    let id = pki.client(cn)?;
    pub_with(
        ns,
        pki.ca_cert(),
        &id,
        IpAddr::V4(CLOUD_V4),
        topic,
        payload,
        false,
    )
}

/// An appliance's uplink enrolment as an admin does it: `callgate uplink csr`, the request
/// signed by `sign` (the fleet CA, or another one for a refusal), the chain installed with
/// `callgate uplink install-cert -`. The install's outcome (refused or not).
pub fn enroll(
    a: &crate::Appliance<'_>,
    sign: impl FnOnce(&str) -> Result<String>,
) -> Result<crate::Cli> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE REQUEST-----";
    const END: &str = "-----END CERTIFICATE REQUEST-----";
    let csr = a.cli(&["uplink", "csr"]);
    let (Some(start), Some(end)) = (csr.stdout.find(BEGIN), csr.stdout.find(END)) else {
        return Err(other(format!(
            "`uplink csr` gave no request: {} {}",
            csr.stdout, csr.stderr
        )));
    };
    let cert = sign(&csr.stdout[start..end + END.len()])?;
    Ok(a.cli_stdin(&["uplink", "install-cert", "-"], &cert))
}

/// A new fleet signing key (Ed25519), as the cloud holds it: its public half goes in
/// `[uplink] fleet_key`; it signs config documents and subject requests.
pub fn fleet_key() -> ring::signature::Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .unwrap_or_else(|e| panic!("a new Ed25519 key: {e}"));
    ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .unwrap_or_else(|e| panic!("the new Ed25519 key: {e}"))
}

/// Base64 (standard), as signatures and keys travel in documents and config.
pub fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lines_parse_and_partial_lines_wait() {
        let out = "Client x received SUBACK\nSubscribed (mid: 1): 1\n\
                   MSG 0 1 68690a00 callgate/lab-a/with space\n\
                   MSG 1 1  callgate/lab-a/empty\n\
                   MSG 0 1 zz callgate/bad-hex\n\
                   MSG 0 1 6869 callgate/partial";
        let m = parse_messages(out);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].topic, "callgate/lab-a/with space");
        assert_eq!(m[0].payload, b"hi\n\0");
        assert!(!m[0].retained);
        assert_eq!(m[1].payload, b"");
        assert!(m[1].retained);
    }

    #[test]
    fn puback_codes_are_read_from_debug_output() {
        assert_eq!(
            puback_code("Client a received PUBACK (Mid: 1, RC:135)\n"),
            Some(135)
        );
        assert_eq!(
            puback_code("Client a received PUBACK (Mid: 1, RC:0)\n"),
            Some(0)
        );
        assert_eq!(puback_code("Error: The connection was lost.\n"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("CN", "lab-a").is_ok());
        assert!(check_name("CN", "broker.fleet.test").is_ok());
        for bad in ["", "a/b", "a+b", "#", "a b", "CN=x", &"x".repeat(65)] {
            assert!(check_name("CN", bad).is_err(), "{bad:?}");
        }
    }
}

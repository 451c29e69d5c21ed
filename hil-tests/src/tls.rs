//! SIP over TLS in the lab: a test PKI (a lab CA that signs the appliance's request, the
//! carrier's CA and its client certificates, a rogue CA), the appliance's enrolment
//! through its own CLI, Debian's `stunnel4` (OpenSSL) as the carrier's TLS side in front
//! of sipp (Debian's sipp is built without TLS), and `openssl s_client` as a raw TLS peer.
//!
//! The carrier's sipp speaks TCP to stunnel on the carrier host ([`STUNNEL_PORT`]);
//! stunnel holds one TLS connection to the appliance per sipp connection (`-t t1`: one for
//! every call), so the appliance sees a TLS trunk from the carrier's own address. Across
//! the pair's failover, where the TLS connection ends under held calls, [`TlsFront`]
//! (rustls) stands in stunnel's place: it makes a new connection for the next request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::addr::{A_WAN_V4, A_WAN_V6, CARRIER_V4};
use crate::broker::{other, Ca};
use crate::sipp::{Sipp, Transport};
use crate::{Appliance, Identity, Ns, Proc, Result};

/// The appliance's SIP over TLS port in the lab.
pub const TLS_PORT: u16 = 5061;
/// Where stunnel takes the carrier sipp's TCP connections, on the carrier host.
pub const STUNNEL_PORT: u16 = 15060;

/// A tracking number of the TLS route [`tls_route_config`] adds (both sides over TLS).
pub const TLS_NUMBER: &str = "+15550100307";

/// `config/lab.toml` (which has a TLS listener on A's WAN addresses and admits the carrier
/// to it) plus a route carried over TLS to both PBXs (numbers
/// +15550100300-+15550100399, campaign `tls-trunk`, their certificates pinned to
/// `pbx_ca_pem`), the appliance allowed to open TLS to them; then `edits`.
pub fn tls_route_config(pbx_ca_pem: &str, edits: &[(&str, &str)]) -> String {
    let listen = format!("listen = [\"{A_WAN_V4}:{TLS_PORT}\", \"[{A_WAN_V6}]:{TLS_PORT}\"]");
    let pin = format!("{listen}\ndestinations = {{ ca = \"\"\"{pbx_ca_pem}\"\"\" }}");
    let egress_from = "name = \"sip-to-pbx-tcp\"\nzone = \"private\"\ndestinations = [\"198.51.100.0/24\", \"2001:db8:2::/64\"]\nprotocol = \"tcp\"\nports = [5060]";
    let egress_to = "name = \"sip-to-pbx-tcp\"\nzone = \"private\"\ndestinations = [\"198.51.100.0/24\", \"2001:db8:2::/64\"]\nprotocol = \"tcp\"\nports = [5060, 5061]";
    let mut all: Vec<(&str, &str)> = vec![(&listen, &pin), (egress_from, egress_to)];
    all.extend_from_slice(edits);
    let mut t = crate::calls::config(&all);
    t.push_str(
        "\n# SIP over TLS on both sides (hil-tests/src/tls.rs).\n[[sip.route]]\nnumbers = [\"+15550100300-+15550100399\"]\ncampaign = \"tls-trunk\"\nstrategy = \"sequential\"\ndestinations = [\n  { uri = \"sip:198.51.100.10:5061;transport=tls\" },\n  { uri = \"sip:198.51.100.11:5061;transport=tls\" },\n]\n",
    );
    t
}

/// The lab's PKI for SIP over TLS.
#[derive(Debug)]
pub struct SipPki {
    /// Signs the appliance's server certificate (the carriers trust it).
    pub lab: Ca,
    /// The carrier's own CA: its client certificates.
    pub carrier: Ca,
    /// A CA nobody trusts.
    pub rogue: Ca,
    /// The PBXs' CA: what `[sip.tls] destinations` pins.
    pub pbx: Ca,
    _dir: tempfile::TempDir,
}

impl SipPki {
    pub fn new() -> Result<SipPki> {
        let dir = tempfile::Builder::new().prefix("sip-pki-").tempdir()?;
        Ok(SipPki {
            lab: Ca::create(&dir.path().join("lab"), "lab SIP CA")?,
            carrier: Ca::create(&dir.path().join("carrier"), "carrier CA")?,
            rogue: Ca::create(&dir.path().join("rogue"), "rogue CA")?,
            pbx: Ca::create(&dir.path().join("pbx"), "PBX CA")?,
            _dir: dir,
        })
    }

    /// The carrier CA's certificate, PEM: what a carrier's `tls.ca` pins.
    pub fn carrier_ca_pem(&self) -> Result<String> {
        self.carrier.cert_pem()
    }
}

/// Enrols `a` for SIP over TLS through its CLI: `sip tls csr`, the lab CA signs it for
/// A's WAN addresses, `sip tls install-cert -`. The install's answer.
pub fn enrol(a: &Appliance<'_>, pki: &SipPki) -> Result<String> {
    let out = enrol_with(a, pki, None);
    if !out.ok() {
        return Err(other(format!(
            "sip tls install-cert: {} {}",
            out.stdout, out.stderr
        )));
    }
    Ok(out.stdout)
}

/// [`enrol`] with a certificate valid in `window` (notBefore, notAfter as
/// `YYYYMMDDHHMMSSZ`); the install's outcome, refused or not.
pub fn enrol_with(a: &Appliance<'_>, pki: &SipPki, window: Option<(&str, &str)>) -> crate::Cli {
    enrol_named(a, pki, &[A_WAN_V4.into(), A_WAN_V6.into()], window)
}

/// [`enrol_with`] with a certificate naming `names` (its subjectAltName IP entries)
/// rather than A's WAN addresses: a node of the pair names the pair's virtual addresses.
pub fn enrol_named(
    a: &Appliance<'_>,
    pki: &SipPki,
    names: &[IpAddr],
    window: Option<(&str, &str)>,
) -> crate::Cli {
    let csr = a.cli(&["--json", "sip", "tls", "csr"]);
    let pem = csr.json()["csr"].as_str().unwrap_or_default().to_owned();
    let san = names
        .iter()
        .map(|ip| format!("IP:{ip}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cert = pki
        .lab
        .sign_server_csr(&pem, &san, window)
        .unwrap_or_default();
    a.cli_stdin(&["sip", "tls", "install-cert", "-"], &cert)
}

/// `date -u` moved by `days` (negative: back), as openssl's `YYYYMMDDHHMMSSZ`.
pub fn openssl_date(days: i64) -> String {
    Command::new("date")
        .args(["-u", "-d", &format!("{days} days"), "+%Y%m%d%H%M%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// stunnel in client mode on the carrier host: takes TCP on
/// `CARRIER_V4:STUNNEL_PORT` and carries each connection over TLS to A's TLS port,
/// checking A's certificate against the lab CA (and A's address), presenting `client`
/// when given.
#[derive(Debug)]
pub struct Stunnel {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Stunnel {
    pub fn client(ns: &Ns<'_>, pki: &SipPki, client: Option<&Identity>) -> Result<Stunnel> {
        let dir = tempfile::Builder::new().prefix("stunnel-").tempdir()?;
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = 5\noutput = {log}\n\n[sip]\nclient = yes\naccept = {CARRIER_V4}:{STUNNEL_PORT}\nconnect = {A_WAN_V4}:{TLS_PORT}\nCAfile = {ca}\nverifyChain = yes\ncheckIP = {A_WAN_V4}\nsslVersionMin = TLSv1.2\n",
            log = dir.path().join("stunnel.log").display(),
            ca = pki.lab.cert().display(),
        );
        if let Some(id) = client {
            conf.push_str(&format!(
                "cert = {}\nkey = {}\n",
                id.cert.display(),
                id.key.display()
            ));
        }
        Stunnel::start(
            ns,
            dir,
            &conf,
            SocketAddr::new(IpAddr::V4(CARRIER_V4), STUNNEL_PORT),
        )
    }

    /// stunnel in server mode on the PBX host: takes TLS on `ip`:5061 with `id`'s
    /// certificate, requires a client certificate from the lab CA (the appliance's, or
    /// Kamailio's in the benchmark), and carries each connection over TCP to `ip`:5060 (a
    /// sipp UAS over TCP).
    pub fn pbx(ns: &Ns<'_>, pki: &SipPki, ip: Ipv4Addr, id: &Identity) -> Result<Stunnel> {
        let dir = tempfile::Builder::new().prefix("stunnel-").tempdir()?;
        let listen = SocketAddr::new(IpAddr::V4(ip), TLS_PORT);
        let conf = format!(
            "foreground = yes\npid =\ndebug = 5\noutput = {log}\n\n[sip]\naccept = {listen}\nconnect = {ip}:5060\ncert = {cert}\nkey = {key}\nCAfile = {ca}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.2\n",
            log = dir.path().join("stunnel.log").display(),
            cert = id.cert.display(),
            key = id.key.display(),
            ca = pki.lab.cert().display(),
        );
        Stunnel::start(ns, dir, &conf, listen)
    }

    fn start(
        ns: &Ns<'_>,
        dir: tempfile::TempDir,
        conf: &str,
        listen: SocketAddr,
    ) -> Result<Stunnel> {
        let path = dir.path().join("stunnel.conf");
        std::fs::write(&path, conf)?;
        let port = format!("{listen}");
        let mut cmd = ns.command("stunnel");
        cmd.arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = ns.spawn(cmd)?;
        let t = Stunnel { proc, dir };
        // Listening once `ss` shows the port in the carrier's namespace.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let ss = ns.exec(&["ss", "-Htln"]).unwrap_or_default();
            if ss.contains(&port) {
                return Ok(t);
            }
            if !t.proc.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(other(format!("stunnel did not start: {}", t.log())))
    }

    /// What stunnel logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.proc.kill();
    }
}

/// `uac` calling A's TLS port through the carrier's stunnel ([`Stunnel::client`]): sipp
/// speaks TCP, and sends (`-rsa`) to stunnel rather than to A.
pub fn through_stunnel(uac: Sipp<'_>) -> Sipp<'_> {
    uac.transport(Transport::Tcp)
        .remote(A_WAN_V4, TLS_PORT)
        .arg("-rsa")
        .arg(format!("{CARRIER_V4}:{STUNNEL_PORT}"))
}

/// An OPTIONS to the appliance over TLS, for [`s_client`].
pub fn options_request(tag: &str) -> String {
    options_request_to(A_WAN_V4, tag)
}

/// [`options_request`] to `server` (the pair's WAN VIP), for [`s_client_to`].
pub fn options_request_to(server: Ipv4Addr, tag: &str) -> String {
    format!(
        "OPTIONS sip:{server}:{TLS_PORT};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {CARRIER_V4}:{TLS_PORT};branch=z9hG4bK-{tag}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{CARRIER_V4}>;tag={tag}\r\nTo: <sip:{server}>\r\nCall-ID: {tag}@{CARRIER_V4}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// `openssl s_client` from the carrier host to A's TLS port with `args` (a client
/// certificate, a version), writing `input` once connected and reading for up to
/// `wait`. What it printed (stdout), which holds the appliance's answer if there was one.
pub fn s_client(
    ns: &Ns<'_>,
    pki: &SipPki,
    args: &[&str],
    input: &str,
    wait: Duration,
) -> Result<String> {
    s_client_to(ns, pki, A_WAN_V4, args, input, wait)
}

/// [`s_client`] to `server`'s TLS port (the pair's WAN VIP); `-verify_ip` in `args` checks
/// that the certificate names it.
pub fn s_client_to(
    ns: &Ns<'_>,
    pki: &SipPki,
    server: Ipv4Addr,
    args: &[&str],
    input: &str,
    wait: Duration,
) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("s-client-").tempdir()?;
    let input_path = dir.path().join("in.txt");
    std::fs::write(&input_path, input)?;
    // The input, then silence for `wait` (s_client would otherwise close at EOF before the
    // answer comes).
    let script = format!(
        "(cat {in_}; sleep {secs}) | timeout {t} openssl s_client -quiet -connect {server}:{TLS_PORT} -CAfile {ca} -verify_return_error {args} 2>{err}",
        in_ = input_path.display(),
        secs = wait.as_secs_f64(),
        t = wait.as_secs() + 5,
        ca = pki.lab.cert().display(),
        args = args.join(" "),
        err = dir.path().join("err.txt").display(),
    );
    let out = ns
        .command("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| other(format!("openssl s_client: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A client certificate's identity files as `s_client` arguments.
pub fn cert_args(id: &Identity) -> Vec<String> {
    vec![
        "-cert".into(),
        path_str(&id.cert),
        "-key".into(),
        path_str(&id.key),
    ]
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The SHA-256 fingerprint of a PEM certificate file, as openssl prints it
/// (`AB:CD:…`).
pub fn fingerprint(cert: &Path) -> Result<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit_once('=')
        .map(|(_, f)| f.to_owned())
        .ok_or_else(|| other(format!("no fingerprint in {text:?}")))
}

/// `show sip stats --json`'s TLS counters of `a`.
pub fn tls_stats(a: &Appliance<'_>) -> serde_json::Value {
    a.cli(&["--json", "show", "sip", "stats"]).json()["tls"].clone()
}

/// Where a [`TlsFront`] takes the carrier sipp's TCP connection, on the carrier host.
pub const FRONT_PORT: u16 = 15061;

/// The carrier's SIP over TLS transport as a SIP user agent has it, for calls that outlive
/// the connection they were set up on (the pair's failover): sipp speaks TCP to it
/// ([`through_front`]), and it carries the bytes over TLS (rustls) to `server`'s TLS
/// port, checking the server's certificate against the lab CA and for `server`'s address,
/// presenting `client` when given. When the TLS connection ends, the next bytes from sipp
/// go over a new one (RFC 3261 §18.1.1: a new connection for a request when there is
/// none), made once its handshake is done; sipp's own connection stays up throughout.
///
/// stunnel cannot stand here: it closes sipp's connection with its TLS one, and sipp
/// (3.6) notices that only when its next request fails to go out (EPIPE), then reconnects:
/// that request is lost.
#[derive(Debug)]
pub struct TlsFront {
    certs: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Listens on `CARRIER_V4:FRONT_PORT` in `ns` (the carrier's namespace).
    pub fn start(
        ns: &Ns<'_>,
        pki: &SipPki,
        client: Option<&Identity>,
        server: Ipv4Addr,
    ) -> Result<TlsFront> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls_err = |e: rustls::Error| other(format!("tls front: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(pki.lab.cert())?;
        for c in CertificateDer::pem_slice_iter(&ca) {
            let c = c.map_err(|e| other(format!("lab CA: {e}")))?;
            roots.add(c).map_err(tls_err)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots);
        let config = match client {
            Some(id) => {
                let chain = CertificateDer::pem_file_iter(&id.cert)
                    .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| other(format!("{}: {e}", id.cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(&id.key)
                    .map_err(|e| other(format!("{}: {e}", id.key.display())))?;
                builder.with_client_auth_cert(chain, key).map_err(tls_err)?
            }
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let listen = SocketAddr::new(IpAddr::V4(CARRIER_V4), FRONT_PORT);
        let listener = ns.try_run_in(|| std::net::TcpListener::bind(listen))??;
        listener.set_nonblocking(true)?;
        let certs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = certs.clone();
        // The thread joins the carrier's namespace: its connections are the carrier's.
        let thread = ns.try_run_in(move || {
            std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let serve = async {
                        while let Ok((sipp, _)) = listener.accept().await {
                            front_relay(sipp, &connector, server, &seen).await;
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serve => {}
                    }
                });
            })
        })?;
        Ok(TlsFront {
            certs,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The subject of the server certificate of each TLS connection made so far, in order,
    /// as `openssl x509 -subject` prints it (`subject=CN = lab-a`).
    pub fn subjects(&self) -> Vec<String> {
        let certs = self.certs.lock().map(|c| c.clone()).unwrap_or_default();
        certs
            .iter()
            .map(|der| {
                let dir = tempfile::Builder::new().prefix("front-cert-").tempdir();
                let Ok(dir) = dir else {
                    return String::new();
                };
                let path = dir.path().join("cert.der");
                if std::fs::write(&path, der).is_err() {
                    return String::new();
                }
                Command::new("openssl")
                    .args(["x509", "-inform", "DER", "-noout", "-subject", "-in"])
                    .arg(&path)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long [`TlsFront`] tries to make a TLS connection for bytes it has to send (the
/// address moves from one node to the other within this).
const FRONT_DIAL_FOR: Duration = Duration::from_secs(10);

/// A TLS connection to `server`'s TLS port, its handshake done, retried every 100 ms for
/// up to [`FRONT_DIAL_FOR`]; the server's certificate recorded in `seen`.
async fn front_dial(
    connector: &tokio_rustls::TlsConnector,
    server: Ipv4Addr,
    seen: &std::sync::Mutex<Vec<Vec<u8>>>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::V4(server).into());
    let until = Instant::now() + FRONT_DIAL_FOR;
    while Instant::now() < until {
        let tcp = tokio::net::TcpStream::connect((server, TLS_PORT)).await;
        if let Ok(tcp) = tcp {
            let _ = tcp.set_nodelay(true);
            if let Ok(tls) = connector.connect(name.clone(), tcp).await {
                let end = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                if let Ok(mut s) = seen.lock() {
                    s.push(end);
                }
                return Some(tls);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Relays sipp's connection over TLS until sipp closes it, making a new TLS connection
/// for what sipp sends when the last one ended.
async fn front_relay(
    mut sipp: tokio::net::TcpStream,
    connector: &tokio_rustls::TlsConnector,
    server: Ipv4Addr,
    seen: &std::sync::Mutex<Vec<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = sipp.set_nodelay(true);
    let mut tls = None;
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            r = sipp.read(&mut up) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Once on the connection there is, once more on a new one if that fails.
                for _ in 0..2 {
                    if tls.is_none() {
                        tls = front_dial(connector, server, seen).await;
                    }
                    let Some(t) = tls.as_mut() else { break };
                    if t.write_all(&up[..n]).await.is_ok() && t.flush().await.is_ok() {
                        break;
                    }
                    tls = None;
                }
            }
            r = front_read(&mut tls, &mut down) => match r {
                Ok(n) if n > 0 => {
                    if sipp.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                // The server closed it (or it broke): the next request makes a new one.
                _ => tls = None,
            },
        }
    }
}

/// Reads from the TLS connection, or waits forever when there is none.
async fn front_read(
    tls: &mut Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    match tls {
        Some(t) => t.read(buf).await,
        None => std::future::pending().await,
    }
}

/// `uac` calling `server`'s TLS port through the carrier's [`TlsFront`]: sipp speaks TCP,
/// and sends (`-rsa`) to the front rather than to `server`.
pub fn through_front(uac: Sipp<'_>, server: Ipv4Addr) -> Sipp<'_> {
    uac.transport(Transport::Tcp)
        .remote(server, TLS_PORT)
        .arg("-rsa")
        .arg(format!("{CARRIER_V4}:{FRONT_PORT}"))
}

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The server in process, over loopback: real TLS (rustls on both ends, certificates made
//! with rcgen), real HTTP/1.1 bytes, a real store. What each request leaves in the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callgate_intake::{Identity, Settings};
use callgate_store::Store;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { key, params, pem }
    }

    fn sign(&self, key: &KeyPair, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> String {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, "test");
        p.extended_key_usages = vec![eku];
        let issuer = Issuer::from_params(&self.params, &self.key);
        p.signed_by(key, &issuer).unwrap().pem()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    addr: SocketAddr,
    ca: Ca,
    handle: callgate_intake::IntakeHandle,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn setup(sources: &str, body_limit: usize, burst: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(dir.path(), callgate_vault::Kek::generate().unwrap()).unwrap());
    let ca = Ca::new("pbx CA");
    let key = callgate_pki::Key::generate().unwrap();
    let chain_pem = ca.sign(
        &key.key_pair().unwrap(),
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let settings = Settings {
        listen: addr,
        sources: vec![sources.parse().unwrap()],
        client_ca_pem: ca.pem.clone(),
        body_limit,
        rate_per_minute: 1,
        burst,
        appliance: "lab-a".into(),
    };
    let handle = callgate_intake::spawn(
        Some((settings, Some(Identity { chain_pem, key }))),
        store.clone(),
    );
    for _ in 0..200 {
        if handle.status().state == "listening" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.status().state, "listening", "{:?}", handle.status());
    Setup {
        _dir: dir,
        store,
        addr,
        ca,
        handle,
    }
}

/// A client presenting a certificate `client_ca` signed (None: no certificate).
fn connector(s: &Setup, client_ca: Option<&Ca>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in callgate_pki::certificates(&s.ca.pem).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let pem = ca.sign(&key, &[], ExtendedKeyUsagePurpose::ClientAuth);
            let chain: Vec<CertificateDer<'static>> = callgate_pki::certificates(&pem).unwrap();
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            b.with_client_auth_cert(chain, der).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends one request; the status, or the error that ended the exchange.
async fn post(
    s: &Setup,
    client_ca: Option<&Ca>,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let head = format!(
        "POST /v1/transcripts HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        body.len()
    );
    exchange(s, client_ca, &[head.as_bytes(), body].concat()).await
}

/// Sends `raw` bytes over TLS and reads the answer to its end: its status and body.
async fn exchange(s: &Setup, client_ca: Option<&Ca>, raw: &[u8]) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector(s, client_ca)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(raw).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// Waits (a second at most) until the status says `f`.
async fn settle(s: &Setup, f: impl Fn(&callgate_intake::Status) -> bool) {
    for _ in 0..100 {
        if f(&s.handle.status()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{:?}", s.handle.status());
}

fn waiting(store: &Store) -> Vec<serde_json::Value> {
    store
        .outbox_page(None, 100)
        .unwrap()
        .into_iter()
        .map(|(_, oid)| serde_json::from_slice(&store.get_transcript_json(oid).unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_request_is_queued_redacted_and_every_bad_one_queues_nothing() {
    let s = setup("127.0.0.0/8", 1024, 3).await;
    let pbx = &s.ca;
    let other = Ca::new("other CA");
    let json = "application/json";
    let good = br#"{"call_id":"c1@pbx","kind":"transcript","text":"card 4111 1111 1111 1111, order 7730021"}"#;

    // No client certificate, or one from another CA: no HTTP answer, nothing queued.
    assert!(post(&s, None, json, good).await.is_err());
    assert!(post(&s, Some(&other), json, good).await.is_err());
    assert_eq!(s.store.outbox_len(), 0);
    settle(&s, |st| st.handshakes_failed == 2).await;

    // The good one: 202 with its id, queued with the text redacted.
    let (status, body) = post(&s, Some(pbx), json, good).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = waiting(&s.store);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], answer["id"]);
    assert_eq!(items[0]["call_id"], "c1@pbx");
    assert_eq!(items[0]["text"], "card [CARD], order 7730021");
    assert_eq!(items[0]["redactions"]["card"], 1);

    // Bad ones: plainly refused, nothing queued.
    let big = format!(
        r#"{{"call_id":"c@pbx","kind":"note","text":"{}"}}"#,
        "x".repeat(1100)
    );
    for (ct, body, want) in [
        (json, big.as_bytes(), 413),
        (json, b"{\"call_id\":".as_slice(), 400),
    ] {
        let (status, text) = post(&s, Some(pbx), ct, body).await.unwrap();
        assert_eq!(status, want, "{text}");
        assert!(!text.contains("xxxx"), "the answer quotes the body: {text}");
    }
    // The burst of 3 is spent (one good, two bad): the rate applies.
    let (status, _) = post(&s, Some(pbx), json, good).await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(s.store.outbox_len(), 1);
    let st = s.handle.status();
    assert_eq!(st.accepted, 1);
    assert_eq!(
        st.refused.into_iter().collect::<Vec<_>>(),
        vec![(400, 1), (413, 1), (429, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_the_allowed_prefixes_is_closed_before_tls() {
    let s = setup("10.0.0.0/8", 1024, 4).await;
    let good = br#"{"call_id":"c1@pbx","kind":"note","text":"hello"}"#;
    assert!(post(&s, Some(&s.ca), "application/json", good)
        .await
        .is_err());
    assert_eq!(s.store.outbox_len(), 0);
    settle(&s, |st| st.sources_refused == 1).await;
    assert_eq!(s.handle.status().handshakes_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_past_the_limit_is_413_without_a_declared_length() {
    let s = setup("127.0.0.0/8", 1024, 3).await;
    let text = "x".repeat(1100);
    let body = format!(r#"{{"call_id":"c@pbx","kind":"note","text":"{text}"}}"#);
    let raw = format!(
        "POST /v1/transcripts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let (status, answer) = exchange(&s, Some(&s.ca), raw.as_bytes()).await.unwrap();
    assert_eq!(status, 413, "{answer}");
    // The same, small enough, in two chunks: accepted.
    let (a, b) = (r#"{"call_id":"c@pbx","kind":"note","#, r#""text":"ok"}"#);
    let raw = format!(
        "POST /v1/transcripts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let (status, answer) = exchange(&s, Some(&s.ca), raw.as_bytes()).await.unwrap();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(waiting(&s.store).len(), 1);
    assert_eq!(waiting(&s.store)[0]["text"], "ok");
}

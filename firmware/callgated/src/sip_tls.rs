//! SIP over TLS's server identity in the daemon: the key made on the appliance and sealed
//! under the KEK (`<state>/sip-tls.key`), its certificate signing request, and the chain
//! a CA signed for it (`<state>/sip-tls.crt`), checked before it is installed and handed
//! to the proxy at start and at each install.

use std::path::Path;

use callgate_config::Config;
use callgate_pki::CertInfo;
use callgate_proxy::driver::TlsIdentity;
use callgate_vault::Kek;

use crate::identity::SIP_TLS;

/// The installed identity, when there is one.
pub fn identity(state_dir: &Path, kek: &Kek) -> Option<TlsIdentity> {
    SIP_TLS
        .load(state_dir, kek)
        .map(|(key, chain_pem)| TlsIdentity { chain_pem, key })
}

/// A certificate signing request for the SIP TLS key (made and sealed the first time):
/// the appliance's name as CN, the TLS listen addresses and the SIP domains as subject
/// alternative names (what carriers check the certificate against).
pub fn csr(state_dir: &Path, kek: &Kek, cfg: &Config) -> Result<String, String> {
    let key = SIP_TLS.load_or_make_key(state_dir, kek)?;
    let mut sans: Vec<String> = cfg
        .sip
        .tls
        .listen_addrs()
        .iter()
        .map(|a| a.ip().to_string())
        .collect();
    for d in &cfg.sip.domains {
        let d = d.get_ref().as_str().to_owned();
        if !sans.contains(&d) {
            sans.push(d);
        }
    }
    key.csr_pem(cfg.appliance.name.as_str(), &sans)
        .map_err(|e| e.to_string())
}

/// Checks `pem` (leaf first) against the SIP TLS key, and keeps it: the identity to hand
/// to the proxy, and what it says of itself.
pub fn install(state_dir: &Path, kek: &Kek, pem: &str) -> Result<(TlsIdentity, CertInfo), String> {
    let (key, info) = SIP_TLS.install_server_chain(
        state_dir,
        kek,
        pem,
        "no SIP TLS key yet: run `callgate sip tls csr` and have a CA sign the request",
    )?;
    Ok((
        TlsIdentity {
            chain_pem: pem.to_owned(),
            key,
        },
        info,
    ))
}

/// How often the certificate is looked at.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);
/// A warning that persists is said again after this long.
const EXPIRY_REPEAT: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Warns, in the log and on the uplink's events topic (`certificate`), when SIP over TLS's
/// certificate is within `[sip.tls] cert_warn_days` of expiry, has expired, is missing
/// while TLS listeners exist, or is unusable (what `show sip stats` shows): at start and
/// every hour, each warning once, again each day it persists.
pub fn watch_expiry(sip: callgate_proxy::driver::SipHandle, uplink: crate::uplink::Uplink) {
    tokio::spawn(async move {
        let mut said: Option<(String, std::time::Instant)> = None;
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        loop {
            tick.tick().await;
            let Ok(st) = sip.tls_status().await else {
                return;
            };
            let Some(w) = st.warning else {
                said = None;
                continue;
            };
            if said
                .as_ref()
                .is_some_and(|(s, at)| *s == w && at.elapsed() < EXPIRY_REPEAT)
            {
                continue;
            }
            log::warn!("sip: tls: {w}");
            uplink.event(
                "certificate",
                serde_json::json!({
                    "what": "sip-tls",
                    "warning": w,
                    "not_after": st.certificate.map(|c| c.not_after),
                }),
            );
            said = Some((w, std::time::Instant::now()));
        }
    });
}

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
    let key = SIP_TLS
        .load_key(state_dir, kek)?
        .ok_or("no SIP TLS key yet: run `callgate sip tls csr` and have a CA sign the request")?;
    let info = callgate_pki::check_server_certificate(pem, &key, callgate_pki::UnixTime::now())
        .map_err(|e| e.to_string())?;
    SIP_TLS.save_chain(state_dir, pem)?;
    Ok((
        TlsIdentity {
            chain_pem: pem.to_owned(),
            key,
        },
        info,
    ))
}

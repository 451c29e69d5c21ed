//! Subject requests on the console (admins; every one audited by the dispatcher): what the
//! store holds about a caller (`show subject NUMBER`), every record of theirs decrypted as
//! JSON or CSV (`request subject export NUMBER format json|csv`), and their erasure with a
//! signed receipt (`request subject erase NUMBER`).
//!
//! The number is taken as the routes take a dialled number (`callgate_router::
//! normalize_number`: E.164, visual separators dropped); anything else is refused before
//! the store is touched, and the refusal does not repeat it (replies' first lines reach the
//! audit trail and the journal).
//!
//! ## The erasure receipt (`callgate-erasure-receipt/1`)
//! A JSON object `{"receipt": TEXT, "algorithm": "ECDSA-P256-SHA256", "signature": BASE64,
//! "certificate": PEM or null}`. `TEXT` is the signed statement, itself JSON: `type`,
//! `appliance`, `subject` (the subject's token, hex: no number in it), `key_generation`
//! (the destroyed key's; null when none was held), `record_ids`, `erased_at_ms`,
//! `erased_at` (RFC 3339), `by` (the console user) and `key_sha256` (SHA-256 of the signing
//! key's raw public key, base64). `signature` (ASN.1 DER, base64) is over the bytes of
//! `TEXT`, made with the appliance's uplink identity key (made and sealed under the KEK the
//! first time, as `uplink csr` does), so it verifies against the appliance's uplink
//! certificate ([`verify_receipt`]); `certificate` is that certificate when one is
//! installed. The store keeps the erasure with its receipt (sealed), for `show subject`.
//! An appliance without an uplink certificate still signs; the receipt verifies once the
//! fleet CA has certified that key.
//!
//! ## Where the erasure must go next (planned, not built)
//! - **The pair's peer.** Replication (`crate::replica`) sends the peer each record with
//!   its PII in clear over the sync channel, and the peer seals it under subject keys of
//!   its own: the peer must run the same erasure (by number: its own token and key) and
//!   sign its own receipt. Where: a request and its reply in `crate::replica::Msg`, beside
//!   `Config`/`ConfigReply` (whose `Answer` carries no receipt), asked like
//!   `Replicator::ask_peer`; on the same ordered channel as `Records`, so every record
//!   sent before the erasure is written on the peer before it erases. Order: erase here
//!   first, then ask the peer (a record of the subject written here before the local
//!   erasure is then already queued to the peer ahead of the request; asked the other way
//!   round, such a record could reach the peer after its erasure and give the subject a
//!   new key there with the old PII), then sign one receipt naming both appliances, their
//!   record ids and key generations, and store it (the store would need to take the
//!   erasure's record after the shredding: a second step). The peer needs no KEK for this
//!   (its record of the erasure is unsigned; the coordinator's receipt covers both). An
//!   unreachable peer: the receipt says it is pending, and the peer must be told at the
//!   next connection, as `Have` is.
//!   Records replicated after the erasure already carry the PII erased (the store reads
//!   them so).
//! - **The cloud.** Built in part: the dispatcher sends every change to the uplink as an
//!   event, and an erasure's event carries its receipt. Events are best effort (kept in
//!   memory, bounded, while the uplink is away; lost if the daemon stops first): a durable
//!   receipt needs the store's outbox (a receipt entry beside the records), not built; the
//!   receipt stays in the store and `show subject --json` gives it again. Records still in
//!   the outbox leave with the PII erased (the uplink reads them from the store when it
//!   sends them). Requests signed by the fleet key (like config documents) are not built.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use callgate_control::{ExportFormat, Response};
use callgate_store::{subject, Erasure, ErasureFacts, Store};
use callgate_vault::Kek;
use serde_json::json;

/// The receipt's statement type.
pub const RECEIPT_TYPE: &str = "callgate-erasure-receipt/1";

/// The number as the routes normalise it, or the refusal.
pub fn number(raw: &str) -> Result<String, Response> {
    callgate_router::normalize_number(raw.trim()).ok_or_else(|| {
        Response::err(
            "not a phone number in E.164 form (+ and 1 to 15 digits, the first not 0): \
             nothing was read or changed",
        )
    })
}

/// `show subject NUMBER`.
pub async fn show(store: &Arc<Store>, raw: &str) -> Response {
    let n = match number(raw) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let st = store.clone();
    let number = n.clone();
    let info = match tokio::task::spawn_blocking(move || st.subject_info(&number)).await {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => return Response::err(callgate_store::error_chain(&e)),
        Err(e) => return Response::err(format!("internal error: {e}")),
    };
    let mut text = format!("subject {n}\n  records: {}\n", info.records);
    match info.key_generation {
        Some(g) => text.push_str(&format!("  key: generation {g}\n")),
        None => text.push_str("  key: none held\n"),
    }
    for e in &info.erasures {
        text.push_str(&format!(
            "  erased at {} by {} on {} ({} records, key generation {})\n",
            crate::human::time(e.time_ms),
            e.by,
            e.appliance,
            e.record_ids.len(),
            e.key_generation
                .map_or_else(|| "none".to_owned(), |g| g.to_string()),
        ));
    }
    if info.records == 0 && info.key_generation.is_none() && info.erasures.is_empty() {
        text.push_str("  nothing is held about this number\n");
    }
    let erased_at = info.erasures.last().map(|e| e.time_ms);
    Response::ok(
        text,
        json!({"subject": n, "token": info.token, "records": info.records,
               "key_generation": info.key_generation, "erased_at_ms": erased_at,
               "erasures": info.erasures}),
    )
}

/// `request subject export NUMBER format json|csv`: the export is the reply's text; its
/// data says the format and counts.
pub async fn export(store: &Arc<Store>, raw: &str, format: ExportFormat) -> Response {
    let n = match number(raw) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let st = store.clone();
    let number = n.clone();
    let read = tokio::task::spawn_blocking(move || st.cdrs_of_subject(&number)).await;
    let all = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Response::err(callgate_store::error_chain(&e)),
        Err(e) => return Response::err(format!("internal error: {e}")),
    };
    let mut records = Vec::with_capacity(all.len());
    let mut unreadable = Vec::new();
    for r in all {
        match r {
            Ok(r) => records.push(r),
            Err(callgate_store::StoreError::Corrupt { id, .. }) => {
                unreadable.extend(id.parse::<u64>().ok());
            }
            Err(e) => {
                log::warn!(
                    "subject export: a record is unreadable: {}",
                    callgate_store::error_chain(&e)
                );
            }
        }
    }
    let text = match format {
        ExportFormat::Json => {
            let v = subject::export_json(&n, &records, &unreadable);
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        ExportFormat::Csv => subject::export_csv(&records),
    };
    Response::ok(
        text,
        json!({"subject": n, "format": format, "records": records.len(),
               "unreadable": unreadable}),
    )
}

/// `request subject erase NUMBER`, on the lifecycle task (it holds the KEK that opens the
/// uplink identity key): the erasure, with its receipt signed; `None` when nothing was held
/// about the number.
pub fn erase(
    state_dir: &Path,
    kek: &Kek,
    appliance: &str,
    store: &Store,
    number: &str,
    by: &str,
) -> Result<Option<Erasure>, String> {
    let key = crate::uplink::load_or_make_key(state_dir, kek)?;
    let certificate = std::fs::read_to_string(state_dir.join(crate::identity::UPLINK.cert_file))
        .ok()
        .and_then(|pem| {
            let leaf = callgate_pki::certificates(&pem).ok()?.into_iter().next()?;
            callgate_pki::check_key(&leaf, &key).ok()?;
            Some(pem)
        });
    let key_sha256 = b64(&callgate_pki::fingerprint(
        &key.public_key_raw().map_err(|e| e.to_string())?,
    ));
    let make = |facts: &ErasureFacts| -> Result<Erasure, String> {
        let time_ms = callgate_revisions::now_ms();
        let statement = json!({
            "type": RECEIPT_TYPE,
            "appliance": appliance,
            "subject": facts.token,
            "key_generation": facts.key_generation,
            "record_ids": facts.record_ids,
            "erased_at_ms": time_ms,
            "erased_at": utc(time_ms),
            "by": by,
            "key_sha256": key_sha256,
        })
        .to_string();
        let signature = key.sign(statement.as_bytes()).map_err(|e| e.to_string())?;
        let receipt = json!({
            "receipt": statement,
            "algorithm": "ECDSA-P256-SHA256",
            "signature": b64(&signature),
            "certificate": certificate,
        })
        .to_string();
        Ok(Erasure {
            time_ms,
            by: by.to_owned(),
            appliance: appliance.to_owned(),
            key_generation: facts.key_generation,
            record_ids: facts.record_ids.clone(),
            receipt,
        })
    };
    store
        .erase_subject_recorded(number, make)
        .map_err(|e| callgate_store::error_chain(&e))
}

/// The reply to an erasure.
pub fn erase_answer(number: &str, r: Result<Option<Erasure>, String>) -> Response {
    match r {
        Ok(Some(e)) => {
            let receipt: serde_json::Value =
                serde_json::from_str(&e.receipt).unwrap_or(serde_json::Value::Null);
            Response::ok(
                format!(
                    "erased: the key of {number} is destroyed; the caller number and name of \
                     {} records are unreadable from now on\nerasure receipt (signed with the \
                     uplink identity):\n{}\n",
                    e.record_ids.len(),
                    e.receipt
                ),
                json!({"subject": number, "erased_at_ms": e.time_ms, "record_ids": e.record_ids,
                       "key_generation": e.key_generation, "receipt": receipt}),
            )
        }
        Ok(None) => Response::ok(
            format!("nothing is held about {number}: nothing was erased\n"),
            json!({"subject": number, "record_ids": [], "receipt": null}),
        ),
        Err(e) => Response::err(format!("the erasure failed, nothing was erased: {e}")),
    }
}

/// Checks a receipt (as [`erase`] made it) against the DER certificate of the appliance's
/// uplink identity; its statement.
#[cfg_attr(not(test), allow(dead_code))]
pub fn verify_receipt(receipt: &str, cert_der: &[u8]) -> Result<serde_json::Value, String> {
    let r: serde_json::Value = serde_json::from_str(receipt).map_err(|e| e.to_string())?;
    let text = r["receipt"].as_str().ok_or("no statement")?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(r["signature"].as_str().ok_or("no signature")?)
        .map_err(|_| "the signature is not base64")?;
    callgate_pki::verify_signature(cert_der, text.as_bytes(), &sig).map_err(|e| e.to_string())?;
    let statement: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if statement["type"] != RECEIPT_TYPE {
        return Err("not an erasure receipt".into());
    }
    Ok(statement)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A time in UTC, RFC 3339.
fn utc(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_taken_as_the_routes_take_them() {
        assert_eq!(
            number("+1 (202) 555-0101").ok(),
            None,
            "spaces are not E.164"
        );
        assert_eq!(
            number("+1-202-555-0101").ok().as_deref(),
            Some("+12025550101")
        );
        assert_eq!(
            number(" +12025550101 ").ok().as_deref(),
            Some("+12025550101")
        );
        for bad in [
            "12025550101",
            "+0123",
            "+",
            "alice",
            "+1202555010199999",
            "",
        ] {
            let r = number(bad).unwrap_err();
            assert!(!r.ok);
            assert!(bad.len() < 3 || !r.text.contains(bad), "{bad}: echoed");
        }
    }

    #[test]
    fn an_erasure_destroys_the_key_and_its_receipt_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate().unwrap();
        let store = Store::open(dir.path().join("data"), kek.clone()).unwrap();
        let cdr = |caller: &str| callgate_store::Cdr {
            call_id: "c".into(),
            tracking_number: "+18005550100".into(),
            campaign: "x".into(),
            caller: callgate_store::Pii::new(caller),
            caller_name: Some(callgate_store::Pii::new("Ann")),
            destination: "sip:a@198.51.100.20".into(),
            invite_at: 1,
            ring_at: None,
            answer_at: None,
            end_at: Some(2),
            duration_ms: 0,
            disposition: callgate_store::Disposition::Answered,
            final_code: 200,
            appliance: "a".into(),
            ended_by: None,
            resume: None,
        };
        let a = store.append_cdr(&cdr("+12025550101")).unwrap();
        let b = store.append_cdr(&cdr("+12025550101")).unwrap();
        let other = store.append_cdr(&cdr("+12025550199")).unwrap();
        assert!(
            erase(dir.path(), &kek, "lab-a", &store, "+12025550100", "root")
                .unwrap()
                .is_none()
        );
        let e = erase(dir.path(), &kek, "lab-a", &store, "+12025550101", "root")
            .unwrap()
            .unwrap();
        assert_eq!(e.record_ids, vec![a, b]);
        assert!(store.get_cdr(a).unwrap().value.caller.reveal().is_none());
        assert!(store
            .get_cdr(other)
            .unwrap()
            .value
            .caller
            .reveal()
            .is_some());
        // A certificate for the uplink key: the receipt verifies against it.
        let key = crate::uplink::load_or_make_key(dir.path(), &kek).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lab-a");
        let cert = params.self_signed(&key.key_pair().unwrap()).unwrap();
        let statement = verify_receipt(&e.receipt, cert.der()).unwrap();
        assert_eq!(statement["appliance"], "lab-a");
        assert_eq!(statement["record_ids"], json!([a, b]));
        assert_eq!(statement["by"], "root");
        assert!(
            !e.receipt.contains("2025550101"),
            "no number in the receipt"
        );
        // Tampered: no.
        let forged = e
            .receipt
            .replace("\\\"by\\\":\\\"root\\\"", "\\\"by\\\":\\\"eve\\\"");
        assert_ne!(forged, e.receipt);
        assert!(verify_receipt(&forged, cert.der()).is_err());
        // Kept: the subject says when.
        let info = store.subject_info("+12025550101").unwrap();
        assert_eq!((info.records, info.key_generation), (0, None));
        assert_eq!(info.erasures, vec![e]);
    }
}

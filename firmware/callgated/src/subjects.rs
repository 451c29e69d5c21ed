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
//! ## The erasure receipt (`callgate-erasure-receipt/2`)
//! A JSON object `{"receipt": TEXT, "algorithm": "ECDSA-P256-SHA256", "signature": BASE64,
//! "certificate": PEM or null}`. `TEXT` is the signed statement, itself JSON: `type`,
//! `appliance`, `subject` (the subject's token, hex: no number in it), `key_generation`
//! (the destroyed key's; null when none was held), `record_ids`, `erased_at_ms`,
//! `erased_at` (RFC 3339), `by` (the console user), `key_sha256` (SHA-256 of the signing
//! key's raw public key, base64), `peer` (what the pair's peer did, [`PeerOutcome`]:
//! `{"status": "erased", "appliance", "erased_at_ms", "key_generation", "record_ids"}`,
//! `{"status": "nothing_held", "appliance"}` or `{"status": "unconfirmed", "appliance",
//! "reason"}`; null when not paired) and `erased_on` (the appliances where the subject's
//! key is confirmed gone). `signature` (ASN.1 DER, base64) is over the bytes of `TEXT`,
//! made with the appliance's uplink identity key (made and sealed under the KEK the first
//! time, as `uplink csr` does), so it verifies against the appliance's uplink certificate
//! ([`verify_receipt`]); `certificate` is that certificate when one is installed. The
//! store keeps the erasure with its receipt (sealed), for `show subject`. An appliance
//! without an uplink certificate still signs; the receipt verifies once the fleet CA has
//! certified that key.
//!
//! ## On a pair
//! Replication (`crate::replica`) sends the peer each record with its PII in clear over the
//! sync channel, and the peer seals it under subject keys of its own, so the peer runs the
//! same erasure (by number: its own token and key). In this order (`dispatch::
//! erase_subject`): a paired appliance whose peer is not connected refuses, nothing
//! erased; [`erase`] here (the kept receipt says the peer is `unconfirmed`: "not asked
//! yet"); the record writer's flush (every record handed to it before now stored and
//! sent to the peer, at most 2 s: `calls::RecordsInFlight::flush`); then `Msg::Erase` to
//! the peer, on the same ordered channel as `Records`, so every record stored here before
//! the erasure is written on the peer first (asked the other way round, a
//! record of the subject could reach the peer after its erasure and give the subject a new
//! key there with the old PII); the peer checks the number as the console does, erases
//! ([`erase_for_peer`]: its record of the erasure is unsigned, by `USER on ASKER`) and
//! answers what it erased; then [`finish`] signs the receipt naming both and keeps it in
//! place of the first. If the link drops or the peer does not answer in time, the receipt
//! says `unconfirmed` with the reason and the reply fails; asked again, the request erases
//! on the peer (nothing held here any more: the receipt then lists no records here).
//! Why refuse rather than queue an erasure for a peer that is away: a queued erasure must
//! keep the number (the peer's token differs) on disk until the peer is back, and a peer
//! away may be active meanwhile (a partition), taking new calls of the subject.
//! Limitation: if the record writer is more than 2 s behind, a record of the subject it
//! stored before the erasure can reach the peer after it, under a new key there (logged).
//!
//! ## The cloud
//! The dispatcher raises every erasure that made a receipt as the event `subject erased`
//! (`detail.receipt`), kept in the store's outbox until the broker has it (durable across
//! a broker outage and a daemon restart; no number in it). Records still in the outbox
//! leave with the PII erased (the uplink reads them from the store when it sends them).
//! The cloud's own subject requests, signed by the fleet key, come through
//! `crate::cloud_subjects` into the same dispatcher, so they run this module's code
//! with `by` = `cloud:REQUESTER`.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use callgate_control::{ExportFormat, Response};
use callgate_store::{subject, Erasure, ErasureFacts, PeerOutcome, Store};
use callgate_uplink::ClientKey;
use callgate_vault::Kek;
use serde_json::json;

/// The receipt's statement type.
pub const RECEIPT_TYPE: &str = "callgate-erasure-receipt/2";

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

/// The uplink identity that signs receipts (made and sealed under the KEK the first time).
struct Signer {
    key: ClientKey,
    certificate: Option<String>,
    key_sha256: String,
}

impl Signer {
    fn load(state_dir: &Path, kek: &Kek) -> Result<Signer, String> {
        let key = crate::uplink::load_or_make_key(state_dir, kek)?;
        let certificate =
            std::fs::read_to_string(state_dir.join(crate::identity::UPLINK.cert_file))
                .ok()
                .and_then(|pem| {
                    let leaf = callgate_pki::certificates(&pem).ok()?.into_iter().next()?;
                    callgate_pki::check_key(&leaf, &key).ok()?;
                    Some(pem)
                });
        let key_sha256 = b64(&callgate_pki::fingerprint(
            &key.public_key_raw().map_err(|e| e.to_string())?,
        ));
        Ok(Signer {
            key,
            certificate,
            key_sha256,
        })
    }

    /// The signed receipt of `e` (subject token `token`, hex).
    fn receipt(&self, e: &Erasure, token: &str) -> Result<String, String> {
        let mut erased_on = vec![e.appliance.clone()];
        if let Some(p) = e.peer.as_ref().filter(|p| p.done()) {
            erased_on.push(peer_name(p).to_owned());
        }
        let statement = json!({
            "type": RECEIPT_TYPE,
            "appliance": e.appliance,
            "subject": token,
            "key_generation": e.key_generation,
            "record_ids": e.record_ids,
            "erased_at_ms": e.time_ms,
            "erased_at": utc(e.time_ms),
            "by": e.by,
            "key_sha256": self.key_sha256,
            "peer": e.peer,
            "erased_on": erased_on,
        })
        .to_string();
        let signature = self
            .key
            .sign(statement.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(json!({
            "receipt": statement,
            "algorithm": "ECDSA-P256-SHA256",
            "signature": b64(&signature),
            "certificate": self.certificate,
        })
        .to_string())
    }
}

fn peer_name(p: &PeerOutcome) -> &str {
    match p {
        PeerOutcome::Erased { appliance, .. }
        | PeerOutcome::NothingHeld { appliance }
        | PeerOutcome::Unconfirmed { appliance, .. } => appliance,
    }
}

/// `request subject erase NUMBER`, on the lifecycle task (it holds the KEK that opens the
/// uplink identity key): the erasure here, with its receipt signed; `None` when nothing
/// was held about the number. With `peer` (the pair's peer, by name), the receipt kept by
/// this first step says the peer is not confirmed yet: [`finish`] replaces it once the
/// peer answered.
pub fn erase(
    state_dir: &Path,
    kek: &Kek,
    appliance: &str,
    store: &Store,
    number: &str,
    by: &str,
    peer: Option<&str>,
) -> Result<Option<Erasure>, String> {
    let signer = Signer::load(state_dir, kek)?;
    let make = |facts: &ErasureFacts| -> Result<Erasure, String> {
        let mut e = Erasure {
            time_ms: callgate_revisions::now_ms(),
            by: by.to_owned(),
            appliance: appliance.to_owned(),
            key_generation: facts.key_generation,
            record_ids: facts.record_ids.clone(),
            receipt: String::new(),
            peer: peer.map(|p| PeerOutcome::Unconfirmed {
                appliance: p.to_owned(),
                reason: "not asked yet".into(),
            }),
        };
        e.receipt = signer.receipt(&e, &facts.token)?;
        Ok(e)
    };
    let erased = store
        .erase_subject_recorded(number, make)
        .map_err(|e| callgate_store::error_chain(&e))?;
    scrub_typed_copies(store, number);
    Ok(erased)
}

/// No typed copy of an erased number stays readable: console history lines and audit
/// details holding it (a line the console did not recognise, so did not withhold the
/// number from, or one sent raw) are rewritten with every number in them as its keyed tag
/// (`callgate_cdr::scrub`). Runs after each erasure here and on a pair's peer, whether or
/// not a key was held (a typed number is PII of its own). A failure is logged: the
/// erasure itself stands.
fn scrub_typed_copies(store: &Store, number: &str) {
    let holds = |l: &str| callgate_cdr::holds_number(l, number);
    let redact = |l: &str| callgate_cdr::scrub(l).into_owned();
    match store.scrub_typed(&holds, &redact) {
        Ok((0, 0)) => {}
        Ok((lines, entries)) => log::info!(
            "erasure: {lines} console history lines and {entries} audit entries held the \
             number: rewritten without it"
        ),
        Err(e) => log::error!(
            "erasure: typed copies of the number not rewritten: {}",
            callgate_store::error_chain(&e)
        ),
    }
}

/// The second step of a pair's erasure, once the peer answered (or did not): the receipt
/// naming both appliances, signed and kept in place of the first step's. When nothing was
/// held here (`first` is `None`) but the peer erased (or may hold) something, a record of
/// its own; `None` when neither held anything.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    state_dir: &Path,
    kek: &Kek,
    appliance: &str,
    store: &Store,
    number: &str,
    by: &str,
    first: Option<Erasure>,
    peer: PeerOutcome,
) -> Result<Option<Erasure>, String> {
    let mut e = match first {
        Some(e) => e,
        None if matches!(peer, PeerOutcome::NothingHeld { .. }) => return Ok(None),
        None => Erasure {
            time_ms: callgate_revisions::now_ms(),
            by: by.to_owned(),
            appliance: appliance.to_owned(),
            key_generation: None,
            record_ids: Vec::new(),
            receipt: String::new(),
            peer: None,
        },
    };
    e.peer = Some(peer);
    let signer = Signer::load(state_dir, kek)?;
    e.receipt = signer.receipt(&e, &store.subject_token(number).to_hex())?;
    store
        .put_erasure(number, &e)
        .map_err(|e| callgate_store::error_chain(&e))?;
    Ok(Some(e))
}

/// What the peer of a pair reports of an erasure it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerErased {
    pub erased_at_ms: u64,
    pub key_generation: Option<u64>,
    pub record_ids: Vec<u64>,
}

/// The peer's side: the pair's other appliance (`asker`, by its configured name) asked,
/// over the authenticated sync channel, to erase `number` (for its console user `by`).
/// The number is checked as the console checks it; nothing is signed here (the asker's
/// receipt names this appliance and what it erased). `None`: nothing was held.
pub fn erase_for_peer(
    store: &Store,
    me: &str,
    asker: &str,
    raw: &str,
    by: &str,
) -> Result<Option<PeerErased>, String> {
    let n = number(raw).map_err(|r| r.text)?;
    // A peer's word is shown on this console: a plain user name, or a placeholder.
    let by = if !by.is_empty()
        && by.len() <= 64
        && by
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        by
    } else {
        "?"
    };
    let make = |facts: &ErasureFacts| -> Result<Erasure, String> {
        Ok(Erasure {
            time_ms: callgate_revisions::now_ms(),
            by: format!("{by} on {asker}"),
            appliance: me.to_owned(),
            key_generation: facts.key_generation,
            record_ids: facts.record_ids.clone(),
            receipt: String::new(),
            peer: None,
        })
    };
    let e = store
        .erase_subject_recorded(&n, make)
        .map_err(|e| callgate_store::error_chain(&e))?;
    scrub_typed_copies(store, &n);
    Ok(e.map(|e| PeerErased {
        erased_at_ms: e.time_ms,
        key_generation: e.key_generation,
        record_ids: e.record_ids,
    }))
}

/// The reply to an erasure.
pub fn erase_answer(number: &str, r: Result<Option<Erasure>, String>) -> Response {
    match r {
        Ok(Some(e)) => {
            let receipt: serde_json::Value =
                serde_json::from_str(&e.receipt).unwrap_or(serde_json::Value::Null);
            let data = json!({"subject": number, "erased_at_ms": e.time_ms,
                              "record_ids": e.record_ids, "key_generation": e.key_generation,
                              "peer": e.peer, "receipt": receipt});
            let here = format!(
                // Not the number: when the peer did not confirm, this first line is the
                // refusal the audit trail and the journal keep.
                "erased on {}: the subject's key is destroyed; the caller number and name \
                 of {} records are unreadable from now on\n",
                e.appliance,
                e.record_ids.len()
            );
            let (ok, there) = match &e.peer {
                None => (true, String::new()),
                Some(PeerOutcome::Erased {
                    appliance,
                    record_ids,
                    ..
                }) => (
                    true,
                    format!(
                        "erased on {appliance} (the pair's peer): its key is destroyed; {} \
                         records there are unreadable from now on\n",
                        record_ids.len()
                    ),
                ),
                Some(PeerOutcome::NothingHeld { appliance }) => (
                    true,
                    format!("{appliance} (the pair's peer) held nothing about {number}\n"),
                ),
                Some(PeerOutcome::Unconfirmed { appliance, reason }) => (
                    false,
                    format!(
                        "NOT CONFIRMED on {appliance} (the pair's peer): {reason}; it may still \
                         hold the subject: ask again once `show pair` says connected (the \
                         request then erases there)\n"
                    ),
                ),
            };
            Response {
                ok,
                text: format!(
                    "{here}{there}erasure receipt (signed with the uplink identity):\n{}\n",
                    e.receipt
                ),
                data,
                more: false,
            }
        }
        Ok(None) => Response::ok(
            format!("nothing is held about {number}: nothing was erased\n"),
            json!({"subject": number, "record_ids": [], "receipt": null}),
        ),
        Err(e) => Response::err(format!("the erasure failed, nothing was erased: {e}")),
    }
}

/// The reply when a pair's erasure happened (here: `erased_here`, and as `peer` says) but
/// its final receipt could not be signed or kept: never "nothing was erased".
pub fn finish_failed(erased_here: bool, peer: &PeerOutcome, e: &str) -> Response {
    let here = if erased_here {
        "erased on this appliance (its receipt, kept, says the peer is unconfirmed)"
    } else {
        "nothing was held on this appliance"
    };
    let there = match peer {
        PeerOutcome::Erased {
            appliance,
            record_ids,
            ..
        } => format!("erased on {appliance} ({} records)", record_ids.len()),
        PeerOutcome::NothingHeld { appliance } => format!("{appliance} held nothing"),
        PeerOutcome::Unconfirmed { appliance, reason } => {
            format!("NOT CONFIRMED on {appliance}: {reason}")
        }
    };
    Response::err(format!(
        "{here}; {there}; but the receipt naming both could not be signed or kept: {e}"
    ))
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
            caller_name: Some(callgate_store::Pii::new("Ann")),
            ..record(caller)
        };
        let a = store.append_cdr(&cdr("+12025550101")).unwrap();
        let b = store.append_cdr(&cdr("+12025550101")).unwrap();
        let other = store.append_cdr(&cdr("+12025550199")).unwrap();
        assert!(erase(
            dir.path(),
            &kek,
            "lab-a",
            &store,
            "+12025550100",
            "root",
            None
        )
        .unwrap()
        .is_none());
        let e = erase(
            dir.path(),
            &kek,
            "lab-a",
            &store,
            "+12025550101",
            "root",
            None,
        )
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
        let cert = uplink_cert(dir.path(), &kek);
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

    /// A certificate for the appliance's uplink key (CN lab-a): receipts verify against it.
    fn uplink_cert(state_dir: &Path, kek: &Kek) -> rcgen::Certificate {
        let key = crate::uplink::load_or_make_key(state_dir, kek).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lab-a");
        params.self_signed(&key.key_pair().unwrap()).unwrap()
    }

    fn record(caller: &str) -> callgate_store::Cdr {
        callgate_store::Cdr {
            call_id: "c".into(),
            tracking_number: "+18005550100".into(),
            campaign: "x".into(),
            caller: callgate_store::Pii::new(caller),
            caller_name: None,
            destination: "sip:a@198.51.100.20".into(),
            invite_at: 1,
            ring_at: None,
            answer_at: None,
            end_at: Some(2),
            duration_ms: 0,
            disposition: callgate_store::Disposition::Answered,
            final_code: 200,
            appliance: "lab-a".into(),
            ended_by: None,
            resume: None,
        }
    }

    #[test]
    fn a_pairs_erasure_keeps_one_receipt_naming_both_or_saying_unconfirmed() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate().unwrap();
        let store = Store::open(dir.path().join("data"), kek.clone()).unwrap();
        let id = store.append_cdr(&record("+12025550101")).unwrap();
        let first = erase(
            dir.path(),
            &kek,
            "lab-a",
            &store,
            "+12025550101",
            "root",
            Some("lab-b"),
        )
        .unwrap()
        .unwrap();
        // Until the peer answers, the kept receipt says so.
        assert!(
            matches!(&first.peer, Some(PeerOutcome::Unconfirmed { appliance, .. }) if appliance == "lab-b")
        );
        let unconfirmed = erase_answer("+12025550101", Ok(Some(first.clone())));
        assert!(!unconfirmed.ok);
        // The first line of a failed reply is what the audit trail and the journal keep.
        let first_line = unconfirmed.text.lines().next().unwrap_or("");
        assert!(first_line.starts_with("erased on lab-a"), "{first_line}");
        assert!(!first_line.contains("2025550101"), "{first_line}");
        let peer = PeerOutcome::Erased {
            appliance: "lab-b".into(),
            erased_at_ms: 5,
            key_generation: Some(9),
            record_ids: vec![id],
        };
        let done = finish(
            dir.path(),
            &kek,
            "lab-a",
            &store,
            "+12025550101",
            "root",
            Some(first.clone()),
            peer.clone(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(done.time_ms, first.time_ms);
        let info = store.subject_info("+12025550101").unwrap();
        assert_eq!(
            info.erasures,
            vec![done.clone()],
            "the first step's record replaced"
        );
        let cert = uplink_cert(dir.path(), &kek);
        let st = verify_receipt(&done.receipt, cert.der()).unwrap();
        assert_eq!(st["erased_on"], json!(["lab-a", "lab-b"]));
        assert_eq!(st["peer"]["status"], "erased");
        assert_eq!(st["peer"]["record_ids"], json!([id]));
        let r = erase_answer("+12025550101", Ok(Some(done)));
        assert!(r.ok && r.text.contains("erased on lab-b"), "{}", r.text);

        // Nothing held here, nothing on the peer: no receipt. Nothing here, the peer did
        // not confirm: a receipt that says so, and a failed reply.
        let nothing = PeerOutcome::NothingHeld {
            appliance: "lab-b".into(),
        };
        assert!(finish(
            dir.path(),
            &kek,
            "lab-a",
            &store,
            "+12025550102",
            "root",
            None,
            nothing
        )
        .unwrap()
        .is_none());
        let lost = PeerOutcome::Unconfirmed {
            appliance: "lab-b".into(),
            reason: "the sync link dropped".into(),
        };
        let e = finish(
            dir.path(),
            &kek,
            "lab-a",
            &store,
            "+12025550103",
            "root",
            None,
            lost,
        )
        .unwrap()
        .unwrap();
        let st = verify_receipt(&e.receipt, cert.der()).unwrap();
        assert_eq!(
            st["erased_on"],
            json!(["lab-a"]),
            "never both when one is not confirmed"
        );
        assert_eq!(st["peer"]["status"], "unconfirmed");
        let r = erase_answer("+12025550103", Ok(Some(e)));
        assert!(
            !r.ok && r.text.contains("NOT CONFIRMED on lab-b"),
            "{}",
            r.text
        );
    }

    #[test]
    fn the_peers_side_checks_the_number_and_the_askers_word() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Kek::generate().unwrap()).unwrap();
        let id = store.append_cdr(&record("+12025550101")).unwrap();
        for bad in ["12025550101", "+1 202", "alice", ""] {
            assert!(
                erase_for_peer(&store, "lab-b", "lab-a", bad, "root").is_err(),
                "{bad}"
            );
        }
        assert_eq!(store.subject_info("+12025550101").unwrap().records, 1);
        let e = erase_for_peer(&store, "lab-b", "lab-a", "+12025550101", "r\x1b[2Joot")
            .unwrap()
            .unwrap();
        assert_eq!(e.record_ids, vec![id]);
        let info = store.subject_info("+12025550101").unwrap();
        assert_eq!(info.erasures[0].by, "? on lab-a");
        assert_eq!(info.erasures[0].appliance, "lab-b");
        assert!(store.get_cdr(id).unwrap().value.caller.reveal().is_none());
        assert!(
            erase_for_peer(&store, "lab-b", "lab-a", "+12025550101", "root")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_failed_final_receipt_never_says_nothing_was_erased() {
        let peer = PeerOutcome::Erased {
            appliance: "lab-b".into(),
            erased_at_ms: 1,
            key_generation: None,
            record_ids: vec![2, 4],
        };
        let r = finish_failed(true, &peer, "disk full");
        assert!(!r.ok);
        assert!(r.text.starts_with("erased on this appliance"), "{}", r.text);
        assert!(r.text.contains("erased on lab-b (2 records)") && r.text.contains("disk full"));
        assert!(!r.text.contains("nothing was erased"));
    }
}

//! Subject requests from the cloud (`subjects/request`, answered on `subjects/reply`):
//! verified, then run through the console's own dispatcher, as a console request of the
//! admin `cloud:REQUESTER`.
//!
//! ## Verification (`callgate_uplink::signed`)
//! In this order, and nothing changes until all pass: the form and the appliance named,
//! the fleet key's signature under the request's own domain (`callgate-subject/1`, the
//! verifier config documents go through: `signed::verify_signed`), the issue time within
//! [`WINDOW`] of this appliance's clock either way, and a request id never answered
//! before ([`Answered`], kept in `<state>/cloud-subject-requests`, written durably before
//! the request runs, so a crash never runs it twice). A refused request is audited through
//! the dispatcher's refusal path (user `cloud`, action `cloud subject request`, the
//! reason) and answered with the reason; the reason never repeats the number.
//!
//! ## The same path as the console's
//! A request that passes becomes `show subject` (access), `request subject export`
//! (export) or `request subject erase` (erase) and goes to the control socket's handler
//! ([`crate::dispatch::handler`]) with the peer `cloud:REQUESTER` in the admin role: the
//! same number checks, audit entries ("started", then the result), the pair's erasure
//! rules (a paired appliance whose peer is away refuses; the peer erases too) and the
//! erasure's receipt (its `by` is `cloud:REQUESTER`), with the durable `subject erased`
//! event the dispatcher raises.
//!
//! ## The reply
//! `{"appliance", "request_id", "kind", "ok", "result", "detail", …}` with, for access,
//! `text` and `data` (as `show subject` gives them); for an export, `format`, `records`
//! and `export` (the JSON or CSV text with its field meanings, as the console gives it);
//! for an erasure, `record_ids`, `key_generation`, `peer` and `receipt` (the signed
//! receipt, as the console's). `result` is `answered`, `erased`, `nothing held`, `failed`
//! or `refused`.
//! An erasure's reply holds no number (the cloud has the request id) and goes through the
//! store's outbox, durably, like its event; access and export replies carry the subject's
//! data and stay in memory (never on disk; lost if the daemon stops before the broker has
//! them: the cloud asks again, with a new request id); refusals stay in memory too (an
//! unsigned flood must not fill the disk).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callgate_control::{Call, ExportFormat, Handler, Peer, Reply, Request, Response, Role};
use callgate_uplink::signed::{check_window, verify_signed, Refusal, SubjectKind, SubjectRequest};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::identity::write_durably;
use crate::lifecycle::Phase;

/// How far a request's issue time may be from this appliance's clock, either way.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Where the ids of answered requests are kept (with their issue times).
pub const ANSWERED_FILE: &str = "cloud-subject-requests";
/// At most this many answered ids are kept (those of requests issued within the window);
/// past it, requests are refused until older ones leave the window.
pub const MAX_ANSWERED: usize = 10_000;
/// The audit trail's action for requests refused before they ran.
pub const ACTION: &str = "cloud subject request";

/// The ids of the requests answered, by id: their issue times.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answered(BTreeMap<String, u64>);

impl Answered {
    /// Read from `path` (missing or unreadable lines: none).
    pub fn load(path: &Path) -> Answered {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Answered(
            text.lines()
                .filter_map(|l| {
                    let (id, t) = l.split_once(' ')?;
                    Some((id.to_owned(), t.parse().ok()?))
                })
                .collect(),
        )
    }

    fn text(&self) -> String {
        self.0.iter().map(|(id, t)| format!("{id} {t}\n")).collect()
    }

    /// Refuses an id answered before; else records it (forgetting those issued outside
    /// the window of `now_ms`: the window refuses them anyway).
    pub fn admit(&mut self, r: &SubjectRequest, now_ms: u64) -> Result<(), Refusal> {
        if self.0.contains_key(&r.request_id) {
            return Err(Refusal::Answered(r.request_id.clone()));
        }
        let w = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        self.0.retain(|_, t| t.abs_diff(now_ms) <= w);
        if self.0.len() >= MAX_ANSWERED {
            return Err(Refusal::Invalid(format!(
                "over {MAX_ANSWERED} requests within the window: ask again later"
            )));
        }
        self.0.insert(r.request_id.clone(), r.issued_ms);
        Ok(())
    }
}

/// Verifies `raw` for appliance `name` under `fleet_key` at `now_ms`, and admits its id
/// into `answered` (kept at `path` before it counts). Nothing else changes when it fails.
pub fn verify(
    raw: &[u8],
    name: &str,
    fleet_key: Option<&[u8; 32]>,
    now_ms: u64,
    path: &Path,
) -> Result<SubjectRequest, Refusal> {
    let r: SubjectRequest = verify_signed(raw, name, fleet_key)?;
    check_window(r.issued_ms, now_ms, WINDOW)?;
    let mut answered = Answered::load(path);
    answered.admit(&r, now_ms)?;
    write_durably(path, answered.text().as_bytes(), 0o600).map_err(Refusal::Invalid)?;
    Ok(r)
}

/// The console request a verified request becomes.
pub fn request_of(r: &SubjectRequest) -> Request {
    let number = r.number.clone();
    match r.kind {
        SubjectKind::Access => Request::ShowSubject { number },
        SubjectKind::Export => Request::SubjectExport {
            number,
            format: if r.format.as_deref() == Some("csv") {
                ExportFormat::Csv
            } else {
                ExportFormat::Json
            },
        },
        SubjectKind::Erase => Request::SubjectErase { number },
    }
}

/// The console peer of the cloud's requester (an admin; no uid of this machine's).
pub fn peer(user: String) -> Peer {
    Peer {
        uid: u32::MAX,
        pid: None,
        user,
        role: Some(Role::Admin),
        loginuid: None,
        session: None,
        conn: u64::MAX,
    }
}

/// The reply to a verified request, from the dispatcher's response; and whether it may
/// be kept on disk (it holds no number, no name).
pub fn reply(appliance: &str, r: &SubjectRequest, resp: &Response) -> (Value, bool) {
    let mut doc = json!({
        "appliance": appliance,
        "request_id": r.request_id,
        "kind": r.kind.as_str(),
        "ok": resp.ok,
        "time_ms": callgate_revisions::now_ms(),
    });
    let d = &resp.data;
    match r.kind {
        SubjectKind::Access => {
            doc["result"] = if resp.ok { "answered" } else { "failed" }.into();
            doc["text"] = resp.text.clone().into();
            doc["data"] = d.clone();
            (doc, false)
        }
        SubjectKind::Export => {
            doc["result"] = if resp.ok { "answered" } else { "failed" }.into();
            doc["format"] = r.format.clone().into();
            if resp.ok {
                doc["records"] = d["records"].clone();
                doc["unreadable"] = d["unreadable"].clone();
                doc["export"] = resp.text.clone().into();
            } else {
                doc["detail"] = resp.text.clone().into();
            }
            (doc, false)
        }
        SubjectKind::Erase => {
            let held = !d["receipt"].is_null();
            doc["result"] = match (resp.ok, held) {
                (true, true) => "erased",
                (true, false) => "nothing held",
                (false, _) => "failed",
            }
            .into();
            // What the console says, without the number (the cloud has the request id).
            let mut detail = resp.text.lines().next().unwrap_or("").to_owned();
            if !resp.ok {
                detail = resp
                    .text
                    .split("erasure receipt")
                    .next()
                    .unwrap_or("")
                    .trim_end()
                    .to_owned();
            }
            if !r.number.is_empty() {
                detail = detail.replace(&r.number, "the subject");
            }
            doc["detail"] = detail.into();
            for k in ["record_ids", "key_generation", "peer", "receipt"] {
                doc[k] = d[k].clone();
            }
            (doc, true)
        }
    }
}

/// The reply to a refused request (in memory only).
pub fn refused(appliance: &str, raw: &[u8], why: &Refusal) -> Value {
    let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let id = v["request_id"]
        .as_str()
        .filter(|s| callgate_uplink::signed::plain_name(s));
    let kind = v["kind"]
        .as_str()
        .filter(|k| ["access", "export", "erase"].contains(k));
    json!({
        "appliance": appliance,
        "request_id": id,
        "kind": kind,
        "ok": false,
        "result": "refused",
        "detail": why.to_string(),
        "time_ms": callgate_revisions::now_ms(),
    })
}

/// Serves the cloud's subject requests, one at a time, through `handler` (the control
/// socket's), while the daemon runs.
pub fn spawn(
    mut rx: mpsc::Receiver<Vec<u8>>,
    handler: Handler,
    phase: watch::Receiver<Arc<Phase>>,
    state_dir: PathBuf,
) {
    tokio::spawn(async move {
        while let Some(raw) = rx.recv().await {
            let p = phase.borrow().clone();
            let Phase::Running { config, uplink, .. } = &*p else {
                continue;
            };
            let cfg = config.config().borrow().clone();
            let name = cfg.appliance.name.to_string();
            let key = cfg.uplink.as_ref().and_then(|u| u.fleet_key());
            let path = state_dir.join(ANSWERED_FILE);
            let now = callgate_revisions::now_ms();
            let (n, raw2, path2) = (name.clone(), raw.clone(), path.clone());
            let checked =
                tokio::task::spawn_blocking(move || verify(&raw2, &n, key.as_ref(), now, &path2))
                    .await
                    .unwrap_or_else(|e| Err(Refusal::Invalid(format!("internal error: {e}"))));
            let r = match checked {
                Ok(r) => r,
                Err(why) => {
                    log::warn!("uplink: a subject request from the cloud is refused: {why}");
                    let call = Call::Refused {
                        what: ACTION.to_owned(),
                        why: why.to_string(),
                    };
                    let _ = handler(peer("cloud".into()), call).await;
                    uplink.publish("subjects/reply", &refused(&name, &raw, &why));
                    continue;
                }
            };
            log::info!(
                "uplink: subject request {} ({}) from the cloud, asked by {}",
                r.request_id,
                r.kind.as_str(),
                r.requester
            );
            let who = format!("cloud:{}", r.requester);
            let resp = match handler(peer(who), Call::Request(request_of(&r))).await {
                Reply::One(resp) => resp,
                Reply::Stream(_) => Response::err("internal error: a streamed answer"),
            };
            let (doc, durable) = reply(&name, &r, &resp);
            if durable {
                uplink.publish_durably("subjects/reply", doc).await;
            } else {
                uplink.publish("subjects/reply", &doc);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const NUMBER: &str = "+14155550177";

    fn fleet() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn signed(k: &Ed25519KeyPair, id: &str, kind: SubjectKind, issued_ms: u64) -> Vec<u8> {
        let format = (kind == SubjectKind::Export).then_some("json");
        let bytes = SubjectRequest::bytes_to_sign(
            "lab-a",
            id,
            kind,
            format,
            NUMBER,
            issued_ms,
            "privacy-desk",
        );
        serde_json::to_vec(&json!({
            "appliance": "lab-a", "request_id": id, "kind": kind, "format": format,
            "number": NUMBER, "issued_ms": issued_ms, "requester": "privacy-desk",
            "signature": base64::engine::general_purpose::STANDARD.encode(k.sign(&bytes).as_ref()),
        }))
        .unwrap()
    }

    #[test]
    fn a_request_runs_once_within_the_window_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ANSWERED_FILE);
        let k = fleet();
        let pk: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        let now = 1_800_000_000_000;
        // Forged, another key, stale, from the future: refused, nothing kept.
        let rogue = signed(&fleet(), "r-1", SubjectKind::Erase, now);
        assert_eq!(
            verify(&rogue, "lab-a", Some(&pk), now, &path).unwrap_err(),
            Refusal::BadSignature
        );
        for t in [now - 601_000, now + 601_000] {
            let stale = signed(&k, "r-2", SubjectKind::Erase, t);
            assert!(matches!(
                verify(&stale, "lab-a", Some(&pk), now, &path),
                Err(Refusal::Stale { .. })
            ));
        }
        assert!(verify(
            &signed(&k, "r-1", SubjectKind::Erase, now),
            "lab-b",
            Some(&pk),
            now,
            &path
        )
        .is_err());
        assert!(!path.exists(), "nothing kept for a refused request");
        // Good: runs; the same id again, even re-signed later: a replay.
        let good = signed(&k, "r-1", SubjectKind::Erase, now);
        let r = verify(&good, "lab-a", Some(&pk), now, &path).unwrap();
        assert_eq!(
            request_of(&r),
            Request::SubjectErase {
                number: NUMBER.into()
            }
        );
        assert_eq!(
            verify(&good, "lab-a", Some(&pk), now + 1, &path).unwrap_err(),
            Refusal::Answered("r-1".into())
        );
        let again = signed(&k, "r-1", SubjectKind::Access, now + 5);
        assert_eq!(
            verify(&again, "lab-a", Some(&pk), now + 5, &path).unwrap_err(),
            Refusal::Answered("r-1".into())
        );
        // Kept across a restart (the file), forgotten once outside the window.
        assert!(Answered::load(&path).0.contains_key("r-1"));
        let later = now + 2 * 601_000;
        let r3 = signed(&k, "r-3", SubjectKind::Export, later);
        verify(&r3, "lab-a", Some(&pk), later, &path).unwrap();
        let kept = Answered::load(&path);
        assert!(!kept.0.contains_key("r-1") && kept.0.contains_key("r-3"));
    }

    fn req(kind: SubjectKind) -> SubjectRequest {
        SubjectRequest {
            appliance: "lab-a".into(),
            request_id: "r-9".into(),
            kind,
            format: (kind == SubjectKind::Export).then(|| "csv".to_owned()),
            number: NUMBER.into(),
            issued_ms: 1,
            requester: "privacy-desk".into(),
            signature: String::new(),
        }
    }

    #[test]
    fn an_erasures_reply_holds_no_number_and_may_be_kept_an_exports_may_not() {
        let e = crate::subjects::erase_answer(
            NUMBER,
            Ok(Some(callgate_store::Erasure {
                time_ms: 5,
                by: "cloud:privacy-desk".into(),
                appliance: "lab-a".into(),
                key_generation: Some(3),
                record_ids: vec![1, 2],
                receipt: "{\"receipt\":\"{}\"}".into(),
                peer: Some(callgate_store::PeerOutcome::Unconfirmed {
                    appliance: "lab-b".into(),
                    reason: "the sync link dropped".into(),
                }),
            })),
        );
        let (doc, durable) = reply("lab-a", &req(SubjectKind::Erase), &e);
        assert!(durable);
        assert!(!doc.to_string().contains("4155550177"), "{doc}");
        assert_eq!(doc["result"], "failed");
        assert_eq!(doc["record_ids"], json!([1, 2]));
        assert!(
            doc["detail"]
                .as_str()
                .unwrap()
                .contains("NOT CONFIRMED on lab-b"),
            "{doc}"
        );
        let none = crate::subjects::erase_answer(NUMBER, Ok(None));
        let (doc, _) = reply("lab-a", &req(SubjectKind::Erase), &none);
        assert_eq!(doc["result"], "nothing held");
        assert!(!doc.to_string().contains("4155550177"), "{doc}");

        let export = Response::ok(
            format!("id,caller\r\n1,{NUMBER}\r\n"),
            json!({"subject": NUMBER, "records": 1, "unreadable": []}),
        );
        let (doc, durable) = reply("lab-a", &req(SubjectKind::Export), &export);
        assert!(!durable, "a subject's data never goes to disk");
        assert_eq!(
            (doc["result"].as_str(), doc["records"].as_u64()),
            (Some("answered"), Some(1))
        );
        assert!(doc["export"].as_str().unwrap().contains(NUMBER));
        let (_, durable) = reply("lab-a", &req(SubjectKind::Access), &export);
        assert!(!durable);
    }

    #[test]
    fn a_refusal_names_the_request_when_it_can_and_never_the_number() {
        let raw = serde_json::to_vec(&json!({"request_id": "r-1", "kind": "erase",
            "number": NUMBER}))
        .unwrap();
        let doc = refused("lab-a", &raw, &Refusal::BadSignature);
        assert_eq!(
            (doc["request_id"].as_str(), doc["result"].as_str()),
            (Some("r-1"), Some("refused"))
        );
        assert!(!doc.to_string().contains("4155550177"));
        let doc = refused("lab-a", b"\xff not json", &Refusal::Malformed("x".into()));
        assert!(doc["request_id"].is_null() && doc["kind"].is_null());
        let raw = serde_json::to_vec(&json!({"request_id": "r\n1\u{1b}[2J"})).unwrap();
        assert!(refused("lab-a", &raw, &Refusal::BadSignature)["request_id"].is_null());
    }
}

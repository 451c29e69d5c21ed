//! `show calls`, `show cdrs [--last N]` (streamed, [`stream_cdrs`]), `show sip stats`: text
//! for the console, JSON for tools and tests.
//!
//! Masking: `show calls` shows every caller masked (the proxy hands out no more:
//! [`callgate_cdr::mask_number`]); `show cdrs` shows an operator the caller's number and
//! name masked, in the text and in the data alike (`"masked": true`), so `--json` and the
//! raw socket give an operator no more than the console prints. An admin's listing shows
//! them and is audited (`dispatch`).

use std::fmt::Write as _;
use std::sync::Arc;

use callgate_control::{Request, Response};
use callgate_proxy::driver::SipHandle;
use callgate_store::{Cdr, Store};
use serde_json::json;

/// Largest `--last`.
const MAX_LAST: usize = 10_000;

pub async fn handle(sip: Option<&SipHandle>, req: Request) -> Response {
    match req {
        Request::ShowCalls => {
            let Some(sip) = sip else {
                return Response::err("the SIP proxy is not running (no [sip] listen addresses)");
            };
            match sip.calls().await {
                Ok(calls) => {
                    let mut t = format!("{} active call(s)\n", calls.len());
                    for c in &calls {
                        let _ = writeln!(
                            t,
                            "{:<10} {:<16} {:<14} {:<14} {:<40} {} {}",
                            label(c.state),
                            c.tracking_number,
                            c.campaign,
                            c.caller,
                            c.destination,
                            c.call_id,
                            if c.pinholes > 0 { "media" } else { "" },
                        );
                    }
                    Response::ok(t, json!({ "calls": calls }))
                }
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::ShowSipStats => {
            let Some(sip) = sip else {
                return Response::err("the SIP proxy is not running (no [sip] listen addresses)");
            };
            match (
                sip.stats().await,
                sip.tcp_stats().await,
                sip.tls_status().await,
            ) {
                (Ok(st), Ok(tcp), Ok(tls)) => {
                    let v = serde_json::to_value(&st).unwrap_or_default();
                    let tcp = serde_json::to_value(&tcp).unwrap_or_default();
                    let tls_stats = serde_json::to_value(&tls.stats).unwrap_or_default();
                    let mut t = String::new();
                    for (prefix, set) in [("", &v), ("tcp_", &tcp), ("tls_", &tls_stats)] {
                        if let Some(m) = set.as_object() {
                            for (k, v) in m {
                                let _ = writeln!(t, "{:<28} {v}", format!("{prefix}{k}"));
                            }
                        }
                    }
                    if !tls.listen.is_empty() || tls.certificate.is_some() {
                        let cert = match &tls.certificate {
                            Some(c) => format!(
                                "CN={} from {}, valid until {} ({} days)",
                                c.subject,
                                c.issuer,
                                crate::human::time(u64::try_from(c.not_after).unwrap_or(0) * 1000),
                                tls.expires_in_days.unwrap_or_default()
                            ),
                            None => "none installed".to_owned(),
                        };
                        let _ = writeln!(t, "{:<28} {cert}", "tls_certificate");
                    }
                    if let Some(w) = &tls.warning {
                        let _ = writeln!(t, "WARNING: SIP over TLS: {w}");
                    }
                    Response::ok(t, json!({ "stats": v, "tcp": tcp, "tls": tls }))
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Response::err(e.to_string()),
            }
        }
        _ => Response::err("not a calls request"),
    }
}

/// Records per part of a streamed `show cdrs`.
const PAGE: usize = 200;

/// The columns of `show cdrs`, and their widths (the last one unpadded): fixed, so that the
/// parts of a streamed listing line up.
const COLUMNS: [(&str, usize); 11] = [
    ("ID", 6),
    ("STARTED", 25),
    ("DURATION", 8),
    ("OUTCOME", 14),
    ("NUMBER", 14),
    ("CAMPAIGN", 14),
    ("CALLER", 14),
    ("NAME", 16),
    ("DESTINATION", 38),
    ("BY", 13),
    ("CALL-ID", 0),
];

fn fixed_row(cells: &[impl AsRef<str>]) -> String {
    let width: Vec<usize> = COLUMNS.iter().map(|c| c.1).collect();
    crate::human::line(cells, &width)
}

/// `show cdrs`, sent a page of [`PAGE`] records at a time as they are read and decrypted,
/// so the daemon never holds the whole listing (the last part is empty, `more == false`).
/// A client that goes away stops the reading.
pub fn stream_cdrs(
    store: Arc<Store>,
    last: usize,
    text_only: bool,
    masked: bool,
) -> tokio::sync::mpsc::Receiver<Response> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let last = last.min(MAX_LAST);
        let st = store.clone();
        let ids = tokio::task::spawn_blocking(move || st.last_cdr_ids(last))
            .await
            .unwrap_or_default();
        let part = |text: String, data: Vec<serde_json::Value>, more: bool| {
            let mut r = Response::ok(text, json!({ "cdrs": data, "masked": masked }));
            r.more = more;
            r
        };
        if ids.is_empty() {
            let _ = tx
                .send(part("no call records\n".into(), Vec::new(), false))
                .await;
            return;
        }
        let header: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        let mut text = fixed_row(&header);
        for page in ids.chunks(PAGE) {
            let st = store.clone();
            let page = page.to_vec();
            let recs = tokio::task::spawn_blocking(move || {
                page.iter().map(|id| st.get_cdr(*id)).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut data = Vec::with_capacity(recs.len());
            for r in recs {
                match r {
                    Ok(rec) => {
                        text.push_str(&fixed_row(&row(rec.id, &rec.value, masked)));
                        if !text_only {
                            data.push(json!({ "id": rec.id, "cdr": shown(&rec.value, masked) }));
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(
                            text,
                            "(unreadable record: {})",
                            callgate_store::error_chain(&e)
                        );
                        data.push(json!({ "error": callgate_store::error_chain(&e) }));
                    }
                }
            }
            if tx
                .send(part(std::mem::take(&mut text), data, true))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(part(String::new(), Vec::new(), false)).await;
    });
    rx
}

/// A record as `show cdrs --json` gives it: as stored for an admin; for anyone else with
/// the caller's number and name masked (`null` once erased, as for an admin).
fn shown(c: &Cdr, masked: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if masked {
        v["caller"] = json!(c.caller.masked_number());
        if let Some(n) = &c.caller_name {
            v["caller_name"] = json!(n.masked_name());
        }
    }
    v
}

/// One record as a row of `show cdrs`: when it started, how long it lasted, how it ended
/// (with the final SIP code), who answered it (and who ended it after a failover); the
/// caller's number and name masked when `masked`.
fn row(id: u64, c: &Cdr, masked: bool) -> Vec<String> {
    // The value, its mask (`mask`) when `masked`, or "(erased)".
    let cell = |p: &callgate_store::Pii, mask: fn(&str) -> String| {
        p.reveal()
            .map(|v| if masked { mask(v) } else { v.to_owned() })
            .unwrap_or_else(|| "(erased)".to_owned())
    };
    vec![
        id.to_string(),
        crate::human::time(c.invite_at),
        crate::human::duration(c.duration_ms),
        format!("{} {}", label(c.disposition), c.final_code),
        c.tracking_number.clone(),
        c.campaign.clone(),
        cell(&c.caller, callgate_cdr::mask_number),
        c.caller_name
            .as_ref()
            .map_or_else(|| "-".to_owned(), |n| cell(n, callgate_cdr::mask_name)),
        if c.destination.is_empty() {
            "-".to_owned()
        } else {
            c.destination.clone()
        },
        match &c.ended_by {
            Some(e) => format!("{}→{e}", c.appliance),
            None => c.appliance.clone(),
        },
        c.call_id.clone(),
    ]
}

/// A unit enum as its serialized name (`answered`, `no_answer`, `ringing`, ...).
fn label(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use callgate_store::{Disposition, Pii};

    fn cdr(caller: Pii, name: Option<Pii>) -> Cdr {
        Cdr {
            call_id: "c1@x".into(),
            tracking_number: "+15550100007".into(),
            campaign: "spring-radio".into(),
            caller,
            caller_name: name,
            destination: "sip:pbx".into(),
            invite_at: 1,
            ring_at: None,
            answer_at: None,
            end_at: Some(2),
            duration_ms: 0,
            disposition: Disposition::Rejected,
            final_code: 404,
            appliance: "a".into(),
            ended_by: None,
            resume: None,
        }
    }

    #[test]
    fn an_operators_listing_masks_the_caller_in_text_and_data() {
        let c = cdr(Pii::new("+14155550123"), Some(Pii::new("Ada Lovelace")));
        let text = row(1, &c, true).join(" ");
        let data = shown(&c, true).to_string();
        for s in [&text, &data] {
            assert!(!s.contains("4155550123") && !s.contains("Lovelace"), "{s}");
        }
        assert!(text.contains("+1 •••• 23") && text.contains("A…"), "{text}");
        assert_eq!(shown(&c, true)["caller"], "+1 •••• 23");
        assert_eq!(shown(&c, true)["caller_name"], "A…");
        assert_eq!(shown(&c, true)["tracking_number"], "+15550100007");
        // An admin's is the record.
        assert_eq!(shown(&c, false)["caller"], "+14155550123");
        assert!(row(1, &c, false).join(" ").contains("Ada Lovelace"));
        // Erased stays erased either way.
        let e = cdr(Pii::Erased, Some(Pii::Erased));
        assert!(shown(&e, true)["caller"].is_null());
        assert!(shown(&e, true)["caller_name"].is_null());
        assert!(row(1, &e, true).join(" ").contains("(erased)"));
    }
}

//! `show calls`, `show cdrs [--last N]`, `show sip stats`: text for the console, JSON for
//! tools and tests.

use std::fmt::Write as _;
use std::sync::Arc;

use callgate_control::{Request, Response};
use callgate_proxy::driver::SipHandle;
use callgate_store::{Cdr, Store};
use serde_json::json;

/// Largest `--last`.
const MAX_LAST: usize = 10_000;

pub async fn handle(sip: Option<&SipHandle>, store: &Arc<Store>, req: Request) -> Response {
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
            match (sip.stats().await, sip.tcp_stats().await) {
                (Ok(st), Ok(tcp)) => {
                    let v = serde_json::to_value(&st).unwrap_or_default();
                    let tcp = serde_json::to_value(&tcp).unwrap_or_default();
                    let mut t = String::new();
                    for (prefix, set) in [("", &v), ("tcp_", &tcp)] {
                        if let Some(m) = set.as_object() {
                            for (k, v) in m {
                                let _ = writeln!(t, "{:<28} {v}", format!("{prefix}{k}"));
                            }
                        }
                    }
                    Response::ok(t, json!({ "stats": v, "tcp": tcp }))
                }
                (Err(e), _) | (_, Err(e)) => Response::err(e.to_string()),
            }
        }
        Request::ShowCdrs { last } => {
            let last = last.min(MAX_LAST);
            let store = store.clone();
            let rows = tokio::task::spawn_blocking(move || store.last_cdrs(last)).await;
            let Ok(rows) = rows else {
                return Response::err("internal error reading call records");
            };
            let mut table = Vec::new();
            let mut unreadable = String::new();
            let mut data = Vec::new();
            for r in rows {
                match r {
                    Ok(rec) => {
                        table.push(row(rec.id, &rec.value));
                        data.push(json!({ "id": rec.id, "cdr": rec.value }));
                    }
                    Err(e) => {
                        let _ = writeln!(
                            unreadable,
                            "(unreadable record: {})",
                            callgate_store::error_chain(&e)
                        );
                        data.push(json!({ "error": callgate_store::error_chain(&e) }));
                    }
                }
            }
            let mut t = if table.is_empty() {
                "no call records\n".to_owned()
            } else {
                crate::human::table(
                    &[
                        "ID",
                        "STARTED",
                        "DURATION",
                        "OUTCOME",
                        "NUMBER",
                        "CAMPAIGN",
                        "CALLER",
                        "NAME",
                        "DESTINATION",
                        "BY",
                        "CALL-ID",
                    ],
                    &table,
                )
            };
            t.push_str(&unreadable);
            Response::ok(t, json!({ "cdrs": data }))
        }
        _ => Response::err("not a calls request"),
    }
}

/// One record as a row of `show cdrs`: when it started, how long it lasted, how it ended
/// (with the final SIP code), who answered it (and who ended it after a failover).
fn row(id: u64, c: &Cdr) -> Vec<String> {
    let erased = |p: &callgate_store::Pii| p.reveal().unwrap_or("(erased)").to_owned();
    vec![
        id.to_string(),
        crate::human::time(c.invite_at),
        crate::human::duration(c.duration_ms),
        format!("{} {}", label(c.disposition), c.final_code),
        c.tracking_number.clone(),
        c.campaign.clone(),
        erased(&c.caller),
        c.caller_name
            .as_ref()
            .map_or_else(|| "-".to_owned(), erased),
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

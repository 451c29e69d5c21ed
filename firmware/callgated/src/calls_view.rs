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
            let mut t = String::new();
            let mut data = Vec::new();
            for r in rows {
                match r {
                    Ok(rec) => {
                        let _ = writeln!(t, "{}", line(rec.id, &rec.value));
                        data.push(json!({ "id": rec.id, "cdr": rec.value }));
                    }
                    Err(e) => {
                        let _ = writeln!(
                            t,
                            "(unreadable record: {})",
                            callgate_store::error_chain(&e)
                        );
                        data.push(json!({ "error": callgate_store::error_chain(&e) }));
                    }
                }
            }
            if data.is_empty() {
                t.push_str("no call records\n");
            }
            Response::ok(t, json!({ "cdrs": data }))
        }
        _ => Response::err("not a calls request"),
    }
}

fn line(id: u64, c: &Cdr) -> String {
    format!(
        "#{id} {} code={} number={} campaign={} caller={} name={} dest={} invite={} ring={} answer={} end={} duration_ms={} appliance={}{} call_id={}",
        label(c.disposition),
        c.final_code,
        c.tracking_number,
        c.campaign,
        c.caller.reveal().unwrap_or("(erased)"),
        c.caller_name
            .as_ref()
            .map(|n| n.reveal().unwrap_or("(erased)"))
            .unwrap_or("-"),
        if c.destination.is_empty() { "-" } else { &c.destination },
        c.invite_at,
        opt(c.ring_at),
        opt(c.answer_at),
        opt(c.end_at),
        c.duration_ms,
        c.appliance,
        c.ended_by
            .as_ref()
            .map(|e| format!(" ended_by={e}"))
            .unwrap_or_default(),
        c.call_id,
    )
}

/// A unit enum as its serialized name (`answered`, `no_answer`, `ringing`, ...).
fn label(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

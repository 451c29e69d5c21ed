//! What each control request does: calls into the components and formats the reply.
//! Every change is written to the audit log with the user the kernel reported.

use std::sync::Arc;
use std::time::Duration;

use callgate_control::{Handler, Peer, Request, Response};
use callgate_firewall::{error_chain, FirewallHandle};
use callgate_revisions::ConfigService;
use serde_json::json;

pub fn handler(config: ConfigService, firewall: FirewallHandle) -> Handler {
    Arc::new(move |peer: Peer, req: Request| {
        let config = config.clone();
        let firewall = firewall.clone();
        Box::pin(async move {
            let name = req.name();
            let change = req.is_change();
            let resp = handle(&config, &firewall, &peer, req).await;
            if change {
                log::info!(
                    "audit: user={} uid={} {} -> {}: {}",
                    peer.user,
                    peer.uid,
                    name,
                    if resp.ok { "ok" } else { "refused" },
                    resp.text.lines().next().unwrap_or("")
                );
            }
            resp
        })
    })
}

fn fail(e: &dyn std::error::Error) -> Response {
    Response::err(error_chain(e))
}

async fn handle(
    config: &ConfigService,
    firewall: &FirewallHandle,
    peer: &Peer,
    req: Request,
) -> Response {
    match req {
        Request::Status => {
            let cfg = config.config().borrow().clone();
            let fw = firewall.state().borrow().clone();
            let history = config.history().await.unwrap_or_default();
            let pending = history.iter().find(|h| h.pending).map(|h| h.number);
            let active = history.iter().find(|h| h.active).map(|h| h.number);
            let text = format!(
                "appliance {}\nrevision {}\nfirewall generation {}{}\n{}",
                cfg.appliance.name,
                active.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                fw.generation,
                fw.last_error
                    .as_ref()
                    .map(|e| format!(" (last apply failed: {e})"))
                    .unwrap_or_default(),
                pending
                    .map(|n| format!("revision {n} awaits confirm"))
                    .unwrap_or_else(|| "no confirm pending".into())
            );
            Response::ok(
                text,
                json!({"appliance": cfg.appliance.name.as_str(), "revision": active,
                       "firewall_generation": fw.generation, "pending": pending,
                       "version": env!("CARGO_PKG_VERSION")}),
            )
        }
        Request::ShowFirewall => match firewall.counters().await {
            Ok(c) => {
                let mut text = format!(
                    "{:<8} {:<28} {:>5} {:>12} {:>14}\n",
                    "chain", "entry", "rules", "packets", "bytes"
                );
                for e in &c {
                    text.push_str(&format!(
                        "{:<8} {:<28} {:>5} {:>12} {:>14}\n",
                        e.chain, e.name, e.rules, e.packets, e.bytes
                    ));
                }
                Response::ok(text, json!(c))
            }
            Err(e) => fail(&e),
        },
        Request::ShowConfig => match config.show_config().await {
            Ok((n, text)) => Response::ok(text.clone(), json!({"revision": n, "text": text})),
            Err(e) => fail(&e),
        },
        Request::ShowHistory => match config.history().await {
            Ok(h) => {
                let mut text = String::new();
                for e in &h {
                    text.push_str(&format!(
                        "{:>4} {} {:<12} {}{}{}\n",
                        e.number,
                        fmt_time(e.time_ms),
                        e.author,
                        e.note,
                        if e.active { "  [active]" } else { "" },
                        if e.pending {
                            "  [awaiting confirm]"
                        } else {
                            ""
                        },
                    ));
                }
                Response::ok(text, json!(h))
            }
            Err(e) => fail(&e),
        },
        Request::Compare { a, b } => match config.compare(a, b).await {
            Ok(d) => Response::ok(d.clone(), json!({"diff": d})),
            Err(e) => fail(&e),
        },
        Request::Commit {
            text,
            origin,
            force,
            confirmed_secs,
        } => {
            let window = confirmed_secs.map(Duration::from_secs);
            match config
                .commit(text, origin, force, window, peer.user.clone())
                .await
            {
                Ok(out) => {
                    let mut msg = format!("committed revision {}", out.revision);
                    if let Some(secs) = confirmed_secs {
                        msg.push_str(&format!(
                            "; it rolls back in {secs}s unless `callgate confirm` arrives"
                        ));
                    }
                    Response::ok(msg, json!(out))
                }
                Err(e) => fail(&e),
            }
        }
        Request::Confirm => match config.confirm().await {
            Ok(n) => Response::ok(format!("revision {n} confirmed"), json!({"revision": n})),
            Err(e) => fail(&e),
        },
        Request::Rollback { number, force } => {
            match config.rollback(number, force, peer.user.clone()).await {
                Ok(out) => Response::ok(
                    format!(
                        "rolled back to the text of revision {number}, now revision {}",
                        out.revision
                    ),
                    json!(out),
                ),
                Err(e) => fail(&e),
            }
        }
    }
}

/// UTC `YYYY-MM-DD HH:MM:SS` from unix milliseconds (no time-zone database on the image).
fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        assert_eq!(super::fmt_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::fmt_time(1_795_910_400_000), "2026-11-29 00:00:00");
    }
}

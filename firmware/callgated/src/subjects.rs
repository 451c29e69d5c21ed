//! Subject requests on the console (admins; every one audited by the dispatcher): what the
//! store holds about a caller (`show subject NUMBER`) and every record of theirs decrypted
//! as JSON or CSV (`request subject export NUMBER format json|csv`).
//!
//! The number is taken as the routes take a dialled number (`callgate_router::
//! normalize_number`: E.164, visual separators dropped); anything else is refused before
//! the store is touched, and the refusal does not repeat it (replies' first lines reach the
//! audit trail and the journal).

use std::sync::Arc;

use callgate_control::{ExportFormat, Response};
use callgate_store::{subject, Store};
use serde_json::json;

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
    if info.records == 0 && info.key_generation.is_none() {
        text.push_str("  nothing is held about this number\n");
    }
    Response::ok(
        text,
        json!({"subject": n, "token": info.token, "records": info.records,
               "key_generation": info.key_generation}),
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
}

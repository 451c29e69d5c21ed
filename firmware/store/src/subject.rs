//! Subject requests: what the store holds about one caller (access), every record of
//! theirs decrypted as JSON or CSV (export), and their erasure with its record (the
//! erasure receipt the daemon signs, kept to say "erased at …" afterwards).
//!
//! A subject is a caller, found by their number through its token
//! ([`crate::Store::subject_token`]): callers pass the number normalised as the routes
//! normalise dialled numbers (E.164); the token's own normalisation
//! (`callgate_vault::normalize_subject`) makes every spelling of one number one subject.
//!
//! ## Export format (`callgate-subject-export/1`)
//! One row (CSV) or object (JSON, under `records`) per call record of the subject, in id
//! order, with the fields of [`FIELDS`] (name and meaning; the JSON export carries the same
//! list under `fields`, the CSV's first line names them). Times are milliseconds since the
//! Unix epoch (UTC); an absent value is JSON `null` and an empty CSV cell. CSV follows
//! RFC 4180 (cells with a comma, quote or line break are quoted, quotes doubled); a cell
//! that a spreadsheet would run as a formula (starting `=`, `+`, `-`, `@`, tab or carriage
//! return) gets a leading `'`, except a number that is `+` and digits alone (a caller's
//! E.164 number). Records that cannot be read (damaged) are not rows: their ids are listed
//! under `unreadable` (JSON) and counted by the daemon's reply.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Cdr, Op, Pii, Record, Store, StoreError, SubjectToken, Table};

/// The export's format name and version.
pub const EXPORT_SCHEMA: &str = "callgate-subject-export/1";

/// The export's fields, in order: name, meaning.
pub const FIELDS: &[(&str, &str)] = &[
    ("id", "the record's number on this appliance"),
    ("call_id", "the SIP Call-ID of the call"),
    ("tracking_number", "the number the caller dialled (E.164)"),
    ("campaign", "the campaign the tracking number belongs to"),
    ("caller", "the caller's number as signalled (the subject)"),
    (
        "caller_name",
        "the caller's display name as signalled, if any",
    ),
    ("destination", "where the call was routed (SIP URI)"),
    (
        "invite_at",
        "when the call arrived (ms since the Unix epoch, UTC)",
    ),
    ("ring_at", "when the destination rang, if it did"),
    ("answer_at", "when the call was answered, if it was"),
    ("end_at", "when the call ended (empty: in progress)"),
    ("duration_ms", "talk time in milliseconds"),
    (
        "disposition",
        "answered, busy, no_answer, failed, cancelled, ...",
    ),
    ("final_code", "the final SIP status code"),
    ("appliance", "the appliance that handled the call"),
    (
        "ended_by",
        "who hung up (caller, callee, timeout), if known",
    ),
];

/// What the store holds about a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectInfo {
    /// The subject's token (hex): what the store files them under, no number in it.
    pub token: String,
    /// Call records the subject's index lists.
    pub records: usize,
    /// The generation of the subject's current key; `None`: no key (never seen, or erased
    /// and not seen since).
    pub key_generation: Option<u64>,
    /// The subject's erasures, oldest first.
    pub erasures: Vec<Erasure>,
}

/// What an erasure is about to destroy, for its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureFacts {
    /// The subject's token (hex).
    pub token: String,
    /// The generation of the key destroyed (`None`: no key was held).
    pub key_generation: Option<u64>,
    /// The records whose caller number and name become unreadable, ascending (calls in
    /// progress included).
    pub record_ids: Vec<u64>,
}

/// One erasure, as kept in the `erasures` tree (sealed under the data key, keyed by the
/// subject's token and the time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    pub time_ms: u64,
    /// Who asked (the console user).
    pub by: String,
    /// Which appliance erased.
    pub appliance: String,
    pub key_generation: Option<u64>,
    pub record_ids: Vec<u64>,
    /// The signed receipt as issued (JSON text), to be shown again.
    pub receipt: String,
    /// What the pair's peer did (`None`: not paired, or a record kept before pairs erased
    /// together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerOutcome>,
}

/// What the pair's peer answered when asked to erase the same subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PeerOutcome {
    /// The peer destroyed its key of the subject: when, the key's generation there and
    /// the records (the peer's ids, which are the pair's shared ids) made unreadable.
    Erased {
        appliance: String,
        erased_at_ms: u64,
        key_generation: Option<u64>,
        record_ids: Vec<u64>,
    },
    /// The peer held neither a key nor a record of the subject: nothing to erase there.
    NothingHeld { appliance: String },
    /// The peer did not confirm (the link dropped, it did not answer in time, or it
    /// failed): it may still hold the subject's key.
    Unconfirmed { appliance: String, reason: String },
}

impl PeerOutcome {
    /// Whether the peer holds nothing of the subject any more (erased, or never held).
    pub fn done(&self) -> bool {
        !matches!(self, PeerOutcome::Unconfirmed { .. })
    }
}

impl Store {
    /// What the store holds about a subject: records listed, key generation, erasures.
    pub fn subject_info(&self, subject_id: &str) -> Result<SubjectInfo, StoreError> {
        let token = self.subject_token(subject_id);
        let records = self.cdr_ids_of_subject(subject_id)?.len();
        let key_generation = self.subject_key(&token, false)?.map(|(g, _)| g);
        Ok(SubjectInfo {
            token: token.to_hex(),
            records,
            key_generation,
            erasures: self.erasures_of(&token)?,
        })
    }

    fn erasures_of(&self, token: &SubjectToken) -> Result<Vec<Erasure>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.erasures.scan_prefix(token.as_bytes()) {
            let (k, v) = item?;
            let (_, e) = self.open_value(Table::Erasures, &k, || token.to_hex(), &v)?;
            out.push(e);
        }
        Ok(out)
    }

    /// Crypto-shreds a subject and keeps a record of it: `make` gets what is about to be
    /// destroyed and returns the erasure's record (with its signed receipt); then, in one
    /// durable commit and in this order, the subject key is deleted, their index entries
    /// are deleted and the record is stored (after a crash: the record is there only if
    /// the key is gone). `Ok(None)` when the store holds neither a key nor a record of the
    /// subject: nothing is changed (and `make` is not called). Their CDRs stay, with caller
    /// number and name [`Pii::Erased`].
    pub fn erase_subject_recorded(
        &self,
        subject_id: &str,
        make: impl FnOnce(&ErasureFacts) -> Result<Erasure, String>,
    ) -> Result<Option<Erasure>, StoreError> {
        let token = self.subject_token(subject_id);
        let key_generation = self.subject_key(&token, false)?.map(|(g, _)| g);
        let slot = self.key_slot_of(&token)?;
        let (_, mut ops) = self.erasure_ops(&token)?;
        // The index's records and the subject's calls in progress.
        let record_ids = self.cdr_ids_of_subject(subject_id)?;
        if key_generation.is_none() && record_ids.is_empty() {
            return Ok(None);
        }
        let facts = ErasureFacts {
            token: token.to_hex(),
            key_generation,
            record_ids,
        };
        let erasure = make(&facts).map_err(StoreError::Meta)?;
        let key = [token.as_bytes().as_slice(), &erasure.time_ms.to_be_bytes()].concat();
        let sealed = self.seal_value(Table::Erasures, &key, &erasure)?;
        ops.push(Op::Insert {
            tree: self.t.erasures.clone(),
            key,
            value: sealed,
        });
        self.commit(ops)?;
        self.keys.subjects.erased(&token);
        self.shred_key_slot(slot);
        log::info!(
            "store: erased subject {token:?} ({} CDRs), record kept",
            erasure.record_ids.len()
        );
        Ok(Some(erasure))
    }

    /// Keeps an erasure's record (the second step of a pair's erasure: the receipt that
    /// names both appliances, signed once the peer answered). Keyed by the subject and the
    /// erasure's time: a record of the same time (the first step's) is replaced.
    pub fn put_erasure(&self, subject_id: &str, erasure: &Erasure) -> Result<(), StoreError> {
        let token = self.subject_token(subject_id);
        let key = [token.as_bytes().as_slice(), &erasure.time_ms.to_be_bytes()].concat();
        self.put_value(Table::Erasures, key, erasure)
    }

    /// The index keys of a subject and the ops that erase them: the subject key's removal
    /// first, then each index entry's.
    pub(crate) fn erasure_ops(
        &self,
        token: &SubjectToken,
    ) -> Result<(Vec<Vec<u8>>, Vec<Op>), StoreError> {
        let mut ops = vec![Op::Remove {
            tree: self.t.subjects.clone(),
            key: token.as_bytes().to_vec(),
        }];
        let mut keys = Vec::new();
        for item in self.t.by_subject.scan_prefix(token.as_bytes()) {
            let (k, _) = item?;
            ops.push(Op::Remove {
                tree: self.t.by_subject.clone(),
                key: k.to_vec(),
            });
            keys.push(k.to_vec());
        }
        Ok((keys, ops))
    }
}

fn pii(p: &Pii) -> Value {
    match p.reveal() {
        Some(s) => Value::String(s.to_owned()),
        None => Value::Null,
    }
}

/// One record as the export's object, fields in [`FIELDS`]' order.
fn row(r: &Record<Cdr>) -> Vec<(&'static str, Value)> {
    let c = &r.value;
    let disposition = serde_json::to_value(c.disposition).unwrap_or(Value::Null);
    vec![
        ("id", json!(r.id)),
        ("call_id", json!(c.call_id)),
        ("tracking_number", json!(c.tracking_number)),
        ("campaign", json!(c.campaign)),
        ("caller", pii(&c.caller)),
        (
            "caller_name",
            c.caller_name.as_ref().map_or(Value::Null, pii),
        ),
        ("destination", json!(c.destination)),
        ("invite_at", json!(c.invite_at)),
        ("ring_at", json!(c.ring_at)),
        ("answer_at", json!(c.answer_at)),
        ("end_at", json!(c.end_at)),
        ("duration_ms", json!(c.duration_ms)),
        ("disposition", disposition),
        ("final_code", json!(c.final_code)),
        ("appliance", json!(c.appliance)),
        ("ended_by", json!(c.ended_by)),
    ]
}

/// The JSON export of a subject's records (`subject`: the number as asked for).
pub fn export_json(
    subject: &str,
    records: &[Record<Cdr>],
    unreadable: &[u64],
) -> serde_json::Value {
    let fields: Vec<Value> = FIELDS
        .iter()
        .map(|(n, m)| json!({"name": n, "meaning": m}))
        .collect();
    let records: Vec<Value> = records
        .iter()
        .map(|r| Value::Object(row(r).into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        .collect();
    json!({
        "schema": EXPORT_SCHEMA,
        "subject": subject,
        "fields": fields,
        "records": records,
        "unreadable": unreadable,
    })
}

/// The CSV export of a subject's records: a header line naming [`FIELDS`], then a line
/// per record (CRLF line ends, RFC 4180).
pub fn export_csv(records: &[Record<Cdr>]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
    out.push_str(&names.join(","));
    out.push_str("\r\n");
    for r in records {
        let cells: Vec<String> = row(r)
            .into_iter()
            .map(|(_, v)| match v {
                Value::Null => String::new(),
                Value::String(s) => csv_cell(&s),
                other => csv_cell(&other.to_string()),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

/// One CSV cell: defused against formulas, quoted when it must be.
pub fn csv_cell(s: &str) -> String {
    let e164 = s.len() > 1 && s.starts_with('+') && s[1..].bytes().all(|b| b.is_ascii_digit());
    let formula = !e164 && s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let s = if formula {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("+12025550101"), "+12025550101");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+1 202"), "'+1 202");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(csv_cell(""), "");
    }

    #[test]
    fn an_erasure_is_kept_and_a_subject_with_nothing_held_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let kek = callgate_vault::Kek::generate().unwrap();
        let s = Store::open(dir.path(), kek.clone()).unwrap();
        let a = s.append_cdr(&cdr("+12025550101")).unwrap();
        let b = s.append_cdr(&cdr("+12025550102")).unwrap();
        // A call of theirs in progress (its answer-time record in the slots file).
        let c = s.reserve_cdr_id();
        let answered = Cdr {
            end_at: None,
            ..cdr("+12025550101")
        };
        assert!(s.put_open_cdrs(&[(c, &answered)]).unwrap().is_empty());
        let mut called = false;
        let none = s
            .erase_subject_recorded("+12025550199", |_| {
                called = true;
                Err("not called".into())
            })
            .unwrap();
        assert!(none.is_none() && !called);
        // A receipt that cannot be made: nothing is erased.
        assert!(s
            .erase_subject_recorded("+12025550101", |_| Err("no key".into()))
            .is_err());
        assert!(s.get_cdr(a).unwrap().value.caller.reveal().is_some());
        let generation = s.subject_info("+12025550101").unwrap().key_generation;
        let e = s
            .erase_subject_recorded("+1 202 555 0101", |f| {
                assert_eq!(
                    (f.record_ids.clone(), f.key_generation),
                    (vec![a, c], generation)
                );
                Ok(Erasure {
                    time_ms: 7,
                    by: "root".into(),
                    appliance: "lab-a".into(),
                    key_generation: f.key_generation,
                    record_ids: f.record_ids.clone(),
                    receipt: "{}".into(),
                    peer: None,
                })
            })
            .unwrap()
            .unwrap();
        drop(s);
        let s = Store::open(dir.path(), kek).unwrap();
        let info = s.subject_info("+12025550101").unwrap();
        assert_eq!((info.records, info.key_generation), (0, None));
        assert_eq!(info.erasures, vec![e]);
        assert!(s.get_cdr(a).unwrap().value.caller.reveal().is_none());
        assert!(s.get_cdr(c).unwrap().value.caller.reveal().is_none());
        assert!(s.get_cdr(b).unwrap().value.caller.reveal().is_some());
        assert!(s.subject_info("+12025550102").unwrap().erasures.is_empty());
    }

    /// Every file under `dir`, recursively, as bytes.
    fn every_file(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(every_file(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    fn holds(files: &[(std::path::PathBuf, Vec<u8>)], needle: &[u8]) -> Vec<String> {
        files
            .iter()
            .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
            .map(|(p, _)| p.display().to_string())
            .collect()
    }

    /// The erased subject's wrapped key is in no file of the data directory afterwards,
    /// nor their number; a value removed from sled itself stays in its log (the control:
    /// why the keys are not kept in sled).
    #[test]
    fn after_an_erasure_no_file_holds_the_wrapped_key() {
        let dir = tempfile::tempdir().unwrap();
        let kek = callgate_vault::Kek::generate().unwrap();
        let s = Store::open(dir.path(), kek.clone()).unwrap();
        for i in 0..50 {
            s.append_cdr(&cdr("+12025550101")).unwrap();
            s.append_cdr(&cdr(&format!("+120255502{i:02}"))).unwrap();
        }
        let token = s.subject_token("+12025550101");
        let slot = s.key_slot_of(&token).unwrap().unwrap();
        let wrapped = s.key_slots.get(slot).unwrap().unwrap();
        assert!(wrapped.len() > 40);
        assert_eq!(holds(&every_file(dir.path()), &wrapped).len(), 1);
        // The control: bytes removed from a sled tree.
        let probe = [0xC3u8; 48];
        s.t.meta.insert(b"probe", probe.to_vec()).unwrap();
        s.commit(Vec::new()).unwrap();
        s.t.meta.remove(b"probe").unwrap();
        s.erase_subject_recorded("+12025550101", |f| {
            Ok(Erasure {
                time_ms: 1,
                by: "root".into(),
                appliance: "a".into(),
                key_generation: f.key_generation,
                record_ids: f.record_ids.clone(),
                receipt: String::new(),
                peer: None,
            })
        })
        .unwrap()
        .unwrap();
        for i in 0..50 {
            s.append_cdr(&cdr(&format!("+120255503{i:02}"))).unwrap();
        }
        drop(s);
        let files = every_file(dir.path());
        assert_eq!(holds(&files, &wrapped), Vec::<String>::new());
        assert_eq!(holds(&files, b"2025550101"), Vec::<String>::new());
        assert!(
            !holds(&files, &probe).is_empty(),
            "sled keeps what was removed from it"
        );
        // The others' keys are where they were; the store opens and reads.
        let s = Store::open(dir.path(), kek).unwrap();
        assert_eq!(s.cdr_ids_of_subject("+12025550200").unwrap().len(), 1);
        let id = s.cdr_ids_of_subject("+12025550349").unwrap()[0];
        assert!(s.get_cdr(id).unwrap().value.caller.reveal().is_some());
        assert_eq!(s.subject_info("+12025550101").unwrap().key_generation, None);
    }

    pub(crate) fn cdr(caller: &str) -> Cdr {
        Cdr {
            call_id: "c".into(),
            tracking_number: "+18005550100".into(),
            campaign: "x".into(),
            caller: Pii::new(caller),
            caller_name: None,
            destination: "sip:a@198.51.100.20".into(),
            invite_at: 1,
            ring_at: None,
            answer_at: None,
            end_at: Some(2),
            duration_ms: 0,
            disposition: crate::Disposition::Answered,
            final_code: 200,
            appliance: "a".into(),
            ended_by: None,
            resume: None,
        }
    }

    #[test]
    fn the_fields_are_the_rows_keys() {
        let r = Record {
            id: 7,
            key_id: 1,
            value: cdr("+12025550101"),
        };
        let keys: Vec<&str> = row(&r).into_iter().map(|(k, _)| k).collect();
        let names: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(keys, names);
        let csv = export_csv(std::slice::from_ref(&r));
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], names.join(","));
        assert!(
            lines[1].starts_with("7,c,+18005550100,x,+12025550101,,"),
            "{}",
            lines[1]
        );
        let j = export_json("+12025550101", &[r], &[]);
        assert_eq!(j["records"][0]["caller"], "+12025550101");
        assert_eq!(j["records"][0]["caller_name"], Value::Null);
        assert_eq!(j["fields"].as_array().map(Vec::len), Some(FIELDS.len()));
    }
}

//! What goes on the `transcripts` topic: one redacted transcript per message, the item
//! as `callgate_intake` made it ([`Batch::transcript`]).
//!
//! What goes on the `records` topic: a JSON batch of records, each with a stable message
//! id (`<appliance>:<record id>:<write sequence>`), so the cloud can drop a duplicate (the
//! same write sent again) and keep the latest write of a record.
//!
//! ```json
//! {"appliance":"lab-a","records":[
//!   {"msg_id":"lab-a:41:977","id":41,"seq":977,"cdr":{…the call detail record…}}]}
//! ```

use callgate_store::Cdr;

/// The largest batch payload (bytes) the uplink builds, whatever the broker allows.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// A batch being built: the message itself, each record serialized straight into it.
#[derive(Debug)]
pub struct Batch {
    /// `"<appliance>` as a JSON string so far: each message id goes on from there.
    msg_id_head: String,
    /// `{"appliance":…,"records":[` and the records so far.
    body: Vec<u8>,
    /// Where the records start in `body`.
    head: usize,
    /// (record id, write sequence) of what it holds.
    pub sent: Vec<(u64, u64)>,
    limit: usize,
    /// A transcript's message (the `transcripts` topic), not a batch of records.
    transcript: bool,
}

/// What closes a batch's JSON.
const TAIL: &[u8] = b"]}";

impl Batch {
    pub fn new(appliance: &str, limit: usize) -> Batch {
        let name = serde_json::to_string(appliance).unwrap_or_else(|_| "\"\"".into());
        let mut body = Vec::with_capacity(16 * 1024);
        body.extend_from_slice(b"{\"appliance\":");
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(b",\"records\":[");
        let msg_id_head = name.strip_suffix('"').unwrap_or("\"").to_owned();
        Batch {
            msg_id_head,
            head: body.len(),
            body,
            sent: Vec::new(),
            limit: limit.min(MAX_PAYLOAD),
            transcript: false,
        }
    }

    /// A transcript's message: the item as the intake made it (JSON), alone, for the
    /// `transcripts` topic; `oid` is its outbox id.
    pub fn transcript(oid: u64, seq: u64, item_json: Vec<u8>) -> Batch {
        Batch {
            msg_id_head: String::new(),
            body: item_json,
            head: 0,
            sent: vec![(oid, seq)],
            limit: MAX_PAYLOAD,
            transcript: true,
        }
    }

    /// Whether it is a transcript's message ([`Batch::transcript`]).
    pub fn is_transcript(&self) -> bool {
        self.transcript
    }

    /// Adds a record; `false` (and nothing added) if the batch would grow past its limit
    /// and already holds something. A record alone larger than the limit goes alone.
    pub fn push(&mut self, id: u64, seq: u64, cdr: &Cdr) -> bool {
        match callgate_store::cdr_json(cdr) {
            Ok(json) => self.push_json(id, seq, &json),
            Err(_) => false,
        }
    }

    /// [`Batch::push`] of a record's JSON as the store gives it
    /// ([`callgate_store::Store::get_cdrs_json`]).
    pub fn push_json(&mut self, id: u64, seq: u64, cdr_json: &[u8]) -> bool {
        use std::io::Write;
        let before = self.body.len();
        if self.has_records() {
            self.body.push(b',');
        }
        let _ = write!(
            self.body,
            "{{\"msg_id\":{}:{id}:{seq}\",\"id\":{id},\"seq\":{seq},\"cdr\":",
            self.msg_id_head
        );
        self.body.extend_from_slice(cdr_json);
        self.body.push(b'}');
        if before != self.head && self.body.len() + TAIL.len() > self.limit {
            self.body.truncate(before);
            return false;
        }
        self.sent.push((id, seq));
        true
    }

    /// An id acknowledged without its record (it is gone from the store: retention).
    pub fn skip(&mut self, id: u64, seq: u64) {
        self.sent.push((id, seq));
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Whether it holds any record to publish (not only skipped ids).
    pub fn has_records(&self) -> bool {
        self.body.len() > self.head
    }

    /// The payload, and the (record id, write sequence) pairs it carries.
    pub fn finish(mut self) -> (Vec<u8>, Vec<(u64, u64)>) {
        if !self.transcript {
            self.body.extend_from_slice(TAIL);
        }
        (self.body, self.sent)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use callgate_store::{Disposition, Pii};

    fn cdr(n: u64) -> Cdr {
        Cdr {
            call_id: format!("c{n}"),
            tracking_number: "+18005550100".into(),
            campaign: "spring".into(),
            caller: Pii::new("+12025550101"),
            caller_name: Some(Pii::new("Ann Caller")),
            destination: "sip:agent@198.51.100.20".into(),
            invite_at: n,
            ring_at: None,
            answer_at: None,
            end_at: Some(n + 1),
            duration_ms: 0,
            disposition: Disposition::Answered,
            final_code: 200,
            appliance: "lab-a".into(),
            ended_by: None,
            resume: None,
        }
    }

    #[test]
    fn a_batch_is_json_with_stable_message_ids_and_stays_under_its_limit() {
        let mut b = Batch::new("lab-a", 1200);
        let mut n = 0;
        while b.push(n + 40, 900 + n, &cdr(n)) {
            n += 1;
        }
        assert!(n >= 2, "{n}");
        b.skip(7, 1);
        assert_eq!(b.len() as u64, n + 1, "the skipped id is acknowledged too");
        let (out, sent) = b.finish();
        assert_eq!(sent.len() as u64, n + 1);
        assert!(out.len() <= 1200, "{}", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["appliance"], "lab-a");
        let recs = v["records"].as_array().unwrap();
        assert_eq!(recs.len() as u64, n);
        assert_eq!(recs[0]["msg_id"], "lab-a:40:900");
        assert_eq!(recs[0]["cdr"]["caller"], "+12025550101");
        // Each entry's record is the record's JSON as the store gives it.
        let json: serde_json::Value =
            serde_json::from_slice(&callgate_store::cdr_json(&cdr(1)).unwrap()).unwrap();
        assert_eq!(recs[1]["cdr"], json);
        assert_eq!(recs[1]["cdr"]["call_id"], "c1");
        assert_eq!(recs[1]["msg_id"], "lab-a:41:901");
        // A name that needs escaping stays valid JSON.
        let mut q = Batch::new("a\"b", MAX_PAYLOAD);
        assert!(q.push(1, 1, &cdr(1)));
        let (out, _) = q.finish();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["appliance"], "a\"b");
        assert_eq!(v["records"][0]["msg_id"], "a\"b:1:1");
        // Nothing but skips: no records, still valid.
        let mut e = Batch::new("lab-a", MAX_PAYLOAD);
        e.skip(3, 3);
        assert!(!e.has_records());
        let (out, sent) = e.finish();
        assert_eq!(sent, vec![(3, 3)]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["records"].as_array().unwrap().len(), 0);
        // One record larger than the limit still goes, alone.
        let mut one = Batch::new("lab-a", 10);
        assert!(one.push(1, 1, &cdr(1)));
        assert!(!one.push(2, 2, &cdr(2)));
    }
}

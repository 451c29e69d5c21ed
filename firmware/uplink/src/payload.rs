//! What goes on the `records` topic: a JSON batch of records, each with a stable message
//! id (`<appliance>:<record id>:<write sequence>`), so the cloud can drop a duplicate (the
//! same write sent again) and keep the latest write of a record.
//!
//! ```json
//! {"appliance":"lab-a","records":[
//!   {"msg_id":"lab-a:41:977","id":41,"seq":977,"cdr":{…the call detail record…}}]}
//! ```

use callgate_store::Cdr;
use serde::Serialize;

/// The largest batch payload (bytes) the uplink builds, whatever the broker allows.
pub const MAX_PAYLOAD: usize = 256 * 1024;

#[derive(Serialize)]
struct Entry<'a> {
    msg_id: String,
    id: u64,
    seq: u64,
    cdr: &'a Cdr,
}

/// A batch being built.
#[derive(Debug)]
pub struct Batch {
    appliance: String,
    body: Vec<u8>,
    /// (record id, write sequence) of what it holds.
    pub sent: Vec<(u64, u64)>,
    limit: usize,
}

impl Batch {
    pub fn new(appliance: &str, limit: usize) -> Batch {
        Batch {
            appliance: appliance.to_owned(),
            body: Vec::new(),
            sent: Vec::new(),
            limit: limit.min(MAX_PAYLOAD),
        }
    }

    /// Adds a record; `false` (and nothing added) if the batch would grow past its limit
    /// and already holds something. A record alone larger than the limit goes alone.
    pub fn push(&mut self, id: u64, seq: u64, cdr: &Cdr) -> bool {
        let entry = Entry {
            msg_id: format!("{}:{id}:{seq}", self.appliance),
            id,
            seq,
            cdr,
        };
        let Ok(json) = serde_json::to_vec(&entry) else {
            return false;
        };
        if !self.sent.is_empty() && self.body.len() + json.len() + 64 > self.limit {
            return false;
        }
        if !self.body.is_empty() {
            self.body.push(b',');
        }
        self.body.extend_from_slice(&json);
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
        !self.body.is_empty()
    }

    /// The payload.
    pub fn finish(&self) -> Vec<u8> {
        let head = serde_json::to_string(&self.appliance).unwrap_or_else(|_| "\"\"".into());
        let mut out = Vec::with_capacity(self.body.len() + head.len() + 32);
        out.extend_from_slice(b"{\"appliance\":");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(b",\"records\":[");
        out.extend_from_slice(&self.body);
        out.extend_from_slice(b"]}");
        out
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
        let out = b.finish();
        assert!(out.len() <= 1200, "{}", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["appliance"], "lab-a");
        let recs = v["records"].as_array().unwrap();
        assert_eq!(recs.len() as u64, n);
        assert_eq!(recs[0]["msg_id"], "lab-a:40:900");
        assert_eq!(recs[0]["cdr"]["caller"], "+12025550101");
        assert_eq!(b.len() as u64, n + 1, "the skipped id is acknowledged too");
        // One record larger than the limit still goes, alone.
        let mut one = Batch::new("lab-a", 10);
        assert!(one.push(1, 1, &cdr(1)));
        assert!(!one.push(2, 2, &cdr(2)));
    }
}

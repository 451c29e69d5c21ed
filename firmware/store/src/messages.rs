//! The outbox's messages: what the uplink must deliver that is not a call record (an
//! erasure's receipt, on the events topic, and the reply to the cloud's request that made
//! it), sealed in the `outbox_messages` tree until the broker acknowledged it.
//!
//! Why not in the records' `outbox`: that tree is a write sequence of record ids, read in
//! pages through an in-memory mirror and acknowledged in ranges, made for thousands of
//! records a second; these messages are few, carry their own payload and are removed one
//! by one. Both are read by the same session and sent again after any reconnect or
//! restart until acknowledged (duplicates possible, never a loss); each message carries
//! its own id (`message_id` in its payload) so the cloud can drop a duplicate.
//!
//! A message never holds a caller's number or name: what is kept here outlives an
//! erasure until the broker has it (the daemon puts only receipts and replies without the
//! number; `callgated`'s `cloud_subjects` tests it).

use serde::{Deserialize, Serialize};

use crate::{id_of, Op, Store, StoreError, Table};

/// A message for the uplink, kept until the broker acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// The topic under the uplink's prefix (`events`, `subjects/reply`).
    pub topic: String,
    /// The payload (a JSON document).
    pub payload: String,
    /// When it was queued, Unix ms.
    pub time_ms: u64,
}

impl Store {
    /// Keeps `m` for the uplink; returns its id once it is durable.
    pub fn outbox_message_put(&self, m: &OutboxMessage) -> Result<u64, StoreError> {
        let id = self._db.generate_id()?;
        self.put_value(Table::Messages, id.to_be_bytes().to_vec(), m)?;
        Ok(id)
    }

    /// Up to `n` messages waiting, oldest first, leaving out the ids in `skip`. A message
    /// that does not open is logged and left in place (it is never sent).
    pub fn outbox_messages(
        &self,
        n: usize,
        skip: &std::collections::HashSet<u64>,
    ) -> Result<Vec<(u64, OutboxMessage)>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.messages.iter() {
            if out.len() >= n {
                break;
            }
            let (k, v) = item?;
            let Some(id) = id_of(&k) else { continue };
            if skip.contains(&id) {
                continue;
            }
            match self.open_value::<OutboxMessage>(Table::Messages, &k, || id.to_string(), &v) {
                Ok((_, m)) => out.push((id, m)),
                Err(e) => log::error!(
                    "store: outbox message {id} cannot be read: {}",
                    crate::error_chain(&e)
                ),
            }
        }
        Ok(out)
    }

    /// How many messages wait.
    pub fn outbox_messages_len(&self) -> usize {
        self.t.messages.len()
    }

    /// The broker acknowledged message `id`: removed, durably.
    pub fn outbox_message_sent(&self, id: u64) -> Result<(), StoreError> {
        self.commit(vec![Op::Remove {
            tree: self.t.messages.clone(),
            key: id.to_be_bytes().to_vec(),
        }])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn messages_wait_sealed_in_order_across_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let kek = callgate_vault::Kek::generate().unwrap();
        let m = |n: u32| OutboxMessage {
            topic: "subjects/reply".into(),
            payload: format!("{{\"receipt\":\"secret-receipt-{n}\"}}"),
            time_ms: u64::from(n),
        };
        let (a, b) = {
            let st = Store::open(dir.path(), kek.clone()).unwrap();
            (
                st.outbox_message_put(&m(1)).unwrap(),
                st.outbox_message_put(&m(2)).unwrap(),
            )
        };
        assert!(a < b);
        let st = Store::open(dir.path(), kek.clone()).unwrap();
        let all = st.outbox_messages(10, &HashSet::new()).unwrap();
        assert_eq!(all, vec![(a, m(1)), (b, m(2))]);
        assert_eq!(
            st.outbox_messages(10, &HashSet::from([a])).unwrap(),
            vec![(b, m(2))]
        );
        assert_eq!(st.outbox_messages(1, &HashSet::new()).unwrap().len(), 1);
        st.outbox_message_sent(a).unwrap();
        drop(st);
        let st = Store::open(dir.path(), kek).unwrap();
        assert_eq!(
            st.outbox_messages(10, &HashSet::new()).unwrap(),
            vec![(b, m(2))]
        );
        assert_eq!(st.outbox_messages_len(), 1);
        drop(st);
        // Sealed: the payload is not on disk in clear.
        fn holding(dir: &std::path::Path, needle: &[u8]) -> bool {
            std::fs::read_dir(dir).unwrap().flatten().any(|e| {
                let p = e.path();
                if p.is_dir() {
                    holding(&p, needle)
                } else {
                    let b = std::fs::read(&p).unwrap_or_default();
                    b.windows(needle.len()).any(|w| w == needle)
                }
            })
        }
        assert!(
            !holding(dir.path(), b"secret-receipt"),
            "a message in clear on disk"
        );
    }
}

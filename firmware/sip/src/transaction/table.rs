//! A table driving many transactions, with a deadline index and a cap.

use std::collections::{BTreeSet, HashMap};

/// Keyed with a per-process random seed: branches come from the network.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use super::{
    Action, Actions, Config, Event, Incoming, Millis, Role, Timers, Transaction, TransactionKey,
    Transport,
};

/// Why the table refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The table holds its maximum of live transactions: the proxy answers 503 (with
    /// Retry-After) statelessly instead of creating state.
    #[error("transaction table full ({cap} live transactions)")]
    Overloaded {
        /// The configured cap.
        cap: usize,
    },
    /// No live transaction has this key (a stray response, an ACK for a 2xx, a
    /// retransmission after termination): the proxy core handles it statelessly.
    #[error("no transaction matches")]
    NoMatch,
    /// A live transaction already has this key.
    #[error("a transaction with this key already exists")]
    Duplicate,
    /// The key's role does not fit the operation (a server key to start a client).
    #[error("key role does not fit the operation")]
    WrongRole,
    /// ACK never starts a transaction (§17.1.1.3, §17.2.3).
    #[error("ACK does not start a transaction")]
    NotTransactional,
}

#[derive(Debug)]
struct Entry<M> {
    tx: Transaction<M>,
    /// The deadline under which the key is filed in `Table::deadlines`.
    deadline: Option<Millis>,
}

/// Many transactions keyed by [`TransactionKey`].
///
/// Terminated transactions are removed as soon as a call returns
/// [`Action::Terminated`] for them; timers are found through an ordered index, so
/// [`Table::poll_timers`] costs O(expired · log n).
#[derive(Debug)]
pub struct Table<M> {
    timers: Timers,
    cap: usize,
    live: Map<TransactionKey, Entry<M>>,
    deadlines: BTreeSet<(Millis, TransactionKey)>,
}

impl<M: Clone> Table<M> {
    /// An empty table: transactions use `timers`; at most `max_live` are live at once.
    pub fn new(timers: Timers, max_live: usize) -> Self {
        Table {
            timers,
            cap: max_live,
            live: Map::default(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The cap on live transactions.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The live transaction with this key.
    pub fn get(&self, key: &TransactionKey) -> Option<&Transaction<M>> {
        self.live.get(key).map(|e| &e.tx)
    }

    /// When [`Self::poll_timers`] must be called next.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Starts a client transaction by sending `request` (INVITE if the key's method is).
    pub fn start_client(
        &mut self,
        now: Millis,
        key: TransactionKey,
        transport: Transport,
        request: M,
    ) -> Result<Actions<M>, TableError> {
        if key.role() != Role::Client {
            return Err(TableError::WrongRole);
        }
        if key.method() == "ACK" {
            return Err(TableError::NotTransactional);
        }
        self.check_room(&key)?;
        let cfg = self.config(transport);
        let (tx, actions) = Transaction::client(key.is_invite(), request, cfg, now);
        self.insert(key, tx);
        Ok(actions)
    }

    /// Starts a server transaction for a request just received.
    pub fn start_server(
        &mut self,
        now: Millis,
        key: TransactionKey,
        transport: Transport,
    ) -> Result<Actions<M>, TableError> {
        if key.role() != Role::Server {
            return Err(TableError::WrongRole);
        }
        self.check_room(&key)?;
        let cfg = self.config(transport);
        let (tx, actions) = Transaction::server(key.is_invite(), cfg, now);
        self.insert(key, tx);
        Ok(actions)
    }

    /// A request (not an ACK: feed those to [`Self::handle`] as [`Incoming::Ack`])
    /// arrived: a retransmission if its transaction is live, else a new server
    /// transaction.
    pub fn on_request(
        &mut self,
        now: Millis,
        key: TransactionKey,
        transport: Transport,
    ) -> Result<Actions<M>, TableError> {
        if self.live.contains_key(&key) {
            self.handle(now, &key, Event::Received(Incoming::Request))
        } else {
            self.start_server(now, key, transport)
        }
    }

    /// Feeds an event to the live transaction `key`.
    pub fn handle(
        &mut self,
        now: Millis,
        key: &TransactionKey,
        event: Event<M>,
    ) -> Result<Actions<M>, TableError> {
        let entry = self.live.get_mut(key).ok_or(TableError::NoMatch)?;
        let actions = entry.tx.on_event(event, now);
        if refile(&mut self.deadlines, key, entry) {
            self.live.remove(key);
        }
        Ok(actions)
    }

    /// Drops a live transaction without further action: the TU abandons a client
    /// transaction whose destination stays silent (the proxy fails over before Timer B,
    /// RFC 3261 §16.8 leaves that timing to the TU). Returns whether it was live.
    pub fn remove(&mut self, key: &TransactionKey) -> bool {
        match self.live.remove(key) {
            Some(entry) => {
                if let Some(d) = entry.deadline {
                    self.deadlines.remove(&(d, key.clone()));
                }
                true
            }
            None => false,
        }
    }

    /// Fires every timer due at `now`, in deadline order.
    pub fn poll_timers(&mut self, now: Millis) -> Vec<(TransactionKey, Action<M>)> {
        let mut due = Vec::new();
        while let Some((d, _)) = self.deadlines.first() {
            if *d > now {
                break;
            }
            if let Some((_, key)) = self.deadlines.pop_first() {
                due.push(key);
            }
        }
        let mut out = Vec::new();
        for key in due {
            let Some(entry) = self.live.get_mut(&key) else {
                continue;
            };
            // The index entry is gone; forget it so `refile` does not look for it.
            entry.deadline = None;
            let actions = entry.tx.on_timer(now);
            if refile(&mut self.deadlines, &key, entry) {
                self.live.remove(&key);
            }
            out.extend(actions.into_iter().map(|a| (key.clone(), a)));
        }
        out
    }

    fn config(&self, transport: Transport) -> Config {
        Config {
            timers: self.timers,
            transport,
        }
    }

    fn check_room(&self, key: &TransactionKey) -> Result<(), TableError> {
        if self.live.contains_key(key) {
            return Err(TableError::Duplicate);
        }
        if self.live.len() >= self.cap {
            return Err(TableError::Overloaded { cap: self.cap });
        }
        Ok(())
    }

    fn insert(&mut self, key: TransactionKey, tx: Transaction<M>) {
        let mut entry = Entry { tx, deadline: None };
        if !refile(&mut self.deadlines, &key, &mut entry) {
            self.live.insert(key, entry);
        }
    }
}

/// Files `key` in `deadlines` under its transaction's next deadline (none once it is
/// terminated), moving it only if that changed. Returns whether the transaction is
/// terminated: the caller then drops its entry.
fn refile<M: Clone>(
    deadlines: &mut BTreeSet<(Millis, TransactionKey)>,
    key: &TransactionKey,
    entry: &mut Entry<M>,
) -> bool {
    let terminated = entry.tx.is_terminated();
    let next = if terminated {
        None
    } else {
        entry.tx.next_deadline()
    };
    if next != entry.deadline {
        if let Some(old) = entry.deadline {
            deadlines.remove(&(old, key.clone()));
        }
        if let Some(new) = next {
            deadlines.insert((new, key.clone()));
        }
        entry.deadline = next;
    }
    terminated
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{MessageRef, State};
    use super::*;

    fn skey(b: &str, m: &str) -> TransactionKey {
        TransactionKey::server(b, "10.0.0.9:5060", m).unwrap()
    }

    #[test]
    fn server_invite_lifecycle_through_the_table() {
        let mut t: Table<Msg> = Table::new(Timers::default(), 10);
        let k = skey("z9hG4bK1", "INVITE");
        let a = t
            .on_request(ms(0), k.clone(), Transport::Unreliable)
            .unwrap();
        assert_eq!(a, vec![Action::PassUp(Incoming::Request)]);
        t.handle(ms(0), &k, resp(100, "100")).unwrap();
        // Retransmission: absorbed, last provisional re-sent.
        let a = t
            .on_request(ms(500), k.clone(), Transport::Unreliable)
            .unwrap();
        assert_eq!(a, vec![Action::Transmit(MessageRef::Response("100"))]);
        t.handle(ms(1_000), &k, resp(486, "486")).unwrap();
        assert_eq!(t.next_deadline(), Some(ms(1_500)));
        let fired = t.poll_timers(ms(1_500));
        assert_eq!(
            fired,
            vec![(k.clone(), Action::Transmit(MessageRef::Response("486")))]
        );
        let ack = skey("z9hG4bK1", "ACK");
        t.handle(ms(2_000), &ack, rx(Incoming::Ack)).unwrap();
        assert_eq!(t.get(&k).map(|x| x.state()), Some(State::Confirmed));
        assert_eq!(t.next_deadline(), Some(ms(7_000)));
        let fired = t.poll_timers(ms(7_000));
        assert_eq!(fired, vec![(k.clone(), Action::Terminated)]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
        assert_eq!(
            t.handle(ms(7_001), &k, rx(Incoming::Ack)),
            Err(TableError::NoMatch)
        );
    }

    #[test]
    fn client_transactions_and_removal_on_terminated() {
        let mut t: Table<Msg> = Table::new(Timers::default(), 10);
        let k = TransactionKey::client("z9hG4bKc1", "OPTIONS").unwrap();
        let a = t
            .start_client(ms(0), k.clone(), Transport::Reliable, "OPTIONS")
            .unwrap();
        assert_eq!(a, vec![Action::Transmit(MessageRef::Request("OPTIONS"))]);
        assert_eq!(
            t.start_client(ms(0), k.clone(), Transport::Reliable, "OPTIONS"),
            Err(TableError::Duplicate)
        );
        let a = t.handle(ms(10), &k, rx(Incoming::Final(200))).unwrap();
        assert_eq!(
            a,
            vec![Action::PassUp(Incoming::Final(200)), Action::Terminated]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn cap_refuses_new_transactions_with_overload() {
        let mut t: Table<Msg> = Table::new(Timers::default(), 2);
        t.on_request(ms(0), skey("z9hG4bKa", "INVITE"), Transport::Unreliable)
            .unwrap();
        t.on_request(ms(0), skey("z9hG4bKb", "INVITE"), Transport::Unreliable)
            .unwrap();
        assert_eq!(
            t.on_request(ms(0), skey("z9hG4bKc", "INVITE"), Transport::Unreliable),
            Err(TableError::Overloaded { cap: 2 })
        );
        // Retransmissions of live transactions still work at the cap.
        assert!(t
            .on_request(ms(1), skey("z9hG4bKa", "INVITE"), Transport::Unreliable)
            .is_ok());
        let c = TransactionKey::client("z9hG4bKx", "INVITE").unwrap();
        assert_eq!(
            t.start_client(ms(0), c, Transport::Unreliable, "INVITE"),
            Err(TableError::Overloaded { cap: 2 })
        );
    }

    #[test]
    fn wrong_roles_and_ack_are_refused() {
        let mut t: Table<Msg> = Table::new(Timers::default(), 2);
        let s = skey("z9hG4bKa", "INVITE");
        let c = TransactionKey::client("z9hG4bKa", "INVITE").unwrap();
        let ack = TransactionKey::client("z9hG4bKa", "ACK").unwrap();
        assert_eq!(
            t.start_client(ms(0), s, Transport::Reliable, "x"),
            Err(TableError::WrongRole)
        );
        assert_eq!(
            t.start_server(ms(0), c, Transport::Reliable),
            Err(TableError::WrongRole)
        );
        assert_eq!(
            t.start_client(ms(0), ack, Transport::Reliable, "x"),
            Err(TableError::NotTransactional)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn poll_timers_fires_in_deadline_order_across_transactions() {
        let mut t: Table<Msg> = Table::new(Timers::default(), 10);
        let a = TransactionKey::client("z9hG4bKa", "INVITE").unwrap();
        let b = TransactionKey::client("z9hG4bKb", "REGISTER").unwrap();
        t.start_client(ms(0), a.clone(), Transport::Unreliable, "A")
            .unwrap();
        t.start_client(ms(100), b.clone(), Transport::Unreliable, "B")
            .unwrap();
        assert_eq!(t.poll_timers(ms(499)), vec![]);
        assert_eq!(
            t.poll_timers(ms(600)),
            vec![
                (a.clone(), Action::Transmit(MessageRef::Request("A"))),
                (b.clone(), Action::Transmit(MessageRef::Request("B"))),
            ]
        );
        // Everything times out by 64·T1 after its start.
        let mut terminated = Vec::new();
        while let Some(d) = t.next_deadline() {
            assert!(d.0 <= 32_100);
            for (k, act) in t.poll_timers(d) {
                if act == Action::Terminated {
                    terminated.push(k);
                }
            }
        }
        assert_eq!(terminated, vec![a, b]);
        assert!(t.is_empty());
    }

    #[test]
    fn many_transactions_stay_consistent() {
        let mut t: Table<u32> = Table::new(Timers::default(), 1_000);
        for i in 0..1_000u32 {
            let k = TransactionKey::server(&format!("z9hG4bK{i}"), "h:5060", "MESSAGE").unwrap();
            t.on_request(ms(u64::from(i)), k.clone(), Transport::Unreliable)
                .unwrap();
            t.handle(
                ms(u64::from(i)),
                &k,
                Event::Send(super::super::Outgoing::Response { code: 200, msg: i }),
            )
            .unwrap();
        }
        assert_eq!(t.len(), 1_000);
        let fired = t.poll_timers(ms(40_000));
        assert_eq!(fired.len(), 1_000);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }
}

//! Property tests without external crates: a deterministic xorshift generator drives
//! random event and timer sequences; every failure names its seed for replay.

use super::{
    Action, Event, Incoming, Kind, MessageRef, Millis, Outgoing, State, Table, Timers, Transaction,
    TransactionKey, Transport,
};

use crate::test_rng::Rng;

const CODES: &[u16] = &[100, 180, 183, 200, 202, 302, 404, 408, 486, 500, 503, 603];
const FINALS: &[u16] = &[200, 202, 302, 404, 486, 500, 503, 603];

fn random_timers(rng: &mut Rng) -> Timers {
    if rng.chance(2) {
        return Timers::default();
    }
    let t1 = rng.below(1_000);
    Timers {
        t1: Millis(t1),
        t2: Millis(t1 + rng.below(8_000)),
        t4: Millis(rng.below(6_000)),
    }
}

fn random_event(rng: &mut Rng, n: u32) -> Event<u32> {
    match rng.below(20) {
        0 => Event::TransportError,
        1 | 2 => Event::Send(Outgoing::Request(n)),
        3..=6 => Event::Send(Outgoing::Response {
            code: rng.pick(CODES),
            msg: n,
        }),
        7..=9 => Event::Received(Incoming::Request),
        10..=12 => Event::Received(Incoming::Ack),
        13..=15 => Event::Received(Incoming::Provisional(rng.pick(&[100, 180, 183]))),
        _ => Event::Received(Incoming::Final(rng.pick(FINALS))),
    }
}

/// Invariants checked after every call into one transaction.
struct Checker {
    seed: u64,
    kind: Kind,
    t2: Millis,
    punctual: bool,
    finals_up: u32,
    terminated: bool,
    last_request_tx: Option<Millis>,
}

impl Checker {
    fn check(&mut self, tx: &Transaction<u32>, actions: &[Action<u32>], now: Millis, timer: bool) {
        let seed = self.seed;
        if self.terminated {
            assert!(actions.is_empty(), "seed {seed}: actions after Terminated");
        }
        let client = matches!(self.kind, Kind::InviteClient | Kind::NonInviteClient);
        let mut retransmitted = false;
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::Terminated => {
                    assert_eq!(i + 1, actions.len(), "seed {seed}: Terminated not last");
                    assert!(!self.terminated, "seed {seed}: Terminated twice");
                    self.terminated = true;
                }
                Action::PassUp(Incoming::Final(_)) => {
                    self.finals_up += 1;
                    assert!(self.finals_up <= 1, "seed {seed}: final passed up twice");
                }
                Action::PassUp(Incoming::Request) => {
                    panic!("seed {seed}: request retransmission passed up")
                }
                Action::PassUp(_) | Action::PassUpRetransmitted2xx(_) => {
                    assert!(client || self.kind == Kind::InviteServer, "seed {seed}");
                }
                Action::Transmit(MessageRef::Request(_)) => {
                    assert!(client, "seed {seed}: server sent a request");
                    if self.kind == Kind::NonInviteClient && self.punctual {
                        if let Some(prev) = self.last_request_tx {
                            assert!(
                                now.0 - prev.0 <= self.t2.0,
                                "seed {seed}: NICT retransmission gap {} > T2",
                                now.0 - prev.0
                            );
                        }
                    }
                    self.last_request_tx = Some(now);
                    retransmitted |= timer;
                }
                Action::Transmit(MessageRef::Ack { .. }) => {
                    assert_eq!(self.kind, Kind::InviteClient, "seed {seed}: stray ACK");
                }
                Action::Transmit(MessageRef::Response(_)) => {
                    assert!(!client, "seed {seed}: client sent a response");
                    retransmitted |= timer;
                }
                Action::Timeout | Action::TransportError => {}
            }
        }
        assert_eq!(
            tx.is_terminated(),
            self.terminated,
            "seed {seed}: state and Terminated action disagree"
        );
        match tx.next_deadline() {
            Some(d) => {
                assert!(d > now, "seed {seed}: deadline {d:?} not after now {now:?}");
                let capped = matches!(self.kind, Kind::NonInviteClient | Kind::InviteServer);
                if retransmitted && capped {
                    assert!(
                        d.0 - now.0 <= self.t2.0,
                        "seed {seed}: next retransmission beyond T2"
                    );
                }
            }
            None => assert!(
                matches!(
                    tx.state(),
                    State::Terminated | State::Proceeding | State::Trying
                ) && (tx.state() != State::Trying || self.kind == Kind::NonInviteServer),
                "seed {seed}: {:?} without a timer in {:?}",
                self.kind,
                tx.state()
            ),
        }
    }
}

fn run_one(seed: u64) {
    let mut rng = Rng::new(seed);
    let kind = rng.pick(&[
        Kind::InviteClient,
        Kind::NonInviteClient,
        Kind::InviteServer,
        Kind::NonInviteServer,
    ]);
    let transport = rng.pick(&[Transport::Unreliable, Transport::Reliable]);
    let timers = random_timers(&mut rng);
    let cfg = super::Config { timers, transport };
    let mut now = Millis(rng.below(1 << 40));
    let (mut tx, first) = match kind {
        Kind::InviteClient => Transaction::client(true, 0, cfg, now),
        Kind::NonInviteClient => Transaction::client(false, 0, cfg, now),
        Kind::InviteServer => Transaction::server(true, cfg, now),
        Kind::NonInviteServer => Transaction::server(false, cfg, now),
    };
    let mut ck = Checker {
        seed,
        kind,
        t2: timers.t2(),
        punctual: rng.chance(2),
        finals_up: 0,
        terminated: false,
        last_request_tx: None,
    };
    // The creation actions: servers pass the request up once, clients send it.
    let first_rest: Vec<_> = first
        .into_iter()
        .filter(|a| *a != Action::PassUp(Incoming::Request))
        .collect();
    ck.check(&tx, &first_rest, now, false);

    let mut last_event = now;
    for n in 1..=rng.below(40) {
        let step = rng.below(3_000);
        let target = Millis(now.0 + step);
        if rng.chance(3) {
            // A timer poll (possibly early, on time, or late).
            now = match tx.next_deadline() {
                Some(d) if ck.punctual || rng.chance(2) => d.min(target),
                _ => target,
            };
            let a = tx.on_timer(now);
            ck.check(&tx, &a, now, true);
        } else {
            if ck.punctual {
                // Never skip a deadline: fire timers on time first.
                while let Some(d) = tx.next_deadline().filter(|d| *d <= target) {
                    now = d;
                    let a = tx.on_timer(now);
                    ck.check(&tx, &a, now, true);
                }
            }
            now = now.max(target);
            let a = tx.on_event(random_event(&mut rng, u32::try_from(n).unwrap_or(0)), now);
            ck.check(&tx, &a, now, false);
            last_event = now;
        }
    }

    // The TU finishes its part, so every machine has a timer that ends it.
    if !tx.is_terminated() {
        let close = match (kind, tx.state()) {
            (Kind::InviteServer | Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                Some(Event::Send(Outgoing::Response {
                    code: rng.pick(FINALS),
                    msg: 99,
                }))
            }
            (Kind::InviteClient, State::Proceeding) => {
                Some(Event::Received(Incoming::Final(rng.pick(FINALS))))
            }
            _ => None,
        };
        if let Some(ev) = close {
            let a = tx.on_event(ev, now);
            ck.check(&tx, &a, now, false);
            last_event = now;
        }
    }

    let t1 = timers.t1();
    let bound = t1.saturating_mul(64).max(timers.timer_d()) + timers.t4;
    let mut polls = 0;
    while let Some(d) = tx.next_deadline() {
        now = d;
        let a = tx.on_timer(now);
        ck.check(&tx, &a, now, true);
        polls += 1;
        assert!(polls < 100_000, "seed {seed}: timers never end");
    }
    assert!(
        tx.is_terminated(),
        "seed {seed}: {kind:?} stuck in {:?}",
        tx.state()
    );
    assert!(
        now.0 <= last_event.0 + bound.0,
        "seed {seed}: terminated at {now:?}, last event {last_event:?}, bound {bound:?}"
    );
}

#[test]
fn random_sequences_keep_the_invariants() {
    for seed in 0..20_000 {
        run_one(seed);
    }
}

/// The table under random traffic: never more live transactions than the cap, the
/// deadline index never in the past, and everything drains once the TU finishes.
fn run_table(seed: u64) {
    let mut rng = Rng::new(seed ^ 0xA5A5);
    let cap = usize::try_from(1 + rng.below(6)).unwrap_or(1);
    let mut t: Table<u32> = Table::new(random_timers(&mut rng), cap);
    let mut keys = Vec::new();
    for i in 0..8 {
        let b = format!("z9hG4bK{i}");
        let m = if i % 2 == 0 { "INVITE" } else { "OPTIONS" };
        let k = if i < 4 {
            TransactionKey::server(&b, "h:5060", m)
        } else {
            TransactionKey::client(&b, m)
        };
        keys.push(k.unwrap_or_else(|e| panic!("seed {seed}: {e}")));
    }
    let mut now = Millis(0);
    for n in 0..rng.below(80) {
        now = Millis(now.0 + rng.below(2_000));
        let k = keys[usize::try_from(rng.below(8)).unwrap_or(0)].clone();
        let transport = rng.pick(&[Transport::Unreliable, Transport::Reliable]);
        let msg = u32::try_from(n).unwrap_or(0);
        match rng.below(4) {
            0 => {
                let _ = t.poll_timers(now);
            }
            1 if k.role() == super::Role::Server => {
                let _ = t.on_request(now, k, transport);
            }
            1 => {
                let _ = t.start_client(now, k, transport, msg);
            }
            _ => {
                let _ = t.handle(now, &k, random_event(&mut rng, msg));
            }
        }
        assert!(t.len() <= cap, "seed {seed}: over cap");
    }
    // Finish every TU duty, then only timers run.
    for k in &keys {
        let ev = if k.role() == super::Role::Server {
            Event::Send(Outgoing::Response { code: 500, msg: 0 })
        } else {
            Event::Received(Incoming::Final(500))
        };
        let _ = t.handle(now, k, ev);
    }
    let mut polls = 0;
    while let Some(d) = t.next_deadline() {
        now = now.max(d);
        let _ = t.poll_timers(now);
        if let Some(next) = t.next_deadline() {
            assert!(next > now, "seed {seed}: deadline index in the past");
        }
        polls += 1;
        assert!(polls < 100_000, "seed {seed}: table never drains");
    }
    assert!(
        t.is_empty(),
        "seed {seed}: transactions left without timers"
    );
}

#[test]
fn random_table_traffic_drains() {
    for seed in 0..3_000 {
        run_table(seed);
    }
}

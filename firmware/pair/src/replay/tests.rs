use super::*;
use crate::wire::{Flags, PathId, WireRole};

const A: NodeId = NodeId::ZERO;
const B: NodeId = NodeId::ONE;

fn hb(sender: NodeId, session: u64, seq: u64, echo: u64) -> Heartbeat {
    Heartbeat {
        sender,
        path: PathId::SYNC_LINK,
        session,
        seq,
        echo,
        term: 1,
        role: WireRole::Standby,
        priority: 1,
        health: 100,
        synced: true,
        watermark: 0,
        flags: Flags::EMPTY,
    }
}

/// One side of a pair: its session, its counter and its gate for the other side.
struct Side {
    id: NodeId,
    session: u64,
    seq: u64,
    gate: ReplayGate,
}

impl Side {
    fn new(id: NodeId, session: u64) -> Side {
        Side {
            id,
            session,
            seq: 0,
            gate: ReplayGate::new(id.peer()),
        }
    }

    fn send(&mut self) -> Heartbeat {
        self.seq += 1;
        hb(
            self.id,
            self.session,
            self.seq,
            self.gate.seen_peer_session(),
        )
    }

    fn recv(&mut self, h: &Heartbeat) -> Result<Accept, Reject> {
        self.gate.check(h, self.session)
    }

    /// What the driver does when the election declares the peer dead.
    fn give_up(&mut self, new_session: u64) {
        self.session = new_session;
        self.gate.peer_lost();
    }
}

/// Runs the start-up handshake between fresh sides; returns the datagrams exchanged.
fn handshake(a: &mut Side, b: &mut Side) -> usize {
    for n in 1..=8 {
        let h = a.send();
        let ra = b.recv(&h);
        let h = b.send();
        let rb = a.recv(&h);
        if a.gate.peer_session() == Some(b.session) && b.gate.peer_session() == Some(a.session) {
            return 2 * n;
        }
        assert!(ra.is_ok() || ra == Err(Reject::UnknownSession), "{ra:?}");
        assert!(rb.is_ok() || rb == Err(Reject::UnknownSession), "{rb:?}");
    }
    panic!("no handshake");
}

#[test]
fn start_up_handshake_takes_one_round_trip() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    // A speaks first, echoing nothing: B notes A's session but cannot accept it.
    let h = a.send();
    assert_eq!(b.recv(&h), Err(Reject::UnknownSession));
    assert_eq!(b.gate.seen_peer_session(), 0xa1);
    // B echoes A's session: A accepts B at once.
    let h = b.send();
    assert_eq!(h.echo, 0xa1);
    assert_eq!(a.recv(&h), Ok(Accept::NewSession));
    // A now echoes B's session: B accepts A.
    let h = a.send();
    assert_eq!(b.recv(&h), Ok(Accept::NewSession));
    assert_eq!(a.gate.peer_session(), Some(0xb1));
    assert_eq!(b.gate.peer_session(), Some(0xa1));
    // And from then on in order.
    let h = b.send();
    assert_eq!(a.recv(&h), Ok(Accept::Newest));
}

#[test]
fn restart_handshake_after_peer_lost_takes_one_round_trip() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    // B restarts: new session, fresh gate, counter from 1.
    let mut b = Side::new(B, 0xb2);
    let h = b.send();
    assert_eq!(
        a.recv(&h),
        Err(Reject::UnknownSession),
        "echo 0 proves nothing"
    );
    // A's election declares the peer dead: new session for A, old one dropped.
    a.give_up(0xa2);
    // One round trip: A echoes b2 (seen), B accepts; B echoes a2, A accepts.
    let h = a.send();
    assert_eq!(h.echo, 0xb2);
    assert_eq!(b.recv(&h), Ok(Accept::NewSession));
    let h = b.send();
    assert_eq!(h.echo, 0xa2);
    assert_eq!(a.recv(&h), Ok(Accept::NewSession));
}

#[test]
fn old_session_replayed_after_restart_is_rejected_even_echoing_an_old_session_of_ours() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    let recorded: Vec<Heartbeat> = (0..5).map(|_| b.send()).collect();
    for h in &recorded {
        assert!(a.recv(h).is_ok());
    }
    // B dies; A gives it up and moves to a2. B comes back as b2.
    a.give_up(0xa2);
    let mut b = Side::new(B, 0xb2);
    // Every recorded datagram echoes a1, A's old session: refused, whatever its seq.
    for h in &recorded {
        assert_eq!(a.recv(h), Err(Reject::UnknownSession));
        let mut h = *h;
        h.seq += 1_000;
        assert_eq!(a.recv(&h), Err(Reject::UnknownSession));
    }
    // A datagram of yet another old session of B's that echoes a1 is refused too.
    assert_eq!(a.recv(&hb(B, 0xb0, 9, 0xa1)), Err(Reject::UnknownSession));
    // The real B still gets in: its first datagram is noted (the replays above made A's
    // echo point at old sessions meanwhile), A echoes it, and B echoes a2.
    let h = b.send();
    assert_eq!(a.recv(&h), Err(Reject::UnknownSession));
    let h = a.send();
    assert_eq!(b.recv(&h), Ok(Accept::NewSession));
    let h = b.send();
    assert_eq!(a.recv(&h), Ok(Accept::NewSession));
    // After that, the old datagrams are still refused.
    for h in &recorded {
        assert_eq!(a.recv(h), Err(Reject::UnknownSession));
    }
    assert_eq!(a.gate.peer_session(), Some(0xb2));
}

#[test]
fn a_given_up_session_comes_back_only_through_the_handshake() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    // Half a handshake: A accepted b1, but B never heard A echo b1 (one-way loss).
    let h = a.send();
    assert_eq!(b.recv(&h), Err(Reject::UnknownSession));
    let recorded: Vec<Heartbeat> = (0..5).map(|_| b.send()).collect();
    assert_eq!(a.recv(&recorded[0]), Ok(Accept::NewSession));
    // A gives B up. B holds nothing of A's, so it has no reason to leave b1.
    a.give_up(0xa2);
    for h in &recorded {
        assert_eq!(a.recv(h), Err(Reject::UnknownSession), "echoes a1");
    }
    let h = a.send();
    assert_eq!(h.echo, 0xb1);
    assert_eq!(b.recv(&h), Ok(Accept::NewSession));
    // b1 now echoes a2: it is running now, so it is accepted again, with a fresh window
    // that counts everything sealed before as seen.
    let h = b.send();
    assert_eq!(h.echo, 0xa2);
    assert_eq!(a.recv(&h), Ok(Accept::NewSession));
    for h in &recorded {
        assert_eq!(a.recv(h), Err(Reject::Replay));
    }
    let h = b.send();
    assert_eq!(a.recv(&h), Ok(Accept::Newest));
}

#[test]
fn a_new_window_counts_everything_before_the_handshake_as_seen() {
    let mut g = ReplayGate::new(B);
    assert_eq!(g.check(&hb(B, 7, 1000, 1), 1), Ok(Accept::NewSession));
    assert_eq!(g.check(&hb(B, 7, 999, 1), 1), Err(Reject::Replay));
    assert_eq!(g.check(&hb(B, 7, 1001, 1), 1), Ok(Accept::Newest));
}

#[test]
fn duplicate_seq_is_a_replay() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    let h = b.send();
    assert_eq!(a.recv(&h), Ok(Accept::Newest));
    assert_eq!(a.recv(&h), Err(Reject::Replay));
    let g = b.send();
    assert_eq!(a.recv(&g), Ok(Accept::Newest));
    assert_eq!(a.recv(&h), Err(Reject::Replay));
    assert_eq!(a.recv(&g), Err(Reject::Replay));
    assert_eq!(a.gate.counters().replay, 3);
}

#[test]
fn reordering_within_the_window_is_accepted_once() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    let hs: Vec<Heartbeat> = (0..WINDOW).map(|_| b.send()).collect();
    // The newest first, then all the others in reverse: every one is inside the window.
    let (last, rest) = hs.split_last().unwrap();
    assert_eq!(a.recv(last), Ok(Accept::Newest));
    for h in rest.iter().rev() {
        assert_eq!(a.recv(h), Ok(Accept::Reordered), "seq {}", h.seq);
    }
    for h in &hs {
        assert_eq!(a.recv(h), Err(Reject::Replay));
    }
}

#[test]
fn below_the_window_is_too_old() {
    let mut g = ReplayGate::new(B);
    assert_eq!(g.check(&hb(B, 7, 1000, 1), 1), Ok(Accept::NewSession));
    // A jump past the window forgets the old bitmap.
    assert_eq!(g.check(&hb(B, 7, 1100, 1), 1), Ok(Accept::Newest));
    // 63 below the newest: the window's last entry.
    assert_eq!(g.check(&hb(B, 7, 1100 - 63, 1), 1), Ok(Accept::Reordered));
    assert_eq!(g.check(&hb(B, 7, 1100 - 64, 1), 1), Err(Reject::TooOld));
    assert_eq!(g.check(&hb(B, 7, 1000, 1), 1), Err(Reject::TooOld));
    assert_eq!(g.check(&hb(B, 7, 0, 1), 1), Err(Reject::TooOld));
    assert_eq!(g.check(&hb(B, 7, 5000, 1), 1), Ok(Accept::Newest));
    assert_eq!(g.check(&hb(B, 7, 4999, 1), 1), Ok(Accept::Reordered));
    assert_eq!(g.check(&hb(B, 7, u64::MAX, 1), 1), Ok(Accept::Newest));
    assert_eq!(g.check(&hb(B, 7, u64::MAX, 1), 1), Err(Reject::Replay));
}

#[test]
fn a_second_session_while_one_is_live_is_never_accepted() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    // Datagrams of other B sessions that do not echo a1 (replays from earlier runs),
    // interleaved with the live session's: refused, only the seen note follows.
    for n in 0..20 {
        assert_eq!(
            a.recv(&hb(B, 0xc0 + n, 100 + n, 0xdead)),
            Err(Reject::UnknownSession)
        );
        assert_eq!(a.gate.seen_peer_session(), 0xc0 + n);
        let h = b.send();
        assert_eq!(a.recv(&h), Ok(Accept::Newest));
        assert_eq!(a.gate.seen_peer_session(), 0xb1);
    }
    assert_eq!(a.gate.peer_session(), Some(0xb1));
    // One that echoes a1 is not accepted either: it supersedes b1 (next test).
    assert_eq!(a.recv(&hb(B, 0xbb, 1, 0xa1)), Err(Reject::Superseded));
    assert_eq!(a.gate.peer_session(), None);
    // The driver renews A's session; 0xbb still echoes a1: not accepted.
    a.session = 0xa2;
    assert_eq!(a.recv(&hb(B, 0xbb, 2, 0xa1)), Err(Reject::UnknownSession));
}

#[test]
fn a_new_session_that_echoes_ours_supersedes_the_accepted_one_and_both_meet_again() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    // B gave A up after a one-way loss and moved to b2; its heartbeats still echo a1.
    b.give_up(0xb2);
    let h = b.send();
    assert_eq!(h.echo, 0xa1);
    assert_eq!(a.recv(&h), Err(Reject::Superseded));
    assert_eq!(a.gate.peer_session(), None);
    assert_eq!(a.gate.seen_peer_session(), 0xb2);
    a.session = 0xa2;
    // b2 is not accepted as it is: it must echo a2 first. A's next heartbeat invites it.
    let h = b.send();
    assert_eq!(a.recv(&h), Err(Reject::UnknownSession));
    let h = a.send();
    assert_eq!(h.echo, 0xb2);
    assert_eq!(b.recv(&h), Ok(Accept::NewSession));
    let h = b.send();
    assert_eq!(a.recv(&h), Ok(Accept::NewSession));
    assert_eq!(a.gate.counters().superseded, 1);
}

#[test]
fn a_peer_that_still_holds_our_old_session_supersedes_it_in_one_round_trip() {
    let mut a = Side::new(A, 0xa1);
    let mut b = Side::new(B, 0xb1);
    handshake(&mut a, &mut b);
    // A gave B up; B still holds a1 and runs b1.
    a.give_up(0xa2);
    let h = a.send();
    assert_eq!(h.echo, 0xb1);
    assert_eq!(b.recv(&h), Err(Reject::Superseded));
    b.session = 0xb2;
    let h = b.send();
    assert_eq!(h.echo, 0xa2);
    assert_eq!(a.recv(&h), Ok(Accept::NewSession));
    let h = a.send();
    assert_eq!(h.echo, 0xb2);
    assert_eq!(b.recv(&h), Ok(Accept::NewSession));
}

#[test]
fn reflected_and_foreign_datagrams_are_refused_without_touching_state() {
    let mut a = Side::new(A, 0xa1);
    let own = a.send();
    assert_eq!(a.recv(&own), Err(Reject::Sender));
    assert_eq!(a.gate.seen_peer_session(), 0);
    assert_eq!(a.gate.counters().sender, 1);
}

#[test]
fn session_zero_of_ours_accepts_nothing() {
    let mut g = ReplayGate::new(B);
    assert_eq!(g.check(&hb(B, 5, 1, 0), 0), Err(Reject::UnknownSession));
}

#[test]
fn new_sessions_are_nonzero_and_differ() {
    let a = new_session().unwrap();
    let b = new_session().unwrap();
    assert_ne!(a, 0);
    assert_ne!(a, b);
}

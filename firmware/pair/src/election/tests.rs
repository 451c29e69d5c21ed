//! One test per rule, as recorded event sequences: each step is (time, event, the role and
//! term after it, the reason of the transition it caused or `None`).

use super::*;
use crate::wire::PathId;

const ME: NodeId = NodeId::ZERO;
const PEER: NodeId = NodeId::ONE;
const P0: PathId = PathId::SYNC_LINK;
const P1: PathId = PathId::PRIVATE_SEGMENT;

/// interval 25 ms, 4 misses: D = 100 ms; late after 25 ms; fenced for 200 ms.
fn cfg() -> ElectionConfig {
    ElectionConfig {
        node: ME,
        priority: 100,
        interval: Millis(25),
        misses: 4,
        paths: 2,
        preempt_delay: None,
        late_after: Millis(25),
        fence_hold: Millis(200),
        link_up_grace: Millis(100),
    }
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Tick,
    Hb(PathId, Heartbeat),
    Link(PathId, bool),
    Health(u8),
    Synced(bool),
    Handover,
}

use Ev::*;

/// A heartbeat from the peer with the given role and term; priority 100, health 100,
/// synced, no flags.
fn hb(role: WireRole, term: u64) -> Heartbeat {
    Heartbeat {
        sender: PEER,
        path: P0,
        session: 1,
        seq: 1,
        echo: 1,
        term,
        role,
        priority: 100,
        health: 100,
        synced: true,
        watermark: 0,
        flags: Flags::EMPTY,
    }
}

fn active(term: u64) -> Heartbeat {
    hb(WireRole::Active, term)
}

fn standby(term: u64) -> Heartbeat {
    hb(WireRole::Standby, term)
}

fn with_health(mut h: Heartbeat, health: u8) -> Heartbeat {
    h.health = health;
    h
}

fn with_priority(mut h: Heartbeat, priority: u8) -> Heartbeat {
    h.priority = priority;
    h
}

fn asking_handover(mut h: Heartbeat) -> Heartbeat {
    h.flags = Flags::HANDOVER;
    h
}

type Step = (u64, Ev, Role, u64, Option<Reason>);

fn feed(e: &mut Election, t: u64, ev: Ev) -> Option<Transition> {
    let now = Millis(t);
    match ev {
        Tick => e.on_tick(now),
        Hb(path, h) => e.on_heartbeat(now, path, &h),
        Link(path, up) => e.on_link(now, path, up),
        Health(h) => {
            e.set_health(h);
            None
        }
        Synced(s) => {
            e.set_synced(s);
            None
        }
        Handover => e.request_handover(now),
    }
}

/// Feeds the script to a machine started at 0 and checks every step.
fn run(cfg: ElectionConfig, script: &[Step]) -> Election {
    let mut e = Election::new(cfg, Millis(0)).unwrap();
    run_on(&mut e, script);
    e
}

fn run_on(e: &mut Election, script: &[Step]) {
    for (n, &(t, ev, role, term, reason)) in script.iter().enumerate() {
        let before = e.role();
        let tr = feed(e, t, ev);
        let ctx = format!("step {n} at {t} ms: {ev:?}");
        assert_eq!(tr.map(|t| t.reason), reason, "{ctx}: transition {tr:?}");
        if let Some(tr) = tr {
            assert_eq!(tr.from, before, "{ctx}");
            assert_eq!(tr.to, e.role(), "{ctx}");
            assert_eq!(tr.term, e.term(), "{ctx}");
        }
        assert_eq!(e.role(), role, "{ctx}: role");
        assert_eq!(e.term(), term, "{ctx}: term");
    }
}

/// Ticks every 25 ms in `from..=to` with no change, in `role` at `term`.
fn quiet(from: u64, to: u64, role: Role, term: u64) -> Vec<Step> {
    (from..=to)
        .step_by(25)
        .map(|t| (t, Tick, role, term, None))
        .collect()
}

/// Ticks every 25 ms in `from..=to`, each after a peer heartbeat on both paths: the peer
/// stays live, nothing changes.
fn heard(from: u64, to: u64, h: Heartbeat, role: Role, term: u64) -> Vec<Step> {
    (from..=to)
        .step_by(25)
        .flat_map(|t| {
            [
                (t, Hb(P0, h), role, term, None),
                (t, Hb(P1, h), role, term, None),
                (t, Tick, role, term, None),
            ]
        })
        .collect()
}

/// We are elected at 10 ms against a standby peer of priority 50, which then says standby
/// at term 1 until 100 ms.
fn elected() -> Vec<Step> {
    cat(&[
        &[(
            10,
            Hb(P0, with_priority(standby(0), 50)),
            A,
            1,
            Some(Reason::Elected),
        )],
        &heard(25, 100, with_priority(standby(1), 50), A, 1),
    ])
}

fn cat(parts: &[&[Step]]) -> Vec<Step> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

const S: Role = Role::Standby;
const A: Role = Role::Active;
const F: Role = Role::Fenced;

#[test]
fn starts_standby_and_holds_down_for_a_dead_interval() {
    let mut e = run(
        cfg(),
        &cat(&[
            &quiet(25, 75, S, 0),
            &[(100, Tick, A, 1, Some(Reason::PeerDead))],
        ]),
    );
    assert!(!e.take_peer_lost(), "a peer never heard is not lost");
    assert_eq!(e.outgoing().role, WireRole::Active);
    assert_eq!(e.outgoing().term, 1);
}

#[test]
fn a_live_standby_peer_we_beat_lifts_the_hold_down() {
    run(
        cfg(),
        &[
            (
                10,
                Hb(P0, with_priority(standby(0), 50)),
                A,
                1,
                Some(Reason::Elected),
            ),
            (25, Tick, A, 1, None),
        ],
    );
}

#[test]
fn both_standby_the_better_one_is_elected_health_then_priority_then_lower_id() {
    // The peer is healthier: it wins although our priority is higher.
    let mut c = cfg();
    c.priority = 200;
    run(
        c,
        &cat(&[
            &[(5, Health(90), S, 0, None)],
            &heard(10, 300, with_health(standby(0), 100), S, 0),
            // Equal health: our priority wins.
            &[(305, Health(100), S, 0, None)],
            &[(310, Hb(P0, standby(0)), A, 1, Some(Reason::Elected))],
        ]),
    );
    // Equal health and priority: the lower node id (ours, 0) wins.
    run(
        cfg(),
        &[(10, Hb(P1, standby(0)), A, 1, Some(Reason::Elected))],
    );
    // Equal health and priority, and we are node 1: the peer (node 0) wins.
    let mut c = cfg();
    c.node = NodeId::ONE;
    let mut e = Election::new(c, Millis(0)).unwrap();
    let mut h = standby(0);
    h.sender = NodeId::ZERO;
    assert_eq!(e.on_heartbeat(Millis(10), P0, &h), None);
    assert_eq!(e.role(), S);
    // A peer that reports health 0 (or is fenced) never beats a healthy node.
    run(
        cfg(),
        &[(
            10,
            Hb(P0, with_priority(with_health(standby(0), 0), 255)),
            A,
            1,
            Some(Reason::Elected),
        )],
    );
}

#[test]
fn a_live_active_peer_keeps_us_standby_and_we_follow_its_term() {
    run(
        cfg(),
        &cat(&[
            &heard(10, 500, active(5), S, 5),
            // Silence: dead after D = 100 ms from the last heartbeat at 485.
            &quiet(525, 575, S, 5),
            &[(600, Tick, A, 6, Some(Reason::PeerDead))],
        ]),
    );
}

#[test]
fn peer_death_is_signalled_once_for_the_driver() {
    let mut e = run(
        cfg(),
        &cat(&[
            &heard(10, 110, active(2), S, 2),
            &quiet(125, 175, S, 2),
            &[(225, Tick, A, 3, Some(Reason::PeerDead))],
        ]),
    );
    assert!(e.take_peer_lost());
    assert!(!e.take_peer_lost());
    assert_eq!(e.counters().peer_deaths, 1);
    assert!(!e.peer().unwrap().live);
}

#[test]
fn peer_death_takes_over_unsynced_but_never_with_health_zero() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    e.set_synced(false);
    run_on(
        &mut e,
        &cat(&[
            &heard(10, 110, active(1), S, 1),
            &[(120, Health(0), S, 1, None)],
            &quiet(125, 400, S, 1),
            &[(410, Health(1), S, 1, None)],
            &[(425, Tick, A, 2, Some(Reason::PeerDead))],
        ]),
    );
}

#[test]
fn a_node_whose_every_link_is_down_never_holds_the_role() {
    // A standby with every link down does not take over, however long it hears nothing;
    // a link back and silence on it: then it does.
    run(
        cfg(),
        &cat(&[
            &heard(10, 160, active(1), S, 1),
            &[
                (170, Link(P0, false), S, 1, None),
                (172, Hb(P1, active(1)), S, 1, None),
                (175, Tick, S, 1, None),
                (180, Link(P1, false), S, 1, None),
            ],
            &quiet(200, 600, S, 1),
            &[(610, Link(P1, true), S, 1, None)],
            // The grace and a full dead interval from the link's return before the peer
            // is dead.
            &quiet(615, 790, S, 1),
            &[(815, Tick, A, 2, Some(Reason::PeerDead))],
        ]),
    );
    // An active whose every link goes down steps down at once.
    run(
        cfg(),
        &cat(&[
            &elected(),
            &[
                (110, Link(P1, false), A, 1, None),
                (115, Tick, A, 1, None),
                (120, Link(P0, false), S, 1, Some(Reason::Isolated)),
                (125, Tick, S, 1, None),
            ],
            &quiet(150, 500, S, 1),
        ]),
    );
}

#[test]
fn a_down_link_counts_as_missed_and_heard_paths_keep_the_peer_alive() {
    run(
        cfg(),
        &cat(&[
            // Heard on path 1 only; path 0's link goes down: still alive through path 1.
            &[(5, Link(P0, false), S, 0, None)],
            &(10..=300)
                .step_by(25)
                .flat_map(|t| [(t, Hb(P1, active(1)), S, 1, None), (t, Tick, S, 1, None)])
                .collect::<Vec<_>>(),
            // Path 1 falls silent: 100 ms after its last heartbeat (at 285), dead.
            &quiet(310, 360, S, 1),
            &[(385, Tick, A, 2, Some(Reason::PeerDead))],
        ]),
    );
}

#[test]
fn a_healthier_standby_takes_over_from_a_live_active_after_the_hold_down() {
    run(
        cfg(),
        &cat(&[
            // Held down during the first D even though the active is less healthy.
            &heard(10, 85, with_health(active(3), 40), S, 3),
            &[(
                110,
                Hb(P0, with_health(active(3), 40)),
                A,
                4,
                Some(Reason::HealthBetter),
            )],
        ]),
    );
    // Equal health: no takeover.
    run(cfg(), &heard(10, 500, with_health(active(3), 100), S, 3));
    // Isolated (every link down at our end) while the less healthy active still counts as
    // live: no takeover, which would only step down at once (rule 8) and flap beside the
    // active (found by chaos_then_calm_leaves_exactly_one_active).
    run(
        cfg(),
        &cat(&[
            &heard(10, 85, with_health(active(3), 40), S, 3),
            &[
                (90, Link(P0, false), S, 3, None),
                (95, Link(P1, false), S, 3, None),
                (110, Hb(P0, with_health(active(3), 40)), S, 3, None),
                (115, Tick, S, 3, None),
                (120, Tick, S, 3, None),
            ],
        ]),
    );
}

#[test]
fn no_preemption_by_default() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    e.set_synced(true);
    run_on(&mut e, &heard(10, 2_000, with_priority(active(1), 1), S, 1));
}

#[test]
fn preemption_needs_priority_synced_health_continuously_for_the_delay() {
    let mut c = cfg();
    c.priority = 200;
    c.preempt_delay = Some(Millis(200));
    let low = with_priority(active(1), 100);
    run(
        c,
        &cat(&[
            // Not synced: no preemption.
            &heard(10, 400, low, S, 1),
            &[(405, Synced(true), S, 1, None)],
            // Synced from 410: the timer runs; unsynced at 505 resets it.
            &heard(410, 500, low, S, 1),
            &[(505, Synced(false), S, 1, None)],
            &heard(510, 560, low, S, 1),
            &[(565, Synced(true), S, 1, None)],
            // Restarted at 585 (first evaluation synced): preempts at 785.
            &heard(585, 760, low, S, 1),
            &[(785, Hb(P0, low), A, 2, Some(Reason::Preempt))],
        ]),
    );
    // Less healthy than the active: no preemption (and the active stays: equal priority
    // is not enough either).
    let mut e = Election::new(c, Millis(0)).unwrap();
    e.set_synced(true);
    e.set_health(90);
    run_on(&mut e, &heard(10, 1_000, low, S, 1));
    let mut e = Election::new(c, Millis(0)).unwrap();
    e.set_synced(true);
    run_on(
        &mut e,
        &heard(10, 1_000, with_priority(active(1), 200), S, 1),
    );
}

#[test]
fn an_active_yields_to_a_higher_term_and_never_to_a_lower_one() {
    run(
        cfg(),
        &cat(&[
            &quiet(25, 75, S, 0),
            &[(100, Tick, A, 1, Some(Reason::PeerDead))],
            // A lower-term active (stale) does not move us; it will yield to us.
            &heard(110, 300, active(0), A, 1),
            // The peer took over with a higher term while partitioned: we yield.
            &[(310, Hb(P0, active(2)), S, 2, Some(Reason::StaleTerm))],
            &heard(325, 500, active(2), S, 2),
        ]),
    );
}

#[test]
fn equal_terms_the_worse_active_steps_down() {
    let partitioned_take_over = cat(&[
        &heard(10, 10, active(1), S, 1),
        // Silence: dead 100 ms after 10, at the first tick from 110 on.
        &quiet(25, 100, S, 1),
        &[(125, Tick, A, 2, Some(Reason::PeerDead))],
    ]);
    // The peer (node 1) also took over at term 2 and is healthier: we step down.
    run(
        cfg(),
        &cat(&[
            &partitioned_take_over,
            &[(130, Hb(P0, with_health(active(2), 100)), A, 2, None)],
            &[(135, Health(50), A, 2, None)],
            &[(
                140,
                Hb(P0, with_health(active(2), 100)),
                S,
                2,
                Some(Reason::TieBreak),
            )],
        ]),
    );
    // Same health and priority: node 0 (we) stays, the peer will step down.
    run(
        cfg(),
        &cat(&[&partitioned_take_over, &heard(150, 300, active(2), A, 2)]),
    );
}

#[test]
fn the_standby_takes_a_handover_when_synced() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    run_on(
        &mut e,
        &cat(&[
            &heard(10, 200, active(4), S, 4),
            // Asked, but not synced: wait.
            &heard(210, 300, asking_handover(active(4)), S, 4),
            &[(305, Synced(true), S, 4, None)],
            &[(
                310,
                Hb(P0, asking_handover(active(4))),
                A,
                5,
                Some(Reason::Handover),
            )],
            // The old active still says active 4 until it sees us: we stay (higher term).
            &heard(325, 400, asking_handover(active(4)), A, 5),
        ]),
    );
}

#[test]
fn the_active_releases_only_when_it_sees_the_peer_active_with_a_higher_term() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    run_on(
        &mut e,
        &cat(&[
            &[(
                10,
                Hb(P0, with_priority(standby(0), 50)),
                A,
                1,
                Some(Reason::Elected),
            )],
            &[(20, Handover, A, 1, None)],
        ]),
    );
    assert!(e.handover_pending());
    assert!(e.outgoing().flags.handover());
    let peer = with_priority(standby(1), 50);
    run_on(
        &mut e,
        &cat(&[
            // Make before break: still active while the peer is standby.
            &heard(25, 200, peer, A, 1),
            &[(
                210,
                Hb(P0, with_priority(active(2), 50)),
                S,
                2,
                Some(Reason::HandedOver),
            )],
        ]),
    );
    assert!(!e.outgoing().flags.handover());
    assert!(!e.handover_pending());
}

#[test]
fn after_a_handover_a_healthier_old_active_does_not_take_the_role_back() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    let peer = |health| with_priority(with_health(active(2), health), 50);
    run_on(
        &mut e,
        &cat(&[
            &[(
                10,
                Hb(P0, with_priority(standby(0), 50)),
                A,
                1,
                Some(Reason::Elected),
            )],
            &[(20, Handover, A, 1, None)],
            &[(30, Hb(P0, peer(80)), S, 2, Some(Reason::HandedOver))],
            // We are at 100, the new active at 80: rule 6 keeps us standby.
            &heard(50, 500, peer(80), S, 2),
            // The new active gets worse than it was at the handover: rule 4 again.
            &[(510, Hb(P0, peer(79)), A, 3, Some(Reason::HealthBetter))],
        ]),
    );
}

#[test]
fn handover_requests_are_ignored_when_not_active_and_can_be_withdrawn() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    assert_eq!(e.request_handover(Millis(5)), None);
    assert!(!e.handover_pending());
    e.on_heartbeat(Millis(10), P0, &with_priority(standby(0), 50));
    assert_eq!(e.role(), A);
    e.request_handover(Millis(15));
    assert!(e.handover_pending());
    e.cancel_handover();
    assert!(!e.outgoing().flags.handover());
}

#[test]
fn a_late_active_fences_itself_and_comes_back_as_standby() {
    let mut e = run(
        cfg(),
        &cat(&[
            &elected(),
            // Stopped from 100 to 400 (the next tick was due at 125).
            &[(400, Tick, F, 1, Some(Reason::LateTimers))],
        ]),
    );
    // Fenced: holds nothing, advertises standby with health 0 so the peer elects itself.
    assert!(!e.role().holds());
    let out = e.outgoing();
    assert_eq!((out.role, out.health), (WireRole::Standby, 0));
    run_on(
        &mut e,
        &cat(&[
            // The peer took over meanwhile (term 2): we follow its term, stay fenced.
            &heard(410, 575, with_priority(active(2), 50), F, 2),
            // fence_hold (200 ms) after the late tick.
            &[(600, Tick, S, 2, Some(Reason::FenceExpired))],
            &heard(610, 1_000, with_priority(active(2), 50), S, 2),
        ]),
    );
}

#[test]
fn a_late_input_of_any_kind_fences_an_active() {
    let mut e = run(cfg(), &elected());
    // The first thing after the stall is a queued heartbeat, not the tick.
    let t = e.on_heartbeat(Millis(300), P0, &with_priority(standby(1), 50));
    assert_eq!(t.map(|t| t.reason), Some(Reason::LateTimers));
    assert_eq!(e.role(), F);
    // The tick right after is not late again.
    assert_eq!(e.on_tick(Millis(301)), None);
    assert_eq!(e.counters().late, 1);
}

#[test]
fn an_unfenced_node_needs_the_peer_or_a_full_dead_interval() {
    // Without hearing the peer: Standby at 600 (late at 400 + 200), Active a full D later.
    run(
        cfg(),
        &cat(&[
            &elected(),
            &[(400, Tick, F, 1, Some(Reason::LateTimers))],
            &quiet(425, 575, F, 1),
            &[(600, Tick, S, 1, Some(Reason::FenceExpired))],
            &quiet(625, 675, S, 1),
            &[(700, Tick, A, 2, Some(Reason::PeerDead))],
        ]),
    );
    // Hearing a standby peer after unfencing: elected at once by rule 3.
    run(
        cfg(),
        &cat(&[
            &elected(),
            &[(400, Tick, F, 1, Some(Reason::LateTimers))],
            &quiet(425, 575, F, 1),
            &[(600, Tick, S, 1, Some(Reason::FenceExpired))],
            &[(
                610,
                Hb(P0, with_priority(standby(1), 50)),
                A,
                2,
                Some(Reason::Elected),
            )],
        ]),
    );
}

#[test]
fn late_inputs_while_fenced_extend_the_fence() {
    run(
        cfg(),
        &cat(&[
            &elected(),
            &[(400, Tick, F, 1, Some(Reason::LateTimers))],
            &[(500, Tick, F, 1, None)],
            &quiet(525, 675, F, 1),
            &[(700, Tick, S, 1, Some(Reason::FenceExpired))],
        ]),
    );
}

#[test]
fn a_late_standby_does_not_take_over_on_a_stale_view() {
    let mut e = run(
        cfg(),
        &cat(&[
            &heard(10, 100, active(1), S, 1),
            // Stopped from 100 to 600: the peer's last heartbeat is 500 ms old, but our
            // view is stale, not the peer dead.
            &[(600, Tick, S, 1, None)],
        ]),
    );
    assert!(!e.peer().unwrap().live);
    // The peer is heard again: nothing happens.
    run_on(&mut e, &heard(610, 800, active(1), S, 1));
    // And if it had really died, a full D after the late tick, not before.
    let mut e = run(cfg(), &heard(10, 100, active(1), S, 1));
    run_on(
        &mut e,
        &cat(&[
            &[(600, Tick, S, 1, None)],
            &quiet(625, 675, S, 1),
            &[(700, Tick, A, 2, Some(Reason::PeerDead))],
        ]),
    );
}

#[test]
fn a_stopped_active_resuming_after_a_takeover_yields_and_never_doubles() {
    // SIGSTOP for 1 s; the peer took over with term 2. On resume the queued heartbeats
    // (old: standby term 1; new: active term 2) come before the first tick.
    run(
        cfg(),
        &cat(&[
            &elected(),
            &[
                (
                    1_100,
                    Hb(P0, with_priority(standby(1), 50)),
                    F,
                    1,
                    Some(Reason::LateTimers),
                ),
                (1_100, Hb(P1, with_priority(active(2), 50)), F, 2, None),
                (1_100, Tick, F, 2, None),
            ],
            &heard(1_125, 1_275, with_priority(active(2), 50), F, 2),
            &[(1_300, Tick, S, 2, Some(Reason::FenceExpired))],
            &heard(1_325, 2_000, with_priority(active(2), 50), S, 2),
        ]),
    );
}

#[test]
fn the_term_never_decreases_and_lower_terms_are_not_adopted() {
    let mut e = run(
        cfg(),
        &cat(&[
            &heard(10, 100, active(7), S, 7),
            &heard(110, 200, active(3), S, 7),
        ]),
    );
    assert_eq!(e.max_seen_term(), 7);
    assert_eq!(e.peer().unwrap().term, 3);
    run_on(
        &mut e,
        &cat(&[
            &quiet(225, 275, S, 7),
            &[(300, Tick, A, 8, Some(Reason::PeerDead))],
        ]),
    );
}

#[test]
fn heartbeats_not_from_the_peer_or_on_unknown_paths_are_ignored() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    let mut own = standby(0);
    own.sender = ME;
    assert_eq!(e.on_heartbeat(Millis(10), P0, &own), None);
    let p3 = PathId::try_from(3).unwrap();
    assert_eq!(
        e.on_heartbeat(Millis(11), p3, &with_priority(standby(0), 1)),
        None
    );
    assert_eq!(e.counters().ignored, 2);
    assert!(e.peer().is_none());
    assert_eq!(e.role(), S);
}

#[test]
fn peer_view_reports_last_heard_per_path() {
    let mut e = Election::new(cfg(), Millis(0)).unwrap();
    e.on_heartbeat(Millis(10), P1, &active(1));
    e.on_heartbeat(Millis(12), P0, &with_health(active(1), 70));
    let v = e.peer().unwrap();
    assert!(v.live);
    assert_eq!(
        v.last_heard,
        [Some(Millis(12)), Some(Millis(10)), None, None]
    );
    assert_eq!((v.role, v.term, v.health), (WireRole::Active, 1, 70));
}

#[test]
fn time_going_backwards_is_treated_as_no_time_passing() {
    run(
        cfg(),
        &cat(&[
            &quiet(25, 75, S, 0),
            &[
                (10, Tick, S, 0, None),
                (100, Tick, A, 1, Some(Reason::PeerDead)),
            ],
        ]),
    );
}

#[test]
fn outgoing_heartbeat_carries_the_election_fields() {
    let mut c = cfg();
    c.priority = 7;
    let mut e = Election::new(c, Millis(0)).unwrap();
    e.set_health(250);
    e.set_synced(true);
    assert_eq!(e.health(), 100);
    let h = e.outgoing().heartbeat(P1, 11, 12, 13, 14);
    assert_eq!(
        (h.sender, h.path, h.session, h.seq, h.echo, h.watermark),
        (ME, P1, 11, 12, 13, 14)
    );
    assert_eq!(
        (h.role, h.term, h.priority, h.health, h.synced),
        (WireRole::Standby, 0, 7, 100, true)
    );
}

#[test]
fn config_is_checked() {
    assert_eq!(ElectionConfig::new(ME).check(), Ok(()));
    assert_eq!(ElectionConfig::new(ME).dead_interval(), Millis(150));
    let mut c = cfg();
    c.interval = Millis(0);
    assert_eq!(c.check(), Err(ConfigError::Interval));
    let mut c = cfg();
    c.paths = 0;
    assert_eq!(c.check(), Err(ConfigError::Paths(0)));
    c.paths = 5;
    assert_eq!(c.check(), Err(ConfigError::Paths(5)));
    let mut c = cfg();
    c.late_after = Millis(51);
    assert_eq!(
        c.check(),
        Err(ConfigError::LateAfter {
            late_after: 51,
            dead: 100
        })
    );
    c.late_after = Millis(50);
    assert_eq!(c.check(), Ok(()));
    c.misses = 1;
    assert!(Election::new(c, Millis(0)).is_err());
}

#[test]
fn transitions_are_counted() {
    let e = run(
        cfg(),
        &cat(&[
            &elected(),
            &[(400, Tick, F, 1, Some(Reason::LateTimers))],
            &quiet(425, 575, F, 1),
            &[(600, Tick, S, 1, Some(Reason::FenceExpired))],
        ]),
    );
    assert_eq!(e.counters().transitions, 3);
}

#[test]
fn a_late_input_carries_no_news_and_asks_for_a_new_session() {
    let mut e = run(cfg(), &heard(10, 100, active(1), S, 1));
    assert!(!e.take_peer_lost());
    // After a stall the first input is a heartbeat from the backlog: the peer as it was
    // before the stall. It is not used, and the driver is told to renew its session.
    let t = e.on_heartbeat(Millis(1_000), P0, &with_health(active(9), 10));
    assert_eq!(t, None);
    assert_eq!(e.term(), 1);
    assert!(!e.peer().unwrap().live);
    assert_eq!(e.peer().unwrap().health, 100);
    assert!(e.take_peer_lost());
    assert_eq!(e.counters().peer_deaths, 0, "late is not a death");
    assert_eq!(e.counters().late, 1);
    // Fresh heartbeats count again.
    run_on(&mut e, &heard(1_010, 1_100, active(1), S, 1));
}

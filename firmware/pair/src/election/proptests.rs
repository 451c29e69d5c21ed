//! Property tests over whole simulated pairs: two [`Election`]s, each behind its own
//! [`ReplayGate`] with the driver's session handling, ticking every interval, and a lossy
//! network between them with random delays (so reordering), drops, one-way and two-way
//! partitions, links going down, health changes, handover requests and CPU stalls (a
//! stalled node neither ticks, sends nor reads; what arrives meanwhile is queued and read
//! when it resumes, before or after its first tick, like a socket buffer after SIGCONT).
//!
//! proptest draws the configuration, the episodes and a seed; the seed drives per-datagram
//! loss and delay through a small xorshift generator. A failure shrinks to a smaller
//! scenario and names it.
//!
//! Properties (the numbering):
//! 1. after the network has been healthy and both nodes ticking on time for 3 dead
//!    intervals (plus `fence_hold`, in case a stall ended both nodes' episodes fenced, plus
//!    the preemption delay and a dead interval, in case a preemption was pending), exactly
//!    one node is Active, at every millisecond until the end;
//! 2. no node's term ever decreases (checked after every input);
//! 3. with a healthy network from the start and no stalls, the initial election is the
//!    only role change;
//! 4. when one node dies (stops ticking, sending and reading), the other is Active within
//!    `(misses + 1) × interval` of the dead node's last heartbeat arriving;
//! 5. a node that resumes from a stall longer than the dead interval is not Active before
//!    it has heard the peer again, and after any heartbeat that shows the peer Active with
//!    term `t`, it is not Active with a term `≤ t`.

use proptest::prelude::*;

use super::{Election, ElectionConfig, Millis, Role, Transition};
use crate::replay::{Reject, ReplayGate};
use crate::wire::{Heartbeat, NodeId, PathId, WireRole, MAX_PATHS};

/// xorshift64* for per-datagram loss and delay.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[derive(Debug, Clone)]
struct Setup {
    interval: u64,
    misses: u32,
    late_after: u64,
    fence_hold: u64,
    paths: u8,
    preempt: Option<u64>,
    priority: [u8; 2],
    health: [u8; 2],
    synced: [bool; 2],
    start: [u64; 2],
    seed: u64,
}

impl Setup {
    fn dead(&self) -> u64 {
        self.interval * u64::from(self.misses)
    }

    fn config(&self, i: usize) -> ElectionConfig {
        ElectionConfig {
            node: node(i),
            priority: self.priority[i],
            interval: Millis(self.interval),
            misses: self.misses,
            paths: self.paths,
            preempt_delay: self.preempt.map(Millis),
            late_after: Millis(self.late_after),
            fence_hold: Millis(self.fence_hold),
            link_up_grace: Millis(self.fence_hold),
        }
    }

    /// Largest delay on a healthy network.
    fn calm_delay(&self) -> u64 {
        self.interval / 4
    }
}

fn node(i: usize) -> NodeId {
    if i == 0 {
        NodeId::ZERO
    } else {
        NodeId::ONE
    }
}

/// Something that goes wrong for a while (or happens once).
#[derive(Debug, Clone, Copy)]
enum Episode {
    /// Datagrams sent by `from` (2: by both) are lost.
    Partition { from: usize, at: u64, len: u64 },
    /// Extra random loss and delay.
    Lossy {
        at: u64,
        len: u64,
        percent: u64,
        jitter: u64,
    },
    /// The node is stopped: no ticks, no sends, nothing read.
    Stall { node: usize, at: u64, len: u64 },
    /// The node's link on `path` is down (netlink tells it).
    LinkDown {
        node: usize,
        path: u8,
        at: u64,
        len: u64,
    },
    /// The node's health changes.
    Health { node: usize, at: u64, value: u8 },
    /// The node asks for a handover (ignored unless Active).
    Handover { node: usize, at: u64 },
}

impl Episode {
    fn covers(at: u64, len: u64, t: u64) -> bool {
        t >= at && t < at + len
    }
}

#[derive(Debug, Clone, Copy)]
enum Input {
    Heartbeat(PathId, Heartbeat),
    Link(PathId, bool),
}

#[derive(Debug)]
struct SimNode {
    e: Option<Election>,
    gate: ReplayGate,
    session: u64,
    sessions_drawn: u64,
    seq: u64,
    next_tick: u64,
    stalled: bool,
    dead: bool,
    inbox: Vec<Input>,
    links: [bool; MAX_PATHS],
    last_term: u64,
    /// Property 5: watching this node since it resumed; whether it heard the peer since.
    watch: Option<bool>,
}

#[derive(Debug)]
struct Packet {
    at: u64,
    to: usize,
    path: PathId,
    hb: Heartbeat,
}

#[derive(Debug)]
struct Sim {
    s: Setup,
    episodes: Vec<Episode>,
    nodes: [SimNode; 2],
    flight: Vec<Packet>,
    rng: Rng,
    log: Vec<(u64, usize, Transition)>,
    /// When a heartbeat last arrived at each node (for property 4).
    last_arrival: [u64; 2],
}

impl Sim {
    fn new(s: Setup, episodes: Vec<Episode>) -> Sim {
        let mk = |i: usize| SimNode {
            e: None,
            gate: ReplayGate::new(node(i).peer()),
            session: 0,
            sessions_drawn: 0,
            seq: 0,
            next_tick: 0,
            stalled: false,
            dead: false,
            inbox: Vec::new(),
            links: [true; MAX_PATHS],
            last_term: 0,
            watch: None,
        };
        let rng = Rng::new(s.seed);
        let mut sim = Sim {
            s,
            episodes,
            nodes: [mk(0), mk(1)],
            flight: Vec::new(),
            rng,
            log: Vec::new(),
            last_arrival: [0; 2],
        };
        for i in 0..2 {
            sim.new_session(i);
        }
        sim
    }

    /// What the driver does on `take_peer_lost` and on `Reject::Superseded`.
    fn new_session(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.sessions_drawn += 1;
        n.session = ((i as u64 + 1) << 48) | n.sessions_drawn;
    }

    fn role(&self, i: usize) -> Option<Role> {
        self.nodes[i].e.as_ref().map(|e| e.role())
    }

    fn term(&self, i: usize) -> u64 {
        self.nodes[i].e.as_ref().map_or(0, |e| e.term())
    }

    fn actives(&self) -> usize {
        (0..2)
            .filter(|&i| !self.nodes[i].dead && self.role(i) == Some(Role::Active))
            .count()
    }

    /// After every input: record the transition, check property 2, handle peer loss.
    fn after_input(&mut self, t: u64, i: usize, tr: Option<Transition>) {
        let n = &mut self.nodes[i];
        let Some(e) = n.e.as_mut() else { return };
        if let Some(tr) = tr {
            self.log.push((t, i, tr));
        }
        assert!(
            e.term() >= n.last_term,
            "property 2: node {i} term {} -> {} at {t}",
            n.last_term,
            e.term()
        );
        n.last_term = e.term();
        if e.take_peer_lost() {
            n.gate.peer_lost();
            self.new_session(i);
        }
    }

    fn feed(&mut self, t: u64, i: usize, input: Input) {
        let n = &mut self.nodes[i];
        let Some(e) = n.e.as_mut() else { return };
        let tr = match input {
            Input::Link(path, up) => e.on_link(Millis(t), path, up),
            Input::Heartbeat(path, hb) => match n.gate.check(&hb, n.session) {
                Ok(_) => {
                    let tr = e.on_heartbeat(Millis(t), path, &hb);
                    if let Some(heard) = n.watch.as_mut() {
                        *heard = true;
                        if hb.role == WireRole::Active {
                            assert!(
                                !(e.role() == Role::Active && e.term() <= hb.term),
                                "property 5: node {i} active at term {} after hearing the \
                                 peer active at term {} (at {t})",
                                e.term(),
                                hb.term
                            );
                        }
                    }
                    tr
                }
                Err(Reject::Superseded) => {
                    self.new_session(i);
                    None
                }
                Err(_) => None,
            },
        };
        self.after_input(t, i, tr);
    }

    fn tick(&mut self, t: u64, i: usize) {
        let n = &mut self.nodes[i];
        let Some(e) = n.e.as_mut() else { return };
        let tr = e.on_tick(Millis(t));
        self.after_input(t, i, tr);
        self.send(t, i);
    }

    fn blocked(&self, from: usize, t: u64) -> bool {
        self.episodes.iter().any(|ep| match *ep {
            Episode::Partition { from: f, at, len } => {
                (f == from || f == 2) && Episode::covers(at, len, t)
            }
            _ => false,
        })
    }

    fn loss(&self, t: u64) -> (u64, u64) {
        self.episodes
            .iter()
            .filter_map(|ep| match *ep {
                Episode::Lossy {
                    at,
                    len,
                    percent,
                    jitter,
                } if Episode::covers(at, len, t) => Some((percent, jitter)),
                _ => None,
            })
            .fold((0, 0), |(p, j), (p2, j2)| (p.max(p2), j.max(j2)))
    }

    fn send(&mut self, t: u64, i: usize) {
        let to = 1 - i;
        let blocked = self.blocked(i, t);
        let (percent, jitter) = self.loss(t);
        let calm = self.s.calm_delay();
        for p in 0..self.s.paths {
            let n = &mut self.nodes[i];
            let Some(e) = n.e.as_ref() else { return };
            if !n.links[usize::from(p)] {
                continue;
            }
            n.seq += 1;
            let path = PathId::try_from(p).expect("path");
            let hb = e
                .outgoing()
                .heartbeat(path, n.session, n.seq, n.gate.seen_peer_session(), 0);
            let lost =
                blocked || !self.nodes[to].links[usize::from(p)] || self.rng.below(100) < percent;
            let delay = 1 + self.rng.below(calm + 1) + self.rng.below(jitter + 1);
            if !lost {
                self.flight.push(Packet {
                    at: t + delay,
                    to,
                    path,
                    hb,
                });
            }
        }
    }

    fn stalled_at(&self, i: usize, t: u64) -> bool {
        self.episodes.iter().any(|ep| {
            matches!(*ep, Episode::Stall { node, at, len }
                if node == i && Episode::covers(at, len, t))
        })
    }

    fn link_at(&self, i: usize, p: usize, t: u64) -> bool {
        !self.episodes.iter().any(|ep| {
            matches!(*ep, Episode::LinkDown { node, path, at, len }
                if node == i && usize::from(path) == p && Episode::covers(at, len, t))
        })
    }

    /// One millisecond: starts, link changes, one-shot episodes, deliveries, ticks.
    fn step(&mut self, t: u64) {
        for i in 0..2 {
            if self.nodes[i].e.is_none() && t >= self.s.start[i] && !self.nodes[i].dead {
                let mut e = Election::new(self.s.config(i), Millis(t)).expect("config");
                e.set_health(self.s.health[i]);
                e.set_synced(self.s.synced[i]);
                let n = &mut self.nodes[i];
                n.e = Some(e);
                n.next_tick = t + self.s.interval;
            }
        }
        for i in 0..2 {
            for p in 0..usize::from(self.s.paths) {
                let up = self.link_at(i, p, t);
                if up != self.nodes[i].links[p] {
                    self.nodes[i].links[p] = up;
                    let path = PathId::try_from(p as u8).expect("path");
                    self.input(t, i, Input::Link(path, up));
                }
            }
        }
        let once: Vec<Episode> = self.episodes.to_vec();
        for ep in once {
            match ep {
                Episode::Health { node, at, value } if at == t => {
                    if let Some(e) = self.nodes[node].e.as_mut() {
                        e.set_health(value);
                    }
                }
                Episode::Handover { node, at } if at == t && self.running(node) => {
                    if let Some(e) = self.nodes[node].e.as_mut() {
                        let tr = e.request_handover(Millis(t));
                        self.after_input(t, node, tr);
                    }
                }
                _ => {}
            }
        }
        let (now, later): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.flight)
            .into_iter()
            .partition(|p| p.at <= t);
        self.flight = later;
        for p in now {
            if self.nodes[p.to].dead || self.nodes[p.to].e.is_none() {
                continue;
            }
            self.last_arrival[p.to] = t;
            self.input(t, p.to, Input::Heartbeat(p.path, p.hb));
        }
        for i in 0..2 {
            if self.nodes[i].dead || self.nodes[i].e.is_none() {
                continue;
            }
            let stalled = self.stalled_at(i, t);
            if stalled {
                self.nodes[i].stalled = true;
                continue;
            }
            let mut tick_now = t >= self.nodes[i].next_tick;
            if self.nodes[i].stalled {
                // Resuming: the overdue tick fires now; the queue is read before or after.
                self.nodes[i].stalled = false;
                tick_now = true;
                let queued = std::mem::take(&mut self.nodes[i].inbox);
                let read_first = self.rng.below(2) == 0;
                if !read_first {
                    self.tick(t, i);
                    tick_now = false;
                }
                for input in queued {
                    self.feed(t, i, input);
                }
            }
            if tick_now {
                self.tick(t, i);
            }
            if t >= self.nodes[i].next_tick {
                self.nodes[i].next_tick = t + self.s.interval;
            }
        }
    }

    fn running(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.e.is_some() && !n.dead && !n.stalled
    }

    fn input(&mut self, t: u64, i: usize, input: Input) {
        if self.nodes[i].stalled || self.stalled_at(i, t) {
            self.nodes[i].inbox.push(input);
        } else {
            self.feed(t, i, input);
        }
    }

    fn run(&mut self, from: u64, to: u64, mut check: impl FnMut(&Sim, u64)) {
        for t in from..to {
            self.step(t);
            check(self, t);
        }
    }

    fn transitions(&self) -> String {
        self.log
            .iter()
            .map(|(t, i, tr)| {
                format!(
                    "{t} ms node {i}: {:?} -> {:?} term {} ({:?})",
                    tr.from, tr.to, tr.term, tr.reason
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

prop_compose! {
    /// A configuration: 20–30 ms interval, 3–8 misses (`min_misses` and up), late_after
    /// as large as the config check allows, 1–2 paths, optional preemption.
    fn setup(min_misses: u32, max_start: u64)(
        interval in 20u64..=30,
        misses in min_misses..=8,
        paths in 1u8..=2,
        seed in any::<u64>(),
        preempt in prop::option::weighted(0.3, 0u64..=500),
        priority in [any::<u8>(), any::<u8>()],
        health in [1u8..=100, 1u8..=100],
        synced in [any::<bool>(), any::<bool>()],
        start in [0..=max_start, 0..=max_start],
    )(
        late_after in 0..=interval * (u64::from(misses) - 2),
        fence_hold in 0..=2 * interval * u64::from(misses),
        interval in Just(interval),
        misses in Just(misses),
        paths in Just(paths),
        seed in Just(seed),
        preempt in Just(preempt),
        priority in Just(priority),
        health in Just(health),
        synced in Just(synced),
        start in Just(start),
    ) -> Setup {
        Setup {
            interval, misses, late_after, fence_hold, paths, preempt, priority, health,
            synced, start, seed,
        }
    }
}

/// Chaos episodes, all over by `end` ms.
fn episodes(end: u64) -> impl Strategy<Value = Vec<Episode>> {
    let span = move |max_len: u64| {
        (0..end, 1..=max_len).prop_map(move |(at, len)| (at, len.min(end - at)))
    };
    let episode = prop_oneof![
        (0usize..=2, span(800)).prop_map(|(from, (at, len))| Episode::Partition { from, at, len }),
        (span(800), 0u64..=60, 0u64..=60).prop_map(|((at, len), percent, jitter)| {
            Episode::Lossy {
                at,
                len,
                percent,
                jitter,
            }
        }),
        (0usize..=1, span(1_000)).prop_map(|(node, (at, len))| Episode::Stall { node, at, len }),
        (0usize..=1, 0u8..=1, span(600)).prop_map(|(node, path, (at, len))| Episode::LinkDown {
            node,
            path,
            at,
            len
        }),
        (0usize..=1, 0..end, 0u8..=100).prop_map(|(node, at, value)| Episode::Health {
            node,
            at,
            value: value.max(1)
        }),
        (0usize..=1, 0..end).prop_map(|(node, at)| Episode::Handover { node, at }),
    ];
    prop::collection::vec(episode, 0..12)
}

// 256 cases each by default; PROPTEST_CASES=5000 for a longer run.
proptest! {
    /// Properties 1 and 2 under chaos.
    #[test]
    fn chaos_then_calm_leaves_exactly_one_active(
        s in setup(3, 400),
        eps in episodes(2_500),
    ) {
        let calm_from = 2_500u64.max(s.start[0]).max(s.start[1]);
        // A preemption that chaos left pending is a role change the calm still owes: it
        // fires after the delay, and the old active steps down at the new term's first
        // heartbeat (the addresses wait for its release: `callgate-ha`'s take_after).
        let settled =
            calm_from + 3 * s.dead() + s.fence_hold + s.preempt.map_or(0, |p| p + s.dead());
        let end = settled + 1_000;
        let mut sim = Sim::new(s, eps);
        sim.run(0, end, |sim, t| {
            if t >= settled {
                assert_eq!(
                    sim.actives(),
                    1,
                    "property 1 at {t} ms: roles {:?} {:?}, terms {} {}\n{}",
                    sim.role(0),
                    sim.role(1),
                    sim.term(0),
                    sim.term(1),
                    sim.transitions()
                );
            }
        });
    }

    /// Properties 2 and 3: a calm start elects once and never changes again.
    #[test]
    fn calm_network_elects_once_and_never_flaps(s in setup(5, 10)) {
        let start = s.start[0].max(s.start[1]);
        let end = start + 4_000;
        let settled = start + 3 * s.dead();
        let mut sim = Sim::new(s, Vec::new());
        sim.run(0, end, |sim, t| {
            if t >= settled {
                assert_eq!(sim.actives(), 1, "at {t} ms\n{}", sim.transitions());
            }
        });
        prop_assert_eq!(sim.log.len(), 1, "role changes:\n{}", sim.transitions());
    }

    /// Property 4: the survivor is active within (misses + 1) intervals.
    #[test]
    fn the_survivor_takes_over_within_misses_plus_one_intervals(
        s in setup(3, 10),
        victim in 0usize..=1,
        after in 0u64..=500,
    ) {
        let start = s.start[0].max(s.start[1]);
        let death = start + 4 * s.dead() + after;
        let bound = (u64::from(s.misses) + 1) * s.interval;
        let end = death + bound + s.calm_delay() + 1_000;
        let survivor = 1 - victim;
        let mut sim = Sim::new(s, Vec::new());
        sim.run(0, death, |_, _| {});
        sim.nodes[victim].dead = true;
        let mut last_heard = None;
        sim.run(death, end, |sim, t| {
            let arrived = sim.last_arrival[survivor];
            let since = *last_heard.get_or_insert(arrived);
            if arrived > since {
                last_heard = Some(arrived);
            }
            let deadline = last_heard.unwrap_or(death).max(death) + bound;
            if t >= deadline {
                assert_eq!(
                    sim.role(survivor),
                    Some(Role::Active),
                    "property 4: not active at {t} ms, {} ms after the last heartbeat at {}\n{}",
                    t - last_heard.unwrap_or(death),
                    last_heard.unwrap_or(death),
                    sim.transitions()
                );
            }
        });
    }

    /// Property 5: a node resuming from a long stall comes back without a second active
    /// of an equal or lower term.
    #[test]
    fn a_long_stall_never_yields_a_second_active_of_lower_or_equal_term(
        s in setup(3, 10),
        stalled in 0usize..=1,
        after in 0u64..=300,
        extra in 1u64..=2_000,
    ) {
        let start = s.start[0].max(s.start[1]);
        let stall_at = start + 4 * s.dead() + after;
        let len = s.dead() + extra;
        let resume = stall_at + len;
        let end = resume + 3 * s.dead() + s.fence_hold + 1_000;
        let eps = vec![Episode::Stall { node: stalled, at: stall_at, len }];
        let mut sim = Sim::new(s, eps);
        sim.run(0, resume, |_, _| {});
        sim.nodes[stalled].watch = Some(false);
        sim.run(resume, end, |sim, t| {
            if sim.nodes[stalled].watch == Some(false) {
                assert_ne!(
                    sim.role(stalled),
                    Some(Role::Active),
                    "property 5: active at {t} ms before hearing the peer\n{}",
                    sim.transitions()
                );
            }
        });
        prop_assert_eq!(sim.nodes[stalled].watch, Some(true), "never heard the peer again");
        prop_assert_eq!(sim.actives(), 1, "{}", sim.transitions());
    }
}

//! INVITE client transaction: RFC 3261 §17.1.1 (Figure 5) with RFC 6026's Accepted.

use super::{due, earliest, Action, Actions, Config, Event, Incoming, MessageRef, Millis, State};

/// The INVITE client transaction (§17.1.1, RFC 6026 §7.2).
///
/// Calling → (1xx) Proceeding → (2xx) Accepted → (M) Terminated;
/// Calling/Proceeding → (300-699, ACK sent) Completed → (D) Terminated;
/// Calling → (B) Timeout, Terminated.
#[derive(Debug, Clone)]
pub struct InviteClient<M> {
    cfg: Config,
    state: State,
    /// The INVITE, while it may be retransmitted or ACKed (dropped in Accepted).
    request: Option<M>,
    timer_a: Option<Millis>,
    a_interval: Millis,
    timer_b: Option<Millis>,
    timer_d: Option<Millis>,
    timer_m: Option<Millis>,
}

impl<M: Clone> InviteClient<M> {
    /// Starts the transaction: sends `request` and enters Calling.
    pub fn new(request: M, cfg: Config, now: Millis) -> (Self, Actions<M>) {
        let t1 = cfg.timers.t1();
        let tx = InviteClient {
            cfg,
            state: State::Calling,
            timer_a: cfg.unreliable_timer(now, t1),
            a_interval: t1,
            timer_b: Some(now + cfg.timers.timeout()),
            timer_d: None,
            timer_m: None,
            request: Some(request.clone()),
        };
        (tx, vec![Action::Transmit(MessageRef::Request(request))])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When [`Self::on_timer`] must be called next.
    pub fn next_deadline(&self) -> Option<Millis> {
        earliest(&[self.timer_a, self.timer_b, self.timer_d, self.timer_m])
    }

    /// Feeds one event at `now`; timers due at `now` fire first.
    pub fn on_event(&mut self, ev: Event<M>, now: Millis) -> Actions<M> {
        let mut out = self.on_timer(now);
        if self.state == State::Terminated {
            return out;
        }
        match ev {
            Event::Received(Incoming::Provisional(code)) => {
                if matches!(self.state, State::Calling | State::Proceeding) {
                    // §17.1.1.2: stop retransmitting; timer B only matters in Calling.
                    self.state = State::Proceeding;
                    self.timer_a = None;
                    self.timer_b = None;
                    out.push(Action::PassUp(Incoming::Provisional(code)));
                }
            }
            Event::Received(Incoming::Final(code)) => self.on_final(code, now, &mut out),
            Event::TransportError => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            // Requests, ACKs and TU sends have no meaning here.
            Event::Received(Incoming::Request | Incoming::Ack) | Event::Send(_) => {}
        }
        out
    }

    fn on_final(&mut self, code: u16, now: Millis, out: &mut Actions<M>) {
        let success = (200..=299).contains(&code);
        match self.state {
            State::Calling | State::Proceeding => {
                self.timer_a = None;
                self.timer_b = None;
                out.push(Action::PassUp(Incoming::Final(code)));
                if success {
                    // RFC 6026 §7.2: Accepted, absorbing 2xx retransmissions for 64·T1.
                    self.state = State::Accepted;
                    self.request = None;
                    self.timer_m = Some(now + self.cfg.timers.timeout());
                } else {
                    self.state = State::Completed;
                    if let Some(request) = self.request.clone() {
                        out.push(Action::Transmit(MessageRef::Ack { request }));
                    }
                    self.timer_d = self.cfg.linger(now, self.cfg.timers.timer_d());
                    if self.timer_d.is_none() {
                        self.terminate(out);
                    }
                }
            }
            State::Accepted if success => out.push(Action::PassUpRetransmitted2xx(code)),
            State::Completed if !success => {
                // A retransmitted final response: re-send the ACK, do not pass up.
                if let Some(request) = self.request.clone() {
                    out.push(Action::Transmit(MessageRef::Ack { request }));
                }
            }
            _ => {}
        }
    }

    /// Fires the timers due at `now`.
    pub fn on_timer(&mut self, now: Millis) -> Actions<M> {
        let mut out = Vec::new();
        match self.state {
            State::Calling => {
                if due(self.timer_b, now) {
                    out.push(Action::Timeout);
                    self.terminate(&mut out);
                } else if due(self.timer_a, now) {
                    if let Some(request) = self.request.clone() {
                        out.push(Action::Transmit(MessageRef::Request(request)));
                    }
                    self.a_interval = self.a_interval.saturating_mul(2);
                    self.timer_a = Some(now + self.a_interval);
                }
            }
            State::Completed if due(self.timer_d, now) => self.terminate(&mut out),
            State::Accepted if due(self.timer_m, now) => self.terminate(&mut out),
            _ => {}
        }
        out
    }

    fn terminate(&mut self, out: &mut Actions<M>) {
        self.state = State::Terminated;
        self.timer_a = None;
        self.timer_b = None;
        self.timer_d = None;
        self.timer_m = None;
        out.push(Action::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Action, Event, Incoming, MessageRef, State, Timers, Transport};
    use super::*;

    fn start(cfg: Config) -> InviteClient<Msg> {
        let (tx, a) = InviteClient::new("INVITE", cfg, ms(0));
        assert_eq!(a, vec![Action::Transmit(MessageRef::Request("INVITE"))]);
        assert_eq!(tx.state(), State::Calling);
        tx
    }

    #[test]
    fn udp_retransmits_with_doubling_then_times_out_at_64_t1() {
        let mut tx = start(udp());
        let mut sent_at = Vec::new();
        while let Some(d) = tx.next_deadline() {
            for a in tx.on_timer(d) {
                match a {
                    Action::Transmit(MessageRef::Request(_)) => sent_at.push(d.0),
                    Action::Timeout => assert_eq!(d, ms(32_000)),
                    Action::Terminated => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(sent_at, vec![500, 1_500, 3_500, 7_500, 15_500, 31_500]);
        assert_eq!(tx.state(), State::Terminated);
    }

    #[test]
    fn tcp_sends_once_and_times_out() {
        let mut tx = start(tcp());
        assert_eq!(tx.next_deadline(), Some(ms(32_000)));
        assert_eq!(tx.on_timer(ms(31_999)), vec![]);
        assert_eq!(
            tx.on_timer(ms(32_000)),
            vec![Action::Timeout, Action::Terminated]
        );
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn configured_t1_scales_timers() {
        let cfg = Config {
            timers: Timers {
                t1: ms(100),
                ..Timers::default()
            },
            transport: Transport::Unreliable,
        };
        let tx = start(cfg);
        assert_eq!(tx.next_deadline(), Some(ms(100)));
        assert_eq!(tx.timer_b, Some(ms(6_400)));
        assert_eq!(cfg.timers.timer_d(), ms(32_000));
    }

    #[test]
    fn provisional_stops_retransmission_and_timer_b() {
        let mut tx = start(udp());
        let a = tx.on_event(rx(Incoming::Provisional(180)), ms(100));
        assert_eq!(a, vec![Action::PassUp(Incoming::Provisional(180))]);
        assert_eq!(tx.state(), State::Proceeding);
        assert_eq!(tx.next_deadline(), None);
        // More provisionals are passed up too.
        let a = tx.on_event(rx(Incoming::Provisional(183)), ms(200));
        assert_eq!(a, vec![Action::PassUp(Incoming::Provisional(183))]);
        assert_eq!(tx.state(), State::Proceeding);
    }

    #[test]
    fn non_2xx_in_calling_acks_and_lingers_timer_d_on_udp() {
        let mut tx = start(udp());
        let a = tx.on_event(rx(Incoming::Final(486)), ms(400));
        assert_eq!(
            a,
            vec![
                Action::PassUp(Incoming::Final(486)),
                Action::Transmit(MessageRef::Ack { request: "INVITE" }),
            ]
        );
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(tx.next_deadline(), Some(ms(32_400)));
        // Retransmitted final: ACK again, not passed up.
        let a = tx.on_event(rx(Incoming::Final(486)), ms(2_000));
        assert_eq!(
            a,
            vec![Action::Transmit(MessageRef::Ack { request: "INVITE" })]
        );
        // Provisionals and 2xx are ignored in Completed.
        assert_eq!(
            tx.on_event(rx(Incoming::Provisional(180)), ms(2_001)),
            vec![]
        );
        assert_eq!(tx.on_event(rx(Incoming::Final(200)), ms(2_002)), vec![]);
        assert_eq!(tx.on_timer(ms(32_399)), vec![]);
        assert_eq!(tx.on_timer(ms(32_400)), vec![Action::Terminated]);
        assert_eq!(tx.state(), State::Terminated);
    }

    #[test]
    fn non_2xx_in_proceeding_on_tcp_terminates_at_once() {
        let mut tx = start(tcp());
        tx.on_event(rx(Incoming::Provisional(100)), ms(10));
        let a = tx.on_event(rx(Incoming::Final(503)), ms(20));
        assert_eq!(
            a,
            vec![
                Action::PassUp(Incoming::Final(503)),
                Action::Transmit(MessageRef::Ack { request: "INVITE" }),
                Action::Terminated,
            ]
        );
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn success_enters_accepted_and_passes_up_retransmissions_separately() {
        let mut tx = start(udp());
        tx.on_event(rx(Incoming::Provisional(180)), ms(10));
        let a = tx.on_event(rx(Incoming::Final(200)), ms(1_000));
        assert_eq!(a, vec![Action::PassUp(Incoming::Final(200))]);
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(tx.next_deadline(), Some(ms(33_000)));
        let a = tx.on_event(rx(Incoming::Final(200)), ms(1_500));
        assert_eq!(a, vec![Action::PassUpRetransmitted2xx(200)]);
        // Non-2xx and provisionals are discarded in Accepted.
        assert_eq!(tx.on_event(rx(Incoming::Final(486)), ms(1_600)), vec![]);
        assert_eq!(
            tx.on_event(rx(Incoming::Provisional(180)), ms(1_700)),
            vec![]
        );
        assert_eq!(tx.on_timer(ms(33_000)), vec![Action::Terminated]);
    }

    #[test]
    fn success_on_tcp_still_uses_timer_m() {
        let mut tx = start(tcp());
        tx.on_event(rx(Incoming::Final(200)), ms(0));
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(tx.next_deadline(), Some(ms(32_000)));
    }

    #[test]
    fn transport_error_terminates() {
        let mut tx = start(udp());
        assert_eq!(
            tx.on_event(Event::TransportError, ms(5)),
            vec![Action::TransportError, Action::Terminated]
        );
        assert_eq!(tx.on_event(rx(Incoming::Final(200)), ms(6)), vec![]);
        assert_eq!(tx.on_timer(ms(100_000)), vec![]);
    }

    #[test]
    fn overdue_timer_b_fires_before_late_event() {
        let mut tx = start(udp());
        let a = tx.on_event(rx(Incoming::Final(200)), ms(40_000));
        assert_eq!(a, vec![Action::Timeout, Action::Terminated]);
    }

    #[test]
    fn late_poll_retransmits_once_and_reschedules_from_now() {
        let mut tx = start(udp());
        let a = tx.on_timer(ms(2_000));
        assert_eq!(a, vec![Action::Transmit(MessageRef::Request("INVITE"))]);
        assert_eq!(tx.next_deadline(), Some(ms(3_000)));
    }

    #[test]
    fn irrelevant_events_are_ignored() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(1)), vec![]);
        assert_eq!(tx.on_event(rx(Incoming::Ack), ms(2)), vec![]);
        assert_eq!(tx.on_event(resp(200, "x"), ms(3)), vec![]);
        assert_eq!(tx.state(), State::Calling);
    }
}

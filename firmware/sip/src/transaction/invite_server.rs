//! INVITE server transaction: RFC 3261 §17.2.1 (Figure 7) with RFC 6026's Accepted.

use super::{
    due, earliest, Action, Actions, Config, Event, Incoming, MessageRef, Millis, Outgoing, State,
};

/// The INVITE server transaction (§17.2.1, RFC 6026 §7.1).
///
/// Proceeding → (TU 2xx) Accepted → (L) Terminated;
/// Proceeding → (TU 300-699) Completed → (ACK) Confirmed → (I) Terminated;
/// Completed → (H) Timeout, Terminated.
#[derive(Debug, Clone)]
pub struct InviteServer<M> {
    cfg: Config,
    state: State,
    /// The last provisional (Proceeding) or final (Completed) response sent.
    last: Option<M>,
    timer_g: Option<Millis>,
    g_interval: Millis,
    timer_h: Option<Millis>,
    timer_i: Option<Millis>,
    timer_l: Option<Millis>,
}

impl<M: Clone> InviteServer<M> {
    /// Starts the transaction for an INVITE just received: enters Proceeding and passes
    /// the request up. The TU should send `100 Trying` (the machine cannot build it).
    pub fn new(cfg: Config, _now: Millis) -> (Self, Actions<M>) {
        let tx = InviteServer {
            cfg,
            state: State::Proceeding,
            last: None,
            timer_g: None,
            g_interval: cfg.timers.t1().min(cfg.timers.t2()),
            timer_h: None,
            timer_i: None,
            timer_l: None,
        };
        (tx, vec![Action::PassUp(Incoming::Request)])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When [`Self::on_timer`] must be called next.
    pub fn next_deadline(&self) -> Option<Millis> {
        earliest(&[self.timer_g, self.timer_h, self.timer_i, self.timer_l])
    }

    /// Feeds one event at `now`; timers due at `now` fire first.
    pub fn on_event(&mut self, ev: Event<M>, now: Millis) -> Actions<M> {
        let mut out = self.on_timer(now);
        if self.state == State::Terminated {
            return out;
        }
        match ev {
            Event::Received(Incoming::Request) => {
                // Retransmitted INVITE: re-send the last response, never pass up.
                if matches!(self.state, State::Proceeding | State::Completed) {
                    if let Some(last) = &self.last {
                        out.push(Action::Transmit(MessageRef::Response(last.clone())));
                    }
                }
            }
            Event::Received(Incoming::Ack) => match self.state {
                State::Completed => {
                    self.state = State::Confirmed;
                    self.timer_g = None;
                    self.timer_h = None;
                    // Timer I absorbs ACK retransmissions; 0 on reliable transports.
                    self.timer_i = self.cfg.linger(now, self.cfg.timers.t4);
                    if self.timer_i.is_none() {
                        self.terminate(&mut out);
                    }
                }
                // RFC 6026 §7.1: an ACK matching in Accepted goes to the TU.
                State::Accepted => out.push(Action::PassUp(Incoming::Ack)),
                _ => {}
            },
            Event::Send(Outgoing::Response { code, msg }) => self.on_send(code, msg, now, &mut out),
            Event::TransportError => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            Event::Received(Incoming::Provisional(_) | Incoming::Final(_))
            | Event::Send(Outgoing::Request(_)) => {}
        }
        out
    }

    fn on_send(&mut self, code: u16, msg: M, now: Millis, out: &mut Actions<M>) {
        match self.state {
            State::Proceeding if code < 200 => {
                out.push(Action::Transmit(MessageRef::Response(msg.clone())));
                self.last = Some(msg);
            }
            State::Proceeding if code <= 299 => {
                out.push(Action::Transmit(MessageRef::Response(msg)));
                // Accepted never re-sends it (2xx retransmissions are the TU's): keep
                // nothing for the 64·T1 the transaction lingers.
                self.last = None;
                self.state = State::Accepted;
                self.timer_l = Some(now + self.cfg.timers.timeout());
            }
            State::Proceeding => {
                out.push(Action::Transmit(MessageRef::Response(msg.clone())));
                self.last = Some(msg);
                self.state = State::Completed;
                self.timer_g = self.cfg.unreliable_timer(now, self.g_interval);
                self.timer_h = Some(now + self.cfg.timers.timeout());
            }
            // RFC 6026 §7.1: the TU's 2xx retransmissions go out in Accepted.
            State::Accepted if (200..=299).contains(&code) => {
                out.push(Action::Transmit(MessageRef::Response(msg)));
            }
            _ => {}
        }
    }

    /// Fires the timers due at `now`.
    pub fn on_timer(&mut self, now: Millis) -> Actions<M> {
        let mut out = Vec::new();
        match self.state {
            State::Completed => {
                if due(self.timer_h, now) {
                    // No ACK: a transaction failure for the TU.
                    out.push(Action::Timeout);
                    self.terminate(&mut out);
                } else if due(self.timer_g, now) {
                    if let Some(last) = &self.last {
                        out.push(Action::Transmit(MessageRef::Response(last.clone())));
                    }
                    self.g_interval = self.cfg.backoff(self.g_interval);
                    self.timer_g = Some(now + self.g_interval);
                }
            }
            State::Confirmed if due(self.timer_i, now) => self.terminate(&mut out),
            State::Accepted if due(self.timer_l, now) => self.terminate(&mut out),
            _ => {}
        }
        out
    }

    fn terminate(&mut self, out: &mut Actions<M>) {
        self.state = State::Terminated;
        self.timer_g = None;
        self.timer_h = None;
        self.timer_i = None;
        self.timer_l = None;
        out.push(Action::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Action, Event, Incoming, MessageRef, State};
    use super::*;

    fn start(cfg: Config) -> InviteServer<Msg> {
        let (tx, a) = InviteServer::new(cfg, ms(0));
        assert_eq!(a, vec![Action::PassUp(Incoming::Request)]);
        assert_eq!(tx.state(), State::Proceeding);
        assert_eq!(tx.next_deadline(), None);
        tx
    }

    #[test]
    fn retransmitted_invite_before_any_response_is_absorbed() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(500)), vec![]);
    }

    #[test]
    fn retransmitted_invite_resends_last_provisional_and_is_not_passed_up() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(resp(100, "100"), ms(0)), vec![tx_resp("100")]);
        assert_eq!(tx.on_event(resp(180, "180"), ms(10)), vec![tx_resp("180")]);
        assert_eq!(tx.state(), State::Proceeding);
        assert_eq!(
            tx.on_event(rx(Incoming::Request), ms(500)),
            vec![tx_resp("180")]
        );
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn udp_non_2xx_retransmits_g_capped_at_t2_until_h() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(resp(486, "486"), ms(0)), vec![tx_resp("486")]);
        assert_eq!(tx.state(), State::Completed);
        let mut sent = Vec::new();
        let mut end = None;
        while let Some(d) = tx.next_deadline() {
            for a in tx.on_timer(d) {
                match a {
                    Action::Transmit(MessageRef::Response("486")) => sent.push(d.0),
                    Action::Timeout => end = Some(d.0),
                    Action::Terminated => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let mut expect = vec![500, 1_500, 3_500, 7_500];
        let mut t = 7_500;
        while t + 4_000 < 32_000 {
            t += 4_000;
            expect.push(t);
        }
        assert_eq!(sent, expect);
        assert_eq!(end, Some(32_000));
    }

    #[test]
    fn completed_resends_final_on_invite_retransmission() {
        let mut tx = start(udp());
        tx.on_event(resp(180, "180"), ms(0));
        tx.on_event(resp(404, "404"), ms(100));
        assert_eq!(
            tx.on_event(rx(Incoming::Request), ms(200)),
            vec![tx_resp("404")]
        );
        // Further TU responses are discarded.
        assert_eq!(tx.on_event(resp(500, "500"), ms(300)), vec![]);
    }

    #[test]
    fn ack_confirms_then_timer_i_t4_on_udp() {
        let mut tx = start(udp());
        tx.on_event(resp(486, "486"), ms(0));
        // Timer G fires at 500 first (a late event runs due timers first).
        assert_eq!(
            tx.on_event(rx(Incoming::Ack), ms(1_000)),
            vec![tx_resp("486")]
        );
        assert_eq!(tx.state(), State::Confirmed);
        assert_eq!(tx.next_deadline(), Some(ms(6_000)));
        // ACK and INVITE retransmissions absorbed.
        assert_eq!(tx.on_event(rx(Incoming::Ack), ms(1_100)), vec![]);
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(1_200)), vec![]);
        assert_eq!(tx.on_timer(ms(5_999)), vec![]);
        assert_eq!(tx.on_timer(ms(6_000)), vec![Action::Terminated]);
    }

    #[test]
    fn tcp_non_2xx_sends_once_and_ack_terminates_at_once() {
        let mut tx = start(tcp());
        tx.on_event(resp(603, "603"), ms(0));
        assert_eq!(tx.next_deadline(), Some(ms(32_000)));
        assert_eq!(
            tx.on_event(rx(Incoming::Ack), ms(50)),
            vec![Action::Terminated]
        );
    }

    #[test]
    fn tcp_without_ack_times_out_at_timer_h() {
        let mut tx = start(tcp());
        tx.on_event(resp(603, "603"), ms(0));
        assert_eq!(
            tx.on_timer(ms(32_000)),
            vec![Action::Timeout, Action::Terminated]
        );
    }

    #[test]
    fn success_enters_accepted_for_timer_l() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(resp(200, "200"), ms(100)), vec![tx_resp("200")]);
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(tx.next_deadline(), Some(ms(32_100)));
        // INVITE retransmissions absorbed, 2xx retransmissions from the TU sent,
        // other responses discarded, ACK passed up.
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(200)), vec![]);
        assert_eq!(
            tx.on_event(resp(200, "200b"), ms(300)),
            vec![tx_resp("200b")]
        );
        assert_eq!(tx.on_event(resp(486, "486"), ms(400)), vec![]);
        assert_eq!(
            tx.on_event(rx(Incoming::Ack), ms(500)),
            vec![Action::PassUp(Incoming::Ack)]
        );
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(tx.on_timer(ms(32_100)), vec![Action::Terminated]);
    }

    #[test]
    fn transport_error_terminates() {
        let mut tx = start(udp());
        assert_eq!(
            tx.on_event(Event::TransportError, ms(1)),
            vec![Action::TransportError, Action::Terminated]
        );
    }

    #[test]
    fn ack_in_proceeding_and_responses_from_network_are_ignored() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(rx(Incoming::Ack), ms(1)), vec![]);
        assert_eq!(tx.on_event(rx(Incoming::Final(200)), ms(1)), vec![]);
        assert_eq!(tx.state(), State::Proceeding);
    }
}

//! Non-INVITE server transaction: RFC 3261 §17.2.2 (Figure 8).

use super::{due, Action, Actions, Config, Event, Incoming, MessageRef, Millis, Outgoing, State};

/// The non-INVITE server transaction (§17.2.2).
///
/// Trying → (TU 1xx) Proceeding → (TU 200-699) Completed → (J) Terminated.
#[derive(Debug, Clone)]
pub struct NonInviteServer<M> {
    cfg: Config,
    state: State,
    /// The last provisional (Proceeding) or final (Completed) response sent.
    last: Option<M>,
    timer_j: Option<Millis>,
}

impl<M: Clone> NonInviteServer<M> {
    /// Starts the transaction for a request just received: enters Trying and passes
    /// the request up.
    pub fn new(cfg: Config, _now: Millis) -> (Self, Actions<M>) {
        let tx = NonInviteServer {
            cfg,
            state: State::Trying,
            last: None,
            timer_j: None,
        };
        (tx, vec![Action::PassUp(Incoming::Request)])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When [`Self::on_timer`] must be called next.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timer_j
    }

    /// Feeds one event at `now`; timers due at `now` fire first.
    pub fn on_event(&mut self, ev: Event<M>, now: Millis) -> Actions<M> {
        let mut out = self.on_timer(now);
        if self.state == State::Terminated {
            return out;
        }
        match ev {
            Event::Received(Incoming::Request) => {
                // Trying: discard. Proceeding/Completed: re-send the last response.
                if let Some(last) = &self.last {
                    out.push(Action::Transmit(MessageRef::Response(last.clone())));
                }
            }
            Event::Send(Outgoing::Response { code, msg })
                if matches!(self.state, State::Trying | State::Proceeding) =>
            {
                out.push(Action::Transmit(MessageRef::Response(msg.clone())));
                self.last = Some(msg);
                if code < 200 {
                    self.state = State::Proceeding;
                } else {
                    self.state = State::Completed;
                    // Timer J absorbs request retransmissions; 0 on reliable transports.
                    self.timer_j = self.cfg.linger(now, self.cfg.timers.timeout());
                    if self.timer_j.is_none() {
                        self.terminate(&mut out);
                    }
                }
            }
            Event::TransportError => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            // Responses in Completed are discarded (§17.2.2); the rest means nothing.
            Event::Send(_) | Event::Received(_) => {}
        }
        out
    }

    /// Fires the timers due at `now`.
    pub fn on_timer(&mut self, now: Millis) -> Actions<M> {
        let mut out = Vec::new();
        if self.state == State::Completed && due(self.timer_j, now) {
            self.terminate(&mut out);
        }
        out
    }

    fn terminate(&mut self, out: &mut Actions<M>) {
        self.state = State::Terminated;
        self.timer_j = None;
        out.push(Action::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Action, Event, Incoming, State};
    use super::*;

    fn start(cfg: Config) -> NonInviteServer<Msg> {
        let (tx, a) = NonInviteServer::new(cfg, ms(0));
        assert_eq!(a, vec![Action::PassUp(Incoming::Request)]);
        assert_eq!(tx.state(), State::Trying);
        assert_eq!(tx.next_deadline(), None);
        tx
    }

    #[test]
    fn retransmission_in_trying_is_discarded() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(500)), vec![]);
        assert_eq!(tx.state(), State::Trying);
    }

    #[test]
    fn provisional_enters_proceeding_and_is_resent_on_retransmission() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(resp(100, "100"), ms(10)), vec![tx_resp("100")]);
        assert_eq!(tx.state(), State::Proceeding);
        assert_eq!(
            tx.on_event(rx(Incoming::Request), ms(500)),
            vec![tx_resp("100")]
        );
        assert_eq!(tx.on_event(resp(183, "183"), ms(600)), vec![tx_resp("183")]);
        assert_eq!(
            tx.on_event(rx(Incoming::Request), ms(700)),
            vec![tx_resp("183")]
        );
    }

    #[test]
    fn final_from_trying_completes_with_timer_j_64_t1_on_udp() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(resp(200, "200"), ms(100)), vec![tx_resp("200")]);
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(tx.next_deadline(), Some(ms(32_100)));
        assert_eq!(
            tx.on_event(rx(Incoming::Request), ms(600)),
            vec![tx_resp("200")]
        );
        // Further TU responses discarded.
        assert_eq!(tx.on_event(resp(500, "500"), ms(700)), vec![]);
        assert_eq!(tx.on_timer(ms(32_099)), vec![]);
        assert_eq!(tx.on_timer(ms(32_100)), vec![Action::Terminated]);
    }

    #[test]
    fn final_from_proceeding_on_tcp_terminates_at_once() {
        let mut tx = start(tcp());
        tx.on_event(resp(100, "100"), ms(0));
        assert_eq!(
            tx.on_event(resp(404, "404"), ms(1)),
            vec![tx_resp("404"), Action::Terminated]
        );
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn transport_error_terminates() {
        let mut tx = start(udp());
        tx.on_event(resp(100, "100"), ms(0));
        assert_eq!(
            tx.on_event(Event::TransportError, ms(1)),
            vec![Action::TransportError, Action::Terminated]
        );
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(2)), vec![]);
    }

    #[test]
    fn irrelevant_events_are_ignored() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(rx(Incoming::Ack), ms(1)), vec![]);
        assert_eq!(tx.on_event(rx(Incoming::Final(200)), ms(1)), vec![]);
        assert_eq!(tx.state(), State::Trying);
    }
}

//! Non-INVITE client transaction: RFC 3261 §17.1.2 (Figure 6).

use super::{due, earliest, Action, Actions, Config, Event, Incoming, MessageRef, Millis, State};

/// The non-INVITE client transaction (§17.1.2).
///
/// Trying → (1xx) Proceeding → (200-699) Completed → (K) Terminated;
/// Trying/Proceeding → (F) Timeout, Terminated.
#[derive(Debug, Clone)]
pub struct NonInviteClient<M> {
    cfg: Config,
    state: State,
    request: M,
    timer_e: Option<Millis>,
    e_interval: Millis,
    timer_f: Option<Millis>,
    timer_k: Option<Millis>,
}

impl<M: Clone> NonInviteClient<M> {
    /// Starts the transaction: sends `request` and enters Trying.
    pub fn new(request: M, cfg: Config, now: Millis) -> (Self, Actions<M>) {
        let first = cfg.timers.t1().min(cfg.timers.t2());
        let tx = NonInviteClient {
            cfg,
            state: State::Trying,
            timer_e: cfg.unreliable_timer(now, first),
            e_interval: first,
            timer_f: Some(now + cfg.timers.timeout()),
            timer_k: None,
            request: request.clone(),
        };
        (tx, vec![Action::Transmit(MessageRef::Request(request))])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When [`Self::on_timer`] must be called next.
    pub fn next_deadline(&self) -> Option<Millis> {
        earliest(&[self.timer_e, self.timer_f, self.timer_k])
    }

    /// Feeds one event at `now`; timers due at `now` fire first.
    pub fn on_event(&mut self, ev: Event<M>, now: Millis) -> Actions<M> {
        let mut out = self.on_timer(now);
        if self.state == State::Terminated {
            return out;
        }
        let waiting = matches!(self.state, State::Trying | State::Proceeding);
        match ev {
            Event::Received(Incoming::Provisional(code)) if waiting => {
                self.state = State::Proceeding;
                out.push(Action::PassUp(Incoming::Provisional(code)));
            }
            Event::Received(Incoming::Final(code)) if waiting => {
                self.state = State::Completed;
                self.timer_e = None;
                self.timer_f = None;
                out.push(Action::PassUp(Incoming::Final(code)));
                // Timer K absorbs response retransmissions; 0 on reliable transports.
                self.timer_k = self.cfg.linger(now, self.cfg.timers.t4);
                if self.timer_k.is_none() {
                    self.terminate(&mut out);
                }
            }
            Event::TransportError => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            // Responses in Completed are absorbed; the rest means nothing here.
            Event::Received(_) | Event::Send(_) => {}
        }
        out
    }

    /// Fires the timers due at `now`.
    pub fn on_timer(&mut self, now: Millis) -> Actions<M> {
        let mut out = Vec::new();
        match self.state {
            State::Trying | State::Proceeding => {
                if due(self.timer_f, now) {
                    out.push(Action::Timeout);
                    self.terminate(&mut out);
                } else if due(self.timer_e, now) {
                    out.push(Action::Transmit(MessageRef::Request(self.request.clone())));
                    let t2 = self.cfg.timers.t2();
                    self.e_interval = if self.state == State::Proceeding {
                        t2
                    } else {
                        self.cfg.backoff(self.e_interval)
                    };
                    self.timer_e = Some(now + self.e_interval);
                }
            }
            State::Completed if due(self.timer_k, now) => self.terminate(&mut out),
            _ => {}
        }
        out
    }

    fn terminate(&mut self, out: &mut Actions<M>) {
        self.state = State::Terminated;
        self.timer_e = None;
        self.timer_f = None;
        self.timer_k = None;
        out.push(Action::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Action, Event, Incoming, MessageRef, State};
    use super::*;

    fn start(cfg: Config) -> NonInviteClient<Msg> {
        let (tx, a) = NonInviteClient::new("BYE", cfg, ms(0));
        assert_eq!(a, vec![Action::Transmit(MessageRef::Request("BYE"))]);
        assert_eq!(tx.state(), State::Trying);
        tx
    }

    fn run_to_end(tx: &mut NonInviteClient<Msg>) -> (Vec<u64>, u64) {
        let mut sent = Vec::new();
        let mut end = 0;
        while let Some(d) = tx.next_deadline() {
            for a in tx.on_timer(d) {
                match a {
                    Action::Transmit(MessageRef::Request(_)) => sent.push(d.0),
                    Action::Terminated => end = d.0,
                    Action::Timeout => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (sent, end)
    }

    #[test]
    fn udp_trying_retransmits_capped_at_t2_and_times_out_at_timer_f() {
        let mut tx = start(udp());
        let (sent, end) = run_to_end(&mut tx);
        // 500, +1000, +2000, +4000, +4000, ...
        let mut expect = vec![500, 1_500, 3_500, 7_500];
        let mut t = 7_500;
        while t + 4_000 < 32_000 {
            t += 4_000;
            expect.push(t);
        }
        assert_eq!(sent, expect);
        assert_eq!(end, 32_000);
    }

    #[test]
    fn udp_proceeding_retransmits_every_t2() {
        let mut tx = start(udp());
        assert_eq!(
            tx.on_event(rx(Incoming::Provisional(100)), ms(100)),
            vec![Action::PassUp(Incoming::Provisional(100))]
        );
        assert_eq!(tx.state(), State::Proceeding);
        let (sent, end) = run_to_end(&mut tx);
        // Timer E was already set to 500; after it fires in Proceeding: every T2.
        assert_eq!(&sent[..4], &[500, 4_500, 8_500, 12_500]);
        assert_eq!(end, 32_000);
    }

    #[test]
    fn tcp_sends_once_and_times_out_at_timer_f() {
        let mut tx = start(tcp());
        let (sent, end) = run_to_end(&mut tx);
        assert!(sent.is_empty());
        assert_eq!(end, 32_000);
    }

    #[test]
    fn final_in_trying_completes_with_timer_k_t4_on_udp() {
        let mut tx = start(udp());
        let a = tx.on_event(rx(Incoming::Final(200)), ms(400));
        assert_eq!(a, vec![Action::PassUp(Incoming::Final(200))]);
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(tx.next_deadline(), Some(ms(5_400)));
        // Retransmissions absorbed.
        assert_eq!(tx.on_event(rx(Incoming::Final(200)), ms(800)), vec![]);
        assert_eq!(tx.on_event(rx(Incoming::Provisional(180)), ms(900)), vec![]);
        assert_eq!(tx.on_timer(ms(5_399)), vec![]);
        assert_eq!(tx.on_timer(ms(5_400)), vec![Action::Terminated]);
    }

    #[test]
    fn final_in_proceeding_on_tcp_terminates_at_once() {
        let mut tx = start(tcp());
        tx.on_event(rx(Incoming::Provisional(100)), ms(1));
        assert_eq!(
            tx.on_event(rx(Incoming::Final(404)), ms(2)),
            vec![Action::PassUp(Incoming::Final(404)), Action::Terminated]
        );
    }

    #[test]
    fn more_provisionals_in_proceeding_are_passed_up() {
        let mut tx = start(udp());
        tx.on_event(rx(Incoming::Provisional(100)), ms(1));
        assert_eq!(
            tx.on_event(rx(Incoming::Provisional(180)), ms(2)),
            vec![Action::PassUp(Incoming::Provisional(180))]
        );
    }

    #[test]
    fn transport_error_terminates() {
        let mut tx = start(udp());
        assert_eq!(
            tx.on_event(Event::TransportError, ms(1)),
            vec![Action::TransportError, Action::Terminated]
        );
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn irrelevant_events_are_ignored() {
        let mut tx = start(udp());
        assert_eq!(tx.on_event(rx(Incoming::Request), ms(1)), vec![]);
        assert_eq!(tx.on_event(rx(Incoming::Ack), ms(1)), vec![]);
        assert_eq!(tx.on_event(resp(200, "x"), ms(1)), vec![]);
        assert_eq!(tx.state(), State::Trying);
    }
}

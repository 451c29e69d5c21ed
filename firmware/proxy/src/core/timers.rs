//! Call timers: response, ring, maximum call length, CANCEL guard.

use super::*;

impl Proxy {
    pub(super) fn set_timer(&mut self, seq: u64, kind: TimerKind, at: Millis) {
        if let Some(c) = self.calls.get_mut(&seq) {
            if let Some(old) = c.deadlines.replace(kind, at) {
                self.timers.remove(&(old, seq, kind));
            }
            self.timers.insert((at, seq, kind));
        }
    }

    pub(super) fn clear_timer(&mut self, seq: u64, kind: TimerKind) {
        if let Some(at) = self
            .calls
            .get_mut(&seq)
            .and_then(|c| c.deadlines.take(kind))
        {
            self.timers.remove(&(at, seq, kind));
        }
    }

    /// Fires what is due at `now`: transaction timers, call timers, health probes.
    pub fn on_timer(&mut self, now: Now, out: &mut Vec<Output>) {
        for (key, act) in self.txs.poll_timers(now.mono) {
            self.run_actions(now, &key, [act], out);
        }
        self.accepted.expire(now.mono);
        while let Some(&(at, seq, kind)) = self.timers.first() {
            if at > now.mono {
                break;
            }
            self.timers.pop_first();
            let live = self
                .calls
                .get_mut(&seq)
                .is_some_and(|c| c.deadlines.take_if(kind, at));
            if live {
                self.call_timer(now, seq, kind, out);
            }
        }
        if now.mono >= self.next_probe {
            self.next_probe = now.mono + self.s.probe_interval;
            self.abandoned.retain(|_, a| a.until > now.mono);
            self.probe(now, out);
        }
    }

    pub(super) fn call_timer(
        &mut self,
        now: Now,
        seq: u64,
        kind: TimerKind,
        out: &mut Vec<Output>,
    ) {
        match kind {
            TimerKind::Response => {
                // Silence from this destination: abandon it (no CANCEL without a
                // provisional, §9.1) and fail over.
                let Some(call) = self.calls.get_mut(&seq) else {
                    return;
                };
                call.last_code = Some(408);
                let (peer, local) = (call.callee, self.locals.addr(call.callee_local));
                if let Some(k) = call.setup.as_mut().and_then(|s| s.client_key.take()) {
                    self.txs.remove(&k);
                    self.tx_info.remove(&k);
                    self.abandon(now, k.branch(), peer, local);
                }
                self.try_next(now, seq, out);
            }
            TimerKind::Ring if self.calls.get(&seq).is_some_and(|c| c.cancel.is_some()) => {
                // Already cancelled by the caller: the guard timer ends it.
            }
            TimerKind::Ring => {
                let line = format!("call {seq}: no answer, cancelling");
                self.log(now, "no-answer", log::Level::Info, line, out);
                self.cancel_call(now, seq, Cancel::NoAnswer, out);
            }
            TimerKind::MaxCall => self.max_call_reached(now, seq, out),
            TimerKind::CancelGuard => self.finish_unanswered(now, seq, 487, &[], out),
        }
    }

    pub(super) fn max_call_reached(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let line = format!("call {seq}: maximum call length reached, sending BYE both ways");
        self.log(now, "max-call", log::Level::Warn, line, out);
        self.bye_both_ways(now, seq, "maximum call length", out);
    }
}

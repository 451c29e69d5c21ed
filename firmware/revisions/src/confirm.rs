//! The commit-confirm timer as a pure state machine: time comes in as an argument, decisions
//! come out as actions. The caller persists the state (`pending.json`) and performs them.

use std::time::Duration;

use crate::store::Pending;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A commit of `candidate` replacing `previous`, with a confirm window or not.
    Commit {
        previous: u64,
        candidate: u64,
        window: Option<Duration>,
    },
    /// An operator's `confirm`.
    Confirm,
    /// Time passes.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Apply the candidate and keep it.
    Apply,
    /// Apply the candidate and open a window that ends at the deadline.
    ApplyWithWindow(Pending),
    /// The pending commit is now permanent.
    Confirmed(Pending),
    /// The window closed without `confirm`: return to `previous`.
    RollBack(Pending),
    /// The event is refused; the state is unchanged.
    Refuse(&'static str),
}

/// Decides what an event means given the pending record (if any) and the time.
pub fn step(pending: Option<&Pending>, event: Event, now_ms: u64) -> Action {
    // A window that has closed rolls back before anything else is considered.
    if let Some(p) = pending {
        if now_ms >= p.deadline_ms {
            return Action::RollBack(p.clone());
        }
    }
    match (pending, event) {
        (Some(_), Event::Commit { .. }) => Action::Refuse(
            "a confirmed commit is waiting: run `callgate confirm` or let it roll back first",
        ),
        (None, Event::Commit { window: None, .. }) => Action::Apply,
        (
            None,
            Event::Commit {
                previous,
                candidate,
                window: Some(w),
            },
        ) => {
            let ms = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
            Action::ApplyWithWindow(Pending {
                previous,
                candidate,
                deadline_ms: now_ms.saturating_add(ms),
                previous_text: String::new(),
            })
        }
        (Some(p), Event::Confirm) => Action::Confirmed(p.clone()),
        (None, Event::Confirm) => Action::Refuse("nothing to confirm"),
        (_, Event::Tick) => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(window: Option<u64>) -> Event {
        Event::Commit {
            previous: 1,
            candidate: 2,
            window: window.map(Duration::from_secs),
        }
    }

    #[test]
    fn plain_commit_applies() {
        assert_eq!(step(None, commit(None), 0), Action::Apply);
    }

    #[test]
    fn window_then_confirm() {
        let Action::ApplyWithWindow(p) = step(None, commit(Some(60)), 1_000) else {
            panic!()
        };
        assert_eq!(p.deadline_ms, 61_000);
        assert_eq!(step(Some(&p), Event::Tick, 60_999), Action::Nothing);
        assert_eq!(
            step(Some(&p), Event::Confirm, 60_999),
            Action::Confirmed(p.clone())
        );
    }

    #[test]
    fn window_expires_and_confirm_is_too_late() {
        let Action::ApplyWithWindow(p) = step(None, commit(Some(1)), 0) else {
            panic!()
        };
        assert_eq!(
            step(Some(&p), Event::Tick, 1_000),
            Action::RollBack(p.clone())
        );
        assert_eq!(
            step(Some(&p), Event::Confirm, 5_000),
            Action::RollBack(p.clone())
        );
        assert_eq!(
            step(None, Event::Confirm, 5_000),
            Action::Refuse("nothing to confirm")
        );
    }

    #[test]
    fn no_commit_while_pending() {
        let p = Pending {
            previous: 1,
            candidate: 2,
            deadline_ms: 100,
            previous_text: String::new(),
        };
        assert!(matches!(
            step(Some(&p), commit(None), 50),
            Action::Refuse(_)
        ));
    }

    #[test]
    fn any_sequence_rolls_back_exactly_when_due() {
        // Exhaustive over a small grid of times and events: a pending record past its
        // deadline always yields RollBack, and never otherwise.
        let p = Pending {
            previous: 3,
            candidate: 4,
            deadline_ms: 500,
            previous_text: String::new(),
        };
        for now in (0..1000).step_by(7) {
            for ev in [Event::Tick, Event::Confirm, commit(None), commit(Some(5))] {
                let a = step(Some(&p), ev, now);
                assert_eq!(matches!(a, Action::RollBack(_)), now >= 500, "{now}");
            }
        }
    }
}

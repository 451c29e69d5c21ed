//! Memory per held dialog (the benchmark's `bytes_per_dialog`), counted here by the heap
//! bytes the core's structures take: this test binary's allocator counts what each thread
//! has live, so other tests running alongside do not disturb the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::*;

struct Counting;

thread_local! {
    /// Heap bytes this thread has allocated and not yet freed (a free on another thread
    /// counts there: none of the core's is).
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    // `try_with`: nothing to count in a thread that is being torn down.
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

// SAFETY: every call is passed on to `System` unchanged; only a thread-local counter is
// updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64));
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as i64 - l.size() as i64);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

/// 4,000 calls answered and acknowledged, then held: what each holds on the heap, right
/// after the ACK (its INVITE transactions still in RFC 6026's Accepted state) and once
/// that window (64·T1) has passed, tables included. It was 1,318 bytes in both before the
/// transaction keys took one allocation and left the held call, the local addresses became
/// numbers, the Accepted state kept fingerprints, and the campaign and destination texts
/// were shared (966 then); 830 once the usual media description (one address, RTP and
/// RTCP) was held inside the call and the dialog's texts took one allocation with it.
#[test]
fn a_held_dialog_takes_at_most_900_heap_bytes() {
    let mut lab = Lab::new();
    lab.at(1_000);
    let n = 4000;
    let invites: Vec<Invite> = (0..n)
        .map(|i| Invite::new(&format!("held-{i:06}-0123456789abcdef@203.0.113.10")))
        .collect();
    let before = live();
    for inv in &invites {
        let out = lab.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
        let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pbx-1", Some(30000)));
        let ok = out.response_to(carrier().addr);
        let ack = CallerDialog::new(inv, &ok).request("ACK", "z9hG4bK-ack", 1, None);
        assert!(lab.carrier_says(&ack).requests_to(pbx1().addr, "ACK").len() == 1);
    }
    assert_eq!(lab.proxy.call_count(), n);
    let after_ack = (live() - before) as f64 / n as f64;
    lab.at(1_000 + 40_000);
    lab.tick();
    assert_eq!(lab.proxy.call_count(), n);
    let held = (live() - before) as f64 / n as f64;
    eprintln!("heap bytes per dialog: {after_ack:.0} after the ACK, {held:.0} held");
    assert!(
        after_ack <= 1000.0,
        "{after_ack:.0} bytes per dialog after the ACK"
    );
    assert!(held <= 900.0, "{held:.0} bytes per dialog held");
}

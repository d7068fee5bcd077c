//! The request ids remembered for feedback hold at most the bytes they are given, measured
//! with a counting allocator (live heap bytes per thread, so tests running side by side do
//! not count each other), and at most the entries they are given.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use nexus_optimizer::recent::{MAX_ID_BYTES, MAX_PREDICTION_BYTES, RecentRequests};
use serde_json::Value;

/// The system allocator, counting the bytes live per thread.
struct Counting;

thread_local! {
    /// Bytes this thread allocated and did not free (const: touching it never allocates).
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // Fails only while the thread is being torn down; nothing is measured then.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

// SAFETY: every call goes to `System` unchanged; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

const HOUR: Duration = Duration::from_secs(3600);

/// Fills a table bounded to `max_bytes` with many more ids than fit, and checks what it
/// holds on the heap against the bound.
fn holds_at_most(max_bytes: usize, id_len: usize, prediction: impl Fn(usize) -> Option<Value>) {
    let before = live();
    let mut recent = RecentRequests::new(usize::MAX, max_bytes, HOUR);
    let mut peak = 0;
    for i in 0..200_000usize {
        let id = format!("{i:0>id_len$}");
        recent.insert(&id, "mlp_classifier", "2", prediction(i));
        assert!(recent.bytes() <= max_bytes, "{} counted", recent.bytes());
        peak = peak.max(live() - before);
    }
    assert!(
        peak <= max_bytes as isize,
        "ids of {id_len} bytes: {peak} bytes live at the peak, bound {max_bytes}"
    );
    // The bound binds: the table forgot the oldest, kept the newest, and is not tiny.
    assert!(recent.get(&format!("{:0>id_len$}", 0)).is_none());
    assert!(recent.get(&format!("{:0>id_len$}", 199_999)).is_some());
    assert!(
        recent.bytes() >= max_bytes / 2 && recent.len() >= 1_000,
        "{} entries ({} bytes) held in {max_bytes} bytes",
        recent.len(),
        recent.bytes()
    );
}

/// A full table under steady churn (one id in, the oldest out) holds the same heap from the
/// moment it is full, however many ids pass through: in the soak, the id table doubled after
/// ~15 times its entries had passed (a 54 MB step in RSS ten minutes into steady load).
#[test]
fn a_full_table_holds_steady_however_many_ids_pass_through() {
    let before = live();
    let mut recent = RecentRequests::new(1_000_000, 2 << 20, HOUR);
    let limit = recent.limit();
    let id = |i: usize| format!("{i:036}");
    for i in 0..limit {
        recent.insert(&id(i), "mlp_classifier", "2", Some(Value::from(i % 10)));
    }
    assert_eq!(
        recent.len(),
        limit,
        "the byte bound keeps fewer ids than planned for"
    );
    let full = live() - before;
    let mut peak = full;
    for i in limit..limit * 40 {
        recent.insert(&id(i), "mlp_classifier", "2", Some(Value::from(i % 10)));
        peak = peak.max(live() - before);
    }
    assert!(
        peak <= full + 4096,
        "{limit} entries: {full} bytes live when full, {peak} at the peak of {} more ids",
        limit * 39
    );
    assert!(
        full as usize <= 2 << 20,
        "{full} bytes live, bound {}",
        2 << 20
    );
}

#[test]
fn short_ids_with_class_predictions_stay_within_the_byte_bound() {
    holds_at_most(4 << 20, 24, |i| Some(Value::from(i % 10)));
}

#[test]
fn long_ids_with_text_predictions_stay_within_the_byte_bound() {
    holds_at_most(4 << 20, MAX_ID_BYTES, |_| {
        Some(Value::from("x".repeat(MAX_PREDICTION_BYTES)))
    });
}

#[test]
fn the_entry_bound_holds_too_and_oversized_input_is_not_kept() {
    let mut recent = RecentRequests::new(1_000, usize::MAX, HOUR);
    for i in 0..10_000 {
        recent.insert(&i.to_string(), "m", "1", None);
    }
    assert_eq!(recent.len(), 1_000);
    let long = "x".repeat(MAX_ID_BYTES + 1);
    recent.insert(&long, "m", "1", None);
    assert!(recent.get(&long).is_none(), "an over-long id was kept");
    let text = Value::from("y".repeat(MAX_PREDICTION_BYTES + 1));
    recent.insert("big", "m", "1", Some(text));
    let kept = recent.get("big").expect("the request is kept");
    assert_eq!(kept.prediction, None, "an over-long prediction was kept");
}

#[test]
fn a_rewarded_id_stays_rewarded_when_answered_again() {
    let mut recent = RecentRequests::new(10, usize::MAX, HOUR);
    recent.insert("a", "m", "1", None);
    recent.set_rewarded("a", true);
    recent.insert("a", "m", "2", None);
    let again = recent.get("a").expect("kept");
    assert!(again.rewarded);
    assert_eq!(&*again.version, "2");
    assert_eq!(recent.len(), 1);
}

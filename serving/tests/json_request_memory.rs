//! Decoding a large V2 JSON request costs memory proportional to its tensors, not a
//! `serde_json::Value` tree per element (which made a 64 MiB body cost over a gigabyte).
//!
//! A dedicated test binary: its global allocator counts the bytes live at the peak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use nexus_models::TensorData;
use nexus_serving::http::codec;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of `f`, beyond what was live before it.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

const BODY_BYTES: usize = 64 << 20;

/// A request of one FP32 input whose `data` fills about `BODY_BYTES`, nested in rows of
/// `row` elements (flat when `row` is 0); returns the body and the element count.
fn fp32_body(row: usize) -> (Bytes, usize) {
    let element = "0.5,";
    let count = BODY_BYTES / element.len();
    let (count, shape) = match count.checked_div(row) {
        None => (count, format!("[{count}]")),
        Some(rows) => (rows * row, format!("[{rows}, {row}]")),
    };
    let mut body = String::with_capacity(BODY_BYTES + 256);
    write!(
        body,
        r#"{{"id":"big","inputs":[{{"name":"x","shape":{shape},"datatype":"FP32","data":["#
    )
    .unwrap();
    for i in 0..count {
        if row != 0 && i % row == 0 {
            body.push('[');
        }
        body.push_str("0.5");
        if row != 0 && i % row == row - 1 {
            body.push(']');
        }
        if i + 1 < count {
            body.push(',');
        }
    }
    body.push_str("]}]}");
    (Bytes::from(body), count)
}

#[test]
fn a_64_mib_json_body_costs_about_its_tensor_size() {
    for row in [0, 1000] {
        let (body, count) = fp32_body(row);
        let (decoded, peak) = peak_during(|| codec::decode(&body, None, "m", "").map(|(r, _)| r));
        let request = decoded.unwrap();
        let TensorData::F32(values) = &request.inputs[0].data else {
            panic!("not FP32: {:?}", request.inputs[0].datatype());
        };
        assert_eq!(values.len(), count);
        assert!(values.iter().all(|v| *v == 0.5));
        let tensor = count * 4;
        // The typed tensor plus small change; a Value tree costs over ten times the body.
        assert!(
            peak < tensor + (4 << 20),
            "decoding a {} MiB body (row {row}) peaked at {} MiB; its tensor is {} MiB",
            body.len() >> 20,
            peak >> 20,
            tensor >> 20
        );
    }
}

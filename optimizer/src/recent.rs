//! Request ids the server answered recently, so feedback is accepted only for requests this
//! server answered, attributed to the version that answered them, and once per request.
//!
//! Memory is bounded twice: at most `capacity` entries and at most `max_bytes` bytes. The
//! bytes are the tables, sized once for the most entries the bounds allow (see
//! [`RecentRequests::limit`]), plus what each entry holds besides its slots (the id, a
//! predicted class, allocator headers: [`RecentRequests::cost`]); the oldest entries are
//! forgotten first. Ids longer than [`MAX_ID_BYTES`] are not remembered at all, and a
//! predicted class is kept only up to [`MAX_PREDICTION_BYTES`].
//!
//! The id table is sized for twice its most entries because of how `HashMap` grows: every
//! forgotten id leaves a tombstone, and once tombstones use up the free slots of a table more
//! than half full, it doubles. Sized for just its entries, a full table doubled after ~15
//! times its entries had passed through it: in the 30-minute soak, a 54 MB step in RSS ten
//! minutes into steady load. At most half full, it is rehashed in place instead, forever.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_models::{Tensor, TensorData};
use serde_json::Value;

/// Longest request id remembered; feedback on a longer one is refused as unknown.
pub const MAX_ID_BYTES: usize = 256;
/// Longest text prediction (a BYTES output) kept to compare labels with.
pub const MAX_PREDICTION_BYTES: usize = 256;
/// Model and version names kept interned before the intern table starts over.
const MAX_NAMES: usize = 1024;
/// What one allocation costs beyond the bytes asked for (glibc's chunk header, rounding).
const MALLOC_OVERHEAD: usize = 16;
/// Bytes of one id-table slot: key, value and the table's control byte.
const TABLE_SLOT: usize = size_of::<(Arc<str>, Answered)>() + 1;
/// Bytes of one slot of the queue of ids, oldest first.
const QUEUE_SLOT: usize = size_of::<(Instant, Arc<str>)>();
/// Fixed bytes of one entry besides its slots: the id's reference-counted block.
const ENTRY_OVERHEAD: usize = 2 * size_of::<usize>() + MALLOC_OVERHEAD;
/// The id length the tables are planned for (a UUID is 36 bytes): with longer ids, the byte
/// bound holds fewer entries than the tables have room for.
const PLANNED_ID_BYTES: usize = 64;

/// What is remembered of one answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub model: Arc<str>,
    pub version: Arc<str>,
    /// The predicted class of a single-row request: the value of a one-element output, or
    /// the index of the largest score. `None` when the output is neither.
    pub prediction: Option<Value>,
    /// Whether feedback on this request was accepted already.
    pub rewarded: bool,
    at: Instant,
}

/// A bounded map from request id to [`Answered`], forgetting the oldest first.
pub struct RecentRequests {
    entries: HashMap<Arc<str>, Answered>,
    order: VecDeque<(Instant, Arc<str>)>,
    /// Interned model and version names: every entry of a version shares one copy.
    names: HashMap<Box<str>, Arc<str>>,
    /// Most entries held at once.
    limit: usize,
    /// Bytes of the tables sized for `limit` entries, allocated on the first insert.
    tables: usize,
    /// What the entries may hold besides their slots: `max_bytes` less `tables`.
    max_entry_bytes: usize,
    /// Sum of [`RecentRequests::cost`] over the entries.
    bytes: usize,
    window: Duration,
}

impl RecentRequests {
    /// Remembers at most `capacity` requests (at least one) in at most `max_bytes`, each
    /// for `window`. Nothing is allocated until the first insert.
    pub fn new(capacity: usize, max_bytes: usize, window: Duration) -> Self {
        let limit = entry_limit(capacity.max(1), max_bytes);
        let tables = table_bytes(limit);
        RecentRequests {
            entries: HashMap::new(),
            order: VecDeque::new(),
            names: HashMap::new(),
            limit,
            tables,
            max_entry_bytes: max_bytes.saturating_sub(tables),
            bytes: 0,
            window,
        }
    }

    /// Most entries held at once: `capacity`, or fewer where `max_bytes` must also hold the
    /// tables sized for them.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes one entry is counted as besides its table slots (see the module docs).
    pub fn cost(id: &str, prediction: Option<&Value>) -> usize {
        let text = match prediction {
            Some(Value::String(s)) => s.len() + MALLOC_OVERHEAD,
            _ => 0,
        };
        ENTRY_OVERHEAD + id.len() + text
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held now: the tables once allocated, and [`RecentRequests::cost`] of each entry.
    pub fn bytes(&self) -> usize {
        let tables = if self.entries.capacity() == 0 {
            0
        } else {
            self.tables
        };
        tables + self.bytes
    }

    /// Remembers that `version` of `model` answered `id`. A client may reuse its own ids:
    /// the latest answer is the one feedback is about, but an id that was rewarded stays
    /// rewarded, so answering it again does not open it to a second reward.
    pub fn insert(&mut self, id: &str, model: &str, version: &str, prediction: Option<Value>) {
        if id.len() > MAX_ID_BYTES {
            return;
        }
        let prediction = prediction.filter(|p| match p {
            Value::String(s) => s.len() <= MAX_PREDICTION_BYTES,
            _ => true,
        });
        let cost = Self::cost(id, prediction.as_ref());
        if cost > self.max_entry_bytes {
            return;
        }
        if self.entries.capacity() == 0 {
            // Where the allocator refuses (a limit the machine cannot hold), the tables grow
            // as entries come instead; the bounds still hold.
            let _ = self.entries.try_reserve(2 * self.limit);
            let _ = self.order.try_reserve_exact(self.limit);
        }
        let now = Instant::now();
        self.expire(now);
        let answered = Answered {
            model: self.intern(model),
            version: self.intern(version),
            prediction,
            rewarded: false,
            at: now,
        };
        if let Some(old) = self.entries.get_mut(id) {
            self.bytes -= Self::cost(id, old.prediction.as_ref());
            self.bytes += cost;
            let rewarded = old.rewarded;
            *old = Answered {
                rewarded,
                ..answered
            };
            self.shrink_to(self.limit, self.max_entry_bytes, Some(id));
            return;
        }
        self.shrink_to(self.limit - 1, self.max_entry_bytes - cost, None);
        let id: Arc<str> = Arc::from(id);
        self.entries.insert(Arc::clone(&id), answered);
        self.order.push_back((now, id));
        self.bytes += cost;
    }

    /// The request `id`, if it was answered within the window.
    pub fn get(&self, id: &str) -> Option<&Answered> {
        self.entries
            .get(id)
            .filter(|a| a.at.elapsed() <= self.window)
    }

    /// Marks `id` rewarded (or not again, when its feedback could not be stored).
    pub fn set_rewarded(&mut self, id: &str, rewarded: bool) {
        if let Some(answered) = self.entries.get_mut(id) {
            answered.rewarded = rewarded;
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return Arc::clone(shared);
        }
        if self.names.len() >= MAX_NAMES {
            // Entries keep their copies; only sharing with later entries is lost.
            self.names.clear();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(name.into(), Arc::clone(&shared));
        shared
    }

    /// Forgets the oldest entries (except `keep`) until at most `entries` and `bytes` remain.
    fn shrink_to(&mut self, entries: usize, bytes: usize, keep: Option<&str>) {
        while self.entries.len() > entries || self.bytes > bytes {
            let Some((at, oldest)) = self.order.pop_front() else {
                break;
            };
            if keep == Some(&*oldest) {
                self.order.push_back((at, oldest));
                if self.order.len() == 1 {
                    break;
                }
                continue;
            }
            self.forget(&oldest);
        }
    }

    fn forget(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            self.bytes -= Self::cost(id, old.prediction.as_ref());
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.forget(&id);
            }
        }
    }
}

/// Buckets `HashMap::with_capacity(items)` allocates (hashbrown: at most 7/8 full, a power
/// of two).
fn buckets(items: usize) -> usize {
    match items {
        0..4 => 4,
        4..8 => 8,
        _ => (items.saturating_mul(8) / 7).next_power_of_two(),
    }
}

/// Bytes of the tables for `limit` entries: the id table sized for twice as many (see the
/// module docs) and the queue.
fn table_bytes(limit: usize) -> usize {
    buckets(limit.saturating_mul(2))
        .saturating_mul(TABLE_SLOT)
        .saturating_add(limit.saturating_mul(QUEUE_SLOT))
}

/// The most entries, up to `capacity`, whose tables and fixed costs fit in `max_bytes`
/// (at least one).
fn entry_limit(capacity: usize, max_bytes: usize) -> usize {
    let fits = |n: usize| {
        table_bytes(n).saturating_add(n.saturating_mul(ENTRY_OVERHEAD + PLANNED_ID_BYTES))
            <= max_bytes
    };
    let (mut low, mut high) = (1, capacity.min(max_bytes / ENTRY_OVERHEAD).max(1));
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if fits(mid) { low = mid } else { high = mid - 1 }
    }
    low
}

/// The predicted class of a single-row response (see [`Answered::prediction`]).
pub fn prediction(outputs: &[Tensor]) -> Option<Value> {
    let first = outputs.first()?;
    if first.shape.first().is_some_and(|rows| *rows != 1) && first.shape.len() > 1 {
        return None;
    }
    let scores: Vec<f64> = match &first.data {
        TensorData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::F64(v) => v.clone(),
        TensorData::I64(v) if v.len() == 1 => return Some(Value::from(v[0])),
        TensorData::I32(v) if v.len() == 1 => return Some(Value::from(v[0])),
        TensorData::Bytes(v) if v.len() == 1 => {
            return Some(Value::from(String::from_utf8_lossy(&v[0]).into_owned()));
        }
        _ => return None,
    };
    match scores.len() {
        0 => None,
        1 => Some(Value::from(if scores[0] >= 0.5 { 1 } else { 0 })),
        _ => scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| Value::from(i)),
    }
}

/// Whether `label` names the same class as `prediction` (numbers compare by value).
pub fn matches(label: &Value, prediction: &Value) -> bool {
    match (label.as_f64(), prediction.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => label == prediction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut recent = RecentRequests::new(2, usize::MAX, Duration::from_secs(60));
        recent.insert("a", "m", "1", None);
        recent.insert("b", "m", "2", None);
        recent.insert("c", "m", "1", None);
        assert!(recent.get("a").is_none());
        assert_eq!(&*recent.get("b").unwrap().version, "2");
        assert_eq!(&*recent.get("c").unwrap().model, "m");
    }

    #[test]
    fn forgets_requests_older_than_the_window() {
        let mut recent = RecentRequests::new(10, usize::MAX, Duration::ZERO);
        recent.insert("a", "m", "1", None);
        std::thread::sleep(Duration::from_millis(2));
        assert!(recent.get("a").is_none());
    }

    #[test]
    fn predictions_are_argmax_or_the_single_value() {
        let scores = Tensor::new("p", vec![1, 3], TensorData::F32(vec![0.1, 0.7, 0.2])).unwrap();
        assert_eq!(prediction(&[scores]), Some(Value::from(1)));
        let class = Tensor::new("c", vec![1], TensorData::I64(vec![4])).unwrap();
        assert_eq!(prediction(&[class]), Some(Value::from(4)));
        let batch = Tensor::new("p", vec![2, 2], TensorData::F32(vec![0.0; 4])).unwrap();
        assert_eq!(prediction(&[batch]), None);
        assert!(matches(&Value::from(1.0), &Value::from(1)));
        assert!(!matches(&Value::from("cat"), &Value::from(1)));
    }
}

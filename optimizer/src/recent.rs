//! Request ids the server issued recently, so feedback is accepted only for requests this
//! server answered, and attributed to the version that answered them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nexus_models::{Tensor, TensorData};
use serde_json::Value;

/// What is remembered of one answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub model: String,
    pub version: String,
    /// The predicted class of a single-row request: the value of a one-element output, or
    /// the index of the largest score. `None` when the output is neither.
    pub prediction: Option<Value>,
    at: Instant,
}

/// A bounded map from request id to [`Answered`], forgetting the oldest first.
pub struct RecentRequests {
    entries: HashMap<String, Answered>,
    order: VecDeque<(Instant, String)>,
    capacity: usize,
    window: Duration,
}

impl RecentRequests {
    pub fn new(capacity: usize, window: Duration) -> Self {
        RecentRequests {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            window,
        }
    }

    pub fn insert(&mut self, id: &str, model: &str, version: &str, prediction: Option<Value>) {
        let now = Instant::now();
        self.expire(now);
        while self.order.len() >= self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
        let answered = Answered {
            model: model.to_string(),
            version: version.to_string(),
            prediction,
            at: now,
        };
        // A client may reuse its own ids: the latest answer is the one feedback is about.
        if self.entries.insert(id.to_string(), answered).is_none() {
            self.order.push_back((now, id.to_string()));
        }
    }

    /// The request `id`, if it was answered within the window.
    pub fn get(&self, id: &str) -> Option<&Answered> {
        self.entries
            .get(id)
            .filter(|a| a.at.elapsed() <= self.window)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.entries.remove(&id);
            }
        }
    }
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
        let mut recent = RecentRequests::new(2, Duration::from_secs(60));
        recent.insert("a", "m", "1", None);
        recent.insert("b", "m", "2", None);
        recent.insert("c", "m", "1", None);
        assert!(recent.get("a").is_none());
        assert_eq!(recent.get("b").unwrap().version, "2");
        assert_eq!(recent.get("c").unwrap().model, "m");
    }

    #[test]
    fn forgets_requests_older_than_the_window() {
        let mut recent = RecentRequests::new(10, Duration::ZERO);
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

//! Bounds on what one client can make the server hold: the length of a request id and
//! the bytes of request bodies in flight across the whole server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ServingError;

/// Longest client-chosen request `id`, in bytes. Ids are echoed in responses and kept
/// with each inference's record, so their length is bounded like any other field.
pub const MAX_REQUEST_ID_BYTES: usize = 256;

/// Refuses a request `id` longer than [`MAX_REQUEST_ID_BYTES`].
pub fn check_request_id(id: &str) -> Result<(), ServingError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ServingError::InvalidArgument(format!(
            "request id is {} bytes long; the limit is {MAX_REQUEST_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// Default of `--max-inflight-bytes`: eight requests of the default 64 MiB body limit.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 512 << 20;

/// The request bytes (HTTP bodies, gRPC messages) the server holds at once, shared by
/// every listener. A request that would pass the limit is refused with UNAVAILABLE (HTTP
/// 503) instead of being read: memory stays bounded however many clients send at once,
/// and the server keeps answering the others.
#[derive(Debug)]
pub struct InflightBytes {
    limit: usize,
    used: AtomicUsize,
}

impl InflightBytes {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(InflightBytes {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown as a body arrives.
    pub fn reserve_none(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Reserves `bytes` at once (a decoded gRPC message).
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, ServingError> {
        let mut reservation = self.reserve_none();
        reservation.grow(bytes)?;
        Ok(reservation)
    }
}

/// Bytes held for one request; released when dropped, when the request is answered.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<InflightBytes>,
    bytes: usize,
}

impl Reservation {
    /// Adds `more` bytes, or refuses them (holding nothing more) when the server's limit
    /// would be passed.
    pub fn grow(&mut self, more: usize) -> Result<(), ServingError> {
        let budget = &self.budget;
        let taken = budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more)
                    .filter(|total| *total <= budget.limit)
            });
        match taken {
            Ok(_) => {
                self.bytes += more;
                Ok(())
            }
            // `used` counts what this request already holds.
            Err(used) => Err(ServingError::Unavailable(format!(
                "this request needs {} bytes but the server already holds {} bytes of other \
                 requests; the limit is {} (--max-inflight-bytes); retry later",
                self.bytes + more,
                used.saturating_sub(self.bytes),
                budget.limit
            ))),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_released_on_drop() {
        let budget = InflightBytes::new(100);
        let mut a = budget.reserve(60).unwrap();
        let err = budget.reserve(50).unwrap_err();
        assert!(matches!(err, ServingError::Unavailable(_)));
        assert!(
            err.to_string()
                .contains("needs 50 bytes but the server already holds 60 bytes"),
            "{err}"
        );
        assert!(err.to_string().contains("--max-inflight-bytes"), "{err}");
        a.grow(40).unwrap();
        assert!(a.grow(1).is_err());
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(100).is_ok());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(check_request_id(&"a".repeat(MAX_REQUEST_ID_BYTES)).is_ok());
        let err = check_request_id(&"a".repeat(MAX_REQUEST_ID_BYTES + 1)).unwrap_err();
        assert!(matches!(err, ServingError::InvalidArgument(_)));
        assert!(err.to_string().contains("limit is 256"), "{err}");
    }
}

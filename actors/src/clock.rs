//! Wall-clock time for durable timestamps (conditions, ages), behind a trait so tests and the demo
//! can move it forward instead of waiting out a `consolidateAfter`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

/// The time Rafter compares object timestamps with.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The system clock plus an offset that only grows: `advance` makes time pass at once.
#[derive(Debug, Default)]
pub struct SkewedClock {
    offset_ms: AtomicI64,
}

impl SkewedClock {
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::SeqCst);
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        let offset = jiff::SignedDuration::from_millis(self.offset_ms.load(Ordering::SeqCst));
        Timestamp::now().checked_add(offset).unwrap_or_else(|_| Timestamp::now())
    }
}

/// How long ago `then` (a Kubernetes timestamp) was, by `clock`; zero for the future.
pub fn age(clock: &dyn Clock, then: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Duration {
    let then = then.0;
    let now = clock.now();
    let diff = now.duration_since(then);
    Duration::try_from(diff).unwrap_or(Duration::ZERO)
}

//! The batch window: pods that become pending close together are solved together. A window
//! opens with the first pod, closes once no pod has arrived for the idle period, and closes at the
//! latest after the max period however busy the stream is.

use std::ops::Add;
use std::time::Duration;

/// A batch window over any clock (`tokio::time::Instant` in the Batcher, plain numbers in tests).
#[derive(Debug, Clone)]
pub struct BatchWindow<T> {
    idle: Duration,
    max: Duration,
    opened: Option<T>,
    last: Option<T>,
    count: usize,
}

impl<T: Copy + Ord + Add<Duration, Output = T>> BatchWindow<T> {
    pub fn new(idle: Duration, max: Duration) -> Self {
        Self { idle, max: max.max(idle), opened: None, last: None, count: 0 }
    }

    /// Records a pod arriving at `now`, opening the window if it is closed.
    pub fn observe(&mut self, now: T) {
        if self.opened.is_none() {
            self.opened = Some(now);
        }
        self.last = Some(now);
        self.count += 1;
    }

    /// When the window closes if nothing else arrives; `None` while closed.
    pub fn deadline(&self) -> Option<T> {
        let (opened, last) = (self.opened?, self.last?);
        Some((last + self.idle).min(opened + self.max))
    }

    /// Whether the window is open and due at `now`.
    pub fn due(&self, now: T) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Closes the window, returning when it opened and how many arrivals it saw.
    pub fn close(&mut self) -> Option<(T, usize)> {
        let opened = self.opened.take()?;
        self.last = None;
        Some((opened, std::mem::take(&mut self.count)))
    }

    pub fn is_open(&self) -> bool {
        self.opened.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Ms(u64);
    impl Add<Duration> for Ms {
        type Output = Ms;
        fn add(self, d: Duration) -> Ms {
            Ms(self.0 + d.as_millis() as u64)
        }
    }

    fn window() -> BatchWindow<Ms> {
        BatchWindow::new(Duration::from_secs(1), Duration::from_secs(10))
    }

    #[test]
    fn a_window_closes_after_the_idle_period_without_arrivals() {
        let mut w = window();
        assert_eq!(w.deadline(), None);
        w.observe(Ms(0));
        w.observe(Ms(400));
        assert_eq!(w.deadline(), Some(Ms(1400)));
        assert!(!w.due(Ms(1399)));
        assert!(w.due(Ms(1400)));
        assert_eq!(w.close(), Some((Ms(0), 2)));
        assert!(!w.is_open());
    }

    #[test]
    fn a_steady_stream_is_cut_at_the_max_period() {
        let mut w = window();
        for t in (0..20_000).step_by(500) {
            w.observe(Ms(t));
            if w.due(Ms(t)) {
                break;
            }
        }
        assert_eq!(w.deadline(), Some(Ms(10_000)));
        assert!(w.due(Ms(10_000)));
    }

    #[test]
    fn an_idle_period_longer_than_the_max_is_capped() {
        let mut w = BatchWindow::new(Duration::from_secs(5), Duration::from_secs(1));
        w.observe(Ms(0));
        assert_eq!(w.deadline(), Some(Ms(5000)), "max is raised to idle");
    }
}

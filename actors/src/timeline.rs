//! What happened when, in one replica: the demo's timeline and the benchmarks' latencies are read
//! from here rather than from log lines.

use std::sync::Mutex;

use tokio::time::Instant;

/// A step of Rafter's work.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    BatchClosed {
        pods: usize,
    },
    Solved {
        pods: usize,
        claims: usize,
        price: f64,
        types: Vec<String>,
    },
    CreateCalled {
        claim: String,
    },
    Launched {
        claim: String,
        instance_type: String,
    },
    Registered {
        claim: String,
        node: String,
    },
    Leading {
        epoch: i32,
    },
    SteppedDown,
    /// A disruption command was carried out: its claims deleted after any replacement initialized.
    Disrupted {
        claims: usize,
        replacements: usize,
        savings: f64,
    },
    Terminated {
        claim: String,
    },
    /// An interruption was recorded on a claim; its message was received at `received`.
    Interrupted {
        claim: String,
        received: Instant,
    },
    /// Replacement capacity was handed to the launcher for an interrupted claim.
    ReplacementPlanned {
        claim: String,
        claims: usize,
    },
    /// An interrupted claim's node was tainted.
    Tainted {
        claim: String,
    },
    /// An interrupted claim's drain began, with its replacement ready or because the deadline forced it.
    DrainStarted {
        claim: String,
        replacement_ready: bool,
    },
    /// An interrupted claim's node was drained.
    Drained {
        claim: String,
    },
}

#[derive(Debug, Default)]
struct Inner {
    first_pod_seen: Option<Instant>,
    last_pod_seen: Option<Instant>,
    marks: Vec<(Instant, Mark)>,
}

/// The record, bounded so a long-running controller does not grow it without end.
#[derive(Debug, Default)]
pub struct Timeline {
    inner: Mutex<Inner>,
}

const KEEP: usize = 100_000;

impl Timeline {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A pod that needs capacity was observed.
    pub fn pod_seen(&self) {
        let now = Instant::now();
        self.with(|i| {
            i.first_pod_seen.get_or_insert(now);
            i.last_pod_seen = Some(now);
        });
    }

    pub fn mark(&self, mark: Mark) {
        let now = Instant::now();
        self.with(|i| {
            if i.marks.len() >= KEEP {
                i.marks.drain(..KEEP / 2);
            }
            i.marks.push((now, mark));
        });
    }

    /// (first, last) time a pod needing capacity was seen.
    pub fn pods_seen(&self) -> (Option<Instant>, Option<Instant>) {
        self.with(|i| (i.first_pod_seen, i.last_pod_seen))
    }

    pub fn marks(&self) -> Vec<(Instant, Mark)> {
        self.with(|i| i.marks.clone())
    }

    /// The first mark matching `f`.
    pub fn first(&self, f: impl Fn(&Mark) -> bool) -> Option<(Instant, Mark)> {
        self.with(|i| i.marks.iter().find(|(_, m)| f(m)).cloned())
    }
}

//! Request coalescing: identical requests that arrive close together become one API call (a
//! fleet of N, one DescribeInstances for N claims, one TerminateInstances for N ids).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use rafter::state::window::BatchWindow;

/// Runs one merged call: the requests in arrival order in, one response per request out (in the
/// same order; missing responses reach their callers as `None`).
pub type Executor<K, Req, Resp> =
    Arc<dyn Fn(K, Vec<Req>) -> Pin<Box<dyn Future<Output = Vec<Resp>> + Send>> + Send + Sync>;

struct Batch<Req, Resp> {
    items: Vec<(Req, oneshot::Sender<Resp>)>,
    window: BatchWindow<Instant>,
}

/// Merges requests with equal keys arriving within an idle window (capped by a max window).
pub struct Coalescer<K, Req, Resp> {
    idle: Duration,
    max: Duration,
    /// At most this many requests per call; a full batch is sent at once.
    limit: usize,
    pending: Arc<Mutex<HashMap<K, Batch<Req, Resp>>>>,
    run: Executor<K, Req, Resp>,
}

impl<K, Req, Resp> std::fmt::Debug for Coalescer<K, Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").field("idle", &self.idle).field("max", &self.max).finish_non_exhaustive()
    }
}

impl<K, Req, Resp> Coalescer<K, Req, Resp>
where
    K: Hash + Eq + Clone + Send + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    pub fn new(idle: Duration, max: Duration, limit: usize, run: Executor<K, Req, Resp>) -> Self {
        Self { idle, max, limit: limit.max(1), pending: Arc::new(Mutex::new(HashMap::new())), run }
    }

    fn lock(pending: &Mutex<HashMap<K, Batch<Req, Resp>>>) -> std::sync::MutexGuard<'_, HashMap<K, Batch<Req, Resp>>> {
        pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a request to its key's batch and waits for its response.
    pub async fn submit(&self, key: K, request: Req) -> Option<Resp> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let full = {
            let mut pending = Self::lock(&self.pending);
            let first = !pending.contains_key(&key);
            let batch = pending
                .entry(key.clone())
                .or_insert_with(|| Batch { items: Vec::new(), window: BatchWindow::new(self.idle, self.max) });
            batch.window.observe(now);
            batch.items.push((request, tx));
            if batch.items.len() >= self.limit {
                pending.remove(&key).map(|b| b.items)
            } else {
                if first {
                    self.spawn_flusher(key.clone());
                }
                None
            }
        };
        if let Some(items) = full {
            tokio::spawn(Self::execute(self.run.clone(), key, items));
        }
        rx.await.ok()
    }

    fn spawn_flusher(&self, key: K) {
        let pending = self.pending.clone();
        let run = self.run.clone();
        tokio::spawn(async move {
            loop {
                // Ok(deadline): wait more; Err(items): the window closed with these requests.
                let next = {
                    let mut guard = Self::lock(&pending);
                    let now = Instant::now();
                    match guard.get(&key) {
                        None => return,
                        Some(batch) if batch.window.due(now) => Err(guard.remove(&key).map(|b| b.items)),
                        Some(batch) => Ok(batch.window.deadline().unwrap_or(now)),
                    }
                };
                match next {
                    Ok(deadline) => tokio::time::sleep_until(deadline).await,
                    Err(Some(items)) => return Self::execute(run, key, items).await,
                    Err(None) => return,
                }
            }
        });
    }

    async fn execute(run: Executor<K, Req, Resp>, key: K, items: Vec<(Req, oneshot::Sender<Resp>)>) {
        let (requests, senders): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = items.into_iter().unzip();
        let responses = run(key, requests).await;
        for (tx, response) in senders.into_iter().zip(responses) {
            let _ = tx.send(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(calls: Arc<AtomicUsize>) -> Executor<u8, u32, (usize, u32)> {
        Arc::new(move |_key, reqs: Vec<u32>| {
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let n = reqs.len();
                reqs.into_iter().map(|r| (n, r * 2)).collect()
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_identical_requests_becomes_one_call_and_each_caller_gets_its_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c =
            Arc::new(Coalescer::new(Duration::from_millis(35), Duration::from_secs(1), 1000, counting(calls.clone())));
        let handles: Vec<_> = (0..100u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.submit(7, i).await })
            })
            .collect();
        let mut answers = Vec::new();
        for h in handles {
            answers.push(h.await.unwrap().unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(answers.iter().enumerate().all(|(i, (n, v))| *n == 100 && *v == 2 * i as u32));
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_are_separate_calls_and_a_steady_stream_is_cut_at_the_max_window() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c =
            Arc::new(Coalescer::new(Duration::from_millis(35), Duration::from_secs(1), 1000, counting(calls.clone())));
        let a = tokio::spawn({
            let c = c.clone();
            async move { c.submit(1, 1).await }
        });
        let b = tokio::spawn({
            let c = c.clone();
            async move { c.submit(2, 1).await }
        });
        assert_eq!(a.await.unwrap().unwrap().0, 1);
        assert_eq!(b.await.unwrap().unwrap().0, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // One request every 20 ms keeps the idle window open; the max window closes it after 1 s.
        let start = Instant::now();
        let mut handles = Vec::new();
        for i in 0..80u32 {
            let c = c.clone();
            handles.push(tokio::spawn(async move { (c.submit(3, i).await, Instant::now()) }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (first, at) = handles.remove(0).await.unwrap();
        assert!(first.unwrap().0 < 80);
        assert!(at - start <= Duration::from_millis(1001));
    }
}

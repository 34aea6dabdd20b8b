//! The interruption queue: a narrow trait over SQS long polling (implemented over the SDK in
//! `rafter-aws`), and an in-process queue with SQS's delivery rules for the demo.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// SQS's message ID (the same on every delivery).
    pub id: String,
    /// This delivery's receipt handle, needed to delete it.
    pub receipt: String,
    pub body: String,
    /// When the message was sent to the queue.
    pub sent_at: Option<Timestamp>,
    /// How often it has been received, this time included.
    pub receive_count: u32,
}

/// Why the queue could not be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "the interruption queue `{queue}` does not exist: create it with its EventBridge rules, or fix --interruption-queue"
    )]
    NoSuchQueue { queue: String },
    #[error("SQS {operation} failed ({code}): {message}")]
    Sqs { operation: &'static str, code: String, message: String },
    #[error("SQS {operation}: {source}")]
    Build {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where interruption messages come from. At-least-once: a message not deleted comes back after
/// its visibility timeout.
#[async_trait]
pub trait MessageQueue: Send + Sync + std::fmt::Debug {
    /// Waits for up to one batch of messages (an empty batch after the long-poll wait).
    async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError>;
    /// Deletes deliveries; returns the IDs of those the queue refused to delete.
    async fn delete(&self, messages: &[QueueMessage]) -> Result<Vec<String>, QueueError>;
}

/// How to reach the queue and how to poll it.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// A queue URL, or a name looked up with `GetQueueUrl`.
    pub queue: String,
    pub region: String,
    /// An endpoint override, for emulators such as moto.
    pub endpoint: Option<String>,
    /// Static keys, for emulators only; otherwise aws-config's default chain.
    pub credentials: Option<(String, String)>,
    /// Long-poll wait (at most 20 s).
    pub wait: Duration,
    /// Messages per receive (at most 10).
    pub max_messages: i32,
    /// How long a received message stays hidden from other receivers.
    pub visibility: Duration,
}

impl QueueConfig {
    /// The documented defaults: 20 s long polls of 10 messages, hidden for 20 s.
    pub fn new(queue: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            region: region.into(),
            endpoint: None,
            credentials: None,
            wait: Duration::from_secs(20),
            max_messages: 10,
            visibility: Duration::from_secs(20),
        }
    }
}

/// An in-process queue with SQS's delivery rules: long polls, a visibility timeout, at-least-once
/// delivery, and deletes by the latest receipt. `rafter demo` runs on the fake cloud, whose spot
/// interruptions have no EventBridge or SQS to travel through; they travel through this.
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<MemoryState>,
    arrived: tokio::sync::Notify,
    wait: Duration,
    visibility: Duration,
}

#[derive(Debug, Default)]
struct MemoryState {
    sent: u64,
    /// Undeleted messages in the order they were sent.
    messages: BTreeMap<u64, Stored>,
}

#[derive(Debug)]
struct Stored {
    body: String,
    sent_at: Timestamp,
    visible_at: tokio::time::Instant,
    receive_count: u32,
    /// The latest delivery's receipt, the only one that deletes it (as in SQS).
    receipt: String,
}

impl MemoryQueue {
    /// Messages per receive, as SQS allows at most.
    const BATCH: usize = 10;

    /// A queue whose receives wait up to `wait` and hide what they return for `visibility`.
    pub fn new(wait: Duration, visibility: Duration) -> Self {
        Self { state: Mutex::default(), arrived: tokio::sync::Notify::new(), wait, visibility }
    }

    /// Sends a message, as EventBridge would; returns its ID.
    pub fn send(&self, body: impl Into<String>) -> String {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.sent += 1;
        let seq = state.sent;
        let stored = Stored {
            body: body.into(),
            sent_at: Timestamp::now(),
            visible_at: tokio::time::Instant::now(),
            receive_count: 0,
            receipt: String::new(),
        };
        state.messages.insert(seq, stored);
        drop(state);
        self.arrived.notify_waiters();
        Self::id(seq)
    }

    /// Messages sent and not yet deleted, in flight or not.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).messages.len()
    }

    /// Whether every message sent has been deleted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn id(seq: u64) -> String {
        format!("memory-{seq}")
    }

    /// Takes up to a batch of visible messages, or says when the next one becomes visible.
    fn take(&self, now: tokio::time::Instant) -> Result<Vec<QueueMessage>, Option<tokio::time::Instant>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = Vec::new();
        for (seq, stored) in state.messages.iter_mut().filter(|(_, m)| m.visible_at <= now).take(Self::BATCH) {
            stored.receive_count += 1;
            stored.visible_at = now + self.visibility;
            stored.receipt = format!("{}#{}", Self::id(*seq), stored.receive_count);
            batch.push(QueueMessage {
                id: Self::id(*seq),
                receipt: stored.receipt.clone(),
                body: stored.body.clone(),
                sent_at: Some(stored.sent_at),
                receive_count: stored.receive_count,
            });
        }
        if batch.is_empty() { Err(state.messages.values().map(|m| m.visible_at).min()) } else { Ok(batch) }
    }
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Registered before looking, so a send between the look and the wait is not missed.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let until = match self.take(tokio::time::Instant::now()) {
                Ok(batch) => return Ok(batch),
                Err(next) => next.map_or(deadline, |next| next.min(deadline)),
            };
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                () = &mut arrived => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Like SQS, a stale receipt or a message already gone is not an error: nothing is deleted.
    async fn delete(&self, messages: &[QueueMessage]) -> Result<Vec<String>, QueueError> {
        let receipts: std::collections::HashSet<&str> = messages.iter().map(|m| m.receipt.as_str()).collect();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.messages.retain(|_, m| m.receipt.is_empty() || !receipts.contains(m.receipt.as_str()));
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(20);
    const VISIBILITY: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_returns_as_soon_as_a_message_is_sent_and_empty_when_its_wait_ends() {
        let queue = std::sync::Arc::new(MemoryQueue::new(WAIT, VISIBILITY));
        let started = tokio::time::Instant::now();
        assert!(queue.receive().await.expect("receive").is_empty());
        assert_eq!(started.elapsed(), WAIT, "an empty poll waits its whole wait");

        let sender = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sender.send("warning");
        });
        let started = tokio::time::Instant::now();
        let batch = queue.receive().await.expect("receive");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(batch.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["warning"]);
        assert_eq!(batch[0].receive_count, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_undeleted_message_comes_back_after_its_visibility_timeout_and_only_its_latest_receipt_deletes_it() {
        let queue = MemoryQueue::new(WAIT, VISIBILITY);
        let id = queue.send("warning");
        let first = queue.receive().await.expect("receive");
        assert_eq!(first[0].id, id);

        let started = tokio::time::Instant::now();
        let second = queue.receive().await.expect("receive");
        assert_eq!(started.elapsed(), VISIBILITY, "hidden until its visibility timeout ends");
        assert_eq!((second[0].id.as_str(), second[0].receive_count), (id.as_str(), 2));

        assert_eq!(queue.delete(&first).await.expect("delete"), Vec::<String>::new());
        assert_eq!(queue.len(), 1, "a stale receipt deletes nothing");
        queue.delete(&second).await.expect("delete");
        assert!(queue.is_empty());
        queue.delete(&second).await.expect("deleting twice is not an error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_receive_returns_at_most_ten_messages_oldest_first() {
        let queue = MemoryQueue::new(WAIT, VISIBILITY);
        for i in 0..12 {
            queue.send(format!("m{i}"));
        }
        let first = queue.receive().await.expect("receive");
        let second = queue.receive().await.expect("receive");
        let bodies = |b: &[QueueMessage]| b.iter().map(|m| m.body.clone()).collect::<Vec<_>>();
        assert_eq!(bodies(&first), (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert_eq!(bodies(&second), ["m10", "m11"]);
        assert!(first.iter().chain(&second).all(|m| m.sent_at.is_some()));
    }
}

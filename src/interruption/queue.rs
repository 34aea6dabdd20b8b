//! The interruption queue: a narrow trait over SQS long polling, and its SQS implementation.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
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
        source: aws_sdk_sqs::error::BuildError,
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

fn sqs_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &'static str,
    error: aws_sdk_sqs::error::SdkError<E>,
) -> QueueError {
    let code = error.code().unwrap_or("Unknown").to_string();
    let message = error.message().map(str::to_string).unwrap_or_else(|| DisplayErrorContext(&error).to_string());
    QueueError::Sqs { operation, code, message }
}

/// The SQS queue, through the official SDK.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    config: QueueConfig,
}

impl SqsQueue {
    /// Connects and resolves the queue's URL.
    pub async fn connect(config: QueueConfig) -> Result<Self, QueueError> {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // A long poll holds the request for `wait`; anything much longer is a dead connection.
            .operation_attempt_timeout(config.wait + Duration::from_secs(10))
            .build();
        let retry = aws_config::retry::RetryConfig::standard().with_max_attempts(3);
        let shared = crate::cloud::aws::sdk_config(
            &config.region,
            config.endpoint.as_deref(),
            config.credentials.as_ref(),
            retry,
            timeouts,
        )
        .await;
        let client = aws_sdk_sqs::Client::new(&shared);
        let url = if config.queue.starts_with("https://") || config.queue.starts_with("http://") {
            config.queue.clone()
        } else {
            let out = client.get_queue_url().queue_name(&config.queue).send().await.map_err(|e| {
                if e.code() == Some("AWS.SimpleQueueService.NonExistentQueue") || e.code() == Some("QueueDoesNotExist")
                {
                    QueueError::NoSuchQueue { queue: config.queue.clone() }
                } else {
                    sqs_error("GetQueueUrl", e)
                }
            })?;
            out.queue_url().ok_or_else(|| QueueError::NoSuchQueue { queue: config.queue.clone() })?.to_string()
        };
        Ok(Self { client, url, config })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SDK client (tests use it to send messages and read queue attributes).
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[async_trait]
impl MessageQueue for SqsQueue {
    async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(self.config.max_messages.clamp(1, 10))
            .wait_time_seconds(seconds(self.config.wait).clamp(0, 20))
            .visibility_timeout(seconds(self.config.visibility))
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sqs_error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let attributes = m.attributes();
                let attribute = |name: &MessageSystemAttributeName| attributes.and_then(|a| a.get(name));
                Some(QueueMessage {
                    id: m.message_id()?.to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    sent_at: attribute(&MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse::<i64>().ok())
                        .and_then(|ms| Timestamp::from_millisecond(ms).ok()),
                    receive_count: attribute(&MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect())
    }

    async fn delete(&self, messages: &[QueueMessage]) -> Result<Vec<String>, QueueError> {
        let mut failed = Vec::new();
        for chunk in messages.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&m.receipt)
                        .build()
                        .map_err(|source| QueueError::Build { operation: "DeleteMessageBatch", source })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sqs_error("DeleteMessageBatch", e))?;
            for f in out.failed() {
                if let Some(m) = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                    failed.push(m.id.clone());
                }
            }
        }
        Ok(failed)
    }
}

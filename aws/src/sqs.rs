//! The interruption queue on SQS, through the official SDK: long polls, batched deletes.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use jiff::Timestamp;
use rafter::interruption::queue::{MessageQueue, QueueConfig, QueueError, QueueMessage};

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
        let shared =
            crate::sdk_config(&config.region, config.endpoint.as_deref(), config.credentials.as_ref(), retry, timeouts)
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
                        .map_err(|source| QueueError::Build {
                            operation: "DeleteMessageBatch",
                            source: Box::new(source),
                        })
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

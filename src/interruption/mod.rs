//! The EventBridge messages that announce interruptions, as they arrive on the SQS queue (pure models).
//!
//! [`plan`] turns a message into what Rafter does about it; [`queue`] is the SQS adapter.
//!
//! Each kind has its own `detail` type; [`Message::parse`] tells the kinds apart by `detail-type`
//! and `source`. Times are kept as AWS wrote them (RFC 3339 in the envelope, RFC 2822 in Health
//! events) so a message round-trips byte for byte into logs and dead-letter queues.

pub mod plan;
pub mod queue;
pub mod stage;

#[cfg(test)]
mod fuzz;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The EventBridge envelope around every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Envelope<D> {
    /// Envelope version, `0`.
    pub version: String,
    /// Unique ID of the event; repeated deliveries carry the same ID.
    pub id: String,
    /// What happened, e.g. `EC2 Spot Instance Interruption Warning`.
    pub detail_type: String,
    /// The emitting service, `aws.ec2` or `aws.health`.
    pub source: String,
    /// Account of the affected resources. Rafter does not need it, so an event without it (moto's
    /// EventBridge leaves it out) is still read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account: String,
    /// When the event was emitted (RFC 3339).
    pub time: String,
    /// Region of the affected resources.
    pub region: String,
    /// ARNs (or IDs) of the affected resources.
    #[serde(default)]
    pub resources: Vec<String>,
    /// The kind-specific body.
    pub detail: D,
}

/// `EC2 Spot Instance Interruption Warning`: the instance is reclaimed two minutes after `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SpotInterruption {
    /// The instance.
    pub instance_id: String,
    /// `terminate`, `stop` or `hibernate`.
    pub instance_action: String,
}

impl Envelope<SpotInterruption> {
    /// The warning EC2 sends at `time` for a spot instance it reclaims two minutes later. The demo
    /// sends it when its fake cloud reclaims an instance, since no EventBridge is there to.
    pub fn spot_warning(
        id: impl Into<String>,
        account: &str,
        region: &str,
        instance_id: &str,
        time: jiff::Timestamp,
    ) -> Self {
        Self {
            version: "0".into(),
            id: id.into(),
            detail_type: "EC2 Spot Instance Interruption Warning".into(),
            source: "aws.ec2".into(),
            account: account.into(),
            time: time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            region: region.into(),
            resources: vec![format!("arn:aws:ec2:{region}:{account}:instance/{instance_id}")],
            detail: SpotInterruption { instance_id: instance_id.into(), instance_action: "terminate".into() },
        }
    }
}

/// `EC2 Capacity Reservation Instance Interruption Warning`: an interruptible Capacity Reservation
/// takes its capacity back, two minutes after `time` unless `instance-termination-time` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CapacityReservationInterruption {
    /// The instance.
    pub instance_id: String,
    /// `terminate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_action: Option<String>,
    /// When the instance is terminated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_termination_time: Option<String>,
    /// The zone ID of the reservation.
    #[serde(default, rename = "azId", skip_serializing_if = "Option::is_none")]
    pub az_id: Option<String>,
}

/// `EC2 Instance Rebalance Recommendation`: the instance is at elevated risk of interruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RebalanceRecommendation {
    /// The instance.
    pub instance_id: String,
}

/// `EC2 Instance State-change Notification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StateChange {
    /// The instance.
    pub instance_id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
    pub state: String,
}

/// `AWS Health Event`; `scheduledChange` events for EC2 announce retirements and maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthEvent {
    /// ARN of the Health event.
    pub event_arn: String,
    /// The AWS service, `EC2` for instances.
    pub service: String,
    /// E.g. `AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED`.
    pub event_type_code: String,
    /// `scheduledChange`, `issue`, `accountNotification` or `investigation`.
    pub event_type_category: String,
    /// When the change starts (RFC 2822, e.g. `Sat, 05 Jun 2016 15:10:09 GMT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the change ends, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Human-readable descriptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_description: Vec<EventDescription>,
    /// The instances (or other entities) affected.
    #[serde(default)]
    pub affected_entities: Vec<AffectedEntity>,
}

/// One description of a Health event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDescription {
    /// Language code, e.g. `en_US`.
    pub language: String,
    /// The description.
    pub latest_description: String,
}

/// An entity a Health event affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffectedEntity {
    /// For EC2, the instance ID.
    pub entity_value: String,
    /// Tags of the entity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A message Rafter understands, or the reason it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A spot interruption warning.
    SpotInterruption(Envelope<SpotInterruption>),
    /// An interruptible Capacity Reservation's interruption warning.
    CapacityReservationInterruption(Envelope<CapacityReservationInterruption>),
    /// A rebalance recommendation.
    RebalanceRecommendation(Envelope<RebalanceRecommendation>),
    /// An instance state change.
    StateChange(Envelope<StateChange>),
    /// An AWS Health event.
    Health(Envelope<HealthEvent>),
    /// A well-formed event of a kind Rafter does not act on (deleted and counted).
    Unknown {
        /// The event ID.
        id: String,
        /// Its `detail-type`.
        detail_type: String,
        /// Its `source`.
        source: String,
    },
}

/// Why a message body is not an event Rafter can read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The body is not JSON, or not an EventBridge envelope.
    #[error("message is not an EventBridge event: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The envelope is fine but its `detail` does not fit its `detail-type`.
    #[error("event {id} ({detail_type}) has a malformed detail: {source}")]
    Detail {
        /// The event ID.
        id: String,
        /// Its `detail-type`.
        detail_type: String,
        /// What was wrong.
        #[source]
        source: serde_json::Error,
    },
}

impl Message {
    /// Parses a message body.
    pub fn parse(body: &str) -> Result<Self, ParseError> {
        let raw: Envelope<serde_json::Value> = serde_json::from_str(body).map_err(ParseError::Envelope)?;
        fn typed<D: DeserializeOwned>(raw: Envelope<serde_json::Value>) -> Result<Envelope<D>, ParseError> {
            let detail = serde_json::from_value(raw.detail).map_err(|source| ParseError::Detail {
                id: raw.id.clone(),
                detail_type: raw.detail_type.clone(),
                source,
            })?;
            Ok(Envelope {
                version: raw.version,
                id: raw.id,
                detail_type: raw.detail_type,
                source: raw.source,
                account: raw.account,
                time: raw.time,
                region: raw.region,
                resources: raw.resources,
                detail,
            })
        }
        Ok(match (raw.source.as_str(), raw.detail_type.as_str()) {
            ("aws.ec2", "EC2 Spot Instance Interruption Warning") => Self::SpotInterruption(typed(raw)?),
            ("aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning") => {
                Self::CapacityReservationInterruption(typed(raw)?)
            }
            ("aws.ec2", "EC2 Instance Rebalance Recommendation") => Self::RebalanceRecommendation(typed(raw)?),
            ("aws.ec2", "EC2 Instance State-change Notification") => Self::StateChange(typed(raw)?),
            ("aws.health", "AWS Health Event") => Self::Health(typed(raw)?),
            _ => Self::Unknown { id: raw.id, detail_type: raw.detail_type, source: raw.source },
        })
    }

    /// The message as JSON, for logs and round-trips.
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Self::SpotInterruption(e) => serde_json::to_value(e),
            Self::CapacityReservationInterruption(e) => serde_json::to_value(e),
            Self::RebalanceRecommendation(e) => serde_json::to_value(e),
            Self::StateChange(e) => serde_json::to_value(e),
            Self::Health(e) => serde_json::to_value(e),
            Self::Unknown { id, detail_type, source } => {
                Ok(serde_json::json!({"id": id, "detail-type": detail_type, "source": source}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/events").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn round_trip(name: &str) -> Message {
        let body = example(name);
        let message = Message::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let original: serde_json::Value = serde_json::from_str(&body).expect("example is JSON");
        assert_eq!(message.to_json().expect("serialises"), original, "{name} changed in a round trip");
        message
    }

    #[test]
    fn every_example_event_round_trips_through_its_model() {
        let Message::SpotInterruption(spot) = round_trip("spot-interruption.json") else { panic!("spot") };
        assert_eq!(spot.detail.instance_id, "i-0b662ef9931388ba0");
        assert_eq!(spot.detail.instance_action, "terminate");
        let Message::RebalanceRecommendation(r) = round_trip("rebalance-recommendation.json") else {
            panic!("rebalance")
        };
        assert_eq!(r.detail.instance_id, "i-0b662ef9931388ba0");
        let Message::StateChange(s) = round_trip("state-change.json") else { panic!("state change") };
        assert_eq!((s.detail.instance_id.as_str(), s.detail.state.as_str()), ("i-abcd1111", "shutting-down"));
        let Message::Health(h) = round_trip("scheduled-change.json") else { panic!("health") };
        assert_eq!(h.detail.event_type_category, "scheduledChange");
        assert_eq!(h.detail.affected_entities[0].entity_value, "i-12345678");
        assert_eq!(h.detail.start_time.as_deref(), Some("Sat, 05 Jun 2016 15:10:09 GMT"));
        let Message::CapacityReservationInterruption(c) = round_trip("capacity-reservation-interruption.json") else {
            panic!("capacity reservation")
        };
        assert_eq!(c.detail.instance_id, "i-0c2f1e7b95a3d4e61");
        assert_eq!(c.detail.instance_termination_time.as_deref(), Some("2025-11-20T10:02:00Z"));
    }

    #[test]
    fn a_spot_warning_built_for_the_demo_reads_like_the_one_ec2_sends() {
        let Message::SpotInterruption(example) = round_trip("spot-interruption.json") else { panic!("spot") };
        let built = Envelope::spot_warning(
            example.id.clone(),
            &example.account,
            &example.region,
            &example.detail.instance_id,
            jiff::Timestamp::UNIX_EPOCH,
        );
        let body = serde_json::to_string(&built).expect("serialises");
        let Message::SpotInterruption(parsed) = Message::parse(&body).expect("parses") else { panic!("kind") };
        // EC2's own example names the zone in its ARN where the region belongs; ours names the region.
        assert_eq!(parsed.resources, ["arn:aws:ec2:us-east-1:123456789012:instance/i-0b662ef9931388ba0"]);
        assert_eq!(Envelope { resources: example.resources.clone(), ..parsed }, example);
    }

    #[test]
    fn malformed_bodies_and_details_are_errors_naming_the_event() {
        assert!(matches!(Message::parse("not json"), Err(ParseError::Envelope(_))));
        assert!(matches!(Message::parse("{}"), Err(ParseError::Envelope(_))));
        let body = example("spot-interruption.json").replace("\"instance-id\"", "\"instance\"");
        let err = Message::parse(&body).expect_err("detail lacks instance-id");
        assert!(err.to_string().contains("1e5527d7-bb36-4607-3370-4164db56a40e"), "{err}");
        assert!(err.to_string().contains("instance-id"), "{err}");
    }

    #[test]
    fn events_of_other_kinds_are_recognised_as_unknown() {
        let body =
            example("state-change.json").replace("EC2 Instance State-change Notification", "EC2 AMI State Change");
        assert!(
            matches!(Message::parse(&body), Ok(Message::Unknown { detail_type, .. }) if detail_type == "EC2 AMI State Change")
        );
    }
}

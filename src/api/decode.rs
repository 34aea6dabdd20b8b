//! Decoding one stored object into its Rust type, with the path of the first field that does not
//! fit: what a watch skips and reports instead of failing the whole list.

use serde::de::DeserializeOwned;

/// An object that does not decode, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// `spec.template.spec.requirements[0].operator`, or `.` for the whole object.
    pub path: String,
    pub message: String,
}

/// Decodes `value` as a `K`, naming the failing field. Borrowed, so a caller that must keep the
/// document when it does not decode needs no copy.
pub fn decode<K: DeserializeOwned>(value: &serde_json::Value) -> Result<K, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        DecodeError { path, message: e.into_inner().to_string() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodePool;

    #[test]
    fn a_nodepool_with_an_unknown_operator_names_the_requirement_and_the_value() {
        let bad = serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "bad"},
            "spec": {"template": {"spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                "requirements": [{"key": "karpenter.sh/capacity-type", "operator": "Sometimes", "values": ["spot"]}]
            }}}
        });
        let err = decode::<NodePool>(&bad).expect_err("refused");
        assert_eq!(err.path, "spec.template.spec.requirements[0].operator");
        assert!(err.message.contains("Sometimes"), "{err}");
    }
}

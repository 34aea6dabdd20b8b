//! The objects users write: Karpenter v1 NodePool, NodeClaim and EC2NodeClass, the legacy
//! v1alpha5 Provisioner and v1alpha1 AWSNodeTemplate, their conversion, validation and CRDs.

pub mod cel;
pub mod convert;
pub mod crds;
pub mod decode;
pub mod duration;
pub mod ec2nodeclass;
pub mod labels;
pub mod legacy;
pub mod manifest;
pub mod nodeclaim;
pub mod nodepool;
pub mod quantity;
pub mod validation;

#[cfg(test)]
mod tests;

pub use ec2nodeclass::{EC2NodeClass, EC2NodeClassSpec, EC2NodeClassStatus};
pub use nodeclaim::{NodeClaim, NodeClaimSpec, NodeClaimStatus};
pub use nodepool::{NodePool, NodePoolSpec, NodePoolStatus};

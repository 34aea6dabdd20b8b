//! The conformance suite every cloud provider passes: the fake in unit tests, EC2 against moto in
//! the wire tests. Each check panics with what the provider got wrong.

use super::{CloudError, CloudProvider, InstanceState, OfferingKey, parse_provider_id};
use crate::api::nodeclaim::NodeClaim;
use crate::api::nodepool::NodePool;
use crate::scheduling::instance_types::CapacityType;

/// Runs every check. `claim(name, uid)` builds a launchable claim of `pool`.
pub async fn run(cloud: &dyn CloudProvider, pool: &NodePool, claim: &dyn Fn(&str, &str) -> NodeClaim) {
    let types = cloud.instance_types(pool).await.expect("instance_types");
    assert!(!types.is_empty(), "the pool has instance types");
    for it in &types {
        assert!(!it.offerings.is_empty(), "{} has offerings", it.name);
        for o in it.offerings.iter().filter(|o| o.capacity_type == CapacityType::OnDemand) {
            assert!(o.price > 0.0, "{} on-demand in {} has a price", it.name, o.zone);
        }
    }

    let first = claim("suite-a", "00000000-0000-0000-0000-00000000000a");
    let launched = cloud.create(&first).await.expect("create");
    let (zone, id) = parse_provider_id(&launched.provider_id).expect("an aws:/// provider ID");
    assert_eq!((zone, id), (launched.zone.as_str(), launched.id.as_str()));
    assert_eq!(launched.node_claim(), Some("suite-a"), "the instance is tagged with its claim");
    assert_eq!(launched.tags.get(super::TAG_NODEPOOL), pool.metadata.name.as_ref(), "tagged with its pool");
    assert!(types.iter().any(|t| t.name == launched.instance_type), "launched a type the pool offers");
    assert!(launched.price > 0.0, "the instance's price is known");
    assert_ne!(launched.state, InstanceState::Terminated);

    let again = cloud.create(&first).await.expect("create again");
    assert_eq!(again.id, launched.id, "create is idempotent per claim");

    let got = cloud.get(&launched.provider_id).await.expect("get");
    assert_eq!(got.id, launched.id);
    let listed = cloud.list().await.expect("list");
    assert!(listed.iter().any(|i| i.id == launched.id), "list shows the instance");

    // The offering just used is reported as being reclaimed: the next launch of the same shape avoids it.
    let used = OfferingKey {
        instance_type: launched.instance_type.clone(),
        zone: launched.zone.clone(),
        capacity_type: launched.capacity_type,
    };
    cloud.mark_unavailable(std::slice::from_ref(&used), std::time::Duration::from_secs(60));
    // The solver sees the mark through the same cache.
    let mut masked = types.clone();
    cloud.mask_unavailable(&mut masked);
    let offering_of = |types: &[crate::scheduling::instance_types::InstanceType]| {
        types
            .iter()
            .filter(|t| t.name == used.instance_type)
            .flat_map(|t| &t.offerings)
            .find(|o| o.zone == used.zone && o.capacity_type == used.capacity_type)
            .map(|o| o.available)
    };
    assert_eq!(offering_of(&masked), Some(false), "a marked offering is masked unavailable for the solver");
    let others_before = types.iter().flat_map(|t| &t.offerings).filter(|o| !o.available).count();
    let others_after = masked.iter().flat_map(|t| &t.offerings).filter(|o| !o.available).count();
    assert_eq!(others_after, others_before + 1, "masking touches only the marked offering");
    let second = cloud.create(&claim("suite-b", "00000000-0000-0000-0000-00000000000b")).await.expect("create b");
    assert_ne!(second.id, launched.id, "another claim gets another instance");
    let second_offering = OfferingKey {
        instance_type: second.instance_type.clone(),
        zone: second.zone.clone(),
        capacity_type: second.capacity_type,
    };
    assert_ne!(second_offering, used, "an offering marked unavailable is not launched");

    let mut launched_claim = first.clone();
    launched_claim.status.get_or_insert_with(Default::default).provider_id = Some(launched.provider_id.clone());
    cloud.delete(&launched_claim).await.expect("delete");
    assert!(
        matches!(cloud.delete(&launched_claim).await, Err(CloudError::NotFound { .. })),
        "a second delete reports NotFound"
    );
    let listed = cloud.list().await.expect("list after delete");
    assert!(
        listed.iter().all(|i| i.id != launched.id || i.state >= InstanceState::ShuttingDown),
        "a deleted instance is not listed as live"
    );
    assert!(listed.iter().any(|i| i.id == second.id), "the other instance lives on");

    let missing = "aws:///us-east-1a/i-0000000000000dead";
    assert!(matches!(cloud.get(missing).await, Err(CloudError::NotFound { .. })), "get of an unknown instance");
}

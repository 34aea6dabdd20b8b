//! What one launch asks EC2 for: the capacity type, the (type × zonal subnet) overrides cheapest
//! first, the launch template's name; and what EC2's fleet errors mean.

use std::collections::{BTreeMap, HashSet};

use rafter::api::ec2nodeclass::ResolvedSubnet;
use rafter::api::labels;
use rafter::cloud::OfferingKey;
use rafter::mix::fnv1a;
use rafter::scheduling::instance_types::{CapacityType, InstanceType};
use rafter::scheduling::requirements::Requirements;

/// EC2 takes at most this many overrides per fleet request.
pub const MAX_OVERRIDES: usize = 60;

/// One (type, subnet) a fleet may launch in.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub instance_type: String,
    pub zone: String,
    pub subnet_id: String,
    pub price: f64,
    /// `amd64` or `arm64`: which launch template (image) it takes.
    pub arch: String,
}

/// Why nothing can be launched for a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectError {
    /// Types match, but every offering is in the unavailable cache.
    Exhausted(Vec<OfferingKey>),
    /// Nothing the claim asks for exists in the node class's zones and images.
    NoMatch,
}

/// Picks the capacity type (reserved > spot > on-demand, as the claim allows and offerings remain)
/// and the cheapest overrides for it, at most [`MAX_OVERRIDES`].
pub fn select(
    types: &[InstanceType],
    claim: &Requirements,
    subnets: &[ResolvedSubnet],
    arches: &HashSet<String>,
    unavailable: &dyn Fn(&OfferingKey) -> bool,
    bad_subnets: &HashSet<String>,
) -> Result<(CapacityType, Vec<Candidate>), SelectError> {
    let zone_req = claim.get(labels::ZONE);
    let ct_req = claim.get(labels::CAPACITY_TYPE);
    let mut by_zone: BTreeMap<&str, Vec<&ResolvedSubnet>> = BTreeMap::new();
    for s in subnets.iter().filter(|s| !bad_subnets.contains(&s.id)) {
        by_zone.entry(s.zone.as_str()).or_default().push(s);
    }
    let mut exhausted = Vec::new();
    let mut offers: Vec<(CapacityType, Candidate)> = Vec::new();
    for it in types {
        if claim.compatible_with(&it.requirements, |_| true).is_err() {
            continue;
        }
        let Some(arch) = it.requirements.get(labels::ARCH).and_then(|r| r.single_value()) else { continue };
        if !arches.contains(arch) {
            continue;
        }
        for o in &it.offerings {
            if zone_req.is_some_and(|r| !r.allows(Some(&o.zone)))
                || ct_req.is_some_and(|r| !r.allows(Some(o.capacity_type.as_str())))
            {
                continue;
            }
            let Some(zone_subnets) = by_zone.get(o.zone.as_str()) else { continue };
            let key =
                OfferingKey { instance_type: it.name.clone(), zone: o.zone.clone(), capacity_type: o.capacity_type };
            if !o.available || unavailable(&key) {
                exhausted.push(key);
                continue;
            }
            // One subnet per zone: the first, in ID order (EC2 spreads within the zone itself).
            offers.push((
                o.capacity_type,
                Candidate {
                    instance_type: it.name.clone(),
                    zone: o.zone.clone(),
                    subnet_id: zone_subnets[0].id.clone(),
                    price: o.price,
                    arch: arch.to_string(),
                },
            ));
        }
    }
    let rank = |ct: CapacityType| match ct {
        CapacityType::Reserved => 0,
        CapacityType::Spot => 1,
        CapacityType::OnDemand => 2,
    };
    let Some(chosen) = offers.iter().map(|(ct, _)| *ct).min_by_key(|ct| rank(*ct)) else {
        return Err(if exhausted.is_empty() { SelectError::NoMatch } else { SelectError::Exhausted(exhausted) });
    };
    let mut candidates: Vec<Candidate> = offers.into_iter().filter(|(ct, _)| *ct == chosen).map(|(_, c)| c).collect();
    candidates.sort_by(|a, b| {
        a.price
            .total_cmp(&b.price)
            .then_with(|| a.instance_type.cmp(&b.instance_type))
            .then_with(|| a.zone.cmp(&b.zone))
    });
    candidates.truncate(MAX_OVERRIDES);
    Ok((chosen, candidates))
}

/// The launch template's name: one per distinct configuration, shared by every replica.
pub fn template_name(cluster: &str, fingerprint: &str) -> String {
    format!("rafter/{cluster}/{:016x}", fnv1a(fingerprint))
}

/// What a fleet error code means for Rafter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetErrorKind {
    /// The offering has no capacity now: avoid it for a while, try the rest.
    Capacity,
    /// The subnet is out of addresses: avoid it for a while.
    SubnetFull,
    /// The node class or account is misconfigured: stop launching for it until fixed.
    Configuration,
    /// Anything else: retry.
    Other,
}

pub fn classify_fleet_error(code: &str) -> FleetErrorKind {
    match code {
        "InsufficientInstanceCapacity"
        | "MaxSpotInstanceCountExceeded"
        | "VcpuLimitExceeded"
        | "UnfulfillableCapacity"
        | "Unsupported"
        | "InsufficientCapacity"
        | "SpotMaxPriceTooLow" => FleetErrorKind::Capacity,
        "InsufficientFreeAddressesInSubnet" => FleetErrorKind::SubnetFull,
        c if is_configuration_error(c) => FleetErrorKind::Configuration,
        _ => FleetErrorKind::Other,
    }
}

/// Authorization and configuration error codes: retrying cannot help.
pub fn is_configuration_error(code: &str) -> bool {
    code.starts_with("Unauthorized")
        || code.starts_with("AuthFailure")
        || code.starts_with("AccessDenied")
        || code.starts_with("InvalidParameter")
        || code.starts_with("InvalidAMIID")
        || code.starts_with("InvalidSubnetID")
        || code.starts_with("InvalidGroup")
        || code.starts_with("InvalidLaunchTemplate")
        || code.starts_with("InvalidIamInstanceProfile")
        || code.starts_with("InvalidBlockDeviceMapping")
        || code == "OptInRequired"
        || code == "Blocked"
        || code == "InvalidKeyPair.NotFound"
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafter::api::nodeclaim::{NodeSelectorRequirementWithMinValues, Operator};
    use rafter::scheduling::catalog;
    use rafter::scheduling::instance_types::KubeletSettings;

    fn types() -> Vec<InstanceType> {
        let specs = catalog::us_east_1().unwrap();
        specs
            .iter()
            .filter(|s| ["m5.large", "m5.xlarge", "m6g.large"].contains(&s.name.as_str()))
            .map(|s| {
                InstanceType::new(s, &KubeletSettings::default(), |z| Some(if z == "us-east-1a" { 0.03 } else { 0.04 }))
            })
            .collect()
    }

    fn subnets() -> Vec<ResolvedSubnet> {
        ["a", "b"]
            .iter()
            .map(|z| ResolvedSubnet { id: format!("subnet-{z}"), zone: format!("us-east-1{z}"), zone_id: None })
            .collect()
    }

    fn reqs(list: &[(&str, &[&str])]) -> Requirements {
        let api: Vec<_> = list
            .iter()
            .map(|(k, v)| NodeSelectorRequirementWithMinValues {
                key: k.to_string(),
                operator: Operator::In,
                values: v.iter().map(|s| s.to_string()).collect(),
                min_values: None,
            })
            .collect();
        Requirements::from_api(&api).unwrap()
    }

    #[test]
    fn spot_is_preferred_and_overrides_are_cheapest_first_in_subnet_zones_with_an_image() {
        let arches = HashSet::from(["amd64".to_string()]);
        let claim = reqs(&[(labels::CAPACITY_TYPE, &["spot", "on-demand"])]);
        let (ct, c) = select(&types(), &claim, &subnets(), &arches, &|_| false, &HashSet::new()).unwrap();
        assert_eq!(ct, CapacityType::Spot);
        assert!(c.iter().all(|c| c.arch == "amd64" && c.zone != "us-east-1c"), "{c:?}");
        assert_eq!((c[0].zone.as_str(), c[0].subnet_id.as_str()), ("us-east-1a", "subnet-a"));
        assert!(c.windows(2).all(|w| w[0].price <= w[1].price));
    }

    #[test]
    fn exhausted_offerings_are_skipped_and_when_all_are_exhausted_they_are_named() {
        let arches = HashSet::from(["amd64".to_string()]);
        let claim = reqs(&[(labels::CAPACITY_TYPE, &["spot"]), (labels::INSTANCE_TYPE, &["m5.large"])]);
        let cheapest = OfferingKey {
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
        };
        let (_, c) = select(&types(), &claim, &subnets(), &arches, &|k| *k == cheapest, &HashSet::new()).unwrap();
        assert_eq!((c[0].instance_type.as_str(), c[0].zone.as_str()), ("m5.large", "us-east-1b"));
        let err = select(&types(), &claim, &subnets(), &arches, &|_| true, &HashSet::new()).unwrap_err();
        assert!(matches!(err, SelectError::Exhausted(ref k) if k.len() == 2), "{err:?}");
        let bad = HashSet::from(["subnet-a".to_string(), "subnet-b".to_string()]);
        assert_eq!(select(&types(), &claim, &subnets(), &arches, &|_| false, &bad), Err(SelectError::NoMatch));
    }

    #[test]
    fn fleet_error_codes_are_sorted_into_capacity_subnet_configuration_and_other() {
        assert_eq!(classify_fleet_error("InsufficientInstanceCapacity"), FleetErrorKind::Capacity);
        assert_eq!(classify_fleet_error("VcpuLimitExceeded"), FleetErrorKind::Capacity);
        assert_eq!(classify_fleet_error("InsufficientFreeAddressesInSubnet"), FleetErrorKind::SubnetFull);
        assert_eq!(classify_fleet_error("UnauthorizedOperation"), FleetErrorKind::Configuration);
        assert_eq!(classify_fleet_error("InvalidLaunchTemplateName.NotFoundException"), FleetErrorKind::Configuration);
        assert_eq!(classify_fleet_error("InternalError"), FleetErrorKind::Other);
    }
}

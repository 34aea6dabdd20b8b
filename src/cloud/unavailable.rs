//! The unavailable-offerings cache: offerings the cloud recently had no capacity for, or that a
//! spot interruption is taking back, avoided until a deadline. One type for every holder (the EC2
//! provider, the in-memory cloud); the solver sees it through `CloudProvider::mask_unavailable`.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use super::OfferingKey;
use crate::scheduling::instance_types::InstanceType;

/// Offerings to avoid, each until when. Not synchronized: its holder keeps it under its own lock.
#[derive(Debug, Clone, Default)]
pub struct UnavailableOfferings {
    until: HashMap<OfferingKey, Instant>,
}

impl UnavailableOfferings {
    /// Avoids these offerings until `until`; a mark never shortens one already there.
    pub fn mark(&mut self, keys: &[OfferingKey], until: Instant) {
        for key in keys {
            let at = self.until.entry(key.clone()).or_insert(until);
            *at = (*at).max(until);
        }
    }

    /// Whether the offering is avoided at `now`.
    pub fn contains(&self, key: &OfferingKey, now: Instant) -> bool {
        self.until.get(key).is_some_and(|until| *until > now)
    }

    /// Sets `available = false` on the offerings of `types` avoided at `now`. It runs on every
    /// solve, over every offering of every type, so it walks the few marks rather than building a
    /// key per offering.
    pub fn mask(&self, types: &mut [InstanceType], now: Instant) {
        for key in self.until.iter().filter(|(_, until)| **until > now).map(|(key, _)| key) {
            for it in types.iter_mut().filter(|t| t.name == key.instance_type) {
                for offering in &mut it.offerings {
                    if offering.zone == key.zone && offering.capacity_type == key.capacity_type {
                        offering.available = false;
                    }
                }
            }
        }
    }

    /// Forgets marks that have run out at `now`.
    pub fn expire(&mut self, now: Instant) {
        self.until.retain(|_, until| *until > now);
    }

    /// The offerings avoided at `now`.
    pub fn active(&self, now: Instant) -> HashSet<OfferingKey> {
        self.until.iter().filter(|(_, until)| **until > now).map(|(k, _)| k.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::instance_types::CapacityType;
    use std::time::Duration;

    fn key(zone: &str) -> OfferingKey {
        OfferingKey { instance_type: "m5.large".into(), zone: zone.into(), capacity_type: CapacityType::Spot }
    }

    #[test]
    fn a_mark_lasts_until_its_deadline_and_a_shorter_mark_does_not_cut_it() {
        let t0 = Instant::now();
        let mut cache = UnavailableOfferings::default();
        cache.mark(&[key("us-east-1a")], t0 + Duration::from_secs(180));
        cache.mark(&[key("us-east-1a")], t0 + Duration::from_secs(10));
        assert!(cache.contains(&key("us-east-1a"), t0 + Duration::from_secs(179)));
        assert!(!cache.contains(&key("us-east-1a"), t0 + Duration::from_secs(180)));
        assert!(!cache.contains(&key("us-east-1b"), t0));
        assert_eq!(cache.active(t0), [key("us-east-1a")].into());
        cache.expire(t0 + Duration::from_secs(181));
        assert!(cache.active(t0).is_empty(), "an expired mark is forgotten");
    }

    #[test]
    fn masking_marks_only_the_avoided_offerings_unavailable() {
        let t0 = Instant::now();
        let specs = crate::scheduling::catalog::us_east_1().expect("catalog");
        let spec = specs.iter().find(|s| s.name == "m5.large").expect("m5.large");
        let kubelet = crate::scheduling::instance_types::KubeletSettings::default();
        let mut types = vec![InstanceType::new(spec, &kubelet, |_| Some(0.04))];
        assert!(types[0].offerings.iter().any(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot));
        assert!(types[0].offerings.iter().all(|o| o.available), "the catalog offers every offering");
        let mut cache = UnavailableOfferings::default();
        cache.mark(&[key("us-east-1a")], t0 + Duration::from_secs(60));
        cache.mask(&mut types, t0);
        for o in &types[0].offerings {
            let avoided = o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot;
            assert_eq!(o.available, !avoided, "{} {:?}", o.zone, o.capacity_type);
        }
    }
}

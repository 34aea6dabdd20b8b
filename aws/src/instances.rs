//! Reading and ending instances: DescribeInstances by claim tag or id (coalesced, live states
//! only), and TerminateInstances, each turning EC2's instance into the core's `Instance`.

use super::*;

impl Inner {
    pub(crate) fn to_instance(&self, i: &aws_sdk_ec2::types::Instance, price: Option<f64>) -> Option<Instance> {
        let id = i.instance_id()?.to_string();
        let zone = i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string();
        let tags: BTreeMap<String, String> =
            i.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect();
        let capacity_type = if i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
            CapacityType::Spot
        } else if i.capacity_reservation_id().is_some() {
            CapacityType::Reserved
        } else {
            CapacityType::OnDemand
        };
        let instance_type = i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default();
        let price = price.unwrap_or_else(|| {
            let s = self.lock();
            match capacity_type {
                CapacityType::Spot => {
                    s.spot.as_ref().and_then(|(_, m)| m.get(&(instance_type.clone(), zone.clone())).copied())
                }
                CapacityType::OnDemand => s.on_demand.as_ref().and_then(|(_, m)| m.get(&instance_type).copied()),
                CapacityType::Reserved => Some(0.0),
            }
            .unwrap_or(0.0)
        });
        Some(Instance {
            provider_id: format!("aws:///{zone}/{id}"),
            id,
            instance_type,
            zone,
            capacity_type,
            state: state_of(i.state().and_then(|s| s.name())),
            price,
            private_dns_name: i.private_dns_name().unwrap_or_default().to_string(),
            private_ip: i.private_ip_address().unwrap_or_default().to_string(),
            tags,
            launch_time: i
                .launch_time()
                .and_then(|t| t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime).ok())
                .unwrap_or_default(),
        })
    }

    pub(crate) async fn describe(
        &self,
        ids: Vec<String>,
        filters: Vec<Filter>,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, AwsError> {
        let mut req = self.clients.ec2.describe_instances();
        if !ids.is_empty() {
            req = req.set_instance_ids(Some(ids));
        }
        if !filters.is_empty() {
            req = req.set_filters(Some(filters));
        }
        let reservations: Vec<_> = req
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| AwsError::sdk("DescribeInstances", e))?;
        Ok(reservations.into_iter().flat_map(|r| r.instances.unwrap_or_default()).collect())
    }

    pub(crate) fn live_filters(&self) -> Vec<Filter> {
        vec![
            Filter::builder().name("tag-key").values(self.config.cluster_tag()).build(),
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped", "shutting-down"].map(String::from).to_vec(),
                ))
                .build(),
        ]
    }

    pub(crate) async fn run_lookup(&self, names: Vec<String>) -> Vec<Result<Option<Instance>, CloudError>> {
        let mut filters = self.live_filters();
        filters.push(Filter::builder().name(format!("tag:{TAG_NODECLAIM}")).set_values(Some(names.clone())).build());
        match self.describe(Vec::new(), filters).await {
            Ok(found) => {
                let mut by_claim: HashMap<String, Instance> = HashMap::new();
                for i in &found {
                    if let Some(inst) = self.to_instance(i, None)
                        && inst.state != InstanceState::ShuttingDown
                        && let Some(claim) = inst.node_claim()
                    {
                        by_claim.insert(claim.to_string(), inst);
                    }
                }
                names.iter().map(|n| Ok(by_claim.get(n).cloned())).collect()
            }
            Err(e) => names.iter().map(|_| Err(e.to_cloud())).collect(),
        }
    }

    pub(crate) async fn run_get(&self, ids: Vec<String>) -> Vec<Result<Instance, CloudError>> {
        let found = self.describe(ids.clone(), Vec::new()).await;
        let one_missing = matches!(&found, Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")));
        if one_missing && ids.len() > 1 {
            // One unknown id fails the whole call: fall back to one call per id.
            let mut results = Vec::new();
            for id in ids {
                results.extend(Box::pin(self.run_get(vec![id])).await);
            }
            return results;
        }
        let by_id: HashMap<String, Instance> = match found {
            Ok(found) => found.iter().filter_map(|i| self.to_instance(i, None)).map(|i| (i.id.clone(), i)).collect(),
            Err(_) if one_missing => HashMap::new(),
            Err(e) => return ids.iter().map(|_| Err(e.to_cloud())).collect(),
        };
        ids.iter().map(|id| by_id.get(id).cloned().ok_or_else(|| CloudError::NotFound { id: id.clone() })).collect()
    }

    pub(crate) async fn run_terminate(&self, ids: Vec<String>) -> Vec<Result<(), CloudError>> {
        let out = self.clients.ec2.terminate_instances().set_instance_ids(Some(ids.clone())).send().await;
        match out {
            Ok(out) => {
                let gone: HashMap<&str, bool> = out
                    .terminating_instances()
                    .iter()
                    .filter_map(|t| {
                        let prev = t.previous_state().and_then(|s| s.name()).map(|n| n.as_str());
                        Some((t.instance_id()?, matches!(prev, Some("shutting-down") | Some("terminated"))))
                    })
                    .collect();
                ids.iter()
                    .map(|id| match gone.get(id.as_str()) {
                        Some(false) => Ok(()),
                        _ => Err(CloudError::NotFound { id: id.clone() }),
                    })
                    .collect()
            }
            Err(e) => {
                let err = AwsError::sdk("TerminateInstances", e);
                let missing = err.code().is_some_and(|c| c.starts_with("InvalidInstanceID"));
                if missing && ids.len() == 1 {
                    return vec![Err(CloudError::NotFound { id: ids[0].clone() })];
                }
                if missing {
                    // One unknown id fails the whole call: fall back to one call per id.
                    let mut results = Vec::new();
                    for id in ids {
                        results.extend(Box::pin(self.run_terminate(vec![id])).await);
                    }
                    return results;
                }
                ids.iter().map(|_| Err(err.to_cloud())).collect()
            }
        }
    }
}

pub(crate) fn state_of(name: Option<&aws_sdk_ec2::types::InstanceStateName>) -> InstanceState {
    match name.map(|n| n.as_str()) {
        Some("running") => InstanceState::Running,
        Some("shutting-down") | Some("stopping") | Some("stopped") => InstanceState::ShuttingDown,
        Some("terminated") => InstanceState::Terminated,
        _ => InstanceState::Pending,
    }
}

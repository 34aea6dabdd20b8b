//! CreateFleet: one call per fleet shape (claims of one launch group with equal requirements), its
//! capacity errors recorded in the unavailable-offerings cache, the claim tags written per
//! instance, the launch group's lock held throughout, and adoption of a group's untagged instance
//! by a claim whose own was never tagged.

use super::*;

impl Inner {
    pub(crate) async fn run_fleet(
        &self,
        shape: FleetShape,
        reqs: Vec<FleetRequest>,
    ) -> Vec<Result<Instance, CloudError>> {
        let lock = self.group_lock(&shape.group);
        let _launching = lock.read().await;
        let n = reqs.len();
        let mut configs: BTreeMap<&str, Vec<FleetLaunchTemplateOverridesRequest>> = BTreeMap::new();
        for (priority, (template, instance_type, subnet, _)) in shape.overrides.iter().enumerate() {
            configs.entry(template.as_str()).or_default().push(
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type.as_str()))
                    .subnet_id(subnet)
                    .priority(priority as f64)
                    .build(),
            );
        }
        let (default_type, token_base) = match shape.capacity_type {
            CapacityType::Spot => (DefaultTargetCapacityType::Spot, "spot"),
            CapacityType::OnDemand => (DefaultTargetCapacityType::OnDemand, "on-demand"),
            CapacityType::Reserved => (DefaultTargetCapacityType::OnDemand, "reserved"),
        };
        let target = TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(n as i32)
            .default_target_capacity_type(default_type)
            .build();
        let mut tags = shape.tags.clone();
        if n == 1 {
            let pool = tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
            tags.extend(claim_tags(&pool, &reqs[0].name));
        }
        // Idempotency per claim set: a retried call for the same claims is the same request to EC2.
        let token = if n == 1 {
            reqs[0].uid.clone()
        } else {
            let mut uids: Vec<&str> = reqs.iter().map(|r| r.uid.as_str()).collect();
            uids.sort_unstable();
            format!("{token_base}-{:016x}", fnv1a(&uids.join(",")))
        };
        let mut request = self
            .clients
            .ec2
            .create_fleet()
            .r#type(FleetType::Instant)
            .target_capacity_specification(target)
            .client_token(token)
            .tag_specifications(tag_spec(ResourceType::Instance, &tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &tags));
        for (template, overrides) in configs {
            request = request.launch_template_configs(
                FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name(template)
                            .version("$Latest")
                            .build(),
                    )
                    .set_overrides(Some(overrides))
                    .build(),
            );
        }
        request = match shape.capacity_type {
            CapacityType::Spot => request.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            ),
            _ => request.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            ),
        };
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                let err = AwsError::sdk("CreateFleet", e);
                if err.code().is_some_and(launch::is_configuration_error) {
                    self.block_by_name(&shape.class, &err.to_string());
                }
                return reqs.iter().map(|_| Err(err.to_cloud())).collect();
            }
        };
        let zone_of: HashMap<&str, &str> =
            shape.overrides.iter().map(|(_, _, subnet, zone)| (subnet.as_str(), zone.as_str())).collect();
        let mut exhausted = Vec::new();
        let mut config_error = None;
        let until = Instant::now() + self.config.unavailable_ttl;
        for e in out.errors() {
            let code = e.error_code().unwrap_or_default();
            let overrides = e.launch_template_and_overrides().and_then(|l| l.overrides());
            let instance_type = overrides.and_then(|o| o.instance_type()).map(|t| t.as_str().to_string());
            let subnet = overrides.and_then(|o| o.subnet_id()).map(str::to_string);
            let zone = overrides
                .and_then(|o| o.availability_zone().map(str::to_string))
                .or_else(|| subnet.as_deref().and_then(|s| zone_of.get(s)).map(|z| z.to_string()));
            match launch::classify_fleet_error(code) {
                FleetErrorKind::Capacity => {
                    if let (Some(instance_type), Some(zone)) = (instance_type, zone) {
                        let key = OfferingKey { instance_type, zone, capacity_type: shape.capacity_type };
                        self.lock().unavailable.mark(std::slice::from_ref(&key), until);
                        exhausted.push(key);
                    }
                }
                FleetErrorKind::SubnetFull => {
                    if let Some(subnet) = subnet {
                        self.lock().bad_subnets.insert(subnet, until);
                    }
                }
                FleetErrorKind::Configuration => {
                    config_error = Some(format!("CreateFleet: {code}: {}", e.error_message().unwrap_or_default()));
                }
                FleetErrorKind::Other => {
                    tracing::warn!(code, message = e.error_message().unwrap_or_default(), "fleet error");
                }
            }
        }
        if let Some(why) = &config_error {
            self.block_by_name(&shape.class, why);
        }
        let ids: Vec<String> = out.instances().iter().flat_map(|i| i.instance_ids().iter().cloned()).take(n).collect();
        let price_of: HashMap<(String, String), f64> = shape
            .overrides
            .iter()
            .zip(&shape.prices)
            .map(|((_, t, _, z), p)| ((t.clone(), z.clone()), *p as f64 / 1e6))
            .collect();
        // Claim tags for merged fleets: one CreateTags per instance, in parallel.
        if n > 1 {
            let pool = shape.tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
            let tagging = ids.iter().zip(&reqs).map(|(id, req)| {
                let tags = claim_tags(&pool, &req.name);
                self.clients
                    .ec2
                    .create_tags()
                    .resources(id)
                    .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
                    .send()
            });
            for result in futures::future::join_all(tagging).await {
                if let Err(e) = result {
                    tracing::warn!(error = %AwsError::sdk("CreateTags", e), "cannot tag a launched instance with its claim; garbage collection will reclaim it");
                }
            }
        }
        let described = if ids.is_empty() {
            Vec::new()
        } else {
            match self.describe(ids.clone(), Vec::new()).await {
                Ok(d) => d,
                Err(e) => return reqs.iter().map(|_| Err(e.to_cloud())).collect(),
            }
        };
        let by_id: HashMap<String, Instance> = described
            .iter()
            .filter_map(|i| {
                let it = i.instance_type()?.as_str().to_string();
                let zone = i.placement()?.availability_zone()?.to_string();
                let inst = self.to_instance(i, price_of.get(&(it, zone)).copied())?;
                Some((inst.id.clone(), inst))
            })
            .collect();
        let all_offerings: Vec<OfferingKey> = shape
            .overrides
            .iter()
            .map(|(_, t, _, z)| OfferingKey {
                instance_type: t.clone(),
                zone: z.clone(),
                capacity_type: shape.capacity_type,
            })
            .collect();
        (0..n)
            .map(|i| match ids.get(i).and_then(|id| by_id.get(id)) {
                Some(inst) => {
                    let mut inst = inst.clone();
                    if n > 1 {
                        let pool = shape.tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
                        inst.tags.extend(claim_tags(&pool, &reqs[i].name));
                    }
                    Ok(inst)
                }
                None => Err(match &config_error {
                    Some(why) => CloudError::InvalidConfiguration { message: why.clone() },
                    None if exhausted.is_empty() => {
                        CloudError::InsufficientCapacity { offerings: all_offerings.clone() }
                    }
                    None => CloudError::InsufficientCapacity { offerings: exhausted.clone() },
                }),
            })
            .collect()
    }

    /// The launch-lock of a group (locks no one holds any more are dropped).
    pub(crate) fn group_lock(&self, group: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = self.launching.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|g, l| g == group || Arc::strong_count(l) > 1);
        locks.entry(group.to_string()).or_default().clone()
    }

    /// Takes over an instance of the claim's launch group that no claim is tagged on (its launch
    /// outlived the leader that made it) and that fits the claim: tagged with the claim, it is
    /// the claim's instance from now on. Instances are taken lowest id first, one adoption at a
    /// time, so two claims never share one.
    pub(crate) async fn adopt(&self, claim: &NodeClaim, group: &str) -> Result<Option<Instance>, CloudError> {
        let _one = self.adopting.lock().await;
        let lock = self.group_lock(group);
        let Ok(_alone) = lock.try_write() else { return Ok(None) };
        let mut filters = self.live_filters();
        filters.push(Filter::builder().name(format!("tag:{LAUNCH_GROUP}")).values(group).build());
        let found = self.describe(Vec::new(), filters).await.map_err(|e| e.to_cloud())?;
        let Ok(requirements) = Requirements::from_api(&claim.spec.template.requirements) else { return Ok(None) };
        let fits = |i: &Instance| {
            [
                (labels::INSTANCE_TYPE, i.instance_type.as_str()),
                (labels::ZONE, i.zone.as_str()),
                (labels::CAPACITY_TYPE, i.capacity_type.as_str()),
            ]
            .iter()
            .all(|(key, value)| requirements.get(key).is_none_or(|r| r.allows(Some(value))))
        };
        let mut orphans: Vec<Instance> = found
            .iter()
            .filter_map(|i| self.to_instance(i, None))
            .filter(|i| {
                matches!(i.state, InstanceState::Pending | InstanceState::Running)
                    && i.node_claim().is_none()
                    && fits(i)
            })
            .collect();
        orphans.sort_by(|a, b| a.id.cmp(&b.id));
        let Some(mut chosen) = orphans.into_iter().next() else { return Ok(None) };
        let name = claim.name_any();
        let pool = chosen.tags.get(TAG_NODEPOOL).cloned().unwrap_or_default();
        let tags = claim_tags(&pool, &name);
        self.clients
            .ec2
            .create_tags()
            .resources(&chosen.id)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
            .send()
            .await
            .map_err(|e| AwsError::sdk("CreateTags", e).to_cloud())?;
        tracing::info!(
            nodeclaim = %name,
            instance = %chosen.id,
            "adopted an instance of the claim's launch group that an earlier launch left without its claim tag"
        );
        chosen.tags.extend(tags);
        Ok(Some(chosen))
    }
}

//! Launch templates: one per node class, AMI, architecture and kubelet configuration, named by a
//! hash of what it holds so a changed class gets a new one, with the class's disks, metadata options,
//! network, tags and user data.

use super::*;

impl AwsCloud {
    pub(crate) async fn ensure_template(
        &self,
        class: &EC2NodeClass,
        resolved: &Resolved,
        arch: &str,
        claim: &NodeClaim,
        max_pods: Option<i64>,
    ) -> Result<String, CloudError> {
        let ami = resolved.amis.iter().find(|a| a.arch == arch).ok_or_else(|| CloudError::InvalidConfiguration {
            message: format!("no {arch} image resolved for the node class"),
        })?;
        let spec = &class.spec;
        let config = &self.inner.config;
        let bootstrap = Bootstrap {
            cluster_name: config.cluster.clone(),
            cluster_endpoint: config.cluster_endpoint.clone(),
            cluster_ca: config.cluster_ca.clone(),
            cluster_cidr: config.cluster_cidr.clone(),
            labels: claim.metadata.labels.clone().unwrap_or_default(),
            taints: claim.spec.template.taints.iter().chain(&claim.spec.template.startup_taints).cloned().collect(),
            max_pods,
            cluster_dns: spec.kubelet.as_ref().map(|k| k.cluster_dns.clone()).unwrap_or_default(),
        };
        let user_data = userdata::render(resolved.family, &bootstrap, spec.user_data.as_deref())
            .map_err(|e| CloudError::InvalidConfiguration { message: e.to_string() })?;
        let metadata = spec.metadata_options.clone().unwrap_or_default();
        let groups: Vec<String> = resolved.security_groups.iter().map(|g| g.id.clone()).collect();
        let fingerprint = serde_json::json!({
            "ami": ami.id, "userData": user_data, "groups": groups, "profile": resolved.instance_profile.as_deref().unwrap_or_default(),
            "metadata": spec.metadata_options, "disks": spec.block_device_mappings, "tags": spec.tags,
            "monitoring": spec.detailed_monitoring, "publicIP": spec.associate_public_ip_address,
        })
        .to_string();
        let name = launch::template_name(&config.cluster, &fingerprint);
        if self.inner.lock().templates.contains(&name) {
            return Ok(name);
        }
        // A burst of claims needs the template once: the others wait for it and reuse it.
        let _guard = self.inner.refreshing.lock().await;
        if self.inner.lock().templates.contains(&name) {
            return Ok(name);
        }
        use aws_sdk_ec2::types::{
            LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
            LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
            LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
            LaunchTemplateInstanceMetadataProtocolIpv6, LaunchTemplateInstanceNetworkInterfaceSpecificationRequest,
            LaunchTemplatesMonitoringRequest, RequestLaunchTemplateData, VolumeType,
        };
        let tokens = match metadata.http_tokens.unwrap_or(HttpTokens::Required) {
            HttpTokens::Required => LaunchTemplateHttpTokensState::Required,
            HttpTokens::Optional => LaunchTemplateHttpTokensState::Optional,
        };
        let endpoint = match metadata.http_endpoint.unwrap_or(Toggle::Enabled) {
            Toggle::Enabled => LaunchTemplateInstanceMetadataEndpointState::Enabled,
            Toggle::Disabled => LaunchTemplateInstanceMetadataEndpointState::Disabled,
        };
        let ipv6 = match metadata.http_protocol_ipv6.unwrap_or(Toggle::Disabled) {
            Toggle::Enabled => LaunchTemplateInstanceMetadataProtocolIpv6::Enabled,
            Toggle::Disabled => LaunchTemplateInstanceMetadataProtocolIpv6::Disabled,
        };
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&ami.id)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(resolved.instance_profile.as_deref().unwrap_or_default())
                    .build(),
            )
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(tokens)
                    .http_endpoint(endpoint)
                    .http_protocol_ipv6(ipv6)
                    .http_put_response_hop_limit(metadata.http_put_response_hop_limit.unwrap_or(1) as i32)
                    .build(),
            )
            .monitoring(
                LaunchTemplatesMonitoringRequest::builder().enabled(spec.detailed_monitoring.unwrap_or(false)).build(),
            );
        if let Some(public) = spec.associate_public_ip_address {
            data = data.network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(public)
                    .set_groups(Some(groups.clone()))
                    .build(),
            );
        } else {
            data = data.set_security_group_ids(Some(groups.clone()));
        }
        let disks = if spec.block_device_mappings.is_empty() {
            default_disks(resolved.family)
        } else {
            spec.block_device_mappings.clone()
        };
        for d in &disks {
            let Some(ebs) = &d.ebs else { continue };
            let size_gib = ebs
                .volume_size
                .as_ref()
                .and_then(|q| q.whole_units().ok())
                .map(|bytes| ((bytes + (1 << 30) - 1) >> 30) as i32);
            data = data.block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .set_device_name(d.device_name.clone())
                    .ebs(
                        LaunchTemplateEbsBlockDeviceRequest::builder()
                            .set_volume_size(size_gib)
                            .set_volume_type(ebs.volume_type.map(|v| {
                                VolumeType::from(
                                    serde_json::to_value(v)
                                        .ok()
                                        .and_then(|v| v.as_str().map(str::to_string))
                                        .unwrap_or_default()
                                        .as_str(),
                                )
                            }))
                            .set_encrypted(ebs.encrypted)
                            .set_delete_on_termination(ebs.delete_on_termination.or(Some(true)))
                            .set_iops(ebs.iops.map(|v| v as i32))
                            .set_throughput(ebs.throughput.map(|v| v as i32))
                            .set_kms_key_id(ebs.kms_key_id.clone())
                            .set_snapshot_id(ebs.snapshot_id.clone())
                            .build(),
                    )
                    .build(),
            );
        }
        let mut tags = common_tags(config, class, "");
        tags.remove(TAG_NODEPOOL);
        let request = self
            .inner
            .clients
            .ec2
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(data.build())
            .tag_specifications(tag_spec(ResourceType::LaunchTemplate, &tags));
        match request.send().await {
            Ok(_) => {}
            Err(e) if AwsError::code_of(&e).is_some_and(|c| c.contains("AlreadyExists")) => {}
            Err(e) => {
                let err = AwsError::sdk("CreateLaunchTemplate", e);
                if err.code().is_some_and(launch::is_configuration_error) {
                    self.inner.block_by_name(class.metadata.name.as_deref().unwrap_or_default(), &err.to_string());
                }
                return Err(err.to_cloud());
            }
        }
        self.inner.lock().templates.insert(name.clone());
        Ok(name)
    }
}

pub(crate) fn default_disks(family: AmiFamily) -> Vec<rafter::api::ec2nodeclass::BlockDeviceMapping> {
    use rafter::api::ec2nodeclass::{BlockDevice, BlockDeviceMapping, VolumeType};
    use rafter::api::quantity::Quantity;
    let disk = |device: &str, gib: u32| BlockDeviceMapping {
        device_name: Some(device.into()),
        ebs: Some(BlockDevice {
            encrypted: Some(true),
            volume_size: Some(Quantity::new(format!("{gib}Gi"))),
            volume_type: Some(VolumeType::Gp3),
            ..BlockDevice::default()
        }),
        root_volume: Some(true),
    };
    match family {
        AmiFamily::Bottlerocket => vec![disk("/dev/xvda", 4), disk("/dev/xvdb", 20)],
        _ => vec![disk("/dev/xvda", 20)],
    }
}

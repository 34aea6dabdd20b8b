//! What EC2 sells here: instance types with their zones (DescribeInstanceTypes and
//! DescribeInstanceTypeOfferings), spot prices (DescribeSpotPriceHistory) and on-demand prices
//! (the shipped table, refreshed from the Pricing API when it answers).

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use aws_sdk_ec2::types::{InstanceTypeInfo, LocationType, UsageClassType};

use super::{AwsError, Clients};
use rafter::scheduling::instance_types::InstanceTypeSpec;

/// Turns DescribeInstanceTypes' answer into Rafter's spec; `None` for types Rafter cannot price.
pub fn spec_from_info(
    info: &InstanceTypeInfo,
    zones: &BTreeSet<String>,
    on_demand: Option<f64>,
) -> Option<InstanceTypeSpec> {
    let name = info.instance_type()?.as_str().to_string();
    let (family, size) = name.split_once('.').map(|(f, s)| (f.to_string(), s.to_string()))?;
    let arch = info.processor_info()?.supported_architectures().iter().find_map(|a| match a.as_str() {
        "x86_64" => Some("amd64"),
        "arm64" => Some("arm64"),
        _ => None,
    })?;
    let gpu = info.gpu_info();
    let first_gpu = gpu.and_then(|g| g.gpus().first());
    let network = info.network_info();
    Some(InstanceTypeSpec {
        name,
        family,
        size,
        arch: arch.to_string(),
        vcpu: i64::from(info.v_cpu_info()?.default_v_cpus()?),
        memory_mib: info.memory_info()?.size_in_mib()?,
        gpu_count: gpu.map(|g| g.gpus().iter().map(|d| i64::from(d.count().unwrap_or(0))).sum()).unwrap_or(0),
        gpu_name: first_gpu.and_then(|d| d.name()).unwrap_or_default().to_string(),
        gpu_manufacturer: first_gpu.and_then(|d| d.manufacturer()).unwrap_or_default().to_string(),
        gpu_memory_mib: gpu.and_then(|g| g.total_gpu_memory_in_mib()).map(i64::from).unwrap_or(0),
        max_enis: network.and_then(|n| n.maximum_network_interfaces()).map(i64::from).unwrap_or(1),
        ipv4_per_eni: network.and_then(|n| n.ipv4_addresses_per_interface()).map(i64::from).unwrap_or(1),
        hypervisor: info.hypervisor().map(|h| h.as_str().to_string()).unwrap_or_default(),
        bare_metal: info.bare_metal().unwrap_or(false),
        current_generation: info.current_generation().unwrap_or(false),
        spot_supported: info.supported_usage_classes().contains(&UsageClassType::Spot),
        zones: zones.iter().cloned().collect(),
        on_demand_price: on_demand?,
    })
}

/// Every instance type offered in the region, as specs priced from `on_demand`.
pub async fn instance_types(
    clients: &Clients,
    on_demand: &HashMap<String, f64>,
) -> Result<Vec<InstanceTypeSpec>, AwsError> {
    let offerings: Vec<_> = clients
        .ec2
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| AwsError::sdk("DescribeInstanceTypeOfferings", e))?;
    let mut zones: HashMap<String, BTreeSet<String>> = HashMap::new();
    for o in &offerings {
        if let (Some(t), Some(zone)) = (o.instance_type(), o.location()) {
            zones.entry(t.as_str().to_string()).or_default().insert(zone.to_string());
        }
    }
    let infos: Vec<_> = clients
        .ec2
        .describe_instance_types()
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| AwsError::sdk("DescribeInstanceTypes", e))?;
    Ok(infos
        .iter()
        .filter_map(|info| {
            let name = info.instance_type()?.as_str();
            spec_from_info(info, zones.get(name)?, on_demand.get(name).copied())
        })
        .collect())
}

/// The latest Linux spot price per (type, zone).
pub async fn spot_prices(clients: &Clients) -> Result<HashMap<(String, String), f64>, AwsError> {
    let items: Vec<_> = clients
        .ec2
        .describe_spot_price_history()
        .product_descriptions("Linux/UNIX")
        .start_time(aws_sdk_ec2::primitives::DateTime::from(SystemTime::now()))
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| AwsError::sdk("DescribeSpotPriceHistory", e))?;
    let mut latest: HashMap<(String, String), (f64, i64)> = HashMap::new();
    for p in &items {
        let (Some(t), Some(zone), Some(price)) = (p.instance_type(), p.availability_zone(), p.spot_price()) else {
            continue;
        };
        let Ok(price) = price.parse::<f64>() else { continue };
        let at = p.timestamp().map(|t| t.secs()).unwrap_or(0);
        let entry = latest.entry((t.as_str().to_string(), zone.to_string())).or_insert((price, at));
        if at >= entry.1 {
            *entry = (price, at);
        }
    }
    Ok(latest.into_iter().map(|(k, (p, _))| (k, p)).collect())
}

/// On-demand Linux prices from the Pricing API's product documents.
pub async fn on_demand_prices(clients: &Clients, region: &str) -> Result<HashMap<String, f64>, AwsError> {
    use aws_sdk_pricing::types::{Filter, FilterType};
    let filter = |field: &str, value: &str| {
        Filter::builder().r#type(FilterType::TermMatch).field(field).value(value).build().map_err(AwsError::build)
    };
    let docs: Vec<String> = clients
        .pricing
        .get_products()
        .service_code("AmazonEC2")
        .filters(filter("regionCode", region)?)
        .filters(filter("operatingSystem", "Linux")?)
        .filters(filter("tenancy", "Shared")?)
        .filters(filter("preInstalledSw", "NA")?)
        .filters(filter("capacitystatus", "Used")?)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| AwsError::sdk("GetProducts", e))?;
    Ok(docs.iter().filter_map(|d| parse_price_document(d)).collect())
}

/// One Pricing API product document → (instance type, USD per hour).
pub fn parse_price_document(doc: &str) -> Option<(String, f64)> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    let instance_type = v.pointer("/product/attributes/instanceType")?.as_str()?.to_string();
    let terms = v.pointer("/terms/OnDemand")?.as_object()?;
    let price = terms.values().find_map(|term| {
        term.get("priceDimensions")?
            .as_object()?
            .values()
            .find_map(|d| d.pointer("/pricePerUnit/USD")?.as_str()?.parse::<f64>().ok())
    })?;
    (price > 0.0).then_some((instance_type, price))
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        ArchitectureType, GpuDeviceInfo, GpuInfo, InstanceType, InstanceTypeHypervisor, MemoryInfo, NetworkInfo,
        ProcessorInfo, VCpuInfo,
    };

    use super::*;

    #[test]
    fn a_described_gpu_type_becomes_a_spec_with_its_zones_and_price() {
        let info = InstanceTypeInfo::builder()
            .instance_type(InstanceType::from("g4dn.xlarge"))
            .processor_info(ProcessorInfo::builder().supported_architectures(ArchitectureType::X8664).build())
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(4).build())
            .memory_info(MemoryInfo::builder().size_in_mib(16384).build())
            .gpu_info(
                GpuInfo::builder()
                    .gpus(GpuDeviceInfo::builder().name("T4").manufacturer("NVIDIA").count(1).build())
                    .total_gpu_memory_in_mib(16384)
                    .build(),
            )
            .network_info(NetworkInfo::builder().maximum_network_interfaces(3).ipv4_addresses_per_interface(10).build())
            .hypervisor(InstanceTypeHypervisor::Nitro)
            .current_generation(true)
            .supported_usage_classes(UsageClassType::Spot)
            .supported_usage_classes(UsageClassType::OnDemand)
            .build();
        let zones = BTreeSet::from(["us-east-1a".to_string(), "us-east-1b".to_string()]);
        let spec = spec_from_info(&info, &zones, Some(0.526)).unwrap();
        assert_eq!((spec.family.as_str(), spec.size.as_str(), spec.arch.as_str()), ("g4dn", "xlarge", "amd64"));
        assert_eq!((spec.vcpu, spec.memory_mib, spec.gpu_count, spec.gpu_memory_mib), (4, 16384, 1, 16384));
        assert_eq!((spec.gpu_name.as_str(), spec.gpu_manufacturer.as_str()), ("T4", "NVIDIA"));
        assert_eq!((spec.max_enis, spec.ipv4_per_eni), (3, 10));
        assert!(spec.spot_supported && spec.current_generation);
        assert_eq!(spec.zones, vec!["us-east-1a", "us-east-1b"]);
        assert!(spec_from_info(&info, &zones, None).is_none(), "a type without a price is left out");
    }

    #[test]
    fn a_pricing_document_gives_the_on_demand_hourly_price() {
        let doc = r#"{"product":{"attributes":{"instanceType":"m5.large"}},
            "terms":{"OnDemand":{"X.JRTCKXETXF":{"priceDimensions":{"X.JRTCKXETXF.6YS6EN2CT7":
            {"unit":"Hrs","pricePerUnit":{"USD":"0.0960000000"}}}}}}}"#;
        assert_eq!(parse_price_document(doc), Some(("m5.large".into(), 0.096)));
        assert_eq!(parse_price_document("{}"), None);
        assert_eq!(parse_price_document("not json"), None);
    }
}

//! The EC2 instance catalog shipped with Rafter (us-east-1: specs, zones, on-demand prices), and a
//! reader for catalogs in the same CSV layout.
//!
//! It is the fake cloud's catalog, the AWS provider's fallback on-demand price table, and the
//! solver benchmarks' input. Spot prices are not in it: they change hourly.

use super::instance_types::InstanceTypeSpec;

/// The us-east-1 catalog, as shipped.
pub const US_EAST_1_CSV: &str = include_str!("data/aws-us-east-1-instance-types.csv");

const COLUMNS: [&str; 18] = [
    "instance_type",
    "family",
    "size",
    "arch",
    "vcpu",
    "memory_mib",
    "gpu_count",
    "gpu_name",
    "gpu_manufacturer",
    "gpu_memory_mib",
    "max_enis",
    "ipv4_per_eni",
    "hypervisor",
    "bare_metal",
    "current_generation",
    "spot_supported",
    "zones",
    "on_demand_usd_per_hour",
];

/// Why a catalog file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The header is not the expected column list.
    #[error("line 1: expected the columns {expected}")]
    Header {
        /// The expected header.
        expected: String,
    },
    /// A row has the wrong number of fields.
    #[error("line {line}: expected {expected} fields, found {found}")]
    FieldCount {
        /// 1-based line.
        line: usize,
        /// Fields expected.
        expected: usize,
        /// Fields found.
        found: usize,
    },
    /// A field does not parse.
    #[error("line {line}, column {column}: {value:?} is not {what}")]
    Field {
        /// 1-based line.
        line: usize,
        /// Column name.
        column: &'static str,
        /// The text.
        value: String,
        /// What it should be.
        what: &'static str,
    },
}

/// Reads a catalog CSV with the shipped layout.
pub fn parse(csv: &str) -> Result<Vec<InstanceTypeSpec>, CatalogError> {
    let mut lines = csv.lines().enumerate();
    let header = lines.next().map(|(_, l)| l.trim()).unwrap_or_default();
    if header != COLUMNS.join(",") {
        return Err(CatalogError::Header { expected: COLUMNS.join(",") });
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != COLUMNS.len() {
            return Err(CatalogError::FieldCount { line: line_no, expected: COLUMNS.len(), found: fields.len() });
        }
        let int = |idx: usize| {
            fields[idx].parse::<i64>().map_err(|_| CatalogError::Field {
                line: line_no,
                column: COLUMNS[idx],
                value: fields[idx].to_string(),
                what: "an integer",
            })
        };
        let boolean = |idx: usize| match fields[idx] {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(CatalogError::Field {
                line: line_no,
                column: COLUMNS[idx],
                value: other.into(),
                what: "true or false",
            }),
        };
        let price = fields[17].parse::<f64>().ok().filter(|p| p.is_finite() && *p >= 0.0).ok_or_else(|| {
            CatalogError::Field { line: line_no, column: COLUMNS[17], value: fields[17].into(), what: "a price in USD" }
        })?;
        out.push(InstanceTypeSpec {
            name: fields[0].to_string(),
            family: fields[1].to_string(),
            size: fields[2].to_string(),
            arch: fields[3].to_string(),
            vcpu: int(4)?,
            memory_mib: int(5)?,
            gpu_count: int(6)?,
            gpu_name: fields[7].to_string(),
            gpu_manufacturer: fields[8].to_string(),
            gpu_memory_mib: int(9)?,
            max_enis: int(10)?,
            ipv4_per_eni: int(11)?,
            hypervisor: fields[12].to_string(),
            bare_metal: boolean(13)?,
            current_generation: boolean(14)?,
            spot_supported: boolean(15)?,
            zones: fields[16].split_whitespace().map(String::from).collect(),
            on_demand_price: price,
        });
    }
    Ok(out)
}

/// The shipped us-east-1 catalog.
pub fn us_east_1() -> Result<Vec<InstanceTypeSpec>, CatalogError> {
    parse(US_EAST_1_CSV)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::instance_types::{InstanceType, KubeletSettings};

    #[test]
    fn the_shipped_catalog_reads_completely() {
        let specs = us_east_1().expect("the shipped catalog parses");
        assert_eq!(specs.len(), 1340);
        let c5 = specs.iter().find(|s| s.name == "c5.4xlarge").expect("c5.4xlarge is listed");
        assert_eq!((c5.vcpu, c5.memory_mib, c5.zones.len()), (16, 32768, 5));
        assert_eq!(c5.on_demand_price, 0.68);
        let types: Vec<InstanceType> =
            specs.iter().map(|s| InstanceType::new(s, &KubeletSettings::default(), |_| None)).collect();
        let bad: Vec<&str> = types
            .iter()
            .filter(|t| {
                let a = t.allocatable();
                a.cpu <= 0 || a.memory <= 0 || a.pods <= 0
            })
            .map(|t| t.name.as_str())
            .collect();
        assert!(bad.is_empty(), "every type leaves room for pods: {bad:?}");
    }

    #[test]
    fn malformed_rows_are_reported_with_line_and_column() {
        let header = COLUMNS.join(",");
        let err = parse(&format!(
            "{header}\nm5.large,m5,large,amd64,two,8192,0,,,0,3,10,nitro,false,true,true,us-east-1a,0.096\n"
        ))
        .unwrap_err();
        assert_eq!(err.to_string(), "line 2, column vcpu: \"two\" is not an integer");
        let err = parse(&format!("{header}\nm5.large,m5\n")).unwrap_err();
        assert_eq!(err.to_string(), "line 2: expected 18 fields, found 2");
        assert!(matches!(parse("name,price\n"), Err(CatalogError::Header { .. })));
    }
}

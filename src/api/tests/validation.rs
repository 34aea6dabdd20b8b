//! Each validation rule rejects a bad manifest with a message naming the field — in Rust, and
//! through the CRD's own CEL rule where the schema has one.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::read;
use crate::api::manifest::{Object, parse_documents};
use crate::api::validation::{validate_ec2_node_class, validate_node_pool};
use crate::api::{EC2NodeClass, NodePool};

fn examples() -> (Value, Value) {
    let docs = parse_documents(&read("deploy/examples/v1/nodepool-default.yaml")).expect("example parses");
    let (Object::NodePool(pool), Object::EC2NodeClass(class)) = (&docs[0].object, &docs[1].object) else {
        panic!("the v1 example is a NodePool and an EC2NodeClass")
    };
    (serde_json::to_value(pool).expect("json"), serde_json::to_value(class).expect("json"))
}

/// Sets (or, with `Value::Null`, removes) the value at a JSON pointer, creating objects on the way.
fn set(target: &mut Value, pointer: &str, value: Value) {
    let parts: Vec<String> =
        pointer.trim_start_matches('/').split('/').map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
    let (last, parents) = parts.split_last().expect("non-empty pointer");
    let mut node = target;
    for part in parents {
        node = match node {
            Value::Array(items) => &mut items[part.parse::<usize>().expect("index")],
            Value::Object(map) => map.entry(part.clone()).or_insert_with(|| json!({})),
            other => panic!("cannot descend into {other}"),
        };
    }
    match (node, value) {
        (Value::Object(map), Value::Null) => {
            map.remove(last);
        }
        (Value::Object(map), value) => {
            map.insert(last.clone(), value);
        }
        (Value::Array(items), value) => {
            let index: usize = last.parse().expect("index");
            if index == items.len() { items.push(value) } else { items[index] = value }
        }
        (other, _) => panic!("cannot set into {other}"),
    }
}

struct Case {
    /// The rule being broken.
    rule: &'static str,
    /// Changes to the valid example: (JSON pointer, new value).
    edits: Vec<(&'static str, Value)>,
    /// The field `validate()` must name.
    field: String,
    /// A fragment of `validate()`'s message.
    message: &'static str,
    /// A fragment of the CRD's CEL rule message, when the schema has a CEL rule for it.
    cel: Option<&'static str>,
}

fn case(
    rule: &'static str,
    edits: Vec<(&'static str, Value)>,
    field: impl Into<String>,
    message: &'static str,
) -> Case {
    Case { rule, edits, field: field.into(), message, cel: None }
}

impl Case {
    fn cel(mut self, fragment: &'static str) -> Self {
        self.cel = Some(fragment);
        self
    }
}

const REQ: &str = "/spec/template/spec/requirements/0";

fn pool_cases() -> Vec<Case> {
    vec![
        case(
            "In needs values",
            vec![("/spec/template/spec/requirements/0/values", json!([]))],
            "spec.template.spec.requirements[0].values",
            "operator In needs at least one value",
        )
        .cel("operator In needs at least one value"),
        case(
            "Exists takes no values",
            vec![("/spec/template/spec/requirements/0/operator", json!("Exists"))],
            "spec.template.spec.requirements[0].values",
            "take no values",
        )
        .cel("take no values"),
        case(
            "Gt takes an integer",
            vec![("/spec/template/spec/requirements/3/values", json!(["four"]))],
            "spec.template.spec.requirements[3].values",
            "non-negative integer",
        )
        .cel("non-negative integer"),
        case(
            "Lt takes one value",
            vec![
                ("/spec/template/spec/requirements/3/operator", json!("Lt")),
                ("/spec/template/spec/requirements/3/values", json!(["4", "5"])),
            ],
            "spec.template.spec.requirements[3].values",
            "exactly one",
        )
        .cel("exactly one"),
        case(
            "minValues within values",
            vec![("/spec/template/spec/requirements/0/minValues", json!(3))],
            "spec.template.spec.requirements[0].minValues",
            "larger than the 2 value(s)",
        )
        .cel("minValues is larger"),
        case(
            "minValues range",
            vec![("/spec/template/spec/requirements/2/minValues", json!(51))],
            "spec.template.spec.requirements[2].minValues",
            "out of range",
        ),
        case(
            "hostname restricted",
            vec![("/spec/template/spec/requirements/0/key", json!("kubernetes.io/hostname"))],
            "spec.template.spec.requirements[0].key",
            "kubernetes.io/hostname",
        )
        .cel("cannot be required by a pool"),
        case(
            "karpenter.sh domain restricted",
            vec![("/spec/template/spec/requirements/0/key", json!("karpenter.sh/team"))],
            "spec.template.spec.requirements[0].key",
            "karpenter.sh is restricted",
        )
        .cel("restricted to their well-known labels"),
        case(
            "k8s.io domain restricted",
            vec![("/spec/template/spec/requirements/0/key", json!("sub.k8s.io/thing"))],
            "spec.template.spec.requirements[0].key",
            "k8s.io is restricted",
        )
        .cel("restricted to their well-known labels"),
        case(
            "requirement key syntax",
            vec![("/spec/template/spec/requirements/0/key", json!("bad key!"))],
            "spec.template.spec.requirements[0].key",
            "not a valid label key",
        ),
        case(
            "requirement value syntax",
            vec![("/spec/template/spec/requirements/1/values/0", json!("amd 64"))],
            "spec.template.spec.requirements[1].values[0]",
            "not a valid label value",
        ),
        case(
            "nodepool label set by Rafter",
            vec![("/spec/template/metadata/labels/karpenter.sh~1nodepool", json!("x"))],
            "spec.template.metadata.labels[karpenter.sh/nodepool]",
            "set by Rafter",
        )
        .cel("set by Rafter"),
        case(
            "restricted template label",
            vec![("/spec/template/metadata/labels/node.k8s.io~1x", json!("y"))],
            "spec.template.metadata.labels[node.k8s.io/x]",
            "restricted",
        )
        .cel("restricted to their well-known labels"),
        case(
            "template label value syntax",
            vec![("/spec/template/metadata/labels/intent", json!("two words"))],
            "spec.template.metadata.labels[intent]",
            "not a valid label value",
        ),
        case(
            "expireAfter duration",
            vec![("/spec/template/spec/expireAfter", json!("30d"))],
            "spec.template.spec.expireAfter",
            "\"30d\" is not a duration",
        ),
        case(
            "consolidateAfter duration",
            vec![("/spec/disruption/consolidateAfter", json!("soon"))],
            "spec.disruption.consolidateAfter",
            "or Never",
        ),
        case(
            "terminationGracePeriod is finite",
            vec![("/spec/template/spec/terminationGracePeriod", json!("Never"))],
            "spec.template.spec.terminationGracePeriod",
            "\"Never\" is not a duration",
        ),
        case(
            "schedule needs duration",
            vec![("/spec/disruption/budgets/0/schedule", json!("0 9 * * mon-fri"))],
            "spec.disruption.budgets[0].duration",
            "required when schedule",
        )
        .cel("schedule and duration must be given together"),
        case(
            "duration needs schedule",
            vec![("/spec/disruption/budgets/0/duration", json!("8h"))],
            "spec.disruption.budgets[0].schedule",
            "required when duration",
        )
        .cel("schedule and duration must be given together"),
        case(
            "schedule is cron",
            vec![
                ("/spec/disruption/budgets/0/schedule", json!("0 25 * * *")),
                ("/spec/disruption/budgets/0/duration", json!("1h")),
            ],
            "spec.disruption.budgets[0].schedule",
            "not a valid cron schedule",
        ),
        case(
            "schedule has five fields",
            vec![
                ("/spec/disruption/budgets/0/schedule", json!("daily")),
                ("/spec/disruption/budgets/0/duration", json!("1h")),
            ],
            "spec.disruption.budgets[0].schedule",
            "1 field(s)",
        ),
        case(
            "budget duration in hours and minutes",
            vec![
                ("/spec/disruption/budgets/0/schedule", json!("@daily")),
                ("/spec/disruption/budgets/0/duration", json!("90s")),
            ],
            "spec.disruption.budgets[0].duration",
            "hours and minutes",
        ),
        case(
            "budget nodes",
            vec![("/spec/disruption/budgets/0/nodes", json!("150%"))],
            "spec.disruption.budgets[0].nodes",
            "percentage",
        ),
        case("weight range", vec![("/spec/weight", json!(101))], "spec.weight", "1 to 100"),
        case(
            "limits are quantities",
            vec![("/spec/limits/cpu", json!("lots"))],
            "spec.limits[cpu]",
            "\"lots\" is not a quantity",
        ),
        case(
            "nodeClassRef name",
            vec![("/spec/template/spec/nodeClassRef/name", json!(""))],
            "spec.template.spec.nodeClassRef.name",
            "must not be empty",
        ),
        case(
            "taint key syntax",
            vec![("/spec/template/spec/taints", json!([{"key": "bad key", "effect": "NoSchedule"}]))],
            "spec.template.spec.taints[0].key",
            "not a valid label key",
        ),
        case(
            "at most 100 requirements",
            vec![(
                "/spec/template/spec/requirements",
                Value::Array(
                    (0..101).map(|i| json!({"key": format!("example.com/k{i}"), "operator": "Exists"})).collect(),
                ),
            )],
            "spec.template.spec.requirements",
            "at most 100",
        ),
    ]
}

fn class_cases() -> Vec<Case> {
    vec![
        case(
            "subnet terms required",
            vec![("/spec/subnetSelectorTerms", json!([]))],
            "spec.subnetSelectorTerms",
            "at least one term",
        ),
        case(
            "subnet term needs tags or id",
            vec![("/spec/subnetSelectorTerms/0", json!({}))],
            "spec.subnetSelectorTerms[0]",
            "needs tags or id",
        )
        .cel("needs tags or id"),
        case(
            "subnet id alone",
            vec![("/spec/subnetSelectorTerms/0/id", json!("subnet-0abc"))],
            "spec.subnetSelectorTerms[0]",
            "cannot also have tags",
        )
        .cel("cannot also have tags"),
        case(
            "subnet id syntax",
            vec![("/spec/subnetSelectorTerms/0", json!({"id": "vpc-123"}))],
            "spec.subnetSelectorTerms[0].id",
            "subnet-0123abcd",
        ),
        case(
            "security group term needs something",
            vec![("/spec/securityGroupSelectorTerms/0", json!({}))],
            "spec.securityGroupSelectorTerms[0]",
            "needs tags, id or name",
        )
        .cel("needs tags, id or name"),
        case(
            "alias term alone",
            vec![("/spec/amiSelectorTerms/1", json!({"id": "ami-0123"}))],
            "spec.amiSelectorTerms",
            "only amiSelectorTerms entry",
        )
        .cel("only amiSelectorTerms entry"),
        case(
            "alias has no other field",
            vec![("/spec/amiSelectorTerms/0/owner", json!("amazon"))],
            "spec.amiSelectorTerms[0]",
            "cannot have any other field",
        )
        .cel("cannot have any other field"),
        case(
            "alias syntax",
            vec![("/spec/amiSelectorTerms/0/alias", json!("ubuntu@latest"))],
            "spec.amiSelectorTerms[0].alias",
            "is not an alias",
        ),
        case(
            "amiFamily without alias",
            vec![("/spec/amiSelectorTerms/0", json!({"id": "ami-0123"}))],
            "spec.amiFamily",
            "required unless",
        )
        .cel("amiFamily is required"),
        case(
            "amiFamily matches alias",
            vec![("/spec/amiFamily", json!("AL2"))],
            "spec.amiFamily",
            "contradicts the alias",
        ),
        case(
            "role xor instanceProfile (both)",
            vec![("/spec/instanceProfile", json!("prof"))],
            "spec.role",
            "exactly one of role and instanceProfile",
        )
        .cel("exactly one of role and instanceProfile"),
        case(
            "role xor instanceProfile (neither)",
            vec![("/spec/role", Value::Null)],
            "spec.role",
            "exactly one of role and instanceProfile",
        )
        .cel("exactly one of role and instanceProfile"),
        case(
            "restricted tags",
            vec![("/spec/tags", json!({"kubernetes.io/cluster/demo": "owned"}))],
            "spec.tags[kubernetes.io/cluster/demo]",
            "set by Rafter",
        )
        .cel("set by Rafter"),
        case(
            "image GC thresholds ordered",
            vec![("/spec/kubelet", json!({"imageGCHighThresholdPercent": 50, "imageGCLowThresholdPercent": 60}))],
            "spec.kubelet.imageGCHighThresholdPercent",
            "greater than",
        )
        .cel("greater than"),
        case(
            "soft eviction needs grace",
            vec![("/spec/kubelet", json!({"evictionSoft": {"memory.available": "5%"}}))],
            "spec.kubelet.evictionSoft[memory.available]",
            "evictionSoftGracePeriod",
        )
        .cel("evictionSoftGracePeriod"),
        case(
            "one root volume",
            vec![("/spec/blockDeviceMappings", json!([{"rootVolume": true}, {"rootVolume": true}]))],
            "spec.blockDeviceMappings",
            "root volume",
        )
        .cel("root volume"),
        case(
            "volume size quantity",
            vec![("/spec/blockDeviceMappings", json!([{"ebs": {"volumeSize": "big"}}]))],
            "spec.blockDeviceMappings[0].ebs.volumeSize",
            "\"big\" is not a quantity",
        ),
        case(
            "at most 45 tags",
            vec![("/spec/tags", Value::Object((0..46).map(|i| (format!("team-{i}"), json!("x"))).collect()))],
            "spec.tags",
            "at most 45",
        ),
        case(
            "tag keys within EC2's 128 characters",
            vec![("/spec/tags", json!({"k".repeat(129): "x"}))],
            format!("spec.tags[{}]", "k".repeat(129)),
            "at most 128 characters",
        ),
        case(
            "tag values within EC2's 256 characters",
            vec![("/spec/tags", json!({"team": "v".repeat(257)}))],
            "spec.tags[team]",
            "at most 256 characters",
        ),
        case(
            "at most 16 eviction signals",
            vec![(
                "/spec/kubelet",
                json!({"evictionHard": Value::Object((0..17).map(|i| (format!("s{i}.available"), json!("1%"))).collect())}),
            )],
            "spec.kubelet.evictionHard",
            "at most 16",
        ),
        case(
            "hop limit range",
            vec![("/spec/metadataOptions/httpPutResponseHopLimit", json!(65))],
            "spec.metadataOptions.httpPutResponseHopLimit",
            "1 to 64",
        ),
    ]
}

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema");
    serde_json::to_value(schema).expect("json")
}

fn check<K: CustomResourceExt>(
    base: &Value,
    cases: Vec<Case>,
    validate: impl Fn(&Value) -> Result<(), crate::api::validation::Invalid>,
) {
    let schema = schema_of::<K>();
    let cel = kube::core::cel::Validator::new();
    validate(base).expect("the unedited example is valid");
    assert!(cel.validate(&schema, base, None).is_ok(), "the unedited example passes the CEL rules");
    for case in cases {
        let mut bad = base.clone();
        for (pointer, value) in &case.edits {
            set(&mut bad, pointer, value.clone());
        }
        let errors = validate(&bad).expect_err(case.rule).0;
        assert!(
            errors.iter().any(|e| e.field == case.field && e.message.contains(case.message)),
            "{}: expected {} to be named with {:?}, got {errors:?}",
            case.rule,
            case.field,
            case.message
        );
        if let Some(fragment) = case.cel {
            let failures = cel.validate(&schema, &bad, None).expect_err(case.rule);
            assert!(
                failures.iter().any(|f| f.message.contains(fragment) && f.field_path.starts_with("spec")),
                "{}: the CRD's CEL rules should reject it with {fragment:?}, got {failures:?}",
                case.rule
            );
        }
    }
}

#[test]
fn every_nodepool_rule_rejects_a_bad_manifest_naming_the_field() {
    let (pool, _) = examples();
    check::<NodePool>(&pool, pool_cases(), |v| {
        let pool: NodePool = serde_json::from_value(v.clone()).expect("still a NodePool");
        validate_node_pool(&pool.spec)
    });
}

#[test]
fn every_ec2nodeclass_rule_rejects_a_bad_manifest_naming_the_field() {
    let (_, class) = examples();
    check::<EC2NodeClass>(&class, class_cases(), |v| {
        let class: EC2NodeClass = serde_json::from_value(v.clone()).expect("still an EC2NodeClass");
        validate_ec2_node_class(&class.spec)
    });
}

#[test]
fn every_problem_is_reported_at_once() {
    let (mut pool, _) = examples();
    set(&mut pool, "/spec/weight", json!(0));
    set(&mut pool, "/spec/limits/cpu", json!("lots"));
    set(&mut pool, &format!("{REQ}/values"), json!([]));
    let pool: NodePool = serde_json::from_value(pool).expect("NodePool");
    let errors = validate_node_pool(&pool.spec).expect_err("three problems").0;
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn a_nodeclaim_is_checked_like_its_template_with_paths_under_spec() {
    let claim: crate::api::NodeClaim = serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": "default-abcde"},
        "spec": {
            "requirements": [{"key": "kubernetes.io/arch", "operator": "In", "values": []}],
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
            "resources": {"requests": {"cpu": "1.5.0"}}
        }
    }))
    .expect("a NodeClaim");
    let errors = crate::api::validation::validate_node_claim(&claim.spec).expect_err("two problems").0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.requirements[0].values", "spec.resources.requests[cpu]"]);
    let schema = schema_of::<crate::api::NodeClaim>();
    let value = serde_json::to_value(&claim).expect("json");
    let failures = kube::core::cel::Validator::new().validate(&schema, &value, None).expect_err("CEL rejects it");
    assert!(failures.iter().any(|f| f.message.contains("operator In needs at least one value")), "{failures:?}");
}

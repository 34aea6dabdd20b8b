//! moto's EC2/SSM/IAM server for wire tests: started on a free loopback port by
//! `scripts/moto_server.py` (which adds fleet errors, faults and the EKS SSM parameters moto lacks),
//! seeded with a VPC like an EKS cluster's, and stopped when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why moto could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error(
        "moto is not installed at {0} (run ./scripts/test, which installs moto[server] into target/moto-venv, or set RAFTER_MOTO_PYTHON)"
    )]
    NotInstalled(String),
    #[error("cannot start moto: {0}")]
    Start(#[source] std::io::Error),
    #[error("moto did not say where it listens: {0}")]
    Handshake(String),
    #[error("moto's control server: {0}")]
    Control(String),
    #[error("seeding moto: {0}")]
    Seed(String),
}

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`, the endpoint for every AWS client.
    pub endpoint: String,
    control: String,
    /// Set once IAM is enforced: dropping the server then fails the test if moto refused a call.
    enforced: std::sync::atomic::AtomicBool,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with moto: `RAFTER_MOTO_PYTHON`, or the virtual environment `scripts/test` makes.
pub fn python() -> PathBuf {
    std::env::var_os("RAFTER_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/moto-venv/bin/python"))
}

impl Moto {
    /// Starts moto on a free loopback port.
    pub fn start() -> Result<Self, MotoError> {
        let python = python();
        if !python.exists() {
            return Err(MotoError::NotInstalled(python.display().to_string()));
        }
        let mut child = Command::new(&python)
            .arg(workspace_root().join("scripts/moto_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(MotoError::Start)?;
        let stdout = child.stdout.take().ok_or_else(|| MotoError::Handshake("no stdout".into()))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(MotoError::Start)?;
        let hello: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| MotoError::Handshake(format!("{e}: {line:?}")))?;
        let field = |k: &str| hello.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(endpoint), Some(control)) = (field("endpoint"), field("control")) else {
            return Err(MotoError::Handshake(line));
        };
        Ok(Self { child, endpoint, control, enforced: Default::default() })
    }

    async fn control(&self, method: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value, MotoError> {
        let addr = self.control.trim_start_matches("http://");
        let mut stream =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| MotoError::Control(format!("{addr}: {e}")))?;
        let body = body.to_string();
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| MotoError::Control(e.to_string()))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.map_err(|e| MotoError::Control(e.to_string()))?;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(MotoError::Control(format!("{path}: {head} {body}")));
        }
        serde_json::from_str(body).map_err(|e| MotoError::Control(format!("{path}: {e}")))
    }

    /// The next `times` CreateFleet overrides for this type (and zone, if given) fail with `code`
    /// inside a 200 reply, as EC2 reports insufficient capacity.
    pub async fn fleet_error(
        &self,
        code: &str,
        instance_type: &str,
        zone: Option<&str>,
        times: u32,
    ) -> Result<(), MotoError> {
        let body = serde_json::json!({"code": code, "instance_type": instance_type, "zone": zone, "times": times});
        self.control("POST", "/fleet-errors", body).await.map(|_| ())
    }

    /// The next `times` calls of `action` fail whole with `code` and HTTP `status`.
    pub async fn fault(&self, action: &str, code: &str, status: u16, times: u32) -> Result<(), MotoError> {
        let body = serde_json::json!({"action": action, "code": code, "status": status, "times": times});
        self.control("POST", "/faults", body).await.map(|_| ())
    }

    /// Writes an SSM parameter, including the `/aws/service/...` ones moto refuses.
    pub async fn put_ssm(&self, name: &str, value: &str) -> Result<(), MotoError> {
        self.control("POST", "/ssm", serde_json::json!({"name": name, "value": value})).await.map(|_| ())
    }

    /// Calls received, by action.
    pub async fn calls(&self) -> Result<BTreeMap<String, u64>, MotoError> {
        let v = self.control("GET", "/calls", serde_json::json!({})).await?;
        serde_json::from_value(v).map_err(|e| MotoError::Control(e.to_string()))
    }

    /// Makes one AWS call through boto3 against this moto and returns its result (without
    /// `ResponseMetadata`), for services Rafter has no client for: CloudFormation, EventBridge.
    pub async fn aws(
        &self,
        service: &str,
        operation: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, MotoError> {
        let body = serde_json::json!({"service": service, "operation": operation, "params": params});
        self.control("POST", "/aws", body).await
    }

    /// Turns on moto's IAM enforcement: from now on every request is authenticated and its action
    /// authorized. [`TEST_CREDENTIALS`] stay allowed everything (the tests' own calls); the key
    /// returned belongs to a user holding only `policy`.
    pub async fn enforce_iam(&self, policy: &serde_json::Value) -> Result<(String, String), MotoError> {
        let v = self.control("POST", "/iam-enforce", serde_json::json!({"policy": policy})).await?;
        self.enforced.store(true, std::sync::atomic::Ordering::SeqCst);
        let text =
            |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| MotoError::Control(format!("no {k} in {v}")));
        Ok((text("accessKeyId")?, text("secretAccessKey")?))
    }

    /// Requests moto's IAM enforcement refused: `{"action", "principal"}` each.
    pub async fn denied(&self) -> Result<Vec<serde_json::Value>, MotoError> {
        let v = self.control("GET", "/denied", serde_json::json!({})).await?;
        serde_json::from_value(v).map_err(|e| MotoError::Control(e.to_string()))
    }

    /// Forgets faults and call counts.
    pub async fn clear(&self) -> Result<(), MotoError> {
        self.control("POST", "/clear", serde_json::json!({})).await.map(|_| ())
    }
}

impl Moto {
    /// The refusals, read without a runtime (for `Drop`).
    fn denied_blocking(&self) -> Option<String> {
        use std::io::{Read, Write};
        let addr = self.control.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        write!(stream, "GET /denied HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string())?;
        (body != "[]").then_some(body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if self.enforced.load(std::sync::atomic::Ordering::SeqCst)
            && !std::thread::panicking()
            && let Some(denied) = self.denied_blocking()
        {
            drop(self.child.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("moto's IAM enforcement refused Rafter: {denied}");
        }
        // Closing stdin ends the server; kill in case it is stuck.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`seed`] created: an EKS-like network, a node role and images for the alias parameters.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub vpc: String,
    /// Zone → subnet ID.
    pub subnets: BTreeMap<String, String>,
    pub security_group: String,
    pub role: String,
    /// Architecture (`amd64`, `arm64`) → AMI ID the alias parameters point at.
    pub amis: BTreeMap<String, String>,
}

/// moto's account.
pub const ACCOUNT: &str = "123456789012";

/// Static test credentials for moto (it accepts any until IAM is enforced; then they are allowed everything).
pub const TEST_CREDENTIALS: (&str, &str) = ("testing", "testing");

/// EC2 and IAM clients signed with [`TEST_CREDENTIALS`], for tests' own set-up and inspection.
pub async fn clients(endpoint: &str, region: &str) -> (aws_sdk_ec2::Client, aws_sdk_iam::Client) {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            TEST_CREDENTIALS.0,
            TEST_CREDENTIALS.1,
            None,
            None,
            "moto",
        ))
        .load()
        .await;
    (aws_sdk_ec2::Client::new(&shared), aws_sdk_iam::Client::new(&shared))
}

/// Creates what an EKS cluster named `discovery` has: a VPC with one subnet per zone and a
/// security group, both tagged `karpenter.sh/discovery: <discovery>`, the node role
/// `KarpenterNodeRole-<discovery>`, and (through `moto`'s control server when given) the EKS AMI
/// alias parameters for `kubernetes_version`.
pub async fn seed(
    endpoint: &str,
    moto: Option<&Moto>,
    discovery: &str,
    kubernetes_version: &str,
) -> Result<Seeded, MotoError> {
    let region = "us-east-1";
    let (ec2, iam) = clients(endpoint, region).await;
    let err = |op: &str, e: &dyn std::fmt::Display| MotoError::Seed(format!("{op}: {e}"));
    let tag = TagSpecification::builder().tags(Tag::builder().key("karpenter.sh/discovery").value(discovery).build());
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .map_err(|e| err("CreateVpc", &aws_sdk_ec2::error::DisplayErrorContext(e)))?;
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_string();
    let mut subnets = BTreeMap::new();
    for (i, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"].iter().enumerate() {
        let out = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{}.0/20", i * 16))
            .availability_zone(*zone)
            .tag_specifications(tag.clone().resource_type(ResourceType::Subnet).build())
            .send()
            .await
            .map_err(|e| err("CreateSubnet", &aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        subnets.insert(zone.to_string(), out.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string());
    }
    let sg = ec2
        .create_security_group()
        .group_name(format!("{discovery}-nodes"))
        .description("nodes")
        .vpc_id(&vpc)
        .tag_specifications(tag.clone().resource_type(ResourceType::SecurityGroup).build())
        .send()
        .await
        .map_err(|e| err("CreateSecurityGroup", &aws_sdk_ec2::error::DisplayErrorContext(e)))?;
    let role = format!("KarpenterNodeRole-{discovery}");
    let created = iam
        .create_role()
        .role_name(&role)
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .map(|_| ());
    if let Err(e) = created
        && !e.as_service_error().is_some_and(|s| s.is_entity_already_exists_exception())
    {
        return Err(err("CreateRole", &aws_sdk_ec2::error::DisplayErrorContext(e)));
    }
    // One Amazon image per architecture, named by the alias parameters.
    let mut amis = BTreeMap::new();
    for (arch, aws_arch) in [("amd64", "x86_64"), ("arm64", "arm64")] {
        let images = ec2
            .describe_images()
            .owners("amazon")
            .filters(Filter::builder().name("architecture").values(aws_arch).build())
            .send()
            .await
            .map_err(|e| err("DescribeImages", &aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        let Some(id) = images.images().iter().filter_map(|i| i.image_id()).min() else {
            return Err(MotoError::Seed(format!("moto has no {aws_arch} image owned by amazon")));
        };
        amis.insert(arch.to_string(), id.to_string());
        if let Some(moto) = moto {
            let k = kubernetes_version;
            moto.put_ssm(
                &format!(
                    "/aws/service/eks/optimized-ami/{k}/amazon-linux-2023/{aws_arch}/standard/recommended/image_id"
                ),
                id,
            )
            .await?;
        }
    }
    Ok(Seeded { vpc, subnets, security_group: sg.group_id().unwrap_or_default().to_string(), role, amis })
}

/// The controller policy of `deploy/cloudformation/rafter.yaml` as CloudFormation would render it
/// for `cluster` in moto's account and us-east-1 (its `Fn::Sub` placeholders filled in).
pub fn controller_policy(cluster: &str) -> Result<serde_json::Value, MotoError> {
    let path = workspace_root().join("deploy/cloudformation/rafter.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| MotoError::Control(format!("{}: {e}", path.display())))?;
    let template: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| MotoError::Control(format!("{}: {e}", path.display())))?;
    let document = template
        .pointer("/Resources/ControllerPolicy/Properties/PolicyDocument/Fn::Sub")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| MotoError::Control("the template has no ControllerPolicy Fn::Sub document".into()))?;
    let filled = document
        .replace("${AWS::Partition}", "aws")
        .replace("${AWS::Region}", "us-east-1")
        .replace("${AWS::AccountId}", ACCOUNT)
        .replace("${ClusterName}", cluster)
        .replace("${NodeRole.Arn}", &format!("arn:aws:iam::{ACCOUNT}:role/RafterNodeRole-{cluster}"));
    if let Some(left) = filled.find("${") {
        return Err(MotoError::Control(format!("an unfilled placeholder in the policy: {}", &filled[left..])));
    }
    serde_json::from_str(&filled).map_err(|e| MotoError::Control(format!("the controller policy is not JSON: {e}")))
}

/// API operations whose IAM action has another name: moto authorizes by the operation's name.
const MOTO_ACTION_ALIASES: &[(&str, &str)] = &[("sqs:DeleteMessage", "sqs:DeleteMessageBatch")];

/// What moto can enforce of `policy`: its actions, each allowed on every resource. moto authorizes
/// an action against the resource `*` and cannot evaluate resource ARNs or tag conditions, so those
/// are dropped here (and are reviewed, not tested; see the README's list of differences).
pub fn action_level(policy: &serde_json::Value) -> serde_json::Value {
    let mut actions: Vec<String> = Vec::new();
    for statement in policy["Statement"].as_array().into_iter().flatten() {
        let listed = match &statement["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(list) => list.iter().filter_map(|a| a.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        for action in listed {
            if let Some((_, alias)) = MOTO_ACTION_ALIASES.iter().find(|(iam, _)| *iam == action) {
                actions.push(alias.to_string());
            }
            actions.push(action);
        }
    }
    actions.sort();
    actions.dedup();
    serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})
}

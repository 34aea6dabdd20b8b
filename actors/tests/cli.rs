//! The `rafter` binary as a user runs it: exit codes, stdout and stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rafter::api::manifest::{Object, parse_documents};

fn rafter(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafter"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("RAFTER_DEFAULT_INSTANCE_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rafter binary starts");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writes stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("rafter finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn project(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn write_temp(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("writes temp file");
    path.display().to_string()
}

#[test]
fn convert_turns_the_legacy_example_into_v1_objects() {
    let example = project("deploy/examples/legacy/provisioner-arm.yaml");
    let out = rafter(&["convert", "-f", &example.display().to_string(), "--role", "KarpenterNodeRole-demo"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs = parse_documents(&text(&out.stdout)).expect("output is v1 YAML");
    assert!(matches!(&docs[0].object, Object::NodePool(p) if p.metadata.name.as_deref() == Some("arm")));
    assert!(
        matches!(&docs[1].object, Object::EC2NodeClass(c) if c.spec.role.as_deref() == Some("KarpenterNodeRole-demo"))
    );
}

#[test]
fn convert_reads_standard_input() {
    let example = std::fs::read_to_string(project("deploy/examples/legacy/provisioner-spot-default.yaml")).unwrap();
    let out = rafter(&["convert", "-f", "-", "--default-instance-profile", "prof"], Some(&example));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(parse_documents(&text(&out.stdout)).expect("v1 YAML").len(), 2);
}

#[test]
fn convert_of_malformed_yaml_exits_non_zero_with_file_line_and_reason_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_temp(
        &dir,
        "broken.yaml",
        "apiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata:\n  name: p\nspec:\n  labels: [unclosed\n",
    );
    let out = rafter(&["convert", "-f", &file, "--role", "r"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing partial on stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{file}:6")) || stderr.contains(&format!("{file}:7")), "{stderr}");
}

#[test]
fn convert_reports_unknown_legacy_fields_and_prints_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    // A valid template first, so a partial converter would have something to print.
    let file = write_temp(
        &dir,
        "typo.yaml",
        "apiVersion: karpenter.k8s.aws/v1alpha1\nkind: AWSNodeTemplate\nmetadata:\n  name: t\nspec:\n  instanceProfile: p\n  subnetSelector: {a: b}\n  securityGroupSelector: {a: b}\n---\napiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata:\n  name: p\nspec:\n  providerRef: {name: t}\n  ttlSecondsUntilExpiredd: 60\n",
    );
    let out = rafter(&["convert", "-f", &file], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{file}:16:3")) && stderr.contains("ttlSecondsUntilExpiredd"), "{stderr}");
}

#[test]
fn convert_rejects_unknown_kinds_and_missing_files() {
    let out = rafter(&["convert", "-f", "-"], Some("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("<stdin>:1: unknown kind Secret"), "{}", text(&out.stderr));
    let out = rafter(&["convert", "-f", "/nonexistent/rafter.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/rafter.yaml"), "{}", text(&out.stderr));
}

#[test]
fn crds_prints_every_crd_in_deploy() {
    let out = rafter(&["crds"], None);
    assert!(out.status.success());
    let printed = text(&out.stdout);
    let names = [
        "karpenter.sh_nodepools.yaml",
        "karpenter.sh_nodeclaims.yaml",
        "karpenter.k8s.aws_ec2nodeclasses.yaml",
        "karpenter.sh_provisioners.yaml",
        "karpenter.k8s.aws_awsnodetemplates.yaml",
    ];
    let expected: String = names
        .iter()
        .map(|n| format!("---\n{}", std::fs::read_to_string(project(&format!("deploy/crds/{n}"))).unwrap()))
        .collect();
    assert_eq!(printed, expected);
}

#[test]
fn crds_dir_writes_one_file_per_crd() {
    let dir = tempfile::tempdir().unwrap();
    let out = rafter(&["crds", "--dir", &dir.path().display().to_string()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
}

#[test]
fn version_prints_the_package_version() {
    let out = rafter(&["version"], None);
    assert_eq!(text(&out.stdout).trim(), format!("rafter {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn run_refuses_inconsistent_timings_before_connecting() {
    let out = rafter(&["run", "--cluster-name", "demo", "--renew-deadline", "30s"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--renew-deadline") && stderr.contains("--lease-duration"), "{stderr}");
}

#[test]
fn run_without_a_reachable_api_server_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 on loopback: nothing listens there, so the connection is refused at once.
    let kubeconfig = write_temp(
        &dir,
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
    );
    let out = rafter(&["run", "--cluster-name", "demo", "--kubeconfig", &kubeconfig], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("karpenter.sh/v1 is not served"), "{stderr}");
}

#[test]
fn solve_plans_the_example_and_explains_the_unplaceable_pod() {
    let example = project("deploy/examples/solve/input.yaml").display().to_string();
    let out = rafter(&["solve", "--input", &example], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the plan is JSON");
    let placed: usize = plan["claims"].as_array().unwrap().iter().map(|c| c["pods"].as_array().unwrap().len()).sum();
    assert_eq!(placed, 6);
    assert_eq!(plan["unplaced"][0]["pod"], "ml/train-0");
    assert_eq!(plan["unplaced"][0]["reason"], "no instance type has 3 nvidia.com/gpu");
    let zones: std::collections::BTreeSet<String> = plan["claims"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pods"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().starts_with("shop/")))
        .flat_map(|c| {
            c["requirements"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["key"] == "topology.kubernetes.io/zone")
                .map(|r| r["values"][0].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(zones.len() >= 3, "five spread web pods use at least three zones: {zones:?}");
    let summary = text(&out.stderr);
    assert!(summary.starts_with("solved 7 pod(s):") && summary.contains("1 unplaced"), "{summary}");
}

#[test]
fn solve_rejects_bad_input_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_temp(
        &dir,
        "bad.yaml",
        "pods:\n  - metadata: {name: p}\n    spec: {containers: [{name: c, resources: {requests: {cpu: lots}}}], nodeName: ghost}\n",
    );
    let out = rafter(&["solve", "--input", &file], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{file}:2: pods[0].spec.nodeName: no node ghost in nodes")), "{stderr}");
}

/// The README's first command, smaller: every scene runs, in order, and the summary adds up.
#[test]
fn the_demo_scales_up_fails_over_survives_a_spot_interruption_consolidates_and_scales_down() {
    let out = rafter(&["demo", "--pods", "30", "--boot-delay", "500ms", "--consolidate-after", "2s"], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let summary = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("  ").and_then(|l| l.strip_prefix(key)))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no summary line {key:?} in\n{stdout}"))
    };
    assert_eq!(summary("pods "), "30");
    assert!(summary("failover ").ends_with("(leader killed → standby leads)"));
    let interruption = summary("interruption ");
    assert!(interruption.contains("(replacement Ready first)"), "{interruption}");
    let spare: f64 = interruption
        .rsplit_once('(')
        .and_then(|(_, r)| r.strip_suffix("s before the reclaim)"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("time to spare in {interruption:?}"));
    assert!(spare > 0.0, "{interruption}");
    let consolidation = summary("consolidation ");
    let figures: Vec<f64> = consolidation
        .split(['$', '/'])
        .filter_map(|part| part.split_whitespace().next().and_then(|v| v.parse().ok()))
        .collect();
    assert!(consolidation.contains("after scaling to 9 pods"), "{consolidation}");
    assert!(figures.len() >= 3 && figures[1] < figures[0], "the fleet got cheaper: {consolidation}");

    // The timeline is sorted by time: each scene's steps appear in the order they must happen.
    let timeline = stdout
        .split_once("\nTimeline\n")
        .and_then(|(_, rest)| rest.split_once("\nSummary\n"))
        .map(|(timeline, _)| timeline)
        .unwrap_or_else(|| panic!("no timeline in\n{stdout}"));
    let position = |needle: &str| timeline.find(needle).unwrap_or_else(|| panic!("no {needle:?} in\n{timeline}"));
    let order = [
        "all 30 pods Running",
        "took over after",
        "EC2 spot interruption warning for",
        "interruption recorded on",
        "replacement node(s) for",
        "karpenter.sh/disrupted:NoSchedule",
        "its replacement is Ready",
        "drained",
        "pods Running again",
        "scaled inflate to 9",
        "consolidated ",
        "consolidation settled",
        "scaled inflate to 0",
        "all nodes gone",
    ];
    let positions: Vec<usize> = order.iter().map(|n| position(n)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?} at {positions:?} in\n{timeline}");
}

/// A `rafter` process, killed (and its output kept for the failure message) when the test ends.
struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    fn start(args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rafter"))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("AWS_ACCESS_KEY_ID", rafter_sim::moto::TEST_CREDENTIALS.0)
            .env("AWS_SECRET_ACCESS_KEY", rafter_sim::moto::TEST_CREDENTIALS.1)
            .env("RUST_LOG", "info,rafter_sim=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("the rafter binary starts");
        Self { child, log }
    }

    fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three processes and an emulator, as a user would run them beside a real control plane: the API
/// server (with its scheduler, workload and node lifecycle controllers), `rafter sim kubelets`
/// following moto's instances, and `rafter run` launching into the same moto. The inflate pods run
/// on nodes the separate kubelets registered for the instances the separate controller launched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_kubelets_runs_the_nodes_a_separate_rafter_run_launches_on_moto() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Api, ListParams, Patch, PatchParams};

    let moto = rafter_sim::moto::Moto::start().expect("moto");
    rafter_sim::moto::seed(&moto.endpoint, Some(&moto), "demo", "1.33").await.expect("seed");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let kc = kubeconfig.display().to_string();
    let apiserver = Process::start(
        &["sim", "apiserver", "--kubeconfig-out", &kc, "--install-crds"],
        dir.path().join("apiserver.log"),
    );
    let started = std::time::Instant::now();
    while !kubeconfig.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{}", apiserver.output());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let kubelets = Process::start(
        &["sim", "kubelets", "--kubeconfig", &kc, "--aws-endpoint", &moto.endpoint, "--cluster-name", "demo"],
        dir.path().join("kubelets.log"),
    );
    let config = rafter_actors::world::kubeconfig(&kubeconfig, None).await.expect("kubeconfig");
    let client = kube::Client::try_from(config).expect("client");
    let namespace = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "karpenter"}}"#;
    rafter_actors::world::apply(&client, namespace).await.expect("namespace");
    // moto prices spot at $0.00001, so on-demand keeps the plan like production's.
    let pool =
        rafter_actors::world::NODEPOOL_DEFAULT.replace(r#"values: ["spot", "on-demand"]"#, r#"values: ["on-demand"]"#);
    rafter_actors::world::apply(&client, &pool).await.expect("pool and class");
    rafter_actors::world::apply(&client, rafter_actors::world::INFLATE).await.expect("inflate");
    let controller = Process::start(
        &[
            "run",
            "--kubeconfig",
            &kc,
            "--cloud",
            "aws",
            "--aws-endpoint",
            &moto.endpoint,
            "--region",
            "us-east-1",
            "--cluster-name",
            "demo",
            "--cluster-endpoint",
            "https://demo.example",
            "--identity",
            "rafter-a",
            "--metrics-addr",
            "127.0.0.1:0",
            "--batch-idle",
            "300ms",
        ],
        dir.path().join("run.log"),
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .patch("inflate", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 5}})))
        .await
        .expect("scaled");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let started = std::time::Instant::now();
    loop {
        let list = pods.list(&ListParams::default().labels("app=inflate")).await.expect("pods").items;
        let running =
            list.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        if running == 5 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(150),
            "{running} of 5 running\n--- run\n{}\n--- kubelets\n{}\n--- apiserver\n{}",
            controller.output(),
            kubelets.output(),
            apiserver.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.expect("nodes").items;
    let claims =
        Api::<rafter::api::NodeClaim>::all(client.clone()).list(&ListParams::default()).await.expect("claims").items;
    assert!(!nodes.is_empty());
    assert_eq!(nodes.len(), claims.len(), "one node per claim");
    for node in &nodes {
        let provider = node.spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap_or_default();
        assert!(
            kube::ResourceExt::annotations(node).contains_key(rafter_sim::nodes::SIMULATED),
            "a simulated kubelet registered it"
        );
        assert!(
            claims.iter().any(|c| c.status.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(provider.as_str())),
            "{provider} is the instance of a claim"
        );
    }
    let calls = moto.calls().await.expect("moto's call counts");
    assert!(calls.get("CreateFleet").copied().unwrap_or(0) >= 1, "rafter run launched into moto: {calls:?}");
    assert!(calls.get("DescribeInstances").copied().unwrap_or(0) >= 1, "the kubelets followed moto: {calls:?}");

    // What a platform team reads: `kubectl get nodepools,nodeclaims` with Nodes and Ready filled.
    let bad = pool
        .replacen("name: default\n", "name: bad\n", 1)
        .replace("budgets:", "budgets:\n      - nodes: \"1\"\n        schedule: \"61 * * * *\"\n        duration: 1h");
    assert!(bad.contains("61 * * * *"), "the example pool has budgets to extend:\n{bad}");
    rafter_actors::world::apply(&client, bad.split("\n---").next().expect("the pool")).await.expect("bad pool");
    let expected = format!("{}", claims.len());
    let listing = kubectl_until(&kubeconfig, &["get", "nodepools,nodeclaims"], 30, |out| {
        let default = out.lines().find(|l| l.starts_with("nodepool.karpenter.sh/default"))?;
        let bad = out.lines().find(|l| l.starts_with("nodepool.karpenter.sh/bad"))?;
        let cells: Vec<&str> = default.split_whitespace().collect();
        (cells.get(2) == Some(&expected.as_str()) && cells.get(3) == Some(&"True") && bad.contains("False"))
            .then_some(())
    });
    let header = listing.lines().next().unwrap_or_default();
    assert!(["NAME", "NODECLASS", "NODES", "READY", "AGE"].iter().all(|c| header.contains(c)), "{listing}");
    let claim_header = listing.lines().find(|l| l.contains("CAPACITY")).unwrap_or_else(|| panic!("{listing}"));
    assert!(["TYPE", "CAPACITY", "ZONE", "NODE", "READY"].iter().all(|c| claim_header.contains(c)), "{listing}");
    let claim_line = listing.lines().find(|l| l.starts_with("nodeclaim.karpenter.sh/")).expect("a claim line");
    assert!(
        claim_line.contains("on-demand") && claim_line.contains("us-east-1") && claim_line.contains("True"),
        "{listing}"
    );
    let (_, message) = kubectl(
        &kubeconfig,
        &["get", "nodepool", "bad", "-o", "jsonpath={.status.conditions[?(@.type==\"ValidationSucceeded\")].message}"],
    );
    assert!(message.contains("spec.disruption.budgets[0].schedule"), "the condition names the field: {message}");
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let output = Command::new(&program).args(args).env("KUBECONFIG", kubeconfig).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); ./scripts/test installs kubectl when it is missing, or set KUBECTL")
    });
    (output.status.success(), format!("{}{}", text(&output.stdout), text(&output.stderr)))
}

/// Runs kubectl until `done` accepts its output, for at most `seconds`.
fn kubectl_until(kubeconfig: &Path, args: &[&str], seconds: u64, done: impl Fn(&str) -> Option<()>) -> String {
    let started = std::time::Instant::now();
    loop {
        let (ok, out) = kubectl(kubeconfig, args);
        if ok && done(&out).is_some() {
            return out;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(seconds),
            "kubectl {args:?} never showed it:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn solve_refuses_what_the_api_server_would_refuse_naming_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_temp(
        &dir,
        "hostile.yaml",
        r#"pods:
  - metadata: {name: negative}
    spec: {containers: [{name: c, resources: {requests: {cpu: "-4", memory: -5Gi}}}]}
  - metadata: {name: huge}
    spec: {containers: [{name: c, resources: {requests: {cpu: "99999999999999999999999999"}}}]}
  - metadata: {name: words}
    spec: {containers: [{name: c, resources: {requests: {cpu: "5 cores"}}}]}
  - metadata: {name: skew}
    spec:
      containers: [{name: c}]
      topologySpreadConstraints: [{maxSkew: -1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}]
"#,
    );
    let out = rafter(&["solve", "--input", &file], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no plan is printed");
    let stderr = text(&out.stderr);
    for expected in [
        "2: pods[0].spec.containers[0].resources.requests.cpu: \"-4\" must be greater than or equal to 0",
        "2: pods[0].spec.containers[0].resources.requests.memory: \"-5Gi\" must be greater than or equal to 0",
        "4: pods[1].spec.containers[0].resources.requests.cpu: \"99999999999999999999999999\" is too large",
        "6: pods[2].spec.containers[0].resources.requests.cpu: \"5 cores\"",
        "8: pods[3].spec.topologySpreadConstraints[0].maxSkew: -1 must be greater than 0",
    ] {
        assert!(stderr.contains(&format!("{file}:{expected}")), "missing {expected:?} in {stderr}");
    }
    let empty = write_temp(&dir, "empty.yaml", "");
    let out = rafter(&["solve", "--input", &empty], None);
    assert_eq!(out.status.code(), Some(1), "an empty file plans nothing: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pods: none given"), "{}", text(&out.stderr));
}

#[test]
fn convert_refuses_output_the_api_server_would_refuse_at_the_provisioners_line() {
    let dir = tempfile::tempdir().unwrap();
    let long_name = "p".repeat(10_000_000);
    let manifest = format!(
        r#"apiVersion: karpenter.sh/v1alpha5
kind: Provisioner
metadata: {{name: fine}}
spec:
  providerRef: {{name: default}}
---
apiVersion: karpenter.sh/v1alpha5
kind: Provisioner
metadata: {{name: bad}}
spec:
  weight: -5
  limits: {{resources: {{cpu: "-1000"}}}}
  ttlSecondsUntilExpired: 10000000000
  providerRef: {{name: default}}
---
apiVersion: karpenter.sh/v1alpha5
kind: Provisioner
metadata: {{name: {long_name}}}
spec:
  providerRef: {{name: default}}
"#
    );
    let file = write_temp(&dir, "bad.yaml", &manifest);
    let out = rafter(&["convert", "-f", &file], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing partial is printed");
    let stderr = text(&out.stderr);
    assert!(stderr.len() < 10_000, "the long name is not echoed whole ({} bytes)", stderr.len());
    for expected in [
        ":7: Provisioner bad converts to an invalid NodePool: spec.weight",
        "spec.limits[cpu]",
        "spec.template.spec.expireAfter",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
    assert!(
        stderr.contains(":16: Provisioner pppp") && stderr.contains("must be no more than 253 characters"),
        "{stderr}"
    );
}

#[test]
fn convert_discovers_subnets_and_groups_by_the_cluster_tag_when_a_legacy_provider_names_none() {
    // The getting-started Provisioner of the first Karpenter releases: an instance profile only.
    let manifest = r#"apiVersion: karpenter.sh/v1alpha5
kind: Provisioner
metadata: {name: default}
spec:
  provider:
    instanceProfile: KarpenterNodeInstanceProfile-demo
"#;
    let refused = rafter(&["convert", "-f", "-"], Some(manifest));
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("--cluster-name"), "{}", text(&refused.stderr));
    let out = rafter(&["convert", "-f", "-", "--cluster-name", "demo"], Some(manifest));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs = parse_documents(&text(&out.stdout)).expect("v1 output parses");
    let class = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::EC2NodeClass(c) => Some(c.clone()),
            _ => None,
        })
        .expect("an EC2NodeClass");
    assert_eq!(
        class.spec.subnet_selector_terms[0].tags.get("kubernetes.io/cluster/demo").map(String::as_str),
        Some("*")
    );
    assert_eq!(
        class.spec.security_group_selector_terms[0].tags.get("kubernetes.io/cluster/demo").map(String::as_str),
        Some("*")
    );
}

/// Every object's resourceVersion: any write changes one.
async fn versions(client: &kube::Client) -> std::collections::BTreeMap<String, String> {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Api, ListParams};
    use rafter::api::NodePool;
    use rafter::api::nodeclaim::NodeClaim;
    let mut out = std::collections::BTreeMap::new();
    let lp = ListParams::default();
    for n in Api::<Node>::all(client.clone()).list(&lp).await.expect("nodes").items {
        out.insert(
            format!("node/{}", n.metadata.name.unwrap_or_default()),
            n.metadata.resource_version.unwrap_or_default(),
        );
    }
    for c in Api::<NodeClaim>::all(client.clone()).list(&lp).await.expect("claims").items {
        out.insert(
            format!("nodeclaim/{}", c.metadata.name.unwrap_or_default()),
            c.metadata.resource_version.unwrap_or_default(),
        );
    }
    for p in Api::<Pod>::all(client.clone()).list(&lp).await.expect("pods").items {
        out.insert(
            format!("pod/{}", p.metadata.name.unwrap_or_default()),
            p.metadata.resource_version.unwrap_or_default(),
        );
    }
    for p in Api::<NodePool>::all(client.clone()).list(&lp).await.expect("pools").items {
        out.insert(
            format!("nodepool/{}", p.metadata.name.unwrap_or_default()),
            p.metadata.resource_version.unwrap_or_default(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disrupt_dry_run_prints_the_next_command_and_why_nodes_stay_and_writes_nothing() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams};
    use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
    use std::time::Duration;

    let world = World::start(WorldConfig::default()).await.expect("world");
    let pool = NODEPOOL_DEFAULT.replace(r#"values: ["spot", "on-demand"]"#, r#"values: ["on-demand"]"#);
    world.apply(&pool).await.expect("pool");
    world.apply(INFLATE).await.expect("inflate");
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    for pods in [100usize, 30] {
        world.scale(pods as u32).await.expect("scaled");
        world
            .wait_for("pods running", Duration::from_secs(60), || async {
                Ok(world.pods().await?.len() == pods && world.running().await? == pods)
            })
            .await
            .expect("running");
    }
    replica.shutdown().await;
    // Consolidation is due at once, and one node is pinned by its operator.
    world.apply(&pool.replace("consolidateAfter: 1m", "consolidateAfter: 0s")).await.expect("pool");
    let nodes = world.nodes().await.expect("nodes");
    let pinned = nodes[0].metadata.name.clone().expect("name");
    let annotate = serde_json::json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}});
    Api::<Node>::all(world.client.clone())
        .patch(&pinned, &PatchParams::default(), &Patch::Merge(annotate))
        .await
        .expect("pinned");

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    world.sim.as_ref().expect("simulator").write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kc = kubeconfig.display().to_string();
    let before = versions(&world.client).await;
    let (text_out, json_out, refused) = tokio::task::spawn_blocking(move || {
        (
            rafter(&["disrupt", "--dry-run", "--kubeconfig", &kc], None),
            rafter(&["disrupt", "--dry-run", "--json", "--kubeconfig", &kc], None),
            rafter(&["disrupt", "--kubeconfig", &kc], None),
        )
    })
    .await
    .expect("ran");
    let stdout = text(&text_out.stdout);
    assert!(text_out.status.success(), "{}\n{}", stdout, text(&text_out.stderr));
    assert!(stdout.starts_with("Would delete") || stdout.starts_with("Would replace"), "{stdout}");
    assert!(stdout.contains(&format!("{pinned} (nodeclaim ")), "{stdout}");
    assert!(stdout.contains(&format!("node {pinned} has karpenter.sh/do-not-disrupt")), "{stdout}");
    let decision: serde_json::Value = serde_json::from_slice(&json_out.stdout).expect("json");
    let named: Vec<&str> = decision["command"]["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|c| c["node"].as_str())
        .collect();
    assert!(!named.is_empty() && !named.contains(&pinned.as_str()), "{decision}");
    for node in &named {
        assert!(stdout.contains(&format!("node {node} (nodeclaim")), "text and JSON agree: {stdout}");
    }
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("only runs with --dry-run"), "{}", text(&refused.stderr));
    assert_eq!(versions(&world.client).await, before, "the dry run wrote nothing");
}

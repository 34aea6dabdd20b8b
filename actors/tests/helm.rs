//! The Helm chart (`deploy/helm/rafter`) installs, upgrades and uninstalls against the simulator API
//! server with helm itself, each step leaving exactly the objects it should; its CRDs are the
//! project's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/helm/rafter");

fn run(program: &str, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(program).args(args).env("KUBECONFIG", kubeconfig).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); ./scripts/test installs helm and kubectl when they are missing, or set HELM and KUBECTL")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn helm(kubeconfig: &Path, args: &[&str]) -> String {
    let program = std::env::var("HELM").unwrap_or_else(|_| "helm".to_string());
    let (ok, out) = run(&program, kubeconfig, args);
    assert!(ok, "helm {args:?} failed:\n{out}");
    out
}

/// `kind/namespace/name` of every object of the given resources, as kubectl lists them.
fn objects(kubeconfig: &Path, resources: &str) -> BTreeSet<String> {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let (ok, out) = run(&program, kubeconfig, &["get", resources, "--all-namespaces", "-o", "json"]);
    assert!(ok, "kubectl get {resources}: {out}");
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("-");
            format!(
                "{}/{ns}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

const CHART_KINDS: &str =
    "deployments,serviceaccounts,services,poddisruptionbudgets,clusterroles,clusterrolebindings,roles,rolebindings";

fn start_server(dir: &Path) -> (common::Server, PathBuf) {
    let kubeconfig = dir.join("kubeconfig");
    let (server, _) = common::sim_apiserver(&kubeconfig, &[]);
    (server, kubeconfig)
}

#[test]
fn helm_installs_upgrades_and_uninstalls_the_chart_leaving_exactly_the_expected_objects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, kc) = start_server(dir.path());
    let before = objects(&kc, CHART_KINDS);

    let out = helm(
        &kc,
        &["install", "rafter", CHART, "--namespace", "karpenter", "--create-namespace", "--set", "clusterName=demo"],
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    let installed: BTreeSet<String> = objects(&kc, CHART_KINDS).difference(&before).cloned().collect();
    let expected: BTreeSet<String> = [
        "Deployment/karpenter/rafter",
        "ServiceAccount/karpenter/rafter",
        "Service/karpenter/rafter",
        "PodDisruptionBudget/karpenter/rafter",
        "ClusterRole/-/rafter",
        "ClusterRoleBinding/-/rafter",
        "Role/karpenter/rafter",
        "RoleBinding/karpenter/rafter",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(installed, expected);
    // The chart's crds/ were installed by helm, and the release is recorded as helm records it.
    let crds = objects(&kc, "customresourcedefinitions");
    for crd in ["nodepools.karpenter.sh", "nodeclaims.karpenter.sh", "ec2nodeclasses.karpenter.k8s.aws"] {
        assert!(crds.contains(&format!("CustomResourceDefinition/-/{crd}")), "{crds:?}");
    }
    assert!(objects(&kc, "secrets").contains("Secret/karpenter/sh.helm.release.v1.rafter.v1"));
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let (_, replicas) =
        run(&program, &kc, &["-n", "karpenter", "get", "deployment", "rafter", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2");

    // An upgrade with changed values changes the objects it should and removes what it no longer renders.
    let out = helm(
        &kc,
        &[
            "upgrade",
            "rafter",
            CHART,
            "--namespace",
            "karpenter",
            "--set",
            "clusterName=demo",
            "--set",
            "replicas=3",
            "--set",
            "metrics.service.enabled=false",
            "--set",
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/RafterController-demo",
        ],
    );
    assert!(out.contains("REVISION: 2"), "{out}");
    let upgraded: BTreeSet<String> = objects(&kc, CHART_KINDS).difference(&before).cloned().collect();
    let mut without_service = expected.clone();
    without_service.remove("Service/karpenter/rafter");
    assert_eq!(upgraded, without_service);
    let (_, replicas) =
        run(&program, &kc, &["-n", "karpenter", "get", "deployment", "rafter", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "3");
    let (_, role) = run(
        &program,
        &kc,
        &[
            "-n",
            "karpenter",
            "get",
            "serviceaccount",
            "rafter",
            "-o",
            "jsonpath={.metadata.annotations.eks\\.amazonaws\\.com/role-arn}",
        ],
    );
    assert_eq!(role, "arn:aws:iam::111122223333:role/RafterController-demo");

    // A typo in values fails before anything is written.
    let program_helm = std::env::var("HELM").unwrap_or_else(|_| "helm".to_string());
    let (ok, out) = run(
        &program_helm,
        &kc,
        &["upgrade", "rafter", CHART, "--namespace", "karpenter", "--set", "clusterName=demo", "--set", "replica=3"],
    );
    assert!(!ok && out.contains("Additional property replica is not allowed"), "{out}");

    let out = helm(&kc, &["uninstall", "rafter", "--namespace", "karpenter"]);
    assert!(out.contains("uninstalled"), "{out}");
    let after: BTreeSet<String> = objects(&kc, CHART_KINDS).difference(&before).cloned().collect();
    assert!(after.is_empty(), "left behind: {after:?}");
    assert!(!objects(&kc, "secrets").iter().any(|s| s.contains("sh.helm.release")), "release records remain");
    // The Deployment's ReplicaSets and pods go with it (garbage collection by owner, which a real
    // cluster does shortly after).
    let started = std::time::Instant::now();
    loop {
        let pods = objects(&kc, "pods,replicasets");
        if !pods.iter().any(|p| p.contains("/karpenter/rafter")) {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "left behind: {pods:?}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // As with every chart, helm leaves CRDs in place on uninstall: deleting them would delete every
    // NodePool and NodeClaim.
    assert!(objects(&kc, "customresourcedefinitions").contains("CustomResourceDefinition/-/nodepools.karpenter.sh"));
}

#[test]
fn the_charts_crds_are_the_projects_crds_byte_for_byte() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds");
    let chart = format!("{CHART}/crds");
    let names = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(shipped),
        names(&chart),
        "the chart's crds/ must hold exactly deploy/crds/ (cp deploy/crds/*.yaml {chart}/)"
    );
    for name in names(shipped) {
        let a = std::fs::read(format!("{shipped}/{name}")).expect("shipped CRD");
        let b = std::fs::read(format!("{chart}/{name}")).expect("chart CRD");
        assert!(a == b, "{name} differs between deploy/crds and the chart: cp deploy/crds/{name} {chart}/crds/");
    }
}

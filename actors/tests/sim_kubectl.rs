//! `rafter sim apiserver` runs standalone and kubectl works against it: apply, scale, get, describe.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let output = Command::new(&program).args(args).env("KUBECONFIG", kubeconfig).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); ./scripts/test installs kubectl when it is missing, or set KUBECTL")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn until(what: &str, mut check: impl FnMut() -> Option<String>) -> String {
    let started = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kubectl_gets_and_describes_against_the_standalone_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let (_server, _) = common::sim_apiserver(&kubeconfig, &["--install-crds"]);
    assert!(kubeconfig.exists());

    let inflate = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/workloads/inflate.yaml");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", inflate]);
    assert!(ok, "kubectl apply: {out}");
    let pool = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/v1/nodepool-default.yaml");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", pool]);
    assert!(ok && out.contains("nodepool.karpenter.sh/default created"), "kubectl apply NodePool: {out}");
    let (ok, out) = kubectl(&kubeconfig, &["scale", "deployment", "inflate", "--replicas", "2"]);
    assert!(ok, "kubectl scale: {out}");

    let node = dir.path().join("node.yaml");
    std::fs::write(
        &node,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: ip-10-0-0-1.ec2.internal\n  labels:\n    node.kubernetes.io/instance-type: m5.large\nstatus:\n  conditions:\n  - type: Ready\n    status: \"True\"\n  nodeInfo:\n    kubeletVersion: v1.33.0\n",
    )
    .expect("node manifest");
    let (ok, out) = kubectl(&kubeconfig, &["create", "-f", node.to_str().expect("utf-8 path")]);
    assert!(ok, "kubectl create node: {out}");

    let listing = until("two inflate pods are listed", || {
        let (ok, out) = kubectl(&kubeconfig, &["get", "nodes,pods"]);
        (ok && out.matches("inflate-").count() == 2).then_some(out)
    });
    assert!(listing.contains("NAME") && listing.contains("READY") && listing.contains("STATUS"), "{listing}");
    assert!(listing.contains("Pending"), "{listing}");
    let node_line =
        listing.lines().find(|l| l.starts_with("node/ip-10-0-0-1.ec2.internal")).expect("the node is listed");
    assert!(node_line.contains("Ready") && node_line.contains("v1.33.0"), "{listing}");
    let pod = listing
        .lines()
        .find_map(|l| l.split_whitespace().next().filter(|n| n.starts_with("pod/inflate-")))
        .expect("a pod line")
        .to_string();

    let described = until("the pod's FailedScheduling event shows", || {
        let (ok, out) = kubectl(&kubeconfig, &["describe", &pod]);
        (ok && out.contains("FailedScheduling")).then_some(out)
    });
    assert!(described.contains("Controlled By:  ReplicaSet/inflate-"), "{described}");
    assert!(described.contains("cpu:        100m"), "{described}");
    assert!(described.contains("nodes are available"), "{described}");

    let (ok, out) = kubectl(&kubeconfig, &["get", "nodepools"]);
    assert!(ok && out.contains("default"), "{out}");
    let (ok, out) = kubectl(&kubeconfig, &["get", "pod", "missing"]);
    assert!(!ok && out.contains("NotFound"), "{out}");

    // OpenAPI v3 from the CRD schemas, as kube-apiserver serves it.
    let (ok, out) = kubectl(&kubeconfig, &["explain", "nodepool.spec.disruption"]);
    assert!(ok && out.contains("consolidationPolicy") && out.contains("WhenEmptyOrUnderutilized"), "{out}");
    // kubectl asks for Strict field validation; a typo is refused, naming the field.
    let typo = std::fs::read_to_string(pool)
        .expect("pool")
        .replace("consolidateAfter: 1m", "consolidateAftr: 1m")
        .replace("name: default", "name: typo");
    let typo_file = dir.path().join("typo.yaml");
    std::fs::write(&typo_file, typo).expect("typo manifest");
    let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", typo_file.to_str().expect("utf-8 path")]);
    assert!(!ok && out.contains(r#"strict decoding error: unknown field "spec.disruption.consolidateAftr""#), "{out}");
}

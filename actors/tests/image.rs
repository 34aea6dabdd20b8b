//! The binary runs as the image runs it: UID 65532, every mount read-only but a fresh `/tmp`, no
//! capabilities and no new privileges — and still leads, serves `/healthz` and `/readyz`, and
//! writes NodePool status. (The image itself cannot be built here: there is no registry.)
//!
//! The sandbox is a private mount namespace (`unshare`, util-linux) with every mount remounted
//! read-only and the identity dropped by `setpriv`; the test runs as root, as CI does.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The script the sandbox runs: remount every mount read-only, give it an empty `/tmp`, then
/// become 65532 with no capabilities and exec the binary.
const SANDBOX: &str = r#"
set -e
# The binary and kubeconfig, wherever the checkout is (under /tmp too), at /mnt.
mount --bind "$1" /mnt
shift
awk '$3 !~ /^(proc|sysfs|devtmpfs|devpts|mqueue|cgroup2?|securityfs|debugfs|tracefs|fusectl|bpf|pstore|configfs|hugetlbfs)$/ {print $2}' /proc/self/mounts \
  | while read -r m; do mount -o bind,remount,ro "$m" 2>/dev/null || true; done
mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp
if touch /rafter-probe 2>/dev/null; then echo "root filesystem is writable" >&2; exit 97; fi
exec setpriv --reuid 65532 --regid 65532 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs "$@"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_leads_as_uid_65532_with_a_read_only_root_and_only_tmp_writable() {
    // The binary and the kubeconfig, readable by 65532; the sandbox sees this folder at /mnt
    // (its /tmp is a fresh one, and the checkout may be under /tmp).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(env!("CARGO_BIN_EXE_rafter"), dir.join("rafter")).expect("the binary copied");
    let kubeconfig = dir.join("kubeconfig");
    let (_server, _) = common::sim_apiserver(&kubeconfig, &["--install-crds"]);
    let config = rafter_actors::world::kubeconfig(&kubeconfig, None).await.expect("kubeconfig");
    let client = kube::Client::try_from(config).expect("client");
    let namespace = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "karpenter"}}"#;
    rafter_actors::world::apply(&client, namespace).await.expect("namespace");
    rafter_actors::world::apply(&client, rafter_actors::world::NODEPOOL_DEFAULT).await.expect("pool");

    let metrics = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("run.log")).expect("log");
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox"])
        .arg(&dir)
        .arg("/mnt/rafter")
        .args(["run", "--cloud", "fake", "--cluster-name", "image-test", "--identity", "rafter-image"])
        .args(["--kubeconfig", "/mnt/kubeconfig"])
        .args(["--metrics-addr", &metrics])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("unshare starts (util-linux)");
    let pid = child.id();
    let controller = Killed(child);
    let output = || std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();

    let started = Instant::now();
    loop {
        if let Some((200, _)) = http_get(&metrics, "/readyz") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready; its log:\n{}", output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(&metrics, "/healthz").map(|(c, _)| c), Some(200));
    // It is the binary itself (unshare, sh and setpriv exec'd into it), running as 65532.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its /proc status");
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(field("Name:").contains("rafter"), "{status}");
    assert_eq!(field("Uid:").split_whitespace().skip(1).collect::<Vec<_>>(), ["65532"; 4], "{status}");
    assert_eq!(field("CapEff:").split_whitespace().nth(1), Some("0000000000000000"), "{status}");
    assert_eq!(field("NoNewPrivs:").split_whitespace().nth(1), Some("1"), "{status}");

    // It leads and writes: the NodePool's status appears.
    let pools: kube::Api<rafter::api::NodePool> = kube::Api::all(client.clone());
    let started = Instant::now();
    loop {
        let pool = pools.get("default").await.expect("pool");
        if pool.status.as_ref().is_some_and(|s| s.resources.contains_key("nodes")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no NodePool status; its log:\n{}", output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!output().contains("Read-only file system"), "it tried to write outside /tmp:\n{}", output());
    drop(controller);
    let _ = std::fs::remove_dir_all(&dir);
}

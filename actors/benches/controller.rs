//! Controller benchmarks, release mode, JSON on stdout. `cargo bench -p rafter-actors --bench controller`
//!
//! - decision latency: a pending pod observed → the cloud's create called, minus the batch idle
//!   window, for 1,000 and 10,000 inflate pods (in process: simulator, components, one replica);
//! - controller RSS watching 20,000 pods and 4,000 nodes (`rafter run` as its own process against
//!   `rafter sim apiserver`);
//! - failover time after SIGKILL and after SIGTERM (two `rafter run` processes, default lease
//!   timings 15 s / 10 s / 2 s).
//!
//! BENCH_RUNS (default 3) repeats the latency runs; the median is reported.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use rafter_actors::timeline::Mark;
use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn decision_latency(pods: u32) -> f64 {
    let world = World::start(WorldConfig::default()).await.expect("world");
    world.apply(NODEPOOL_DEFAULT).await.expect("pool");
    world.apply(INFLATE).await.expect("inflate");
    let config = world.config("bench");
    let idle = config.batch_idle;
    let replica = world.replica(config).await.expect("replica");
    world.wait_for("leads", Duration::from_secs(30), || async { Ok(replica.is_leader()) }).await.expect("leads");
    world.scale(pods).await.expect("scale");
    let timeline = replica.ctx.timeline.clone();
    world
        .wait_for("first create", Duration::from_secs(120), || {
            let t = timeline.clone();
            async move { Ok(t.first(|m| matches!(m, Mark::CreateCalled { .. })).is_some()) }
        })
        .await
        .expect("create called");
    let (created, _) = timeline.first(|m| matches!(m, Mark::CreateCalled { .. })).expect("create");
    let (closed, _) = timeline.first(|m| matches!(m, Mark::BatchClosed { .. })).expect("batch");
    let (_, last_seen) = timeline.pods_seen();
    let last_seen = last_seen.expect("pods seen").min(closed);
    let latency = created.saturating_duration_since(last_seen).saturating_sub(idle);
    replica.kill();
    latency.as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which is in parentheses and may hold spaces): utime is the 12th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<f64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    (fields.get(11).copied().unwrap_or(0.0) + fields.get(12).copied().unwrap_or(0.0)) / 100.0
}

struct Server {
    child: Child,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn sim_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafter"))
        .args(["sim", "apiserver", "--api-only", "--install-crds", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim apiserver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("url");
    Server { child, kubeconfig, _dir: dir }
}

fn controller(server: &Server, identity: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rafter"))
        .args(["run", "--cloud", "fake", "--cluster-name", "bench", "--namespace", "default", "--identity", identity])
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rafter run")
}

fn wait(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn leads(port: u16) -> bool {
    get(port, "/metrics").is_some_and(|(_, body)| body.lines().any(|l| l == "rafter_leader 1"))
}

async fn populate(server: &Server, nodes: usize, pods: usize) {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
    config.default_retry = false;
    let client = kube::Client::try_from(config).expect("client");
    let node_api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..nodes)
        .for_each_concurrent(32, |i| {
            let api = node_api.clone();
            async move {
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": format!("node-{i}"), "labels": {"karpenter.sh/nodepool": "default", "kubernetes.io/hostname": format!("node-{i}")}},
                    "spec": {"providerID": format!("aws:///us-east-1a/i-{i:017x}")},
                    "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"}, "allocatable": {"cpu": "7910m", "memory": "29Gi", "pods": "110"},
                               "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .expect("node");
                api.create(&PostParams::default(), &node).await.expect("node created");
            }
        })
        .await;
    let pod_api: Api<Pod> = Api::namespaced(client, "default");
    futures::stream::iter(0..pods)
        .for_each_concurrent(32, |i| {
            let api = pod_api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench", "pod-template-hash": "abc"}},
                    "spec": {"nodeName": format!("node-{}", i % nodes.max(1)), "containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]}
                }))
                .expect("pod");
                api.create(&PostParams::default(), &pod).await.expect("pod created");
            }
        })
        .await;
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut report = serde_json::Map::new();

    for pods in [1_000u32, 10_000] {
        let samples: Vec<f64> = (0..runs).map(|_| runtime.block_on(decision_latency(pods))).collect();
        eprintln!("decision latency, {pods} pods: {samples:?} s");
        report
            .insert(format!("decision_latency_s_{pods}"), json!({"median": median(samples.clone()), "runs": samples}));
    }

    // RSS of a controller process watching 20,000 pods and 4,000 nodes.
    let server = sim_server();
    runtime.block_on(populate(&server, 4_000, 20_000));
    let port = free_port();
    let mut c = controller(&server, "rss", port);
    let synced = wait(Duration::from_secs(120), || get(port, "/readyz").is_some_and(|(code, _)| code == 200));
    let startup_cpu = cpu_seconds(c.id());
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = (rss_kib(c.id(), "VmRSS:"), rss_kib(c.id(), "VmHWM:"));
    // Steady state: leading, watching, reconciling every period, nothing pending.
    let before = cpu_seconds(c.id());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cores = (cpu_seconds(c.id()) - before) / 10.0;
    eprintln!(
        "controller RSS watching 20,000 pods and 4,000 nodes: {rss} KiB (peak {hwm} KiB), synced in {synced:?}; CPU {startup_cpu:.2} s to sync, then {idle_cores:.3} cores"
    );
    report.insert(
        "controller_rss_kib".into(),
        json!({"rss": rss, "peak": hwm, "sync_s": synced.map(|d| d.as_secs_f64()),
            "startup_cpu_s": startup_cpu, "steady_cores": idle_cores}),
    );
    let _ = c.kill();
    let _ = c.wait();

    // Failover between two controller processes.
    for signal in ["KILL", "TERM"] {
        let (pa, pb) = (free_port(), free_port());
        let mut a = controller(&server, &format!("a-{signal}"), pa);
        wait(Duration::from_secs(60), || leads(pa)).expect("a leads");
        let mut b = controller(&server, &format!("b-{signal}"), pb);
        wait(Duration::from_secs(60), || get(pb, "/readyz").is_some_and(|(code, _)| code == 200)).expect("b ready");
        let _ = Command::new("kill").args([format!("-{signal}"), a.id().to_string()]).status();
        let took = wait(Duration::from_secs(60), || leads(pb)).expect("b leads");
        eprintln!("failover after SIG{signal}: {:.2} s", took.as_secs_f64());
        report.insert(format!("failover_s_sig{}", signal.to_lowercase()), json!(took.as_secs_f64()));
        let _ = a.wait();
        let _ = b.kill();
        let _ = b.wait();
    }
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(report)).unwrap_or_default());
}

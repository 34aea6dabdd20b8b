//! The conformance suite: kube-rs drives the API server exactly as Rafter's actors will. Every test runs
//! against the simulator, and also against a real API server when `KUBECONFIG` is set (each test works
//! in a namespace of its own and removes it). Tests that need fault injection run on the simulator only.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use rafter_sim::Simulator;
use serde_json::{Value, json};

/// Where a test runs: the simulator (always) or a real API server.
struct Target {
    client: Client,
    sim: Option<Simulator>,
    namespace: String,
}

impl Target {
    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.namespace, &DeleteParams::default()).await;
    }
}

async fn targets(name: &str) -> Vec<Target> {
    let mut out = Vec::new();
    let sim = Simulator::start().await.expect("simulator starts");
    out.push(Target { client: sim.client(), sim: Some(sim), namespace: name.to_string() });
    if std::env::var_os("KUBECONFIG").is_some() {
        let mut config = kube::Config::infer().await.expect("KUBECONFIG names a cluster");
        config.default_retry = false;
        let client = Client::try_from(config).expect("client");
        let suffix = std::process::id();
        out.push(Target { client, sim: None, namespace: format!("{name}-{suffix}") });
    }
    for t in &out {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": t.namespace}})).expect("namespace");
        Api::<Namespace>::all(t.client.clone()).create(&PostParams::default(), &ns).await.expect("namespace created");
    }
    out
}

fn code(error: &kube::Error) -> u16 {
    match error {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other}"),
    }
}

fn reason(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.reason.clone(),
        other => panic!("expected an API error, got {other}"),
    }
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}))
        .expect("config map")
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "public.ecr.aws/eks-distro/kubernetes/pause:3.2"}], "terminationGracePeriodSeconds": 0}
    }))
    .expect("pod")
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_and_list_with_selectors_and_pages() {
    for t in targets("conf-list").await {
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
        for i in 0..25 {
            let tier = if i % 2 == 0 { "web" } else { "db" };
            api.create(&PostParams::default(), &config_map(&format!("cm-{i:02}"), &[("app", "conf"), ("tier", tier)]))
                .await
                .expect("created");
        }
        let err = api.create(&PostParams::default(), &config_map("cm-00", &[])).await.expect_err("duplicate");
        assert_eq!((code(&err), reason(&err).as_str()), (409, "AlreadyExists"));
        let err = api.get("missing").await.expect_err("missing");
        assert_eq!((code(&err), reason(&err).as_str()), (404, "NotFound"));
        let web = api.list(&ListParams::default().labels("app=conf,tier in (web)")).await.expect("lists");
        assert_eq!(web.items.len(), 13);
        let not_web = api.list(&ListParams::default().labels("tier notin (web),app")).await.expect("lists");
        assert_eq!(not_web.items.len(), 12);
        let one = api.list(&ListParams::default().fields("metadata.name=cm-07")).await.expect("lists");
        assert_eq!(one.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(), vec!["cm-07"]);
        let mut names = Vec::new();
        let mut params = ListParams::default().labels("app=conf").limit(10);
        let mut pages = 0;
        let mut first_rv = None;
        loop {
            let page = api.list(&params).await.expect("page");
            pages += 1;
            first_rv.get_or_insert(page.metadata.resource_version.clone());
            if pages == 1 {
                // A write between pages must not show up in the pages of the first list.
                api.create(&PostParams::default(), &config_map("cm-zz", &[("app", "conf")])).await.expect("created");
            }
            names.extend(page.items.iter().map(|c| c.name_any()));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(names.len(), 25, "the pages are one consistent snapshot: {names:?}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_converges_through_relists_dropped_watches_and_410s() {
    for t in targets("conf-reflector").await {
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
        // Only this test's maps: a real namespace also holds kube-controller-manager's kube-root-ca.crt.
        let mine = [("suite", "reflector")];
        for i in 0..5 {
            api.create(&PostParams::default(), &config_map(&format!("before-{i}"), &mine)).await.expect("created");
        }
        let (reader, writer) = reflector::store();
        let config = watcher::Config::default().page_size(2).labels("suite=reflector");
        let stream = reflector(writer, watcher(api.clone(), config)).applied_objects();
        let task = tokio::spawn(stream.for_each(|_| async {}));
        reader.wait_until_ready().await.expect("cache syncs");
        assert_eq!(reader.len(), 5);
        let mut expected: std::collections::BTreeSet<String> = (0..5).map(|i| format!("before-{i}")).collect();
        for round in 0..3 {
            for i in 0..4 {
                api.create(&PostParams::default(), &config_map(&format!("r{round}-{i}"), &mine))
                    .await
                    .expect("created");
                expected.insert(format!("r{round}-{i}"));
            }
            api.delete(&format!("r{round}-0"), &DeleteParams::default()).await.expect("deleted");
            expected.remove(&format!("r{round}-0"));
            if let Some(sim) = &t.sim {
                match round {
                    0 => sim.faults().drop_watches(),
                    1 => {
                        // Forget the history so the watcher's resume gets 410 Gone and it relists.
                        sim.faults().drop_watches();
                        sim.state().store.compact(&(String::new(), "configmaps".to_string()));
                    }
                    _ => {}
                }
            }
            // Compare names, not counts: a lagging cache can hold a deleted map and miss a new one
            // and still have the right length.
            let want = expected.clone();
            eventually("the cache holds exactly the live config maps", || {
                let reader = reader.clone();
                let want = want.clone();
                async move { reader.state().iter().map(|c| c.name_any()).collect::<std::collections::BTreeSet<_>>() == want }
            })
            .await;
        }
        let mut cached: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
        let live = api.list(&ListParams::default().labels("suite=reflector")).await.expect("lists");
        let mut live: Vec<String> = live.items.iter().map(|c| c.name_any()).collect();
        cached.sort();
        live.sort();
        assert_eq!(cached, live);
        task.abort();
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_taken_by_exactly_one_of_two_racing_candidates() {
    for t in targets("conf-lease").await {
        let api: Api<Lease> = Api::namespaced(t.client.clone(), &t.namespace);
        let lease: Lease = serde_json::from_value(
            json!({"metadata": {"name": "rafter-leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}),
        )
        .expect("lease");
        api.create(&PostParams::default(), &lease).await.expect("created");
        let seen = api.get("rafter-leader").await.expect("read");
        let mut wins = 0;
        let mut conflicts = 0;
        for holder in ["b", "c"] {
            let mut attempt = seen.clone();
            attempt.spec.get_or_insert_default().holder_identity = Some(holder.to_string());
            match api.replace("rafter-leader", &PostParams::default(), &attempt).await {
                Ok(_) => wins += 1,
                Err(e) => {
                    assert_eq!(code(&e), 409, "a stale resourceVersion conflicts");
                    conflicts += 1;
                }
            }
        }
        assert_eq!((wins, conflicts), (1, 1));
        let now = api.get("rafter-leader").await.expect("read");
        assert_eq!(now.spec.and_then(|s| s.holder_identity).as_deref(), Some("b"));
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_a_deleted_object_until_they_are_removed() {
    for t in targets("conf-finalizer").await {
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
        let mut cm = config_map("held", &[]);
        cm.metadata.finalizers = Some(vec!["karpenter.sh/termination".into()]);
        api.create(&PostParams::default(), &cm).await.expect("created");
        let mut events =
            api.watch(&WatchParams::default().fields("metadata.name=held"), "0").await.expect("watch").boxed();
        assert!(matches!(events.try_next().await.expect("event"), Some(WatchEvent::Added(_))));
        api.delete("held", &DeleteParams::default()).await.expect("delete accepted");
        let held = api.get("held").await.expect("still there");
        assert!(held.metadata.deletion_timestamp.is_some());
        match events.try_next().await.expect("event") {
            Some(WatchEvent::Modified(cm)) => assert!(cm.metadata.deletion_timestamp.is_some()),
            other => panic!("expected MODIFIED with a deletionTimestamp, got {other:?}"),
        }
        let err = api
            .patch(
                "held",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": ["karpenter.sh/termination", "new"]}})),
            )
            .await
            .expect_err("no new finalizers on a terminating object");
        assert_eq!(code(&err), 422);
        api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
            .await
            .expect("patched");
        loop {
            match events.try_next().await.expect("event") {
                Some(WatchEvent::Deleted(_)) => break,
                Some(WatchEvent::Modified(_) | WatchEvent::Bookmark(_)) => continue,
                other => panic!("expected DELETED, got {other:?}"),
            }
        }
        assert_eq!(code(&api.get("held").await.expect_err("gone")), 404);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_sets_the_node_once() {
    for t in targets("conf-binding").await {
        let api: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
        api.create(&PostParams::default(), &pod("web", json!({"app": "web"}))).await.expect("created");
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}});
        let _: Value = api.create_subresource("binding", "web", &PostParams::default(), &binding).await.expect("bound");
        let bound = api.get("web").await.expect("read");
        assert_eq!(bound.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("node-a"));
        let err = api
            .create_subresource::<_, Value>("binding", "web", &PostParams::default(), &binding)
            .await
            .expect_err("bound twice");
        assert_eq!(code(&err), 409);
        let bound_elsewhere = api
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeName": "node-b"}})))
            .await
            .expect_err("immutable");
        assert_eq!(code(&bound_elsewhere), 422);
        t.cleanup().await;
    }
}

async fn make_running(api: &Api<Pod>, name: &str) {
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.expect("status patched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_respects_a_pod_disruption_budget() {
    for t in targets("conf-eviction").await {
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(t.client.clone(), &t.namespace);
        for name in ["a", "b"] {
            pods.create(&PostParams::default(), &pod(name, json!({"app": "guarded"}))).await.expect("created");
            make_running(&pods, name).await;
        }
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "guard"}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}})).expect("pdb");
        pdbs.create(&PostParams::default(), &pdb).await.expect("created");
        if t.sim.is_none() {
            eventually("the disruption controller has seen the budget", || {
                let pdbs = pdbs.clone();
                async move {
                    pdbs.get("guard").await.ok().and_then(|p| p.status).is_some_and(|s| s.observed_generation.is_some())
                }
            })
            .await;
        }
        let err = pods.evict("a", &EvictParams::default()).await.expect_err("the budget forbids it");
        assert_eq!((code(&err), reason(&err).as_str()), (429, "TooManyRequests"));
        pods.create(&PostParams::default(), &pod("c", json!({"app": "guarded"}))).await.expect("created");
        make_running(&pods, "c").await;
        eventually("the eviction is allowed with a third healthy pod", || {
            let pods = pods.clone();
            async move { pods.evict("a", &EvictParams::default()).await.is_ok() }
        })
        .await;
        eventually("the evicted pod is gone", || {
            let pods = pods.clone();
            async move { pods.get_opt("a").await.ok().flatten().is_none() }
        })
        .await;
        let unguarded = pod("free", json!({"app": "other"}));
        pods.create(&PostParams::default(), &unguarded).await.expect("created");
        pods.evict("free", &EvictParams::default()).await.expect("no budget covers it");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patch_type_applies() {
    for t in targets("conf-patch").await {
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
        pods.create(&PostParams::default(), &pod("p", json!({"a": "1"}))).await.expect("created");
        let merged = pods
            .patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"b": "2", "a": null}}})))
            .await
            .expect("merge");
        assert_eq!(merged.labels().clone(), BTreeMap::from([("b".to_string(), "2".to_string())]));
        let ops: json_patch::Patch = serde_json::from_value(json!([{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}, {"op": "test", "path": "/metadata/name", "value": "p"}])).expect("ops");
        let patched = pods.patch("p", &PatchParams::default(), &Patch::Json::<()>(ops)).await.expect("json patch");
        assert_eq!(patched.annotations().get("x").map(String::as_str), Some("y"));
        let failing: json_patch::Patch =
            serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}])).expect("ops");
        assert!(pods.patch("p", &PatchParams::default(), &Patch::Json::<()>(failing)).await.is_err());
        let smp =
            json!({"spec": {"containers": [{"name": "c", "image": "public.ecr.aws/eks-distro/kubernetes/pause:3.9"}]}});
        let patched = pods.patch("p", &PatchParams::default(), &Patch::Strategic(smp)).await.expect("strategic");
        let containers = patched.spec.expect("spec").containers;
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0].image.as_deref(), Some("public.ecr.aws/eks-distro/kubernetes/pause:3.9"));
        let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/0 nodes are available"}]}});
        let patched =
            pods.patch_status("p", &PatchParams::default(), &Patch::Strategic(status)).await.expect("status patch");
        let conditions = patched.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(conditions.iter().any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")));

        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"size": "1", "owner": "alice"}});
        cms.patch("applied", &PatchParams::apply("alice"), &Patch::Apply(&applied)).await.expect("apply creates");
        let bob =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"size": "2"}});
        let err = cms.patch("applied", &PatchParams::apply("bob"), &Patch::Apply(&bob)).await.expect_err("conflict");
        assert_eq!(code(&err), 409);
        let forced =
            cms.patch("applied", &PatchParams::apply("bob").force(), &Patch::Apply(&bob)).await.expect("forced");
        assert_eq!(forced.data.as_ref().and_then(|d| d.get("size")).map(String::as_str), Some("2"));
        let alice_drops_owner =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {}});
        let after =
            cms.patch("applied", &PatchParams::apply("alice"), &Patch::Apply(&alice_drops_owner)).await.expect("apply");
        let data = after.data.unwrap_or_default();
        assert_eq!(data.get("owner"), None, "a field its only manager stops applying is removed");
        assert_eq!(data.get("size").map(String::as_str), Some("2"), "bob still owns size");
        let managers: Vec<String> =
            after.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
        assert!(managers.contains(&"bob".to_string()), "{managers:?}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_only_through_the_status_subresource() {
    for t in targets("conf-status").await {
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
        pods.create(&PostParams::default(), &pod("p", json!({}))).await.expect("created");
        let ignored = pods
            .patch("p", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}})))
            .await
            .expect("accepted");
        assert_eq!(ignored.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
        let changed = pods
            .patch_status("p", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}})))
            .await
            .expect("status");
        assert_eq!(changed.status.and_then(|s| s.phase).as_deref(), Some("Running"));
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_collects_its_dependents() {
    for t in targets("conf-gc").await {
        // The owner is a kind no controller manages: on a real cluster a ReplicaSet's controller
        // would release pods its selector does not match before the garbage collector saw them.
        let maps: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
        let owner = maps.create(&PostParams::default(), &config_map("owner", &[])).await.expect("created");
        let owner =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid(), "controller": true}]);
        for name in ["owned-1", "owned-2"] {
            let mut p = pod(name, json!({"app": "gc-owned"}));
            p.metadata.owner_references = serde_json::from_value(owner.clone()).expect("refs");
            pods.create(&PostParams::default(), &p).await.expect("created");
        }
        pods.create(&PostParams::default(), &pod("free", json!({"app": "gc-owned"}))).await.expect("created");
        maps.delete("owner", &DeleteParams::background()).await.expect("deleted");
        eventually("the owned pods are collected", || {
            let pods = pods.clone();
            async move {
                let names: Vec<String> = pods
                    .list(&ListParams::default().labels("app=gc-owned"))
                    .await
                    .map(|l| l.items.iter().map(|p| p.name_any()).collect())
                    .unwrap_or_default();
                names == vec!["free".to_string()]
            }
        })
        .await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_install_and_serve_rafters_kinds_with_validation() {
    for t in targets("conf-crd").await {
        let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
        install_rafter_crds(&t).await;
        eventually("the CRDs are established", || {
            let crds = crds.clone();
            async move {
                let list = crds.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
                rafter::api::crds::all().iter().all(|(_, want)| {
                    list.iter().any(|c| {
                        c.name_any() == want.name_any()
                            && c.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
                    })
                })
            }
        })
        .await;
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/v1/nodepool-default.yaml"
        ))
        .expect("example");
        let docs = rafter::api::manifest::parse_documents(&text).expect("parses");
        let mut pool = docs
            .iter()
            .find_map(|d| match &d.object {
                rafter::api::manifest::Object::NodePool(p) => Some((**p).clone()),
                _ => None,
            })
            .expect("a NodePool");
        pool.metadata.name = Some(format!("{}-pool", t.namespace));
        let pools: Api<rafter::api::nodepool::NodePool> = Api::all(t.client.clone());
        let created = pools.create(&PostParams::default(), &pool).await.expect("the example NodePool is accepted");
        assert_eq!(created.spec, pool.spec);
        let mut bad = serde_json::to_value(&pool).expect("json");
        bad["metadata"] = json!({"name": format!("{}-bad", t.namespace)});
        bad["spec"]["template"]["spec"]["requirements"][0]["operator"] = json!("Sometimes");
        let err = t
            .client
            .request::<Value>(
                http::Request::post("/apis/karpenter.sh/v1/nodepools")
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&bad).expect("bytes"))
                    .expect("request"),
            )
            .await
            .expect_err("an unknown operator is refused");
        assert_eq!(code(&err), 422);
        if let kube::Error::Api(status) = &err {
            assert!(status.message.contains("spec.template.spec.requirements[0].operator"), "{}", status.message);
        }
        let listed = pools.list(&ListParams::default()).await.expect("lists");
        assert!(listed.items.iter().any(|p| p.name_any() == pool.name_any()));
        pools.delete(&pool.name_any(), &DeleteParams::default()).await.expect("deleted");
        if t.sim.is_some() {
            let crd_name = "nodepools.karpenter.sh";
            crds.delete(crd_name, &DeleteParams::default()).await.expect("CRD deleted");
            let err = pools.list(&ListParams::default()).await.expect_err("no longer served");
            assert_eq!(code(&err), 404);
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_send_bookmarks_and_end_at_their_timeout() {
    for t in targets("conf-watch").await {
        let api: Api<ConfigMap> = Api::namespaced(t.client.clone(), &t.namespace);
        let created = api.create(&PostParams::default(), &config_map("w", &[])).await.expect("created");
        let rv = created.resource_version().expect("rv");
        let params = WatchParams::default().timeout(if t.sim.is_some() { 3 } else { 5 });
        let mut events = api.watch(&params, &rv).await.expect("watch").boxed();
        api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "changed"}})))
            .await
            .expect("patched");
        let mut modified = false;
        let mut ended = false;
        let started = std::time::Instant::now();
        while let Some(event) = events.try_next().await.expect("event") {
            match event {
                WatchEvent::Modified(cm) => {
                    assert_eq!(cm.data.and_then(|d| d.get("k").cloned()).as_deref(), Some("changed"));
                    modified = true;
                }
                WatchEvent::Bookmark(b) => assert!(!b.metadata.resource_version.is_empty()),
                other => panic!("unexpected {other:?}"),
            }
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        if started.elapsed() < Duration::from_secs(30) {
            ended = true;
        }
        assert!(modified && ended);
        t.cleanup().await;
    }
}

async fn install_rafter_crds(t: &Target) {
    let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
    for (_, crd) in rafter::api::crds::all() {
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(e) if code(&e) == 409 => {}
            Err(e) => panic!("CRD {} refused: {e}", crd.name_any()),
        }
    }
    eventually("the CRDs serve their kinds", || {
        let client = t.client.clone();
        async move {
            let pools: Api<rafter::api::nodepool::NodePool> = Api::all(client.clone());
            let classes: Api<rafter::api::ec2nodeclass::EC2NodeClass> = Api::all(client);
            pools.list(&ListParams::default()).await.is_ok() && classes.list(&ListParams::default()).await.is_ok()
        }
    })
    .await;
}

fn example(kind: &str) -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/v1/nodepool-default.yaml"))
            .expect("example");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parses");
    docs.into_iter().find(|d| d["kind"] == json!(kind)).expect("the example has the kind")
}

/// The six mistakes the README lists, each with the `field: message` kube-apiserver answers.
fn documented_mistakes() -> Vec<(&'static str, Value, &'static str)> {
    let mut in_without_values = example("NodePool");
    in_without_values["spec"]["template"]["spec"]["requirements"][0] =
        json!({"key": "karpenter.sh/capacity-type", "operator": "In"});
    let mut hostname = example("NodePool");
    hostname["spec"]["template"]["spec"]["requirements"][0] =
        json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]});
    let mut gt_not_integer = example("NodePool");
    gt_not_integer["spec"]["template"]["spec"]["requirements"][3]["values"] = json!(["four"]);
    let mut schedule_alone = example("NodePool");
    schedule_alone["spec"]["disruption"]["budgets"] = json!([{"nodes": "0", "schedule": "0 9 * * mon-fri"}]);
    let mut role_and_profile = example("EC2NodeClass");
    role_and_profile["spec"]["instanceProfile"] = json!("KarpenterNodeInstanceProfile");
    let mut owned_tag = example("EC2NodeClass");
    owned_tag["spec"]["tags"] = json!({"kubernetes.io/cluster/demo": "owned"});
    vec![
        (
            "nodepools",
            in_without_values,
            "spec.template.spec.requirements[0].values: Required value: operator In needs at least one value",
        ),
        (
            "nodepools",
            hostname,
            "spec.template.spec.requirements[0].key: Invalid value: \"string\": kubernetes.io/hostname is chosen per node and cannot be required by a pool",
        ),
        (
            "nodepools",
            gt_not_integer,
            "spec.template.spec.requirements[3].values: Invalid value: \"object\": operators Gt and Lt take exactly one non-negative integer value",
        ),
        (
            "nodepools",
            schedule_alone,
            "spec.disruption.budgets[0].duration: Invalid value: \"object\": schedule and duration must be given together",
        ),
        (
            "ec2nodeclasses",
            role_and_profile,
            "spec.role: Invalid value: \"object\": give exactly one of role and instanceProfile",
        ),
        (
            "ec2nodeclasses",
            owned_tag,
            "spec.tags: Invalid value: \"object\": tags starting with kubernetes.io/cluster/ are set by Rafter",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_mistakes_are_refused_with_messages_that_name_their_fields() {
    for t in targets("conf-mistakes").await {
        install_rafter_crds(&t).await;
        for (i, (plural, mut object, want)) in documented_mistakes().into_iter().enumerate() {
            object["metadata"] = json!({"name": format!("{}-{i}", t.namespace)});
            let group = if plural == "nodepools" { "karpenter.sh" } else { "karpenter.k8s.aws" };
            let err = t
                .client
                .request::<Value>(
                    http::Request::post(format!("/apis/{group}/v1/{plural}"))
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&object).expect("bytes"))
                        .expect("request"),
                )
                .await
                .expect_err("the mistake is refused");
            let kube::Error::Api(status) = &err else { panic!("expected an API error, got {err}") };
            assert_eq!(status.code, 422, "{}", status.message);
            assert!(status.message.contains(want), "case {i}: wanted {want:?} in {:?}", status.message);
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_whose_rules_cost_too_much_is_refused_as_kube_apiserver_refuses_it() {
    for t in targets("conf-cel-cost").await {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": "costlies.example.rafter.dev"},
            "spec": {
                "group": "example.rafter.dev",
                "names": {"plural": "costlies", "singular": "costly", "kind": "Costly", "listKind": "CostlyList"},
                "scope": "Cluster",
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object", "properties": {"items": {
                        "type": "array",
                        "items": {"type": "object", "required": ["key"], "properties": {
                            "key": {"type": "string", "x-kubernetes-validations": [
                                {"rule": "self.matches('^([^/]*\\\\.)?(kubernetes\\\\.io|k8s\\\\.io|karpenter\\\\.sh)/')", "message": "restricted"}
                            ]}
                        }}
                    }}}}
                }}}]
            }
        }))
        .expect("a CRD");
        let crds: Api<CustomResourceDefinition> = Api::all(t.client.clone());
        let err = crds.create(&PostParams::default(), &crd).await.expect_err("an unbounded rule is refused");
        let kube::Error::Api(status) = &err else { panic!("expected an API error, got {err}") };
        assert_eq!(status.code, 422, "{}", status.message);
        for want in [
            "spec.validation.openAPIV3Schema.properties[spec].properties[items].items.properties[key].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
            "spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x",
        ] {
            assert!(status.message.contains(want), "wanted {want:?} in {:?}", status.message);
        }
        assert!(crds.get_opt("costlies.example.rafter.dev").await.expect("reads").is_none(), "nothing stored");
        t.cleanup().await;
    }
}

/// Sends a raw request and returns the status, the `Warning` headers and the body.
async fn send(client: &Client, method: &str, uri: &str, body: &Value) -> (u16, Vec<String>, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(body).expect("bytes")))
        .expect("request");
    let response = client.send(request).await.expect("a response");
    let status = response.status().as_u16();
    let warnings =
        response.headers().get_all("warning").iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
    (status, warnings, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_dropped_with_a_warning_or_dropped_as_field_validation_asks() {
    for t in targets("conf-fields").await {
        let ns = &t.namespace;
        let with_unknown = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}, "spec": {"x": 1}});
        let base = format!("/api/v1/namespaces/{ns}/configmaps");
        let (code, _, body) =
            send(&t.client, "POST", &format!("{base}?fieldValidation=Strict"), &with_unknown("strict")).await;
        assert_eq!(code, 400, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("strict decoding error: unknown field \"spec\""), "{message}");
        let (code, warnings, body) =
            send(&t.client, "POST", &format!("{base}?fieldValidation=Warn"), &with_unknown("warn")).await;
        assert_eq!(code, 201, "{body}");
        assert!(warnings.iter().any(|w| w.contains("unknown field \\\"spec\\\"")), "{warnings:?}");
        assert!(body.get("spec").is_none(), "the unknown field is dropped: {body}");
        assert_eq!(body["data"]["k"], "v");
        let (code, warnings, body) =
            send(&t.client, "POST", &format!("{base}?fieldValidation=Ignore"), &with_unknown("ignore")).await;
        assert_eq!(code, 201, "{body}");
        assert!(warnings.iter().all(|w| !w.contains("unknown field")), "{warnings:?}");
        assert!(body.get("spec").is_none(), "{body}");
        let (code, warnings, _) = send(&t.client, "POST", &base, &with_unknown("default")).await;
        assert_eq!(code, 201);
        assert!(warnings.iter().any(|w| w.contains("unknown field")), "kube-apiserver warns by default: {warnings:?}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_in_a_custom_resource_is_refused_under_strict_validation() {
    for t in targets("conf-crd-fields").await {
        install_rafter_crds(&t).await;
        let mut pool = example("NodePool");
        pool["metadata"] = json!({"name": format!("{}-strict", t.namespace)});
        pool["spec"]["template"]["spec"]["colour"] = json!("blue");
        let (code, _, body) =
            send(&t.client, "POST", "/apis/karpenter.sh/v1/nodepools?fieldValidation=Strict", &pool).await;
        assert_eq!(code, 400, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("unknown field \"spec.template.spec.colour\""), "{message}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_v3_describes_custom_resources_and_declares_field_validation() {
    for t in targets("conf-openapi").await {
        install_rafter_crds(&t).await;
        let root: Value = t
            .client
            .request(http::Request::get("/openapi/v3").body(Vec::new()).expect("request"))
            .await
            .expect("the root document");
        let url = root["paths"]["apis/karpenter.sh/v1"]["serverRelativeURL"].as_str().expect("karpenter.sh/v1 listed");
        let doc: Value =
            t.client.request(http::Request::get(url).body(Vec::new()).expect("request")).await.expect("the document");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let pool = schemas
            .values()
            .find(|s| {
                s["x-kubernetes-group-version-kind"].as_array().is_some_and(|g| {
                    g.iter().any(|g| g["group"] == "karpenter.sh" && g["version"] == "v1" && g["kind"] == "NodePool")
                })
            })
            .expect("the NodePool schema");
        let policy = &pool["properties"]["spec"]["properties"]["disruption"]["properties"]["consolidationPolicy"];
        assert!(policy["enum"].as_array().is_some_and(|e| e.contains(&json!("WhenEmpty"))), "{policy}");
        let patch = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .filter_map(|p| p.get("patch"))
            .find(|op| op["x-kubernetes-group-version-kind"]["kind"] == "NodePool")
            .expect("NodePool's PATCH operation");
        let params = patch["parameters"].as_array().expect("parameters");
        assert!(params.iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query"), "{params:?}");
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_namespace_is_created_as_kube_apiserver_would_and_an_undecoded_kind_is_refused_by_name() {
    use prost::Message;
    let sim = Simulator::start().await.expect("simulator");
    let envelope = |api_version: &str, kind: &str, raw: Vec<u8>| {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut body = b"k8s\x00".to_vec();
        body.extend(unknown.encode_to_vec());
        body
    };
    let namespace = k8s_pb::api::core::v1::Namespace {
        metadata: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("from-protobuf".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = http::Request::post("/api/v1/namespaces")
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .body(envelope("v1", "Namespace", namespace.encode_to_vec()))
        .expect("request");
    let created: Value = sim.client().request(request).await.expect("created");
    assert_eq!(created["metadata"]["name"], "from-protobuf");
    assert_eq!(created["status"]["phase"], "Active");

    let request = http::Request::post("/apis/apps/v1/namespaces/default/deployments")
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .body(envelope("apps/v1", "Deployment", Vec::new()))
        .expect("request");
    let err = sim.client().request::<Value>(request).await.expect_err("refused");
    let kube::Error::Api(status) = &err else { panic!("expected an API error, got {err}") };
    assert_eq!((status.code, status.reason.as_str()), (415, "UnsupportedMediaType"));
    assert!(status.message.contains("Deployment") && status.message.contains("send JSON"), "{}", status.message);
}

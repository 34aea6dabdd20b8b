//! A short fuzz run: the request decoder on random and mutated requests, then the whole server on random
//! bodies for every verb and resource. Nothing may panic; every refusal is a Status with a 4xx code.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rafter_sim::Simulator;
use rafter_sim::apiserver::request;

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW"];
const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "text/plain",
    "",
];
const PATHS: &[&str] = &[
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/pods/p",
    "/api/v1/namespaces/default/pods/p/binding",
    "/api/v1/namespaces/default/pods/p/eviction",
    "/api/v1/namespaces/default/pods/p/status",
    "/api/v1/nodes/n",
    "/api/v1/namespaces/default/configmaps/c",
    "/apis/apps/v1/namespaces/default/deployments/d/scale",
    "/apis/coordination.k8s.io/v1/namespaces/default/leases/l",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
];

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_string()),
        Just("apis".to_string()),
        Just("v1".to_string()),
        Just("namespaces".to_string()),
        Just("pods".to_string()),
        Just("status".to_string()),
        Just("..".to_string()),
        Just(String::new()),
        "[a-z0-9.%-]{0,12}",
        any::<String>(),
    ]
}

fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9:/._-]{0,10}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("status".to_string()),
                    Just("name".to_string()),
                    Just("containers".to_string()),
                    Just("finalizers".to_string()),
                    Just("$patch".to_string()),
                    Just("op".to_string()),
                    Just("path".to_string()),
                    Just("target".to_string()),
                    "[a-z$/]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        value.prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

#[test]
fn the_request_decoder_never_panics() {
    // Deterministic in CI; `FUZZ_CASES=200000 FUZZ_RANDOM=1` for a longer, randomly seeded run by hand.
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3_000);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = if std::env::var_os("FUZZ_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
        )
    };
    let strategy = (
        prop::sample::select(METHODS),
        prop::collection::vec(segment(), 0..8),
        prop::option::of("[a-zA-Z=&%0-9,!()_.-]{0,40}"),
        prop::sample::select(CONTENT_TYPES),
        prop::option::of(Just("application/json;as=Table;v=v1;g=meta.k8s.io")),
        json_body(),
    );
    runner
        .run(&strategy, |(method, segments, query, content_type, accept, body)| {
            let path = format!("/{}", segments.join("/"));
            let _ = request::decode(method, &path, query.as_deref(), content_type, accept.unwrap_or_default(), &body);
            Ok(())
        })
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_random_request_with_a_status() {
    let sim = Simulator::start().await.expect("simulator");
    let client = sim.client();
    let mut runner = TestRunner::deterministic();
    let strategy =
        (prop::sample::select(METHODS), prop::sample::select(PATHS), prop::sample::select(CONTENT_TYPES), json_body());
    let cases: Vec<_> = (0..400)
        .map(|_| {
            strategy.new_tree(&mut runner).map(|tree| proptest::strategy::ValueTree::current(&tree)).expect("generates")
        })
        .collect();
    for (method, path, content_type, body) in cases {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body)
            .expect("request");
        match client.request_text(request).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) => {
                assert!((400..500).contains(&status.code), "{method} {path}: {} {}", status.code, status.message);
            }
            Err(other) => panic!("{method} {path}: the server did not answer with a Status: {other}"),
        }
    }
    let alive = client.apiserver_version().await.expect("still serving");
    assert_eq!(alive.major, "1");
}

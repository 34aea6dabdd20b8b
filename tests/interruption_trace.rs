//! An interruption is one trace: `interruption` → `replace` (→ `launch` → `cloud.create`), `taint`,
//! `drain` (→ one `evict` per pod) and `terminate`, exported over OTLP/HTTP.

use rafter_e2e as common;

use std::time::Duration;

use common::{export_spans, harness, instance_id, receiver, spot};
use jiff::Timestamp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interruption_is_one_trace_from_receipt_through_replacement_taint_and_drain_to_termination() {
    let (url, spans) = receiver().await;
    let provider = export_spans(&url);

    let h = harness("m5.xlarge", 2).await;
    h.scale_and_wait(10).await;
    let claims = h.world.claims().await.expect("claims");
    assert_eq!(claims.len(), 1);
    let old = claims[0].metadata.name.clone().expect("name");
    h.send(&[spot("trace-spot", &instance_id(&claims[0]), Timestamp::now())]).await;
    h.world
        .wait_for("the interrupted claim terminated", Duration::from_secs(60), || async {
            let claims = h.world.claims().await?;
            Ok(claims.iter().all(|c| c.metadata.name.as_deref() != Some(old.as_str()))
                && h.world.running().await? == 10)
        })
        .await
        .expect("terminated");
    let spans = common::exported_spans(&h.world, &provider, &spans, "terminate").await;
    let root = spans
        .iter()
        .find(|s| s.name == "interruption" && common::attr(s, "nodeclaim").is_some_and(|v| v.contains(&old)))
        .expect("an interruption span for the claim");
    assert!(root.parent_span_id.is_empty(), "interruption is the root of its trace");
    assert!(common::attr(root, "kind").is_some_and(|k| k.contains("spot_interruption")));
    let child = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == root.span_id)
            .unwrap_or_else(|| panic!("{name} under interruption"))
    };
    let (replace, taint, drain, terminate) = (child("replace"), child("taint"), child("drain"), child("terminate"));
    for s in [replace, taint, drain, terminate] {
        assert_eq!(s.trace_id, root.trace_id, "{} is in the interruption's trace", s.name);
    }
    // In order: replacement planned, then the taint, then the drain, then termination.
    assert!(replace.start_time_unix_nano <= taint.start_time_unix_nano);
    assert!(taint.end_time_unix_nano <= drain.start_time_unix_nano);
    assert!(drain.end_time_unix_nano <= terminate.start_time_unix_nano);
    let launch =
        spans.iter().find(|s| s.name == "launch" && s.parent_span_id == replace.span_id).expect("launch under replace");
    assert!(spans.iter().any(|s| s.name == "cloud.create" && s.parent_span_id == launch.span_id));
    let evictions = spans.iter().filter(|s| s.name == "evict" && s.parent_span_id == drain.span_id).count();
    assert_eq!(evictions, 10, "each of the node's pods is evicted under the drain");
    h.replica.shutdown().await;
    let _ = provider.shutdown();
}

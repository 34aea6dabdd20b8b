//! A short fuzz run of the parser and the decisions: mutated example events and random bodies. Nothing
//! may panic, and whatever is accepted must decide and record cleanly. `RAFTER_FUZZ_CASES` sets the
//! number of cases (default 3,000 per strategy; CI uses the default).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::Message;
use super::plan::{Decision, RebalancePolicy, Record, decide};

const EXAMPLES: [&str; 5] = [
    include_str!("../../deploy/examples/events/spot-interruption.json"),
    include_str!("../../deploy/examples/events/rebalance-recommendation.json"),
    include_str!("../../deploy/examples/events/state-change.json"),
    include_str!("../../deploy/examples/events/scheduled-change.json"),
    include_str!("../../deploy/examples/events/capacity-reservation-interruption.json"),
];

/// Values that stress the models when swapped in for a field's value.
const VALUES: [&str; 12] = [
    "null",
    "0",
    "-1",
    "1e400",
    "\"\"",
    "[]",
    "{}",
    "true",
    "\"\\u0000\"",
    "\"9999-99-99T99:99:99Z\"",
    "\"Mon, 32 Foo 2016 25:61:61 GMT\"",
    "[{\"entityValue\": 1}]",
];

fn runner() -> TestRunner {
    let cases = std::env::var("RAFTER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// Whatever the body, parsing and deciding return; accepted notices record and read back.
fn check(body: &str) {
    let Ok(message) = Message::parse(body) else { return };
    let _ = message.to_json();
    for policy in [RebalancePolicy::Replace, RebalancePolicy::Ignore] {
        if let Ok(Decision::Act(notice)) = decide(&message, policy) {
            assert!(!notice.instances.is_empty(), "a notice names its instances: {body}");
            let record = Record::new(&notice, jiff::Timestamp::UNIX_EPOCH);
            assert_eq!(Record::decode(&record.encode()).ok(), Some(record), "{body}");
        }
    }
}

/// Replaces the value after the `n`th `":` with another JSON value.
fn swap_value(body: &str, n: usize, value: &str) -> String {
    let Some((at, _)) = body.match_indices("\":").nth(n) else { return body.to_string() };
    let start = at + 2;
    let rest = &body[start..];
    let end = if let Some(string) = rest.strip_prefix('"') {
        string.find('"').map(|i| i + 2).unwrap_or(rest.len())
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    format!("{}{}{}", &body[..start], value, &rest[end..])
}

#[test]
fn mutated_example_events_never_panic_the_parser() {
    let strategy = (0..EXAMPLES.len(), 0usize..40, 0..VALUES.len(), any::<usize>(), any::<u8>(), 0u8..4);
    runner()
        .run(&strategy, |(example, field, value, at, byte, how)| {
            let body = EXAMPLES[example];
            let mutated = match how {
                0 => swap_value(body, field, VALUES[value]),
                1 => body[..body.len().min(at % (body.len() + 1))].to_string(),
                2 => {
                    let mut bytes = body.as_bytes().to_vec();
                    let i = at % bytes.len();
                    bytes[i] = byte;
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => {
                    let i = at % body.len();
                    let i = (0..=i).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
                    format!("{}{}{}", &body[..i], VALUES[value], &body[i..])
                }
            };
            check(&mutated);
            Ok(())
        })
        .expect("no panic");
}

#[test]
fn random_bodies_never_panic_the_parser() {
    runner()
        .run(&".{0,300}", |body| {
            check(&body);
            Ok(())
        })
        .expect("no panic");
    runner()
        .run(&"\\{\"(version|id|detail-type|source|time|detail)\":.{0,80}\\}", |body| {
            check(&body);
            Ok(())
        })
        .expect("no panic");
}

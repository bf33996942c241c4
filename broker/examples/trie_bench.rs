//! In-process microbenchmark of subscription matching: one topic matched
//! against a trie holding 10 matching subscriptions (exact, `+`, `#`,
//! mixed) plus N non-matching ones, for N up to a million, on one thread.
//! Shows that matching cost does not grow with unrelated subscriptions
//! (`docs/benchmarks.md`). Bounded: 200,000 matches per size.
//!
//!   cargo run --release -p porchlight-broker --example trie_bench

use std::sync::Arc;
use std::time::Instant;

use porchlight_broker::codec::{QoS, SubscriptionOptions};
use porchlight_broker::ids::{ClientId, SessionId, SessionKey, TenantId};
use porchlight_broker::session::Session;
use porchlight_broker::state::trie::{Subscriber, SubscriptionTrie};

/// Matches timed per trie size.
const MATCHES: usize = 200_000;

fn main() {
    let tenant = TenantId::default_tenant();
    let sub = |i: usize| Subscriber {
        session: Arc::new(Session::new(
            SessionKey {
                tenant: tenant.clone(),
                client: ClientId::new(format!("c{i}")),
            },
            SessionId(i as u64 + 1),
            None,
            None,
        )),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
        id: None,
    };
    let trie = SubscriptionTrie::default();
    for (i, f) in [
        "site/1/dev/7/temp",
        "site/1/dev/+/temp",
        "site/1/#",
        "site/+/dev/7/#",
        "#",
    ]
    .iter()
    .enumerate()
    {
        trie.subscribe(&tenant, f, None, sub(i));
        trie.subscribe(&tenant, f, None, sub(i + 100));
    }
    let mut added = 0usize;
    for target in [0usize, 10_000, 100_000, 1_000_000] {
        while added < target {
            // Other sites and devices, with wildcards, none matching.
            let f = match added % 3 {
                0 => format!("site/{}/dev/{}/temp", 2 + added % 5000, added),
                1 => format!("site/{}/dev/+/humidity", 2 + added),
                _ => format!("site/1/dev/{}/temp", 1000 + added),
            };
            trie.subscribe(&tenant, &f, None, sub(1000 + added));
            added += 1;
        }
        let start = Instant::now();
        let mut total = 0;
        for _ in 0..MATCHES {
            total += trie.matches(&tenant, "site/1/dev/7/temp").direct.len();
        }
        let per = start.elapsed().as_nanos() as f64 / MATCHES as f64;
        assert_eq!(
            total,
            10 * MATCHES,
            "every match finds the 10 subscriptions"
        );
        println!(
            "trie: {target:>9} non-matching subscriptions: {per:.0} ns per match (10 matches each)"
        );
    }
}

//! `$SYS/broker/...` topics: broker statistics published periodically as
//! retained messages through the ordinary router, so any client may
//! subscribe to them (`$SYS/#`; a leading wildcard never matches them).
//!
//! Runs as one task every `--sys-interval` seconds; `--no-sys-topics`
//! turns it off. The node's global counters go to the `default` tenant's
//! `$SYS` (the operators' view); with `--tenants`, each configured tenant
//! also gets its own counters in its own `$SYS/broker/...`, and sees no
//! other tenant's.

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::Broker;
use crate::codec::{Properties, QoS};
use crate::ids::TenantId;
use crate::message::Message;
use crate::metrics::{BadPacket, DropReason, Metrics};
use crate::topic::TopicName;

/// Publishes the current statistics once.
pub fn publish_stats(broker: &Broker) {
    let m = &broker.metrics;
    let g = Metrics::get;
    let uptime = broker.started_at.elapsed().as_secs();
    let memory = broker.state.queue_memory();
    let values: [(&str, String); 13] = [
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("uptime", format!("{uptime} seconds")),
        ("clients/connected", g(&m.clients_connected).to_string()),
        ("clients/total", broker.state.session_count().to_string()),
        ("messages/received", g(&m.messages_received).to_string()),
        ("messages/sent", g(&m.messages_sent).to_string()),
        ("bytes/received", g(&m.bytes_received).to_string()),
        ("bytes/sent", g(&m.bytes_sent).to_string()),
        ("retained messages/count", g(&m.retained).to_string()),
        (
            "connections/accept_failures",
            g(&m.accept_failures).to_string(),
        ),
        ("queued/memory", memory.used().to_string()),
        ("queued/memory_refusals", memory.refused().to_string()),
        ("queued/spilled", memory.spilled().to_string()),
    ];
    let mut values: Vec<(String, String)> =
        values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    // The counters operators need before the admin API exists: every
    // drop and every bad packet, by reason.
    for r in DropReason::ALL {
        values.push((
            format!("messages/dropped/{}", r.label()),
            m.dropped_count(r).to_string(),
        ));
    }
    for k in BadPacket::ALL {
        values.push((
            format!("packets/bad/{}", k.label()),
            m.bad_packet_count(k).to_string(),
        ));
    }
    // Node-wide figures are the operators': in the one tenant without
    // `--tenants`; under it, in the node's own tenant, which only principals
    // the tenants file names as operators read (`$tenant/$node/$SYS/#`),
    // while every tenant, `default` included, gets its own.
    let directory = broker.auth.directory();
    if !directory.configured() {
        publish(broker, &TenantId::default_tenant(), values);
        return;
    }
    publish(broker, &TenantId::node(), values);
    for id in directory.ids() {
        let u = broker.tenants.usage(id);
        let mut values: Vec<(String, String)> = u
            .counts()
            .into_iter()
            .map(|(_, path, value)| (path.to_owned(), value.to_string()))
            .collect();
        for r in crate::metrics::DropReason::ALL {
            values.push((
                format!("messages/dropped/{}", r.label()),
                u.drops(r).to_string(),
            ));
        }
        for k in crate::tenant::quota::QuotaKind::ALL {
            values.push((
                format!("quota/rejected/{}", k.label()),
                u.rejections(k).to_string(),
            ));
        }
        publish(broker, id, values);
    }
}

/// Publishes `values` as retained `$SYS/broker/<name>` in `tenant`.
fn publish(broker: &Broker, tenant: &TenantId, values: Vec<(String, String)>) {
    for (name, value) in values {
        let msg = Message::new(
            tenant.clone(),
            TopicName::trusted(format!("$SYS/broker/{name}")),
            Bytes::from(value),
            QoS::AtMostOnce,
            true,
            &Properties::default(),
            None,
        );
        broker.router.publish(Arc::new(msg));
    }
}

/// Runs until shutdown, publishing every interval.
pub async fn run(broker: Arc<Broker>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => publish_stats(&broker),
            _ = broker.shutdown.cancelled() => return,
        }
    }
}

//! The limit flags: packets, queues, topics, the store, sessions,
//! `$SYS`.

use super::{invalid, Cli};
use crate::error::BrokerError;

impl Cli {
    /// Each limit within what MQTT and the broker can honour.
    pub(super) fn check_limits(&self) -> Result<(), BrokerError> {
        // 268,435,455 + 5 header bytes is the largest packet MQTT can frame.
        if !(1024..=268_435_460).contains(&self.max_packet_size) {
            return Err(invalid(
                "--max-packet-size",
                "must be between 1024 and 268435460 bytes",
            ));
        }
        if self.receive_maximum == 0 {
            return Err(invalid("--receive-maximum", "must be at least 1"));
        }
        if self.max_inflight == 0 {
            return Err(invalid("--max-inflight", "must be at least 1"));
        }
        if self.tenants.is_some() && self.auth_file.is_some() {
            return Err(invalid(
                "--tenants",
                "cannot be combined with --auth-file: put the users and rules under a [[tenant]]",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("--max-connections", "must be at least 1"));
        }
        if self.listen_backlog == 0 {
            return Err(invalid("--listen-backlog", "must be at least 1"));
        }
        if self.max_queued_messages == 0 {
            return Err(invalid("--max-queued-messages", "must be at least 1"));
        }
        if self.max_queued_bytes == 0 {
            return Err(invalid("--max-queued-bytes", "must be at least 1"));
        }
        if self.store_cache_bytes < 1 << 20 {
            return Err(invalid(
                "--store-cache-bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.fsync_group_window > 1000 {
            return Err(invalid("--fsync-group-window", "must be at most 1000 ms"));
        }
        if !(1..=65_535).contains(&self.max_topic_length) {
            return Err(invalid("--max-topic-length", "must be between 1 and 65535"));
        }
        if self.max_topic_levels == 0 {
            return Err(invalid("--max-topic-levels", "must be at least 1"));
        }
        if self.max_keepalive == 0 {
            return Err(invalid("--max-keepalive", "must be at least 1 second"));
        }
        if self.connect_timeout == 0 {
            return Err(invalid("--connect-timeout", "must be at least 1 second"));
        }
        if !(23..=65_535).contains(&self.max_client_id_length) {
            return Err(invalid(
                "--max-client-id-length",
                "must be between 23 and 65535",
            ));
        }
        if !self.no_sys_topics && self.sys_interval == 0 {
            return Err(invalid(
                "--sys-interval",
                "must be at least 1 second (use --no-sys-topics to turn $SYS off)",
            ));
        }
        Ok(())
    }
}

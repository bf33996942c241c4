//! porchlight-loadtest: an MQTT load generator in the spirit of
//! emqtt-bench, and the driver of `scripts/bench-compare.sh`. `cli.rs`
//! turns flags into a `plan.rs` Plan; `run.rs` executes it with one
//! `client.rs` task per connection (wire format in `mqtt.rs`, payload
//! header in `payload.rs`, rates in `pacer.rs`); measurements go to
//! `stats.rs`, `seq.rs` and `procstat.rs`; `report.rs` writes the table,
//! JSON and the Markdown/SVG report.
#![forbid(unsafe_code)]
pub mod cli;
pub mod client;
pub mod error;
pub mod mqtt;
pub mod pacer;
pub mod payload;
pub mod plan;
pub mod procstat;
pub mod report;
pub mod run;
pub mod seq;
pub mod stats;
pub mod tls;

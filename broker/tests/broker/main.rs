//! Integration tests of the broker: each test starts its own broker on
//! 127.0.0.1 port 0 and talks to it with real clients (rumqttc v4/v5), raw
//! packets, raw malformed bytes, the Mosquitto command-line clients, or the
//! `porchlight` binary itself.

mod support;

/// The admin listener: probes and `/metrics`.
mod admin;
/// The admin REST API and `porchlight ctl`.
mod admin_api;
/// Authentication (passwords, certificates, anonymous; JWT is in `jwt.rs`), ACLs, the
/// auth file and its reload, failure backoff.
mod auth;
/// Malformed input and protocol violations: each closes only its own
/// connection, is counted, and the broker keeps serving.
mod bad_input;
/// Durability: restarts, crashes (SIGKILL), full and failing disks.
mod durable;
/// MQTT 5 flow control: topic aliases, receive maximum, maximum packet
/// size, message expiry, keepalive, AUTH.
mod flow;
/// Shared gateways: `$tenant/<id>/` with grants, across a restart and a
/// reload.
mod gateways;
/// The container image under Docker.
mod image;
/// JWT authentication: algorithms, claims, key rotation, expiry.
mod jwt;
/// The crate's layers: imports flow downward.
mod layers;
/// WebSocket and WSS listeners, PROXY protocol v1/v2 headers.
mod listeners;
/// Mutual TLS: client certificates required or optional, refusals and
/// their log, CRLs, the client-certificate flags.
mod mtls;
/// Limits, `$SYS`, shutdown, the binary and Mosquitto interop.
mod ops;
/// QoS 0/1/2 publish/subscribe, wildcards, overlapping subscriptions,
/// no-local, subscription identifiers, MQTT 5 property pass-through.
mod pubsub;
/// Retained messages: set, replace, delete, retain handling, RAP.
mod retained;
/// Sessions: takeover, clean start, resume, redelivery with DUP, expiry,
/// queue limits, client ids.
mod session;
/// Shared subscriptions.
mod shared;
/// Tenant quotas, each at its limit with another tenant unaffected.
mod tenant_quotas;
/// Tenants: identity (username, SNI, certificate, listener), isolation,
/// the tenants file and its reload.
mod tenants;
/// TLS listeners: v3/v5 clients, ALPN, minimum version, handshake
/// timeouts, bad flags and files.
mod tls;
/// Wills: abnormal close, normal DISCONNECT, 0x04, will delay.
mod will;

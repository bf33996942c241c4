//! MQTT 5 reason codes as named constants, and their MQTT 3.1.1 mappings.
//!
//! The broker speaks MQTT 5 reason codes internally everywhere; `encode.rs`
//! maps them to 3.1.1 return codes when the connection is 3.1.1 or 3.1.

pub const SUCCESS: u8 = 0x00;
pub const GRANTED_QOS_1: u8 = 0x01;
pub const GRANTED_QOS_2: u8 = 0x02;
pub const DISCONNECT_WITH_WILL: u8 = 0x04;
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
pub const UNSPECIFIED_ERROR: u8 = 0x80;
pub const MALFORMED_PACKET: u8 = 0x81;
pub const PROTOCOL_ERROR: u8 = 0x82;
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub const NOT_AUTHORIZED: u8 = 0x87;
pub const SERVER_UNAVAILABLE: u8 = 0x88;
pub const SERVER_BUSY: u8 = 0x89;
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
pub const TOPIC_NAME_INVALID: u8 = 0x90;
pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
pub const PACKET_TOO_LARGE: u8 = 0x95;
pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
pub const QUOTA_EXCEEDED: u8 = 0x97;
pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// A short human-readable text for a failure reason code, sent as the
/// Reason String where the client allows it.
pub fn text(code: u8) -> &'static str {
    match code {
        NO_MATCHING_SUBSCRIBERS => "no matching subscribers",
        UNSPECIFIED_ERROR => "unspecified error",
        NOT_AUTHORIZED => "not authorized",
        TOPIC_FILTER_INVALID => "topic filter invalid",
        TOPIC_NAME_INVALID => "topic name invalid",
        PACKET_IDENTIFIER_NOT_FOUND => "packet identifier not found",
        QUOTA_EXCEEDED => "quota exceeded",
        PAYLOAD_FORMAT_INVALID => "payload is not valid UTF-8",
        _ => "refused",
    }
}

/// A reason code's name in snake case, for metric labels (a fixed set:
/// unknown codes are `other`).
pub fn name(code: u8) -> &'static str {
    match code {
        SUCCESS => "success",
        UNSPECIFIED_ERROR => "unspecified_error",
        MALFORMED_PACKET => "malformed_packet",
        PROTOCOL_ERROR => "protocol_error",
        IMPLEMENTATION_SPECIFIC_ERROR => "implementation_specific_error",
        UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version",
        CLIENT_IDENTIFIER_NOT_VALID => "client_identifier_not_valid",
        BAD_USER_NAME_OR_PASSWORD => "bad_user_name_or_password",
        NOT_AUTHORIZED => "not_authorized",
        SERVER_UNAVAILABLE => "server_unavailable",
        SERVER_BUSY => "server_busy",
        BAD_AUTHENTICATION_METHOD => "bad_authentication_method",
        KEEP_ALIVE_TIMEOUT => "keep_alive_timeout",
        SESSION_TAKEN_OVER => "session_taken_over",
        SERVER_SHUTTING_DOWN => "server_shutting_down",
        TOPIC_NAME_INVALID => "topic_name_invalid",
        PACKET_TOO_LARGE => "packet_too_large",
        QUOTA_EXCEEDED => "quota_exceeded",
        ADMINISTRATIVE_ACTION => "administrative_action",
        PAYLOAD_FORMAT_INVALID => "payload_format_invalid",
        RETAIN_NOT_SUPPORTED => "retain_not_supported",
        QOS_NOT_SUPPORTED => "qos_not_supported",
        CONNECTION_RATE_EXCEEDED => "connection_rate_exceeded",
        _ => "other",
    }
}

/// Maps an MQTT 5 CONNACK reason code to the nearest 3.1.1 return code
/// (3.1.1 section 3.2.2.3 has only six).
pub fn connack_v3(reason: u8) -> u8 {
    match reason {
        SUCCESS => 0,
        UNSUPPORTED_PROTOCOL_VERSION => 1,
        CLIENT_IDENTIFIER_NOT_VALID => 2,
        SERVER_UNAVAILABLE
        | SERVER_BUSY
        | SERVER_SHUTTING_DOWN
        | CONNECTION_RATE_EXCEEDED
        | QUOTA_EXCEEDED => 3,
        BAD_USER_NAME_OR_PASSWORD | BAD_AUTHENTICATION_METHOD => 4,
        _ => 5,
    }
}

/// Maps an MQTT 5 SUBACK reason code to 3.1.1: granted QoS or 0x80.
pub fn suback_v3(reason: u8) -> u8 {
    if reason <= GRANTED_QOS_2 {
        reason
    } else {
        0x80
    }
}

//! MQTT over WebSocket (`--ws-listen`, and `--wss-listen` over TLS), for
//! devices and browsers behind firewalls that only pass HTTP(S).
//!
//! [`accept`] answers the HTTP upgrade (async-tungstenite): the request
//! must be for `--ws-path` (else 404) and offer the `mqtt` subprotocol
//! (MQTT 5 §6; `mqttv3.1` from old clients is accepted too), which the
//! response selects (else 400); with `--ws-allowed-origins`, a browser's
//! Origin must be listed (else 403), so a page on another site cannot
//! open MQTT connections with its visitors' network position. The result
//! is a byte stream (ws_stream_tungstenite) carrying MQTT in binary
//! frames; a text frame
//! closes the connection (MQTT-6.0.0-1). `ops/server.rs` hands that stream to
//! `connection/mod.rs` like any socket, so the codec, limits and auth are the
//! same as over TCP.

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::io::{AsyncRead, AsyncWrite};

/// The byte stream of an upgraded WebSocket connection.
pub type WsIo<S> = ws_stream_tungstenite::WsStream<TokioAdapter<S>>;

/// The subprotocols accepted, in the spelling the client used.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// The subprotocol to select from the client's offer, if it offers one of
/// ours.
fn choose(req: &Request) -> Option<String> {
    req.headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| SUBPROTOCOLS.iter().any(|s| s.eq_ignore_ascii_case(p)))
        .map(str::to_owned)
}

/// An origin as browsers send it, `scheme://host[:port]`, lowercased and
/// without a trailing slash; `None` if `s` is not one (a path, a query, no
/// host, a scheme other than http or https).
pub fn normalize_origin(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return None;
    }
    if rest.contains(['/', '?', '#', '@', ' ', ',']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, port)) if !port.contains(']') => (h, Some(port.parse::<u16>().ok()?)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    // Browsers leave the scheme's default port out.
    Some(match (scheme, port) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => format!("{scheme}://{host}"),
        (_, Some(port)) => format!("{scheme}://{host}:{port}"),
    })
}

/// Whether the request may upgrade under `allowed` (normalized origins;
/// empty allows any): no Origin header (not a browser) or a listed one.
fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match req.headers().get("Origin") {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(normalize_origin)
            .is_some_and(|o| allowed.contains(&o)),
    }
}

/// Runs the WebSocket upgrade on `stream`. `max_message` bounds one
/// WebSocket message (and frame): `--max-packet-size` plus room for
/// clients that batch packets.
// The callback's `Result<Response, ErrorResponse>` is tungstenite's
// `Callback` signature, not ours to shrink.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(
    stream: S,
    path: &str,
    origins: &[String],
    max_message: usize,
) -> Result<WsIo<S>, async_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND, "no MQTT endpoint here"));
        }
        if !origin_allowed(req, origins) {
            return Err(refusal(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        let Some(chosen) = choose(req) else {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "offer the WebSocket subprotocol mqtt",
            ));
        };
        let value = HeaderValue::from_str(&chosen)
            .map_err(|_| refusal(StatusCode::BAD_REQUEST, "bad subprotocol header"))?;
        resp.headers_mut().insert("Sec-WebSocket-Protocol", value);
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = async_tungstenite::tokio::accept_hdr_async_with_config(stream, callback, Some(config))
        .await?;
    Ok(ws_stream_tungstenite::WsStream::new(ws))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mqtt_subprotocol_is_chosen_from_the_offer() {
        let req = |offer: Option<&str>| {
            let mut b = Request::builder().uri("/mqtt");
            if let Some(o) = offer {
                b = b.header("Sec-WebSocket-Protocol", o);
            }
            b.body(()).expect("request")
        };
        assert_eq!(choose(&req(Some("mqtt"))).as_deref(), Some("mqtt"));
        assert_eq!(choose(&req(Some("wamp, MQTT"))).as_deref(), Some("MQTT"));
        assert_eq!(choose(&req(Some("mqttv3.1"))).as_deref(), Some("mqttv3.1"));
        assert_eq!(choose(&req(Some("wamp"))), None);
        assert_eq!(choose(&req(None)), None);
    }

    #[test]
    fn origins_are_normalized_and_checked() {
        for (input, normalized) in [
            ("https://App.Example/", "https://app.example"),
            ("http://localhost:8080", "http://localhost:8080"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://[::1]", "http://[::1]"),
            // Default ports as browsers send them (left out); no leading
            // zeros.
            ("https://app.example:443", "https://app.example"),
            ("http://app.example:80", "http://app.example"),
            ("http://app.example:443", "http://app.example:443"),
            ("http://localhost:08080", "http://localhost:8080"),
        ] {
            assert_eq!(
                normalize_origin(input).as_deref(),
                Some(normalized),
                "{input}"
            );
        }
        for bad in [
            "app.example",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://a:99999",
            "null",
            "https://a:",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
        let req = |origin: Option<&str>| {
            let mut b = Request::builder().uri("/mqtt");
            if let Some(o) = origin {
                b = b.header("Origin", o);
            }
            b.body(()).expect("request")
        };
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&req(Some("https://APP.example")), &allowed));
        assert!(
            origin_allowed(&req(None), &allowed),
            "devices send no Origin"
        );
        assert!(!origin_allowed(
            &req(Some("https://evil.example")),
            &allowed
        ));
        assert!(!origin_allowed(&req(Some("null")), &allowed));
        assert!(
            origin_allowed(&req(Some("https://evil.example")), &[]),
            "no list: any"
        );
    }
}

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
//! frames. A plain HTTP request (no `Upgrade: websocket`) gets an HTTP
//! answer, 404 off the path and 426 on it, instead of a closed socket;
//! bytes that are not HTTP at all are closed at once. A text frame
//! closes the connection (MQTT-6.0.0-1). `ops/server.rs` hands that stream to
//! `connection/mod.rs` like any socket, so the codec, limits and auth are the
//! same as over TCP.

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The byte stream of an upgraded WebSocket connection.
pub type WsIo<S> = ws_stream_tungstenite::WsStream<TokioAdapter<Rewind<S>>>;

/// The longest request head read before the upgrade (browsers send about
/// 1 KiB; cookies can add more).
const MAX_HEAD: usize = 16 * 1024;

/// A stream whose first bytes, already read to look at the request, are
/// read again.
#[derive(Debug)]
pub struct Rewind<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads the request head (through the blank line). Bytes that cannot
/// start `GET ` end it at once: not HTTP.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if !b"GET ".starts_with(&head[..head.len().min(4)]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP request",
            ));
        }
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let want = chunk.len().min(MAX_HEAD - head.len());
        match stream.read(&mut chunk[..want]).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The answer to a request that is not a WebSocket upgrade: `None` when
/// it is one (tungstenite checks the rest).
fn plain_http_answer(head: &[u8], path: &str) -> Option<&'static str> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1).unwrap_or("");
    let upgrade = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value.to_ascii_lowercase().contains("websocket")
        })
    });
    if upgrade {
        return None;
    }
    let on_path = target.split('?').next() == Some(path);
    Some(if on_path {
        "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: mqtt\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 52\r\n\r\nMQTT over WebSocket: upgrade with subprotocol mqtt.\n"
    } else {
        "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\nNo MQTT endpoint here.\n"
    })
}

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
    let mut stream = stream;
    let head = read_head(&mut stream).await?;
    if let Some(answer) = plain_http_answer(&head, path) {
        stream.write_all(answer.as_bytes()).await?;
        let _ = stream.shutdown().await;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a WebSocket upgrade").into());
    }
    let stream = Rewind {
        head,
        pos: 0,
        inner: stream,
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
    fn a_plain_request_gets_404_off_the_path_and_426_on_it() {
        let get = |target: &str, upgrade: bool| {
            let mut h = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
            if upgrade {
                h.push_str("Connection: Upgrade\r\nUPGRADE: WebSocket\r\n");
            }
            h.push_str("\r\n");
            h.into_bytes()
        };
        let status = |a: Option<&'static str>| a.map(|a| &a[9..12]);
        assert_eq!(
            status(plain_http_answer(&get("/mqtt", false), "/mqtt")),
            Some("426")
        );
        assert_eq!(
            status(plain_http_answer(&get("/mqtt?x=1", false), "/mqtt")),
            Some("426")
        );
        assert_eq!(
            status(plain_http_answer(&get("/", false), "/mqtt")),
            Some("404")
        );
        assert_eq!(plain_http_answer(&get("/mqtt", true), "/mqtt"), None);
        assert_eq!(
            plain_http_answer(&get("/other", true), "/mqtt"),
            None,
            "tungstenite's 404"
        );
        for answer in [
            plain_http_answer(&get("/mqtt", false), "/mqtt"),
            plain_http_answer(&get("/", false), "/mqtt"),
        ] {
            let answer = answer.expect("answer");
            let (head, body) = answer.split_once("\r\n\r\n").expect("head");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("length")
                .parse()
                .expect("number");
            assert_eq!(len, body.len(), "{head}");
        }
    }

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

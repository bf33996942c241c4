//! PROXY protocol v1 and v2 (HAProxy's), for listeners behind a load
//! balancer (`--proxy-protocol`).
//!
//! [`accept`] reads the header the load balancer sends before anything
//! else (parsed with the `ppp` crate), and returns the client's real
//! address with a stream that replays whatever bytes followed the header
//! (a TLS ClientHello, a WebSocket upgrade, a CONNECT). `ops/server.rs` then
//! layers TLS/WebSocket on that stream and hands it, with the real
//! address, to `connection/mod.rs`; logs, the auth backoff and ACL `address`
//! selectors all see the real address. A `LOCAL` (v2) or `UNKNOWN` (v1)
//! header — load-balancer health checks — keeps the socket's address. A
//! missing or malformed header closes the connection.

use std::io::Cursor;
use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The longest header accepted: v1 is at most 107 bytes; v2 carries TLVs
/// (cloud load balancers add a few dozen bytes).
pub const MAX_HEADER: usize = 4096;

/// A socket after its PROXY header: the bytes read past the header come
/// first, then the socket.
pub type Proxied =
    tokio::io::Join<tokio::io::Chain<Cursor<Vec<u8>>, OwnedReadHalf>, OwnedWriteHalf>;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connection closed before the PROXY header ended")]
    Eof,
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The source address a parsed header names, if it names one.
fn source(header: &HeaderResult<'_>) -> Option<SocketAddr> {
    match header {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Unknown => None,
        },
        HeaderResult::V2(Ok(h)) if h.command == ppp::v2::Command::Proxy => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
            ppp::v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `buf` starts like a v1 or v2 header (so far as it goes): a
/// client that skipped the header is refused at its first bytes, not
/// after the timeout.
fn plausible(buf: &[u8]) -> bool {
    const V1: &[u8] = b"PROXY ";
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    [V1, V2].iter().any(|sig| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    })
}

/// The header's length, or why it is not a header.
fn parse(buf: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyError> {
    if !plausible(buf) {
        return Err(ProxyError::Malformed("no PROXY signature".into()));
    }
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        // A v1 line that has ended cannot become complete with more bytes
        // (`ppp` reports missing fields as incomplete).
        if buf.starts_with(b"PROXY ") && buf.windows(2).any(|w| w == b"\r\n") {
            return Err(ProxyError::Malformed("v1 header line is incomplete".into()));
        }
        return Ok(None);
    }
    let len = match &header {
        HeaderResult::V1(Ok(h)) => h.header.len(),
        HeaderResult::V2(Ok(h)) => h.header.len(),
        HeaderResult::V1(Err(e)) => return Err(ProxyError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(ProxyError::Malformed(e.to_string())),
    };
    Ok(Some((len, source(&header))))
}

/// Reads the PROXY header from `stream`: the real client address (or
/// `None` for LOCAL/UNKNOWN), the header's length, and every byte read.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, usize, Vec<u8>), ProxyError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if let Some((len, addr)) = parse(&buf)? {
            return Ok((addr, len, buf));
        }
        if buf.len() >= MAX_HEADER {
            return Err(ProxyError::TooLong);
        }
        let mut chunk = [0u8; 512];
        let want = chunk.len().min(MAX_HEADER - buf.len());
        match stream.read(&mut chunk[..want]).await? {
            0 => return Err(ProxyError::Eof),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads the header from an accepted socket; returns the stream to serve
/// and the client's address (`peer` when the header names none).
pub async fn accept(
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<(Proxied, SocketAddr), ProxyError> {
    let (addr, len, mut buf) = read_header(&mut stream).await?;
    let rest = buf.split_off(len);
    let (r, w) = stream.into_split();
    let joined = tokio::io::join(Cursor::new(rest).chain(r), w);
    Ok((joined, addr.unwrap_or(peer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_give_the_source_and_their_length() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\nMQTT";
        let (len, addr) = parse(v1).expect("ok").expect("complete");
        assert_eq!(&v1[len..], b"MQTT");
        assert_eq!(addr, Some("192.0.2.7:51000".parse().expect("addr")));
        assert_eq!(parse(b"PROXY TCP4 192.0").expect("ok"), None, "incomplete");
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(unknown).expect("ok"), Some((unknown.len(), None)));

        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::1]:4000".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::2]:8883".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("v2 header");
        let (len, addr) = parse(&v2).expect("ok").expect("complete");
        assert_eq!(len, v2.len());
        assert_eq!(addr, Some("[2001:db8::1]:4000".parse().expect("addr")));
        assert_eq!(parse(&v2[..10]).expect("ok"), None, "incomplete");
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            &[0x10, 0, 0, 0],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

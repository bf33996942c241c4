//! TLS connect-rate benchmark client (until `porchlight-loadtest` lands):
//! full and resumed TLS 1.3 handshakes, each followed by an MQTT CONNECT
//! and its CONNACK, against any broker's TLS listener on 127.0.0.1. Every
//! loop is bounded in time. `scripts/bench-tls.sh` runs it against
//! Porchlight and Mosquitto, interleaved. Usage:
//!   tls_bench certs DIR [ecdsa|rsa]           CA, server cert and key as PEM (P-256 or RSA-2048)
//!   tls_bench run ADDR CA full|resumed SECONDS CONCURRENCY [1.2|1.3]
//!   tls_bench handshakes DIR full|resumed SECONDS [1.2|1.3]
//!
//! `handshakes` runs handshakes in memory, no sockets, between the client
//! below and Porchlight's own server configuration (built by `tls.rs`
//! from DIR's `server.crt`/`server.key`), on one thread, and reports
//! server handshakes per second of time spent in the server's calls: the
//! cost of the TLS handshake alone, without TCP, MQTT or the kernel.
//!
//! The client does not verify the server's certificate chain (the CA is
//! still loaded, to prove the files are the ones served): the client runs
//! on the other core of the machine, and chain verification would make it,
//! not the server, the bottleneck. Key exchange (X25519 only, see `run`)
//! and the server's signature are real.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use porchlight_loadtest::tls::AnyCertificate;

fn certs(dir: &str, kind: &str) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let generate = || match kind {
        "ecdsa" => Ok(KeyPair::generate()?),
        "rsa" => Ok(KeyPair::generate_rsa_for(
            &rcgen::PKCS_RSA_SHA256,
            rcgen::RsaKeySize::_2048,
        )?),
        k => bail!("key type {k}: ecdsa or rsa"),
    };
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir)?;
    let ca_key = generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca = ca.self_signed(&ca_key)?;
    let key = generate()?;
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(
        dir.join("server.crt"),
        format!("{}{}", leaf.pem(), ca.pem()),
    )?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

/// One TLS connect: handshake, CONNECT, CONNACK (which also takes in the
/// TLS 1.3 tickets sent after the handshake), close. Returns whether the
/// handshake resumed.
async fn connect_once(
    addr: &str,
    connector: &tokio_rustls::TlsConnector,
    connect: &[u8],
) -> Result<bool> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    let mut s = connector.connect(name, tcp).await?;
    s.write_all(connect).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        bail!("refused: {ack:?}");
    }
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    // MQTT DISCONNECT, then close_notify.
    s.write_all(&[0xe0, 0]).await?;
    let _ = s.shutdown().await;
    Ok(resumed)
}

async fn run(args: &[String]) -> Result<()> {
    let [addr, ca, mode, seconds, concurrency, rest @ ..] = args else {
        bail!("run ADDR CA full|resumed SECONDS CONCURRENCY [1.2|1.3]\n  tls_bench handshakes DIR full|resumed SECONDS [1.2|1.3]");
    };
    let resume = parse_mode(mode)?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    let concurrency: usize = concurrency.parse().context("CONCURRENCY")?;
    if !(1..=600).contains(&seconds) || !(1..=1024).contains(&concurrency) {
        bail!("SECONDS 1..=600, CONCURRENCY 1..=1024");
    }
    let version = parse_version(rest.first())?;
    let _ca = std::fs::read(ca).with_context(|| format!("CA file {ca}"))?;
    let config = client_config(version, resume)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (addr, connector) = (addr.clone(), connector.clone());
        let (done, resumed, failed) = (done.clone(), resumed.clone(), failed.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                let id = format!("tls-bench-{w}-{i}");
                i += 1;
                let connect = connect_packet(&id);
                match connect_once(&addr, &connector, &connect).await {
                    Ok(r) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        if r {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"{mode}\",\"connects_per_sec\":{:.0},\"connects\":{n},\"resumed\":{},\"failed\":{},\"seconds\":{secs:.1},\"concurrency\":{concurrency}}}",
        n as f64 / secs,
        resumed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    Ok(())
}

/// The benchmark client's configuration: `version` only, tickets and
/// session ids kept when `resume`.
fn client_config(
    version: &'static rustls::SupportedProtocolVersion,
    resume: bool,
) -> Result<rustls::ClientConfig> {
    // X25519 only, as OpenSSL 3.0 (Mosquitto) and device TLS stacks offer
    // it: rustls would otherwise negotiate hybrid X25519MLKEM768 with
    // Porchlight, which costs more and Mosquitto cannot do.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // (P-256 second, for TLS 1.2 servers that want a NIST curve.)
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    ];
    if std::env::var("TLS_BENCH_AES128").is_ok() {
        provider.cipher_suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            )
        });
    }
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(4096)
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(config)
}

fn parse_version(v: Option<&String>) -> Result<&'static rustls::SupportedProtocolVersion> {
    Ok(match v.map(String::as_str) {
        None | Some("1.3") => &rustls::version::TLS13,
        Some("1.2") => &rustls::version::TLS12,
        Some(v) => bail!("TLS version {v}: 1.2 or 1.3"),
    })
}

/// Moves every TLS record `from` has queued into `to`, adding the time
/// spent in the server's calls (`from`'s when `server_sends`, else `to`'s)
/// to `spent`.
fn pump<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
    server_sends: bool,
    spent: &mut Duration,
) -> Result<()> {
    let mut wire = Vec::new();
    let t = Instant::now();
    while from.wants_write() {
        from.write_tls(&mut wire)?;
    }
    if server_sends {
        *spent += t.elapsed();
    }
    let t = Instant::now();
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd)?;
        to.process_new_packets()?;
    }
    if !server_sends {
        *spent += t.elapsed();
    }
    Ok(())
}

/// In-memory handshakes against Porchlight's server configuration; see
/// the module header.
fn handshakes(args: &[String]) -> Result<()> {
    use std::ops::DerefMut;
    let [dir, mode, seconds, rest @ ..] = args else {
        bail!("handshakes DIR full|resumed SECONDS [1.2|1.3]");
    };
    let resume = parse_mode(mode)?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    if !(1..=600).contains(&seconds) {
        bail!("SECONDS 1..=600");
    }
    let version = parse_version(rest.first())?;
    let dir = std::path::Path::new(dir);
    let files = porchlight_broker::net::tls::TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        min_version: porchlight_broker::net::tls::TlsVersion::V1_2,
        client_ca: None,
        crl: None,
        client_auth: porchlight_broker::net::tls::ClientAuth::None,
        identity: porchlight_broker::net::tls::IdentityField::Cn,
        reload_interval: None,
    };
    let server = porchlight_broker::net::tls::TlsMaterial::load(&files)?.config();
    let client = Arc::new(client_config(version, resume)?);
    let name = ServerName::try_from("localhost")?;
    let (mut n, mut resumed, mut spent) = (0u64, 0u64, Duration::ZERO);
    let mut suite = None;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let mut c = rustls::ClientConnection::new(client.clone(), name.clone())?;
        let t = Instant::now();
        let mut s = rustls::ServerConnection::new(server.clone())?;
        spent += t.elapsed();
        // A handshake takes at most 3 round trips; the ticket follows.
        for _ in 0..6 {
            pump(c.deref_mut(), s.deref_mut(), false, &mut spent)?;
            pump(s.deref_mut(), c.deref_mut(), true, &mut spent)?;
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                break;
            }
        }
        if c.is_handshaking() || s.is_handshaking() {
            bail!("the handshake did not complete");
        }
        if s.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
        suite = s.negotiated_cipher_suite().map(|s| s.suite());
        n += 1;
        let t = Instant::now();
        drop(s);
        spent += t.elapsed();
    }
    let server_secs = spent.as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"suite\":\"{suite:?}\",\"handshakes\":{n},\"resumed\":{resumed},\"server_seconds\":{server_secs:.3},\"per_server_second\":{:.0}}}",
        n as f64 / server_secs
    );
    Ok(())
}

fn parse_mode(mode: &str) -> Result<bool> {
    match mode {
        "full" => Ok(false),
        "resumed" => Ok(true),
        m => bail!("mode {m}: full or resumed"),
    }
}

/// An MQTT 3.1.1 CONNECT, clean session, keepalive 30.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut v = vec![0x10, 0];
    v.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30]);
    v.extend_from_slice(&(id.len() as u16).to_be_bytes());
    v.extend_from_slice(id.as_bytes());
    v[1] = (v.len() - 2) as u8;
    v
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("certs") if args.len() == 2 => certs(&args[1], "ecdsa"),
        Some("certs") if args.len() == 3 => certs(&args[1], &args[2]),
        Some("run") => run(&args[1..]).await,
        Some("handshakes") => handshakes(&args[1..]),
        _ => bail!(
            "usage:\n  tls_bench certs DIR [ecdsa|rsa]\n  tls_bench run ADDR CA full|resumed SECONDS CONCURRENCY [1.2|1.3]\n  tls_bench handshakes DIR full|resumed SECONDS [1.2|1.3]"
        ),
    }
}

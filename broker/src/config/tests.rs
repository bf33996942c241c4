use clap::Parser;

use super::*;

#[test]
fn defaults_validate() {
    let c = Cli::parse_from(["porchlight"]).validate().expect("valid");
    assert_eq!(c.listen, vec!["127.0.0.1:1883".parse().expect("addr")]);
    assert!(c.loopback_only);
    assert!(c.max_packet_size > 1024 * 1024, "a 1 MiB payload must fit");
}

#[test]
fn anonymous_access_beyond_loopback_is_an_explicit_choice() {
    // Chosen: --allow-anonymous opens the default listener to the network.
    let c = Cli::parse_from(["porchlight", "--allow-anonymous"])
        .validate()
        .expect("valid");
    assert_eq!(c.listen, vec!["0.0.0.0:1883".parse().expect("addr")]);
    assert!(!c.loopback_only);
    // So does configured authentication.
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, "").expect("write");
    let c = Cli::parse_from(["porchlight", "--auth-file", auth.to_str().expect("utf-8")])
        .validate()
        .expect("valid");
    assert_eq!(c.listen, vec!["0.0.0.0:1883".parse().expect("addr")]);
    // Not chosen: a listener beyond loopback is refused, naming the flag
    // and the way out; loopback ones are fine.
    for (flag, addr) in [
        ("--listen", "0.0.0.0:1883"),
        ("--ws-listen", "10.0.0.5:8083"),
        ("--listen", "[::]:1883"),
    ] {
        let err = Cli::parse_from(["porchlight", flag, addr])
            .validate()
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(flag) && text.contains("--allow-anonymous"),
            "{text}"
        );
    }
    Cli::parse_from([
        "porchlight",
        "--listen",
        "127.0.0.2:1883",
        "--ws-listen",
        "[::1]:8083",
    ])
    .validate()
    .expect("loopback is fine");
}

#[test]
fn listen_repeats_and_splits_and_sys_topics_turn_off() {
    let c = Cli::parse_from([
        "porchlight",
        "--listen",
        "127.0.0.1:1,127.0.0.1:2",
        "--listen",
        "[::1]:3",
        "--no-sys-topics",
    ])
    .validate()
    .expect("valid");
    assert_eq!(c.listen.len(), 3);
    assert_eq!(c.sys_interval, None);
    let c = Cli::parse_from(["porchlight", "--sys-interval", "5"])
        .validate()
        .expect("valid");
    assert_eq!(c.sys_interval, Some(Duration::from_secs(5)));
}

#[test]
fn no_tcp_listen_drops_the_default_listener_and_its_proxy_address() {
    let c = Cli::parse_from([
        "porchlight",
        "--no-tcp-listen",
        "--ws-listen",
        "127.0.0.1:9",
    ])
    .validate()
    .expect("valid");
    assert!(c.listen.is_empty());
    assert_eq!(c.ws_listen.len(), 1);
    // The default TCP address is not a listener to name.
    let err = Cli::parse_from([
        "porchlight",
        "--allow-anonymous",
        "--no-tcp-listen",
        "--ws-listen",
        "127.0.0.1:9",
        "--proxy-protocol",
        "127.0.0.1:1883",
    ])
    .validate()
    .expect_err("no such listener");
    assert!(
        err.to_string().contains("not the address of any listener"),
        "{err}"
    );
    assert!(err.to_string().contains("--proxy-protocol"), "{err}");
    assert!(
        Cli::try_parse_from(["porchlight", "--no-tcp-listen", "--listen", "127.0.0.1:1"]).is_err()
    );
}

#[test]
fn bad_values_name_the_flag() {
    let err = Cli::parse_from(["porchlight", "--receive-maximum", "0"])
        .validate()
        .expect_err("invalid");
    assert!(err.to_string().contains("--receive-maximum"), "{err}");
    let err = Cli::parse_from(["porchlight", "--max-packet-size", "10"])
        .validate()
        .expect_err("invalid");
    assert!(err.to_string().contains("--max-packet-size"), "{err}");
    let err = Cli::parse_from(["porchlight", "--listen-backlog", "0"])
        .validate()
        .expect_err("invalid");
    assert!(err.to_string().contains("--listen-backlog"), "{err}");
}

#[test]
fn admin_tls_needs_its_files_and_names_the_flag() {
    let err = Cli::parse_from(["porchlight", "--admin-tls"])
        .validate()
        .expect_err("no files");
    assert!(err.to_string().contains("--admin-tls"), "{err}");
    let err = Cli::parse_from(["porchlight", "--admin-tls-cert", "/x.crt"])
        .validate()
        .expect_err("no key");
    assert!(err.to_string().contains("--admin-tls-key"), "{err}");
    let c = Cli::parse_from([
        "porchlight",
        "--admin-tls-cert",
        "/a.crt",
        "--admin-tls-key",
        "/a.key",
    ])
    .validate()
    .expect("own files");
    assert_eq!(c.admin_tls, Some(("/a.crt".into(), "/a.key".into())));
    let err = Cli::parse_from(["porchlight", "--admin-token-file", "/nonexistent/token"])
        .validate()
        .expect_err("unreadable token");
    assert!(err.to_string().contains("--admin-token-file"), "{err}");
}

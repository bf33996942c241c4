//! The container image (`scripts/image.sh`, FROM scratch) under Docker, on
//! a private network this test creates: it starts read-only and non-root,
//! serves MQTT and `/metrics`, goes unready on `docker stop` and exits 0
//! within the grace period.
//!
//! `.ci/run` builds the image first and names it in
//! `PORCHLIGHT_TEST_IMAGE`, so the release build does not compete with
//! the other tests; without it this test builds the image itself.

use std::process::Command;
use std::time::{Duration, Instant};

use porchlight_broker::codec::Protocol;

use crate::support::*;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker is needed for the image test (a Docker engine here)");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the container and the network whatever the test's outcome.
struct Cleanup {
    container: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

#[tokio::test]
async fn the_image_serves_read_only_and_stops_cleanly() {
    let image = match std::env::var("PORCHLIGHT_TEST_IMAGE") {
        Ok(tag) => tag,
        Err(_) => {
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
            let tag = "porchlight:test".to_owned();
            let out = Command::new(format!("{root}/scripts/image.sh"))
                .arg(&tag)
                .output()
                .expect("scripts/image.sh runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            tag
        }
    };
    // Non-root, the data directory a volume.
    let user = docker(&["image", "inspect", "-f", "{{.Config.User}}", &image]);
    assert_eq!(user, "65532:65532");
    let volumes = docker(&["image", "inspect", "-f", "{{json .Config.Volumes}}", &image]);
    assert!(volumes.contains("/data"), "{volumes}");

    let id = std::process::id();
    let guard = Cleanup {
        container: format!("porchlight-image-test-{id}"),
        network: format!("porchlight-image-test-{id}"),
    };
    docker(&["network", "create", &guard.network]);
    // The admin token as a Kubernetes Secret would give it: a read-only
    // file, named in the environment the node and `ctl` share.
    let secrets = tempfile::tempdir().expect("tempdir");
    let token = secrets.path().join("admin-token");
    std::fs::write(&token, "image-test-token\n").expect("token");
    let mount = format!("{}:/run/secrets/admin-token:ro", token.display());
    docker(&[
        "run",
        "-d",
        "--read-only",
        "--network",
        &guard.network,
        "--name",
        &guard.container,
        "-v",
        &mount,
        "-e",
        "PORCHLIGHT_ADMIN_TOKEN_FILE=/run/secrets/admin-token",
        "-e",
        "PORCHLIGHT_ALLOW_ANONYMOUS=true",
        "-e",
        "PORCHLIGHT_DRAIN_DELAY=2",
        "-e",
        "PORCHLIGHT_SHUTDOWN_GRACE=5",
        &image,
    ]);
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &guard.container,
    ]);
    let admin = format!("http://{ip}:9883");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = tokio::task::spawn_blocking({
            let url = format!("{admin}/readyz");
            move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(1)))
                    .build()
                    .into();
                agent
                    .get(&url)
                    .call()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .await
        .expect("probe");
        if ok == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 30 s: {}",
            docker(&["logs", &guard.container])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mqtt: std::net::SocketAddr = format!("{ip}:1883").parse().expect("addr");
    let mut sub = RawClient::connect(mqtt, Protocol::V5, "in-the-box").await;
    sub.subscribe("box/#", q(1)).await;
    let mut publisher = RawClient::connect(mqtt, Protocol::V311, "publisher").await;
    publisher.publish("box/t", q(1), 1, b"hello").await;
    assert_eq!(sub.expect_publish().await.payload.as_ref(), b"hello");

    let metrics = http("GET", format!("{admin}/metrics"), Vec::new()).await;
    assert_eq!(metrics.status, 200);
    let s = parse_metrics(&metrics.body, false);
    assert_eq!(sample(&s, "porchlight_clients_connected", &[]), 2.0);
    // The data directory took the durable state (its subscription).
    assert!(sample(&s, "porchlight_storage_size_bytes", &[]) > 0.0);

    // What `kubectl exec … porchlight ctl status` does.
    let status = docker(&["exec", &guard.container, "/porchlight", "ctl", "status"]);
    assert!(status.contains("ready      yes"), "{status}");
    assert!(status.contains("clients    2"), "{status}");

    // `docker stop`: SIGTERM; not ready at once, through the drain delay.
    let container = guard.container.clone();
    let started = Instant::now();
    let stop = std::thread::spawn(move || docker(&["stop", "-t", "15", &container]));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http("GET", format!("{admin}/readyz"), Vec::new()).await;
        if r.status == 503 {
            assert!(r.body.contains("[-] not shutting down"), "{}", r.body);
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.join().expect("docker stop");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "stopped in {took:?}, past the grace period"
    );
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &guard.container]);
    assert_eq!(code, "0", "{}", docker(&["logs", &guard.container]));
    // The subscriber was told why (v5 DISCONNECT 0x8B, server shutting down).
    sub.expect_disconnect(Some(porchlight_broker::codec::reason::SERVER_SHUTTING_DOWN))
        .await;
}

/// The top-level Dockerfile (where base images can be pulled) ends in the
/// same runtime stage as the image built here: same user, volume,
/// environment, labels, ports, stop signal and entry point.
#[test]
fn the_dockerfile_and_the_scratch_image_agree() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let runtime = |path: &str| -> Vec<String> {
        let text = std::fs::read_to_string(format!("{root}/{path}")).expect(path);
        let stage = text.rsplit("FROM scratch").next().expect("a scratch stage");
        // Instructions, with their continuation lines joined; COPY's
        // sources differ (a build stage, or the prepared context).
        stage
            .replace("\\\n", " ")
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("COPY"))
            .collect()
    };
    let ours = runtime("docker/runtime.Dockerfile");
    assert!(ours.iter().any(|l| l == "USER 65532:65532"), "{ours:?}");
    assert_eq!(runtime("Dockerfile"), ours);
}

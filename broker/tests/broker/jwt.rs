//! JWT authentication: HS256, RS256 and ES256 tokens carrying the username
//! and ACL claims, a rotated key file, a connection closing when its token
//! expires.

use std::time::{Duration, SystemTime};

use porchlight_broker::codec::{reason, Protocol};
use porchlight_broker::metrics::Metrics;

use crate::auth::{connack, login, suback};
use crate::support::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(sub: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "exp": exp,
        "iss": "fleet",
        "acl": {"pub": ["jwt/%u/#"], "sub": ["cmd/%u"]},
    })
}

fn sign(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    claims: &serde_json::Value,
) -> Vec<u8> {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key)
        .expect("sign")
        .into_bytes()
}

/// The broker's `[jwt]` table and a key to sign with, per algorithm.
fn jwt_setup(
    alg: jsonwebtoken::Algorithm,
    dir: &std::path::Path,
) -> (String, jsonwebtoken::EncodingKey) {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let secret = "a shared secret of at least 32 bytes!";
    match alg {
        Algorithm::HS256 => (
            format!("[jwt]\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\nissuer = \"fleet\"\nleeway_seconds = 0\n"),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        Algorithm::RS256 | Algorithm::ES256 => {
            let key = if alg == Algorithm::RS256 {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            } else {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            }
            .expect("key");
            let name = format!("{alg:?}.pub.pem");
            std::fs::write(dir.join(&name), key.public_key_pem()).expect("write key");
            let private = key.serialize_pem();
            let encoding = if alg == Algorithm::RS256 {
                EncodingKey::from_rsa_pem(private.as_bytes())
            } else {
                EncodingKey::from_ec_pem(private.as_bytes())
            }
            .expect("encoding key");
            (
                format!("[jwt]\nalgorithm = \"{alg:?}\"\npublic_key_file = \"{name}\"\nissuer = \"fleet\"\nleeway_seconds = 0\n"),
                encoding,
            )
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_rotated_jwt_key_file_is_taken_into_use_without_a_restart() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let keys = tempfile::tempdir().expect("tempdir");
    let (old, new) = (
        "the first shared secret, 32 bytes or more",
        "the second shared secret, 32 bytes or more",
    );
    std::fs::write(keys.path().join("jwt.secret"), format!("{old}\n")).expect("write");
    let path = keys.path().join("auth.toml");
    std::fs::write(
        &path,
        "[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"jwt.secret\"\n",
    )
    .expect("write");
    let b = TestBroker::with(|c| {
        c.auth.file = Some(path.clone());
        c.auth.reload_interval = Some(Duration::from_millis(100));
    })
    .await;
    let token = |secret: &str| {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            &claims("dev-7", now() + 600),
        )
    };
    let code = |secret: &'static str| {
        let t = token(secret);
        async move { connack(b.addr, login(Protocol::V5, "k", None, Some(&t))).await }
    };
    assert_eq!(code(old).await, 0);
    assert_eq!(code(new).await, reason::BAD_USER_NAME_OR_PASSWORD);
    // The secret is rotated; the auth file itself does not change.
    std::fs::write(keys.path().join("jwt.secret"), format!("{new}\n")).expect("rewrite");
    let m = b.broker.metrics.clone();
    wait_until("the new key is in force", || {
        Metrics::get(&m.auth_reloads) == 1
    })
    .await;
    assert_eq!(code(new).await, 0);
    assert_eq!(code(old).await, reason::BAD_USER_NAME_OR_PASSWORD);
    // A key file that no longer loads is refused; the last good key stays.
    std::fs::write(keys.path().join("jwt.secret"), "short\n").expect("rewrite");
    wait_until("the bad key is refused", || {
        Metrics::get(&m.auth_reload_failures) == 1
    })
    .await;
    assert_eq!(code(new).await, 0);
    // The file is pointed at a key that is not written yet (a ConfigMap
    // and a Secret updated apart): refused until the key appears, then in
    // force without another edit of the file.
    let third = "the third shared secret, 32 bytes or more";
    std::fs::write(
        &path,
        "[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"jwt-v3.secret\"\n",
    )
    .expect("rewrite");
    wait_until("the file naming a missing key is refused", || {
        Metrics::get(&m.auth_reload_failures) == 2
    })
    .await;
    assert_eq!(code(new).await, 0);
    std::fs::write(keys.path().join("jwt-v3.secret"), third).expect("write");
    wait_until("the new key is in force", || {
        Metrics::get(&m.auth_reloads) == 2
    })
    .await;
    assert_eq!(code(third).await, 0);
    assert_eq!(code(new).await, reason::BAD_USER_NAME_OR_PASSWORD);
    b.stop().await;
}

#[tokio::test]
async fn jwt_hs256_rs256_and_es256_tokens_carry_username_and_acl() {
    use jsonwebtoken::Algorithm;
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let keys = tempfile::tempdir().expect("tempdir");
        let (table, key) = jwt_setup(alg, keys.path());
        let text = format!("{table}\n[acl]\ndefault = \"deny\"\n");
        // Relative key paths are relative to the auth file: put it there.
        let path = keys.path().join("auth.toml");
        std::fs::write(&path, text).expect("write");
        let b = TestBroker::with(|c| c.auth.file = Some(path.clone())).await;
        let token = sign(alg, &key, &claims("dev-42", now() + 600));
        // The token goes in the password; the username may be anything.
        let (mut c, ack) = RawClient::connect_with(
            b.addr,
            login(Protocol::V5, "j1", Some("ignored"), Some(&token)),
        )
        .await;
        assert_eq!(ack.reason, 0, "{alg:?} token accepted");
        assert_eq!(
            c.puback("jwt/dev-42/t").await,
            reason::NO_MATCHING_SUBSCRIBERS,
            "{alg:?}"
        );
        assert_eq!(
            c.puback("jwt/dev-43/t").await,
            reason::NOT_AUTHORIZED,
            "{alg:?}"
        );
        assert_eq!(suback(&mut c, "cmd/dev-42").await, 1, "{alg:?}");
        assert_eq!(
            suback(&mut c, "cmd/+").await,
            reason::NOT_AUTHORIZED,
            "{alg:?}"
        );

        let expired = sign(alg, &key, &claims("dev-42", now() - 60));
        let mut tampered = token.clone();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let mut wrong_issuer = claims("dev-42", now() + 600);
        wrong_issuer["iss"] = "someone else".into();
        let wrong_issuer = sign(alg, &key, &wrong_issuer);
        let mut no_issuer = claims("dev-42", now() + 600);
        no_issuer.as_object_mut().expect("object").remove("iss");
        let no_issuer = sign(alg, &key, &no_issuer);
        let other_alg = sign(
            Algorithm::HS256,
            &jsonwebtoken::EncodingKey::from_secret(b"a different secret of at least 32 bytes"),
            &claims("dev-42", now() + 600),
        );
        for (what, bad) in [
            ("expired", expired),
            ("tampered", tampered),
            ("wrong issuer", wrong_issuer),
            ("no issuer although one is configured", no_issuer),
            ("foreign key", other_alg),
        ] {
            assert_eq!(
                connack(b.addr, login(Protocol::V5, "j2", None, Some(&bad))).await,
                reason::BAD_USER_NAME_OR_PASSWORD,
                "{alg:?}: {what}"
            );
        }
        b.stop().await;
    }
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (table, key) = jwt_setup(jsonwebtoken::Algorithm::HS256, keys.path());
    let path = keys.path().join("auth.toml");
    std::fs::write(&path, table).expect("write");
    let b = TestBroker::with(|c| c.auth.file = Some(path.clone())).await;
    let token = sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        &claims("short", now() + 2),
    );
    let (mut c, ack) =
        RawClient::connect_with(b.addr, login(Protocol::V5, "s", None, Some(&token))).await;
    assert_eq!(ack.reason, 0);
    c.expect_disconnect(Some(reason::NOT_AUTHORIZED)).await;
    b.stop().await;
}

// --- certificate identity ---

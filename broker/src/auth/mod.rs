//! Authentication and authorization: who a client is, and what it may do.
//!
//! At CONNECT, `connection/connect.rs` hands [`Auth::authenticate`] the client's
//! [`Credentials`] (username, password, the verified TLS certificate's
//! identity, the real address). Each [`Authenticator`] in the chain —
//! certificate identity, the auth file's users (argon2id PHC hashes), JWT
//! — accepts, rejects, or passes to the next. The result is a
//! [`Principal`] or a refusal with the CONNACK reason. Anonymous clients
//! (no username, no certificate) are allowed until any authentication is
//! configured (`--auth-file`, or `--tls-client-auth` other than `none`),
//! then only with `--allow-anonymous`.
//!
//! Repeated failures from one address are slowed (`net::Backoff`), counted
//! and logged without saying whether the username or the password was
//! wrong. Password checks run on blocking threads, at most one per core at
//! a time, so a flood of bad logins cannot stall the runtime.
//!
//! After CONNECT the connection keeps an [`Authz`] (`authz.rs`): the
//! principal and its narrowed ACL (`acl.rs`), asked by `connection/inbound.rs` on
//! every PUBLISH and SUBSCRIBE. The auth file is polled (`--auth-reload-interval`); a valid
//! change is swapped in and every connection rebuilds its ACL on its next
//! check; an invalid one is logged and the old file stays in force.

pub mod acl;
mod authz;
pub mod file;
pub mod jwt;
pub mod password;

pub use authz::{Authz, Target};

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::codec::reason;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::net::Backoff;
use crate::tenant::Directory;
use acl::Rule;
use file::Realm;

/// What a client presented at CONNECT.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// The name from a verified TLS client certificate.
    pub cert_identity: Option<String>,
    /// The client's address (from the PROXY header when the listener
    /// takes one).
    pub address: IpAddr,
}

/// Who a client turned out to be.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// `%u` in ACL patterns; `None` for anonymous clients.
    pub username: Option<String>,
    /// ACL rules the credentials carry (JWT claims), checked first.
    pub claims: Vec<Rule>,
    /// When the credentials stop being valid (a JWT's `exp`).
    pub expires: Option<SystemTime>,
    /// How the client was authenticated, for logs.
    pub method: &'static str,
}

/// One authenticator's answer.
#[derive(Debug)]
pub enum Verdict {
    Accept(Principal),
    /// The credentials are this authenticator's to judge, and wrong. The
    /// string is for the debug log only.
    Reject(String),
    /// Not this authenticator's kind of credentials.
    Pass,
}

/// A way to authenticate a client. New backends (HTTP, LDAP, …) implement
/// this and join the chain in [`Realm`] order.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate(&self, c: &Credentials) -> Verdict;
}

/// A verified TLS client certificate: the handshake already checked it,
/// so its identity is the username (any CONNECT username is ignored).
#[derive(Debug)]
pub struct CertificateIdentity;

impl Authenticator for CertificateIdentity {
    fn authenticate(&self, c: &Credentials) -> Verdict {
        match &c.cert_identity {
            Some(name) => Verdict::Accept(Principal {
                username: Some(name.clone()),
                method: "certificate",
                ..Principal::default()
            }),
            None => Verdict::Pass,
        }
    }
}

/// The auth file's `[[users]]`: username to PHC string.
#[derive(Debug, Default)]
pub struct PasswordUsers(pub HashMap<String, String>);

impl Authenticator for PasswordUsers {
    fn authenticate(&self, c: &Credentials) -> Verdict {
        let Some(phc) = c.username.as_ref().and_then(|u| self.0.get(u)) else {
            return Verdict::Pass;
        };
        match &c.password {
            Some(p) if crate::auth::password::verify(phc, p) => Verdict::Accept(Principal {
                username: c.username.clone(),
                method: "password",
                ..Principal::default()
            }),
            Some(_) => Verdict::Reject("wrong password".into()),
            None => Verdict::Reject("no password".into()),
        }
    }
}

impl Authenticator for jwt::JwtVerifier {
    fn authenticate(&self, c: &Credentials) -> Verdict {
        match &c.password {
            Some(p) if jwt::JwtVerifier::looks_like_token(p) => match self.verify(p) {
                Ok(principal) => Verdict::Accept(principal),
                Err(e) => Verdict::Reject(e),
            },
            _ => Verdict::Pass,
        }
    }
}

impl Realm {
    /// The authenticators, in the order they are asked.
    fn chain(&self) -> impl Iterator<Item = &dyn Authenticator> {
        let first: [&dyn Authenticator; 2] = [&CertificateIdentity, &self.users];
        first
            .into_iter()
            .chain(self.jwt.iter().map(|j| j as &dyn Authenticator))
    }

    /// Whether checking credentials may cost real CPU (argon2, RSA).
    fn expensive(&self) -> bool {
        !self.users.0.is_empty() || self.jwt.is_some()
    }
}

/// The outcome of CONNECT authentication.
#[derive(Debug)]
pub enum Decision {
    Allow(Principal),
    /// CONNACK with this reason (mapped to 3.1.1 return codes by the
    /// codec: 0x86 → 4, 0x87 → 5).
    Refuse {
        code: u8,
        why: &'static str,
    },
}

/// What the auth watcher polls: the auth or tenants file `path`, then the
/// JWT key files it names now, sorted, each once. Only those matter: a
/// reload reads the file as it is on disk, whatever keys are in force.
fn watched(path: &std::path::Path) -> Vec<PathBuf> {
    let mut keys = jwt::named_key_files(path);
    keys.sort();
    keys.dedup();
    std::iter::once(path.to_path_buf()).chain(keys).collect()
}

/// A PHC string to verify against when no user matched, so an unknown
/// username costs the same time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| crate::auth::password::hash(b"porchlight decoy").unwrap_or_default())
}

/// The node's authentication and authorization configuration.
#[derive(Debug)]
pub struct Auth {
    /// `--tenants`, or else `--auth-file`: the file the directory comes
    /// from.
    file: Option<Source>,
    reload_interval: Option<Duration>,
    /// The file's contents as loaded (`reload.rs`).
    loaded: crate::reload::Snapshot,
    /// The tenants and their realms in force (`tenant/mod.rs`). A watch
    /// channel, so the broker learns of each reload with the directory it
    /// put in force and wakes the connections it affects (`ops/server.rs`),
    /// diffing consecutive directories without a race.
    directory: tokio::sync::watch::Sender<Arc<Directory>>,
    /// Bumped on every reload, together with `directory`; connections
    /// compare it to rebuild ACLs.
    generation: AtomicU64,
    /// Serializes reloads (SIGHUP and the poll).
    reload_lock: parking_lot::Mutex<()>,
    /// Any authentication configured: anonymous clients need
    /// `--allow-anonymous`.
    required: bool,
    allow_anonymous: bool,
    backoff: Backoff,
    /// Expensive credential checks allowed at once.
    slots: Arc<tokio::sync::Semaphore>,
}

/// Where the directory comes from.
#[derive(Debug, Clone)]
enum Source {
    /// `--auth-file`: the realm of the single `default` tenant.
    AuthFile(PathBuf),
    /// `--tenants`.
    Tenants(PathBuf),
}

impl Source {
    fn path(&self) -> &PathBuf {
        match self {
            Source::AuthFile(p) | Source::Tenants(p) => p,
        }
    }

    fn load(&self) -> Result<Directory, BrokerError> {
        match self {
            Source::AuthFile(path) => {
                file::load(path)
                    .map(Directory::single)
                    .map_err(|detail| BrokerError::AuthFile {
                        path: path.clone(),
                        detail,
                    })
            }
            Source::Tenants(path) => {
                crate::tenant::file::load(path).map_err(|detail| BrokerError::TenantsFile {
                    path: path.clone(),
                    detail,
                })
            }
        }
    }
}

/// How `Auth` is configured (from `config/mod.rs`).
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    pub file: Option<PathBuf>,
    /// `--tenants` (config validation keeps it and `file` apart).
    pub tenants: Option<PathBuf>,
    pub reload_interval: Option<Duration>,
    pub allow_anonymous: bool,
    /// TLS client certificates are asked for (`--tls-client-auth` is not
    /// `none`).
    pub client_certificates: bool,
}

impl Auth {
    /// Loads `--auth-file`, refusing a bad one with its path and the
    /// problem.
    pub fn load(o: &AuthOptions) -> Result<Auth, BrokerError> {
        let source = match (&o.tenants, &o.file) {
            (Some(t), _) => Some(Source::Tenants(t.clone())),
            (None, Some(f)) => Some(Source::AuthFile(f.clone())),
            (None, None) => None,
        };
        // The file and the key files it names, read before the load: a
        // change in between is reloaded once more rather than missed.
        let paths: Vec<PathBuf> = source.iter().flat_map(|s| watched(s.path())).collect();
        let loaded = crate::reload::snapshot(&paths);
        let directory = Arc::new(match &source {
            Some(s) => s.load()?,
            None => Directory::single(Realm::open()),
        });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Auth {
            required: source.is_some() || o.client_certificates,
            file: source,
            reload_interval: o.reload_interval,
            loaded,
            directory: tokio::sync::watch::Sender::new(directory),
            generation: AtomicU64::new(0),
            reload_lock: parking_lot::Mutex::new(()),
            allow_anonymous: o.allow_anonymous,
            backoff: Backoff::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(cores)),
        })
    }

    /// The tenants and realms in force.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.borrow().clone()
    }

    /// Whether any authentication is configured (usernames are checked).
    pub fn required(&self) -> bool {
        self.required
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The directory in force, changing whenever a reload puts a new one
    /// in force.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<Arc<Directory>> {
        self.directory.subscribe()
    }

    /// Decides a CONNECT. Waits out the address's backoff first; counts
    /// and logs failures (never saying which part was wrong).
    /// `realm` is the client's tenant's.
    pub async fn authenticate(
        &self,
        c: Credentials,
        realm: Arc<Realm>,
        metrics: &Metrics,
    ) -> Decision {
        let delay = self.backoff.delay(c.address);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (client, addr) = (c.client_id.clone(), c.address);
        let decision = if c.password.is_some() && c.cert_identity.is_none() && realm.expensive() {
            // Argon2 and RSA are milliseconds of CPU: off the runtime, one
            // per core at a time.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return Decision::Refuse {
                    code: reason::SERVER_UNAVAILABLE,
                    why: "server shutting down",
                };
            };
            let (required, anon) = (self.required, self.allow_anonymous);
            // The permit moves into the blocking task: it is held for as
            // long as the check runs, even if this connection goes away.
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                decide(&realm, &c, required, anon)
            })
            .await
            .unwrap_or(Decision::Refuse {
                code: reason::UNSPECIFIED_ERROR,
                why: "authentication failed",
            })
        } else {
            decide(&realm, &c, self.required, self.allow_anonymous)
        };
        if let Decision::Refuse { code, .. } = decision {
            if code == reason::BAD_USER_NAME_OR_PASSWORD || code == reason::NOT_AUTHORIZED {
                self.failed(addr, &client, metrics);
            }
        }
        decision
    }

    /// Counts, backs off and logs an authentication failure (also one
    /// decided before the credentials were checked: an unknown tenant).
    pub fn failed(&self, address: IpAddr, client: &str, metrics: &Metrics) {
        metrics.inc(&metrics.auth_failures);
        let failures = self.backoff.fail(address);
        // Powers of two: a flood is visible without flooding the log.
        if failures.is_power_of_two() {
            info!(%address, %client, failures, "Authentication failed");
        }
    }

    /// Polls `--auth-file` or `--tenants` until `shutdown`, and re-reads it
    /// on SIGHUP; a changed file that loads is swapped in, a bad one is
    /// logged and counted and the old one stays.
    pub async fn watch(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let Some(source) = self.file.clone() else {
            return;
        };
        let hangup = {
            let (auth, source, metrics) = (self.clone(), source.clone(), metrics.clone());
            let shutdown = shutdown.clone();
            async move {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut hup) = signal(SignalKind::hangup()) else {
                        return std::future::pending().await;
                    };
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            Some(()) = hup.recv() => {}
                        }
                        info!(path = %source.path().display(), "SIGHUP: re-reading");
                        let (a, s, m) = (auth.clone(), source.clone(), metrics.clone());
                        let _ = tokio::task::spawn_blocking(move || a.reload(&s, &m)).await;
                    }
                }
                #[cfg(not(unix))]
                std::future::pending::<()>().await
            }
        };
        let poll = async {
            let Some(every) = self.reload_interval else {
                return std::future::pending().await;
            };
            // The file and the JWT key files it names now (a file that
            // failed to load because its new key was not there yet is
            // retried when the key appears).
            let path = source.path().clone();
            let paths = move || watched(&path);
            let (auth, source, loaded) = (self.clone(), source.clone(), self.loaded.clone());
            let shutdown = shutdown.clone();
            crate::reload::watch_files(paths, loaded, every, shutdown, move || {
                auth.reload(&source, &metrics)
            })
            .await;
        };
        tokio::select! {
            _ = hangup => {}
            _ = poll => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Loads the file again: a valid one is swapped in (connections pick
    /// it up on their next check; tenants it no longer has are closed by
    /// `route/registry.rs`), a bad one is logged and counted and the old stays.
    fn reload(&self, source: &Source, metrics: &Metrics) {
        // SIGHUP and the poll may both reload: one at a time, so an older
        // read never replaces a newer one.
        let _one = self.reload_lock.lock();
        let p = source.path();
        match source.load() {
            Ok(directory) => {
                // The generation moves under the channel's lock: whoever
                // sees it moved reads the new directory, and the broker is
                // told after both.
                self.directory.send_modify(|d| {
                    *d = Arc::new(directory);
                    self.generation.fetch_add(1, Ordering::AcqRel);
                });
                metrics.inc(&metrics.auth_reloads);
                info!(path = %p.display(), "Auth file changed: now in force");
            }
            Err(e) => {
                metrics.inc(&metrics.auth_reload_failures);
                warn!(path = %p.display(), error = %e, "Auth file changed but is invalid; keeping the previous one");
            }
        }
    }
}

/// Runs the chain for one CONNECT.
fn decide(realm: &Realm, c: &Credentials, required: bool, allow_anonymous: bool) -> Decision {
    for a in realm.chain() {
        match a.authenticate(c) {
            Verdict::Accept(p) => return Decision::Allow(p),
            Verdict::Reject(why) => {
                tracing::debug!(client = %c.client_id, %why, "Credentials rejected");
                decoy(realm, c);
                return bad_credentials();
            }
            Verdict::Pass => {}
        }
    }
    match (&c.username, &c.password) {
        (None, None) if !required || allow_anonymous => Decision::Allow(Principal {
            method: "anonymous",
            ..Principal::default()
        }),
        (None, None) => Decision::Refuse {
            code: reason::NOT_AUTHORIZED,
            why: "anonymous access is not allowed",
        },
        // Nothing is configured to check credentials against: the
        // username is taken as given (for %u and the logs).
        _ if !required => Decision::Allow(Principal {
            username: c.username.clone(),
            method: "unchecked",
            ..Principal::default()
        }),
        _ => {
            decoy(realm, c);
            bad_credentials()
        }
    }
}

/// An unknown user (or a rejected token) costs what a wrong password
/// costs, so timing does not tell which usernames exist. Only when there
/// are users to hide, and never twice (a wrong password already paid).
fn decoy(realm: &Realm, c: &Credentials) {
    let known = c
        .username
        .as_ref()
        .is_some_and(|u| realm.users.0.contains_key(u));
    if let (false, false, Some(p)) = (realm.users.0.is_empty(), known, &c.password) {
        let _ = crate::auth::password::verify(decoy_hash(), p);
    }
}

fn bad_credentials() -> Decision {
    Decision::Refuse {
        code: reason::BAD_USER_NAME_OR_PASSWORD,
        why: "bad user name or password",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, password: Option<&str>, cert: Option<&str>) -> Credentials {
        Credentials {
            client_id: "c".into(),
            username: user.map(str::to_owned),
            password: password.map(|p| p.as_bytes().to_vec()),
            cert_identity: cert.map(str::to_owned),
            address: IpAddr::from([127, 0, 0, 1]),
        }
    }

    fn code(d: Decision) -> Option<u8> {
        match d {
            Decision::Allow(_) => None,
            Decision::Refuse { code, .. } => Some(code),
        }
    }

    #[test]
    fn the_chain_decides_as_documented() {
        let phc = crate::auth::password::hash(b"pw").expect("hash");
        let mut realm = Realm::open();
        realm.users.0.insert("alice".into(), phc);
        let ok = decide(&realm, &creds(Some("alice"), Some("pw"), None), true, false);
        assert!(matches!(ok, Decision::Allow(ref p) if p.username.as_deref() == Some("alice")));
        assert_eq!(
            code(decide(
                &realm,
                &creds(Some("alice"), Some("no"), None),
                true,
                false
            )),
            Some(reason::BAD_USER_NAME_OR_PASSWORD)
        );
        assert_eq!(
            code(decide(
                &realm,
                &creds(Some("bob"), Some("pw"), None),
                true,
                false
            )),
            Some(reason::BAD_USER_NAME_OR_PASSWORD)
        );
        assert_eq!(
            code(decide(&realm, &creds(None, None, None), true, false)),
            Some(reason::NOT_AUTHORIZED)
        );
        assert_eq!(
            code(decide(&realm, &creds(None, None, None), true, true)),
            None
        );
        assert_eq!(
            code(decide(&realm, &creds(None, None, None), false, false)),
            None
        );
        let cert = decide(
            &realm,
            &creds(Some("x"), Some("y"), Some("dev-9")),
            true,
            false,
        );
        assert!(matches!(cert, Decision::Allow(ref p) if p.username.as_deref() == Some("dev-9")));
        let open = decide(
            &Realm::open(),
            &creds(Some("u"), Some("p"), None),
            false,
            false,
        );
        assert!(matches!(open, Decision::Allow(ref p) if p.username.as_deref() == Some("u")));
    }
}

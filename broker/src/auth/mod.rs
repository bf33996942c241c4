//! Authentication and authorization: who a client is, and what it may do.
//!
//! At CONNECT, `connect.rs` hands [`Auth::authenticate`] the client's
//! [`Credentials`] (username, password, the verified TLS certificate's
//! identity, the real address). Each [`Authenticator`] in the chain —
//! certificate identity, the auth file's users (argon2id PHC hashes), JWT
//! — accepts, rejects, or passes to the next. The result is a
//! [`Principal`] or a refusal with the CONNACK reason. Anonymous clients
//! (no username, no certificate) are allowed until any authentication is
//! configured (`--auth-file`, or `--tls-client-auth` other than `none`),
//! then only with `--allow-anonymous`.
//!
//! Repeated failures from one address are slowed ([`Backoff`]), counted
//! and logged without saying whether the username or the password was
//! wrong. Password checks run on blocking threads, at most one per core at
//! a time, so a flood of bad logins cannot stall the runtime.
//!
//! After CONNECT the connection keeps an [`Authz`]: the principal and its
//! narrowed ACL (`acl.rs`), asked by `inbound.rs` on every PUBLISH and
//! SUBSCRIBE. The auth file is polled (`--auth-reload-interval`); a valid
//! change is swapped in and every connection rebuilds its ACL on its next
//! check; an invalid one is logged and the old file stays in force.

pub mod acl;
pub mod file;
pub mod jwt;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tracing::{info, warn};

use crate::codec::reason;
use crate::error::BrokerError;
use crate::ids::TenantId;
use crate::metrics::Metrics;
use crate::tenant::quota::{Limits, Usage};
use crate::tenant::{Directory, Tenants};
use acl::{Access, ClientAcl, Permission, Rule, Subject};
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
            Some(p) if crate::password::verify(phc, p) => Verdict::Accept(Principal {
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

/// Failures an address gets before it is slowed.
const FREE_FAILURES: u32 = 3;
/// First delay after the free failures; doubles with each further one.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay: below the default `--connect-timeout`, so clients
/// behind a shared address with one broken neighbour still get in.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An address with no failure for this long starts afresh.
const BACKOFF_FORGET: Duration = Duration::from_secs(600);
/// Addresses tracked before stale ones are pruned.
const BACKOFF_ENTRIES: usize = 100_000;

/// Authentication failures per address, and the delay they earn.
#[derive(Debug)]
pub struct Backoff {
    failures: DashMap<IpAddr, (u32, Instant)>,
    pruned: parking_lot::Mutex<Instant>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            failures: DashMap::new(),
            pruned: parking_lot::Mutex::new(Instant::now()),
        }
    }
}

impl Backoff {
    /// The key an address is tracked under: IPv4 as is (IPv4-mapped IPv6
    /// too), IPv6 by its /64, which one host or site usually holds whole.
    fn key(addr: IpAddr) -> IpAddr {
        match addr.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
            v4 => v4,
        }
    }

    /// How long the next attempt from `addr` waits before it is checked.
    pub fn delay(&self, addr: IpAddr) -> Duration {
        match self.failures.get(&Self::key(addr)).map(|e| *e) {
            Some((n, last)) if n >= FREE_FAILURES && last.elapsed() < BACKOFF_FORGET => {
                let shift = (n - FREE_FAILURES).min(16);
                BACKOFF_BASE.saturating_mul(1 << shift).min(BACKOFF_MAX)
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failure; returns how many `addr` has now.
    pub fn fail(&self, addr: IpAddr) -> u32 {
        let addr = Self::key(addr);
        if self.failures.len() >= BACKOFF_ENTRIES && !self.failures.contains_key(&addr) {
            // Prune at most once a second; while the table stays full of
            // recent failures, new addresses are not tracked (still
            // counted and logged) rather than grow it.
            let mut last = self.pruned.lock();
            if last.elapsed() >= Duration::from_secs(1) {
                *last = Instant::now();
                drop(last);
                self.failures
                    .retain(|_, (_, last)| last.elapsed() < BACKOFF_FORGET);
            }
            if self.failures.len() >= BACKOFF_ENTRIES {
                return 1;
            }
        }
        let mut e = self.failures.entry(addr).or_insert((0, Instant::now()));
        if e.1.elapsed() >= BACKOFF_FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
        e.0
    }
}

/// A PHC string to verify against when no user matched, so an unknown
/// username costs the same time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| crate::password::hash(b"porchlight decoy").unwrap_or_default())
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
    /// The tenants and their realms in force (`tenant/mod.rs`).
    directory: parking_lot::RwLock<Arc<Directory>>,
    /// Bumped on every reload; connections compare it to rebuild ACLs.
    generation: AtomicU64,
    /// Tells the broker a reload happened (`generation`'s value), so it
    /// wakes every connection to re-check its tenant and grants.
    reloaded: tokio::sync::watch::Sender<u64>,
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

/// How `Auth` is configured (from `config.rs`).
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
        let paths: Vec<PathBuf> = source.iter().map(|s| s.path().clone()).collect();
        let loaded = crate::reload::snapshot(&paths);
        let directory = match &source {
            Some(s) => s.load()?,
            None => Directory::single(Realm::open()),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Auth {
            required: source.is_some() || o.client_certificates,
            file: source,
            reload_interval: o.reload_interval,
            loaded,
            directory: parking_lot::RwLock::new(Arc::new(directory)),
            generation: AtomicU64::new(0),
            reloaded: tokio::sync::watch::Sender::new(0),
            allow_anonymous: o.allow_anonymous,
            backoff: Backoff::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(cores)),
        })
    }

    /// The tenants and realms in force.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().clone()
    }

    /// Whether any authentication is configured (usernames are checked).
    pub fn required(&self) -> bool {
        self.required
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Changes whenever a reload put a new directory in force.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
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

    /// The connection's authorization state for `principal` in `tenant`,
    /// whose usage is `usage`.
    pub fn authz(
        &self,
        principal: Principal,
        tenant: TenantId,
        usage: Arc<Usage>,
        client: &str,
        address: IpAddr,
    ) -> Authz {
        let expires_at = principal.expires.map(|exp| {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let mut z = Authz {
            expires_at,
            principal,
            home: Target {
                tenant,
                limits: Arc::default(),
                usage,
                acl: None,
            },
            removed: false,
            client: client.to_owned(),
            address,
            grants: Vec::new(),
            targets: Vec::new(),
            generation: u64::MAX,
        };
        z.rebuild(self);
        z
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
            let path = source.path().clone();
            let (auth, source, loaded) = (self.clone(), source.clone(), self.loaded.clone());
            let shutdown = shutdown.clone();
            crate::reload::watch_files(vec![path], loaded, every, shutdown, move || {
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
    /// `registry.rs`), a bad one is logged and counted and the old stays.
    fn reload(&self, source: &Source, metrics: &Metrics) {
        let p = source.path();
        match source.load() {
            Ok(directory) => {
                *self.directory.write() = Arc::new(directory);
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                self.reloaded.send_replace(generation);
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
        let _ = crate::password::verify(decoy_hash(), p);
    }
}

fn bad_credentials() -> Decision {
    Decision::Refuse {
        code: reason::BAD_USER_NAME_OR_PASSWORD,
        why: "bad user name or password",
    }
}

/// One connection's authorization: its principal, its own tenant's
/// limits and narrowed ACL, and the tenants it may address as a gateway.
#[derive(Debug)]
pub struct Authz {
    pub principal: Principal,
    /// The connection's own tenant, fixed at CONNECT.
    pub home: Target,
    /// The tenant is no longer configured: the connection must close.
    pub removed: bool,
    client: String,
    address: IpAddr,
    /// Tenants the principal may address through `$tenant/<id>/`.
    grants: Vec<TenantId>,
    /// Those it has addressed since the last reload, built on first use.
    targets: Vec<Target>,
    generation: u64,
    /// `principal.expires` as a deadline, fixed at CONNECT.
    expires_at: Option<tokio::time::Instant>,
}

/// A tenant as one connection acts in it: the tenant's limits in force,
/// its live usage (quotas are counted there), and the ACL narrowed for the
/// principal (`%t` is this tenant).
#[derive(Debug)]
pub struct Target {
    pub tenant: TenantId,
    pub limits: Arc<Limits>,
    pub usage: Arc<Usage>,
    /// `None`: the realm allows everything (no rules, default allow).
    /// Boxed: most connections have none, and each holds a `Target`.
    acl: Option<Box<ClientAcl>>,
}

impl Target {
    /// Whether the client may `access` `topic` in this tenant (for
    /// subscribe: the filter without its prefixes). Counts denials.
    pub fn allows(&mut self, access: Access, topic: &str, metrics: &Metrics) -> bool {
        let allowed = self.acl.as_mut().is_none_or(|a| a.allows(access, topic));
        if !allowed {
            metrics.inc(match access {
                Access::Publish => &metrics.acl_denied_publish,
                Access::Subscribe => &metrics.acl_denied_subscribe,
            });
        }
        allowed
    }
}

impl Authz {
    /// The ACL of `realm` for this client acting in tenant `tenant`;
    /// `claims` (a JWT's rules) only count in its own tenant.
    fn acl_for(&self, realm: &Realm, tenant: &TenantId, claims: &[Rule]) -> Option<Box<ClientAcl>> {
        let open =
            realm.rules.is_empty() && realm.default == Permission::Allow && claims.is_empty();
        (!open).then(|| {
            Box::new(ClientAcl::build(
                claims,
                &realm.rules,
                realm.default,
                &Subject {
                    username: self.principal.username.as_deref(),
                    client: &self.client,
                    tenant: tenant.as_str(),
                    address: self.address,
                },
            ))
        })
    }

    fn rebuild(&mut self, auth: &Auth) {
        let generation = auth.generation();
        let directory = auth.directory();
        self.targets.clear();
        let Some(def) = directory.tenant(&self.home.tenant) else {
            // Removed: nothing is allowed while the connection closes.
            self.removed = true;
            self.grants.clear();
            self.home.acl = Some(Box::new(ClientAcl::build(
                &[],
                &[],
                Permission::Deny,
                &Subject {
                    username: None,
                    client: &self.client,
                    tenant: self.home.tenant.as_str(),
                    address: self.address,
                },
            )));
            self.generation = generation;
            return;
        };
        self.home.limits = def.limits.clone();
        self.home.acl = self.acl_for(&def.realm, &self.home.tenant, &self.principal.claims);
        self.grants = self
            .principal
            .username
            .as_ref()
            .and_then(|u| def.grants.get(u))
            .cloned()
            .unwrap_or_default();
        self.generation = generation;
    }

    /// Whether the client may `access` `topic` in its own tenant (for
    /// subscribe: the filter without its `$share/group/` prefix). Counts
    /// denials.
    pub fn allows(&mut self, auth: &Auth, access: Access, topic: &str, metrics: &Metrics) -> bool {
        self.refresh(auth);
        self.home.allows(access, topic, metrics)
    }

    /// The tenant a gateway's `$tenant/<id>/` addresses, if the principal
    /// is granted it (and it is still configured): its limits, usage and
    /// ACL for this principal. `None` refuses the prefix.
    pub fn target(&mut self, auth: &Auth, tenants: &Tenants, id: &str) -> Option<&mut Target> {
        self.refresh(auth);
        let tenant = self.grants.iter().find(|t| t.as_str() == id).cloned()?;
        let i = match self.targets.iter().position(|t| t.tenant == tenant) {
            Some(i) => i,
            None => {
                let directory = auth.directory();
                let def = directory.tenant(&tenant)?;
                let acl = self.acl_for(&def.realm, &tenant, &[]);
                self.targets.push(Target {
                    usage: tenants.usage(&tenant),
                    limits: def.limits.clone(),
                    tenant,
                    acl,
                });
                self.targets.len() - 1
            }
        };
        self.targets.get_mut(i)
    }

    /// Whether the principal may still address `id` (a reload may take a
    /// grant away).
    pub fn granted(&self, id: &str) -> bool {
        self.grants.iter().any(|t| t.as_str() == id)
    }

    /// Rebuilds from the directory in force if it changed since.
    pub fn refresh(&mut self, auth: &Auth) {
        if auth.generation() != self.generation {
            self.rebuild(auth);
        }
    }

    /// Whether a reload happened since this connection last looked.
    pub fn stale(&self, auth: &Auth) -> bool {
        auth.generation() != self.generation
    }

    /// When the credentials expire, as a deadline for the connection.
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
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
        let phc = crate::password::hash(b"pw").expect("hash");
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

    #[test]
    fn backoff_grows_after_the_free_failures_and_is_capped() {
        let b = Backoff::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.delay(a), Duration::ZERO);
            b.fail(a);
        }
        assert_eq!(b.delay(a), BACKOFF_BASE);
        b.fail(a);
        assert_eq!(b.delay(a), BACKOFF_BASE * 2);
        for _ in 0..40 {
            b.fail(a);
        }
        assert_eq!(b.delay(a), BACKOFF_MAX);
        assert_eq!(b.delay(IpAddr::from([10, 0, 0, 2])), Duration::ZERO);
        // IPv4-mapped IPv6 is the same address; an IPv6 /64 is one key.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("addr");
        assert_eq!(b.delay(mapped), BACKOFF_MAX);
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("addr");
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().expect("addr");
        for _ in 0..FREE_FAILURES {
            b.fail(v6a);
        }
        assert_eq!(b.delay(v6b), BACKOFF_BASE);
    }
}

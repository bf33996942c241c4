//! One connection's authorization after CONNECT: its principal, its own
//! tenant's limits and narrowed ACL ([`Target`]), and the other tenants it
//! may address as a gateway (`$tenant/<id>/`). Built by `Authz::new` in
//! `connection/connect.rs`; asked by `connection/inbound.rs` on every PUBLISH and SUBSCRIBE;
//! rebuilt from the directory in force when `Auth`'s generation changes
//! (a reload).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::acl::{Access, Action, ClientAcl, Permission, Rule, Subject};
use super::file::Realm;
use super::{Auth, Principal};
use crate::ids::TenantId;
use crate::metrics::Metrics;
use crate::tenant::quota::{Limits, Usage};
use crate::tenant::Tenants;

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
    /// The connection's authorization state for `principal` in `tenant`,
    /// whose usage is `usage`.
    pub fn new(
        auth: &Auth,
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
        z.rebuild(auth);
        z
    }

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
            None if tenant.is_node() => {
                let acl = self.node_acl();
                self.targets.push(Target {
                    usage: tenants.usage(&tenant),
                    limits: Arc::default(),
                    tenant,
                    acl: Some(Box::new(acl)),
                });
                self.targets.len() - 1
            }
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

    /// An operator in the node's tenant: reading its `$SYS`, nothing else.
    fn node_acl(&self) -> ClientAcl {
        let read_sys = Rule {
            permission: Permission::Allow,
            action: Action::Subscribe,
            topics: vec!["$SYS/#".to_owned()],
            user: None,
            client: None,
            address: None,
        };
        ClientAcl::build(
            &[],
            &[read_sys],
            Permission::Deny,
            &Subject {
                username: self.principal.username.as_deref(),
                client: &self.client,
                tenant: crate::ids::NODE_TENANT,
                address: self.address,
            },
        )
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

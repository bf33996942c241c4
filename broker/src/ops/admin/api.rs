//! `/api/v1/...`: the admin REST API (JSON), described in
//! `docs/openapi.json` and `docs/admin-api.md`.
//!
//! Reads look at the node's state (`State`: session records and runtimes,
//! the retained store) and its tenants' usage; the two writes go through
//! the same paths clients use: a kick through the registry
//! (`Registry::kick`, DISCONNECT 0x98), a retained delete through the
//! `Control` seam (an empty retained PUBLISH). Who may call what is
//! `token.rs`'s [`Access`], enforced by [`guard`] for every route here.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::token::Access;
use super::AdminState;
use crate::ids::{ClientId, SessionKey, TenantId};
use crate::tenant::quota::{total, Limits, Usage};

/// Every API route, behind [`guard`].
pub fn routes(state: AdminState) -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/api/v1/node", get(node))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{client_id}", get(client))
        .route("/api/v1/clients/{client_id}/kick", post(kick))
        .route("/api/v1/sessions/{client_id}", get(client))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/retained", get(retained).delete(delete_retained))
        .route("/api/v1/tenants", get(tenants))
        .route("/api/v1/tenants/{tenant}", get(tenant))
        .route_layer(axum::middleware::from_fn_with_state(state, guard))
}

/// An error as the API answers it: a status and `{"error", "detail"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    fn not_found(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "detail": self.detail });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// The token rules (`token.rs`), before any API handler runs.
pub async fn guard(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let write = req.method() != Method::GET && req.method() != Method::HEAD;
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(super::token::loopback_host);
    match s.token.access(authorization, s.loopback) {
        Access::Full => next.run(req).await,
        Access::ReadOnly if !host_ok => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without --admin-token-file the API answers only requests for a loopback host (localhost, 127.0.0.1, [::1])",
        )
        .into_response(),
        Access::ReadOnly if !write => next.run(req).await,
        Access::ReadOnly => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "write endpoints need --admin-token-file",
        )
        .into_response(),
        Access::Unauthorized => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the token of --admin-token-file as `Authorization: Bearer <token>`",
        )
        .into_response(),
        Access::Off => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API needs --admin-token-file when --admin-listen is not a loopback address",
        )
        .into_response(),
    }
}

/// Filters and paging of the list endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this tenant.
    tenant: Option<String>,
    /// Only client ids (or, for `retained`, topics) starting with this.
    prefix: Option<String>,
    /// `connected` or `disconnected` (`clients` only).
    state: Option<String>,
    /// At most this many items (default 100, at most 1000).
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// One page of a list, sorted; `next` is set when there is more.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    next: Option<String>,
}

const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

impl ListQuery {
    fn tenant_ok(&self, t: &TenantId) -> bool {
        self.tenant.as_deref().is_none_or(|want| want == t.as_str())
    }

    fn prefix_ok(&self, s: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| s.starts_with(p))
    }

    /// Sorts `keys` by their sort key and cuts the page after `after`;
    /// the caller builds only that page's items. `next` is the last sort
    /// key of the page, hex-encoded (printable whatever a client id
    /// holds), when more follow.
    fn page<K>(&self, mut keys: Vec<(String, K)>) -> Result<(Vec<K>, Option<String>), ApiError> {
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let limit = self.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
        let start = match &self.after {
            Some(after) => {
                let after = unhex(after).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "`after` must be the `next` of a previous page",
                    )
                })?;
                keys.partition_point(|(k, _)| *k <= after)
            }
            None => 0,
        };
        let more = keys.len() > start + limit;
        let page: Vec<(String, K)> = keys.into_iter().skip(start).take(limit).collect();
        let next = if more {
            page.last().map(|(k, _)| hex(k))
        } else {
            None
        };
        Ok((page.into_iter().map(|(_, k)| k).collect(), next))
    }
}

/// A cursor: the sort key's bytes in hex.
fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(cursor: &str) -> Option<String> {
    if !cursor.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `?tenant=` of the single-client endpoints (default: `default`).
#[derive(Debug, Default, Deserialize)]
pub struct TenantQuery {
    tenant: Option<String>,
    /// `kick`: end the session too.
    #[serde(default)]
    discard_session: bool,
}

impl TenantQuery {
    fn key(&self, client_id: &str) -> SessionKey {
        SessionKey {
            tenant: self
                .tenant
                .as_deref()
                .map_or_else(TenantId::default_tenant, TenantId::new),
            client: ClientId::new(client_id),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NodeInfo {
    pub version: &'static str,
    pub commit: &'static str,
    pub uptime_seconds: u64,
    pub listeners: Vec<ListenerInfo>,
    pub admin: Option<String>,
    pub data_dir: String,
    /// `anonymous` when no authentication is configured, else `required`.
    pub auth: &'static str,
    pub tenants: usize,
    pub clients_connected: u64,
    pub sessions: usize,
    pub retained_messages: u64,
    pub storage: StorageInfo,
    pub ready: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerInfo {
    pub kind: &'static str,
    pub addr: String,
}

#[derive(Debug, Serialize)]
pub struct StorageInfo {
    pub state: &'static str,
    pub size_bytes: u64,
    pub limit_bytes: Option<u64>,
}

pub fn node_info(s: &AdminState) -> NodeInfo {
    let b = &s.broker;
    let store = b.persist.store();
    NodeInfo {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("PORCHLIGHT_GIT_COMMIT"),
        uptime_seconds: b.started_at.elapsed().as_secs(),
        listeners: s.listeners.clone(),
        admin: s.admin_addr.map(|a| a.to_string()),
        data_dir: b.config.data_dir.display().to_string(),
        auth: if b.auth.required() {
            "required"
        } else {
            "anonymous"
        },
        tenants: b.auth.directory().ids().count(),
        clients_connected: b.metrics.clients_connected.load(Ordering::Relaxed),
        sessions: b.state.session_count(),
        retained_messages: b.metrics.retained.load(Ordering::Relaxed),
        storage: StorageInfo {
            state: b.persist.health().name(),
            size_bytes: store.disk_used(),
            limit_bytes: store.disk_limit(),
        },
        ready: s.ready.accepting() && !s.ready.draining() && !b.shutdown.is_cancelled(),
    }
}

async fn node(State(s): State<AdminState>) -> Json<NodeInfo> {
    Json(node_info(&s))
}

/// One client: its session and, when connected, its connection.
#[derive(Debug, Serialize)]
pub struct ClientInfo {
    tenant: String,
    client_id: String,
    connected: bool,
    connection: Option<ConnectionInfo>,
    persistent: bool,
    /// Seconds the session outlives its connection (4294967295: never).
    expiry_interval: u32,
    /// When it was last disconnected, ms since the epoch (0: connected).
    disconnected_at_ms: u64,
    subscriptions: usize,
    queued_messages: usize,
    queued_bytes: usize,
    inflight_messages: usize,
    will: bool,
}

#[derive(Debug, Serialize)]
pub struct ConnectionInfo {
    peer: String,
    listener: &'static str,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    protocol_level: u8,
    keep_alive: u16,
    username: Option<String>,
    connected_at_ms: u64,
}

/// A client's subscription.
#[derive(Debug, Serialize)]
pub struct SubscriptionInfo {
    tenant: String,
    client_id: String,
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    subscription_id: Option<u32>,
}

/// `clients show`: the client and its subscriptions.
#[derive(Debug, Serialize)]
pub struct ClientDetail {
    #[serde(flatten)]
    client: ClientInfo,
    subscription_list: Vec<SubscriptionInfo>,
}

fn client_info(s: &AdminState, key: &SessionKey) -> Option<(ClientInfo, Vec<SubscriptionInfo>)> {
    let b = &s.broker;
    let runtime = b.state.session(key)?;
    let (conn, queued, queued_bytes, inflight) = {
        let st = runtime.lock();
        let conn = st.owner.as_ref().map(|o| o.info.clone());
        (conn, st.queued_len(), st.queued_bytes, st.inflight.len())
    };
    let (record, subs) = b.state.read(|c| {
        let r = c.session(key)?;
        let subs: Vec<SubscriptionInfo> = r
            .subscriptions
            .iter()
            .map(|(f, sub)| SubscriptionInfo {
                tenant: key.tenant.to_string(),
                client_id: key.client.to_string(),
                filter: f.as_str().to_owned(),
                qos: sub.options.qos as u8,
                no_local: sub.options.no_local,
                retain_as_published: sub.options.retain_as_published,
                retain_handling: sub.options.retain_handling as u8,
                subscription_id: sub.id,
            })
            .collect();
        Some((
            (
                r.persistent,
                r.expiry_interval,
                r.disconnected_at_ms,
                r.will.is_some(),
                r.connected,
            ),
            subs,
        ))
    })?;
    let (persistent, expiry_interval, disconnected_at_ms, will, connected) = record;
    let online = conn.is_some();
    let info = ClientInfo {
        tenant: key.tenant.to_string(),
        client_id: key.client.to_string(),
        // Connected: a connection owns the session now (as `state=` and
        // the node's `is_online` have it).
        connected: conn.is_some(),
        connection: conn.map(|c| ConnectionInfo {
            peer: c.peer.to_string(),
            listener: c.listener.name(),
            protocol_level: c.protocol_level,
            keep_alive: c.keep_alive,
            username: c.username.clone(),
            connected_at_ms: crate::clock::unix_ms(c.connected_at),
        }),
        persistent,
        expiry_interval,
        disconnected_at_ms: if connected && online {
            0
        } else {
            disconnected_at_ms
        },
        subscriptions: subs.len(),
        queued_messages: queued,
        queued_bytes,
        inflight_messages: inflight,
        will,
    };
    Some((info, subs))
}

fn cursor(key: &SessionKey) -> String {
    format!("{}/{}", key.tenant, key.client)
}

async fn clients(
    State(s): State<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<ClientInfo>>, ApiError> {
    let want_connected = match q.state.as_deref() {
        None => None,
        Some("connected") => Some(true),
        Some("disconnected") => Some(false),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("state must be `connected` or `disconnected`, not `{other}`"),
            ))
        }
    };
    // Keys first; only the page's clients are looked at closely.
    let keys: Vec<(String, SessionKey)> = s
        .broker
        .state
        .all_sessions()
        .iter()
        .filter(|r| q.tenant_ok(&r.key.tenant) && q.prefix_ok(r.key.client.as_str()))
        .filter(|r| want_connected.is_none_or(|want| r.is_online() == want))
        .map(|r| (cursor(&r.key), r.key.clone()))
        .collect();
    let (page, next) = q.page(keys)?;
    let items = page
        .iter()
        .filter_map(|k| client_info(&s, k).map(|(c, _)| c))
        .collect();
    Ok(Json(Page { items, next }))
}

async fn client(
    State(s): State<AdminState>,
    Path(client_id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<ClientDetail>, ApiError> {
    let key = q.key(&client_id);
    let (client, subscription_list) = client_info(&s, &key).ok_or_else(|| {
        ApiError::not_found(format!(
            "no session `{}` in tenant `{}`",
            key.client, key.tenant
        ))
    })?;
    Ok(Json(ClientDetail {
        client,
        subscription_list,
    }))
}

async fn kick(
    State(s): State<AdminState>,
    Path(client_id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<crate::route::registry::Kicked>, ApiError> {
    let key = q.key(&client_id);
    let kicked = s
        .broker
        .registry
        .kick(&key, q.discard_session)
        .await
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no session `{}` in tenant `{}`",
                key.client, key.tenant
            ))
        })?;
    Ok(Json(kicked))
}

async fn subscriptions(
    State(s): State<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<SubscriptionInfo>>, ApiError> {
    let wanted: Vec<SessionKey> = s
        .broker
        .state
        .all_sessions()
        .iter()
        .filter(|r| q.tenant_ok(&r.key.tenant) && q.prefix_ok(r.key.client.as_str()))
        .map(|r| r.key.clone())
        .collect();
    // The filters of those sessions, read together; the options only for
    // the page.
    let keys: Vec<(String, (SessionKey, String))> = s.broker.state.read(|c| {
        wanted
            .iter()
            .filter_map(|k| Some((k, c.session(k)?)))
            .flat_map(|(k, r)| {
                r.subscriptions.keys().map(move |f| {
                    let filter = f.as_str().to_owned();
                    (format!("{}\u{0}{filter}", cursor(k)), (k.clone(), filter))
                })
            })
            .collect()
    });
    let (page, next) = q.page(keys)?;
    let mut items = Vec::with_capacity(page.len());
    for (key, filter) in page {
        if let Some((_, subs)) = client_info(&s, &key) {
            items.extend(subs.into_iter().filter(|x| x.filter == filter));
        }
    }
    Ok(Json(Page { items, next }))
}

#[derive(Debug, Serialize)]
pub struct RetainedInfo {
    tenant: String,
    topic: String,
    qos: u8,
    payload_bytes: usize,
    expires_at_ms: Option<u64>,
}

async fn retained(
    State(s): State<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<RetainedInfo>>, ApiError> {
    // `$SYS` and other `$` topics only when the prefix asks for them.
    let dollar = q.prefix.as_deref().is_some_and(|p| p.starts_with('$'));
    // Under the control lock only the keys are copied (shared strings);
    // sorting and the page's details happen outside it.
    let keys: Vec<(String, (TenantId, crate::topic::TopicName))> = s.broker.state.read(|c| {
        c.retained_all()
            .filter(|(t, topic, _)| q.tenant_ok(t) && q.prefix_ok(topic.as_str()))
            .filter(|(_, topic, _)| dollar || !topic.as_str().starts_with('$'))
            .map(|(t, topic, _)| (String::new(), (t.clone(), topic.clone())))
            .collect()
    });
    let keys = keys
        .into_iter()
        .map(|(_, (t, topic))| (format!("{t}/{}", topic.as_str()), (t, topic)))
        .collect();
    let (page, next) = q.page(keys)?;
    let items = s.broker.state.read(|c| {
        page.iter()
            .filter_map(|(t, topic)| {
                let r = c.retained(t, topic.as_str())?;
                Some(RetainedInfo {
                    tenant: t.to_string(),
                    topic: topic.as_str().to_owned(),
                    qos: r.message.qos as u8,
                    payload_bytes: r.message.payload.len(),
                    expires_at_ms: r.expires_at_ms,
                })
            })
            .collect()
    });
    Ok(Json(Page { items, next }))
}

#[derive(Debug, Deserialize)]
pub struct TopicQuery {
    tenant: Option<String>,
    topic: String,
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    deleted: bool,
}

async fn delete_retained(
    State(s): State<AdminState>,
    Query(q): Query<TopicQuery>,
) -> Result<Json<Deleted>, ApiError> {
    let tenant = q
        .tenant
        .as_deref()
        .map_or_else(TenantId::default_tenant, TenantId::new);
    let exists = s
        .broker
        .state
        .read(|c| c.retained(&tenant, &q.topic).is_some());
    if !exists {
        return Err(ApiError::not_found(format!(
            "no retained message on `{}` in tenant `{tenant}`",
            q.topic
        )));
    }
    // An empty retained PUBLISH, as a client would send it.
    let topic = crate::topic::TopicName::trusted(q.topic.clone());
    let done = s
        .broker
        .router
        .delete_retained(tenant.clone(), topic)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
    tracing::info!(%tenant, topic = %q.topic, "Retained message deleted by an operator");
    Ok(Json(Deleted { deleted: done }))
}

#[derive(Debug, Serialize)]
pub struct TenantInfo {
    id: String,
    configured: bool,
    usage: BTreeMap<&'static str, u64>,
    limits: Limits,
}

fn tenant_info(s: &AdminState, id: &TenantId, usage: &Usage) -> TenantInfo {
    let directory = s.broker.auth.directory();
    let def = directory.tenant(id);
    let mut u: BTreeMap<&'static str, u64> = usage
        .counts()
        .iter()
        .map(|(name, _, v)| (*name, *v))
        .collect();
    u.insert("messages_received_total", total(&usage.messages_in));
    TenantInfo {
        id: id.to_string(),
        configured: def.is_some(),
        usage: u,
        limits: def.map(|d| (*d.limits).clone()).unwrap_or_default(),
    }
}

/// Every tenant (they are few: no paging; `next` is always null).
async fn tenants(State(s): State<AdminState>) -> Json<Page<TenantInfo>> {
    let directory = s.broker.auth.directory();
    let mut ids: Vec<TenantId> = directory.ids().cloned().collect();
    for (id, _) in s.broker.tenants.snapshot() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.sort();
    let items = ids
        .iter()
        .map(|id| tenant_info(&s, id, &s.broker.tenants.usage(id)))
        .collect();
    Json(Page { items, next: None })
}

async fn tenant(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    let id = TenantId::new(id);
    let known = s.broker.auth.directory().tenant(&id).is_some()
        || s.broker.tenants.snapshot().iter().any(|(t, _)| *t == id);
    if !known {
        return Err(ApiError::not_found(format!("no tenant `{id}`")));
    }
    let usage = s.broker.tenants.usage(&id);
    Ok(Json(tenant_info(&s, &id, &usage)))
}

//! The admin endpoint: Fabric's channel participation API (the REST shape
//! `osnadmin` speaks) over the node's registrar, and the small HTTP client
//! the `consenter-host channel` commands use.
//!
//! Access: without TLS the endpoint listens on loopback and serves loopback
//! clients only. With TLS ([`tls`]) clients must present a certificate that
//! chains to the client root CAs (mutual TLS, as Fabric's osnadmin
//! endpoint); with an admin CN list, only certificates with one of those
//! subject CNs are admins, others get 403. May touch the node (join, list,
//! show, remove channels; install plugins, [`plugins`]) and its own
//! sockets.

pub mod plugins;
pub mod tls;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::node::{ChannelInfo, ConsenterInfo, Node, NodeError};
use crate::proto::common::Block;
use tls::{AdminPeer, ServerTls, TlsError, TlsListener};

/// The channel participation API's base (a GET is redirected to
/// [`CHANNELS`], as Fabric does).
pub const BASE: &str = "/participation/v1/";

/// Path prefix of the channel participation API.
pub const CHANNELS: &str = "/participation/v1/channels";

/// The cluster transport's counters (not part of Fabric's API): what the
/// node sent, dropped and received per channel and member, and every
/// inbound message it refused, by reason ([`ClusterStatsView`]).
pub const CLUSTER_STATS: &str = "/cluster/v1/stats";

/// Largest join request accepted (a config block is far smaller; Fabric's
/// default AbsoluteMaxBytes plus room for the multipart framing).
pub const MAX_BODY: usize = 11 * 1024 * 1024;

/// Fabric's ChannelInfoShort.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRef {
    pub name: String,
    pub url: String,
}

/// Fabric's ChannelList. Like Fabric (a nil Go slice), no channels is
/// `"channels": null`, not `[]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelList {
    pub system_channel: Option<ChannelRef>,
    #[serde(serialize_with = "empty_as_null", deserialize_with = "null_as_empty", default)]
    pub channels: Vec<ChannelRef>,
}

fn empty_as_null<S: serde::Serializer>(v: &[ChannelRef], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() { s.serialize_none() } else { s.collect_seq(v) }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ChannelRef>, D::Error> {
    Ok(Option::<Vec<ChannelRef>>::deserialize(d)?.unwrap_or_default())
}

/// Fabric's ChannelInfo, plus why a failed channel failed and its plugin
/// instance's crash counters (fields osnadmin ignores).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    pub name: String,
    pub url: String,
    pub consensus_relation: String,
    pub status: String,
    pub height: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consenter: Option<ConsenterInfo>,
}

/// [`CLUSTER_STATS`]: a snapshot of the transport's counters
/// ([`crate::cluster::TransportStats`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatsView {
    /// Inbound messages refused, by reason (every reason, zeros included):
    /// `noCertificate`, `unknownChannel`, `notMember`, `oversized`,
    /// `malformed`.
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Per channel the transport has members for.
    pub channels: std::collections::BTreeMap<String, ChannelStatsView>,
}

/// One channel of [`ClusterStatsView`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatsView {
    /// This node's member id.
    pub self_id: u64,
    /// Messages naming this channel refused because the sender is not a
    /// member (or sent no certificate).
    pub refused: u64,
    /// The other members, by id.
    pub peers: std::collections::BTreeMap<u64, PeerStatsView>,
}

/// One member of [`ChannelStatsView`] ([`crate::cluster::PeerStats`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatsView {
    pub endpoint: String,
    pub sent: u64,
    pub dropped: u64,
    pub connected: bool,
    pub connections: u64,
    pub received: u64,
    /// Messages from it that were refused (oversized, malformed).
    pub refused: u64,
    /// Submits it refused.
    pub refused_by_peer: u64,
}

impl From<crate::cluster::TransportStats> for ClusterStatsView {
    fn from(s: crate::cluster::TransportStats) -> Self {
        use crate::cluster::Refusal;
        let refused = Refusal::ALL.iter().map(|r| (r.name().to_string(), s.refused_for(*r))).collect();
        let channels = s
            .channels
            .into_iter()
            .map(|(name, c)| {
                let peers = c
                    .peers
                    .into_iter()
                    .map(|(id, p)| {
                        let view = PeerStatsView {
                            endpoint: p.endpoint,
                            sent: p.sent,
                            dropped: p.dropped,
                            connected: p.connected,
                            connections: p.connections,
                            received: p.received,
                            refused: p.refused,
                            refused_by_peer: p.refused_by_peer,
                        };
                        (id, view)
                    })
                    .collect();
                (name, ChannelStatsView { self_id: c.self_id, refused: c.refused, peers })
            })
            .collect();
        ClusterStatsView { refused, channels }
    }
}

/// Fabric's ErrorResponse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

fn url(name: &str) -> String {
    format!("{CHANNELS}/{name}")
}

impl From<ChannelInfo> for ChannelView {
    fn from(i: ChannelInfo) -> Self {
        ChannelView {
            url: url(&i.name),
            name: i.name,
            consensus_relation: i.consensus_relation.to_string(),
            status: i.status.to_string(),
            height: i.height,
            error: i.error,
            consenter: i.consenter,
        }
    }
}

/// Who may use the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Plain HTTP: loopback clients only.
    LoopbackOnly,
    /// Mutual TLS authenticated the client before it got here (its
    /// certificate chains to a client root CA). When `admin_cns` is not
    /// empty, the certificate's subject CN must also be one of them.
    Authenticated { admin_cns: Vec<String> },
}

impl Access {
    /// Whether `peer` may use the endpoint; why not otherwise.
    pub fn admit(&self, peer: &AdminPeer) -> Result<(), String> {
        match self {
            Access::LoopbackOnly if peer.addr.ip().is_loopback() => Ok(()),
            Access::LoopbackOnly => {
                Err(format!("the admin endpoint without TLS serves loopback clients only, not {}", peer.addr))
            }
            Access::Authenticated { admin_cns } => {
                let Some(cert) = &peer.cert else {
                    return Err("no client certificate: the admin endpoint requires mutual TLS".into());
                };
                if admin_cns.is_empty() {
                    return Ok(());
                }
                match tls::subject_cn(cert) {
                    Ok(Some(cn)) if admin_cns.contains(&cn) => Ok(()),
                    Ok(Some(cn)) => Err(format!(
                        "client certificate CN {cn:?} is not an admin of this node (admins: {})",
                        admin_cns.join(", ")
                    )),
                    Ok(None) => Err("client certificate has no subject CN, so it is not an admin of this node".into()),
                    Err(e) => Err(format!("client certificate: {e}")),
                }
            }
        }
    }
}

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    cluster: Option<crate::cluster::Transport>,
}

/// The channel participation router over `node`. Serve it with
/// `into_make_service_with_connect_info::<AdminPeer>()`. Answers as
/// Fabric v2.5's: a wrong method is 405 with a JSON error and `Allow`;
/// every answer carries `X-Request-Id` (the request's own, else a new
/// UUID); 200s carry `Cache-Control: no-store`.
pub fn router(node: Arc<Node>, access: Access) -> Router {
    router_with_cluster(node, access, None)
}

/// [`router`], plus [`CLUSTER_STATS`] over the node's cluster transport.
pub fn router_with_cluster(node: Arc<Node>, access: Access, cluster: Option<crate::cluster::Transport>) -> Router {
    Router::new()
        .route(CLUSTER_STATS, get(cluster_stats).fallback(not_allowed_base))
        .route(
            plugins::PLUGINS,
            get(plugins::list)
                .post(plugins::install)
                .layer(DefaultBodyLimit::max(plugins::MAX_PLUGIN))
                .fallback(plugins::not_allowed),
        )
        .route(CHANNELS, get(list).post(join).fallback(not_allowed_list))
        .route(&format!("{CHANNELS}/{{channel}}"), get(show).delete(remove).fallback(not_allowed_channel))
        .route(BASE, get(redirect_base).fallback(not_allowed_base))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(Arc::new(access), check_access))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(AppState { node, cluster })
}

/// Serves the admin endpoint on `listener` until `shutdown` resolves:
/// plain HTTP for loopback clients, or HTTPS with client certificates
/// when `tls` is given; with `cluster`, the transport's counters too.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    cluster: Option<crate::cluster::Transport>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_participation(listener, node, cluster, tls, true, shutdown).await
}

/// Fabric's answer to every participation request when
/// `ChannelParticipation.Enabled` is false: 503 `channel participation
/// API is disabled`.
async fn participation_disabled() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "channel participation API is disabled")
}

/// [`serve`], with the participation API answering 503 unless `enabled`
/// (Fabric's `ChannelParticipation.Enabled`).
pub async fn serve_participation(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    cluster: Option<crate::cluster::Transport>,
    tls: Option<ServerTls>,
    enabled: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gate = |r: Router| {
        if enabled {
            r
        } else {
            r.route_layer(axum::middleware::from_fn(|_req: axum::extract::Request, _next: axum::middleware::Next| {
                participation_disabled()
            }))
        }
    };
    match tls {
        None => {
            let app = gate(router_with_cluster(node, Access::LoopbackOnly, cluster));
            axum::serve(listener, app.into_make_service_with_connect_info::<AdminPeer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let app = gate(router_with_cluster(node, Access::Authenticated { admin_cns: tls.admin_cns }, cluster));
            let listener = TlsListener::new(listener, tls.config, tls::HANDSHAKE_TIMEOUT, "admin endpoint", false)?;
            axum::serve(listener, app.into_make_service_with_connect_info::<AdminPeer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A JSON body as Go's json.Encoder writes it (compact, then a newline).
fn json_body<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = serde_json::to_vec(v)?;
    body.push(b'\n');
    Ok(body)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, json_headers(), json_body(&ErrorBody { error: msg.into() }).unwrap_or_default()).into_response()
}

fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))]
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match json_body(v) {
        Ok(body) => (status, json_headers(), body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}")),
    }
}

/// A 200 that must not be cached (Fabric's list and show answers).
fn ok_no_store<T: Serialize>(v: &T) -> Response {
    let mut r = json(StatusCode::OK, v);
    if r.status() == StatusCode::OK {
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Fabric's 405: the JSON error and the methods the resource allows.
fn not_allowed(msg: impl Into<String>, allow: &'static str) -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, msg);
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The request header Fabric reads and answers with.
pub const REQUEST_ID: &str = "x-request-id";

/// Fabric's request-id middleware: every answer carries `X-Request-Id`,
/// the request's own if it sent one, else a new random (v4) UUID.
pub(crate) async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = req.headers().get(REQUEST_ID).filter(|v| !v.is_empty()).cloned();
    let id = id.unwrap_or_else(|| HeaderValue::from_str(&new_uuid()).unwrap_or(HeaderValue::from_static("0")));
    let mut r = next.run(req).await;
    r.headers_mut().append(REQUEST_ID, id);
    r
}

/// A random (version 4) UUID in Fabric's form (`util.GenerateUUID`).
fn new_uuid() -> String {
    let mut u = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut u);
    u[8] = (u[8] & !0xc0) | 0x80;
    u[6] = (u[6] & !0xf0) | 0x40;
    let h = crate::block::hex;
    format!("{}-{}-{}-{}-{}", h(&u[0..4]), h(&u[4..6]), h(&u[6..8]), h(&u[8..10]), h(&u[10..]))
}

async fn not_allowed_list(method: axum::http::Method) -> Response {
    not_allowed(format!("invalid request method: {method}"), "GET, POST")
}

async fn not_allowed_channel(method: axum::http::Method) -> Response {
    not_allowed(format!("invalid request method: {method}"), "GET, DELETE")
}

async fn not_allowed_base(method: axum::http::Method) -> Response {
    not_allowed(format!("invalid request method: {method}"), "GET")
}

/// Fabric: `GET /participation/v1/` is a 302 to the channel list.
async fn redirect_base() -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, HeaderValue::from_static(CHANNELS)),
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        ],
        format!("<a href=\"{CHANNELS}\">Found</a>.\n\n"),
    )
        .into_response()
}

/// Fabric's check of a channel name in a URL: the 400 `invalid channel
/// ID: …` (its ValidateChannelID text) if the name is not valid.
fn bad_channel_id(channel: &str) -> Option<Response> {
    crate::configtx::validate_channel_id(channel)
        .err()
        .map(|e| error(StatusCode::BAD_REQUEST, format!("invalid channel ID: {e}")))
}

/// Every request passes here first: see [`Access::admit`].
async fn check_access(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<AdminPeer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(why) = access.admit(&peer) {
        tracing::warn!(peer = %peer.addr, method = %req.method(), path = %req.uri().path(), "admin endpoint: {why}");
        return error(StatusCode::FORBIDDEN, why);
    }
    next.run(req).await
}

/// Whether a node error is the node's own failure (500) rather than
/// something about the request (Fabric answers 400 for those).
fn internal(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::Runtime(_)
            | NodeError::Ledger(_)
            | NodeError::Io { .. }
            | NodeError::Canary(_)
            | NodeError::Resume(_)
            | NodeError::Registry(_)
    ) || matches!(e, NodeError::Install(i) if i.is_internal())
}

/// Fabric's answers to a refused join (restapi.go sendJoinError).
fn join_error(e: NodeError) -> Response {
    match &e {
        NodeError::InvalidJoinBlock(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        NodeError::SystemChannelExists { .. } => not_allowed(format!("cannot join: {e}"), "GET"),
        NodeError::Exists(_) => not_allowed(format!("cannot join: {e}"), "GET, DELETE"),
        NodeError::AppChannelsExist { .. } => error(StatusCode::FORBIDDEN, format!("cannot join: {e}")),
        e if internal(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot join: {e}")),
        _ => error(StatusCode::BAD_REQUEST, format!("cannot join: {e}")),
    }
}

/// Fabric's answers to a refused removal.
fn remove_error(e: NodeError) -> Response {
    match &e {
        NodeError::SystemChannelExists { .. } => not_allowed(format!("cannot remove: {e}"), "GET"),
        NodeError::NotFound(_) => error(StatusCode::NOT_FOUND, format!("cannot remove: {e}")),
        e if internal(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove: {e}")),
        _ => error(StatusCode::BAD_REQUEST, format!("cannot remove: {e}")),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, format!("no such resource; the channel participation API is under {CHANNELS}"))
}

async fn list(State(st): State<AppState>) -> Response {
    let system = st.node.system_channel().map(|c| c.channel().to_string());
    let channels = st
        .node
        .all_channels()
        .into_iter()
        .filter(|c| Some(c) != system.as_ref())
        .map(|name| ChannelRef { url: url(&name), name })
        .collect();
    ok_no_store(&ChannelList { system_channel: system.map(|name| ChannelRef { url: url(&name), name }), channels })
}

async fn show(State(st): State<AppState>, Path(channel): Path<String>) -> Response {
    if let Some(r) = bad_channel_id(&channel) {
        return r;
    }
    match st.node.info(&channel) {
        Some(i) => ok_no_store(&ChannelView::from(i)),
        None => error(StatusCode::NOT_FOUND, NodeError::NotFound(channel).to_string()),
    }
}

async fn cluster_stats(State(st): State<AppState>) -> Response {
    match &st.cluster {
        Some(t) => ok_no_store(&ClusterStatsView::from(t.stats())),
        None => error(
            StatusCode::NOT_FOUND,
            "this node has no cluster transport (it serves one with --tls-cert and --tls-key, or --cluster-tls-cert)",
        ),
    }
}

async fn remove(State(st): State<AppState>, Path(channel): Path<String>) -> Response {
    if let Some(r) = bad_channel_id(&channel) {
        return r;
    }
    let node = st.node.clone();
    match tokio::task::spawn_blocking(move || node.remove(&channel)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => remove_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("removing the channel: {e}")),
    }
}

async fn join(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let block_bytes = match multipart_field(ct, &body, "config-block") {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = Block::decode(block_bytes.clone()) {
        return error(StatusCode::BAD_REQUEST, format!("config-block is not a common.Block: {e}"));
    }
    let node = st.node.clone();
    // The bytes sent become block 0 unchanged.
    match tokio::task::spawn_blocking(move || node.join(block_bytes)).await {
        Ok(Ok(info)) => {
            let view = ChannelView::from(info);
            let mut r = json(StatusCode::CREATED, &view);
            if let Ok(v) = HeaderValue::from_str(&view.url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Ok(Err(e)) => join_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("joining the channel: {e}")),
    }
}

/// The content of form field `name` of a `multipart/form-data` body.
pub fn multipart_field(content_type: &str, body: &Bytes, name: &str) -> Result<Bytes, String> {
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "the request must be multipart/form-data with a {name:?} field, not {:?}",
            if content_type.is_empty() { "(no content type)" } else { content_type }
        ));
    }
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or("multipart/form-data content type has no boundary")?;
    let delim = format!("--{boundary}");
    let mut rest: &[u8] = body;
    let mut pos = find(rest, delim.as_bytes()).ok_or("multipart body has no boundary line")?;
    loop {
        rest = &rest[pos + delim.len()..];
        if rest.starts_with(b"--") {
            return Err(format!("multipart body has no {name:?} field"));
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("malformed multipart body: boundary not followed by CRLF")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("malformed multipart body: part headers do not end")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content = &rest[head_end + 4..];
        let end_delim = format!("\r\n--{boundary}");
        let end = find(content, end_delim.as_bytes()).ok_or("malformed multipart body: a part does not end")?;
        let is_field = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("content-disposition:") && l.contains(&format!("name=\"{}\"", name.to_ascii_lowercase()))
        });
        if is_field {
            let start = body.len() - content.len();
            return Ok(body.slice(start..start + end));
        }
        let consumed = body.len() - content.len() + end + 2;
        rest = &body[consumed..];
        pos = 0;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An answer of the admin endpoint.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names (lower-case) and values, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `error` of an ErrorResponse body, else the body as text.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// What went wrong talking to the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the admin endpoint {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the admin endpoint {addr} failed: {source}{hint}")]
    Tls {
        addr: String,
        #[source]
        source: rustls::Error,
        /// What the failure most likely means, for the person at the CLI.
        hint: &'static str,
    },
    #[error("talking to the admin endpoint {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("answer from the admin endpoint {addr}: {reason}")]
    BadAnswer { addr: String, reason: &'static str },
    #[error(transparent)]
    Config(#[from] TlsError),
}

/// How the `channel` commands reach the endpoint: plain HTTP, or TLS with
/// this client config (see [`tls::client_config`]).
#[derive(Clone, Default)]
pub struct ClientTls {
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// Whether the config presents a client certificate (for error hints).
    pub has_client_cert: bool,
    /// The name the endpoint's certificate must carry, when not the host
    /// of the address (`--tls-server-name`).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// A one-shot HTTP/1.1 request to the admin endpoint (plain HTTP).
pub fn request(addr: &str, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<HttpAnswer, ClientError> {
    request_with(addr, &ClientTls::default(), method, path, body)
}

/// A one-shot HTTP/1.1 request to the admin endpoint, over TLS when
/// `tls` has a config (the server name is the host of `addr`).
pub fn request_with(
    addr: &str,
    tls: &ClientTls,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<HttpAnswer, ClientError> {
    let tcp = TcpStream::connect(addr).map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
    let io_err = |source| ClientError::Io { addr: addr.to_string(), source };
    tcp.set_read_timeout(Some(Duration::from_secs(60))).map_err(io_err)?;
    tcp.set_write_timeout(Some(Duration::from_secs(60))).map_err(io_err)?;
    let raw = match &tls.config {
        None => exchange(tcp, addr, method, path, body).map_err(io_err)?,
        Some(config) => {
            let name = match &tls.server_name {
                Some(n) => n.clone(),
                None => tls::server_name(addr)?,
            };
            let conn =
                rustls::ClientConnection::new(config.clone(), name).map_err(|source| tls_error(addr, tls, source))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            // Finish the handshake first, so a refusal reads as one.
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).map_err(|e| io_or_tls(addr, tls, e))?;
            }
            exchange(s, addr, method, path, body).map_err(|e| io_or_tls(addr, tls, e))?
        }
    };
    let bad = |reason| ClientError::BadAnswer { addr: addr.to_string(), reason };
    if !raw.starts_with(b"HTTP/") {
        return Err(bad(match (raw.is_empty(), tls.config.is_some()) {
            (true, true) => "the connection closed without an answer",
            (true, false) => "the connection closed without an answer (does the endpoint speak TLS? pass --ca-file)",
            (false, true) => "not an HTTP answer",
            (false, false) => "not an HTTP answer (does the endpoint speak TLS? pass --ca-file)",
        }));
    }
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status in the status line"))?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("malformed chunked body"))?;
    }
    Ok(HttpAnswer { status, headers, body })
}

/// Sends the request and reads the answer until the server closes. If
/// sending fails, the answer (a TLS alert, say) still explains it better.
fn exchange<S: Read + Write>(
    mut s: S,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<Vec<u8>> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let sent = s.write_all(req.as_bytes()).and_then(|()| match body {
        Some((_, b)) => s.write_all(b),
        None => Ok(()),
    });
    let sent = sent.and_then(|()| s.flush());
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    match (sent, read) {
        (_, Err(e)) if is_tls(&e) => Err(e),
        // An answer before the server stopped reading (a 413, say).
        (Err(_), Ok(_)) if raw.starts_with(b"HTTP/") => Ok(raw),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(_)) => Ok(raw),
    }
}

fn is_tls(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<rustls::Error>())
}

/// A rustls error inside an I/O error (how `StreamOwned` reports one) as
/// [`ClientError::Tls`].
fn io_or_tls(addr: &str, tls: &ClientTls, e: std::io::Error) -> ClientError {
    let io = |source| ClientError::Io { addr: addr.to_string(), source };
    if !is_tls(&e) {
        return io(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
        Some(Ok(source)) => tls_error(addr, tls, *source),
        Some(Err(other)) => io(std::io::Error::new(kind, other)),
        None => io(kind.into()),
    }
}

fn tls_error(addr: &str, tls: &ClientTls, source: rustls::Error) -> ClientError {
    use rustls::Error as E;
    let hint = match &source {
        E::AlertReceived(_) if !tls.has_client_cert => {
            "; the endpoint requires a client certificate (pass --client-cert and --client-key)"
        }
        E::AlertReceived(_) => "; the endpoint refused the client certificate (is it issued by a client CA it trusts?)",
        E::InvalidCertificate(_) => "; the endpoint's certificate does not verify against --ca-file for this address",
        E::InvalidMessage(_) => "; does the endpoint speak TLS? (without TLS, leave out --ca-file)",
        _ => "",
    };
    ClientError::Tls { addr: addr.to_string(), source, hint }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(b, b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A multipart/form-data body with one file field; returns (content type,
/// body).
pub fn multipart_body(field: &str, filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("consenter-host-{:016x}", rand_core::RngCore::next_u64(&mut rand_core::OsRng));
    let mut b = Vec::with_capacity(content.len() + 256);
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(content);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_fields() {
        let (ct, body) = multipart_body("config-block", "g.block", b"\x00\x01--\r\nbytes");
        let body = Bytes::from(body);
        assert_eq!(&multipart_field(&ct, &body, "config-block").unwrap()[..], b"\x00\x01--\r\nbytes");
        assert!(multipart_field(&ct, &body, "other").unwrap_err().contains("no \"other\" field"));
        assert!(multipart_field("application/json", &body, "config-block").unwrap_err().contains("multipart"));
        assert!(multipart_field("multipart/form-data", &body, "config-block").unwrap_err().contains("boundary"));
        // A second field after another one (curl -F puts fields in order).
        let two = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nxx\r\n--B\r\n\
                   Content-Disposition: form-data; name=\"config-block\"; filename=\"f\"\r\n\r\nYY\r\n--B--\r\n";
        let got = multipart_field("multipart/form-data; boundary=B", &Bytes::from(two), "config-block").unwrap();
        assert_eq!(&got[..], b"YY");
        let truncated = Bytes::from_static(b"--B\r\nContent-Disposition: form-data; name=\"config-block\"\r\n\r\nYY");
        assert!(multipart_field("multipart/form-data; boundary=B", &truncated, "config-block").is_err());
    }

    #[test]
    fn access_rules() {
        let org = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com");
        let cert = |p: &str| {
            let c = tls::load_certs("test", &org.join(p)).unwrap().remove(0);
            Some(Arc::new(c))
        };
        let admin = cert("users/Admin@example.com/tls/client.crt");
        let orderer1 = cert("orderers/orderer1.example.com/tls/server.crt");
        let peer = |addr: &str, cert: &Option<Arc<_>>| AdminPeer { addr: addr.parse().unwrap(), cert: cert.clone() };

        // Plain HTTP: loopback only.
        assert!(Access::LoopbackOnly.admit(&peer("127.0.0.1:5000", &None)).is_ok());
        assert!(Access::LoopbackOnly.admit(&peer("[::1]:5000", &None)).is_ok());
        let e = Access::LoopbackOnly.admit(&peer("10.1.2.3:5000", &admin)).unwrap_err();
        assert!(e.contains("loopback clients only, not 10.1.2.3:5000"), "{e}");

        // Mutual TLS: any address; without a CN list, any verified cert.
        let any = Access::Authenticated { admin_cns: vec![] };
        assert!(any.admit(&peer("10.1.2.3:5000", &admin)).is_ok());
        assert!(any.admit(&peer("10.1.2.3:5000", &orderer1)).is_ok());
        assert!(any.admit(&peer("127.0.0.1:5000", &None)).unwrap_err().contains("no client certificate"));

        // With a CN list, only those CNs.
        let listed = Access::Authenticated { admin_cns: vec!["Admin@example.com".into(), "Other".into()] };
        assert!(listed.admit(&peer("10.1.2.3:5000", &admin)).is_ok());
        let e = listed.admit(&peer("10.1.2.3:5000", &orderer1)).unwrap_err();
        assert_eq!(
            e,
            "client certificate CN \"orderer1.example.com\" is not an admin of this node (admins: Admin@example.com, \
             Other)"
        );
        let garbage = Some(Arc::new(rustls::pki_types::CertificateDer::from(vec![0x30, 0x00])));
        assert!(listed.admit(&peer("127.0.0.1:1", &garbage)).unwrap_err().contains("not an X.509 certificate"));
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"5\r\nab").is_none());
    }
}

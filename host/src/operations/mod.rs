//! The operations endpoint (Fabric's `Operations` section): `/healthz`,
//! `/metrics` (Prometheus text), `/logspec` (GET and PUT, Fabric's spec
//! syntax, applied at once), `/version`, and a status page for people at
//! `/` (with its data at `/status.json`).
//!
//! Answers as Fabric v2.5's operations system does: `/healthz` is
//! `{"status":"OK","time":…}` or a 503 `{"status":"Service
//! Unavailable",…,"failed_checks":[{"component","reason"}]}`; `/logspec`
//! and `/version` take Fabric's JSON. With TLS ([`tls`]), a client
//! certificate is verified if given (required with `ClientAuthRequired`),
//! and `/metrics`, `/logspec` and the status page need one (401
//! otherwise), as Fabric's `RequireCert` middleware; `/healthz` and
//! `/version` never do. Every answer carries `X-Request-Id`. Reads the
//! node's state; changes nothing but the log spec.

pub mod page;
pub mod tls;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde::{Deserialize, Serialize};

use crate::admin::tls::AdminPeer;
use crate::logging::LogControl;
use crate::metrics::Exporter;
use crate::node::Node;

/// How often the status page's throughput is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// How many samples are kept (10 minutes).
pub const SAMPLES: usize = 120;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Operations {
    /// The node.
    pub node: Arc<Node>,
    /// The Prometheus recorder (None: Metrics.Provider disabled; `/metrics` is 404).
    pub exporter: Option<Exporter>,
    /// The log filter (None: `/logspec` answers 503).
    pub logs: Option<LogControl>,
    /// Version and commit, for `/version` and the page.
    pub version: Version,
    /// The data directory (the ledger disk of the health check).
    pub data_dir: PathBuf,
    /// Free bytes the ledger disk must keep (0: no disk check).
    pub disk_reserve: u64,
    /// Throughput samples by channel.
    pub history: Arc<Mutex<History>>,
    /// When the node started.
    pub started: Instant,
}

/// Fabric's version answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Version {
    /// The commit the binary was built from (omitted when unknown).
    #[serde(rename = "CommitSHA", default, skip_serializing_if = "String::is_empty")]
    pub commit_sha: String,
    /// The version.
    #[serde(rename = "Version", default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

impl Version {
    /// This binary's: the crate version, and the commit from
    /// `CONSENTER_COMMIT_SHA` at build time (the container build sets it).
    pub fn of_binary() -> Version {
        Version {
            commit_sha: option_env!("CONSENTER_COMMIT_SHA").unwrap_or("").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Fabric's failed health check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedCheck {
    /// What failed: a channel's name, or `ledger-disk`.
    pub component: String,
    /// Why.
    pub reason: String,
}

/// Fabric's health status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthStatus {
    /// `OK` or `Service Unavailable`.
    pub status: String,
    /// When it was checked (RFC 3339).
    pub time: String,
    /// The failed checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checks: Vec<FailedCheck>,
}

/// Fabric's log spec body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogSpecBody {
    /// The spec.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
}

/// Throughput samples of each channel: (unix seconds, envelopes accepted per second).
#[derive(Debug, Default)]
pub struct History {
    last: HashMap<String, (Instant, u64)>,
    samples: BTreeMap<String, VecDeque<(u64, f64)>>,
}

impl History {
    /// Takes a sample of every channel of `node` now.
    pub fn sample(&mut self, node: &Node) {
        let now = Instant::now();
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let names = node.all_channels();
        self.samples.retain(|k, _| names.contains(k));
        for name in names {
            let count = crate::metrics::accepted(&name).load(Ordering::Relaxed);
            if let Some((t, before)) = self.last.insert(name.clone(), (now, count)) {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                let rate = if dt > 0.0 { count.saturating_sub(before) as f64 / dt } else { 0.0 };
                let q = self.samples.entry(name).or_default();
                q.push_back((unix, rate));
                while q.len() > SAMPLES {
                    q.pop_front();
                }
            }
        }
    }

    /// The samples of `channel`, oldest first.
    pub fn of(&self, channel: &str) -> Vec<(u64, f64)> {
        self.samples.get(channel).map(|q| q.iter().copied().collect()).unwrap_or_default()
    }
}

impl Operations {
    /// The health checks, Fabric's way: every channel that failed or is
    /// restarting, and the ledger disk below its reserve.
    pub fn health(&self) -> HealthStatus {
        let mut failed = vec![];
        for name in self.node.all_channels() {
            let Some(info) = self.node.info(&name) else { continue };
            if info.status == "failed" {
                let state = info.consenter.as_ref().map_or("failed", |c| c.state.as_str()).to_string();
                let reason = info.error.unwrap_or_else(|| "failed".into());
                failed.push(FailedCheck { component: name, reason: format!("{state}: {reason}") });
            }
        }
        if self.disk_reserve > 0 {
            let dir = crate::node::chains_dir(&self.data_dir);
            match crate::chain::free_disk_bytes(&dir) {
                Ok(free) if free < self.disk_reserve => failed.push(FailedCheck {
                    component: "ledger-disk".into(),
                    reason: format!(
                        "{} has {} MiB free, below the reserve of {} MiB",
                        dir.display(),
                        free >> 20,
                        self.disk_reserve >> 20
                    ),
                }),
                Ok(_) => {}
                Err(e) => failed.push(FailedCheck {
                    component: "ledger-disk".into(),
                    reason: format!("cannot read the free space of {}: {e}", dir.display()),
                }),
            }
        }
        HealthStatus {
            status: if failed.is_empty() { "OK" } else { "Service Unavailable" }.into(),
            time: crate::logging::rfc3339(SystemTime::now()),
            failed_checks: failed,
        }
    }

    /// What the status page shows.
    pub fn status(&self) -> page::Status {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let channels = self
            .node
            .all_channels()
            .into_iter()
            .filter_map(|name| {
                let info = self.node.info(&name)?;
                let chain = self.node.chain(&name);
                let consensus = chain
                    .as_ref()
                    .and_then(|c| c.status().config())
                    .map(|c| c.consensus_type.clone())
                    .or_else(|| info.consenter.as_ref().map(|c| c.plugin.clone()))
                    .unwrap_or_default();
                let raft = crate::metrics::consensus_known(&name);
                let cluster = info.consenter.as_ref().and_then(|c| c.cluster.clone());
                Some(page::ChannelStatus {
                    plugin_version: info.consenter.as_ref().map(|c| c.version.clone()).unwrap_or_default(),
                    consensus,
                    height: info.height,
                    status: info.status.to_string(),
                    state: info.consenter.as_ref().map_or_else(|| "failed".to_string(), |c| c.state.clone()),
                    leader: cluster
                        .as_ref()
                        .map(|c| c.leader)
                        .filter(|l| *l != 0)
                        .or_else(|| raft.as_ref().and_then(|r| r.leader())),
                    is_leader: cluster
                        .as_ref()
                        .map(|c| c.is_leader)
                        .or_else(|| raft.as_ref().and_then(|r| r.is_leader())),
                    crashes: info.consenter.as_ref().map_or(0, |c| c.crashes),
                    restarts: info.consenter.as_ref().map_or(0, |c| c.restarts),
                    last_crash: info.consenter.as_ref().and_then(|c| c.last_crash.clone()).or(info.error),
                    throughput: history.of(&name),
                    name,
                })
            })
            .collect();
        page::Status {
            version: self.version.version.clone(),
            commit: self.version.commit_sha.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            healthy: self.health().failed_checks.is_empty(),
            channels,
        }
    }
}

/// The operations router. Serve it with
/// `into_make_service_with_connect_info::<AdminPeer>()`; `tls` says
/// whether the listener speaks TLS (then `/metrics`, `/logspec` and the
/// status page need a verified client certificate).
pub fn router(ops: Operations, tls: bool) -> Router {
    let secure = Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .route("/logspec", any(logspec))
        .layer(axum::middleware::from_fn_with_state(tls, require_cert));
    Router::new()
        .route("/healthz", any(healthz))
        .route("/version", any(version))
        .merge(secure)
        .layer(axum::middleware::from_fn(log_request))
        .layer(axum::middleware::from_fn(crate::admin::request_id))
        .with_state(ops)
}

/// Every request, at debug level (target `consenter_host::operations`).
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let r = next.run(req).await;
    tracing::debug!(%method, %path, status = r.status().as_u16(), "operations request");
    r
}

/// Fabric's `RequireCert`: over TLS, a verified client certificate or 401.
async fn require_cert(
    State(tls): State<bool>,
    ConnectInfo(peer): ConnectInfo<AdminPeer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if tls && peer.cert.is_none() {
        tracing::warn!(
            url = %req.uri(),
            method = %req.method(),
            remote = %peer.addr,
            "client request not authorized, client must pass a valid client certificate for this operation"
        );
        return StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(req).await
}

/// A JSON body as Go's json.Encoder writes it (compact, then a newline).
fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Fabric's healthz: GET only (405 otherwise, no body).
async fn healthz(State(ops): State<Operations>, method: Method) -> Response {
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let ops2 = ops.clone();
    let h = tokio::task::spawn_blocking(move || ops2.health()).await.unwrap_or_else(|e| HealthStatus {
        status: "Service Unavailable".into(),
        time: crate::logging::rfc3339(SystemTime::now()),
        failed_checks: vec![FailedCheck { component: "healthz".into(), reason: e.to_string() }],
    });
    let code = if h.failed_checks.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // Go's json.Marshal: no final newline here.
    let body = serde_json::to_vec(&h).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Fabric's version handler: GET, else 400 `{"Error": …}`.
async fn version(State(ops): State<Operations>, method: Method) -> Response {
    if method != Method::GET {
        #[derive(Serialize)]
        struct E {
            #[serde(rename = "Error")]
            error: String,
        }
        let body = serde_json::to_vec(&E { error: format!("invalid request method: {method}") }).unwrap_or_default();
        return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let body = serde_json::to_vec(&ops.version).unwrap_or_default();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Prometheus' text format (404 when metrics are disabled, as Fabric
/// registers no handler then).
async fn metrics(State(ops): State<Operations>) -> Response {
    let Some(exporter) = ops.exporter.clone() else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    let node = ops.node.clone();
    match tokio::task::spawn_blocking(move || exporter.render(Some(&node))).await {
        Ok(text) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics: {e}\n")).into_response(),
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

/// Fabric's logspec handler: GET `{"spec"}`, PUT `{"spec"}` → 204, else 400.
async fn logspec(State(ops): State<Operations>, method: Method, body: Bytes) -> Response {
    let Some(logs) = ops.logs.clone() else {
        return json(StatusCode::SERVICE_UNAVAILABLE, &ErrorBody { error: "logging is not under control".into() });
    };
    match method {
        Method::GET => json(StatusCode::OK, &LogSpecBody { spec: logs.spec() }),
        Method::PUT => {
            let req: LogSpecBody = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return json(StatusCode::BAD_REQUEST, &ErrorBody { error: e.to_string() }),
            };
            match logs.activate(&req.spec) {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => json(StatusCode::BAD_REQUEST, &ErrorBody { error: e.to_string() }),
            }
        }
        m => json(StatusCode::BAD_REQUEST, &ErrorBody { error: format!("invalid request method: {m}") }),
    }
}

async fn status_json(State(ops): State<Operations>) -> Response {
    match tokio::task::spawn_blocking(move || ops.status()).await {
        Ok(s) => {
            let mut r = json(StatusCode::OK, &s);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("status: {e}\n")).into_response(),
    }
}

async fn status_page(State(ops): State<Operations>) -> Response {
    match tokio::task::spawn_blocking(move || page::html(&ops.status())).await {
        Ok(html) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src \
                         'self'; img-src data:",
                    ),
                ),
            ],
            html,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("status page: {e}\n")).into_response(),
    }
}

/// Serves the endpoint on `listener` until `shutdown` resolves (plain
/// HTTP, or TLS with `tls`), and samples throughput and drains metric
/// buckets every [`SAMPLE_EVERY`] meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Operations,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = {
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let o = ops.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    o.history.lock().unwrap_or_else(|p| p.into_inner()).sample(&o.node);
                    if let Some(e) = &o.exporter {
                        e.upkeep();
                    }
                })
                .await;
            }
        })
    };
    let r = match tls {
        None => {
            let app = router(ops, false);
            axum::serve(listener, app.into_make_service_with_connect_info::<AdminPeer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            let app = router(ops, true);
            let listener = crate::tls::TlsListener::new(
                listener,
                config,
                crate::tls::HANDSHAKE_TIMEOUT,
                "operations endpoint",
                false,
            )?;
            axum::serve(listener, app.into_make_service_with_connect_info::<AdminPeer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    sampler.abort();
    r
}

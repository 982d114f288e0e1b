//! The admin endpoint: Fabric's channel participation API (the REST shape
//! `osnadmin` speaks) over the node's registrar, and the small HTTP client
//! the `consenter-host channel` commands use. Without TLS the endpoint
//! serves loopback clients only. May touch the node (join, list, show,
//! remove channels) and its own sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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

/// Path prefix of the channel participation API.
pub const CHANNELS: &str = "/participation/v1/channels";

/// Largest join request accepted (a config block is far smaller; Fabric's
/// default AbsoluteMaxBytes plus room for the multipart framing).
pub const MAX_BODY: usize = 11 * 1024 * 1024;

/// Fabric's ChannelInfoShort.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRef {
    pub name: String,
    pub url: String,
}

/// Fabric's ChannelList.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelList {
    pub system_channel: Option<ChannelRef>,
    pub channels: Vec<ChannelRef>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Plain HTTP: loopback clients only.
    LoopbackOnly,
    /// Clients were authenticated by mutual TLS before reaching a handler.
    Authenticated,
}

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
}

/// The channel participation router over `node`.
pub fn router(node: Arc<Node>, access: Access) -> Router {
    Router::new()
        .route(CHANNELS, get(list).post(join))
        .route(&format!("{CHANNELS}/{{channel}}"), get(show).delete(remove))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(access, check_access))
        .with_state(AppState { node })
}

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(node, Access::LoopbackOnly);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, json_headers(), serde_json::to_vec(&ErrorBody { error: msg.into() }).unwrap_or_default()).into_response()
}

fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))]
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, json_headers(), body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}")),
    }
}

/// Every request passes here first: without TLS, only loopback clients.
async fn check_access(
    State(access): State<Access>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if access == Access::LoopbackOnly && !peer.ip().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            format!("the admin endpoint without TLS serves loopback clients only, not {peer}"),
        );
    }
    next.run(req).await
}

fn node_error(e: NodeError) -> Response {
    let status = match &e {
        NodeError::Exists(_) => StatusCode::CONFLICT,
        NodeError::NotFound(_) => StatusCode::NOT_FOUND,
        NodeError::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        NodeError::Config { .. } | NodeError::Channel { .. } | NodeError::NoPlugin { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
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
    json(
        StatusCode::OK,
        &ChannelList { system_channel: system.map(|name| ChannelRef { url: url(&name), name }), channels },
    )
}

async fn show(State(st): State<AppState>, Path(channel): Path<String>) -> Response {
    match st.node.info(&channel) {
        Some(i) => json(StatusCode::OK, &ChannelView::from(i)),
        None => error(StatusCode::NOT_FOUND, format!("channel {channel} does not exist")),
    }
}

async fn remove(State(st): State<AppState>, Path(channel): Path<String>) -> Response {
    let node = st.node.clone();
    match tokio::task::spawn_blocking(move || node.remove(&channel)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => node_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("removing the channel: {e}")),
    }
}

async fn join(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let block_bytes = match multipart_field(ct, &body, "config-block") {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let block = match Block::decode(block_bytes) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("config-block is not a common.Block: {e}")),
    };
    let node = st.node.clone();
    match tokio::task::spawn_blocking(move || node.join(&block)).await {
        Ok(Ok(info)) => {
            let view = ChannelView::from(info);
            let mut r = json(StatusCode::CREATED, &view);
            if let Ok(v) = HeaderValue::from_str(&view.url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Ok(Err(e)) => node_error(e),
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
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The `error` of an ErrorResponse body, else the body as text.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// A one-shot HTTP/1.1 request to the admin endpoint (plain HTTP).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<HttpAnswer, std::io::Error> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some((_, b)) = body {
        s.write_all(b)?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("answer from {addr}: {m}"));
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status in the status line"))?;
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("malformed chunked body"))?;
    }
    Ok(HttpAnswer { status, body })
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
    fn chunked_bodies() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"5\r\nab").is_none());
    }
}

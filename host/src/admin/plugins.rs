//! The admin endpoint's plugin API (not part of Fabric's): `GET
//! /consenter/v1/plugins` lists the build serving each consensus type, and
//! `POST /consenter/v1/plugins` installs a new build live (the node's
//! checks and canary, then every chain of the type upgrades at its next
//! block boundary, on probation). Same access rule as the participation
//! API. May touch the node's registry only.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use serde::Serialize;

use super::{AppState, error, json, ok_no_store};
use crate::node::NodeError;
use crate::registry::PluginView;

/// The plugin API's path.
pub const PLUGINS: &str = "/consenter/v1/plugins";

/// Largest plugin package accepted (a release build of the raft plugin is
/// a few MiB).
pub const MAX_PLUGIN: usize = 64 * 1024 * 1024;

/// The answer of `GET /consenter/v1/plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginList {
    /// One build per consensus type.
    pub plugins: Vec<PluginView>,
}

/// The `consensusType` of `POST /consenter/v1/plugins?consensusType=T`
/// (the type, for a package without a manifest). Consensus types are
/// plain names, so no percent-decoding is needed; a value that needs it is
/// taken as written and refused by the type check.
fn asked_type(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "consensusType")
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

pub(super) async fn list(State(st): State<AppState>) -> Response {
    ok_no_store(&PluginList { plugins: st.node.plugins() })
}

/// The body is the package itself (`application/wasm` or
/// `application/octet-stream`), or a `multipart/form-data` field
/// `plugin`.
pub(super) async fn install(State(st): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let bytes = if ct.trim_start().to_ascii_lowercase().starts_with("multipart/") {
        match super::multipart_field(ct, &body, "plugin") {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    } else {
        body
    };
    if bytes.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the request has no plugin package in its body");
    }
    let asked = asked_type(&uri);
    let node = st.node.clone();
    // Compiling and the canaries take a while: off the async workers.
    let installed = tokio::task::spawn_blocking(move || node.install_plugin(&bytes, asked.as_deref())).await;
    match installed {
        Ok(Ok(i)) => json(StatusCode::CREATED, &i),
        Ok(Err(e)) => {
            let status = if super::internal(&e) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::BAD_REQUEST };
            tracing::warn!(error = %e, "plugin install refused");
            error(status, install_text(e))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("installing the plugin: {e}")),
    }
}

fn install_text(e: NodeError) -> String {
    match e {
        NodeError::Install(i) => i.to_string(),
        other => format!("installing the plugin: {other}"),
    }
}

pub(super) async fn not_allowed(method: axum::http::Method) -> Response {
    super::not_allowed(format!("invalid request method {method}"), "GET, POST")
}

//! Dialing a gRPC endpoint (`host:port`) as a tonic `Channel`: plaintext,
//! or TLS through the node's own rustls client config (root CAs, an
//! optional client certificate, an optional server name other than the
//! address's host). Connection failures come back as [`DialError`]s that
//! say what failed and what it most likely means. Opens sockets only when
//! the channel is used.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::{HANDSHAKE_TIMEOUT, TlsError};

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 pings on a connection this often (Fabric's client default).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// A ping unanswered this long ends the connection (Fabric's default).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A gRPC client's TLS: the rustls config (ALPN h2) and the server name
/// to verify (default: the host of the address).
#[derive(Clone)]
pub struct ClientTls {
    /// Root CAs, client certificate, protocols.
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry, when not the host
    /// of the address dialed (`--tls-server-name`).
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Why a connection to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address is not `host:port`.
    #[error("{addr:?} is not a valid endpoint address: {reason}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No TLS server name for the address.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TCP connection failed.
    #[error("connecting to {addr}: {source}")]
    Tcp {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {source}{hint}")]
    Handshake {
        /// The address.
        addr: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
        /// What it most likely means.
        hint: &'static str,
    },
    /// The TLS handshake failed below TLS (the connection closed, say).
    #[error("TLS handshake with {addr} failed: {source} (does the endpoint speak TLS?)")]
    HandshakeIo {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The handshake took too long.
    #[error("TLS handshake with {addr} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The address.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server did not agree to speak HTTP/2.
    #[error("{addr} did not negotiate HTTP/2 (ALPN h2): not a gRPC endpoint?")]
    NoH2 {
        /// The address.
        addr: String,
    },
    /// The gRPC (HTTP/2) connection failed after TCP/TLS.
    #[error("connecting to {addr}: {reason}{hint}")]
    Grpc {
        /// The address.
        addr: String,
        /// The error chain.
        reason: String,
        /// What it most likely means.
        hint: &'static str,
    },
}

fn hint_for(e: &rustls::Error, has_client_cert: bool) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(_) => {
            " (the server's certificate does not verify against the trusted root CAs (--tls-root-ca) for this name)"
        }
        E::AlertReceived(_) if !has_client_cert => {
            " (the server may require a client certificate: pass --tls-client-cert and --tls-client-key)"
        }
        E::AlertReceived(_) => " (the server refused the client certificate: is it issued by a CA the server trusts?)",
        E::InvalidMessage(_) => " (does the endpoint speak TLS? without TLS, leave out --tls-root-ca)",
        _ => "",
    }
}

fn endpoint(addr: &str, scheme: &str) -> Result<Endpoint, DialError> {
    Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| DialError::Address { addr: addr.to_string(), reason: e.to_string() })
        .map(|e| {
            // Fabric's client keepalive (General.Keepalive.ClientInterval,
            // ClientTimeout): a peer that vanished without closing is noticed.
            e.connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        })
}

/// A channel to `addr` that connects on first use and reconnects after a
/// failure (tonic's lazy channel); over TLS when `tls` is given.
pub fn lazy(addr: &str, tls: Option<ClientTls>) -> Result<Channel, DialError> {
    match tls {
        None => Ok(endpoint(addr, "http")?.connect_lazy()),
        Some(tls) => {
            // The connector does TLS; tonic must not try to (it refuses an
            // https URI without its own TLS config).
            let ep = endpoint(addr, "http")?;
            Ok(ep.connect_with_connector_lazy(connector(addr, tls)?))
        }
    }
}

/// Connects to `addr` now (TCP, TLS, HTTP/2); the error says which step
/// failed.
pub async fn connect(addr: &str, tls: Option<ClientTls>) -> Result<Channel, DialError> {
    let has_tls = tls.is_some();
    let has_client_cert = tls.as_ref().is_some_and(|t| t.config.client_auth_cert_resolver.has_certs());
    let r = match tls {
        None => endpoint(addr, "http")?.connect().await,
        Some(tls) => {
            // The connector does TLS; tonic must not try to (it refuses an
            // https URI without its own TLS config).
            let ep = endpoint(addr, "http")?;
            ep.connect_with_connector(connector(addr, tls)?).await
        }
    };
    r.map_err(|e| from_transport(addr, &e, has_tls, has_client_cert))
}

/// The [`DialError`] inside a tonic transport error (or a status), or one
/// made of its error chain.
pub fn from_transport(
    addr: &str,
    e: &(dyn std::error::Error + 'static),
    has_tls: bool,
    has_client_cert: bool,
) -> DialError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DialError>() {
            return clone_dial(addr, d);
        }
        // TLS 1.3: a refused client certificate shows after the handshake,
        // as an alert read by the HTTP/2 layer.
        if let Some(r) = err
            .downcast_ref::<rustls::Error>()
            .or_else(|| err.downcast_ref::<std::io::Error>().and_then(super::rustls_error))
        {
            return DialError::Handshake {
                addr: addr.to_string(),
                source: r.clone(),
                hint: hint_for(r, has_client_cert),
            };
        }
        cur = err.source();
    }
    let hint = if has_tls { "" } else { " (if the endpoint uses TLS, pass --tls-root-ca)" };
    DialError::Grpc { addr: addr.to_string(), reason: error_chain(e), hint }
}

/// DialError holds sources that are not Clone; rebuild the variants the
/// connector makes.
fn clone_dial(at: &str, d: &DialError) -> DialError {
    match d {
        DialError::Handshake { addr, source, hint } => {
            DialError::Handshake { addr: addr.clone(), source: source.clone(), hint }
        }
        DialError::HandshakeTimeout { addr, timeout } => {
            DialError::HandshakeTimeout { addr: addr.clone(), timeout: *timeout }
        }
        DialError::NoH2 { addr } => DialError::NoH2 { addr: addr.clone() },
        DialError::Tcp { addr, source } => {
            DialError::Tcp { addr: addr.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
        }
        DialError::HandshakeIo { addr, source } => DialError::HandshakeIo {
            addr: addr.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => DialError::Grpc { addr: at.to_string(), reason: other.to_string(), hint: "" },
    }
}

/// An error and its sources, joined with ": " (repeated texts skipped).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

type Connecting = std::pin::Pin<Box<dyn Future<Output = Result<TokioIo<Prefixed>, DialError>> + Send>>;
type TlsIo = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS stream with the bytes already read from it in front.
pub(crate) struct Prefixed {
    head: Vec<u8>,
    at: usize,
    io: TlsIo,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Waits for the server's first bytes (an HTTP/2 server speaks first: its
/// SETTINGS frame). Under TLS 1.3 the server checks the client's
/// certificate after the client's handshake is done, so a refusal (an
/// alert) only shows here; reading now makes it a handshake error rather
/// than a broken pipe later. A server that stays silent is let through
/// after the handshake timeout.
async fn first_bytes(mut io: TlsIo, addr: &str, has_client_cert: bool) -> Result<Prefixed, DialError> {
    use tokio::io::AsyncReadExt;
    let mut head = vec![0u8; 4096];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, io.read(&mut head)).await {
        Err(_) => head.clear(),
        Ok(Ok(n)) => head.truncate(n),
        Ok(Err(e)) => {
            return Err(match super::rustls_error(&e) {
                Some(r) => DialError::Handshake {
                    addr: addr.to_string(),
                    source: r.clone(),
                    hint: hint_for(r, has_client_cert),
                },
                None => DialError::HandshakeIo { addr: addr.to_string(), source: e },
            });
        }
    }
    Ok(Prefixed { head, at: 0, io })
}

/// The connector tonic calls for each (re)connection: TCP to `addr` (the
/// URI tonic passes is the same address), then the TLS handshake.
fn connector(
    addr: &str,
    tls: ClientTls,
) -> Result<
    impl tower::Service<tonic::codegen::http::Uri, Response = TokioIo<Prefixed>, Error = DialError, Future = Connecting>
    + Clone
    + use<>,
    DialError,
> {
    let name = match tls.server_name.clone() {
        Some(n) => n,
        None => super::server_name(addr)?,
    };
    let addr = addr.to_string();
    let has_client_cert = tls.config.client_auth_cert_resolver.has_certs();
    let connector = TlsConnector::from(tls.config);
    Ok(tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let (addr, name, connector) = (addr.clone(), name.clone(), connector.clone());
        Box::pin(async move {
            let tcp =
                TcpStream::connect(&addr).await.map_err(|source| DialError::Tcp { addr: addr.clone(), source })?;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
                Err(_) => return Err(DialError::HandshakeTimeout { addr, timeout: HANDSHAKE_TIMEOUT }),
                Ok(Err(e)) => {
                    return Err(match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(r) => DialError::Handshake { addr, source: r.clone(), hint: hint_for(r, has_client_cert) },
                        None => DialError::HandshakeIo { addr, source: e },
                    });
                }
                Ok(Ok(s)) => s,
            };
            if tls.get_ref().1.alpn_protocol() != Some(super::ALPN_H2) {
                return Err(DialError::NoH2 { addr });
            }
            Ok(TokioIo::new(first_bytes(tls, &addr, has_client_cert).await?))
        }) as Connecting
    }))
}

//! A TLS accept loop shared by the node's servers (gRPC and the admin
//! endpoint): a task accepts TCP connections and runs each handshake in
//! its own task (bounded in time and number), so a slow or failing client
//! never holds up the others; completed streams come through a channel,
//! as an `axum::serve::Listener` or a stream for tonic's
//! `serve_with_incoming`. Failed handshakes are logged (naming the
//! listener and the peer) and dropped. The task ends when the listener is
//! dropped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 64;

/// A listener whose connections are TLS streams (see the module doc).
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` (needs a Tokio runtime); `label` names
    /// the listener in logs (e.g. "admin endpoint"). Accepted sockets get
    /// TCP_NODELAY when `nodelay`.
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        handshake_timeout: Duration,
        label: &'static str,
        nodelay: bool,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(accept_loop(tcp, acceptor, Settings { timeout: handshake_timeout, label, nodelay }, tx));
        Ok(TlsListener { local, ready })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// For tonic's `serve_with_incoming`: tonic reads the peer's certificates
/// from the stream (`Request::peer_certs`).
impl tokio_stream::Stream for TlsListener {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|c| c.map(|(tls, _)| Ok(tls)))
    }
}

#[derive(Clone, Copy)]
struct Settings {
    timeout: Duration,
    label: &'static str,
    nodelay: bool,
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    s: Settings,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = tx.closed() => return,
            r = tcp.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(s.label, e).await;
                    continue;
                }
            },
        };
        if s.nodelay
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(listener = s.label, %peer, error = %e, "setting TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Fallible: a refused handshake gives the socket back, so the
            // refusal is logged before the peer sees the connection close.
            match tokio::time::timeout(s.timeout, acceptor.accept(stream).into_fallible()).await {
                Ok(Ok(tls)) => {
                    tracing::debug!(listener = s.label, %peer, "TLS handshake done");
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err((e, socket))) => {
                    tracing::warn!(listener = s.label, %peer, error = %e, "TLS handshake refused");
                    drop(socket);
                }
                Err(_) => tracing::warn!(listener = s.label, %peer, timeout = ?s.timeout, "TLS handshake timed out"),
            }
        });
    }
}

/// As axum's own listener: per-connection errors are skipped; others
/// (out of file descriptors, say) are logged and retried after a pause.
async fn accept_error(label: &'static str, e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(listener = label, error = %e, "accepting a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

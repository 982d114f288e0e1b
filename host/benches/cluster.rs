//! The cluster transport's throughput: 1 KiB consensus messages from one
//! transport to another over loopback TLS (orderer0 → orderer1 of the
//! fixtures, one Step stream), from `send_consensus` until the receiver's
//! Inbound has them all. 10,000 messages per iteration, queue deep enough
//! that none is dropped (checked).
//! Run: `cargo bench -p consenter-host --bench cluster`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use consenter_host::cluster::{ClientIdentity, Inbound, Member, Transport, TransportLimits};
use consenter_host::tls::{self, ClientAuth};

const PER_ITER: u64 = 10_000;

fn tls_file(n: usize, f: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com/orderers/orderer{n}.example.com/tls/{f}"
    ))
}

fn tlsca() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/fabric/crypto/ordererOrganizations/example.com/tlsca/tlsca.example.com-cert.pem")
}

/// Counts what arrives and wakes the waiter at each multiple of PER_ITER.
struct Counter {
    n: AtomicU64,
    done: tokio::sync::Notify,
}

impl Inbound for Counter {
    fn consensus(&self, _: &str, _: u64, _: Bytes) {
        if (self.n.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(PER_ITER) {
            self.done.notify_one();
        }
    }
    fn submit(&self, _: &str, _: u64, _: u64, _: Bytes) {}
}

fn member(id: u64, n: usize, endpoint: &str) -> Member {
    let cert = std::fs::read(tls_file(n, "server.crt")).unwrap();
    Member { id, endpoint: endpoint.into(), server_tls_cert: cert.clone(), client_tls_cert: cert }
}

fn transport(n: usize) -> Transport {
    let id = ClientIdentity::from_files(&tls_file(n, "server.crt"), &tls_file(n, "server.key"), &[tlsca()]).unwrap();
    Transport::new(id, TransportLimits { queue_depth: PER_ITER as usize, ..TransportLimits::default() })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (a, b, counter) = rt.block_on(async {
        let (a, b) = (transport(0), transport(1));
        let counter = Arc::new(Counter { n: AtomicU64::new(0), done: tokio::sync::Notify::new() });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let config = tls::server_config(
            &tls_file(1, "server.crt"),
            &tls_file(1, "server.key"),
            ("cert", "key"),
            ClientAuth::Request,
            tls::ALPN_H2,
        )
        .unwrap();
        let incoming = tls::TlsListener::new(l, config, tls::HANDSHAKE_TIMEOUT, "bench", true).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder().add_service(b.server(counter.clone())).serve_with_incoming(incoming),
        );
        let ms = vec![member(1, 0, "127.0.0.1:1"), member(2, 1, &addr)];
        a.set_members("bench", 1, ms.clone());
        b.set_members("bench", 2, ms);
        (a, b, counter)
    });
    let payload = Bytes::from(vec![0x5au8; 1024]);
    let mut g = c.benchmark_group("cluster");
    g.throughput(Throughput::Elements(PER_ITER));
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("send_receive_1KiB_tls", |bencher| {
        bencher.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                rt.block_on(async {
                    let done = counter.done.notified();
                    for _ in 0..PER_ITER {
                        a.send_consensus("bench", 2, payload.clone()).expect("queued");
                    }
                    done.await;
                });
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    let s = a.stats();
    assert_eq!(s.peer("bench", 2).unwrap().dropped, 0, "{s:?}");
    drop(b);
}

criterion_group!(benches, bench);
criterion_main!(benches);

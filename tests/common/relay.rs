//! A TCP relay in front of a loopback server whose flows can be
//! blackholed: the sockets stay open and bytes are read but never
//! forwarded, so the client sees silence, not an RST, as a rescheduled
//! Redis pod's old address behaves.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of Redis whose flows can be blackholed: the
/// sockets stay open and bytes are read but never forwarded, so the
/// client sees silence, not an RST. Flows opened after a blackhole carry
/// bytes again (the new address answers).
pub struct Relay {
    addr: SocketAddr,
    /// Flows opened at or before this generation are silent.
    silenced: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    /// Every flow, old and new, is silent while set.
    all: Arc<AtomicBool>,
}

impl Relay {
    pub async fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silenced = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(1));
        let all = Arc::new(AtomicBool::new(false));
        let (s, g, al) = (
            Arc::clone(&silenced),
            Arc::clone(&generation),
            Arc::clone(&all),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let mine = g.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, mine, Arc::clone(&s), Arc::clone(&al)));
                tokio::spawn(pipe(sr, cw, mine, Arc::clone(&s), Arc::clone(&al)));
            }
        });
        Relay {
            addr,
            silenced,
            generation,
            all,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every flow, open now or opened later, is silent until `heal`.
    pub fn blackhole_everything(&self) {
        self.all.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.all.store(false, Ordering::SeqCst);
        self.blackhole_open_flows();
    }

    /// Every flow open now goes silent; new ones work.
    pub fn blackhole_open_flows(&self) {
        let now = self.generation.fetch_add(1, Ordering::SeqCst);
        self.silenced.store(now, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: u64,
    silenced: Arc<AtomicU64>,
    all: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if all.load(Ordering::SeqCst) || generation <= silenced.load(Ordering::SeqCst) {
            continue; // read and dropped: the peer sees silence
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

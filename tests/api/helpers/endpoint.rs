//! A TCP forwarder for tests that need to see or cut the connections between a client and a
//! server.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP forwarder standing in for a failover endpoint (DNS name, Sentinel, managed primary
/// endpoint): clients keep one address while the server behind it changes. It counts the
/// connections clients open.
pub struct Endpoint {
    pub port: u16,
    backend: Arc<AtomicU16>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// One per open connection: sending on it blackholes that connection.
    freezes: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
    accept: JoinHandle<()>,
    accepted: Arc<AtomicUsize>,
    /// While set, what servers send is read and dropped.
    losing: Arc<AtomicBool>,
}

/// Forwards `client` to `server` and back; while `losing` is set, what the server sends is read
/// and dropped.
async fn forward(client: TcpStream, server: TcpStream, losing: &AtomicBool) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let requests = tokio::io::copy(&mut from_client, &mut to_server);
    let replies = async {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) if !losing.load(Ordering::SeqCst) => {
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}

impl Endpoint {
    pub async fn start(backend: u16) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Arc::new(AtomicU16::new(backend));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let freezes: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let losing = Arc::new(AtomicBool::new(false));
        let accept = {
            let (backend, connections) = (backend.clone(), connections.clone());
            let (accepted, freezes) = (accepted.clone(), freezes.clone());
            let losing = losing.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let to = backend.load(Ordering::SeqCst);
                    let (freeze, frozen) = tokio::sync::oneshot::channel();
                    freezes.lock().push(freeze);
                    let losing = losing.clone();
                    connections.lock().push(tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await {
                            tokio::select! {
                                _ = forward(client, server, &losing) => {}
                                Ok(()) = frozen => {
                                    // Both ends stay open and nothing is forwarded any more.
                                    std::future::pending::<()>().await;
                                }
                            }
                        }
                    }));
                }
            })
        };
        Endpoint {
            port,
            backend,
            connections,
            freezes,
            accept,
            accepted,
            losing,
        }
    }

    /// From now on (`true`) every server's answers on every connection, open or opened later,
    /// are dropped while the clients' requests still reach it: each command runs and its reply
    /// is lost, as when a connection breaks after the server has acted. `false` forwards answers
    /// again.
    pub fn lose_replies(&self, losing: bool) {
        self.losing.store(losing, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Points new connections at another server and leaves the open ones with the old one, as
    /// a DNS name that moves does (a client's open connections stay where they were).
    pub fn retarget(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
    }

    /// Blackholes every connection open now: they stay open and carry nothing either way, as
    /// when the server's host is gone without a word (a crash, a partition) and no reset comes.
    /// Connections opened later are forwarded as usual.
    pub fn blackhole_open_connections(&self) {
        for f in self.freezes.lock().drain(..) {
            let _ = f.send(());
        }
    }

    /// Points the endpoint at another server and drops every connection to the old one.
    pub fn switch(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
        for c in self.connections.lock().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.accept.abort();
        self.switch(0);
    }
}

//! A TCP forwarder for tests that need to see or cut the connections between a client and a
//! server.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
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
}

impl Endpoint {
    pub async fn start(backend: u16) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Arc::new(AtomicU16::new(backend));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let freezes: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (backend, connections) = (backend.clone(), connections.clone());
            let (accepted, freezes) = (accepted.clone(), freezes.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let to = backend.load(Ordering::SeqCst);
                    let (freeze, frozen) = tokio::sync::oneshot::channel();
                    freezes.lock().push(freeze);
                    connections.lock().push(tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)).await {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
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
        }
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

//! Connections to a standalone Redis (or to the primary the Sentinels named last): one shared
//! connection (the heartbeat's, and every thread's while its own is opening) and one per thread
//! that calls Redis.
//!
//! Each actix worker is a single-threaded runtime: a connection opened there is driven on the
//! same thread, so a command needs no wake-up of another thread on the way out and none on the
//! way back, and the worker's concurrent commands are pipelined on its own connection.
//!
//! A thread's connection is opened in the background on its first command, which goes on the
//! shared connection meanwhile: no request waits for a connect. When the replica rejoins after a
//! degraded spell, every thread's connection is dropped and reopened the same way: one that died
//! with Redis would otherwise fail once more on each thread, each time sending the replica back
//! to degraded mode, and the heartbeat has just proven the shared one.
//!
//! A thread's connection can sit idle for as long as the thread serves nothing from Redis (a
//! quiet night), and a connection Redis closed under it (its `timeout`, a `CLIENT KILL`, a
//! middlebox's idle limit in between) fails the next command sent on it. So the heartbeat pings
//! each thread's connection that sat idle since the last heartbeat
//! ([`Connections::check_threads`]): the ping keeps it in use, and one that fails is closed and
//! reopened like a new one instead of failing a request's command.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Distinguishes the [`Connections`] of one process in [`PER_THREAD`].
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// At most this many Redis servers' connections are kept per thread (a process has one; tests
/// start many).
const PER_THREAD_SERVERS: usize = 8;

thread_local! {
    static PER_THREAD: RefCell<Vec<ThreadConn>> = const { RefCell::new(Vec::new()) };
}

/// One thread's connection to one server, in the generation it was opened for.
struct ThreadConn {
    owner: u64,
    generation: u64,
    own: Arc<Mutex<Own>>,
}

enum Own {
    /// Not open; the last attempt failed at this instant (`None`: never tried).
    Closed(Option<Instant>),
    Opening,
    /// Open; whether a command was sent on it since the last [`Connections::check_threads`].
    Open(ConnectionManager, bool),
}

pub(super) struct Connections {
    id: u64,
    config: ConnectionManagerConfig,
    /// Bounds one background open; a failed one is tried again this long after.
    open_timeout: Duration,
    shared: Mutex<Shared>,
    /// Bumped by [`Connections::reopen_all`]; a thread's connection from an older one is dropped.
    generation: AtomicU64,
    /// Every thread's connection of the current generation, for [`Connections::check_threads`].
    threads: Mutex<Vec<(u64, Weak<Mutex<Own>>)>>,
}

/// The server the connections go to, and the shared connection.
struct Shared {
    /// `None` until Sentinel names a primary.
    client: Option<redis::Client>,
    conn: Option<ConnectionManager>,
    /// When [`Connections::reconnect`] or [`Connections::retarget`] last replaced `conn`.
    replaced: Option<Instant>,
}

impl Connections {
    /// Connections to the server of `client`; `None`: to the server [`Connections::retarget`]
    /// names later (nothing is sent until then).
    ///
    /// # Errors
    /// The client cannot make a connection manager (not for a client that parsed).
    pub(super) fn new(
        client: Option<redis::Client>,
        config: ConnectionManagerConfig,
        open_timeout: Duration,
    ) -> redis::RedisResult<Connections> {
        let conn = client
            .as_ref()
            .map(|c| ConnectionManager::new_lazy_with_config(c.clone(), config.clone()))
            .transpose()?;
        Ok(Connections {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            open_timeout,
            shared: Mutex::new(Shared {
                client,
                conn,
                replaced: None,
            }),
            generation: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// The heartbeat's connection (`None`: no server yet).
    pub(super) fn shared(&self) -> Option<ConnectionManager> {
        self.shared.lock().conn.clone()
    }

    /// The address the connections go to (`None`: no server yet).
    pub(super) fn target(&self) -> Option<redis::ConnectionAddr> {
        let shared = self.shared.lock();
        shared
            .client
            .as_ref()
            .map(|c| c.get_connection_info().addr().clone())
    }

    /// Moves every connection to the server of `client` (Sentinel named another primary): the
    /// shared one is replaced and every thread's is reopened.
    pub(super) fn retarget(&self, client: redis::Client) {
        let mut shared = self.shared.lock();
        match ConnectionManager::new_lazy_with_config(client.clone(), self.config.clone()) {
            Ok(fresh) => {
                *shared = Shared {
                    client: Some(client),
                    conn: Some(fresh),
                    replaced: Some(Instant::now()),
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot make a new Redis connection"),
        }
        drop(shared);
        self.reopen_all();
    }

    /// Replaces every connection, the shared one too, so the next command connects anew and
    /// resolves the server's name again: for a server that answers but is not the one the name
    /// points at any more (a primary demoted to a replica behind a failover endpoint keeps its
    /// clients' connections, and a connection manager only reconnects when its connection
    /// breaks). At most once per `open_timeout`, so the calls of a busy moment make one.
    pub(super) fn reconnect(&self) {
        let mut shared = self.shared.lock();
        if shared
            .replaced
            .is_some_and(|at| at.elapsed() < self.open_timeout)
        {
            return;
        }
        let Some(client) = shared.client.clone() else {
            return;
        };
        match ConnectionManager::new_lazy_with_config(client, self.config.clone()) {
            Ok(fresh) => {
                shared.conn = Some(fresh);
                shared.replaced = Some(Instant::now());
            }
            Err(e) => tracing::debug!(error = %e, "cannot make a new Redis connection"),
        }
        drop(shared);
        self.reopen_all();
    }

    /// This thread's own connection if it is open; otherwise the shared one, while this thread's
    /// is opened in the background (when the thread runs a Tokio runtime).
    pub(super) fn for_this_thread(&self) -> Option<ConnectionManager> {
        let generation = self.generation.load(Ordering::SeqCst);
        let own = PER_THREAD.with(|conns| {
            let mut conns = conns.borrow_mut();
            let at = conns.iter().position(|c| c.owner == self.id);
            if let Some(c) = at.and_then(|i| conns.get(i)) {
                if c.generation == generation {
                    return c.own.clone();
                }
            }
            if let Some(i) = at {
                conns.remove(i);
            } else if conns.len() == PER_THREAD_SERVERS {
                conns.remove(0);
            }
            let own = Arc::new(Mutex::new(Own::Closed(None)));
            conns.push(ThreadConn {
                owner: self.id,
                generation,
                own: own.clone(),
            });
            let mut threads = self.threads.lock();
            threads.retain(|(g, t)| *g == generation && t.strong_count() > 0);
            threads.push((generation, Arc::downgrade(&own)));
            own
        });
        let mut state = own.lock();
        match &mut *state {
            Own::Open(c, used) => {
                *used = true;
                return Some(c.clone());
            }
            Own::Opening => {}
            Own::Closed(failed) => {
                let due = failed.is_none_or(|at| at.elapsed() >= self.open_timeout);
                let client = self.shared.lock().client.clone();
                if let (true, Ok(rt), Some(client)) =
                    (due, tokio::runtime::Handle::try_current(), client)
                {
                    *state = Own::Opening;
                    rt.spawn(open(
                        client,
                        self.config.clone(),
                        self.open_timeout,
                        own.clone(),
                    ));
                }
            }
        }
        self.shared()
    }

    /// Drops every thread's connection; each opens a new one after its next command.
    pub(super) fn reopen_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Pings every thread's open connection that no command used since the last call, all at
    /// once, each for at most `timeout` (one in use needs no ping to stay open, and a ping on a
    /// busy thread would only wait behind its work). One that does not answer (Redis closed it,
    /// or it broke) is closed: that thread's next command goes on the shared connection while a
    /// new one opens. Any answer of Redis's, a refusal too (an ACL without `PING`), proves the
    /// connection.
    pub(super) async fn check_threads(&self, timeout: Duration) {
        let generation = self.generation.load(Ordering::SeqCst);
        let open: Vec<_> = self
            .threads
            .lock()
            .iter()
            .filter(|(g, _)| *g == generation)
            .filter_map(|(_, t)| t.upgrade())
            .filter_map(|own| {
                let c = match &mut *own.lock() {
                    Own::Open(_, used @ true) => {
                        *used = false;
                        return None;
                    }
                    Own::Open(c, false) => c.clone(),
                    _ => return None,
                };
                Some((own, c))
            })
            .collect();
        let pings = open.into_iter().map(|(own, mut c)| async move {
            let ping = redis::cmd("PING");
            let answered =
                match tokio::time::timeout(timeout, ping.query_async::<redis::Value>(&mut c)).await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => e.code().is_some(),
                    Err(_) => false,
                };
            if !answered {
                tracing::debug!("a thread's Redis connection did not answer a ping: reopening it");
                let mut state = own.lock();
                if matches!(*state, Own::Open(..)) {
                    *state = Own::Closed(None);
                }
            }
        });
        futures::future::join_all(pings).await;
    }
}

/// Opens a thread's connection on the runtime it was spawned on (the thread's own, for a
/// single-threaded one).
async fn open(
    client: redis::Client,
    config: ConnectionManagerConfig,
    bound: Duration,
    own: Arc<Mutex<Own>>,
) {
    let opened = tokio::time::timeout(bound, ConnectionManager::new_with_config(client, config));
    *own.lock() = match opened.await {
        Ok(Ok(c)) => Own::Open(c, false),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot open this thread's Redis connection");
            Own::Closed(Some(Instant::now()))
        }
        Err(_) => Own::Closed(Some(Instant::now())),
    };
}

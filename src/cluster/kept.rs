//! The answers a Redis Cluster keeps for the takes and hits a replica gave up on.
//!
//! A Redis Cluster's client gives a reply up at `redis.timeout_ms`, so a take or hit that runs
//! after that (a node that paused its clients' writes runs it when the pause ends) pops a URL
//! whose reply nobody reads. Redis keeps each such call's answer under the call's id for the
//! re-send window (`Fleet::remember_ms`), so the replica reads it there instead: every call
//! given up on waits here, and one task reads all their keys (an `MGET` per [`KEYS_PER_READ`])
//! every half of the time an answer is kept, so that one read falls within it however late the
//! call runs. An answer found is landed (the URL it popped in this replica's own pool for its
//! key, see `orphans`; the stale URLs it purged counted as `expired`) and forgotten; a call
//! whose answer is not found within [`ABANDONED_WAIT`] is forgotten uncounted. What waits is
//! bounded ([`MAX_WAITING`]), and the reads cost a command per interval and thousand calls given
//! up on, also while the replica is degraded.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::cluster_async::ClusterConnection;
use tokio::time::Instant;

use super::orphans::{Orphans, Whose};
use super::ABANDONED_WAIT;

/// Calls given up on waiting for their answer at once; a call beyond it is not looked for.
const MAX_WAITING: usize = 10_000;

/// Keys read in one `MGET`.
const KEYS_PER_READ: usize = 1_000;

/// The calls given up on whose answers are looked for (see the module's documentation).
pub(super) struct KeptAnswers {
    /// How often the answers are read: half the time Redis keeps one.
    every: Duration,
    orphans: Arc<Orphans>,
    /// The replica's latest Cluster connection.
    conn: Mutex<Option<ClusterConnection>>,
    waiting: Mutex<Waiting>,
}

/// The calls given up on, and whether a task reads their answers (it stops when none is left;
/// only one may run: each reads answers by their calls' places).
#[derive(Default)]
struct Waiting {
    calls: Vec<Call>,
    reading: bool,
}

/// A call given up on: where its answer is kept, until when it is looked for, and whose URL it
/// takes.
struct Call {
    key: Vec<u8>,
    until: Instant,
    whose: Option<Whose>,
}

impl KeptAnswers {
    pub(super) fn new(every: Duration, orphans: Arc<Orphans>) -> Arc<KeptAnswers> {
        Arc::new(KeptAnswers {
            every,
            orphans,
            conn: Mutex::new(None),
            waiting: Mutex::default(),
        })
    }

    /// The connection to read on from now on.
    pub(super) fn connected(&self, conn: ClusterConnection) {
        *self.conn.lock() = Some(conn);
    }

    /// Looks for the answer of a call given up on, kept under `key`, that takes `whose` URL.
    /// Called within the runtime.
    pub(super) fn look_for(self: &Arc<Self>, key: Vec<u8>, whose: Option<Whose>) {
        let mut waiting = self.waiting.lock();
        if waiting.calls.len() >= MAX_WAITING {
            return;
        }
        waiting.calls.push(Call {
            key,
            until: Instant::now() + ABANDONED_WAIT,
            whose,
        });
        if !waiting.reading {
            waiting.reading = true;
            tokio::spawn(self.clone().read());
        }
    }

    async fn read(self: Arc<Self>) {
        loop {
            let next = Instant::now() + self.every;
            let keys = self.waiting_keys();
            let conn = self.conn.lock().clone();
            if let Some(mut conn) = conn {
                let mut answers = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(KEYS_PER_READ) {
                    let mut mget = redis::cmd("MGET");
                    for key in chunk {
                        mget.arg(key.as_slice());
                    }
                    let read = mget.query_async::<Vec<Option<String>>>(&mut conn);
                    match tokio::time::timeout_at(next, read).await {
                        Ok(Ok(read)) if read.len() == chunk.len() => answers.extend(read),
                        _ => answers.extend(std::iter::repeat_n(None, chunk.len())),
                    }
                }
                self.found(&answers);
            }
            tokio::time::sleep_until(next).await;
            let mut waiting = self.waiting.lock();
            let now = Instant::now();
            waiting.calls.retain(|c| c.until > now);
            if waiting.calls.is_empty() {
                waiting.reading = false;
                return;
            }
        }
    }

    /// The keys of the calls waiting, in their places.
    fn waiting_keys(&self) -> Vec<Vec<u8>> {
        let waiting = self.waiting.lock();
        waiting.calls.iter().map(|c| c.key.clone()).collect()
    }

    /// Lands and forgets the calls whose answers were read: `answers[i]` is the answer of the
    /// call waiting `i`th when they were read (only this task removes calls, and new ones are
    /// appended, so the places are still theirs).
    fn found(&self, answers: &[Option<String>]) {
        let mut answers = answers.iter();
        self.waiting
            .lock()
            .calls
            .retain(|call| match answers.next().and_then(Option::as_deref) {
                Some(answer) => {
                    self.orphans.kept(call.whose.as_ref(), answer);
                    false
                }
                None => true,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Fetch, Metrics};
    use crate::pool::PoolKey;

    /// An answer read is landed once, for its call's key, and its call forgotten; the calls
    /// whose answers were not there yet, and a call appended while the answers were read, go on
    /// waiting.
    #[test]
    fn an_answer_read_is_landed_once_and_the_others_wait_on() {
        let orphans = Orphans::new(Arc::new(Metrics::new()), 0);
        let landed = Arc::new(Mutex::new(Vec::new()));
        let into = landed.clone();
        orphans.land_in(Box::new(move |tenant, key: &PoolKey, url| {
            into.lock()
                .push((tenant, key.as_str().to_string(), url.url));
        }));
        let kept = KeptAnswers::new(Duration::from_millis(500), orphans);
        let member = format!("{}{}https://u", "0".repeat(16), Fetch::Hint.code());
        let wait = |key: &str| Call {
            key: key.into(),
            until: Instant::now() + ABANDONED_WAIT,
            whose: Some(Whose {
                tenant: 1,
                key: PoolKey(format!("pool-{key}").into()),
            }),
        };
        kept.waiting
            .lock()
            .calls
            .extend([wait("a"), wait("b"), wait("c")]);
        let answers = [None, Some(format!(",1700000000000:{member}")), None];
        // Appended after the read: the answers do not reach it.
        kept.waiting.lock().calls.push(wait("d"));
        kept.found(&answers);
        // The next read: nothing there for the calls left.
        kept.found(&[None, None, None]);
        let left = kept.waiting_keys();
        let left: Vec<&[u8]> = left.iter().map(Vec::as_slice).collect();
        assert_eq!(left, [&b"a"[..], b"c", b"d"]);
        assert_eq!(
            *landed.lock(),
            [(1, "pool-b".to_string(), "https://u".to_string())]
        );
    }
}

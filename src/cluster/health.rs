//! Health: the heartbeat that counts live replicas, measures this replica's clock against
//! Redis's, and rejoins after a degraded spell.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::sentinel::Ask;
use super::{connect_timeout, Down, Fleet, Functions, Request, Route};

/// How long asking the Sentinels for the primary may take: a Sentinel's connect and answer,
/// then a connect to the server it names and its answer to `ROLE`.
fn sentinel_timeout(timeout: Duration) -> Duration {
    2 * (connect_timeout(timeout) + timeout)
}

impl Fleet {
    /// Announces this replica and counts the live ones; rejoins after a degraded spell when
    /// Redis answers.
    ///
    /// # Errors
    /// Redis is not usable.
    pub async fn heartbeat(&self) -> Result<usize, Down> {
        self.connect_cluster_if_none().await;
        // With Sentinel and no primary yet (they could not be reached), ask them first, once per
        // heartbeat.
        let asked = self.single.as_ref().is_some_and(|c| c.target().is_none());
        if asked {
            self.follow_sentinels(Ask::All).await;
        }
        // A connection Redis dropped (a restart) fails one command before it reconnects: a
        // second try at once spares the replica a whole heartbeat interval in degraded mode.
        // With Sentinel, the second try goes to the primary the Sentinels name now.
        let (live, offset, clock_against_elapsed) = match self.beat().await {
            Ok(beat) => beat,
            Err(_) => {
                self.connect_cluster_if_none().await;
                if !asked {
                    self.follow_sentinels(Ask::All).await;
                }
                self.beat().await?
            }
        };
        // Before the offset's verdict, which may clear `clock_off`: a step is judged from here
        // (a test's manual clock only moves in steps: none is judged).
        if self.clock.counts_elapsed_time() {
            self.clock_at_beat
                .store(clock_against_elapsed, Ordering::Relaxed);
        }
        self.check_clock(offset);
        self.live_replicas.store(live.max(1), Ordering::Relaxed);
        self.metrics.fleet_replicas.set(live.max(1) as i64);
        if self.degraded.load(Ordering::SeqCst) {
            // Before any thread sees the replica healthy again: the threads' connections that
            // broke with the spell are not used again. (A spell that starts after this check is
            // left for the next heartbeat, which reopens first too: the replica never reads
            // healthy again without a reopen after its spell.)
            if let Some(conns) = &self.single {
                conns.reopen_all();
            }
            // Redis may have come back as another server or version: ask it for the
            // library again.
            self.reset_functions();
            if self.degraded.swap(false, Ordering::SeqCst) {
                for t in self.over_until.iter() {
                    t.store(0, Ordering::Relaxed);
                }
                tracing::info!(replicas = live, "Redis answers again: rejoined the fleet");
            }
        }
        if self.functions() == Functions::Unknown {
            self.load_library(Route::Shared).await;
        }
        if let (Some(conns), true) = (&self.single, self.healthy()) {
            conns.check_threads(self.timeout).await;
        }
        self.metrics.redis_degraded.set(i64::from(!self.healthy()));
        Ok(live)
    }

    /// Connects to the Redis Cluster when it is the one in use and there is no connection (at
    /// start-up it could not be reached, or a failed heartbeat dropped the connection).
    async fn connect_cluster_if_none(&self) {
        if self.single.is_none() && self.cluster.read().is_none() {
            self.connect_cluster().await;
        }
    }

    /// With Sentinel: asks `whom` which server is the primary, and moves the connections to it
    /// when it is not the one they go to.
    async fn follow_sentinels(&self, whom: Ask) {
        let (Some(sentinels), Some(conns)) = (&self.sentinels, &self.single) else {
            return;
        };
        let Some(client) = sentinels
            .primary(whom, sentinel_timeout(self.timeout))
            .await
        else {
            return;
        };
        let primary = client.get_connection_info().addr().clone();
        if conns.target().as_ref() != Some(&primary) {
            tracing::info!(%primary, "the Sentinels name a primary: connecting to it");
            conns.retarget(client);
        }
    }

    /// One heartbeat call: the live replicas, Redis's clock minus this replica's (ms), and this
    /// replica's clock against its elapsed time when it was read for the call.
    async fn beat(&self) -> Result<(usize, i64, i64), Down> {
        let sent = std::time::Instant::now();
        let clock_against_elapsed = self.clock_against_elapsed();
        let now_ms = self.clock.now_ms();
        let dead_after = 3 * self.settings.heartbeat_ms.max(1000);
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.key("replicas", ""))
            .arg(&self.replica)
            .arg(now_ms)
            .arg(dead_after);
        let (live, secs, micros): (usize, i64, i64) = self
            .send(Route::Shared, "heartbeat", Request::Script(inv))
            .await?;
        // Redis read its clock about half-way through the round trip.
        let midway = now_ms as i64 + (sent.elapsed().as_millis() / 2) as i64;
        Ok((
            live,
            secs * 1000 + micros / 1000 - midway,
            clock_against_elapsed,
        ))
    }

    /// Records Redis's clock minus this replica's, and stops (or resumes) sharing when it crosses
    /// the bound.
    pub(super) fn check_clock(&self, offset_ms: i64) {
        self.metrics
            .redis_clock_offset
            .set(offset_ms as f64 / 1000.0);
        let off = offset_ms.unsigned_abs() > self.settings.max_clock_offset_ms;
        if self.clock_off.swap(off, Ordering::SeqCst) != off {
            if off {
                tracing::warn!(
                    offset_ms,
                    bound_ms = self.settings.max_clock_offset_ms,
                    "this replica's clock is off Redis's by more than redis.max_clock_offset_ms: serving from the local pool and limits until it is back within the bound"
                );
            } else {
                tracing::info!(
                    offset_ms,
                    "this replica's clock agrees with Redis's again: rejoined the fleet"
                );
            }
        }
    }

    /// Heartbeats every `redis.heartbeat_ms` until `shutdown` resolves; with Sentinel, follows
    /// each new primary a Sentinel announces meanwhile.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let beat_every = Duration::from_millis(self.settings.heartbeat_ms);
        let mut tick = tokio::time::interval(beat_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let switched = tokio::sync::Notify::new();
        let watch = async {
            match &self.sentinels {
                Some(s) => {
                    let bound = sentinel_timeout(self.timeout);
                    s.watch(&switched, beat_every, bound).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(shutdown, watch);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = &mut watch => {}
                _ = switched.notified() => self.follow_sentinels(Ask::Announcer).await,
                _ = tick.tick() => { let _ = self.heartbeat().await; }
            }
        }
    }
}

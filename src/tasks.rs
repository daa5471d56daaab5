//! The gateway's long-running tasks (its listeners, the refiller, the fleet's heartbeat, the
//! throttled-request report), each named and watched. A task that ends before the gateway is
//! asked to stop, or panics, leaves the process without it: a gateway whose refiller has died
//! still answers every request, from upstream, with nothing prefetched, purged or planned, and
//! looks healthy while it does. So such an end is a failure of the whole process, said once at
//! `error` with the task's name and its panic message, shown by `/healthz` (503, so a liveness
//! probe restarts it), and ending the run (`Application::run_until` returns
//! it, and `embedgate serve` exits with status 1 after a graceful stop). Crash-only: a task is
//! never restarted in place, since whatever state its panic left half-changed would stay. The
//! refiller's prefetches, each a short task of its own, are watched for panics the same way
//! ([`Health::spawn_short`]).
//!
//! Not here: a panic in a request's handler, which actix-web meets by dropping that request's
//! connection (actix/actix-web#1501) while its worker goes on; no task of the gateway is lost.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether the process still runs every task it started. Shared with `/healthz`.
pub struct Health {
    stopping: AtomicBool,
    failed: watch::Sender<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            stopping: AtomicBool::new(false),
            failed: watch::channel(None).0,
        }
    }
}

impl Health {
    /// What stopped, if a task has: its name and how it ended.
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Resolves once a task has stopped unexpectedly, with [`Health::failure`]'s text.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        let failed = match rx.wait_for(Option::is_some).await {
            Ok(f) => f.clone(),
            // The sender lives as long as `self`.
            Err(_) => None,
        };
        match failed {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// From now on tasks end because they were asked to: no end is a failure.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn ended(&self, task: &'static str, how: String) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            task,
            how = how.as_str(),
            "a task of the gateway stopped: the process is no longer live and shuts down"
        );
        // The first failure is the one reported.
        self.failed.send_if_modified(|f| {
            f.is_none()
                .then(|| *f = Some(format!("{task} {how}")))
                .is_some()
        });
    }
}

impl Health {
    /// Runs a short-lived `task` (one prefetch) on the runtime; if it panics before
    /// [`Health::stopping`], the process has failed: a prefetch that died midway leaves its
    /// key counted in flight for good, never restocked, its requests waiting on it.
    pub fn spawn_short(
        self: &Arc<Self>,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.watch(name, task, false);
    }

    /// Runs `task`, and watches how it ends: a panic is a failure, and so is any end when
    /// `runs_until_stopped`.
    fn watch(
        self: &Arc<Self>,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
        runs_until_stopped: bool,
    ) -> JoinHandle<()> {
        let health = self.clone();
        let inner = tokio::spawn(task);
        tokio::spawn(async move {
            let how = match inner.await {
                Ok(()) if !runs_until_stopped => return,
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                Err(_) => "was cancelled".to_string(),
            };
            health.ended(name, how);
        })
    }
}

/// The long-running tasks a gateway started, and its [`Health`].
#[derive(Default)]
pub struct Tasks {
    health: Arc<Health>,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// No tasks yet; their ends are reported to `health`.
    pub fn new(health: Arc<Health>) -> Tasks {
        Tasks {
            health,
            handles: vec![],
        }
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs `task` on the runtime; if it ends or panics before [`Health::stopping`], the
    /// process has failed (see the module docs).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.health.watch(name, task, true);
        self.handles.push(handle);
    }

    /// Waits for every task to end (after [`Health::stopping`] and whatever makes them end).
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// A panic's message, as the default hook prints it.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast::<&'static str>()
            .map_or_else(|_| "(no message)".to_string(), |s| s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("in time")
    }

    #[tokio::test]
    async fn a_task_that_panics_fails_the_process_with_its_name_and_message() {
        let mut tasks = Tasks::default();
        let health = tasks.health();
        tasks.spawn("refiller", std::future::pending());
        tasks.spawn("fleet heartbeat", async {
            tokio::task::yield_now().await;
            panic!("index out of bounds: the len is 0 but the index is 3");
        });
        let failed = within(health.failed()).await;
        assert_eq!(
            failed,
            "fleet heartbeat panicked: index out of bounds: the len is 0 but the index is 3"
        );
        assert_eq!(health.failure().as_deref(), Some(failed.as_str()));
    }

    #[tokio::test]
    async fn a_task_that_returns_before_the_stop_fails_the_process_and_the_first_failure_is_kept() {
        let mut tasks = Tasks::default();
        let health = tasks.health();
        tasks.spawn("api listener", async {});
        assert_eq!(within(health.failed()).await, "api listener ended");
        tasks.spawn("refiller", async { panic!("later") });
        tokio::task::yield_now().await;
        within(async {
            while tasks.handles.iter().any(|h| !h.is_finished()) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(health.failure().as_deref(), Some("api listener ended"));
    }

    #[tokio::test]
    async fn tasks_that_end_once_asked_to_stop_are_no_failure() {
        let mut tasks = Tasks::default();
        let health = tasks.health();
        let (stop, stopped) = watch::channel(false);
        for name in ["refiller", "throttled report"] {
            let mut rx = stopped.clone();
            tasks.spawn(name, async move {
                let _ = rx.wait_for(|s| *s).await;
            });
        }
        let mut rx = stopped.clone();
        tasks.spawn("panics while stopping", async move {
            let _ = rx.wait_for(|s| *s).await;
            panic!("on the way out");
        });
        health.stopping();
        let _ = stop.send(true);
        within(tasks.join()).await;
        assert_eq!(health.failure(), None);
    }

    #[tokio::test]
    async fn a_short_task_fails_the_process_only_by_panicking() {
        let health = Arc::new(Health::default());
        // How `spawn_short` watches it, with the watcher's handle to wait on.
        within(health.watch("prefetch", async {}, false))
            .await
            .unwrap();
        assert_eq!(health.failure(), None, "a prefetch that ends is no failure");
        health.spawn_short("prefetch", async { panic!("a bug in a prefetch") });
        assert_eq!(
            within(health.failed()).await,
            "prefetch panicked: a bug in a prefetch"
        );
    }

    #[tokio::test]
    async fn a_healthy_process_has_no_failure_to_wait_for() {
        let mut tasks = Tasks::default();
        let health = tasks.health();
        tasks.spawn("refiller", std::future::pending());
        let waited = tokio::time::timeout(Duration::from_millis(100), health.failed()).await;
        assert!(waited.is_err());
        assert_eq!(health.failure(), None);
    }
}

//! The composition root: builds the shared state once (tenants, pool, limiters, upstream client,
//! metrics, refiller), binds the listeners (port 0 allowed; the real port is read back) and runs
//! until shut down. The only place that knows how the parts are wired.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Extensions;
use actix_web::{web, App, HttpServer};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::cluster::Fleet;
use crate::config::Settings;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::shared::Sharing;
use crate::tasks::{Health, Tasks};
use crate::tls::ListenerTls;
use crate::upstream::Upstreams;

/// A running gateway.
pub struct Application {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The QuickSight-compatible listener's address, when `compat_listen` is set.
    pub compat_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    /// The certificate the API and compatible listeners serve, when `[tls]` is set: what the
    /// reload watch reads again (`ListenerTls::reload`).
    pub tls: Option<Arc<ListenerTls>>,
    api: actix_web::dev::ServerHandle,
    admin: actix_web::dev::ServerHandle,
    compat: Option<actix_web::dev::ServerHandle>,
    tasks: Tasks,
    stop: watch::Sender<bool>,
}

impl Application {
    /// Validates settings, builds everything and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    /// Invalid settings (naming the key), a warm key outside its tenant's policy, or an address
    /// that cannot be bound.
    pub async fn start(settings: Settings, clock: Clock) -> anyhow::Result<Application> {
        settings
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let metrics = Arc::new(Metrics::new());
        let tls = ListenerTls::new(&settings.tls, metrics.clone())
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // The server configuration, and what keeps each connection's client certificate.
        let tls_config = match &tls {
            Some(t) => {
                let config = t.server_config()?;
                let t = t.clone();
                let on_connect =
                    move |conn: &dyn std::any::Any, ext: &mut Extensions| t.on_connect(conn, ext);
                Some((config, on_connect))
            }
            None => None,
        };
        let upstreams = Upstreams::new(&settings, metrics.clone()).await;
        upstreams.check_roles().await;
        let fleet = if settings.redis.enabled() {
            Some(
                Fleet::connect(
                    &settings.redis,
                    settings.tenants.len(),
                    clock.clone(),
                    metrics.clone(),
                )
                .await?,
            )
        } else {
            None
        };
        // The one place that knows whether state is local or shared through Redis.
        let sharing = match &fleet {
            Some(f) => Sharing::fleet(f.clone()),
            None => Sharing::local(),
        };
        let gateway = Arc::new(Gateway::new(
            settings.clone(),
            upstreams,
            clock,
            metrics,
            sharing,
        ));
        pin_warm_keys(&gateway)?;

        let listener = TcpListener::bind(settings.listen)
            .map_err(|e| anyhow::anyhow!("cannot bind listen address {}: {e}", settings.listen))?;
        let admin_listener = TcpListener::bind(settings.admin_listen).map_err(|e| {
            anyhow::anyhow!(
                "cannot bind admin_listen address {}: {e}",
                settings.admin_listen
            )
        })?;
        let compat_listener = match settings.compat_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .map_err(|e| anyhow::anyhow!("cannot bind compat_listen address {a}: {e}"))?,
            ),
            None => None,
        };
        let addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let compat_addr = match &compat_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let keep_alive = std::time::Duration::from_secs(settings.api.keep_alive_secs);
        let data = web::Data::from(gateway.clone());
        let api_data = data.clone();
        let mut tasks = Tasks::new(gateway.health().clone());
        let compat = match compat_listener {
            Some(l) => {
                let compat_data = data.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(compat_data.clone())
                        .wrap_fn(|req, srv| crate::api::in_request_context(req, srv, &[]))
                        .configure(crate::api::compat_routes)
                });
                let mut server = match &tls_config {
                    Some((c, on_connect)) => server
                        // Each connection's client certificate, if it presented one
                        // (`tls.client_ca_file`): what `client_certificate_names` are checked
                        // against, and what is verified again after a reload.
                        .on_connect(on_connect.clone())
                        .listen_rustls_0_23(l, c.clone())?,
                    None => server.listen(l)?,
                }
                .keep_alive(keep_alive)
                .h1_allow_half_closed(false)
                .disable_signals()
                .shutdown_timeout(10);
                if let Some(w) = settings.workers {
                    server = server.workers(w.max(1));
                }
                Some(server.run())
            }
            None => None,
        };
        let compat_handle = compat.as_ref().map(|s| s.handle());
        let canned = web::Data::new(crate::api::Canned::new(&gateway));
        let api = HttpServer::new(move || {
            App::new()
                .app_data(api_data.clone())
                .app_data(canned.clone())
                .wrap_fn(|req, srv| {
                    crate::api::in_request_context(req, srv, &crate::api::NATIVE_ROUTES)
                })
                .configure(crate::api::routes)
        });
        let mut api = match tls_config {
            Some((c, on_connect)) => api.on_connect(on_connect).listen_rustls_0_23(listener, c)?,
            None => api.listen(listener)?,
        }
        .keep_alive(keep_alive)
        // A client that closes its connection while its request waits (a portal's timeout:
        // most HTTP clients close normally, not with a reset) is gone: its handler is dropped,
        // and a miss's QuickSight call lands its URL for the key (`gateway::call`). Allowed to
        // half-close, it was kept waiting, and the URL was written to a closed socket and lost,
        // counted as served. No HTTP client we know of half-closes and then waits for a reply.
        .h1_allow_half_closed(false)
        // Signals stop the gateway through `run_until` alone: a listener that stopped on its
        // own would read as a failed task.
        .disable_signals()
        .shutdown_timeout(10);
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(crate::api::admin_routes)
        })
        .listen(admin_listener)?
        .keep_alive(keep_alive)
        .disable_signals()
        .workers(1)
        .shutdown_timeout(2);
        if let Some(w) = settings.workers {
            api = api.workers(w.max(1));
        }
        let api = api.run();
        let admin = admin.run();
        let (api_handle, admin_handle) = (api.handle(), admin.handle());

        let (stop, stopped) = watch::channel(false);
        let until_stopped = || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tasks.spawn("api listener", async move {
            let _ = api.await;
        });
        tasks.spawn("admin listener", async move {
            let _ = admin.await;
        });
        if let Some(compat) = compat {
            tasks.spawn("compat listener", async move {
                let _ = compat.await;
            });
        }
        tasks.spawn("refiller", gateway.clone().run_refiller(until_stopped()));
        tasks.spawn(
            "throttled-request report",
            crate::api::report_throttled(gateway.clone(), until_stopped()),
        );
        if let Some(fleet) = fleet {
            let shutdown = until_stopped();
            tasks.spawn("fleet heartbeat", async move {
                fleet.run(shutdown).await;
            });
        }
        Ok(Application {
            addr,
            admin_addr,
            compat_addr,
            gateway,
            tls,
            api: api_handle,
            admin: admin_handle,
            compat: compat_handle,
            tasks,
            stop,
        })
    }

    /// Stops gracefully: no new connections, in-flight requests finish (bounded), background
    /// tasks end.
    pub async fn stop(self) {
        self.tasks.health().stopping();
        self.api.stop(true).await;
        if let Some(c) = &self.compat {
            c.stop(true).await;
        }
        self.admin.stop(true).await;
        let _ = self.stop.send(true);
        self.tasks.join().await;
    }

    /// Whether every task still runs (what `/healthz` answers from).
    pub fn health(&self) -> Arc<Health> {
        self.tasks.health()
    }

    /// Runs until `shutdown` resolves or one of the gateway's tasks stops unexpectedly, then
    /// stops gracefully.
    ///
    /// # Errors
    /// A task stopped (its name and how; see [`crate::tasks`]): the process should exit with
    /// an error, so that whatever supervises it starts a new one.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let health = self.health();
        let failed = tokio::select! {
            _ = shutdown => None,
            f = health.failed() => Some(f),
        };
        self.stop().await;
        match failed {
            None => Ok(()),
            Some(f) => Err(anyhow::anyhow!("stopped because a task failed: {f}")),
        }
    }
}

/// Checks `settings` as [`Application::start`] does before it binds anything: valid, the
/// listeners' certificate and key loadable (`[tls]`), and every
/// tenant's warm keys admitted like requests, by a gateway of their own that calls nothing (an
/// upstream's client makes no call until asked, and its credentials are resolved then). What
/// `embedgate check-config` runs.
///
/// # Errors
/// Invalid settings (naming the key) or a warm key its tenant's policy refuses.
pub async fn check(settings: &Settings) -> anyhow::Result<()> {
    settings
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    crate::tls::load(&settings.tls).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    let upstreams = Upstreams::new(settings, metrics.clone()).await;
    let gateway = Gateway::new(
        settings.clone(),
        upstreams,
        Clock::System,
        metrics,
        Sharing::local(),
    );
    gateway
        .warm_keys(&settings.tenants, &gateway.rules_in_force())
        .map(drop)
        .map_err(|e| anyhow::anyhow!(e))
}

/// Pins every tenant's configured warm keys.
fn pin_warm_keys(gw: &Gateway) -> anyhow::Result<()> {
    let warm = gw.warm_keys(&gw.settings().tenants, &gw.rules_in_force());
    gw.set_warm_keys(&warm.map_err(|e| anyhow::anyhow!(e))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// GET `url` from a blocking thread: its status and body.
    async fn get(url: String) -> (u16, String) {
        tokio::task::spawn_blocking(move || crate::http1::get(&url, Duration::from_secs(10)))
            .await
            .expect("the request's thread")
            .expect("an answer")
    }

    /// The failure path end to end, on a real gateway (its simulator, listeners on port 0): a
    /// task that panics turns both listeners' `/healthz` to 503 naming it, and ends the run
    /// with an error after a graceful stop. (The gateway's own tasks have no way to be made to
    /// panic from outside; the test adds one beside them.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_task_makes_the_gateway_unhealthy_and_ends_its_run_with_the_failure() {
        let any = "127.0.0.1:0".parse().unwrap();
        let sim = crate::sim::SimServer::start(crate::dev::sim_settings(any, None)).unwrap();
        let settings = crate::dev::settings(any, any, &sim.endpoint, "eg_test_key");
        let mut app = Application::start(settings, Clock::System).await.unwrap();
        let (api, admin) = (app.addr, app.admin_addr);
        for at in [api, admin] {
            assert_eq!(
                get(format!("http://{at}/healthz")).await,
                (200, "ok".into())
            );
        }
        app.tasks.spawn("test task", async {
            tokio::task::yield_now().await;
            panic!("a bug in the planner");
        });
        let failed = tokio::time::timeout(Duration::from_secs(10), app.health().failed())
            .await
            .unwrap();
        assert_eq!(failed, "test task panicked: a bug in the planner");
        for at in [api, admin] {
            let (status, body) = get(format!("http://{at}/healthz")).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body, "failed: test task panicked: a bug in the planner");
        }
        // A run started (or going on) when a task fails ends with it: no signal is waited for.
        let ran = tokio::time::timeout(
            Duration::from_secs(30),
            app.run_until(std::future::pending()),
        )
        .await
        .expect("the run ends");
        let err = ran.expect_err("the run ends with the failure").to_string();
        assert!(
            err.contains("test task panicked: a bug in the planner"),
            "{err}"
        );
        assert!(
            std::net::TcpStream::connect(api).is_err(),
            "the gateway stopped listening"
        );
        sim.stop().await;
    }

    /// A gateway asked to stop is no failure, though every task ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gateway_asked_to_stop_ends_its_run_without_error() {
        let any = "127.0.0.1:0".parse().unwrap();
        let sim = crate::sim::SimServer::start(crate::dev::sim_settings(any, None)).unwrap();
        let settings = crate::dev::settings(any, any, &sim.endpoint, "eg_test_key");
        let app = Application::start(settings, Clock::System).await.unwrap();
        let health = app.health();
        let ran = app.run_until(tokio::time::sleep(Duration::from_millis(200)));
        tokio::time::timeout(Duration::from_secs(30), ran)
            .await
            .expect("the run ends")
            .unwrap();
        assert_eq!(health.failure(), None);
        sim.stop().await;
    }
}

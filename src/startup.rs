//! The composition root: builds the shared state once (tenants, pool, limiters, upstream client,
//! metrics, refiller), binds the listeners (port 0 allowed; the real port is read back) and runs
//! until shut down. The only place that knows how the parts are wired.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::cluster::Fleet;
use crate::config::Settings;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::model::parse_tagged;
use crate::shared::Sharing;
use crate::upstream::Upstreams;

/// A running gateway.
pub struct Application {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The QuickSight-compatible listener's address, when `compat_listen` is set.
    pub compat_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    api: actix_web::dev::ServerHandle,
    admin: actix_web::dev::ServerHandle,
    compat: Option<actix_web::dev::ServerHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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

        let data = web::Data::from(gateway.clone());
        let api_data = data.clone();
        let compat = match compat_listener {
            Some(l) => {
                let compat_data = data.clone();
                let mut server = HttpServer::new(move || {
                    App::new()
                        .app_data(compat_data.clone())
                        .wrap_fn(|req, srv| crate::api::in_request_context(req, srv, &[]))
                        .configure(crate::api::compat_routes)
                })
                .listen(l)?
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
        let mut api = HttpServer::new(move || {
            App::new()
                .app_data(api_data.clone())
                .app_data(canned.clone())
                .wrap_fn(|req, srv| {
                    crate::api::in_request_context(req, srv, &crate::api::NATIVE_ROUTES)
                })
                .configure(crate::api::routes)
        })
        .listen(listener)?
        .shutdown_timeout(10);
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(crate::api::admin_routes)
        })
        .listen(admin_listener)?
        .workers(1)
        .shutdown_timeout(2);
        if let Some(w) = settings.workers {
            api = api.workers(w.max(1));
        }
        let api = api.run();
        let admin = admin.run();
        let (api_handle, admin_handle) = (api.handle(), admin.handle());

        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(async move {
                let _ = api.await;
            }),
            tokio::spawn(async move {
                let _ = admin.await;
            }),
        ];
        if let Some(compat) = compat {
            tasks.push(tokio::spawn(async move {
                let _ = compat.await;
            }));
        }
        let mut rx = stopped.clone();
        let refiller = gateway.clone();
        tasks.push(tokio::spawn(async move {
            refiller
                .run_refiller(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
        let mut rx = stopped.clone();
        tasks.push(tokio::spawn(crate::api::report_throttled(
            gateway.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
        if let Some(fleet) = fleet {
            let mut rx = stopped.clone();
            tasks.push(tokio::spawn(async move {
                fleet
                    .run(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        Ok(Application {
            addr,
            admin_addr,
            compat_addr,
            gateway,
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
        self.api.stop(true).await;
        if let Some(c) = &self.compat {
            c.stop(true).await;
        }
        self.admin.stop(true).await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Runs until `shutdown` resolves, then stops gracefully.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}

/// Pins every tenant's configured warm keys, checking each like a request.
fn pin_warm_keys(gw: &Gateway) -> anyhow::Result<()> {
    for (i, t) in gw.settings().tenants.iter().enumerate() {
        let tenant = gw.tenants().get(i);
        for (j, entry) in t.warm.iter().enumerate() {
            let at = format!("tenants[{i}].warm[{j}]");
            let mut obj = entry
                .as_object()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{at}: must be a table"))?;
            let depth = match obj.remove("Depth") {
                None => 1,
                Some(d) => d
                    .as_u64()
                    .filter(|d| (1..=1000).contains(d))
                    .ok_or_else(|| {
                        anyhow::anyhow!("{at}.Depth: must be an integer from 1 to 1000")
                    })? as usize,
            };
            let req = parse_tagged(obj).map_err(|b| {
                anyhow::anyhow!("{at}.{}: {}", b.field.unwrap_or_default(), b.detail)
            })?;
            let req = gw
                .admit(tenant, req)
                .map_err(|r| anyhow::anyhow!("{at}: {r:?}"))?;
            gw.pin_warm(tenant, &req, depth);
        }
    }
    Ok(())
}

//! Redis Sentinel: which server is the primary now.
//!
//! A Sentinel set-up moves the primary to another server on a failover, and a client learns of
//! it only by asking the Sentinels. The replica asks at start-up and whenever a heartbeat on the
//! primary it has fails (the primary crashed, went silent, or answers as a replica), every
//! Sentinel at once, each bounded: a Sentinel on the failed primary's host is often gone with it,
//! and the first Sentinel to name a server that answers as a primary is followed.
//!
//! Between failures nothing is asked (a lookup opens a connection to the server a Sentinel names
//! to check its role, too much for every heartbeat of every replica); instead the replica listens
//! to every Sentinel's `+switch-master` announcements ([`Sentinels::watch`]) and asks the one that
//! announced a new primary for this name. An operator's failover leaves the old primary up and
//! taking writes until the Sentinels make it a replica, seconds later (or never, while it is cut
//! off from them but not from the replicas): without the announcement the fleet would go on
//! writing to it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsMode};

use crate::config::RedisSettings;

/// Which Sentinels [`Sentinels::primary`] asks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ask {
    /// Every one (a heartbeat on the primary failed, or there is none yet).
    All,
    /// The one that last announced a new primary.
    Announcer,
}

/// The Sentinels of `redis.sentinel_urls`, each with its own client (its login, its cached
/// connection).
pub(super) struct Sentinels {
    clients: Vec<tokio::sync::Mutex<SentinelClient>>,
    /// The same Sentinels, for their announcements.
    announcers: Vec<redis::Client>,
    /// The Sentinel that last announced a new primary for this name (`usize::MAX`: none since
    /// it was asked).
    announced: AtomicUsize,
    /// The primary's name.
    name: String,
    /// The last lookup found no primary (logged once per streak).
    failing: AtomicBool,
}

impl Sentinels {
    /// # Errors
    /// A URL or the primary's name that cannot be used (`check-config` refuses them first).
    pub(super) fn new(
        settings: &RedisSettings,
        certificates: Option<&redis::TlsCertificates>,
        tcp: &redis::io::tcp::TcpSettings,
    ) -> Result<Option<Sentinels>, String> {
        let Some(primary) = settings.sentinel_primary()? else {
            return Ok(None);
        };
        let (clients, announcers) = settings
            .sentinel_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let at = |e: &dyn std::fmt::Display| format!("redis.sentinel_urls[{i}]: {e}");
                let info = url.as_str().into_connection_info().map_err(|e| at(&e))?;
                let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
                let announcer = info.clone().set_tcp_settings(tcp.clone());
                let announcer = match (tls, certificates) {
                    (true, Some(certs)) => redis::Client::build_with_tls(announcer, certs.clone()),
                    _ => redis::Client::open(announcer),
                }
                .map_err(|e| at(&e))?;
                let mut b = SentinelClientBuilder::new(
                    [info.addr().clone()],
                    &primary.name,
                    SentinelServerType::Master,
                )
                .map_err(|e| at(&e))?
                .set_client_to_sentinel_tcp_settings(tcp.clone())
                .set_client_to_redis_tcp_settings(tcp.clone())
                .set_client_to_redis_db(primary.login.db())
                .set_client_to_redis_protocol(primary.login.protocol());
                if let Some(user) = info.redis_settings().username() {
                    b = b.set_client_to_sentinel_username(user);
                }
                if let Some(password) = info.redis_settings().password() {
                    b = b.set_client_to_sentinel_password(password);
                }
                if let Some(user) = primary.login.username() {
                    b = b.set_client_to_redis_username(user);
                }
                if let Some(password) = primary.login.password() {
                    b = b.set_client_to_redis_password(password);
                }
                if let (true, Some(certs)) = (tls, certificates) {
                    b = b.set_client_to_sentinel_certificates(certs.clone());
                }
                if primary.tls {
                    b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certificates {
                        b = b.set_client_to_redis_certificates(certs.clone());
                    }
                }
                let client = b.build().map_err(|e| at(&e))?;
                Ok((tokio::sync::Mutex::new(client), announcer))
            })
            .collect::<Result<Vec<_>, String>>()?
            .into_iter()
            .unzip();
        Ok(Some(Sentinels {
            clients,
            announcers,
            announced: AtomicUsize::new(usize::MAX),
            name: primary.name,
            failing: AtomicBool::new(false),
        }))
    }

    /// Listens to every Sentinel's `+switch-master` announcements for as long as it is polled,
    /// and wakes `switched` when one announces a new primary for this name. A Sentinel that
    /// cannot be reached, or drops the subscription, is subscribed to again `retry` later.
    pub(super) async fn watch(&self, switched: &Notify, retry: Duration, bound: Duration) {
        let each = (0..self.announcers.len()).map(|i| self.listen(i, switched, retry, bound));
        futures::future::join_all(each).await;
        // Each listens for ever; with none, neither does this end.
        std::future::pending::<()>().await;
    }

    async fn listen(&self, i: usize, switched: &Notify, retry: Duration, bound: Duration) {
        let mut refusal_told = false;
        loop {
            let subscribed = async {
                let mut pubsub = self.announcers[i].get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(bound, subscribed).await {
                Ok(Ok(mut pubsub)) => {
                    let mut messages = pubsub.on_message();
                    // "<name> <old ip> <old port> <new ip> <new port>"
                    while let Some(m) = messages.next().await {
                        let said: String = m.get_payload().unwrap_or_default();
                        if said.split(' ').next() == Some(self.name.as_str()) {
                            tracing::info!(primary = %self.name, announced = %said, "a Sentinel announces a new primary");
                            self.announced.store(i, Ordering::Relaxed);
                            switched.notify_one();
                        }
                    }
                }
                // Told once: an ACL that denies it does not change by itself.
                Ok(Err(e)) if e.code().is_some() && !refusal_told => {
                    refusal_told = true;
                    let sentinel = self.announcers[i].get_connection_info().addr();
                    tracing::warn!(error = %e, %sentinel, "a Sentinel refuses to send its announcements (SUBSCRIBE to +switch-master): this replica follows a failover it announces only when a heartbeat on the old primary fails");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot subscribe to a Sentinel's announcements")
                }
                Err(_) => tracing::debug!("subscribing to a Sentinel's announcements timed out"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Asks `whom` which server is the primary, every one at once; the first to name one that
    /// answers as a primary (a Sentinel checks its `ROLE`) wins. `None`: none did within `bound`
    /// (the Sentinels are unreachable, or mid-failover with no primary yet), or no Sentinel
    /// announced one since the last [`Ask::Announcer`].
    pub(super) async fn primary(&self, whom: Ask, bound: Duration) -> Option<redis::Client> {
        let clients = match whom {
            Ask::All => &self.clients[..],
            Ask::Announcer => {
                let i = self.announced.swap(usize::MAX, Ordering::Relaxed);
                self.clients.get(i..=i)?
            }
        };
        if clients.is_empty() {
            return None;
        }
        let asks = clients.iter().map(|c| {
            Box::pin(async move {
                let mut c = c.lock().await;
                c.async_get_client().await
            })
        });
        let why = match tokio::time::timeout(bound, futures::future::select_ok(asks)).await {
            Ok(Ok((client, _))) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(primary = %self.name, "a Sentinel names a primary again");
                }
                return Some(client);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", bound.as_millis()),
        };
        // Once per streak: the heartbeat asks again every `redis.heartbeat_ms` meanwhile.
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(primary = %self.name, error = %why, "no Sentinel names a primary that answers as one (unreachable Sentinels, a name they do not monitor, a failover under way, or a primary this replica cannot log in to or whose certificate it refuses: see error): this replica stays with the server it has (none before the first: its local pool and limits) and asks again at its next failed heartbeat");
        } else {
            tracing::debug!(primary = %self.name, error = %why, "no Sentinel names a primary yet");
        }
        None
    }
}

//! Redis Sentinel: which server is the primary now.
//!
//! A Sentinel set-up moves the primary to another server on a failover, and a client learns of
//! it only by asking the Sentinels. The replica asks at start-up and whenever a heartbeat on the
//! primary it has fails (the primary crashed, went silent, or answers as a replica), every
//! Sentinel at once, each bounded: a Sentinel on the failed primary's host is often gone with it,
//! and the first Sentinel to name a server that answers as a primary is followed.
//!
//! Between failures nothing is asked: a lookup opens a connection to the server a Sentinel names
//! to check its role, too much for every heartbeat of every replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsMode};

use crate::config::RedisSettings;

/// The Sentinels of `redis.sentinel_urls`, each with its own client (its login, its cached
/// connection).
pub(super) struct Sentinels {
    clients: Vec<tokio::sync::Mutex<SentinelClient>>,
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
        let clients = settings
            .sentinel_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let at = |e: &dyn std::fmt::Display| format!("redis.sentinel_urls[{i}]: {e}");
                let info = url.as_str().into_connection_info().map_err(|e| at(&e))?;
                let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
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
                b.build().map(tokio::sync::Mutex::new).map_err(|e| at(&e))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Sentinels {
            clients,
            name: primary.name,
            failing: AtomicBool::new(false),
        }))
    }

    /// Asks every Sentinel at once which server is the primary; the first to name one that
    /// answers as a primary (a Sentinel checks its `ROLE`) wins. `None`: none did within `bound`
    /// (the Sentinels are unreachable, or mid-failover with no primary yet).
    pub(super) async fn primary(&self, bound: Duration) -> Option<redis::Client> {
        if self.clients.is_empty() {
            return None;
        }
        let asks = self.clients.iter().map(|c| {
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
            tracing::warn!(primary = %self.name, error = %why, "no Sentinel names a primary that answers as one (unreachable Sentinels, a name they do not monitor, or a failover under way): serving from the local pool and limits until one does");
        } else {
            tracing::debug!(primary = %self.name, error = %why, "no Sentinel names a primary yet");
        }
        None
    }
}

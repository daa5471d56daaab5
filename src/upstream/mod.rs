//! QuickSight, reached with `aws-sdk-quicksight` (credentials from the standard AWS chain, or static
//! test keys), with an endpoint override so the same code talks to the simulator.
//!
//! Every SDK error is classified once ([`error`]): throttled, retryable (5xx, 408, connection),
//! timed out, or rejected (a permanent 4xx whose meaning goes back to the caller). The SDK's own
//! retries are off: the upstream budget decides when to call again, so every attempt is counted
//! against it. The one resend is a call the server answered with 408 without reading it.
//! [`mapping`] puts every member of our request model onto the SDK's builders.

mod error;
mod mapping;

use std::time::{Duration, Instant};

use aws_config::sts::AssumeRoleProvider;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_quicksight::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_quicksight::types as qs;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamSettings;
use crate::metrics::{Fetch, Metrics};
use crate::model::{self, EmbedRequest};
use error::classify;
pub use error::{Fault, UpstreamError};
use mapping::{anonymous_experience, registered_experience};

/// A fetched URL and when its request was sent (the conservative start of its validity).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url: String,
    pub sent_at_ms: u64,
    /// GenerateEmbedUrlForAnonymousUser's `AnonymousUserArn`.
    pub anonymous_user_arn: Option<String>,
    /// Why it was fetched: [`Fetch::Miss`] unless the refiller fetched it ahead of demand.
    pub fetched_for: Fetch,
}

/// One QuickSight upstream: an account (or every account) in one region, its SDK client with its
/// own credentials, and its bound on calls in flight.
pub struct Upstream {
    client: aws_sdk_quicksight::Client,
    settings: UpstreamSettings,
    /// Calls in flight to this upstream (misses and prefetches): one slow upstream cannot take
    /// the others' slots.
    slots: Arc<Semaphore>,
    /// Prefetches in flight for this upstream (`refill.concurrency` each): one hanging upstream
    /// holds only its own.
    prefetches: Arc<Semaphore>,
    /// The assumed-role provider, to check at start-up that the role can be assumed.
    role: Option<SharedCredentialsProvider>,
    /// Why the role could not be assumed at the last check (`/state`).
    role_error: parking_lot::Mutex<Option<String>>,
    metrics: std::sync::Arc<Metrics>,
}

impl Upstream {
    /// Builds the SDK client from `aws-config`'s standard chain, overridden by settings; with
    /// `role_arn`, credentials come from STS AssumeRole with those as the source identity.
    pub async fn new(
        settings: &UpstreamSettings,
        prefetch_concurrency: usize,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .region(aws_config::Region::new(settings.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_millis(settings.timeout_ms))
                    .connect_timeout(Duration::from_millis(settings.timeout_ms.min(2_000)))
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_quicksight::config::Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "embedgate-config",
            ));
        }
        let mut config = loader.load().await;
        let mut role = None;
        if let Some(arn) = &settings.role_arn {
            let mut builder = AssumeRoleProvider::builder(arn)
                .session_name(settings.session_name.as_deref().unwrap_or("embedgate"))
                .region(aws_config::Region::new(settings.region.clone()))
                .configure(&config);
            if let Some(id) = &settings.external_id {
                builder = builder.external_id(id);
            }
            if let Some(secs) = settings.duration_secs {
                builder = builder.session_length(Duration::from_secs(secs));
            }
            let provider = SharedCredentialsProvider::new(builder.build().await);
            config = config
                .into_builder()
                .credentials_provider(provider.clone())
                .build();
            role = Some(provider);
        }
        Upstream {
            client: aws_sdk_quicksight::Client::new(&config),
            slots: Arc::new(Semaphore::new(settings.max_concurrency)),
            prefetches: Arc::new(Semaphore::new(prefetch_concurrency)),
            settings: settings.clone(),
            role,
            role_error: parking_lot::Mutex::new(None),
            metrics,
        }
    }

    pub fn id(&self) -> &str {
        &self.settings.id
    }

    pub fn region(&self) -> &str {
        &self.settings.region
    }

    /// The account it serves (`None`: every account, the single `[upstream]` table).
    pub fn account(&self) -> Option<&str> {
        self.settings.account.as_deref()
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// A slot for one call, waited for until `deadline`; it can move into the task that makes
    /// the call.
    pub async fn slot(&self, deadline: tokio::time::Instant) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Prefetch slots free now.
    pub fn free_prefetch_slots(&self) -> usize {
        self.prefetches.available_permits()
    }

    /// A prefetch slot, if one is free now.
    pub fn prefetch_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.prefetches.clone().try_acquire_owned().ok()
    }

    /// Assumes the role once (start-up check). `Ok` for upstreams without a role.
    ///
    /// # Errors
    /// Why STS refused, or that it did not answer in time.
    pub async fn check_role(&self) -> Result<(), String> {
        let Some(provider) = &self.role else {
            return Ok(());
        };
        let bound = Duration::from_millis(self.settings.timeout_ms.max(1_000));
        let result = match tokio::time::timeout(bound, provider.provide_credentials()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "cannot assume {}: {}",
                self.settings.role_arn.as_deref().unwrap_or_default(),
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )),
            Err(_) => Err("STS did not answer in time".into()),
        };
        *self.role_error.lock() = result.as_ref().err().cloned();
        result
    }

    /// Why the role could not be assumed at the start-up check, if it could not.
    pub fn role_error(&self) -> Option<String> {
        self.role_error.lock().clone()
    }

    /// Asks QuickSight for one embed URL.
    ///
    /// # Errors
    /// The classified failure; see [`UpstreamError`].
    pub async fn fetch(
        &self,
        req: &EmbedRequest,
        clock: &crate::clock::Clock,
    ) -> Result<Fetched, UpstreamError> {
        let sent_at_ms = clock.now_ms();
        let mut calling = Calling::start(&self.metrics, req.operation().as_str(), self.id());
        let result = self.call(req).await.and_then(|(url, anonymous_user_arn)| {
            // The SDK fills a missing required EmbedUrl with "" rather than failing; an ARN with
            // a space could not be pooled (nor is it an ARN).
            let anonymous_user_arn =
                anonymous_user_arn.filter(|a| !a.is_empty() && !a.contains(' '));
            if (url.starts_with("https://") || url.starts_with("http://")) && !url.contains(' ') {
                Ok(Fetched {
                    url,
                    sent_at_ms,
                    anonymous_user_arn,
                    fetched_for: Fetch::Miss,
                })
            } else {
                Err(UpstreamError::Unavailable(
                    "QuickSight returned no usable EmbedUrl".into(),
                ))
            }
        });
        calling.result = Some(match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        });
        result
    }

    /// Every member of the request onto the SDK's builder. Each struct is destructured
    /// without `..`, so a member added to the model does not compile until it is forwarded.
    async fn call(&self, req: &EmbedRequest) -> Result<(String, Option<String>), UpstreamError> {
        match req {
            EmbedRequest::Dashboard(r) => {
                let model::DashboardEmbedRequest {
                    aws_account_id,
                    dashboard_id,
                    identity_type,
                    session_lifetime_in_minutes,
                    undo_redo_disabled,
                    reset_disabled,
                    state_persistence_enabled,
                    user_arn,
                    namespace,
                    additional_dashboard_ids,
                    // Our routing member: it chose this client, QuickSight has no such member.
                    region: _,
                } = r;
                let call = self
                    .client
                    .get_dashboard_embed_url()
                    .aws_account_id(aws_account_id)
                    .dashboard_id(dashboard_id)
                    .identity_type(qs::EmbeddingIdentityType::from(identity_type.as_str()))
                    .set_session_lifetime_in_minutes(*session_lifetime_in_minutes)
                    .set_undo_redo_disabled(*undo_redo_disabled)
                    .set_reset_disabled(*reset_disabled)
                    .set_state_persistence_enabled(*state_persistence_enabled)
                    .set_user_arn(user_arn.clone())
                    .set_namespace(namespace.clone())
                    .set_additional_dashboard_ids(additional_dashboard_ids.clone());
                send_resending_unread(call, |c| c.send())
                    .await
                    .map(|o| (o.embed_url.unwrap_or_default(), None))
            }
            EmbedRequest::Anonymous(r) => {
                let model::AnonymousEmbedRequest {
                    aws_account_id,
                    session_lifetime_in_minutes,
                    namespace,
                    session_tags,
                    authorized_resource_arns,
                    experience_configuration,
                    allowed_domains,
                    region: _,
                } = r;
                let call = self
                    .client
                    .generate_embed_url_for_anonymous_user()
                    .aws_account_id(aws_account_id)
                    .set_session_lifetime_in_minutes(*session_lifetime_in_minutes)
                    .namespace(namespace)
                    .set_session_tags(session_tags.as_ref().map(|tags| {
                        tags.iter()
                            .filter_map(|model::SessionTag { key, value }| {
                                qs::SessionTag::builder().key(key).value(value).build().ok()
                            })
                            .collect()
                    }))
                    .set_authorized_resource_arns(Some(authorized_resource_arns.clone()))
                    .experience_configuration(anonymous_experience(experience_configuration)?)
                    .set_allowed_domains(allowed_domains.clone());
                send_resending_unread(call, |c| c.send())
                    .await
                    .map(|o| (o.embed_url, Some(o.anonymous_user_arn)))
            }
            EmbedRequest::Registered(r) => {
                let model::RegisteredEmbedRequest {
                    aws_account_id,
                    session_lifetime_in_minutes,
                    user_arn,
                    experience_configuration,
                    allowed_domains,
                    region: _,
                } = r;
                let call = self
                    .client
                    .generate_embed_url_for_registered_user()
                    .aws_account_id(aws_account_id)
                    .set_session_lifetime_in_minutes(*session_lifetime_in_minutes)
                    .user_arn(user_arn)
                    .experience_configuration(registered_experience(experience_configuration)?)
                    .set_allowed_domains(allowed_domains.clone());
                send_resending_unread(call, |c| c.send())
                    .await
                    .map(|o| (o.embed_url, None))
            }
        }
    }
}

/// How long an idle connection to QuickSight is kept for reuse: below the shortest keep-alive a
/// front end commonly has (5 s: actix-web, Node.js), so this side always closes an idle
/// connection first. A connection the server closes just as a call is written on it fails that
/// call; connections that went idle together expire together, so even the one resend below can
/// meet a second one closing (seen once in CI as a 503 `upstream_unavailable`). Busy connections
/// never idle this long; a quiet upstream pays one new handshake.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(4);

/// The SDK's default HTTPS client (hyper 1, rustls with aws-lc, proxy from the environment),
/// with [`IDLE_CONNECTION_TIMEOUT`].
fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::{proxy::ProxyConfig, tls, Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn = ConnectorBuilder::default()
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}

/// Sending a call, and sending it once more when the first attempt died with its connection.
///
/// An HTTP front end that times out a keep-alive connection before a request arrives answers
/// `408 Request Timeout` on it, or closes it; a client that picks that connection from its pool at
/// that moment reads the 408 (or the close) as the answer to its request. The server never read
/// the request, so sending it again on a fresh connection is safe and costs QuickSight nothing,
/// as browsers do (the SDK's own retries, off here, would do the same). A connection that broke
/// after the request was read could have minted a URL nobody receives: one wasted call, never a
/// URL handed out twice. A second failure is classified like any other.
async fn send_resending_unread<B, T, E, F, Fut>(builder: B, send: F) -> Result<T, UpstreamError>
where
    B: Clone,
    F: Fn(B) -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::fmt::Debug,
{
    match send(builder.clone()).await {
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 408 => {
            tracing::debug!("QuickSight answered 408 without reading the call; sending it again");
            send(builder).await.map_err(classify)
        }
        Err(SdkError::DispatchFailure(e)) if e.is_io() => {
            tracing::debug!(error = ?e, "the connection broke under the call; sending it again");
            send(builder).await.map_err(classify)
        }
        other => other.map_err(classify),
    }
}

/// Why a request cannot be routed to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrouted {
    /// The member to name: `Region` when one was asked for, else `AwsAccountId`.
    pub field: &'static str,
    pub detail: String,
}

/// Every configured upstream, and the routing of a request to one of them.
pub struct Upstreams {
    list: Vec<Upstream>,
    /// Every region served, once each.
    regions: Vec<String>,
}

impl Upstreams {
    /// Builds every upstream's client (nothing is called yet; see [`Upstreams::check_roles`]).
    pub async fn new(settings: &crate::config::Settings, metrics: std::sync::Arc<Metrics>) -> Self {
        let mut list = vec![];
        for u in settings.upstreams() {
            list.push(Upstream::new(u, settings.refill.concurrency, metrics.clone()).await);
        }
        let mut regions: Vec<String> = list.iter().map(|u| u.region().to_string()).collect();
        regions.sort();
        regions.dedup();
        Upstreams { list, regions }
    }

    pub fn all(&self) -> &[Upstream] {
        &self.list
    }

    /// Every region an upstream serves (the regions a compatible-listener signature may name).
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The upstream for `account` in `region`; without a region, the first configured for the
    /// account.
    ///
    /// # Errors
    /// No upstream serves that account (in that region).
    pub fn route(&self, account: &str, region: Option<&str>) -> Result<&Upstream, Unrouted> {
        let serves = |u: &&Upstream| u.account().is_none_or(|a| a == account);
        let found = match region {
            None => self.list.iter().find(serves),
            Some(r) => self.list.iter().filter(serves).find(|u| u.region() == r),
        };
        found.ok_or_else(|| match region {
            Some(r) if self.list.iter().any(|u| serves(&u)) => Unrouted {
                field: "Region",
                detail: format!("Region: no upstream serves account {account} in {r}"),
            },
            _ => Unrouted {
                field: "AwsAccountId",
                detail: format!("AwsAccountId: no upstream serves account {account}"),
            },
        })
    }

    /// The upstream of an admitted request (its account and region are set by then).
    pub fn of(&self, req: &EmbedRequest) -> &Upstream {
        self.route(req.aws_account_id(), req.region())
            .unwrap_or(&self.list[0])
    }

    /// Assumes every role once, concurrently: a role that cannot be assumed is logged as an
    /// error naming its upstream, and the others go on serving (its misses fail until it can).
    pub async fn check_roles(&self) {
        let checks = self
            .list
            .iter()
            .map(|u| async move { (u, u.check_role().await) });
        for (u, result) in futures::future::join_all(checks).await {
            match result {
                Ok(()) if u.role.is_some() => {
                    tracing::info!(upstream = u.id(), "assumed the upstream's role")
                }
                Ok(()) => {}
                Err(e) => tracing::error!(
                    upstream = u.id(),
                    error = %e,
                    "upstream {}: its role cannot be assumed; the other upstreams keep serving",
                    u.id()
                ),
            }
        }
    }
}

/// One QuickSight call, in `embedgate_upstream_in_flight` until it ends and then counted in
/// `embedgate_upstream_calls_total` and the duration histogram. A call dropped before it ends
/// (the gateway stopping; a miss whose caller stops waiting is not dropped, see `gateway::call`)
/// is counted as `cancelled`: it was sent, may have cost a call of the account's quota and
/// minted a URL nobody received, and it leaves the gauge as an ended call does. (The gauge used
/// to keep every such call in flight for good.)
struct Calling<'a> {
    metrics: &'a Metrics,
    op: &'static str,
    upstream: &'a str,
    started: Instant,
    /// The call's result label, once it has one.
    result: Option<&'static str>,
}

impl<'a> Calling<'a> {
    fn start(metrics: &'a Metrics, op: &'static str, upstream: &'a str) -> Self {
        metrics.upstream_in_flight.inc();
        Calling {
            metrics,
            op,
            upstream,
            started: Instant::now(),
            result: None,
        }
    }
}

impl Drop for Calling<'_> {
    fn drop(&mut self) {
        self.metrics.upstream_in_flight.dec();
        self.metrics
            .upstream_duration
            .with_label_values(&[self.op, self.upstream])
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .upstream_calls
            .with_label_values(&[self.op, self.upstream, self.result.unwrap_or("cancelled")])
            .inc();
    }
}

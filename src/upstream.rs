//! QuickSight, reached with `aws-sdk-quicksight` (credentials from the standard AWS chain, or static
//! test keys), with an endpoint override so the same code talks to the simulator.
//!
//! Every SDK error is classified once, here: throttled, retryable (5xx, 408, connection), timed
//! out, or rejected (a permanent 4xx whose meaning goes back to the caller). The SDK's own retries
//! are off: the upstream budget decides when to call again, so every attempt is counted against
//! it. The one resend is a call the server answered with 408 without reading it.

use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_quicksight::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_quicksight::types as qs;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::config::UpstreamSettings;
use crate::metrics::Metrics;
use crate::model::{self, EmbedRequest, Toggle};

/// How an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// ThrottlingException: the account's QuickSight budget is exhausted. Retry later.
    #[error("QuickSight throttled the call")]
    Throttled,
    /// 5xx, a 408 that persisted after one resend, or a connection failure. Retry later.
    #[error("QuickSight is unavailable: {0}")]
    Unavailable(String),
    /// No answer within the configured timeout.
    #[error("QuickSight did not answer in time")]
    Timeout,
    /// A permanent refusal (4xx), with QuickSight's status, code and message. Not retryable.
    #[error("QuickSight refused the call: {code} ({status})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
}

impl UpstreamError {
    fn label(&self) -> &'static str {
        match self {
            UpstreamError::Throttled => "throttled",
            UpstreamError::Unavailable(_) => "error",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Rejected { .. } => "rejected",
        }
    }
}

/// A fetched URL and when its request was sent (the conservative start of its validity).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url: String,
    pub sent_at_ms: u64,
}

/// The QuickSight client.
pub struct Upstream {
    client: aws_sdk_quicksight::Client,
    region: String,
    metrics: std::sync::Arc<Metrics>,
}

impl Upstream {
    /// Builds the SDK client from `aws-config`'s standard chain, overridden by settings.
    pub async fn new(settings: &UpstreamSettings, metrics: std::sync::Arc<Metrics>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
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
        let config = loader.load().await;
        Upstream {
            client: aws_sdk_quicksight::Client::new(&config),
            region: settings.region.clone(),
            metrics,
        }
    }

    pub fn region(&self) -> &str {
        &self.region
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
        let op = req.operation().as_str();
        let sent_at_ms = clock.now_ms();
        let started = Instant::now();
        self.metrics.upstream_in_flight.inc();
        let result = self.call(req).await;
        self.metrics.upstream_in_flight.dec();
        self.metrics
            .upstream_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let result = result.and_then(|url| {
            // The SDK fills a missing required EmbedUrl with "" rather than failing.
            if url.starts_with("https://") || url.starts_with("http://") {
                Ok(Fetched { url, sent_at_ms })
            } else {
                Err(UpstreamError::Unavailable(
                    "QuickSight returned no usable EmbedUrl".into(),
                ))
            }
        });
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics
            .upstream_calls
            .with_label_values(&[op, label])
            .inc();
        result
    }

    /// Every member of the request onto the SDK's builder. Each struct is destructured
    /// without `..`, so a member added to the model does not compile until it is forwarded.
    async fn call(&self, req: &EmbedRequest) -> Result<String, UpstreamError> {
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
                    .map(|o| o.embed_url.unwrap_or_default())
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
                    .map(|o| o.embed_url)
            }
            EmbedRequest::Registered(r) => {
                let model::RegisteredEmbedRequest {
                    aws_account_id,
                    session_lifetime_in_minutes,
                    user_arn,
                    experience_configuration,
                    allowed_domains,
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
                    .map(|o| o.embed_url)
            }
        }
    }
}

/// Our model → SDK builders. Requests are validated before this, so a build error here is a bug
/// in the mapping, reported as a rejection rather than a panic.
fn build_err(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Rejected {
        status: 400,
        code: "InvalidParameterValueException".into(),
        message: format!("request could not be built: {e}"),
    }
}

fn visual_id(v: &model::DashboardVisualId) -> Result<qs::DashboardVisualId, UpstreamError> {
    qs::DashboardVisualId::builder()
        .dashboard_id(&v.dashboard_id)
        .sheet_id(&v.sheet_id)
        .visual_id(&v.visual_id)
        .build()
        .map_err(build_err)
}

fn shared_view_switch(t: Option<Toggle>) -> Option<qs::SharedViewConfigurations> {
    t.map(|t| {
        qs::SharedViewConfigurations::builder()
            .enabled(t.enabled)
            .build()
    })
}

fn state_persistence_switch(t: Option<Toggle>) -> Option<qs::StatePersistenceConfigurations> {
    t.map(|t| {
        qs::StatePersistenceConfigurations::builder()
            .enabled(t.enabled)
            .build()
    })
}

fn anonymous_experience(
    x: &model::AnonymousExperience,
) -> Result<qs::AnonymousUserEmbeddingExperienceConfiguration, UpstreamError> {
    let model::AnonymousExperience {
        dashboard,
        dashboard_visual,
        q_search_bar,
        generative_qna,
    } = x;
    let mut b = qs::AnonymousUserEmbeddingExperienceConfiguration::builder();
    if let Some(d) = dashboard {
        let features = |list: &Option<Vec<String>>| {
            list.as_ref().map(|l| {
                l.iter()
                    .map(|f| {
                        qs::AnonymousUserDashboardEmbeddingConfigurationEnabledFeature::from(
                            f.as_str(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        };
        let disabled = d.disabled_features.as_ref().map(|l| {
            l.iter()
                .map(|f| {
                    qs::AnonymousUserDashboardEmbeddingConfigurationDisabledFeature::from(
                        f.as_str(),
                    )
                })
                .collect::<Vec<_>>()
        });
        let fc = d.feature_configurations.as_ref().map(|f| {
            qs::AnonymousUserDashboardFeatureConfigurations::builder()
                .set_shared_view(shared_view_switch(f.shared_view))
                .build()
        });
        b = b.dashboard(
            qs::AnonymousUserDashboardEmbeddingConfiguration::builder()
                .initial_dashboard_id(&d.initial_dashboard_id)
                .set_enabled_features(features(&d.enabled_features))
                .set_disabled_features(disabled)
                .set_feature_configurations(fc)
                .build()
                .map_err(build_err)?,
        );
    }
    if let Some(v) = dashboard_visual {
        b = b.dashboard_visual(
            qs::AnonymousUserDashboardVisualEmbeddingConfiguration::builder()
                .initial_dashboard_visual_id(visual_id(&v.initial_dashboard_visual_id)?)
                .build(),
        );
    }
    if let Some(q) = q_search_bar {
        b = b.q_search_bar(
            qs::AnonymousUserQSearchBarEmbeddingConfiguration::builder()
                .initial_topic_id(&q.initial_topic_id)
                .build()
                .map_err(build_err)?,
        );
    }
    if let Some(q) = generative_qna {
        b = b.generative_qn_a(
            qs::AnonymousUserGenerativeQnAEmbeddingConfiguration::builder()
                .initial_topic_id(&q.initial_topic_id)
                .build()
                .map_err(build_err)?,
        );
    }
    Ok(b.build())
}

fn toggle<T>(t: Option<Toggle>, f: impl Fn(bool) -> T) -> Option<T> {
    t.map(|t| f(t.enabled))
}

/// Each `{ "Enabled": bool }` switch as its SDK type.
macro_rules! switch {
    ($t:expr, $ty:ident) => {
        toggle($t, |e| qs::$ty::builder().enabled(e).build())
    };
}

fn dashboard_features(
    f: &model::DashboardFeatures,
) -> qs::RegisteredUserDashboardFeatureConfigurations {
    let model::DashboardFeatures {
        state_persistence,
        bookmarks,
        shared_view,
        amazon_q,
        schedules,
        recent_snapshots,
        threshold_alerts,
        dashboard_customization_summary,
    } = f;
    qs::RegisteredUserDashboardFeatureConfigurations::builder()
        .set_state_persistence(state_persistence_switch(*state_persistence))
        .set_bookmarks(switch!(*bookmarks, BookmarksConfigurations))
        .set_shared_view(shared_view_switch(*shared_view))
        .set_amazon_q_in_quick_sight(amazon_q.as_ref().map(|q| {
            let model::DashboardAmazonQ { executive_summary } = q;
            qs::AmazonQInQuickSightDashboardConfigurations::builder()
                .set_executive_summary(switch!(*executive_summary, ExecutiveSummaryConfigurations))
                .build()
        }))
        .set_schedules(switch!(*schedules, SchedulesConfigurations))
        .set_recent_snapshots(switch!(*recent_snapshots, RecentSnapshotsConfigurations))
        .set_threshold_alerts(switch!(*threshold_alerts, ThresholdAlertsConfigurations))
        .set_dashboard_customization_summary(switch!(
            *dashboard_customization_summary,
            DashboardCustomizationSummaryConfigurations
        ))
        .build()
}

fn console_features(f: &model::ConsoleFeatures) -> qs::RegisteredUserConsoleFeatureConfigurations {
    let model::ConsoleFeatures {
        state_persistence,
        shared_view,
        amazon_q,
        schedules,
        recent_snapshots,
        threshold_alerts,
        dashboard_customization_summary,
    } = f;
    qs::RegisteredUserConsoleFeatureConfigurations::builder()
        .set_state_persistence(state_persistence_switch(*state_persistence))
        .set_shared_view(shared_view_switch(*shared_view))
        .set_amazon_q_in_quick_sight(amazon_q.as_ref().map(|q| {
            let model::ConsoleAmazonQ {
                data_qna,
                generative_authoring,
                executive_summary,
                data_stories,
            } = q;
            qs::AmazonQInQuickSightConsoleConfigurations::builder()
                .set_data_qn_a(switch!(*data_qna, DataQnAConfigurations))
                .set_generative_authoring(switch!(
                    *generative_authoring,
                    GenerativeAuthoringConfigurations
                ))
                .set_executive_summary(switch!(*executive_summary, ExecutiveSummaryConfigurations))
                .set_data_stories(switch!(*data_stories, DataStoriesConfigurations))
                .build()
        }))
        .set_schedules(switch!(*schedules, SchedulesConfigurations))
        .set_recent_snapshots(switch!(*recent_snapshots, RecentSnapshotsConfigurations))
        .set_threshold_alerts(switch!(*threshold_alerts, ThresholdAlertsConfigurations))
        .set_dashboard_customization_summary(switch!(
            *dashboard_customization_summary,
            DashboardCustomizationSummaryConfigurations
        ))
        .build()
}

fn registered_experience(
    x: &model::RegisteredExperience,
) -> Result<qs::RegisteredUserEmbeddingExperienceConfiguration, UpstreamError> {
    let model::RegisteredExperience {
        dashboard,
        quicksight_console,
        q_search_bar,
        dashboard_visual,
        generative_qna,
        quick_chat,
    } = x;
    let mut b = qs::RegisteredUserEmbeddingExperienceConfiguration::builder();
    if let Some(d) = dashboard {
        b = b.dashboard(
            qs::RegisteredUserDashboardEmbeddingConfiguration::builder()
                .initial_dashboard_id(&d.initial_dashboard_id)
                .set_feature_configurations(
                    d.feature_configurations.as_ref().map(dashboard_features),
                )
                .build()
                .map_err(build_err)?,
        );
    }
    if let Some(c) = quicksight_console {
        b = b.quick_sight_console(
            qs::RegisteredUserQuickSightConsoleEmbeddingConfiguration::builder()
                .set_initial_path(c.initial_path.clone())
                .set_feature_configurations(c.feature_configurations.as_ref().map(console_features))
                .build(),
        );
    }
    if let Some(q) = q_search_bar {
        b = b.q_search_bar(
            qs::RegisteredUserQSearchBarEmbeddingConfiguration::builder()
                .set_initial_topic_id(q.initial_topic_id.clone())
                .build(),
        );
    }
    if let Some(v) = dashboard_visual {
        b = b.dashboard_visual(
            qs::RegisteredUserDashboardVisualEmbeddingConfiguration::builder()
                .initial_dashboard_visual_id(visual_id(&v.initial_dashboard_visual_id)?)
                .build(),
        );
    }
    if let Some(q) = generative_qna {
        b = b.generative_qn_a(
            qs::RegisteredUserGenerativeQnAEmbeddingConfiguration::builder()
                .set_initial_topic_id(q.initial_topic_id.clone())
                .build(),
        );
    }
    if let Some(model::QuickChat {}) = quick_chat {
        b = b.quick_chat(qs::RegisteredUserQuickChatEmbeddingConfiguration::builder().build());
    }
    Ok(b.build())
}

/// Sending a call, and sending it once more when the first answer says it was never read.
///
/// An HTTP front end that times out a keep-alive connection before a request arrives answers
/// `408 Request Timeout` on it; a client that picks that connection from its pool at that moment
/// reads the 408 as the answer to its request. The server never read the request, so sending it
/// again on a fresh connection is safe and costs QuickSight nothing, as browsers do. A second
/// 408 is classified like any other failure.
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
        other => other.map_err(classify),
    }
}

/// Whether a refusal is of the gateway's own identity rather than of the caller's request: AWS's
/// authentication errors (unknown or expired keys, bad signatures) and QuickSight's
/// `AccessDeniedException`, which says the gateway's principal lacks a permission.
pub fn is_own_credentials_failure(status: u16, code: &str) -> bool {
    const CODES: [&str; 10] = [
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidAccessKeyId",
    ];
    status == 401 || CODES.contains(&code)
}

/// The one place SDK errors are classified.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    err: SdkError<E, HttpResponse>,
) -> UpstreamError {
    match err {
        SdkError::TimeoutError(_) => UpstreamError::Timeout,
        SdkError::DispatchFailure(e) => {
            if e.is_timeout() {
                UpstreamError::Timeout
            } else {
                UpstreamError::Unavailable(format!(
                    "connection failed: {:?}",
                    e.as_connector_error().map(|c| c.to_string())
                ))
            }
        }
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let err = e.into_err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or_default().to_string();
            if code == "ThrottlingException" || status == 429 {
                UpstreamError::Throttled
            } else if status >= 500 || status == 408 {
                UpstreamError::Unavailable(format!("{code} ({status})"))
            } else {
                UpstreamError::Rejected {
                    status,
                    code,
                    message,
                }
            }
        }
        SdkError::ResponseError(_) => UpstreamError::Unavailable("unreadable response".into()),
        // Never format the whole error: a raw response inside it may carry an embed URL.
        _ => UpstreamError::Unavailable("the request could not be constructed or sent".into()),
    }
}

//! Our request model onto the SDK's types. Requests are validated before this, so a build error
//! here is a bug in the mapping, reported as a rejection rather than a panic.

use aws_sdk_quicksight::types as qs;

use super::UpstreamError;
use crate::model::{self, Toggle};

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

pub(super) fn anonymous_experience(
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

pub(super) fn registered_experience(
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

//! The walk: every member of a resolved request, each either yielding the [`Grant`]s it would
//! give or marked as granting nothing, with the reason next to it. Every struct is destructured
//! without `..`, so a member added to the model does not compile until it has a decision here.

use super::{deny, At, Denied, ExperienceKind, Feature, Grant};
use crate::model::arn::{Arn, UserArn};
use crate::model::*;

pub type See<'s, 'a> = dyn FnMut(Grant<'a>, At) -> Result<(), Denied> + 's;

fn enabled(t: &Option<Toggle>) -> bool {
    t.is_some_and(|t| t.enabled)
}

fn feature(see: &mut See<'_, '_>, t: &Option<Toggle>, f: Feature, at: At) -> Result<(), Denied> {
    if enabled(t) {
        see(Grant::Feature(f), at)?;
    }
    Ok(())
}

/// Calls `see` for everything `req` would grant. Every struct is destructured without `..`: a
/// new model member is a compile error here until it has a decision.
pub fn walk<'a>(req: &'a EmbedRequest, see: &mut See<'_, 'a>) -> Result<(), Denied> {
    match req {
        EmbedRequest::Dashboard(r) => walk_dashboard(r, see),
        EmbedRequest::Anonymous(r) => walk_anonymous(r, see),
        EmbedRequest::Registered(r) => walk_registered(r, see),
    }
}

fn walk_user<'a>(see: &mut See<'_, 'a>, arn: &'a str) -> Result<(), Denied> {
    see(Grant::User(arn), At("UserArn", None))?;
    // Validation guarantees the ARN parses; an unparsable one grants nothing we could allow.
    match UserArn::parse(arn) {
        Some(u) => see(Grant::Namespace(u.namespace), At("UserArn", None)),
        None => deny(At("UserArn", None), "is not a QuickSight user ARN".into()),
    }
}

fn walk_dashboard<'a>(r: &'a DashboardEmbedRequest, see: &mut See<'_, 'a>) -> Result<(), Denied> {
    let DashboardEmbedRequest {
        aws_account_id,
        dashboard_id,
        identity_type,
        // The session's length is bounded by QuickSight's 15-600 range; it grants no resource.
        session_lifetime_in_minutes: _,
        // Switching UI off grants nothing.
        undo_redo_disabled: _,
        reset_disabled: _,
        state_persistence_enabled,
        user_arn,
        namespace,
        additional_dashboard_ids,
        // Routing, not a grant: admit checks the upstream it routes to against the policy's
        // `upstreams` (and the account is checked here).
        region: _,
    } = r;
    see(Grant::Account(aws_account_id), At("AwsAccountId", None))?;
    see(Grant::Identity(*identity_type), At("IdentityType", None))?;
    see(
        Grant::Experience(ExperienceKind::Dashboard),
        At("Operation", None),
    )?;
    see(Grant::Dashboard(dashboard_id), At("DashboardId", None))?;
    for (i, id) in additional_dashboard_ids.iter().flatten().enumerate() {
        see(
            Grant::Dashboard(id),
            At("AdditionalDashboardIds[]", Some(i)),
        )?;
    }
    // Resolved before the walk; `None` only if a caller skipped resolution, and QuickSight would
    // then use `default`.
    let ns = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    see(Grant::Namespace(ns), At("Namespace", None))?;
    if let Some(arn) = user_arn {
        walk_user(see, arn)?;
    }
    if *state_persistence_enabled == Some(true) {
        see(
            Grant::Feature(Feature::StatePersistence),
            At("StatePersistenceEnabled", None),
        )?;
    }
    Ok(())
}

fn walk_domains<'a>(see: &mut See<'_, 'a>, domains: &'a Option<Vec<String>>) -> Result<(), Denied> {
    for (i, d) in domains.iter().flatten().enumerate() {
        see(Grant::Domain(d), At("AllowedDomains[]", Some(i)))?;
    }
    Ok(())
}

fn walk_anonymous<'a>(r: &'a AnonymousEmbedRequest, see: &mut See<'_, 'a>) -> Result<(), Denied> {
    let AnonymousEmbedRequest {
        aws_account_id,
        session_lifetime_in_minutes: _,
        namespace,
        session_tags,
        authorized_resource_arns,
        experience_configuration,
        allowed_domains,
        // Routing, not a grant: admit checks the upstream it routes to against the policy's
        // `upstreams` (and the account is checked here).
        region: _,
    } = r;
    see(Grant::Account(aws_account_id), At("AwsAccountId", None))?;
    see(
        Grant::Identity(IdentityType::Anonymous),
        At("Operation", None),
    )?;
    see(Grant::Namespace(namespace), At("Namespace", None))?;
    for (i, tag) in session_tags.iter().flatten().enumerate() {
        see(Grant::Tag(tag), At("SessionTags[]", Some(i)))?;
    }
    for (i, arn) in authorized_resource_arns.iter().enumerate() {
        let at = At("AuthorizedResourceArns[]", Some(i));
        // Validation checked account, type and id; region and partition are the gateway's
        // (`check_region`). What the ARN grants is its resource.
        match Arn::parse(arn) {
            Some(a) if a.resource_type == "dashboard" => see(Grant::Dashboard(a.resource), at)?,
            Some(a) if a.resource_type == "topic" => see(Grant::Topic(a.resource), at)?,
            Some(a) if a.resource_type == "theme" => see(Grant::Theme(a.resource), at)?,
            Some(a) => see(Grant::Resource(a.resource_type), at)?,
            None => see(Grant::Resource(arn), at)?,
        }
    }
    let AnonymousExperience {
        dashboard,
        dashboard_visual,
        q_search_bar,
        generative_qna,
    } = experience_configuration;
    if let Some(d) = dashboard {
        let AnonymousDashboard {
            initial_dashboard_id,
            enabled_features,
            // Switching a feature off grants nothing.
            disabled_features: _,
            feature_configurations,
        } = d;
        see(
            Grant::Experience(ExperienceKind::Dashboard),
            At("ExperienceConfiguration.Dashboard", None),
        )?;
        see(
            Grant::Dashboard(initial_dashboard_id),
            At("ExperienceConfiguration.Dashboard.InitialDashboardId", None),
        )?;
        // SHARED_VIEW is the only value validation lets through.
        for (i, _) in enabled_features.iter().flatten().enumerate() {
            see(
                Grant::Feature(Feature::SharedView),
                At(
                    "ExperienceConfiguration.Dashboard.EnabledFeatures[]",
                    Some(i),
                ),
            )?;
        }
        if let Some(AnonymousFeatures { shared_view }) = feature_configurations {
            feature(
                see,
                shared_view,
                Feature::SharedView,
                At(
                    "ExperienceConfiguration.Dashboard.FeatureConfigurations.SharedView",
                    None,
                ),
            )?;
        }
    }
    if let Some(DashboardVisual {
        initial_dashboard_visual_id,
    }) = dashboard_visual
    {
        see(
            Grant::Experience(ExperienceKind::DashboardVisual),
            At("ExperienceConfiguration.DashboardVisual", None),
        )?;
        walk_visual(see, initial_dashboard_visual_id)?;
    }
    if let Some(TopicRequired { initial_topic_id }) = q_search_bar {
        see(
            Grant::Experience(ExperienceKind::QSearchBar),
            At("ExperienceConfiguration.QSearchBar", None),
        )?;
        see(
            Grant::Topic(initial_topic_id),
            At("ExperienceConfiguration.QSearchBar.InitialTopicId", None),
        )?;
    }
    if let Some(TopicRequired { initial_topic_id }) = generative_qna {
        see(
            Grant::Experience(ExperienceKind::GenerativeQnA),
            At("ExperienceConfiguration.GenerativeQnA", None),
        )?;
        see(
            Grant::Topic(initial_topic_id),
            At("ExperienceConfiguration.GenerativeQnA.InitialTopicId", None),
        )?;
    }
    walk_domains(see, allowed_domains)
}

fn walk_visual<'a>(see: &mut See<'_, 'a>, v: &'a DashboardVisualId) -> Result<(), Denied> {
    let DashboardVisualId {
        dashboard_id,
        // A sheet and a visual are parts of the dashboard: allowing it allows them.
        sheet_id: _,
        visual_id: _,
    } = v;
    see(
        Grant::Dashboard(dashboard_id),
        At(
            "ExperienceConfiguration.DashboardVisual.InitialDashboardVisualId.DashboardId",
            None,
        ),
    )
}

fn walk_registered<'a>(r: &'a RegisteredEmbedRequest, see: &mut See<'_, 'a>) -> Result<(), Denied> {
    let RegisteredEmbedRequest {
        aws_account_id,
        session_lifetime_in_minutes: _,
        user_arn,
        experience_configuration,
        allowed_domains,
        // Routing, not a grant: admit checks the upstream it routes to against the policy's
        // `upstreams` (and the account is checked here).
        region: _,
    } = r;
    see(Grant::Account(aws_account_id), At("AwsAccountId", None))?;
    see(
        Grant::Identity(IdentityType::Quicksight),
        At("Operation", None),
    )?;
    walk_user(see, user_arn)?;
    let RegisteredExperience {
        dashboard,
        quicksight_console,
        q_search_bar,
        dashboard_visual,
        generative_qna,
        quick_chat,
    } = experience_configuration;
    if let Some(RegisteredDashboard {
        initial_dashboard_id,
        feature_configurations,
    }) = dashboard
    {
        see(
            Grant::Experience(ExperienceKind::Dashboard),
            At("ExperienceConfiguration.Dashboard", None),
        )?;
        see(
            Grant::Dashboard(initial_dashboard_id),
            At("ExperienceConfiguration.Dashboard.InitialDashboardId", None),
        )?;
        if let Some(f) = feature_configurations {
            walk_dashboard_features(see, f)?;
        }
    }
    if let Some(Console {
        initial_path,
        feature_configurations,
    }) = quicksight_console
    {
        see(
            Grant::Experience(ExperienceKind::QuickSightConsole),
            At("ExperienceConfiguration.QuickSightConsole", None),
        )?;
        // `/dashboards/<id>` opens that dashboard. The console itself lets the user reach
        // whatever their QuickSight permissions allow, so `/analyses/<id>` and the start pages
        // grant nothing beyond the console experience.
        if let Some(id) = initial_path
            .as_deref()
            .and_then(|p| p.strip_prefix("/dashboards/"))
        {
            see(
                Grant::Dashboard(id),
                At(
                    "ExperienceConfiguration.QuickSightConsole.InitialPath",
                    None,
                ),
            )?;
        }
        if let Some(f) = feature_configurations {
            walk_console_features(see, f)?;
        }
    }
    if let Some(TopicOptional { initial_topic_id }) = q_search_bar {
        see(
            Grant::Experience(ExperienceKind::QSearchBar),
            At("ExperienceConfiguration.QSearchBar", None),
        )?;
        if let Some(t) = initial_topic_id {
            see(
                Grant::Topic(t),
                At("ExperienceConfiguration.QSearchBar.InitialTopicId", None),
            )?;
        }
    }
    if let Some(DashboardVisual {
        initial_dashboard_visual_id,
    }) = dashboard_visual
    {
        see(
            Grant::Experience(ExperienceKind::DashboardVisual),
            At("ExperienceConfiguration.DashboardVisual", None),
        )?;
        walk_visual(see, initial_dashboard_visual_id)?;
    }
    if let Some(TopicOptional { initial_topic_id }) = generative_qna {
        see(
            Grant::Experience(ExperienceKind::GenerativeQnA),
            At("ExperienceConfiguration.GenerativeQnA", None),
        )?;
        if let Some(t) = initial_topic_id {
            see(
                Grant::Topic(t),
                At("ExperienceConfiguration.GenerativeQnA.InitialTopicId", None),
            )?;
        }
    }
    if let Some(QuickChat {}) = quick_chat {
        see(
            Grant::Experience(ExperienceKind::QuickChat),
            At("ExperienceConfiguration.QuickChat", None),
        )?;
    }
    walk_domains(see, allowed_domains)
}

fn walk_dashboard_features(see: &mut See<'_, '_>, f: &DashboardFeatures) -> Result<(), Denied> {
    macro_rules! at {
        ($m:literal) => {
            At(
                concat!(
                    "ExperienceConfiguration.Dashboard.FeatureConfigurations.",
                    $m
                ),
                None,
            )
        };
    }
    let DashboardFeatures {
        state_persistence,
        bookmarks,
        shared_view,
        amazon_q,
        schedules,
        recent_snapshots,
        threshold_alerts,
        dashboard_customization_summary,
    } = f;
    for (t, feat, at) in [
        (
            state_persistence,
            Feature::StatePersistence,
            at!("StatePersistence"),
        ),
        (bookmarks, Feature::Bookmarks, at!("Bookmarks")),
        (shared_view, Feature::SharedView, at!("SharedView")),
        (schedules, Feature::Schedules, at!("Schedules")),
        (
            recent_snapshots,
            Feature::RecentSnapshots,
            at!("RecentSnapshots"),
        ),
        (
            threshold_alerts,
            Feature::ThresholdAlerts,
            at!("ThresholdAlerts"),
        ),
        (
            dashboard_customization_summary,
            Feature::DashboardCustomizationSummary,
            at!("DashboardCustomizationSummary"),
        ),
    ] {
        feature(see, t, feat, at)?;
    }
    if let Some(DashboardAmazonQ { executive_summary }) = amazon_q {
        feature(
            see,
            executive_summary,
            Feature::ExecutiveSummary,
            at!("AmazonQInQuickSight.ExecutiveSummary"),
        )?;
    }
    Ok(())
}

fn walk_console_features(see: &mut See<'_, '_>, f: &ConsoleFeatures) -> Result<(), Denied> {
    macro_rules! at {
        ($m:literal) => {
            At(
                concat!(
                    "ExperienceConfiguration.QuickSightConsole.FeatureConfigurations.",
                    $m
                ),
                None,
            )
        };
    }
    let ConsoleFeatures {
        state_persistence,
        shared_view,
        amazon_q,
        schedules,
        recent_snapshots,
        threshold_alerts,
        dashboard_customization_summary,
    } = f;
    for (t, feat, at) in [
        (
            state_persistence,
            Feature::StatePersistence,
            at!("StatePersistence"),
        ),
        (shared_view, Feature::SharedView, at!("SharedView")),
        (schedules, Feature::Schedules, at!("Schedules")),
        (
            recent_snapshots,
            Feature::RecentSnapshots,
            at!("RecentSnapshots"),
        ),
        (
            threshold_alerts,
            Feature::ThresholdAlerts,
            at!("ThresholdAlerts"),
        ),
        (
            dashboard_customization_summary,
            Feature::DashboardCustomizationSummary,
            at!("DashboardCustomizationSummary"),
        ),
    ] {
        feature(see, t, feat, at)?;
    }
    if let Some(ConsoleAmazonQ {
        data_qna,
        generative_authoring,
        executive_summary,
        data_stories,
    }) = amazon_q
    {
        for (t, feat, at) in [
            (
                data_qna,
                Feature::DataQnA,
                at!("AmazonQInQuickSight.DataQnA"),
            ),
            (
                generative_authoring,
                Feature::GenerativeAuthoring,
                at!("AmazonQInQuickSight.GenerativeAuthoring"),
            ),
            (
                executive_summary,
                Feature::ExecutiveSummary,
                at!("AmazonQInQuickSight.ExecutiveSummary"),
            ),
            (
                data_stories,
                Feature::DataStories,
                at!("AmazonQInQuickSight.DataStories"),
            ),
        ] {
            feature(see, t, feat, at)?;
        }
    }
    Ok(())
}

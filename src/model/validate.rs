//! The constraints QuickSight enforces on the embed-URL inputs: lengths, patterns, ranges,
//! required combinations, and ARNs that must belong to the request's account. Violations name the
//! member by its QuickSight path and say the rule.

use std::fmt;

use super::arn::{Arn, UserArn};
use super::domain::Origin;
use super::*;

/// Which QuickSight error a violation maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// `InvalidParameterValueException`
    InvalidParameter,
    /// `SessionLifetimeInMinutesInvalidException`
    SessionLifetime,
}

/// A violated input constraint: which member, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    /// QuickSight member path, e.g. `ExperienceConfiguration.Dashboard.InitialDashboardId`.
    pub field: String,
    /// The rule, in words, e.g. `must match [\w-]+ and be 1-512 characters`.
    pub rule: String,
}

impl Violation {
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Violation {
            kind: ViolationKind::InvalidParameter,
            field: field.into(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.rule)
    }
}

pub(crate) fn is_word_or_dash(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `ShortRestrictiveResourceId` (max 512) / `RestrictiveResourceId` (max 2048): `[\w\-]+`.
pub(crate) fn is_resource_id(id: &str, max: usize) -> bool {
    !id.is_empty() && id.len() <= max && is_word_or_dash(id)
}

fn check_resource_id(field: &str, id: &str, max: usize) -> Result<(), Violation> {
    if !is_resource_id(id, max) {
        return Err(Violation::invalid(
            field,
            format!("must be 1-{max} characters of letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

pub(crate) fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

fn check_account(id: &str) -> Result<(), Violation> {
    if !is_account_id(id) {
        return Err(Violation::invalid(
            "AwsAccountId",
            "must be exactly 12 digits",
        ));
    }
    Ok(())
}

fn check_lifetime(minutes: Option<i64>) -> Result<(), Violation> {
    match minutes {
        Some(m) if !SESSION_LIFETIME_MINUTES.contains(&m) => Err(Violation {
            kind: ViolationKind::SessionLifetime,
            field: "SessionLifetimeInMinutes".into(),
            rule: "must be between 15 and 600".into(),
        }),
        _ => Ok(()),
    }
}

/// Namespace: at most 64 characters of `[a-zA-Z0-9._-]`; we also refuse the empty string, which
/// can never name a namespace.
pub(crate) fn is_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What [`is_namespace`] asks, as an error says it.
pub(crate) const NAMESPACE_RULE: &str =
    "must be 1-64 characters of letters, digits, '.', '_' and '-'";

fn check_namespace(field: &str, ns: &str) -> Result<(), Violation> {
    if is_namespace(ns) {
        Ok(())
    } else {
        Err(Violation::invalid(field, NAMESPACE_RULE))
    }
}

fn check_user_arn<'a>(field: &str, arn: &'a str, account: &str) -> Result<UserArn<'a>, Violation> {
    let parsed = UserArn::parse(arn).ok_or_else(|| {
        Violation::invalid(
            field,
            "must be a QuickSight user ARN: arn:<partition>:quicksight:<region>:<account>:user/<namespace>/<user>",
        )
    })?;
    if parsed.account != account {
        return Err(Violation::invalid(field, "must belong to AwsAccountId"));
    }
    Ok(parsed)
}

/// Resource types an `AuthorizedResourceArns` entry may name, with their id's maximum length.
const AUTHORIZABLE: [(&str, usize); 3] = [("dashboard", 512), ("topic", 2048), ("theme", 512)];

/// Entry `i` of `AuthorizedResourceArns`: a QuickSight ARN of the request's account naming a
/// dashboard, topic or theme with a well-formed id. (The member path is built only on refusal.)
fn check_resource_arn<'a>(i: usize, arn: &'a str, account: &str) -> Result<Arn<'a>, Violation> {
    let field = || format!("AuthorizedResourceArns[{i}]");
    let parsed = Arn::parse(arn).ok_or_else(|| {
        Violation::invalid(
            field(),
            "must be a QuickSight ARN: arn:<partition>:quicksight:<region>:<account>:<type>/<id>",
        )
    })?;
    if parsed.account != account {
        return Err(Violation::invalid(field(), "must belong to AwsAccountId"));
    }
    let Some((_, max)) = AUTHORIZABLE
        .iter()
        .find(|(t, _)| *t == parsed.resource_type)
    else {
        return Err(Violation::invalid(
            field(),
            "must name a dashboard, topic or theme",
        ));
    };
    if !is_resource_id(parsed.resource, *max) {
        return Err(Violation::invalid(
            field(),
            format!("must end in an id of 1-{max} characters of letters, digits, '_' and '-'"),
        ));
    }
    Ok(parsed)
}

fn check_allowed_domains(domains: Option<&[String]>) -> Result<(), Violation> {
    let Some(domains) = domains else {
        return Ok(());
    };
    if domains.len() > 3 {
        return Err(Violation::invalid(
            "AllowedDomains",
            "must list at most 3 domains",
        ));
    }
    for (i, d) in domains.iter().enumerate() {
        Origin::parse(d)
            .map_err(|rule| Violation::invalid(format!("AllowedDomains[{i}]"), rule))?;
    }
    Ok(())
}

fn validate_dashboard(r: &DashboardEmbedRequest) -> Result<(), Violation> {
    check_resource_id("DashboardId", &r.dashboard_id, 512)?;
    check_lifetime(r.session_lifetime_in_minutes)?;
    if let Some(ns) = &r.namespace {
        check_namespace("Namespace", ns)?;
    }
    match (r.identity_type, &r.user_arn) {
        (IdentityType::Quicksight, None) => {
            return Err(Violation::invalid(
                "UserArn",
                "is required when IdentityType is QUICKSIGHT",
            ))
        }
        (IdentityType::Quicksight, Some(arn)) => {
            let user = check_user_arn("UserArn", arn, &r.aws_account_id)?;
            let ns = r.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            if user.namespace != ns {
                return Err(Violation::invalid(
                    "Namespace",
                    format!(
                        "must be the namespace of UserArn ({:?}); omitted, it is \"default\"",
                        user.namespace
                    ),
                ));
            }
        }
        (_, Some(_)) => {
            return Err(Violation::invalid(
                "UserArn",
                "is allowed only when IdentityType is QUICKSIGHT",
            ))
        }
        (_, None) => {}
    }
    if let Some(ids) = &r.additional_dashboard_ids {
        if r.identity_type != IdentityType::Anonymous {
            return Err(Violation::invalid(
                "AdditionalDashboardIds",
                "is allowed only when IdentityType is ANONYMOUS",
            ));
        }
        if ids.is_empty() || ids.len() > 20 {
            return Err(Violation::invalid(
                "AdditionalDashboardIds",
                "must list 1-20 dashboard ids",
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            check_resource_id(&format!("AdditionalDashboardIds[{i}]"), id, 512)?;
        }
    }
    Ok(())
}

fn check_visual(prefix: &str, v: &DashboardVisualId) -> Result<(), Violation> {
    let p = format!("{prefix}.InitialDashboardVisualId");
    check_resource_id(&format!("{p}.DashboardId"), &v.dashboard_id, 512)?;
    check_resource_id(&format!("{p}.SheetId"), &v.sheet_id, 512)?;
    check_resource_id(&format!("{p}.VisualId"), &v.visual_id, 512)
}

fn exactly_one(set: usize) -> Result<(), Violation> {
    if set == 1 {
        Ok(())
    } else {
        Err(Violation::invalid(
            "ExperienceConfiguration",
            "must set exactly one experience",
        ))
    }
}

fn check_session_tags(tags: &[SessionTag]) -> Result<(), Violation> {
    if tags.is_empty() || tags.len() > 50 {
        return Err(Violation::invalid("SessionTags", "must list 1-50 tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.key.is_empty() || t.key.chars().count() > 128 {
            return Err(Violation::invalid(
                format!("SessionTags[{i}].Key"),
                "must be 1-128 characters",
            ));
        }
        if t.value.is_empty() || t.value.chars().count() > 256 {
            return Err(Violation::invalid(
                format!("SessionTags[{i}].Value"),
                "must be 1-256 characters",
            ));
        }
        // Two values for one row-level-security key would leave it to QuickSight which one
        // filters the rows.
        if tags[..i].iter().any(|earlier| earlier.key == t.key) {
            return Err(Violation::invalid(
                format!("SessionTags[{i}].Key"),
                "must be unique: this key is already tagged",
            ));
        }
    }
    Ok(())
}

fn validate_anonymous(r: &AnonymousEmbedRequest) -> Result<(), Violation> {
    check_lifetime(r.session_lifetime_in_minutes)?;
    check_namespace("Namespace", &r.namespace)?;
    if let Some(tags) = &r.session_tags {
        check_session_tags(tags)?;
    }
    let x = &r.experience_configuration;
    exactly_one(
        usize::from(x.dashboard.is_some())
            + usize::from(x.dashboard_visual.is_some())
            + usize::from(x.q_search_bar.is_some())
            + usize::from(x.generative_qna.is_some()),
    )?;
    let initial_dashboard = if let Some(d) = &x.dashboard {
        check_resource_id(
            "ExperienceConfiguration.Dashboard.InitialDashboardId",
            &d.initial_dashboard_id,
            512,
        )?;
        for (field, list) in [
            ("EnabledFeatures", &d.enabled_features),
            ("DisabledFeatures", &d.disabled_features),
        ] {
            for (i, f) in list.iter().flatten().enumerate() {
                if f != "SHARED_VIEW" {
                    return Err(Violation::invalid(
                        format!("ExperienceConfiguration.Dashboard.{field}[{i}]"),
                        "must be SHARED_VIEW",
                    ));
                }
            }
        }
        Some(d.initial_dashboard_id.as_str())
    } else if let Some(v) = &x.dashboard_visual {
        check_visual(
            "ExperienceConfiguration.DashboardVisual",
            &v.initial_dashboard_visual_id,
        )?;
        Some(v.initial_dashboard_visual_id.dashboard_id.as_str())
    } else {
        for (name, t) in [
            ("QSearchBar", &x.q_search_bar),
            ("GenerativeQnA", &x.generative_qna),
        ] {
            if let Some(t) = t {
                check_resource_id(
                    &format!("ExperienceConfiguration.{name}.InitialTopicId"),
                    &t.initial_topic_id,
                    2048,
                )?;
            }
        }
        None
    };
    if r.authorized_resource_arns.is_empty() {
        return Err(Violation::invalid(
            "AuthorizedResourceArns",
            "must list at least one ARN",
        ));
    }
    let mut authorized = Vec::with_capacity(r.authorized_resource_arns.len());
    for (i, arn) in r.authorized_resource_arns.iter().enumerate() {
        authorized.push(check_resource_arn(i, arn, &r.aws_account_id)?);
    }
    if let Some(initial) = initial_dashboard {
        if !authorized
            .iter()
            .any(|a| a.resource_type == "dashboard" && a.resource == initial)
        {
            return Err(Violation::invalid(
                "AuthorizedResourceArns",
                "must include the ARN of the initial dashboard",
            ));
        }
    }
    check_allowed_domains(r.allowed_domains.as_deref())
}

const CONSOLE_START_PATHS: [&str; 4] = [
    "/start",
    "/start/analyses",
    "/start/dashboards",
    "/start/favorites",
];

fn validate_registered(r: &RegisteredEmbedRequest) -> Result<(), Violation> {
    check_lifetime(r.session_lifetime_in_minutes)?;
    check_user_arn("UserArn", &r.user_arn, &r.aws_account_id)?;
    let x = &r.experience_configuration;
    exactly_one(
        usize::from(x.dashboard.is_some())
            + usize::from(x.quicksight_console.is_some())
            + usize::from(x.q_search_bar.is_some())
            + usize::from(x.dashboard_visual.is_some())
            + usize::from(x.generative_qna.is_some())
            + usize::from(x.quick_chat.is_some()),
    )?;
    if let Some(d) = &x.dashboard {
        check_resource_id(
            "ExperienceConfiguration.Dashboard.InitialDashboardId",
            &d.initial_dashboard_id,
            512,
        )?;
    }
    if let Some(v) = &x.dashboard_visual {
        check_visual(
            "ExperienceConfiguration.DashboardVisual",
            &v.initial_dashboard_visual_id,
        )?;
    }
    if let Some(p) = x
        .quicksight_console
        .as_ref()
        .and_then(|c| c.initial_path.as_deref())
    {
        let id_path = |prefix: &str| {
            p.strip_prefix(prefix)
                .is_some_and(|id| is_resource_id(id, 512))
        };
        let ok = !p.is_empty()
            && p.len() <= 1000
            && (CONSOLE_START_PATHS.contains(&p)
                || id_path("/dashboards/")
                || id_path("/analyses/"));
        if !ok {
            return Err(Violation::invalid(
                "ExperienceConfiguration.QuickSightConsole.InitialPath",
                "must be /start, /start/analyses, /start/dashboards, /start/favorites, /dashboards/<id> or /analyses/<id>",
            ));
        }
    }
    for (name, t) in [
        ("QSearchBar", &x.q_search_bar),
        ("GenerativeQnA", &x.generative_qna),
    ] {
        if let Some(id) = t.as_ref().and_then(|t| t.initial_topic_id.as_deref()) {
            check_resource_id(
                &format!("ExperienceConfiguration.{name}.InitialTopicId"),
                id,
                2048,
            )?;
        }
    }
    check_allowed_domains(r.allowed_domains.as_deref())
}

impl EmbedRequest {
    /// Checks that every ARN the request names can be used through an endpoint in `region`:
    /// resource ARNs in that region and its partition, the user ARN in its partition (a user's
    /// ARN carries the account's identity region, which may differ).
    ///
    /// # Errors
    /// The first ARN outside the region, naming the member.
    pub fn check_region(&self, region: &str) -> Result<(), Violation> {
        let partition = super::arn::partition_of(region);
        let user = match self {
            EmbedRequest::Dashboard(r) => r.user_arn.as_deref(),
            EmbedRequest::Anonymous(_) => None,
            EmbedRequest::Registered(r) => Some(r.user_arn.as_str()),
        };
        if let Some(u) = user.and_then(UserArn::parse) {
            if u.partition != partition {
                return Err(Violation::invalid(
                    "UserArn",
                    format!(
                        "must be in the {partition} partition of the upstream's region {region}"
                    ),
                ));
            }
        }
        if let EmbedRequest::Anonymous(r) = self {
            for (i, arn) in r.authorized_resource_arns.iter().enumerate() {
                if let Some(a) = Arn::parse(arn) {
                    if a.partition != partition || a.region != region {
                        return Err(Violation::invalid(
                            format!("AuthorizedResourceArns[{i}]"),
                            format!(
                                "must be in the upstream's region {region} (partition {partition})"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks every constraint QuickSight enforces on the input, in member order.
    ///
    /// # Errors
    /// The first violated constraint, naming the member by its QuickSight path.
    pub fn validate(&self) -> Result<(), Violation> {
        check_account(self.aws_account_id())?;
        match self {
            EmbedRequest::Dashboard(r) => validate_dashboard(r),
            EmbedRequest::Anonymous(r) => validate_anonymous(r),
            EmbedRequest::Registered(r) => validate_registered(r),
        }
    }
}
#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

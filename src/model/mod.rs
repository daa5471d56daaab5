//! QuickSight's embed-URL request shapes and the constraints QuickSight enforces on them.
//!
//! Both sides of embedgate use this module: the simulator parses the wire into these types and
//! answers violations with QuickSight's error codes; the gateway parses its native API bodies (which
//! use the same PascalCase member names) into them and rejects violations before anything upstream
//! is touched. Keeping one copy of the rules is what makes "the gateway rejects exactly what
//! QuickSight would" true by construction.
//!
//! What this module does not own: tenant policy (see `tenant`), registry lookups such as "does this
//! dashboard exist" (the simulator's registry, or QuickSight itself), and the HTTP encoding.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Shortest and longest session QuickSight accepts, in minutes.
pub const SESSION_LIFETIME_MINUTES: std::ops::RangeInclusive<i64> = 15..=600;
/// An embed URL must be redeemed within this many seconds of being issued.
pub const URL_VALIDITY_SECS: u64 = 300;

/// The three embed-URL operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Operation {
    GetDashboardEmbedUrl,
    GenerateEmbedUrlForAnonymousUser,
    GenerateEmbedUrlForRegisteredUser,
}

impl Operation {
    pub const ALL: [Operation; 3] = [
        Operation::GetDashboardEmbedUrl,
        Operation::GenerateEmbedUrlForAnonymousUser,
        Operation::GenerateEmbedUrlForRegisteredUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::GetDashboardEmbedUrl => "GetDashboardEmbedUrl",
            Operation::GenerateEmbedUrlForAnonymousUser => "GenerateEmbedUrlForAnonymousUser",
            Operation::GenerateEmbedUrlForRegisteredUser => "GenerateEmbedUrlForRegisteredUser",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `EmbeddingIdentityType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum IdentityType {
    Iam,
    Quicksight,
    Anonymous,
}

impl IdentityType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityType::Iam => "IAM",
            IdentityType::Quicksight => "QUICKSIGHT",
            IdentityType::Anonymous => "ANONYMOUS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IAM" => Some(IdentityType::Iam),
            "QUICKSIGHT" => Some(IdentityType::Quicksight),
            "ANONYMOUS" => Some(IdentityType::Anonymous),
            _ => None,
        }
    }
}

/// GetDashboardEmbedUrl's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardEmbedRequest {
    #[serde(default)]
    pub aws_account_id: String,
    pub dashboard_id: String,
    pub identity_type: IdentityType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_lifetime_in_minutes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_redo_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_persistence_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_dashboard_ids: Option<Vec<String>>,
}

impl DashboardEmbedRequest {
    /// A request with only the required members set.
    pub fn new(
        aws_account_id: impl Into<String>,
        dashboard_id: impl Into<String>,
        identity_type: IdentityType,
    ) -> Self {
        DashboardEmbedRequest {
            aws_account_id: aws_account_id.into(),
            dashboard_id: dashboard_id.into(),
            identity_type,
            session_lifetime_in_minutes: None,
            undo_redo_disabled: None,
            reset_disabled: None,
            state_persistence_enabled: None,
            user_arn: None,
            namespace: None,
            additional_dashboard_ids: None,
        }
    }
}

/// `SessionTag`: row-level-security tag for anonymous embedding. The value is sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "PascalCase")]
pub struct SessionTag {
    pub key: String,
    pub value: String,
}

/// `DashboardVisualId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardVisualId {
    pub dashboard_id: String,
    pub sheet_id: String,
    pub visual_id: String,
}

/// `AnonymousUserEmbeddingExperienceConfiguration`: exactly one member is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AnonymousExperience {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<AnonymousDashboard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_visual: Option<DashboardVisual>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "QSearchBar"
    )]
    pub q_search_bar: Option<TopicRequired>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "GenerativeQnA"
    )]
    pub generative_qna: Option<TopicRequired>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AnonymousDashboard {
    pub initial_dashboard_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_configurations: Option<AnonymousFeatures>,
}

/// `{ "Enabled": bool }`, the shape of every feature switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Toggle {
    pub enabled: bool,
}

/// `AnonymousUserDashboardFeatureConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AnonymousFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_view: Option<Toggle>,
}

/// `RegisteredUserDashboardFeatureConfigurations` (the switches embedgate passes on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_persistence: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookmarks: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_view: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_snapshots: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_alerts: Option<Toggle>,
}

/// `RegisteredUserConsoleFeatureConfigurations` (the switches embedgate passes on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_persistence: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_view: Option<Toggle>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardVisual {
    pub initial_dashboard_visual_id: DashboardVisualId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TopicRequired {
    pub initial_topic_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TopicOptional {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_topic_id: Option<String>,
}

/// GenerateEmbedUrlForAnonymousUser's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AnonymousEmbedRequest {
    #[serde(default)]
    pub aws_account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_lifetime_in_minutes: Option<i64>,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_tags: Option<Vec<SessionTag>>,
    pub authorized_resource_arns: Vec<String>,
    pub experience_configuration: AnonymousExperience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_domains: Option<Vec<String>>,
}

/// `RegisteredUserEmbeddingExperienceConfiguration`: exactly one member is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RegisteredExperience {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<RegisteredDashboard>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "QuickSightConsole"
    )]
    pub quicksight_console: Option<Console>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "QSearchBar"
    )]
    pub q_search_bar: Option<TopicOptional>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_visual: Option<DashboardVisual>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "GenerativeQnA"
    )]
    pub generative_qna: Option<TopicOptional>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisteredDashboard {
    pub initial_dashboard_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_configurations: Option<DashboardFeatures>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Console {
    pub initial_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_configurations: Option<ConsoleFeatures>,
}

/// GenerateEmbedUrlForRegisteredUser's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisteredEmbedRequest {
    #[serde(default)]
    pub aws_account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_lifetime_in_minutes: Option<i64>,
    pub user_arn: String,
    pub experience_configuration: RegisteredExperience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_domains: Option<Vec<String>>,
}

/// One embed-URL request of any of the three operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedRequest {
    Dashboard(DashboardEmbedRequest),
    Anonymous(AnonymousEmbedRequest),
    Registered(RegisteredEmbedRequest),
}

/// What the embed URL opens, as far as the simulator's URL path and a tenant policy care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Experience {
    Dashboard(String),
    Visual {
        dashboard: String,
        sheet: String,
        visual: String,
    },
    Console(String),
    QSearch,
    GenerativeQnA,
}

impl EmbedRequest {
    pub fn operation(&self) -> Operation {
        match self {
            EmbedRequest::Dashboard(_) => Operation::GetDashboardEmbedUrl,
            EmbedRequest::Anonymous(_) => Operation::GenerateEmbedUrlForAnonymousUser,
            EmbedRequest::Registered(_) => Operation::GenerateEmbedUrlForRegisteredUser,
        }
    }

    pub fn aws_account_id(&self) -> &str {
        match self {
            EmbedRequest::Dashboard(r) => &r.aws_account_id,
            EmbedRequest::Anonymous(r) => &r.aws_account_id,
            EmbedRequest::Registered(r) => &r.aws_account_id,
        }
    }

    pub fn set_aws_account_id(&mut self, account: String) {
        match self {
            EmbedRequest::Dashboard(r) => r.aws_account_id = account,
            EmbedRequest::Anonymous(r) => r.aws_account_id = account,
            EmbedRequest::Registered(r) => r.aws_account_id = account,
        }
    }

    /// The identity the URL embeds as.
    pub fn identity_type(&self) -> IdentityType {
        match self {
            EmbedRequest::Dashboard(r) => r.identity_type,
            EmbedRequest::Anonymous(_) => IdentityType::Anonymous,
            EmbedRequest::Registered(_) => IdentityType::Quicksight,
        }
    }

    pub fn user_arn(&self) -> Option<&str> {
        match self {
            EmbedRequest::Dashboard(r) => r.user_arn.as_deref(),
            EmbedRequest::Anonymous(_) => None,
            EmbedRequest::Registered(r) => Some(&r.user_arn),
        }
    }

    /// The namespace named by the request: explicitly, or through the user ARN.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            EmbedRequest::Dashboard(r) => r.namespace.as_deref().or_else(|| {
                r.user_arn
                    .as_deref()
                    .and_then(|a| UserArn::parse(a).map(|u| u.namespace))
            }),
            EmbedRequest::Anonymous(r) => Some(&r.namespace),
            EmbedRequest::Registered(r) => UserArn::parse(&r.user_arn).map(|u| u.namespace),
        }
    }

    pub fn session_tags(&self) -> &[SessionTag] {
        match self {
            EmbedRequest::Anonymous(r) => r.session_tags.as_deref().unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Every dashboard the URL gives access to (initial, additional, authorized).
    pub fn dashboard_ids(&self) -> Vec<&str> {
        match self {
            EmbedRequest::Dashboard(r) => {
                let mut ids = vec![r.dashboard_id.as_str()];
                ids.extend(
                    r.additional_dashboard_ids
                        .iter()
                        .flatten()
                        .map(String::as_str),
                );
                ids
            }
            EmbedRequest::Anonymous(r) => {
                let mut ids: Vec<&str> = vec![];
                ids.extend(
                    r.authorized_resource_arns
                        .iter()
                        .filter_map(|a| dashboard_id_of_arn(a)),
                );
                if let Some(d) = &r.experience_configuration.dashboard {
                    ids.push(&d.initial_dashboard_id);
                }
                if let Some(v) = &r.experience_configuration.dashboard_visual {
                    ids.push(&v.initial_dashboard_visual_id.dashboard_id);
                }
                ids
            }
            EmbedRequest::Registered(r) => {
                let x = &r.experience_configuration;
                let mut ids = vec![];
                if let Some(d) = &x.dashboard {
                    ids.push(d.initial_dashboard_id.as_str());
                }
                if let Some(v) = &x.dashboard_visual {
                    ids.push(v.initial_dashboard_visual_id.dashboard_id.as_str());
                }
                if let Some(c) = &x.quicksight_console {
                    if let Some(id) = c.initial_path.strip_prefix("/dashboards/") {
                        ids.push(id);
                    }
                }
                ids
            }
        }
    }

    /// What the URL opens. Call after [`EmbedRequest::validate`]: an invalid request may have no
    /// experience, in which case this falls back to the console start page.
    pub fn experience(&self) -> Experience {
        match self {
            EmbedRequest::Dashboard(r) => Experience::Dashboard(r.dashboard_id.clone()),
            EmbedRequest::Anonymous(r) => {
                let x = &r.experience_configuration;
                if let Some(d) = &x.dashboard {
                    Experience::Dashboard(d.initial_dashboard_id.clone())
                } else if let Some(v) = &x.dashboard_visual {
                    visual(&v.initial_dashboard_visual_id)
                } else if x.q_search_bar.is_some() {
                    Experience::QSearch
                } else {
                    Experience::GenerativeQnA
                }
            }
            EmbedRequest::Registered(r) => {
                let x = &r.experience_configuration;
                if let Some(d) = &x.dashboard {
                    Experience::Dashboard(d.initial_dashboard_id.clone())
                } else if let Some(v) = &x.dashboard_visual {
                    visual(&v.initial_dashboard_visual_id)
                } else if let Some(c) = &x.quicksight_console {
                    Experience::Console(c.initial_path.clone())
                } else if x.q_search_bar.is_some() {
                    Experience::QSearch
                } else if x.generative_qna.is_some() {
                    Experience::GenerativeQnA
                } else {
                    Experience::Console("/start".into())
                }
            }
        }
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

fn visual(v: &DashboardVisualId) -> Experience {
    Experience::Visual {
        dashboard: v.dashboard_id.clone(),
        sheet: v.sheet_id.clone(),
        visual: v.visual_id.clone(),
    }
}

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

fn is_word_or_dash(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `ShortRestrictiveResourceId`: 1–512 characters of `[\w\-]`.
fn check_resource_id(field: &str, id: &str, max: usize) -> Result<(), Violation> {
    if id.is_empty() || id.len() > max || !is_word_or_dash(id) {
        return Err(Violation::invalid(
            field,
            format!("must be 1-{max} characters of letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

fn check_account(id: &str) -> Result<(), Violation> {
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
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
fn check_namespace(field: &str, ns: &str) -> Result<(), Violation> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Violation::invalid(
            field,
            "must be 1-64 characters of letters, digits, '.', '_' and '-'",
        ))
    }
}

/// A parsed QuickSight user ARN: `arn:<partition>:quicksight:<region>:<account>:user/<ns>/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserArn<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub namespace: &'a str,
    pub user_name: &'a str,
}

impl<'a> UserArn<'a> {
    pub fn parse(arn: &'a str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (arn_lit, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if arn_lit != "arn" || service != "quicksight" || partition.is_empty() || region.is_empty()
        {
            return None;
        }
        check_account(account).ok()?;
        let rest = resource.strip_prefix("user/")?;
        let (namespace, user_name) = rest.split_once('/')?;
        check_namespace("", namespace).ok()?;
        // IAM role-session users are named `Role/Session`, so the name may itself contain '/'.
        let name_ok = !user_name.is_empty()
            && user_name
                .chars()
                .all(|c| ('\u{20}'..='\u{ff}').contains(&c));
        name_ok.then_some(UserArn {
            partition,
            region,
            account,
            namespace,
            user_name,
        })
    }
}

fn check_user_arn<'a>(field: &str, arn: &'a str, account: &str) -> Result<UserArn<'a>, Violation> {
    let parsed = UserArn::parse(arn).ok_or_else(|| {
        Violation::invalid(
            field,
            "must be a QuickSight user ARN: arn:aws:quicksight:<region>:<account>:user/<namespace>/<user>",
        )
    })?;
    if parsed.account != account {
        return Err(Violation::invalid(field, "must belong to AwsAccountId"));
    }
    Ok(parsed)
}

/// The dashboard id of `arn:<partition>:quicksight:<region>:<account>:dashboard/<id>`.
pub fn dashboard_id_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let _partition = parts.next()?;
    if parts.next()? != "quicksight" {
        return None;
    }
    let _region = parts.next()?;
    let _account = parts.next()?;
    parts.next()?.strip_prefix("dashboard/")
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
        let host = d
            .strip_prefix("https://")
            .or_else(|| d.strip_prefix("http://localhost").map(|_| "localhost"));
        let host = host.map(|h| h.strip_prefix("*.").unwrap_or(h));
        let ok = host.is_some_and(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        });
        if !ok {
            return Err(Violation::invalid(
                format!("AllowedDomains[{i}]"),
                "must be an https:// origin (optionally https://*.domain) or http://localhost",
            ));
        }
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
            check_user_arn("UserArn", arn, &r.aws_account_id)?;
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

fn validate_anonymous(r: &AnonymousEmbedRequest) -> Result<(), Violation> {
    check_lifetime(r.session_lifetime_in_minutes)?;
    check_namespace("Namespace", &r.namespace)?;
    if let Some(tags) = &r.session_tags {
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
        }
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
    for (i, arn) in r.authorized_resource_arns.iter().enumerate() {
        if !arn.starts_with("arn:") || arn.len() > 2048 {
            return Err(Violation::invalid(
                format!("AuthorizedResourceArns[{i}]"),
                "must be an ARN",
            ));
        }
    }
    if let Some(initial) = initial_dashboard {
        if !r
            .authorized_resource_arns
            .iter()
            .any(|a| dashboard_id_of_arn(a) == Some(initial))
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
            + usize::from(x.generative_qna.is_some()),
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
    if let Some(c) = &x.quicksight_console {
        let p = c.initial_path.as_str();
        let ok = p.len() <= 1000
            && (CONSOLE_START_PATHS.contains(&p)
                || p.strip_prefix("/dashboards/")
                    .is_some_and(|id| !id.is_empty() && is_word_or_dash(id))
                || p.strip_prefix("/analyses/")
                    .is_some_and(|id| !id.is_empty() && is_word_or_dash(id)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dash(identity: IdentityType) -> DashboardEmbedRequest {
        DashboardEmbedRequest::new("111122223333", "sales-2024", identity)
    }

    #[test]
    fn quicksight_identity_requires_a_user_arn_of_the_same_account() {
        let mut r = dash(IdentityType::Quicksight);
        assert_eq!(
            EmbedRequest::Dashboard(r.clone())
                .validate()
                .unwrap_err()
                .field,
            "UserArn"
        );
        r.user_arn = Some("arn:aws:quicksight:us-east-1:999999999999:user/default/alice".into());
        let err = EmbedRequest::Dashboard(r.clone()).validate().unwrap_err();
        assert_eq!(err.rule, "must belong to AwsAccountId");
        r.user_arn = Some("arn:aws:quicksight:us-east-1:111122223333:user/default/alice".into());
        assert_eq!(EmbedRequest::Dashboard(r).validate(), Ok(()));
    }

    #[test]
    fn lifetime_outside_15_to_600_is_its_own_error() {
        for (m, ok) in [(14, false), (15, true), (600, true), (601, false)] {
            let mut r = dash(IdentityType::Iam);
            r.session_lifetime_in_minutes = Some(m);
            let res = EmbedRequest::Dashboard(r).validate();
            assert_eq!(res.is_ok(), ok, "{m}");
            if let Err(v) = res {
                assert_eq!(v.kind, ViolationKind::SessionLifetime);
            }
        }
    }

    #[test]
    fn additional_dashboards_only_with_anonymous_and_at_most_twenty() {
        let mut r = dash(IdentityType::Iam);
        r.additional_dashboard_ids = Some(vec!["a".into()]);
        assert_eq!(
            EmbedRequest::Dashboard(r.clone())
                .validate()
                .unwrap_err()
                .field,
            "AdditionalDashboardIds"
        );
        r.identity_type = IdentityType::Anonymous;
        assert!(EmbedRequest::Dashboard(r.clone()).validate().is_ok());
        r.additional_dashboard_ids = Some((0..21).map(|i| format!("d{i}")).collect());
        assert!(EmbedRequest::Dashboard(r).validate().is_err());
    }

    #[test]
    fn dashboard_ids_are_ascii_word_characters_only() {
        for (id, ok) in [
            ("sales_2024-x", true),
            ("", false),
            ("a/b", false),
            ("é", false),
            ("a b", false),
        ] {
            let mut r = dash(IdentityType::Iam);
            r.dashboard_id = id.into();
            assert_eq!(EmbedRequest::Dashboard(r).validate().is_ok(), ok, "{id:?}");
        }
        let mut r = dash(IdentityType::Iam);
        r.dashboard_id = "x".repeat(513);
        assert!(EmbedRequest::Dashboard(r).validate().is_err());
    }

    #[test]
    fn anonymous_request_must_authorize_its_initial_dashboard() {
        let body = serde_json::json!({
            "AwsAccountId": "111122223333",
            "Namespace": "default",
            "AuthorizedResourceArns": ["arn:aws:quicksight:us-east-1:111122223333:dashboard/other"],
            "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}}
        });
        let mut r: AnonymousEmbedRequest = serde_json::from_value(body).unwrap();
        let err = EmbedRequest::Anonymous(r.clone()).validate().unwrap_err();
        assert_eq!(err.field, "AuthorizedResourceArns");
        r.authorized_resource_arns
            .push("arn:aws:quicksight:us-east-1:111122223333:dashboard/sales-2024".into());
        assert!(EmbedRequest::Anonymous(r).validate().is_ok());
    }

    #[test]
    fn experience_configuration_needs_exactly_one_member() {
        let r = RegisteredEmbedRequest {
            aws_account_id: "111122223333".into(),
            session_lifetime_in_minutes: None,
            user_arn: "arn:aws:quicksight:us-east-1:111122223333:user/default/alice".into(),
            experience_configuration: RegisteredExperience::default(),
            allowed_domains: None,
        };
        assert_eq!(
            EmbedRequest::Registered(r).validate().unwrap_err().field,
            "ExperienceConfiguration"
        );
    }

    #[test]
    fn allowed_domains_must_be_https_or_localhost_and_at_most_three() {
        for (d, ok) in [
            ("https://app.example.com", true),
            ("https://*.example.com", true),
            ("http://localhost:3000", true),
            ("http://app.example.com", false),
            ("app.example.com", false),
        ] {
            assert_eq!(
                check_allowed_domains(Some(&[d.to_string()])).is_ok(),
                ok,
                "{d}"
            );
        }
        let four: Vec<String> = (0..4)
            .map(|i| format!("https://a{i}.example.com"))
            .collect();
        assert!(check_allowed_domains(Some(&four)).is_err());
    }

    #[test]
    fn user_arns_with_role_session_names_parse() {
        let a =
            UserArn::parse("arn:aws:quicksight:us-east-1:111122223333:user/default/Role/Session")
                .unwrap();
        assert_eq!(a.user_name, "Role/Session");
        assert_eq!(a.namespace, "default");
        assert!(UserArn::parse("arn:aws:iam::111122223333:user/alice").is_none());
    }
}

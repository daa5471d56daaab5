//! QuickSight's embed-URL request shapes: every input member of the three operations in
//! `aws-sdk-quicksight` 1.166 (the version in Cargo.lock), with QuickSight's member names.
//!
//! Both sides of embedgate use this module: the simulator parses the wire into these types and
//! answers violations with QuickSight's error codes; the gateway parses its native API bodies (which
//! use the same PascalCase member names) into them and rejects violations before anything upstream
//! is touched. Keeping one copy of the rules is what makes "the gateway rejects exactly what
//! QuickSight would" true by construction.
//!
//! - [`validate`]: the constraints QuickSight enforces on these shapes.
//! - [`arn`]: QuickSight ARNs (users, dashboards, topics, …).
//! - [`domain`]: `AllowedDomains` entries, by AWS's rules for allow listing at runtime.
//! - [`names`]: the experience and feature names tenant policies use.
//!
//! What this module does not own: tenant policy (see `policy`), registry lookups such as "does
//! this dashboard exist" (the simulator's registry, or QuickSight itself), and the HTTP encoding.
//!
//! Adding a member: add it to its struct here; the compiler then points at every place that must
//! decide about it (the policy walk, the upstream mapping, the simulator's query parser for
//! GetDashboardEmbedUrl), because those destructure each struct without `..`.

pub mod arn;
pub mod domain;
pub mod names;
pub mod validate;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use validate::{Violation, ViolationKind};

/// Shortest and longest session QuickSight accepts, in minutes.
pub const SESSION_LIFETIME_MINUTES: std::ops::RangeInclusive<i64> = 15..=600;
/// The session lifetime QuickSight documents for an omitted `SessionLifetimeInMinutes`.
pub const DEFAULT_SESSION_LIFETIME_MINUTES: i64 = 600;
/// The namespace QuickSight uses when none is named.
pub const DEFAULT_NAMESPACE: &str = "default";
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

/// `{ "Enabled": bool }`, the shape of every feature switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Toggle {
    pub enabled: bool,
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

/// `AnonymousUserDashboardEmbeddingConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AnonymousDashboard {
    pub initial_dashboard_id: String,
    /// `SHARED_VIEW` is the only value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_features: Option<Vec<String>>,
    /// `SHARED_VIEW` is the only value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_configurations: Option<AnonymousFeatures>,
}

/// `AnonymousUserDashboardFeatureConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AnonymousFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_view: Option<Toggle>,
}

/// `RegisteredUserDashboardFeatureConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_persistence: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookmarks: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_view: Option<Toggle>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "AmazonQInQuickSight"
    )]
    pub amazon_q: Option<DashboardAmazonQ>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_snapshots: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_alerts: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_customization_summary: Option<Toggle>,
}

/// `AmazonQInQuickSightDashboardConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardAmazonQ {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executive_summary: Option<Toggle>,
}

/// `RegisteredUserConsoleFeatureConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleFeatures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_persistence: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_view: Option<Toggle>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "AmazonQInQuickSight"
    )]
    pub amazon_q: Option<ConsoleAmazonQ>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_snapshots: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_alerts: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_customization_summary: Option<Toggle>,
}

/// `AmazonQInQuickSightConsoleConfigurations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ConsoleAmazonQ {
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "DataQnA")]
    pub data_qna: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generative_authoring: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executive_summary: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_stories: Option<Toggle>,
}

/// `…DashboardVisualEmbeddingConfiguration` (anonymous and registered alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DashboardVisual {
    pub initial_dashboard_visual_id: DashboardVisualId,
}

/// An experience whose topic is required (anonymous Q bar and generative Q&A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TopicRequired {
    pub initial_topic_id: String,
}

/// An experience whose topic is optional (registered Q bar and generative Q&A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TopicOptional {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_topic_id: Option<String>,
}

/// `RegisteredUserQuickChatEmbeddingConfiguration`: an empty structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuickChat {}

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quick_chat: Option<QuickChat>,
}

/// `RegisteredUserDashboardEmbeddingConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisteredDashboard {
    pub initial_dashboard_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_configurations: Option<DashboardFeatures>,
}

/// `RegisteredUserQuickSightConsoleEmbeddingConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Console {
    /// Optional in the model: the console opens at `/start` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_path: Option<String>,
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

/// What the embed URL opens, as far as the simulator's URL path cares.
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
    QuickChat,
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

    fn aws_account_id_mut(&mut self) -> &mut String {
        match self {
            EmbedRequest::Dashboard(r) => &mut r.aws_account_id,
            EmbedRequest::Anonymous(r) => &mut r.aws_account_id,
            EmbedRequest::Registered(r) => &mut r.aws_account_id,
        }
    }

    pub fn set_aws_account_id(&mut self, account: String) {
        *self.aws_account_id_mut() = account;
    }

    fn session_lifetime_mut(&mut self) -> &mut Option<i64> {
        match self {
            EmbedRequest::Dashboard(r) => &mut r.session_lifetime_in_minutes,
            EmbedRequest::Anonymous(r) => &mut r.session_lifetime_in_minutes,
            EmbedRequest::Registered(r) => &mut r.session_lifetime_in_minutes,
        }
    }

    /// The session lifetime QuickSight will give the URL's session.
    pub fn session_lifetime(&self) -> i64 {
        match self {
            EmbedRequest::Dashboard(r) => r.session_lifetime_in_minutes,
            EmbedRequest::Anonymous(r) => r.session_lifetime_in_minutes,
            EmbedRequest::Registered(r) => r.session_lifetime_in_minutes,
        }
        .unwrap_or(DEFAULT_SESSION_LIFETIME_MINUTES)
    }

    /// Makes QuickSight's implicit defaults explicit, so that what is checked, keyed and sent is
    /// what QuickSight acts on: an omitted `SessionLifetimeInMinutes` becomes 600 (the documented
    /// default; the legacy operation's model text also says 15, so sending it removes the doubt),
    /// and GetDashboardEmbedUrl's omitted `Namespace` becomes `default`. The account default is
    /// the tenant's and is filled in by the gateway.
    pub fn resolve_defaults(&mut self) {
        self.session_lifetime_mut()
            .get_or_insert(DEFAULT_SESSION_LIFETIME_MINUTES);
        if let EmbedRequest::Dashboard(r) = self {
            r.namespace.get_or_insert_with(|| DEFAULT_NAMESPACE.into());
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

    /// The namespace the URL embeds in: the `Namespace` member (`default` when omitted), or the
    /// user ARN's for GenerateEmbedUrlForRegisteredUser.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            EmbedRequest::Dashboard(r) => Some(r.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)),
            EmbedRequest::Anonymous(r) => Some(&r.namespace),
            EmbedRequest::Registered(r) => arn::UserArn::parse(&r.user_arn).map(|u| u.namespace),
        }
    }

    /// Every dashboard the URL opens or authorizes (initial, additional, visual's, console
    /// path's, and dashboard ARNs).
    pub fn dashboard_ids(&self) -> Vec<&str> {
        match self {
            EmbedRequest::Dashboard(r) => std::iter::once(r.dashboard_id.as_str())
                .chain(
                    r.additional_dashboard_ids
                        .iter()
                        .flatten()
                        .map(String::as_str),
                )
                .collect(),
            EmbedRequest::Anonymous(r) => {
                let x = &r.experience_configuration;
                r.authorized_resource_arns
                    .iter()
                    .filter_map(|a| arn::Arn::parse(a))
                    .filter(|a| a.resource_type == "dashboard")
                    .map(|a| a.resource)
                    .chain(x.dashboard.iter().map(|d| d.initial_dashboard_id.as_str()))
                    .chain(
                        x.dashboard_visual
                            .iter()
                            .map(|v| v.initial_dashboard_visual_id.dashboard_id.as_str()),
                    )
                    .collect()
            }
            EmbedRequest::Registered(r) => {
                let x = &r.experience_configuration;
                x.dashboard
                    .iter()
                    .map(|d| d.initial_dashboard_id.as_str())
                    .chain(
                        x.dashboard_visual
                            .iter()
                            .map(|v| v.initial_dashboard_visual_id.dashboard_id.as_str()),
                    )
                    .chain(
                        x.quicksight_console.iter().filter_map(|c| {
                            c.initial_path.as_deref()?.strip_prefix("/dashboards/")
                        }),
                    )
                    .collect()
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
                    Experience::Console(c.initial_path.clone().unwrap_or_else(|| "/start".into()))
                } else if x.q_search_bar.is_some() {
                    Experience::QSearch
                } else if x.generative_qna.is_some() {
                    Experience::GenerativeQnA
                } else if x.quick_chat.is_some() {
                    Experience::QuickChat
                } else {
                    Experience::Console("/start".into())
                }
            }
        }
    }

    /// The request as QuickSight's JSON (the native API's body shape), for tests and the
    /// simulator's record of what it parsed.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            EmbedRequest::Dashboard(r) => serde_json::to_value(r),
            EmbedRequest::Anonymous(r) => serde_json::to_value(r),
            EmbedRequest::Registered(r) => serde_json::to_value(r),
        }
        .unwrap_or_default()
    }
}

fn visual(v: &DashboardVisualId) -> Experience {
    Experience::Visual {
        dashboard: v.dashboard_id.clone(),
        sheet: v.sheet_id.clone(),
        visual: v.visual_id.clone(),
    }
}

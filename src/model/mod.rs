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
//! - [`parse`]: the one strict body parser (gateway and simulator).
//!
//! What this module does not own: tenant policy (see `policy`), registry lookups such as "does
//! this dashboard exist" (the simulator's registry, or QuickSight itself), and the HTTP encoding.
//!
//! Adding a member: add it to its struct here; the compiler then points at every place that must
//! decide about it (the policy walk, the upstream mapping, the wire query parser for
//! GetDashboardEmbedUrl), because those destructure each struct without `..`.

pub mod arn;
pub mod domain;
pub mod names;
pub mod parse;
mod request;
pub(crate) mod shape;
pub mod validate;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use parse::{excerpt, parse_request, parse_tagged, parse_value, BadInput};
pub use request::{EmbedRequest, Experience};
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
    /// Not a QuickSight member: the native API's routing hint, the region of the upstream to
    /// use when the account is served in several (the gateway fills it in; never sent upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
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
            region: None,
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
    /// Not a QuickSight member: the native API's routing hint, the region of the upstream to
    /// use when the account is served in several (the gateway fills it in; never sent upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
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
    /// Not a QuickSight member: the native API's routing hint, the region of the upstream to
    /// use when the account is served in several (the gateway fills it in; never sent upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

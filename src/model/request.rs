//! One request of any of the three operations, and what every part of the gateway asks of it:
//! its operation, account, user, what it opens, and QuickSight's implicit defaults made explicit.

use super::*;

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

    /// The native API's `Region` routing member (not QuickSight's).
    pub fn region(&self) -> Option<&str> {
        match self {
            EmbedRequest::Dashboard(r) => r.region.as_deref(),
            EmbedRequest::Anonymous(r) => r.region.as_deref(),
            EmbedRequest::Registered(r) => r.region.as_deref(),
        }
    }

    pub fn set_region(&mut self, region: String) {
        let slot = match self {
            EmbedRequest::Dashboard(r) => &mut r.region,
            EmbedRequest::Anonymous(r) => &mut r.region,
            EmbedRequest::Registered(r) => &mut r.region,
        };
        *slot = Some(region);
    }

    /// Forgets the routing member (the QuickSight wire carries the region in the signature).
    pub fn clear_region(&mut self) {
        match self {
            EmbedRequest::Dashboard(r) => r.region = None,
            EmbedRequest::Anonymous(r) => r.region = None,
            EmbedRequest::Registered(r) => r.region = None,
        }
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

    /// The same request for another registered user of the same namespace: `None` unless the
    /// request embeds as a registered user (GetDashboardEmbedUrl with a `UserArn`, or
    /// GenerateEmbedUrlForRegisteredUser) and `user_arn` names a user of this request's account
    /// and namespace. Everything else (what it opens, features, lifetime, domains, region) is
    /// kept. The result still has to be admitted for the tenant (validation, policy).
    pub fn for_user(&self, user_arn: &str) -> Option<EmbedRequest> {
        let theirs = arn::UserArn::parse(user_arn)?;
        let mine = arn::UserArn::parse(self.user_arn()?)?;
        if (
            theirs.partition,
            theirs.region,
            theirs.account,
            theirs.namespace,
        ) != (mine.partition, mine.region, mine.account, mine.namespace)
            || Some(mine.namespace) != self.namespace()
        {
            return None;
        }
        let mut r = self.clone();
        match &mut r {
            EmbedRequest::Dashboard(d) => d.user_arn = Some(user_arn.to_string()),
            EmbedRequest::Registered(g) => g.user_arn = user_arn.to_string(),
            EmbedRequest::Anonymous(_) => return None,
        }
        Some(r)
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

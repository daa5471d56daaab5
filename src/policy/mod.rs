//! Tenant policy: what a tenant's URLs may grant. The gateway holds credentials that can mint a
//! URL for any user and dashboard of its accounts, so this is the product's security boundary.
//!
//! A request is checked *as QuickSight will read it*: the gateway resolves implicit defaults first
//! (see `EmbedRequest::resolve_defaults` and the tenant's default account) and validates it, then
//! [`Policy::authorize`] walks every member of the request. The walk destructures each request
//! struct without `..`, so a member added to the model does not compile until it is given a
//! decision here; each member either yields [`Grant`]s that the policy must allow, or is marked as
//! granting nothing, with the reason next to it. Anything a grant names that the policy has no rule
//! for is refused (deny by default).

mod walk;

use wildmatch::WildMatch;

use crate::config::{PolicySettings, TagRule};
use crate::model::domain::Origin;
pub use crate::model::names::{ExperienceKind, Feature};
use crate::model::*;
pub use walk::walk;

/// Something a URL would grant, named by one member of the request.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    Account(&'a str),
    Identity(IdentityType),
    Experience(ExperienceKind),
    Dashboard(&'a str),
    Topic(&'a str),
    Theme(&'a str),
    Namespace(&'a str),
    User(&'a str),
    Tag(&'a SessionTag),
    Domain(&'a str),
    Feature(Feature),
    /// An `AuthorizedResourceArns` entry of a type no policy rule covers.
    Resource(&'a str),
}

/// Where in the request a grant comes from: a member path, with `[]` standing for `index`.
#[derive(Debug, Clone, Copy)]
pub struct At(pub &'static str, pub Option<usize>);

impl At {
    fn render(self) -> String {
        match self.1 {
            Some(i) => self.0.replacen("[]", &format!("[{i}]"), 1),
            None => self.0.to_string(),
        }
    }
}

/// Why a request is outside its tenant's policy: which member, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub field: String,
    pub rule: String,
}

/// A tenant's policy, compiled from its settings.
#[derive(Debug)]
pub struct Policy {
    accounts: Vec<String>,
    dashboards: Vec<WildMatch>,
    topics: Vec<WildMatch>,
    themes: Vec<WildMatch>,
    namespaces: Vec<String>,
    identity_types: Vec<IdentityType>,
    user_arns: Vec<WildMatch>,
    session_tags: Vec<TagValues>,
    required_session_tags: Vec<String>,
    experiences: Vec<ExperienceKind>,
    denied_features: Vec<Feature>,
    /// Empty: the tenant may name no domain, so its URLs open only on the account's static allow
    /// list (`AllowedDomains` would replace that list, not narrow it).
    allowed_domains: Vec<Origin>,
    /// Upstream ids; empty: any upstream serving one of `accounts`.
    upstreams: Vec<String>,
}

fn patterns(list: &[String]) -> Vec<WildMatch> {
    list.iter().map(|p| WildMatch::new(p)).collect()
}

impl Policy {
    /// Compiles validated settings (see `Settings::validate`); entries that do not parse are
    /// dropped, which only narrows what is allowed.
    pub fn new(p: &PolicySettings, default_account: Option<&String>) -> Self {
        let mut accounts = p.accounts.clone();
        if accounts.is_empty() {
            accounts.extend(default_account.cloned());
        }
        Policy {
            accounts,
            dashboards: patterns(&p.dashboards),
            topics: patterns(&p.topics),
            themes: patterns(&p.themes),
            namespaces: p.namespaces.clone(),
            identity_types: p.identity_types.clone(),
            user_arns: patterns(&p.user_arns),
            session_tags: p
                .session_tags
                .iter()
                .map(|(key, values)| TagValues::new(key, values, p.session_tag_rules.get(key)))
                .collect(),
            required_session_tags: p.required_session_tags.clone(),
            experiences: p
                .experiences
                .iter()
                .filter_map(|e| ExperienceKind::parse(e))
                .collect(),
            denied_features: p
                .denied_features
                .iter()
                .filter_map(|f| Feature::parse(f))
                .collect(),
            allowed_domains: p
                .allowed_domains
                .iter()
                .filter_map(|d| Origin::parse(d).ok())
                .collect(),
            upstreams: p.upstreams.clone(),
        }
    }

    /// Whether the tenant may use the upstream named `id` (its account is checked apart).
    pub fn allows_upstream(&self, id: &str) -> bool {
        self.upstreams.is_empty() || self.upstreams.iter().any(|u| u == id)
    }

    /// The AWS accounts this policy allows.
    pub fn accounts(&self) -> &[String] {
        &self.accounts
    }

    /// Checks a resolved, validated request against the policy.
    ///
    /// # Errors
    /// The first member whose grant the policy does not allow.
    pub fn authorize(&self, req: &EmbedRequest) -> Result<(), Denied> {
        walk(req, &mut |grant, at| self.allows(grant, at))?;
        let domains_sent = match req {
            EmbedRequest::Dashboard(_) => None,
            EmbedRequest::Anonymous(r) => Some(r.allowed_domains.is_some()),
            EmbedRequest::Registered(r) => Some(r.allowed_domains.is_some()),
        };
        if !self.allowed_domains.is_empty() && domains_sent != Some(true) {
            // Without AllowedDomains the URL opens on any domain of the account's static allow
            // list, which this tenant's list does not bound.
            let (field, rule) = match domains_sent {
                None => ("Operation", "GetDashboardEmbedUrl cannot restrict the embedding domain, and this tenant's policy lists allowed domains"),
                Some(_) => ("AllowedDomains", "is required: this tenant's policy lists the domains its URLs may be embedded on"),
            };
            return deny(At(field, None), rule.to_string());
        }
        match req {
            EmbedRequest::Anonymous(r) => {
                let tags = r.session_tags.as_deref().unwrap_or(&[]);
                for key in &self.required_session_tags {
                    if !tags.iter().any(|t| &t.key == key) {
                        return deny(
                            At("SessionTags", None),
                            format!("must include the tag {key:?}"),
                        );
                    }
                }
            }
            // An anonymous GetDashboardEmbedUrl session carries no session tags (tag-based
            // row-level security works only for GenerateEmbedUrlForAnonymousUser).
            EmbedRequest::Dashboard(r) if r.identity_type == IdentityType::Anonymous => {
                if let Some(key) = self.required_session_tags.first() {
                    return deny(
                        At("IdentityType", None),
                        format!(
                            "ANONYMOUS through GetDashboardEmbedUrl carries no session tags, and \
                             this tenant's policy requires the tag {key:?}: use \
                             GenerateEmbedUrlForAnonymousUser"
                        ),
                    );
                }
            }
            EmbedRequest::Dashboard(_) | EmbedRequest::Registered(_) => {}
        }
        Ok(())
    }

    /// Whether the policy allows one grant. Every kind of grant has its own arm in both matches
    /// and neither has a catch-all, so a new kind does not compile until it has a rule. The
    /// refusal's words are built only on refusal.
    fn allows(&self, grant: Grant<'_>, at: At) -> Result<(), Denied> {
        let matches = |list: &[WildMatch], s: &str| list.iter().any(|m| m.matches(s));
        let allowed = match grant {
            Grant::Account(a) => self.accounts.iter().any(|x| x == a),
            Grant::Identity(i) => self.identity_types.contains(&i),
            Grant::Experience(e) => self.experiences.contains(&e),
            Grant::Dashboard(id) => matches(&self.dashboards, id),
            Grant::Topic(id) => matches(&self.topics, id),
            Grant::Theme(id) => matches(&self.themes, id),
            Grant::Namespace(ns) => self.namespaces.iter().any(|n| n == ns),
            Grant::User(arn) => matches(&self.user_arns, arn),
            Grant::Tag(tag) => self
                .session_tags
                .iter()
                .find(|t| t.key == tag.key)
                .is_some_and(|t| t.allows(&tag.value)),
            Grant::Domain(d) => Origin::parse(d)
                .is_ok_and(|requested| self.allowed_domains.iter().any(|p| p.allows(&requested))),
            Grant::Feature(f) => !self.denied_features.contains(&f),
            Grant::Resource(_) => false,
        };
        if allowed {
            return Ok(());
        }
        let rule = match grant {
            Grant::Account(_) => "is not an account this tenant may use".to_string(),
            Grant::Identity(i) => {
                format!(
                    "identity type {} is not allowed for this tenant",
                    i.as_str()
                )
            }
            Grant::Experience(e) => {
                format!(
                    "the {} experience is not allowed for this tenant",
                    e.as_str()
                )
            }
            Grant::Dashboard(id) => format!("dashboard {id:?} is not allowed for this tenant"),
            Grant::Topic(id) => format!("topic {id:?} is not allowed for this tenant"),
            Grant::Theme(id) => format!("theme {id:?} is not allowed for this tenant"),
            Grant::Namespace(ns) => format!("namespace {ns:?} is not allowed for this tenant"),
            Grant::User(_) => "is not a user this tenant may embed as".to_string(),
            Grant::Tag(tag) => format!(
                "tag {:?} with this value is not allowed for this tenant",
                tag.key
            ),
            Grant::Domain(d) if self.allowed_domains.is_empty() => format!(
                "domain {d:?} is not allowed for this tenant: its policy lists no allowed_domains, \
                 and AllowedDomains would replace the account's own allow list"
            ),
            Grant::Domain(d) => format!("domain {d:?} is not allowed for this tenant"),
            Grant::Feature(f) => {
                format!(
                    "the {} feature may not be enabled by this tenant",
                    f.as_str()
                )
            }
            Grant::Resource(t) => {
                format!("resources of type {t:?} are not allowed for this tenant")
            }
        };
        deny(at, rule)
    }
}

/// The values one session tag may take, read as the datasets' tag rule reads them.
#[derive(Debug)]
struct TagValues {
    key: String,
    patterns: Vec<WildMatch>,
    /// The rule's `TagMultiValueDelimiter`, if any.
    delimiter: Option<String>,
    /// The rule's `MatchAllValue`, if any, and whether a pattern allows it: a bare `*` or one
    /// written as the value itself (a wildcard that happens to match it does not).
    match_all: Option<(String, bool)>,
}

impl TagValues {
    fn new(key: &str, values: &[String], rule: Option<&TagRule>) -> Self {
        let set = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        let match_all = rule.and_then(|r| set(&r.match_all_value)).map(|all| {
            let allowed = values.iter().any(|v| v == "*" || *v == all);
            (all, allowed)
        });
        TagValues {
            key: key.to_string(),
            patterns: patterns(values),
            delimiter: rule.and_then(|r| set(&r.multi_value_delimiter)),
            match_all,
        }
    }

    /// Whether a value is allowed: each value QuickSight reads in it (one per part between
    /// delimiters) must match a pattern, and the match-all value must be allowed as written.
    fn allows(&self, value: &str) -> bool {
        let part = |part: &str| match &self.match_all {
            Some((all, allowed)) if all == part => *allowed,
            _ => self.patterns.iter().any(|m| m.matches(part)),
        };
        match &self.delimiter {
            Some(d) => value.split(d.as_str()).all(part),
            None => part(value),
        }
    }
}

pub(super) fn deny(at: At, rule: String) -> Result<(), Denied> {
    Err(Denied {
        field: at.render(),
        rule,
    })
}

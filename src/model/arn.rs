//! QuickSight ARNs: `arn:<partition>:quicksight:<region>:<account>:<type>/<id>`.
//!
//! Parsing only splits and checks the fixed parts; which partitions, regions, accounts, types
//! and ids a request may name is decided by validation (QuickSight's rules) and the tenant
//! policy. Every field is kept, so no check can skip one.

/// A parsed QuickSight ARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// `dashboard`, `topic`, `user`, `theme`, …
    pub resource_type: &'a str,
    /// Everything after `<type>/`.
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    /// Splits a QuickSight ARN; `None` for anything that is not `arn:*:quicksight:*:*:type/id`
    /// with non-empty partition, region, account, type and id.
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
        if arn_lit != "arn" || service != "quicksight" {
            return None;
        }
        let (resource_type, id) = resource.split_once('/')?;
        let parts = [partition, region, account, resource_type, id];
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(Arn {
            partition,
            region,
            account,
            resource_type,
            resource: id,
        })
    }
}

/// A QuickSight user ARN: `arn:<partition>:quicksight:<region>:<account>:user/<ns>/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserArn<'a> {
    pub partition: &'a str,
    /// The account's identity region (it may differ from the region that embeds).
    pub region: &'a str,
    pub account: &'a str,
    pub namespace: &'a str,
    pub user_name: &'a str,
}

impl<'a> UserArn<'a> {
    pub fn parse(arn: &'a str) -> Option<Self> {
        let a = Arn::parse(arn)?;
        if a.resource_type != "user" || !super::validate::is_account_id(a.account) {
            return None;
        }
        let (namespace, user_name) = a.resource.split_once('/')?;
        if !super::validate::is_namespace(namespace) {
            return None;
        }
        // IAM role-session users are named `Role/Session`, so the name may itself contain '/'.
        let name_ok = !user_name.is_empty()
            && user_name
                .chars()
                .all(|c| ('\u{20}'..='\u{ff}').contains(&c));
        name_ok.then_some(UserArn {
            partition: a.partition,
            region: a.region,
            account: a.account,
            namespace,
            user_name,
        })
    }
}

/// The AWS partition a region belongs to (`aws`, `aws-cn`, `aws-us-gov`, …).
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("eu-isoe-") {
        "aws-iso-e"
    } else if region.starts_with("us-isof-") {
        "aws-iso-f"
    } else {
        "aws"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_a_resource_arn_is_kept() {
        let a = Arn::parse("arn:aws-cn:quicksight:cn-north-1:111122223333:topic/t-1").unwrap();
        assert_eq!(
            (
                a.partition,
                a.region,
                a.account,
                a.resource_type,
                a.resource
            ),
            ("aws-cn", "cn-north-1", "111122223333", "topic", "t-1")
        );
        for bad in [
            "arn:aws:s3:::bucket/key",
            "arn:aws:quicksight:us-east-1:111122223333:dashboard",
            "arn:aws:quicksight:us-east-1:111122223333:dashboard/",
            "arn::quicksight:us-east-1:111122223333:dashboard/d",
            "arn:aws:quicksight::111122223333:dashboard/d",
            "urn:aws:quicksight:us-east-1:111122223333:dashboard/d",
        ] {
            assert!(Arn::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn user_arns_with_role_session_names_parse() {
        let a =
            UserArn::parse("arn:aws:quicksight:us-east-1:111122223333:user/default/Role/Session")
                .unwrap();
        assert_eq!(a.user_name, "Role/Session");
        assert_eq!(a.namespace, "default");
        assert!(UserArn::parse("arn:aws:iam::111122223333:user/alice").is_none());
        assert!(
            UserArn::parse("arn:aws:quicksight:us-east-1:111122223333:dashboard/x/y").is_none()
        );
    }

    #[test]
    fn regions_map_to_their_partitions() {
        assert_eq!(partition_of("us-east-1"), "aws");
        assert_eq!(partition_of("eu-west-1"), "aws");
        assert_eq!(partition_of("cn-northwest-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
    }
}

//! A minimal STS: `AssumeRole` over the query protocol the SDKs use (`POST /`, form body,
//! SigV4 for service `sts`), answering temporary credentials with a session token and an expiry.
//! Calls signed with them are verified including the token, only for the role's account, and
//! refused once they expire (`ExpiredTokenException`).
//!
//! Differences from AWS, on purpose: `DurationSeconds` may be as short as 1 s (AWS: 900) so tests
//! can outlive their credentials; trust is configured per role (`trusted_keys`, `external_id`)
//! instead of with a trust policy document.

use std::time::{Duration, SystemTime};

use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::Simulator;

/// One role the simulator's test keys may assume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    /// `arn:aws:iam::<account>:role/<name>`: its credentials may call that account only.
    pub arn: String,
    /// When set, `AssumeRole` must send exactly this `ExternalId`.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Access key ids allowed to assume it; empty: every configured test key.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

/// Temporary credentials issued by `AssumeRole`.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub secret: String,
    pub token: String,
    pub expires: SystemTime,
}

/// The account of a role ARN (`arn:aws:iam::<account>:role/<name>`).
pub fn role_account(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:aws:iam::")?;
    let (account, role) = rest.split_once(":role/")?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && !role.is_empty())
        .then_some(account)
}

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An STS error in the query protocol's XML.
fn error(status: u16, code: &str, message: &str, request_id: &str) -> HttpResponse {
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let body = format!(
        "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
        xml_escape(message)
    );
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    )
    .insert_header(("x-amzn-RequestId", request_id))
    .content_type("text/xml")
    .body(body)
}

fn random_key(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let tail: String = (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

impl Simulator {
    /// Issues temporary credentials for `role` lasting `duration`, callable for its account only.
    fn start_session(&self, account: &str, duration: Duration) -> (String, Session) {
        let now = self.now();
        let key = random_key("ASIA", 16);
        let session = Session {
            secret: random_b64(30),
            token: random_b64(96),
            expires: now + duration,
        };
        let mut sessions = self.sessions.write();
        // Forget sessions expired for a minute (they can never verify again), and their account
        // restrictions with them, so a long run of refreshes stays bounded.
        let mut gone = vec![];
        sessions.retain(|k, s| {
            let keep = s.expires + Duration::from_secs(60) > now;
            if !keep {
                gone.push(k.clone());
            }
            keep
        });
        sessions.insert(key.clone(), session.clone());
        drop(sessions);
        self.forget_keys(&gone);
        self.restrict_key(&key, &[account]);
        (key, session)
    }
}

/// `POST /` with `Action=AssumeRole`.
pub(crate) fn handle(sim: &Simulator, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let request_id = uuid::Uuid::new_v4().to_string();
    let caller = if sim.settings().verify_signatures {
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let incoming = crate::sigv4::Incoming {
            method: req.method().as_str(),
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers,
            body,
        };
        match sim.verify("sts", &incoming) {
            Ok(v) => Some(v.access_key),
            Err(e) => {
                sim.ledger_mut().unauthenticated();
                return error(e.status(), e.code(), &e.message(), &request_id);
            }
        }
    } else {
        None
    };
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body).into_owned().collect();
    let param = |k: &str| params.get(k).map(String::as_str);
    match param("Action") {
        Some("AssumeRole") => {}
        Some(other) => {
            return error(
                400,
                "InvalidAction",
                &format!("Could not find operation {other} for version 2011-06-15"),
                &request_id,
            )
        }
        None => return error(400, "MissingAction", "Missing Action", &request_id),
    }
    let (Some(arn), Some(session_name)) = (param("RoleArn"), param("RoleSessionName")) else {
        return error(
            400,
            "ValidationError",
            "RoleArn and RoleSessionName are required",
            &request_id,
        );
    };
    let duration = match param("DurationSeconds").map(str::parse::<u64>) {
        None => 3600,
        Some(Ok(d)) if (1..=43_200).contains(&d) => d,
        Some(_) => {
            return error(
                400,
                "ValidationError",
                "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint: Member must have value between 1 and 43200",
                &request_id,
            )
        }
    };
    let denied = |why: &str| {
        sim.ledger_mut().assumed(false);
        tracing::debug!(role = arn, why, "simulator refused AssumeRole");
        error(
            403,
            "AccessDenied",
            &format!(
                "User: arn:aws:iam::{}:user/{} is not authorized to perform: sts:AssumeRole on resource: {arn}",
                super::DEFAULT_ACCOUNT_ID,
                caller.as_deref().unwrap_or("anonymous")
            ),
            &request_id,
        )
    };
    let Some(role) = sim.settings().roles.iter().find(|r| r.arn == arn) else {
        return denied("no such role");
    };
    let trusted = role.trusted_keys.is_empty()
        || caller
            .as_deref()
            .is_some_and(|c| role.trusted_keys.iter().any(|k| k == c));
    if !trusted {
        return denied("the caller is not trusted by the role");
    }
    if role.external_id.is_some() && role.external_id.as_deref() != param("ExternalId") {
        return denied("wrong or missing external id");
    }
    let account = role_account(&role.arn).unwrap_or_default().to_string();
    let (key, session) = sim.start_session(&account, Duration::from_secs(duration));
    sim.ledger_mut().assumed(true);
    let expiration = time::OffsetDateTime::from(session.expires)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let role_name = role.arn.rsplit('/').next().unwrap_or_default();
    let body = format!(
        "<AssumeRoleResponse xmlns=\"{XMLNS}\"><AssumeRoleResult><Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>{expiration}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROA{}:{}</AssumedRoleId><Arn>arn:aws:sts::{account}:assumed-role/{}/{}</Arn></AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></AssumeRoleResponse>",
        session.secret,
        session.token,
        random_key("", 17),
        xml_escape(session_name),
        xml_escape(role_name),
        xml_escape(session_name),
    );
    HttpResponse::Ok()
        .insert_header(("x-amzn-RequestId", request_id.as_str()))
        .content_type("text/xml")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_sessions_are_forgotten_with_their_account_restriction() {
        let sim = Simulator::new(super::super::SimSettings::default());
        let (old, _) = sim.start_session("111122223333", Duration::from_secs(1));
        assert!(sim.key(&old).is_some());
        assert!(
            !sim.key_may_call(&old, "444455556666"),
            "bound to its role's account"
        );
        // Two minutes later the next session sweeps the expired one out.
        sim.update_knobs(&serde_json::json!({"clock_offset_secs": 120.0}))
            .unwrap();
        let (new, _) = sim.start_session("111122223333", Duration::from_secs(60));
        assert!(sim.key(&old).is_none() && sim.key(&new).is_some());
        assert!(!sim.key_accounts.read().contains_key(&old));
        assert_eq!(sim.sessions.read().len(), 1);
    }

    #[test]
    fn role_arns_name_their_account() {
        assert_eq!(
            role_account("arn:aws:iam::444455556666:role/qs-embed"),
            Some("444455556666")
        );
        assert_eq!(role_account("arn:aws:iam::4444:role/x"), None);
        assert_eq!(role_account("arn:aws:iam::444455556666:user/x"), None);
        assert_eq!(role_account("arn:aws:iam::444455556666:role/"), None);
    }
}

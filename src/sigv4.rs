//! SigV4 verification, for the simulator (the gateway's upstream and STS calls) and for the
//! gateway's QuickSight-compatible listener (tenants' access keys).
//!
//! We do not re-implement canonicalisation: the request is signed again with AWS's own signer
//! (`aws-sigv4`, the crate the Rust SDK signs with) using the configured secret, the client's
//! timestamp and exactly the headers the client says it signed, and the two signatures are compared
//! in constant time. Both SDKs sign restJson1 requests the same way (double URI encoding, normalised
//! path, no `x-amz-content-sha256`), so one set of signing settings verifies both.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use subtle::ConstantTimeEq;
use time::{
    format_description::FormatItem, macros::format_description, OffsetDateTime, PrimitiveDateTime,
};

/// `20250101T000000Z`
const AMZ_DATE: &[FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// Headers the verification reads, each of which a request may carry at most once.
const ONCE: [&str; 4] = [
    "Authorization",
    "X-Amz-Date",
    "X-Amz-Security-Token",
    "Host",
];

/// Why a request's signature was refused, with the code and status AWS uses for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// The header or the date is malformed.
    Incomplete(String),
    /// The access key id is not one the verifier knows.
    UnknownAccessKey,
    /// Scope, clock skew or signature mismatch.
    Invalid(String),
    /// Temporary credentials past their expiry.
    ExpiredToken,
    /// Temporary credentials sent without their session token, or with another one.
    BadToken,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Incomplete(_) => 400,
            _ => 403,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnknownAccessKey => "UnrecognizedClientException",
            AuthError::Invalid(_) => "InvalidSignatureException",
            AuthError::ExpiredToken => "ExpiredTokenException",
            AuthError::BadToken => "UnrecognizedClientException",
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "Missing Authentication Token".into(),
            AuthError::Incomplete(m) | AuthError::Invalid(m) => m.clone(),
            AuthError::UnknownAccessKey | AuthError::BadToken => {
                "The security token included in the request is invalid.".into()
            }
            AuthError::ExpiredToken => {
                "The security token included in the request is expired".into()
            }
        }
    }
}

/// What the verifier knows of one access key.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub secret: String,
    /// Temporary credentials (from AssumeRole): the session token every call must carry, and
    /// when they stop working.
    pub session: Option<(String, SystemTime)>,
}

/// What the verifier needs to know.
pub struct Verifier<'a> {
    /// access key id → what it is
    pub lookup: &'a (dyn Fn(&str) -> Option<KeyInfo> + Sync),
    /// The regions served: a signature scoped to another is refused.
    pub regions: &'a [String],
    /// The service the signature must be scoped to (`quicksight`, `sts`).
    pub service: &'a str,
    pub max_skew: Duration,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key: String,
    /// The region the signature is scoped to.
    pub region: String,
}

/// The parts of an incoming request that are signed.
pub struct Incoming<'a> {
    pub method: &'a str,
    /// Path and query exactly as received (still percent-encoded).
    pub path_and_query: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

struct AuthHeader<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, AuthError> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        AuthError::Incomplete(format!(
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm. Authorization={}",
            value.split(' ').next().unwrap_or_default()
        ))
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |name: &str| {
        AuthError::Incomplete(format!(
            "Authorization header requires '{name}' parameter. Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters."
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let mut scope = credential.split('/');
    let (Some(access_key), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(AuthError::Incomplete(format!(
            "Credential should be formatted as <access key>/<date>/<region>/<service>/aws4_request, got '{}'",
            credential.split('/').skip(1).collect::<Vec<_>>().join("/")
        )));
    };
    Ok(AuthHeader {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

impl Verifier<'_> {
    /// Verifies the request's SigV4 signature as of `now` (the caller's clock).
    ///
    /// # Errors
    /// Why the request must be refused, as AWS would say it.
    pub fn verify(&self, req: &Incoming<'_>, now: SystemTime) -> Result<Verified, AuthError> {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        // A header the verification reads, sent twice, is refused rather than one of its values
        // picked: a proxy in front that reads the other would act on an identity, date or host
        // the signature never vouched for.
        for name in ONCE {
            let times = req
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .count();
            if times > 1 {
                return Err(AuthError::Incomplete(format!(
                    "The {name} header must be sent once, not {times} times."
                )));
            }
        }
        let auth = parse_authorization(header("authorization").ok_or(AuthError::Missing)?)?;
        let amz_date = header("x-amz-date").ok_or_else(|| {
            AuthError::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into(),
            )
        })?;
        let signed_at = PrimitiveDateTime::parse(amz_date, AMZ_DATE)
            .map_err(|_| AuthError::Incomplete(format!("Invalid X-Amz-Date: {amz_date}")))?
            .assume_utc();
        let key = (self.lookup)(auth.access_key).ok_or(AuthError::UnknownAccessKey)?;

        if auth.service != self.service {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        if !self.regions.iter().any(|r| r == auth.region) {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            )));
        }
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(AuthError::Invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                auth.date,
                &amz_date[..amz_date.len().min(8)]
            )));
        }
        self.check_skew(signed_at, now)?;

        // Re-sign with exactly the headers the client signed; host, x-amz-date and the session
        // token are added back by the signer itself.
        let wanted: Vec<&str> = auth.signed_headers.split(';').collect();
        let token =
            header("x-amz-security-token").filter(|_| wanted.contains(&"x-amz-security-token"));
        if let Some((expected, expires)) = &key.session {
            let same: bool = token
                .unwrap_or_default()
                .as_bytes()
                .ct_eq(expected.as_bytes())
                .into();
            if !same {
                return Err(AuthError::BadToken);
            }
            if *expires <= now {
                return Err(AuthError::ExpiredToken);
            }
        }
        let headers = req.headers.iter().filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k != "x-amz-date" && k != "x-amz-security-token" && wanted.contains(&k.as_str())
        });
        let host = header("host").unwrap_or("localhost");
        let uri = format!("http://{host}{}", req.path_and_query);
        let signable = SignableRequest::new(
            req.method,
            uri.as_str(),
            headers.map(|(k, v)| (*k, *v)),
            SignableBody::Bytes(req.body),
        )
        .map_err(|e| AuthError::Incomplete(format!("Request cannot be canonicalised: {e}")))?;

        let identity = Credentials::new(
            auth.access_key,
            key.secret.as_str(),
            token.map(String::from),
            None,
            "sim",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.excluded_headers = None;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(auth.region)
            .name(self.service)
            .time(SystemTime::from(signed_at))
            .settings(settings)
            .build()
            .map_err(|e| AuthError::Incomplete(e.to_string()))?
            .into();
        let output = sign(signable, &params).map_err(|e| AuthError::Incomplete(e.to_string()))?;

        let ours_headers = output
            .output()
            .headers()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.split("SignedHeaders=").nth(1))
            .and_then(|v| v.split(',').next())
            .unwrap_or_default();
        let same_headers = ours_headers == auth.signed_headers;
        let same_signature: bool = output
            .signature()
            .as_bytes()
            .ct_eq(auth.signature.as_bytes())
            .into();
        if same_headers && same_signature {
            Ok(Verified {
                access_key: auth.access_key.to_string(),
                region: auth.region.to_string(),
            })
        } else {
            Err(AuthError::Invalid(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
            ))
        }
    }

    fn check_skew(&self, signed_at: OffsetDateTime, now: SystemTime) -> Result<(), AuthError> {
        let now = OffsetDateTime::from(now);
        let skew = time::Duration::try_from(self.max_skew).unwrap_or(time::Duration::minutes(15));
        let fmt = |t: OffsetDateTime| t.format(AMZ_DATE).unwrap_or_default();
        let minutes = self.max_skew.as_secs() / 60;
        if signed_at < now - skew {
            return Err(AuthError::Invalid(format!(
                "Signature expired: {} is now earlier than {} ({} - {minutes} min.)",
                fmt(signed_at),
                fmt(now - skew),
                fmt(now)
            )));
        }
        if signed_at > now + skew {
            return Err(AuthError::Invalid(format!(
                "Signature not yet current: {} is still later than {} ({} + {minutes} min.)",
                fmt(signed_at),
                fmt(now + skew),
                fmt(now)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(key: &str) -> Option<KeyInfo> {
        (key == "AKIDTEST").then(|| KeyInfo {
            secret: "secret".into(),
            session: None,
        })
    }

    /// Signs a request the way the SDKs do, with the given secret.
    fn signed(secret: &str, at: SystemTime, path: &str) -> Vec<(String, String)> {
        let identity = Credentials::new("AKIDTEST", secret, None, None, "t").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("quicksight")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let uri = format!("http://127.0.0.1:9/{path}");
        let req = SignableRequest::new(
            "GET",
            uri.as_str(),
            [
                ("host", "127.0.0.1:9"),
                ("amz-sdk-request", "attempt=1; max=3"),
            ]
            .into_iter(),
            SignableBody::Bytes(b""),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), "127.0.0.1:9".into()),
            ("amz-sdk-request".into(), "attempt=1; max=3".into()),
            ("user-agent".into(), "test".into()),
        ];
        headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        headers
    }

    fn verify(
        headers: &[(String, String)],
        path: &str,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let regions = ["us-east-1".to_string()];
        let v = Verifier {
            lookup: &lookup,
            regions: &regions,
            service: "quicksight",
            max_skew: Duration::from_secs(900),
        };
        let req = Incoming {
            method: "GET",
            path_and_query: path,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            body: b"",
        };
        v.verify(&req, now).map(|v| v.access_key)
    }

    const PATH: &str =
        "accounts/111122223333/dashboards/d/embed-url?creds-type=IAM&user-arn=arn%3Aaws%3Ax";

    #[test]
    fn a_correctly_signed_request_is_accepted_and_a_wrong_secret_is_not() {
        let now = SystemTime::now();
        assert_eq!(
            verify(&signed("secret", now, PATH), &format!("/{PATH}"), now),
            Ok("AKIDTEST".into())
        );
        let err = verify(&signed("wrong", now, PATH), &format!("/{PATH}"), now).unwrap_err();
        assert_eq!(err.code(), "InvalidSignatureException");
    }

    #[test]
    fn a_tampered_query_fails_verification() {
        let now = SystemTime::now();
        let tampered = format!("/{}", PATH.replace("IAM", "QUICKSIGHT"));
        assert!(verify(&signed("secret", now, PATH), &tampered, now).is_err());
    }

    #[test]
    fn requests_outside_the_skew_window_are_expired() {
        let at = SystemTime::now();
        let later = at + Duration::from_secs(901);
        let err = verify(&signed("secret", at, PATH), &format!("/{PATH}"), later).unwrap_err();
        assert!(
            err.message().starts_with("Signature expired"),
            "{}",
            err.message()
        );
        let earlier = at - Duration::from_secs(901);
        let err = verify(&signed("secret", at, PATH), &format!("/{PATH}"), earlier).unwrap_err();
        assert!(err.message().starts_with("Signature not yet current"));
    }

    #[test]
    fn a_header_the_signature_rests_on_sent_twice_is_refused_whichever_copy_is_valid() {
        let now = SystemTime::now();
        let good = signed("secret", now, PATH);
        let other = signed("other", now, PATH);
        for name in ["authorization", "x-amz-date", "host"] {
            let copy = |h: &[(String, String)]| {
                h.iter()
                    .find(|(k, _)| k == name)
                    .cloned()
                    .unwrap_or_else(|| panic!("{name} signed"))
            };
            let mut first_valid = good.clone();
            first_valid.push(copy(&other));
            let mut second_valid = other.clone();
            second_valid.push(copy(&good));
            for h in [first_valid, second_valid] {
                let err = verify(&h, &format!("/{PATH}"), now).unwrap_err();
                assert_eq!(err.code(), "IncompleteSignatureException", "{name}");
                assert!(
                    err.message().to_ascii_lowercase().contains(name),
                    "{}",
                    err.message()
                );
            }
        }
    }

    #[test]
    fn missing_malformed_and_unknown_credentials_have_their_own_codes() {
        let now = SystemTime::now();
        assert_eq!(verify(&[], "/x", now).unwrap_err(), AuthError::Missing);
        let bad = vec![(
            "authorization".to_string(),
            "AWS4-HMAC-SHA256 Credential=x".to_string(),
        )];
        assert_eq!(
            verify(&bad, "/x", now).unwrap_err().code(),
            "IncompleteSignatureException"
        );
        let mut h = signed("secret", now, PATH);
        for (k, v) in &mut h {
            if k == "authorization" {
                *v = v.replace("AKIDTEST", "AKIDOTHER");
            }
        }
        assert_eq!(
            verify(&h, &format!("/{PATH}"), now).unwrap_err(),
            AuthError::UnknownAccessKey
        );
    }
}

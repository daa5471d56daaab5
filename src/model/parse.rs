//! One strict parser for request bodies, used by the native API, hints, warm keys and the
//! simulator: a problem names the member (`A.B[2].C`) and says what is wrong with it.

use serde::de::DeserializeOwned;

use super::shape::{
    array_read_as_structure, not_an_object, objects_in_place, objects_in_place_value,
};
use super::{EmbedRequest, Operation};

/// A request body that is not a valid request: which member, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput {
    pub code: &'static str,
    pub field: Option<String>,
    pub detail: String,
}

/// What to do with a member the shape does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Refuse it (the gateway: a member we do not know could widen what a URL grants).
    Refuse,
    /// Ignore it (the simulator, as QuickSight ignores members newer than itself).
    Ignore,
}

/// Parses a body with QuickSight's member names: wrong types and missing required members are
/// refused, and unknown ones too unless `unknown` is [`Unknown::Ignore`], naming the member.
/// `input`: the body as a JSON value, asked for only when it fails to parse (to tell an array
/// standing for a structure from a list).
///
/// # Errors
/// The first problem found.
pub fn parse_strict<
    'de,
    T: DeserializeOwned,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
>(
    de: D,
    unknown: Unknown,
    input: impl FnOnce() -> Option<serde_json::Value>,
) -> Result<T, BadInput> {
    let mut found = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        if unknown == Unknown::Refuse {
            found.push(member_path(&path))
        }
    };
    let ignoring = serde_ignored::Deserializer::new(de, &mut record);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(ignoring);
    match parsed {
        Ok(v) => match found.into_iter().next() {
            Some(field) => Err(BadInput {
                code: "unknown_field",
                detail: format!("{field} is not a member of this request"),
                field: Some(field),
            }),
            None => Ok(v),
        },
        Err(e) => {
            let data = e.inner().classify() == serde_json::error::Category::Data;
            let in_array = e
                .path()
                .iter()
                .any(|s| matches!(s, serde_path_to_error::Segment::Seq { .. }));
            if data && in_array {
                if let Some(member) =
                    input().and_then(|v| array_read_as_structure::<T>(&v, e.path()))
                {
                    return Err(not_an_object(member));
                }
            }
            let path = e.path().to_string();
            let inner = e.into_inner();
            let syntax =
                !matches!(inner.classify(), serde_json::error::Category::Data) || path == ".";
            let text = inner.to_string();
            if text.contains(", expected struct ") {
                // serde names the Rust type, and for an array the count of its fields in order.
                return Err(not_an_object((path != ".").then_some(path)));
            }
            if syntax && path != "." && text.starts_with("expected value") {
                // A value of the wrong JSON type where a string enum is read (`"IdentityType": 5`).
                return Err(BadInput {
                    code: "invalid_type",
                    detail: format!("{path}: invalid type, expected a string"),
                    field: Some(path),
                });
            }
            if syntax && !text.starts_with("missing field") {
                Err(BadInput {
                    code: "invalid_json",
                    detail: format!("the body is not a JSON object of this request: {text}"),
                    field: None,
                })
            } else if let Some(rest) = text.strip_prefix("missing field `") {
                let member = rest.split('`').next().unwrap_or_default();
                let field = if path == "." {
                    member.to_string()
                } else {
                    format!("{path}.{member}")
                };
                Err(BadInput {
                    code: "missing_field",
                    detail: format!("{field} is required"),
                    field: Some(field),
                })
            } else {
                let text = text.split(" at line").next().unwrap_or(&text);
                let detail = format!("{path}: {}", in_json_terms(text));
                Err(BadInput {
                    code: "invalid_type",
                    detail,
                    field: Some(path),
                })
            }
        }
    }
}

/// The most characters of a value a problem echoes: a value can be as long as the body.
const ECHO_CHARS: usize = 64;

/// At most [`ECHO_CHARS`] characters of `value`, for a problem that names it.
pub fn excerpt(value: &str) -> String {
    value.chars().take(ECHO_CHARS).collect()
}

/// serde's words for a problem in JSON's: `sequence` and `map` are an array and an object,
/// `integer `5`` and `floating point `1.5`` are numbers, Rust's integer types are whole numbers;
/// an echoed string is cut at 64 characters (it can be as long as the body) and an unknown
/// enum value lists the values there are. Only serde's own words are rewritten: the patterns are
/// anchored where serde puts them, so an echoed string saying `map` stays as sent.
fn in_json_terms(text: &str) -> String {
    use std::sync::LazyLock;
    static VARIANT: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^unknown variant `(.*)`, expected (?:one of )?(.*)$")
            .expect("a pattern")
    });
    static WORDS: LazyLock<[(regex::Regex, &str); 9]> = LazyLock::new(|| {
        let r = |p: &str| regex::Regex::new(p).expect("a pattern");
        [
            (r(r"^invalid type: sequence,"), "invalid type: array,"),
            (r(r"^invalid type: map,"), "invalid type: object,"),
            (r(r"expected a sequence$"), "expected an array"),
            (r(r"expected a map$"), "expected an object"),
            (
                r(r"^invalid (type|value): (?:integer|floating point) `([^`]*)`,"),
                "invalid $1: number $2,",
            ),
            (
                r(r"^invalid (type|value): boolean `([^`]*)`,"),
                "invalid $1: $2,",
            ),
            (
                r(r"expected (?:u8|u16|u32|u64|usize)\b"),
                "expected a whole number, 0 or more",
            ),
            (
                r(r"expected (?:i8|i16|i32|i64|isize)\b"),
                "expected a whole number",
            ),
            (r(r"expected f(?:32|64)\b"), "expected a number"),
        ]
    });
    static LONG: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(&format!(
            r#"^invalid (type|value): string "(.{{{ECHO_CHARS}}}).+","#
        ))
        .expect("a pattern")
    });
    if let Some(c) = VARIANT.captures(text) {
        return format!(
            "{:?} is not one of {}",
            excerpt(&c[1]),
            c[2].replace('`', "")
        );
    }
    let mut out = text.to_string();
    for (pattern, with) in WORDS.iter() {
        out = pattern.replace_all(&out, *with).into_owned();
    }
    LONG.replace(&out, "invalid $1: string \"$2…\",")
        .into_owned()
}

/// `A.B[2].C`: a member path as the API documents it (Option and newtype layers left out).
fn member_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", member_path(parent)),
        Path::Map { parent, key } => {
            let p = member_path(parent);
            if p.is_empty() {
                key.to_string()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => member_path(parent),
    }
}

/// Parses a body for `op` from JSON bytes.
///
/// # Errors
/// See [`parse_strict`].
pub fn parse_request(op: Operation, body: &[u8]) -> Result<EmbedRequest, BadInput> {
    // A valid body (the common case) is parsed once without tracking member paths, which only a
    // problem needs; a body that fails is parsed again with them, to name the member.
    let req = match parse_valid(op, body) {
        Some(req) => req,
        None => parse_tracked(op, body)?,
    };
    request_objects_in_place(body, &req)?;
    Ok(req)
}

/// [`objects_in_place`] for a request of any operation.
fn request_objects_in_place(body: &[u8], req: &EmbedRequest) -> Result<(), BadInput> {
    match req {
        EmbedRequest::Dashboard(r) => objects_in_place(body, r),
        EmbedRequest::Anonymous(r) => objects_in_place(body, r),
        EmbedRequest::Registered(r) => objects_in_place(body, r),
    }
}

/// [`parse_request`] tracking member paths throughout, so that a problem names its member.
fn parse_tracked(op: Operation, body: &[u8]) -> Result<EmbedRequest, BadInput> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let input = || serde_json::from_slice(body).ok();
    let req = match op {
        Operation::GetDashboardEmbedUrl => {
            EmbedRequest::Dashboard(parse_strict(&mut *de, Unknown::Refuse, input)?)
        }
        Operation::GenerateEmbedUrlForAnonymousUser => {
            EmbedRequest::Anonymous(parse_strict(&mut *de, Unknown::Refuse, input)?)
        }
        Operation::GenerateEmbedUrlForRegisteredUser => {
            EmbedRequest::Registered(parse_strict(&mut *de, Unknown::Refuse, input)?)
        }
    };
    de.end().map_err(|e| BadInput {
        code: "invalid_json",
        detail: format!("trailing data after the JSON object: {e}"),
        field: None,
    })?;
    Ok(req)
}

/// `body` as a request for `op` if it is one: well-formed, of the right shape and with no
/// member the shape does not have. `None` says only that it is not; [`parse_request`] says why.
fn parse_valid(op: Operation, body: &[u8]) -> Option<EmbedRequest> {
    fn plain<'de, T: serde::Deserialize<'de>>(
        de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
    ) -> Option<T> {
        let mut unknown = false;
        let mut record = |_: serde_ignored::Path<'_>| unknown = true;
        let parsed = T::deserialize(serde_ignored::Deserializer::new(&mut *de, &mut record));
        parsed.ok().filter(|_| !unknown)
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req = match op {
        Operation::GetDashboardEmbedUrl => EmbedRequest::Dashboard(plain(de)?),
        Operation::GenerateEmbedUrlForAnonymousUser => EmbedRequest::Anonymous(plain(de)?),
        Operation::GenerateEmbedUrlForRegisteredUser => EmbedRequest::Registered(plain(de)?),
    };
    de.end().ok().map(|()| req)
}

/// Parses a request for `op` from a JSON value.
///
/// # Errors
/// See [`parse_strict`].
pub fn parse_value(op: Operation, value: serde_json::Value) -> Result<EmbedRequest, BadInput> {
    fn parse<T: DeserializeOwned + serde::Serialize>(
        value: &serde_json::Value,
    ) -> Result<T, BadInput> {
        let parsed = parse_strict(value, Unknown::Refuse, || Some(value.clone()))?;
        objects_in_place_value(value, &parsed)?;
        Ok(parsed)
    }
    Ok(match op {
        Operation::GetDashboardEmbedUrl => EmbedRequest::Dashboard(parse(&value)?),
        Operation::GenerateEmbedUrlForAnonymousUser => EmbedRequest::Anonymous(parse(&value)?),
        Operation::GenerateEmbedUrlForRegisteredUser => EmbedRequest::Registered(parse(&value)?),
    })
}

/// Parses a request named by an `Operation` member beside the body's members (hints, warm keys:
/// `{"Operation": "GetDashboardEmbedUrl", "DashboardId": …}`).
///
/// # Errors
/// A missing or unknown `Operation`, or see [`parse_strict`].
pub fn parse_tagged(
    mut obj: serde_json::Map<String, serde_json::Value>,
) -> Result<EmbedRequest, BadInput> {
    let op = obj
        .remove("Operation")
        .and_then(|o| serde_json::from_value::<Operation>(o).ok())
        .ok_or_else(|| BadInput {
            code: "invalid_parameter",
            field: Some("Operation".into()),
            detail: "Operation must be GetDashboardEmbedUrl, GenerateEmbedUrlForAnonymousUser or GenerateEmbedUrlForRegisteredUser".into(),
        })?;
    parse_value(op, serde_json::Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_parse_accepts_exactly_what_the_strict_one_does() {
        use Operation::*;
        let cases: &[(Operation, &str)] = &[
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/u"}"#,
            ),
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":"IAM","SessionLifetimeInMinutes":60,"AdditionalDashboardIds":["b","a"]}"#,
            ),
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":"IAM","Colour":1}"#,
            ),
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":"IAM"} trailing"#,
            ),
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":"IAM","DashboardId":"e"}"#,
            ),
            (GetDashboardEmbedUrl, r#"{"IdentityType":"IAM"}"#),
            (
                GenerateEmbedUrlForAnonymousUser,
                r#"{"Namespace":"default","AuthorizedResourceArns":["arn:aws:quicksight:us-east-1:111122223333:dashboard/d"],"ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}},"SessionTags":[{"Key":"k","Value":"v"}]}"#,
            ),
            (
                GenerateEmbedUrlForAnonymousUser,
                r#"{"Namespace":"default","AuthorizedResourceArns":[],"ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}},"SessionTags":[{"Key":"k","Value":"v","Extra":1}]}"#,
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                r#"{"UserArn":"a","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}}}"#,
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                r#"{"UserArn":"a","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d","Nope":true}}}"#,
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                r#"{"UserArn":"a","ExperienceConfiguration":{"QuickSightConsole":{"InitialPath":"/start"}},"AllowedDomains":["https://a.example"]}"#,
            ),
        ];
        let mut valid = 0;
        for (op, body) in cases {
            let quick = parse_valid(*op, body.as_bytes());
            assert_eq!(quick, parse_tracked(*op, body.as_bytes()).ok(), "{body}");
            assert_eq!(parse_request(*op, body.as_bytes()).ok(), quick, "{body}");
            valid += usize::from(quick.is_some());
        }
        assert_eq!(valid, 5, "the valid cases parse");
    }

    #[test]
    fn strict_parsing_names_unknown_missing_and_mistyped_members() {
        let op = Operation::GetDashboardEmbedUrl;
        let e = parse_request(
            op,
            br#"{"DashboardId":"d","IdentityType":"IAM","Colour":1}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("Colour"))
        );
        let e = parse_request(op, br#"{"IdentityType":"IAM"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_field", Some("DashboardId"))
        );
        let e = parse_request(
            op,
            br#"{"DashboardId":"d","IdentityType":"IAM","SessionLifetimeInMinutes":"60"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_type", Some("SessionLifetimeInMinutes"))
        );
        let e = parse_request(op, br#"{"DashboardId":"d","IdentityType":"ROOT"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("IdentityType"));
        let e = parse_request(op, b"{not json").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_request(
            Operation::GenerateEmbedUrlForRegisteredUser,
            br#"{"UserArn":"a","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d","Nope":true}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("ExperienceConfiguration.Dashboard.Nope")
        );
    }

    #[test]
    fn a_wrong_type_is_told_in_json_terms() {
        let long = "x".repeat(600);
        for (body, detail) in [
            (
                r#"{"DashboardId":"d","IdentityType":"IAM","AdditionalDashboardIds":{}}"#
                    .to_string(),
                "AdditionalDashboardIds: invalid type: object, expected an array",
            ),
            (
                r#"{"DashboardId":[],"IdentityType":"IAM"}"#.into(),
                "DashboardId: invalid type: array, expected a string",
            ),
            (
                r#"{"DashboardId":1.5,"IdentityType":"IAM"}"#.into(),
                "DashboardId: invalid type: number 1.5, expected a string",
            ),
            (
                r#"{"DashboardId":"d","IdentityType":"IAM","UndoRedoDisabled":5}"#.into(),
                "UndoRedoDisabled: invalid type: number 5, expected a boolean",
            ),
            (
                r#"{"DashboardId":true,"IdentityType":"IAM"}"#.into(),
                "DashboardId: invalid type: true, expected a string",
            ),
            (
                r#"{"DashboardId":"d","IdentityType":"IAM","SessionLifetimeInMinutes":1.5}"#.into(),
                "SessionLifetimeInMinutes: invalid type: number 1.5, expected a whole number",
            ),
            (
                r#"{"DashboardId":"d","IdentityType":"IAM","AdditionalDashboardIds":"a map `x`"}"#
                    .into(),
                r#"AdditionalDashboardIds: invalid type: string "a map `x`", expected an array"#,
            ),
            (
                r#"{"DashboardId":"d","IdentityType":"ROOT"}"#.into(),
                r#"IdentityType: "ROOT" is not one of IAM, QUICKSIGHT, ANONYMOUS"#,
            ),
            (
                format!(
                    r#"{{"DashboardId":"d","IdentityType":"IAM","AdditionalDashboardIds":"{long}"}}"#
                ),
                &format!(
                    r#"AdditionalDashboardIds: invalid type: string "{}…", expected an array"#,
                    "x".repeat(64)
                ),
            ),
        ] {
            let e = parse_request(Operation::GetDashboardEmbedUrl, body.as_bytes()).unwrap_err();
            assert_eq!(e.detail, detail, "{body}");
        }
    }

    #[test]
    fn a_structure_is_read_only_from_an_object_and_problems_name_no_rust_type() {
        use Operation::*;
        let dashboard =
            r#"{"UserArn":"a","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d","#;
        let anonymous = r#"{"Namespace":"default","AuthorizedResourceArns":[],"#;
        let experience = r#""ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}}"#;
        let cases: &[(Operation, String, &str, Option<&str>)] = &[
            (GetDashboardEmbedUrl, r#"["111122223333","d","ANONYMOUS"]"#.into(), "invalid_json", None),
            (GetDashboardEmbedUrl, r#"["d"]"#.into(), "invalid_json", None),
            // Where the array's members fail to read as the structure's members in order, the
            // problem is still the array, not a member `[1]` nobody named.
            (GetDashboardEmbedUrl, r#"["111122223333",5]"#.into(), "invalid_json", None),
            (GetDashboardEmbedUrl, "[null]".into(), "invalid_json", None),
            (GetDashboardEmbedUrl, "[[]]".into(), "invalid_json", None),
            (
                GenerateEmbedUrlForAnonymousUser,
                format!(r#"{anonymous}"ExperienceConfiguration":[{{"Dashboard":{{"InitialDashboardId":"d"}}}}]}}"#),
                "invalid_type",
                Some("ExperienceConfiguration"),
            ),
            (
                GenerateEmbedUrlForAnonymousUser,
                format!(r#"{anonymous}"ExperienceConfiguration":[5]}}"#),
                "invalid_type",
                Some("ExperienceConfiguration"),
            ),
            (
                GenerateEmbedUrlForAnonymousUser,
                format!(r#"{anonymous}"ExperienceConfiguration":{{"Dashboard":[5]}}}}"#),
                "invalid_type",
                Some("ExperienceConfiguration.Dashboard"),
            ),
            (
                GenerateEmbedUrlForAnonymousUser,
                format!(r#"{anonymous}{experience},"SessionTags":[[5]]}}"#),
                "invalid_type",
                Some("SessionTags[0]"),
            ),
            // A list's own members are named as before.
            (
                GenerateEmbedUrlForAnonymousUser,
                format!(r#"{anonymous}{experience},"SessionTags":[{{"Key":5,"Value":"v"}}]}}"#),
                "invalid_type",
                Some("SessionTags[0].Key"),
            ),
            (
                GenerateEmbedUrlForAnonymousUser,
                format!(r#"{{"Namespace":"default","AuthorizedResourceArns":["a",5],{experience}}}"#),
                "invalid_type",
                Some("AuthorizedResourceArns[1]"),
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                r#"{"UserArn":"a","ExperienceConfiguration":{"QuickChat":[]}}"#.into(),
                "invalid_type",
                Some("ExperienceConfiguration.QuickChat"),
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                r#"{"UserArn":"a","ExperienceConfiguration":[{"InitialDashboardId":"d"}]}"#.into(),
                "invalid_type",
                Some("ExperienceConfiguration"),
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                format!(r#"{dashboard}"FeatureConfigurations":{{"SharedView":[true]}}}}}}}}"#),
                "invalid_type",
                Some("ExperienceConfiguration.Dashboard.FeatureConfigurations.SharedView"),
            ),
            (
                GenerateEmbedUrlForRegisteredUser,
                format!(r#"{dashboard}"FeatureConfigurations":{{"SharedView":"on"}}}}}}}}"#),
                "invalid_type",
                Some("ExperienceConfiguration.Dashboard.FeatureConfigurations.SharedView"),
            ),
            (
                GenerateEmbedUrlForAnonymousUser,
                r#"{"Namespace":"default","AuthorizedResourceArns":[],"ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}},"SessionTags":[{"Key":"k","Value":"v"},["k2","v2"]]}"#.into(),
                "invalid_type",
                Some("SessionTags[1]"),
            ),
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":5}"#.into(),
                "invalid_type",
                Some("IdentityType"),
            ),
            (
                GetDashboardEmbedUrl,
                r#"{"DashboardId":"d","IdentityType":"IAM","SessionLifetimeInMinutes":15.5}"#.into(),
                "invalid_type",
                Some("SessionLifetimeInMinutes"),
            ),
        ];
        for (op, body, code, field) in cases {
            let e = parse_request(*op, body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                (*code, *field),
                "{body}: {e:?}"
            );
            for rust in ["struct", "i64", "elements", "Request"] {
                assert!(!e.detail.contains(rust), "{body}: {}", e.detail);
            }
            // Hints and warm keys read their requests from JSON values: the same rule.
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            let by_value = parse_value(*op, value).unwrap_err();
            assert_eq!(
                (by_value.code, by_value.field.as_deref()),
                (*code, *field),
                "{body}"
            );
        }
        // Lists stay lists, and a body without any array is not looked at twice.
        let fine = r#"{"Namespace":"default","AuthorizedResourceArns":["arn:aws:quicksight:us-east-1:111122223333:dashboard/d"],"ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d","EnabledFeatures":["SHARED_VIEW"]}},"SessionTags":[{"Key":"k","Value":"v"}],"AllowedDomains":["https://a.example"]}"#;
        assert!(parse_request(GenerateEmbedUrlForAnonymousUser, fine.as_bytes()).is_ok());
    }
}

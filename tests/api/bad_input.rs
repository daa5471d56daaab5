//! Bad input gets a precise 4xx naming the field and the rule, and changes nothing.

use serde_json::{json, Value};

use crate::helpers::*;

struct Case {
    what: &'static str,
    path: &'static str,
    auth: Option<&'static str>,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        what,
        path,
        auth: Some("Bearer alpha-key"),
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        status,
        code,
        field,
    }
}

fn raw(what: &'static str, body: &[u8], status: u16, code: &'static str) -> Case {
    Case {
        body: body.to_vec(),
        ..case(what, "dashboard", Value::Null, status, code, None)
    }
}

fn anon(patch: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "Namespace": "default",
        "AuthorizedResourceArns": [dashboard_arn("sales-2024")],
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}},
    });
    patch(&mut v);
    v
}

fn reg(patch: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "UserArn": user_arn("alice"),
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}},
    });
    patch(&mut v);
    v
}

fn cases() -> Vec<Case> {
    let d = "dashboard";
    let a = "anonymous-user";
    let r = "registered-user";
    let ok = dash("sales-2024", "alice");
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    vec![
        Case {
            auth: None,
            ..case(
                "no API key",
                d,
                ok.clone(),
                401,
                "missing_api_key",
                Some("Authorization"),
            )
        },
        Case {
            auth: Some("Bearer wrong"),
            ..case(
                "unknown API key",
                d,
                ok.clone(),
                401,
                "invalid_api_key",
                Some("Authorization"),
            )
        },
        Case {
            auth: Some("Basic YTpi"),
            ..case(
                "not a bearer key",
                d,
                ok.clone(),
                401,
                "invalid_api_key",
                Some("Authorization"),
            )
        },
        raw("not JSON", b"{DashboardId:", 400, "invalid_json"),
        raw("a JSON array", b"[]", 400, "invalid_json"),
        // serde reads a structure from an array of its members in order; QuickSight does not.
        raw(
            "the request's members in order as an array",
            br#"["111122223333","sales-2024","ANONYMOUS",null,null,null,null,null,null,null,null]"#,
            400,
            "invalid_json",
        ),
        case(
            "an experience as an array",
            r,
            reg(|v| v["ExperienceConfiguration"] = json!({"QuickChat": []})),
            400,
            "invalid_type",
            Some("ExperienceConfiguration.QuickChat"),
        ),
        case(
            "a session tag as an array",
            a,
            anon(|v| {
                v["SessionTags"] = json!([{"Key": "tenant", "Value": "alpha"}, ["region", "eu"]])
            }),
            400,
            "invalid_type",
            Some("SessionTags[1]"),
        ),
        case(
            "a feature switch as an empty array",
            r,
            reg(|v| {
                v["ExperienceConfiguration"]["Dashboard"]["FeatureConfigurations"] =
                    json!({"SharedView": []})
            }),
            400,
            "invalid_type",
            Some("ExperienceConfiguration.Dashboard.FeatureConfigurations.SharedView"),
        ),
        raw(
            "trailing data",
            br#"{"DashboardId":"d","IdentityType":"IAM"} x"#,
            400,
            "invalid_json",
        ),
        raw("empty body", b"", 400, "invalid_json"),
        Case {
            content_type: "text/plain",
            ..case(
                "wrong content type",
                d,
                ok.clone(),
                415,
                "unsupported_media_type",
                Some("Content-Type"),
            )
        },
        Case {
            body: vec![b' '; 70_000],
            ..case("oversize body", d, Value::Null, 413, "body_too_large", None)
        },
        case(
            "unknown member",
            d,
            with("Colour", json!("red")),
            400,
            "unknown_field",
            Some("Colour"),
        ),
        case(
            "unknown nested member",
            r,
            reg(|v| v["ExperienceConfiguration"]["Dashboard"]["Nope"] = json!(1)),
            400,
            "unknown_field",
            Some("ExperienceConfiguration.Dashboard.Nope"),
        ),
        case(
            "lifetime as a string",
            d,
            with("SessionLifetimeInMinutes", json!("60")),
            400,
            "invalid_type",
            Some("SessionLifetimeInMinutes"),
        ),
        case(
            "boolean as a string",
            d,
            with("UndoRedoDisabled", json!("yes")),
            400,
            "invalid_type",
            Some("UndoRedoDisabled"),
        ),
        case(
            "list as a string",
            d,
            json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS", "AdditionalDashboardIds": "finance"}),
            400,
            "invalid_type",
            Some("AdditionalDashboardIds"),
        ),
        case(
            "missing DashboardId",
            d,
            json!({"IdentityType": "IAM"}),
            400,
            "missing_field",
            Some("DashboardId"),
        ),
        case(
            "missing IdentityType",
            d,
            json!({"DashboardId": "sales-2024"}),
            400,
            "missing_field",
            Some("IdentityType"),
        ),
        case(
            "unknown IdentityType",
            d,
            with("IdentityType", json!("ROOT")),
            400,
            "invalid_type",
            Some("IdentityType"),
        ),
        case(
            "DashboardId with a slash",
            d,
            with("DashboardId", json!("sales/2024")),
            400,
            "invalid_parameter",
            Some("DashboardId"),
        ),
        case(
            "DashboardId of 513 characters",
            d,
            with("DashboardId", json!("x".repeat(513))),
            400,
            "invalid_parameter",
            Some("DashboardId"),
        ),
        case(
            "lifetime 14",
            d,
            with("SessionLifetimeInMinutes", json!(14)),
            400,
            "invalid_session_lifetime",
            Some("SessionLifetimeInMinutes"),
        ),
        case(
            "lifetime 601",
            d,
            with("SessionLifetimeInMinutes", json!(601)),
            400,
            "invalid_session_lifetime",
            Some("SessionLifetimeInMinutes"),
        ),
        case(
            "QUICKSIGHT without UserArn",
            d,
            json!({"DashboardId": "sales-2024", "IdentityType": "QUICKSIGHT"}),
            400,
            "invalid_parameter",
            Some("UserArn"),
        ),
        case(
            "malformed UserArn",
            d,
            with("UserArn", json!("alice")),
            400,
            "invalid_parameter",
            Some("UserArn"),
        ),
        case(
            "UserArn of another account",
            d,
            with(
                "UserArn",
                json!("arn:aws:quicksight:us-east-1:999999999999:user/default/alice"),
            ),
            400,
            "invalid_parameter",
            Some("UserArn"),
        ),
        case(
            "AdditionalDashboardIds without ANONYMOUS",
            d,
            with("AdditionalDashboardIds", json!(["finance"])),
            400,
            "invalid_parameter",
            Some("AdditionalDashboardIds"),
        ),
        case(
            "21 AdditionalDashboardIds",
            d,
            json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS", "AdditionalDashboardIds": (0..21).map(|i| format!("d-{i:04}")).collect::<Vec<_>>()}),
            400,
            "invalid_parameter",
            Some("AdditionalDashboardIds"),
        ),
        case(
            "bad Namespace",
            d,
            with("Namespace", json!("bad ns")),
            400,
            "invalid_parameter",
            Some("Namespace"),
        ),
        case(
            "short AwsAccountId",
            d,
            with("AwsAccountId", json!("123")),
            400,
            "invalid_parameter",
            Some("AwsAccountId"),
        ),
        case(
            "anonymous without Namespace",
            a,
            anon(|v| {
                v.as_object_mut().unwrap().remove("Namespace");
            }),
            400,
            "missing_field",
            Some("Namespace"),
        ),
        case(
            "initial dashboard not authorized",
            a,
            anon(|v| v["AuthorizedResourceArns"] = json!([dashboard_arn("finance")])),
            400,
            "invalid_parameter",
            Some("AuthorizedResourceArns"),
        ),
        case(
            "51 session tags",
            a,
            anon(|v| {
                v["SessionTags"] = json!((0..51)
                    .map(|i| json!({"Key": format!("k{i}"), "Value": "v"}))
                    .collect::<Vec<_>>())
            }),
            400,
            "invalid_parameter",
            Some("SessionTags"),
        ),
        case(
            "empty session tag key",
            a,
            anon(|v| v["SessionTags"] = json!([{"Key": "", "Value": "alpha"}])),
            400,
            "invalid_parameter",
            Some("SessionTags[0].Key"),
        ),
        case(
            "no experience",
            a,
            anon(|v| v["ExperienceConfiguration"] = json!({})),
            400,
            "invalid_parameter",
            Some("ExperienceConfiguration"),
        ),
        case(
            "four allowed domains",
            a,
            anon(|v| {
                v["AllowedDomains"] = json!([
                    "https://a.example",
                    "https://b.example",
                    "https://c.example",
                    "https://d.example"
                ])
            }),
            400,
            "invalid_parameter",
            Some("AllowedDomains"),
        ),
        case(
            "plain-http allowed domain",
            a,
            anon(|v| v["AllowedDomains"] = json!(["http://evil.example"])),
            400,
            "invalid_parameter",
            Some("AllowedDomains[0]"),
        ),
        case(
            "registered without UserArn",
            r,
            reg(|v| {
                v.as_object_mut().unwrap().remove("UserArn");
            }),
            400,
            "missing_field",
            Some("UserArn"),
        ),
        case(
            "two experiences",
            r,
            reg(|v| v["ExperienceConfiguration"]["QSearchBar"] = json!({})),
            400,
            "invalid_parameter",
            Some("ExperienceConfiguration"),
        ),
        case(
            "console path outside the allowed forms",
            r,
            reg(|v| {
                v["ExperienceConfiguration"] =
                    json!({"QuickSightConsole": {"InitialPath": "/admin"}})
            }),
            400,
            "invalid_parameter",
            Some("ExperienceConfiguration.QuickSightConsole.InitialPath"),
        ),
        case(
            "hint with an unknown operation",
            "../hints",
            json!({"Requests": [{"Operation": "DeleteDashboard", "DashboardId": "x"}]}),
            400,
            "invalid_parameter",
            Some("Requests[0].Operation"),
        ),
        // A JSON value keeps a repeated member's last value silently; a hint is refused as an
        // embed request is.
        Case {
            body: br#"{"Requests": [{"Operation": "GetDashboardEmbedUrl", "DashboardId": "sales-2024", "IdentityType": "ANONYMOUS", "DashboardId": "finance"}]}"#.to_vec(),
            ..case(
                "hint with a member given twice",
                "../hints",
                Value::Null,
                400,
                "invalid_json",
                Some("Requests[0].DashboardId"),
            )
        },
        case(
            "hint with an invalid member",
            "../hints",
            json!({"Requests": [{"Operation": "GetDashboardEmbedUrl", "DashboardId": "a b", "IdentityType": "ANONYMOUS"}]}),
            400,
            "invalid_parameter",
            Some("Requests[0].DashboardId"),
        ),
    ]
}

#[tokio::test]
async fn every_malformed_request_gets_a_precise_4xx_and_changes_nothing() {
    let app = spawn_app(|s| s.api.max_body_bytes = 64 * 1024).await;
    let cases = cases();
    assert!(cases.len() >= 30);
    for c in &cases {
        let url = if c.path.starts_with("../") {
            format!("{}/v1/{}", app.base, &c.path[3..])
        } else {
            format!("{}/v1/embed-url/{}", app.base, c.path)
        };
        let mut req = app
            .http
            .post(url)
            .header("Content-Type", c.content_type)
            .body(c.body.clone());
        if let Some(a) = c.auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), c.status, "{}", c.what);
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{}",
            c.what
        );
        if c.status == 401 {
            assert!(resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer realm=\"embedgate\""));
        }
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["code"], c.code, "{}: {p}", c.what);
        assert_eq!(p["field"].as_str(), c.field, "{}: {p}", c.what);
        assert_eq!(p["status"], c.status, "{}", c.what);
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{}", c.what);
    }
    // Nothing changed: no upstream call, no tracked demand. (Each authenticated request did
    // spend a limiter token: see policy::refused_requests_count_against_the_tenants_rate.)
    assert_eq!(app.sim.sim.ledger().calls, 0);
    assert_eq!(app.app.gateway.tracked_keys(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_path_asked_with_another_method_is_405_naming_the_one_it_takes() {
    // On the admin listener too: a scraper or operator with a typo gets the same JSON problem.
    let app = spawn_app(|_| {}).await;
    let (native, admin) = (&app.base, &app.admin);
    for (method, base, path, allow) in [
        (
            reqwest::Method::GET,
            native,
            "/v1/embed-url/dashboard",
            Some("POST"),
        ),
        (reqwest::Method::PUT, native, "/v1/hints", Some("POST")),
        (reqwest::Method::POST, native, "/healthz", Some("GET, HEAD")),
        (
            reqwest::Method::DELETE,
            native,
            "/openapi.json",
            Some("GET, HEAD"),
        ),
        (
            reqwest::Method::GET,
            native,
            "/v1/embed-url/dashboards",
            None,
        ),
        (reqwest::Method::POST, admin, "/metrics", Some("GET, HEAD")),
        (reqwest::Method::DELETE, admin, "/state", Some("GET, HEAD")),
        (reqwest::Method::PUT, admin, "/healthz", Some("GET, HEAD")),
        (reqwest::Method::GET, admin, "/metric", None),
        (reqwest::Method::POST, admin, "/readyz", Some("GET, HEAD")),
        (reqwest::Method::GET, admin, "/openapi.json", None),
    ] {
        let resp = app
            .http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let allowed = resp
            .headers()
            .get("allow")
            .map(|a| a.to_str().unwrap().to_string());
        let p: Value = resp.json().await.unwrap();
        match allow {
            Some(allow) => {
                assert_eq!(
                    (status, p["code"].as_str()),
                    (405, Some("method_not_allowed")),
                    "{method} {path}: {p}"
                );
                assert_eq!(allowed.as_deref(), Some(allow), "{method} {path}");
            }
            None => assert_eq!(
                (status, p["code"].as_str()),
                (404, Some("not_found")),
                "{method} {path}: {p}"
            ),
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn every_get_route_answers_head_with_gets_headers_and_no_body() {
    // RFC 9110: a server that answers GET answers HEAD (load balancers and uptime checks send
    // it to /healthz).
    let app = spawn_app(|_| {}).await;
    let paths = [
        (&app.base, "/healthz"),
        (&app.base, "/readyz"),
        (&app.base, "/openapi.json"),
        (&app.admin, "/healthz"),
        (&app.admin, "/readyz"),
        (&app.admin, "/metrics"),
        (&app.admin, "/state"),
    ];
    for (base, path) in paths {
        let url = format!("{base}{path}");
        let get = app.http.get(&url).send().await.unwrap();
        let head = app.http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {url}");
        assert_eq!(head.status(), get.status(), "HEAD {url}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {url}"
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {url} sent a body"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn two_api_keys_in_one_request_are_refused_whichever_comes_first() {
    let app = spawn_app(|_| {}).await;
    let body = json!({"AwsAccountId": "111122223333", "DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"});
    for keys in [
        ["Bearer alpha-key", "Bearer wrong"],
        ["Bearer wrong", "Bearer alpha-key"],
        ["Bearer alpha-key", "Bearer alpha-key"],
    ] {
        let resp = app
            .http
            .post(format!("{}/v1/embed-url/dashboard", app.base))
            .header("Content-Type", "application/json")
            .header("Authorization", keys[0])
            .header("Authorization", keys[1])
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{keys:?}");
        let p: Value = resp.json().await.unwrap();
        assert_eq!(
            (p["code"].as_str(), p["field"].as_str()),
            (Some("invalid_api_key"), Some("Authorization")),
            "{keys:?}: {p}"
        );
    }
    assert_eq!(app.sim.sim.ledger().calls, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case_and_nothing_else_is_a_key() {
    let app = spawn_app(|_| {}).await;
    let body = json!({"AwsAccountId": "111122223333", "DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"});
    let status = |auth: &'static str| {
        let req = app
            .http
            .post(format!("{}/v1/embed-url/dashboard", app.base))
            .header("Content-Type", "application/json")
            .header("Authorization", auth)
            .body(body.to_string());
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for auth in ["Bearer alpha-key", "bearer alpha-key", "BEARER alpha-key"] {
        assert_ne!(status(auth).await, 401, "{auth}");
    }
    for auth in [
        "Bearer",
        "Bearer ",
        "Basic alpha-key",
        "alpha-key",
        "Bearer  wrong",
    ] {
        assert_eq!(status(auth).await, 401, "{auth}");
    }
    app.stop().await;
}

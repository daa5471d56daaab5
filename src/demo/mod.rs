//! `embedgate dev`'s demo portal: a small web app as a portal team would write one. Its page lets
//! a person pick a dashboard and a viewer; its backend asks the gateway's native API for a URL
//! over HTTP with the demo tenant's key (as a portal's backend does), and the page embeds the URL
//! with the official `amazon-quicksight-embedding-sdk` (vendored in `vendor/`, served at
//! `/sdk.js`). Against the simulator, whose embed pages answer as QuickSight's frame does, the
//! SDK reports the content loaded.

use std::net::{SocketAddr, TcpListener};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::json;

/// The vendored SDK's version (see `vendor/README.md`).
pub const SDK_VERSION: &str = "2.11.3";
const SDK: &str = include_str!("vendor/quicksight-embedding-js-sdk.min.js");
const PAGE: &str = include_str!("index.html");

/// What the portal offers and whom it asks.
#[derive(Debug, Clone)]
pub struct PortalSettings {
    pub listen: SocketAddr,
    /// The gateway's native API, `http://host:port`.
    pub gateway: String,
    pub api_key: String,
    pub account: String,
    pub region: String,
    /// The demo tenant's session tag (`tenant` = this) for anonymous viewers.
    pub tenant_tag: String,
    pub dashboards: Vec<String>,
    /// Registered viewers (user names in the `default` namespace).
    pub viewers: Vec<String>,
}

/// A running demo portal.
pub struct DemoPortal {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl DemoPortal {
    /// Binds `settings.listen` (port 0 allowed) and serves on the current Tokio runtime.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(settings: PortalSettings) -> anyhow::Result<DemoPortal> {
        let listener = TcpListener::bind(settings.listen).map_err(|e| {
            anyhow::anyhow!("cannot bind the demo portal to {}: {e}", settings.listen)
        })?;
        let addr = listener.local_addr()?;
        let options = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("<option>{i}</option>"))
                .collect::<String>()
        };
        let page = PAGE
            .replace("{{SDK_VERSION}}", SDK_VERSION)
            .replace("{{DASHBOARDS}}", &options(&settings.dashboards))
            .replace("{{VIEWERS}}", &options(&settings.viewers));
        let state = web::Data::new(Portal { settings, page });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/", web::get().to(index))
                .route("/sdk.js", web::get().to(sdk))
                .route("/api/embed-url", web::post().to(embed_url))
        })
        .listen(listener)?
        .workers(1)
        .shutdown_timeout(2)
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(DemoPortal { addr, handle })
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

struct Portal {
    settings: PortalSettings,
    page: String,
}

async fn index(portal: web::Data<Portal>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(portal.page.clone())
}

async fn sdk() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(SDK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pick {
    dashboard: String,
    /// A registered viewer's name, or empty for an anonymous one.
    viewer: String,
}

/// The portal's backend: checks the pick against what it offers, builds the request and asks the
/// gateway, passing its answer (URL or problem) through.
async fn embed_url(portal: web::Data<Portal>, body: web::Bytes) -> HttpResponse {
    let refuse = |detail: String| HttpResponse::BadRequest().json(json!({ "detail": detail }));
    let pick: Pick = match serde_json::from_slice(&body) {
        Ok(pick) => pick,
        Err(e) => {
            return refuse(format!(
                "the body must be a JSON object {{\"dashboard\": …, \"viewer\": …}}: {e}"
            ))
        }
    };
    let s = &portal.settings;
    if !s.dashboards.contains(&pick.dashboard) {
        return refuse(format!(
            "dashboard: {:?} is not one this portal offers",
            crate::model::excerpt(&pick.dashboard)
        ));
    }
    if !(pick.viewer.is_empty() || s.viewers.contains(&pick.viewer)) {
        return refuse(format!(
            "viewer: {:?} is not one this portal offers (empty for an anonymous viewer)",
            crate::model::excerpt(&pick.viewer)
        ));
    }
    let (path, body) = if pick.viewer.is_empty() {
        (
            "/v1/embed-url/anonymous-user",
            json!({
                "Namespace": "default",
                "AuthorizedResourceArns": [format!("arn:aws:quicksight:{}:{}:dashboard/{}", s.region, s.account, pick.dashboard)],
                "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": pick.dashboard}},
                "SessionTags": [{"Key": "tenant", "Value": s.tenant_tag}],
            }),
        )
    } else {
        (
            "/v1/embed-url/registered-user",
            json!({
                "UserArn": format!("arn:aws:quicksight:{}:{}:user/default/{}", s.region, s.account, pick.viewer),
                "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": pick.dashboard}},
            }),
        )
    };
    let url = format!("{}{path}", s.gateway);
    let timeout = std::time::Duration::from_secs(30);
    match crate::http1::post(&url, &s.api_key, &body.to_string(), timeout).await {
        Ok((status, answer)) => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        )
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(answer),
        Err(e) => HttpResponse::BadGateway()
            .json(json!({"detail": format!("the gateway did not answer: {e}")})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_vendored_sdk_is_the_published_file() {
        assert_eq!(
            hex::encode(Sha256::digest(SDK.as_bytes())),
            "341e1e40b2c0fe17b03c0d1c3e2e08342124e439d919fd8e36cb8cd1b10f7241"
        );
        assert!(SDK.contains(&format!("amazon-quicksight-embedding-sdk v{SDK_VERSION}")));
    }
}

//! The framework's ceiling for `scripts/bench-gateway.sh`: a bare actix-web endpoint on the
//! gateway's route that does no work and answers with a fixed body of a given size, so the
//! gateway's hit path can be reported as a ratio of what actix-web itself does on this machine.
//!
//! `cargo run --release --example bare -- 127.0.0.1:8090 520 [status]`

use actix_web::{http::StatusCode, web, App, HttpResponse, HttpServer};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(520);
    let status = args
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let prefix = r#"{"EmbedUrl":"http://127.0.0.1/embed/"#;
    let suffix = r#"","Source":"pool"}"#;
    let body = format!(
        "{prefix}{}{suffix}",
        "x".repeat(size.saturating_sub(prefix.len() + suffix.len()))
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = HttpServer::new(move || {
            let body = body.clone();
            App::new().route(
                "/v1/embed-url/dashboard",
                web::post().to(move |_: web::Bytes| {
                    let body = body.clone();
                    async move {
                        HttpResponse::build(status)
                            .insert_header(("Cache-Control", "no-store"))
                            .content_type("application/json")
                            .body(body)
                    }
                }),
            )
        })
        .bind(&addr)?;
        println!("bare listening on http://{}", server.addrs()[0]);
        server.run().await
    })
}

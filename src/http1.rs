//! A minimal HTTP/1.0 client for the gateway's own plain-HTTP listeners, so the binary needs no
//! HTTP client crate: `embedgate probe` and `embedgate top` (blocking [`get`]) and the demo
//! portal's backend (async [`post`]). Not for the internet: no TLS, no redirects, no chunking
//! (an HTTP/1.0 request gets a plain body back).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `http://authority/path` → (authority, path without its leading `/`).
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs"))?;
    Ok(rest.split_once('/').unwrap_or((rest, "")))
}

/// An HTTP/1.0 answer → (status, body).
fn parse_answer(answer: &[u8]) -> anyhow::Result<(u16, String)> {
    let answer = String::from_utf8_lossy(answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer"))?;
    Ok((status, body.to_string()))
}

/// GETs `url` (blocking, each step within `timeout`): (status, body).
///
/// # Errors
/// Not an `http://` URL, no connection, or no HTTP answer in time.
pub fn get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    parse_answer(&answer)
}

/// POSTs a JSON `body` to `url` with a bearer `key`, within `timeout`: (status, body).
///
/// # Errors
/// Not an `http://` URL, no connection, or no HTTP answer in time.
pub async fn post(
    url: &str,
    key: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let (authority, path) = split_url(url)?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!(
            "POST /{path} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange).await??;
    parse_answer(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_urls_are_split_as_sent() {
        assert_eq!(
            parse_answer(b"HTTP/1.0 503 Service Unavailable\r\nA: b\r\n\r\n{\"x\":1}").unwrap(),
            (503, "{\"x\":1}".to_string())
        );
        assert!(parse_answer(b"garbage").is_err());
        assert_eq!(split_url("http://h:1/a/b").unwrap(), ("h:1", "a/b"));
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", ""));
        assert!(split_url("https://h").is_err());
    }
}

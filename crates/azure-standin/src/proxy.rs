//! Reverse proxy from a registry host to a real registry (`Registry::upstream`), so a real
//! distribution registry can sit behind the stand-in's login server: ACR serves `/v2/` and
//! `/oauth2/token` on one host, and pull clients follow the `/v2/` challenge to a realm on the
//! same host. Only `/v2` requests come here; `/oauth2/*` stays with the token server.
//!
//! One upstream HTTP/1.1 connection per request (test traffic, no pooling needed). Bodies are
//! streamed both ways so blob uploads and downloads are not buffered. Hop-by-hop headers are
//! dropped; `Host` names the upstream and `X-Forwarded-Host`/`-Proto` the login server, and any
//! `Location` that still points at the upstream is rewritten to the login server.

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request could not be forwarded (answered as a 502 by the caller).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {0:?} is not http://host:port")]
    BadUpstream(String),
    #[error("connecting to upstream {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("upstream HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the upstream request: {0}")]
    Request(#[from] axum::http::Error),
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The request parts the proxy needs.
pub struct Forward<'a> {
    pub method: Method,
    /// Path and query as received (`/v2/app/manifests/v1?x=y`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The login server as the client addressed it (`localhost:8443`).
    pub authority: &'a str,
    pub body: Body,
}

/// The `host:port` of an `http://host:port[/]` upstream.
pub fn upstream_authority(upstream: &str) -> Result<&str, ProxyError> {
    upstream
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| ProxyError::BadUpstream(upstream.to_owned()))
}

/// Sends the request to `upstream` and returns its answer with a streamed body.
pub async fn forward(upstream: &str, req: Forward<'_>) -> Result<Response<Body>, ProxyError> {
    let target = upstream_authority(upstream)?;
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|source| ProxyError::Connect {
            authority: target.to_owned(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    // Drives the connection until the response body is consumed; errors surface through the
    // sender or the body stream, so the task's own result carries nothing more.
    tokio::spawn(connection);

    let mut builder = Request::builder()
        .method(req.method)
        .uri(req.path_and_query);
    if let Some(headers) = builder.headers_mut() {
        copy_end_to_end(req.headers, headers);
        headers.remove(header::HOST);
        if let Ok(host) = HeaderValue::from_str(target) {
            headers.insert(header::HOST, host);
        }
        if let Ok(login) = HeaderValue::from_str(req.authority) {
            headers.insert(HeaderName::from_static("x-forwarded-host"), login);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
    }
    let upstream_req = builder.body(req.body)?;
    let answer = sender.send_request(upstream_req).await?;

    let (parts, body) = answer.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    copy_end_to_end(&parts.headers, response.headers_mut());
    if let Some(location) = response.headers().get(header::LOCATION).cloned() {
        if let Some(rewritten) = rewrite_location(&location, target, req.authority) {
            response.headers_mut().insert(header::LOCATION, rewritten);
        }
    }
    Ok(response)
}

/// Copies every header except the hop-by-hop ones and those the `Connection` header names.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|t| t == n) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// `http://<upstream>/...` → `https://<login server>/...`; other locations stay as they are.
fn rewrite_location(location: &HeaderValue, upstream: &str, login: &str) -> Option<HeaderValue> {
    let text = location.to_str().ok()?;
    let prefix = format!("http://{upstream}");
    let rest = text.strip_prefix(&prefix)?;
    if !(rest.is_empty() || rest.starts_with(['/', '?'])) {
        return None;
    }
    HeaderValue::from_str(&format!("https://{login}{rest}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_must_be_plain_http_authority() {
        assert_eq!(
            upstream_authority("http://127.0.0.1:5000/").unwrap(),
            "127.0.0.1:5000"
        );
        assert!(upstream_authority("https://127.0.0.1:5000").is_err());
        assert!(upstream_authority("http://127.0.0.1:5000/v2").is_err());
    }

    #[test]
    fn only_upstream_locations_are_rewritten() {
        let rw = |l: &str| {
            rewrite_location(
                &HeaderValue::from_str(l).unwrap(),
                "127.0.0.1:5000",
                "localhost:8443",
            )
            .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            rw("http://127.0.0.1:5000/v2/app/blobs/uploads/u?_state=x").as_deref(),
            Some("https://localhost:8443/v2/app/blobs/uploads/u?_state=x")
        );
        assert_eq!(rw("/v2/app/blobs/sha256:ab"), None);
        assert_eq!(rw("http://127.0.0.1:50000/v2/"), None);
        assert_eq!(rw("https://blob.example/x"), None);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut from = HeaderMap::new();
        from.insert("connection", HeaderValue::from_static("close, x-private"));
        from.insert("x-private", HeaderValue::from_static("1"));
        from.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        from.insert("authorization", HeaderValue::from_static("Bearer t"));
        from.append("accept", HeaderValue::from_static("a"));
        from.append("accept", HeaderValue::from_static("b"));
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        assert_eq!(to.len(), 3);
        assert_eq!(to["authorization"], "Bearer t");
        assert_eq!(to.get_all("accept").iter().count(), 2);
    }
}

//! What a handler answers ([`Reply`]) and how it becomes an HTTP response: JSON bodies, raw
//! bodies with their content type, watch streams, and the `Retry-After` and `Warning` headers.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Response body type.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// The connection must be dropped without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
pub struct Reset;

/// A handler's answer.
pub enum Reply {
    /// A JSON body with a status code.
    Json(u16, Value),
    /// Any body with a content type.
    Raw(u16, String, Bytes),
    /// A watch stream.
    Stream(mpsc::Receiver<Bytes>),
}

impl Reply {
    /// JSON reply.
    pub fn json(code: u16, v: Value) -> Self {
        Reply::Json(code, v)
    }

    /// Status code.
    pub fn code(&self) -> u16 {
        match self {
            Reply::Json(c, _) | Reply::Raw(c, _, _) => *c,
            Reply::Stream(_) => 200,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(e.code, e.to_status())
    }
}

/// Headers that go with a reply.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// `Warning: 299 - "..."` headers (admission warnings).
    pub warnings: Vec<String>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// The warning header value the real server sends (`299 - "text"`, quotes escaped).
pub fn warning_header(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("299 - \"{escaped}\"")
}

/// Turn a reply into an HTTP response.
pub fn into_response(reply: Reply, headers: &Headers) -> Response<Body> {
    let (code, ct, body) = match reply {
        Reply::Json(c, v) => (c, "application/json".to_string(), full(v.to_string())),
        Reply::Raw(c, ct, b) => (c, ct, full(b)),
        Reply::Stream(rx) => {
            let s = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
            });
            (
                200,
                "application/json".to_string(),
                StreamBody::new(s).boxed_unsync(),
            )
        }
    };
    let mut r = Response::builder()
        .status(code)
        .header("content-type", ct)
        .header("cache-control", "no-cache, private");
    if let Some(s) = headers.retry_after {
        r = r.header("retry-after", s.to_string());
    }
    for w in &headers.warnings {
        r = r.header("warning", warning_header(w));
    }
    match r.body(body) {
        Ok(r) => r,
        Err(_) => Response::new(full("internal error")),
    }
}

/// A reply with no extra headers.
pub fn plain(reply: Reply) -> Response<Body> {
    into_response(reply, &Headers::default())
}

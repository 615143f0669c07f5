//! Request parsing and answer building shared by every hop: the raw query and form pairs
//! (duplicates and repeats preserved), headers, and a `Reply` that remembers the error code
//! it carries for the request log.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

/// A request as the handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: Method,
    /// Host name without port, lower case.
    pub host: String,
    /// Host header as sent (may carry a port); used to build self-referencing URLs.
    pub authority: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Incoming {
    /// First value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        first(&self.query, name)
    }

    /// Every value of a query parameter.
    pub fn query_all(&self, name: &str) -> Vec<&str> {
        all(&self.query, name)
    }

    /// A query parameter name that appears more than once, if any.
    pub fn duplicate_query_param(&self) -> Option<&str> {
        let mut seen = std::collections::BTreeSet::new();
        self.query
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !seen.insert(*k))
    }

    /// The body decoded as `application/x-www-form-urlencoded`.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn all<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Splits `host[:port]` and lower-cases the host (IPv6 literals keep their brackets).
pub fn host_without_port(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority
            .split_once(']')
            .map(|(h, _)| format!("{h}]"))
            .unwrap_or_else(|| authority.to_owned())
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map(|(h, _)| h.to_owned())
            .unwrap_or_else(|| authority.to_owned())
    };
    host.to_ascii_lowercase()
}

/// An answer plus what the log should know about it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Error code for the log (`invalid_request`, `AADSTS70021`, `UNAUTHORIZED`, ...).
    pub error: Option<String>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Self {
        Self {
            status: status_code(status),
            content_type: "application/json; charset=utf-8",
            headers: Vec::new(),
            body: serde_json::to_vec(value).unwrap_or_default(),
            error: None,
        }
    }

    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self {
            status: status_code(status),
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: text.into().into_bytes(),
            error: None,
        }
    }

    pub fn raw(status: u16, content_type: Option<&str>, body: &str) -> Self {
        let mut reply = Self::text(status, body);
        if let Some(ct) = content_type {
            reply.headers.push(("content-type", ct.to_owned()));
        }
        reply
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn error_code(mut self, code: impl Into<String>) -> Self {
        self.error = Some(code.into());
        self
    }

    pub fn retry_after(self, secs: Option<u64>) -> Self {
        match secs {
            Some(s) => self.header("retry-after", s.to_string()),
            None => self,
        }
    }

    pub fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                if name == "content-type" {
                    headers.insert(header::CONTENT_TYPE, value);
                } else {
                    headers.append(name, value);
                }
            }
        }
        response
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(host_without_port("Demo.AzureCR.io:8443"), "demo.azurecr.io");
        assert_eq!(host_without_port("demo.azurecr.io"), "demo.azurecr.io");
        assert_eq!(host_without_port("[::1]:443"), "[::1]");
        assert_eq!(host_without_port("127.0.0.1"), "127.0.0.1");
    }
}

//! The one HTTP client every hop shares: rustls with the ring provider, trust anchors bundled
//! from `webpki-root-certs` (a scratch image has no system CA store) plus an optional extra
//! PEM bundle, DNS resolve overrides, timeouts, no proxy and no redirects.
//!
//! Redirects are off because a 307/308 would replay a form body — an identity token or a
//! ServiceAccount assertion — to whatever host the response names. Proxies are off because IMDS
//! must be reached directly and reqwest's system-proxy support is not compiled in anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::error::{AzureError, ErrorKind};

/// Transport settings of the shared client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `host → address` overrides; the address port is used when the URL has none.
    pub resolve: Vec<(String, SocketAddr)>,
    /// PEM certificates trusted in addition to the bundled web roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// reqwest's whole-request timeout (the retry layer also times out each attempt).
    pub request_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            resolve: Vec::new(),
            extra_ca_pem: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
        }
    }
}

fn config_error(message: impl Into<String>) -> AzureError {
    AzureError::new(ErrorKind::InvalidConfig, message)
}

/// The bundled web roots plus the extra PEM bundle.
pub(crate) fn root_store(extra_ca_pem: Option<&[u8]>) -> Result<RootCertStore, AzureError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| config_error(format!("extra CA bundle: bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| config_error(format!("extra CA bundle: unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(config_error("extra CA bundle: no PEM certificate found"));
        }
    }
    Ok(roots)
}

/// Builds the shared client. Does not depend on a process-wide rustls provider.
pub(crate) fn build_client(settings: &HttpSettings) -> Result<reqwest::Client, AzureError> {
    let roots = root_store(settings.extra_ca_pem.as_deref())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_error(format!("TLS configuration: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .user_agent(concat!("acrpull/", env!("CARGO_PKG_VERSION")));
    for (host, addr) in &settings.resolve {
        builder = builder.resolve(host, *addr);
    }
    builder
        .build()
        .map_err(|e| config_error(format!("HTTP client: {e}")))
}

/// Reads a response body up to `limit` bytes (token responses are a few KiB; a runaway body
/// must not exhaust memory).
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, AzureError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(AzureError::new(
                        ErrorKind::InvalidResponse,
                        format!("{what}: response body larger than {limit} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(super::error::from_transport(what, &e)),
        }
    }
}

/// Response bodies larger than this are refused.
pub(crate) const MAX_BODY: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_roots_are_present_and_bad_pem_is_refused() {
        let roots = root_store(None).unwrap_or_else(|e| panic!("{e}"));
        assert!(roots.len() > 100);
        let err = root_store(Some(b"not a pem")).expect_err("must refuse");
        assert_eq!(err.reason(), "InvalidConfig");
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(root_store(Some(garbage)).is_err());
    }

    #[test]
    fn client_builds_without_an_installed_provider() {
        let settings = HttpSettings {
            resolve: vec![("demo.azurecr.io".into(), ([127, 0, 0, 1], 8443).into())],
            ..HttpSettings::default()
        };
        assert!(build_client(&settings).is_ok());
    }
}

//! `--metrics-secure`: `/metrics` and `/debug` over HTTPS, only for callers Kubernetes
//! authenticates and authorizes — controller-runtime's secure metrics serving
//! (`filters.WithAuthenticationAndAuthorization`):
//!
//! 1. the bearer token is checked with a `TokenReview` (no token or a rejected one: 401);
//! 2. the user is checked with a `SubjectAccessReview` for `get` on the request path as a
//!    non-resource URL (`/metrics`, `/debug/bindings`; refused: 403). A scraper needs a
//!    ClusterRole with `nonResourceURLs: ["/metrics"], verbs: ["get"]`.
//! 3. `/debug` additionally answers a caller who is not allowed the whole path with what they
//!    may already read: the bindings of the namespaces where a `SubjectAccessReview` allows them
//!    `get` on `acrpullbindings` ([`Access::filter`]).
//!
//! Answers are cached for a minute (as client-go's delegating authenticator and authorizer
//! do), so a scrape every 15 s costs at most two reviews a minute per caller. A review the API
//! server cannot answer is a 500, never an allow.
//!
//! TLS is rustls with ring; the certificate comes from `--metrics-cert-dir` (`tls.crt`,
//! `tls.key`) or is self-signed at start (scrapers then set `insecure_skip_verify`, as with
//! controller-runtime's generated certificate).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// How long a review's answer is reused.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many cached answers (the cache is emptied when full).
const CACHE_MAX: usize = 4096;
/// Bound on each review call.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} holds no usable PEM certificate or key")]
    Pem(String),
    #[error("generating the self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The TLS server configuration: from `dir` (`tls.crt`, `tls.key`) or self-signed.
pub fn tls_config(dir: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, SecureError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (certs, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = match dir {
        Some(dir) => {
            let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
            let crt_pem =
                std::fs::read(&crt).map_err(|e| SecureError::Read(crt.display().to_string(), e))?;
            let key_pem =
                std::fs::read(&key).map_err(|e| SecureError::Read(key.display().to_string(), e))?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&crt_pem)
                .collect::<Result<_, _>>()
                .map_err(|_| SecureError::Pem(crt.display().to_string()))?;
            if certs.is_empty() {
                return Err(SecureError::Pem(crt.display().to_string()));
            }
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| SecureError::Pem(key.display().to_string()))?;
            (certs, key)
        }
        None => {
            let names = vec!["localhost".to_string(), "acrpull-metrics".to_string()];
            let cert = rcgen::generate_simple_self_signed(names)
                .map_err(|e| SecureError::Generate(e.to_string()))?;
            let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                .map_err(|e| SecureError::Generate(e.to_string()))?;
            (vec![cert.cert.der().clone()], key)
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SecureError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| SecureError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve `app` over TLS on `listener` until `shutdown` resolves. Each connection's handshake
/// runs in its own task under a timeout, so a slow or silent client holds up nobody else.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let accept = async {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
}

/// What a caller asks to do, as a SubjectAccessReview sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// `get` on a non-resource URL (`/metrics`, `/debug/bindings`).
    Path(String),
    /// `get` on `acrpullbindings` of `group` in `namespace`.
    Bindings { group: String, namespace: String },
}

/// Who the caller is (from the TokenReview).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

type Expiring<T> = HashMap<T, (Instant, Option<Caller>)>;

/// TokenReviews and SubjectAccessReviews against the API server, cached.
pub struct Authorizer {
    client: kube::Client,
    tokens: Mutex<Expiring<[u8; 32]>>,
    decisions: Mutex<HashMap<(Caller, Attributes), (Instant, bool)>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer")
    }
}

/// A review could not be made (the API server did not answer, or refused the controller).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(String);

impl Authorizer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// The user the token belongs to, or `None` when the API server does not accept it.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((at, caller)) = lock(&self.tokens).get(&key) {
            if now.duration_since(*at) < CACHE_TTL {
                return Ok(caller.clone());
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| ReviewError("TokenReview timed out".into()))?
                .map_err(|e| ReviewError(format!("TokenReview failed: {}", short(&e))))?;
        let status = answer.status.unwrap_or_default();
        let caller = if status.authenticated == Some(true) {
            let user: UserInfo = status.user.unwrap_or_default();
            Some(Caller {
                username: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
            })
        } else {
            None
        };
        insert(&self.tokens, key, (now, caller.clone()));
        Ok(caller)
    }

    /// Whether `caller` may `get` what `attrs` names.
    pub async fn allowed(&self, caller: &Caller, attrs: &Attributes) -> Result<bool, ReviewError> {
        let key = (caller.clone(), attrs.clone());
        let now = Instant::now();
        if let Some((at, allowed)) = lock(&self.decisions).get(&key) {
            if now.duration_since(*at) < CACHE_TTL {
                return Ok(*allowed);
            }
        }
        let mut spec = SubjectAccessReviewSpec {
            user: Some(caller.username.clone()),
            uid: Some(caller.uid.clone()).filter(|u| !u.is_empty()),
            groups: Some(caller.groups.clone()),
            ..Default::default()
        };
        match attrs {
            Attributes::Path(path) => {
                spec.non_resource_attributes = Some(NonResourceAttributes {
                    path: Some(path.clone()),
                    verb: Some("get".into()),
                })
            }
            Attributes::Bindings { group, namespace } => {
                spec.resource_attributes = Some(ResourceAttributes {
                    group: Some(group.clone()),
                    resource: Some("acrpullbindings".into()),
                    namespace: Some(namespace.clone()),
                    verb: Some("get".into()),
                    ..Default::default()
                })
            }
        }
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| ReviewError("SubjectAccessReview timed out".into()))?
                .map_err(|e| ReviewError(format!("SubjectAccessReview failed: {}", short(&e))))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        insert(&self.decisions, key, (now, allowed));
        Ok(allowed)
    }
}

fn short(e: &kube::Error) -> String {
    crate::state::text::truncate(&e.to_string(), 200)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn insert<K: std::hash::Hash + Eq, V>(m: &Mutex<HashMap<K, V>>, k: K, v: V) {
    let mut map = lock(m);
    if map.len() >= CACHE_MAX {
        map.clear();
    }
    map.insert(k, v);
}

/// Axum middleware: authenticate every request (401), and authorize `/metrics` as a
/// non-resource URL (403). `/debug` paths are authorized by their handlers (a namespaced
/// caller sees their namespaces), which read the [`Caller`] this inserts.
pub async fn authenticate(
    State(authz): State<Arc<Authorizer>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(token) = token else {
        return (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    };
    let caller = match authz.authenticate(&token).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "could not authenticate a metrics/debug request");
            return (StatusCode::INTERNAL_SERVER_ERROR, "authentication failed\n").into_response();
        }
    };
    let path = request.uri().path().to_string();
    if !path.starts_with("/debug/") {
        match authz
            .allowed(&caller, &Attributes::Path(path.clone()))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let body = format!(
                    "Forbidden (user={}, verb=get, resource=, subresource=)\n",
                    caller.username
                );
                return (StatusCode::FORBIDDEN, body).into_response();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not authorize a metrics request");
                return (StatusCode::INTERNAL_SERVER_ERROR, "authorization failed\n")
                    .into_response();
            }
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// What a `/debug` caller may see.
#[derive(Clone)]
pub enum Access {
    /// Everything: loopback listener, or authorized for the whole path.
    All,
    /// The caller is authorized per namespace.
    Checked(Arc<Authorizer>, Caller),
}

impl Access {
    /// The `(group, namespace)` pairs of `wanted` the caller may read, or `Err` when the
    /// reviews could not be made. `All` keeps everything.
    pub async fn filter(
        &self,
        path: &str,
        wanted: BTreeSet<(String, String)>,
    ) -> Result<Option<BTreeSet<(String, String)>>, ReviewError> {
        let Access::Checked(authz, caller) = self else {
            return Ok(None);
        };
        if authz
            .allowed(caller, &Attributes::Path(path.to_string()))
            .await?
        {
            return Ok(None);
        }
        let mut allowed = BTreeSet::new();
        for (group, namespace) in wanted {
            let attrs = Attributes::Bindings {
                group: group.clone(),
                namespace: namespace.clone(),
            };
            if authz.allowed(caller, &attrs).await? {
                allowed.insert((group, namespace));
            }
        }
        Ok(Some(allowed))
    }
}

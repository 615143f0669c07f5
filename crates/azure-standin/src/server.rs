//! Listeners and request dispatch: the plain-HTTP port (IMDS and the `/_standin` control
//! API) and the single HTTPS port that serves every Entra and registry host, chosen by the
//! TLS SNI / `Host` header.
//!
//! Per request: classify → limiter → configured latency → fault rules → handler → log.
//! Connections are served by hand (not `axum::serve`) so a fault can drop one mid-flight and a
//! "down" host can be refused right after its ClientHello.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State as AxumState};
use axum::http::header::HOST;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::Service;

use crate::acr;
use crate::config::{Config, Registry};
use crate::control;
use crate::entra;
use crate::faults::{FaultAction, FaultScope};
use crate::http::{host_without_port, Incoming, Reply};
use crate::imds;
use crate::log::{Hop, RequestRecord};
use crate::proxy;
use crate::state::State;

/// Largest request body read.
const BODY_LIMIT: usize = 1 << 20;

/// Per-connection controls handed to the handler through request extensions.
#[derive(Clone, Debug)]
struct Conn {
    kill: Arc<Notify>,
    tls: bool,
}

/// What a request is addressed to.
enum Target {
    Imds,
    Entra(entra::Route),
    Acr(Hop, Registry),
    NotFound,
}

impl Target {
    fn hop(&self) -> Hop {
        match self {
            Target::Imds => Hop::Imds,
            Target::Entra(route) => route.hop(),
            Target::Acr(hop, _) => *hop,
            Target::NotFound => Hop::Other,
        }
    }
}

fn classify(config: &Config, inc: &Incoming, tls: bool) -> Target {
    if !tls {
        return if inc.path == imds::PATH {
            Target::Imds
        } else {
            Target::NotFound
        };
    }
    if let Some(registry) = config.registry_for(&inc.authority) {
        match acr::hop_of(&inc.method, &inc.path) {
            // `localhost` may be both a registry (`localhost:<port>`) and an Entra host.
            Hop::Other if config.is_entra_host(&inc.host) || inc.host == "localhost" => {}
            Hop::Other => return Target::NotFound,
            hop => return Target::Acr(hop, registry.clone()),
        }
    }
    let entra_host =
        config.is_entra_host(&inc.host) || inc.host == "localhost" || inc.host == "127.0.0.1";
    match entra::Route::parse(&inc.path) {
        Some(route) if entra_host => Target::Entra(route),
        _ => Target::NotFound,
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(AxumState(state): AxumState<Arc<State>>, req: Request) -> Response {
    let started = Instant::now();
    let conn = req.extensions().get::<Conn>().cloned();
    let tls = conn.as_ref().is_some_and(|c| c.tls);
    let (parts, body) = req.into_parts();
    let authority = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let config = state.config();
    // A registry fronting a real one streams `/v2` bodies (blobs) instead of buffering them.
    let proxied = tls
        && acr::hop_of(&parts.method, parts.uri.path()) == Hop::V2
        && config
            .registry_for(&authority)
            .is_some_and(|r| r.upstream.is_some());
    let (body, mut stream) = if proxied {
        (bytes::Bytes::new(), Some(body))
    } else {
        let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
            return Reply::text(413, "request body too large").into_response();
        };
        (body, None)
    };
    let inc = Incoming {
        method: parts.method,
        host: host_without_port(&authority),
        authority,
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    if !tls && inc.path.starts_with(control::PREFIX) {
        return control::handle(&state, &inc).await.into_response();
    }

    let target = classify(&config, &inc, tls);
    let hop = target.hop();
    let (client_id, mut keys) = match &target {
        Target::Imds => imds::identity_keys(&config, &inc),
        Target::Entra(_) => entra::identity_keys(&config, &inc),
        Target::Acr(hop, _) => acr::identity_keys(&config, *hop, &inc),
        Target::NotFound => (None, Vec::new()),
    };
    keys.dedup();
    let identity = keys.iter().find_map(|k| {
        config
            .identity_by_name(k)
            .or_else(|| config.identity_by_client_id(k))
            .or_else(|| config.identity_by_object_id(k))
            .map(|i| i.name.clone())
    });
    let record = |status: u16, error: Option<String>, fault: Option<u64>| RequestRecord {
        seq: 0,
        hop,
        method: inc.method.to_string(),
        host: inc.host.clone(),
        path: inc.path.clone(),
        status,
        client_id: client_id.clone(),
        identity: identity.clone(),
        error,
        fault,
        timestamp: jiff::Timestamp::now(),
        duration_ms: started.elapsed().as_millis() as u64,
    };

    // Held until the answer is built, so concurrency is measured over the whole request.
    let mut _permit = None;
    let mut reply = None;
    match &target {
        Target::Imds if config.imds_limits.enabled => {
            let limits = &config.imds_limits;
            match state
                .limits
                .imds()
                .arrive(limits.requests_per_second, limits.max_concurrent)
            {
                Ok(p) => _permit = Some(p),
                Err(p) => {
                    _permit = Some(p);
                    reply = Some(imds::fault_reply(429, true).retry_after(Some(1)));
                }
            }
        }
        Target::Acr(_, registry) => {
            let limit = config.ops_per_minute(registry);
            if state
                .limits
                .registry(&registry.host)
                .arrive(limit, 0)
                .is_err()
            {
                reply = Some(acr::too_many_requests().retry_after(Some(60)));
            }
        }
        _ => {}
    }

    let mut fault = None;
    if reply.is_none() {
        if let Some(latency) = config.latencies.get(&hop) {
            tokio::time::sleep(latency.sample()).await;
        }
        let decision = state.faults.evaluate(&FaultScope {
            hop: Some(hop),
            host: &inc.host,
            identity_keys: keys,
        });
        fault = decision.fired;
        if !decision.delay.is_zero() {
            tokio::time::sleep(decision.delay).await;
        }
        match decision.action {
            Some((id, FaultAction::Hang)) => {
                state.log.push(record(0, Some("hang".into()), Some(id)));
                return std::future::pending().await;
            }
            Some((id, FaultAction::Reset)) => {
                state.log.push(record(0, Some("reset".into()), Some(id)));
                if let Some(conn) = &conn {
                    conn.kill.notify_one();
                }
                return std::future::pending().await;
            }
            Some((_, action)) => reply = Some(fault_reply(&target, &inc, &action)),
            None => {}
        }
    }
    if reply.is_none() {
        if let (Target::Acr(Hop::V2, registry), Some(body)) = (&target, stream.take()) {
            if let Some(upstream) = &registry.upstream {
                let forward = proxy::Forward {
                    method: inc.method.clone(),
                    path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                    headers: &inc.headers,
                    authority: &inc.authority,
                    body,
                };
                match proxy::forward(upstream, forward).await {
                    Ok(response) => {
                        state
                            .log
                            .push(record(response.status().as_u16(), None, fault));
                        return response;
                    }
                    Err(e) => {
                        tracing::warn!(registry = %registry.host, error = %e, "upstream registry unreachable");
                        reply = Some(acr::error(
                            502,
                            "UNKNOWN",
                            &format!("upstream registry: {e}"),
                        ));
                    }
                }
            }
        }
    }
    let reply = match reply {
        Some(reply) => reply,
        None => match &target {
            Target::Imds => imds::token(&state, &inc),
            Target::Entra(route) => entra::handle(&state, &inc, route).await,
            Target::Acr(hop, registry) => acr::handle(&state, &inc, *hop, registry),
            Target::NotFound => Reply::text(404, "404 page not found").error_code("not_found"),
        },
    };
    state
        .log
        .push(record(reply.status.as_u16(), reply.error.clone(), fault));
    reply.into_response()
}

/// Shapes an injected fault in the wire format of the hop.
fn fault_reply(target: &Target, inc: &Incoming, action: &FaultAction) -> Reply {
    let shaped = |status: u16, json: bool| match target {
        Target::Imds | Target::NotFound => imds::fault_reply(status, json),
        Target::Entra(_) => entra::fault_reply(&inc.authority, status, json),
        Target::Acr(..) => acr::fault_reply(status, json),
    };
    match action {
        FaultAction::IdentityNotFound => imds::identity_not_found(),
        FaultAction::Status {
            status,
            retry_after_secs,
        } => shaped(*status, true).retry_after(*retry_after_secs),
        FaultAction::Throttle {
            json,
            retry_after_secs,
        } => shaped(429, *json).retry_after(*retry_after_secs),
        FaultAction::Custom {
            status,
            body,
            content_type,
            retry_after_secs,
        } => Reply::raw(*status, content_type.as_deref(), body)
            .error_code("fault")
            .retry_after(*retry_after_secs),
        // Handled by the caller; never terminal here.
        FaultAction::Latency { .. } | FaultAction::Hang | FaultAction::Reset => {
            Reply::text(500, "unexpected fault").error_code("fault")
        }
    }
}

/// Serves plain HTTP (IMDS and control API) until shutdown.
pub(crate) async fn serve_http(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    let router = router(state);
    while let Some((tcp, killer)) = accept(&listener, &shutdown).await {
        let conn = Conn {
            kill: Arc::new(Notify::new()),
            tls: false,
        };
        tokio::spawn(serve_connection(
            TokioIo::new(tcp),
            router.clone(),
            conn,
            killer,
            shutdown.clone(),
        ));
    }
}

/// Serves HTTPS for every configured host until shutdown.
pub(crate) async fn serve_https(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    let router = router(state.clone());
    while let Some((tcp, killer)) = accept(&listener, &shutdown).await {
        let state = state.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
            let Ok(Ok(start)) = tokio::time::timeout(Duration::from_secs(10), acceptor).await
            else {
                return;
            };
            let sni = start
                .client_hello()
                .server_name()
                .map(|s| s.to_ascii_lowercase());
            if let Some(host) = &sni {
                if let Some(id) = state.faults.drop_connection(host) {
                    state.log.push(RequestRecord {
                        seq: 0,
                        hop: Hop::Other,
                        method: String::new(),
                        host: host.clone(),
                        path: String::new(),
                        status: 0,
                        client_id: None,
                        identity: None,
                        error: Some("connection_reset".into()),
                        fault: Some(id),
                        timestamp: jiff::Timestamp::now(),
                        duration_ms: 0,
                    });
                    reset(&killer);
                    return;
                }
            }
            let Ok(stream) = start.into_stream(state.tls.server_config()).await else {
                return;
            };
            let conn = Conn {
                kill: Arc::new(Notify::new()),
                tls: true,
            };
            serve_connection(TokioIo::new(stream), router, conn, killer, shutdown).await;
        });
    }
}

/// Accepts the next connection with a duplicate handle of its socket (to force a reset).
async fn accept(
    listener: &TcpListener,
    shutdown: &watch::Receiver<bool>,
) -> Option<(TcpStream, std::net::TcpStream)> {
    let mut shutdown = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => return None,
        };
        let Ok((tcp, _)) = accepted else {
            // Out of descriptors or a connection aborted before accept: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(std_tcp) = tcp.into_std() else {
            continue;
        };
        let Ok(killer) = std_tcp.try_clone() else {
            continue;
        };
        let Ok(tcp) = TcpStream::from_std(std_tcp) else {
            continue;
        };
        return Some((tcp, killer));
    }
}

/// Makes the socket's close send a RST instead of a FIN.
fn reset(socket: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

async fn serve_connection<I>(
    io: I,
    router: Router,
    conn: Conn,
    killer: std::net::TcpStream,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let kill = conn.kill.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(conn.clone());
            let mut router = router.clone();
            async move { router.call(req).await }
        });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = kill.notified() => reset(&killer),
        _ = shutdown.wait_for(|down| *down) => {}
    }
}

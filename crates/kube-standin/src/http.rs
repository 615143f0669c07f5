//! The HTTP side: two listeners on 127.0.0.1 — the API port (which can go down and come back
//! on the same port) and a control port that stays up — and the top-level route between the
//! control API (`/_standin/...`, [`crate::control`]) and the API request path
//! ([`crate::pipeline`]).

use std::sync::{Arc, Weak};

use futures::FutureExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::cluster::{Cluster, Settings};
use crate::error::ApiError;
use crate::listener::{Listener, Service};
use crate::reply::{plain, Body, Reset};
use crate::store::Store;
use crate::tls::Tls;
use crate::token::Signer;

/// A running server: its state and its two listeners.
pub struct Server {
    /// The shared state.
    pub cluster: Arc<Cluster>,
    /// The API port.
    pub api: Arc<Listener>,
    /// The control port.
    pub control: Arc<Listener>,
}

impl Server {
    /// Stop everything: listeners, connections, background controllers.
    pub fn shutdown(&self) {
        self.api.shutdown();
        self.control.shutdown();
        self.cluster.stop_tasks();
    }
}

async fn route(
    cluster: Arc<Cluster>,
    api: Weak<Listener>,
    req: Request<Incoming>,
    control_port: bool,
) -> Result<Response<Body>, Reset> {
    if req.uri().path().starts_with("/_standin") {
        let Some(api) = api.upgrade() else {
            return Ok(plain(ApiError::no_route().into()));
        };
        return Ok(crate::control::handle(cluster, api, req).await);
    }
    if control_port {
        return Ok(plain(ApiError::no_route().into()));
    }
    crate::pipeline::serve(cluster, req).await
}

fn service(cluster: Arc<Cluster>, api: Weak<Listener>, control_port: bool) -> Service {
    Arc::new(move |req| route(cluster.clone(), api.clone(), req, control_port).boxed())
}

/// Bind the listeners and start serving and the background controllers.
pub async fn start(port: u16, settings: Settings, cache_size: usize) -> std::io::Result<Server> {
    let signer = Signer::generate().map_err(|e| std::io::Error::other(e.to_string()))?;
    let tls = Tls::generate().map_err(|e| std::io::Error::other(e.to_string()))?;
    let api_tcp = Listener::bind_tcp(port).await?;
    let control_tcp = Listener::bind_tcp(0).await?;
    let api_port = api_tcp.local_addr()?.port();
    let control_port = control_tcp.local_addr()?.port();
    let store = Arc::new(Store::new(cache_size));
    crate::authz::bootstrap::install(&store);
    // The initial namespaces get their defaults before the server answers.
    crate::controllers::namespace::pass(&store, tls.ca_pem());
    // A fresh server's watch cache holds nothing from before it started.
    store.compact();
    let cluster = Arc::new(Cluster::new(
        store,
        signer,
        tls,
        api_port,
        format!("http://127.0.0.1:{control_port}"),
        &settings,
    ));
    let c = cluster.clone();
    let api = Listener::serve(
        api_tcp,
        true,
        Some(cluster.tls.server_config()),
        move |me| service(c, me, false),
    )?;
    let c = cluster.clone();
    let weak_api = Arc::downgrade(&api);
    let control = Listener::serve(control_tcp, false, None, move |_| {
        service(c, weak_api, true)
    })?;
    crate::controllers::spawn(&cluster);
    Ok(Server {
        cluster,
        api,
        control,
    })
}

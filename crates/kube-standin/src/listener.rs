//! A listener on 127.0.0.1 that can go down (closing the socket and killing every open
//! connection, watches included) and come back on the same port. What a connection serves is
//! a [`Service`] given at bind time, so this module knows nothing about routes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::lock;
use crate::reply::{Body, Reset};

/// What a connection serves.
pub type Service = Arc<
    dyn Fn(Request<Incoming>) -> BoxFuture<'static, Result<Response<Body>, Reset>> + Send + Sync,
>;

/// One listening port.
pub struct Listener {
    port: u16,
    service: Service,
    /// Serve connections that open with a TLS handshake over TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether `down` kills open connections (the control port's never go down).
    killable: bool,
    kill_tx: watch::Sender<u64>,
    shutdown_tx: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    down: AtomicBool,
}

impl Listener {
    /// Bind `127.0.0.1:port` (0 = ephemeral).
    pub async fn bind_tcp(port: u16) -> std::io::Result<TcpListener> {
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// Serve `make_service(this listener)` on a bound socket; with `tls`, connections that
    /// open with a TLS handshake are served over TLS, others as plain HTTP.
    pub fn serve(
        tcp: TcpListener,
        killable: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
        make_service: impl FnOnce(Weak<Listener>) -> Service,
    ) -> std::io::Result<Arc<Listener>> {
        let port = tcp.local_addr()?.port();
        let (kill_tx, _) = watch::channel(0u64);
        let (shutdown_tx, _) = watch::channel(false);
        let l = Arc::new_cyclic(|weak| Listener {
            port,
            service: make_service(weak.clone()),
            tls,
            killable,
            kill_tx,
            shutdown_tx,
            accept: Mutex::new(None),
            down: AtomicBool::new(false),
        });
        let h = tokio::spawn(accept_loop(l.clone(), tcp));
        *lock(&l.accept) = Some(h);
        Ok(l)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the port is down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Close the socket and kill every open connection (watches included).
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        if let Some(h) = lock(&self.accept).take() {
            h.abort();
        }
        self.kill_tx.send_modify(|g| *g += 1);
    }

    /// Rebind the same port.
    pub async fn up(self: &Arc<Self>) -> std::io::Result<()> {
        if !self.is_down() {
            return Ok(());
        }
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let h = tokio::spawn(accept_loop(self.clone(), tcp));
                    *lock(&self.accept) = Some(h);
                    self.down.store(false, Ordering::SeqCst);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
    }

    /// Down now, up again after `d` (in the background).
    pub fn down_for(self: &Arc<Self>, d: Duration) {
        self.down();
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if let Err(e) = me.up().await {
                tracing::warn!(error = %e, "Rebinding the API port failed");
            }
        });
    }

    /// Stop for good: close the socket and every connection.
    pub fn shutdown(&self) {
        self.down();
        self.shutdown_tx.send_replace(true);
    }
}

/// Boxed with an explicit `Send` bound: the accept loop is (indirectly) spawned from a request
/// handler (`/_standin/up`), and the type cycle would otherwise hide `Send`.
fn accept_loop(
    l: Arc<Listener>,
    tcp: TcpListener,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(accept_loop_inner(l, tcp))
}

async fn accept_loop_inner(l: Arc<Listener>, tcp: TcpListener) {
    loop {
        let Ok((stream, _)) = tcp.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let kill = l.kill_tx.subscribe();
        let shutdown = l.shutdown_tx.subscribe();
        let killable = l.killable;
        let service = l.service.clone();
        let tls = l.tls.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            let handshake = match &tls {
                Some(_) => {
                    matches!(
                        tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first))
                            .await,
                        Ok(Ok(1))
                    ) && first[0] == 0x16
                }
                None => false,
            };
            match tls {
                Some(cfg) if handshake => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    serve_connection(stream, service, kill, shutdown, killable).await
                }
                _ => serve_connection(stream, service, kill, shutdown, killable).await,
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    service: Service,
    mut kill: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
    killable: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| (service)(req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.changed(), if killable => {}
        _ = shutdown.changed() => {}
    }
}

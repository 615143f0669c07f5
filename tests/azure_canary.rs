//! No token leaks through any error path: canary tokens are sent to servers that echo the whole
//! request (headers and body, raw) back inside their error bodies, for every hop that carries a
//! token, every error status and both JSON and non-JSON bodies. The resulting errors (Display,
//! Debug, user message, hint) and the pipeline's log output must not contain any canary, raw,
//! form-encoded or base64-encoded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acrpull::azure::{
    AzureError, Cloud, CredentialRequest, Identity, IdentityAudience, PipelineConfig,
    PipelineMetrics, RetryPolicy, ServiceAccountTokenSource, TokenPipeline,
};
use acrpull::state::token::SecretToken;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt;

const SA_CANARY: &str = "CANARY-sa-assertion-7f3a";
const IDENTITY_CANARY: &str = "CANARY-identity-token-91bc";
const CREDENTIAL_CANARY: &str = "CANARY-credential-55d0";
const REGISTRY: &str = "demo.azurecr.io";

/// Requests that carried a canary (raw, or Basic-encoded) to the echo servers.
static ECHOED_A_TOKEN: AtomicUsize = AtomicUsize::new(0);

/// The refresh token the fake exchange returns: a readable JWT whose signature is a canary.
fn refresh_canary() -> String {
    let exp = jiff::Timestamp::now().as_second() + 3 * 3600;
    format!(
        "{}.{}.CANARYrefreshSIG",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Route {
    Imds,
    Entra,
    Exchange,
    Token,
    Verify,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Succeed,
    /// Answer with this status and the raw request echoed into the body.
    Echo {
        status: u16,
        json: bool,
    },
}

type Modes = Arc<Mutex<HashMap<Route, Mode>>>;

fn route_of(method: &str, path: &str) -> Route {
    if path.starts_with("/metadata/") {
        Route::Imds
    } else if path.contains("/oauth2/v2.0/token") {
        Route::Entra
    } else if path.starts_with("/oauth2/exchange") {
        Route::Exchange
    } else if method == "GET" {
        Route::Verify
    } else {
        Route::Token
    }
}

fn respond(route: Route, mode: Mode, raw_request: &str) -> (u16, String) {
    match mode {
        Mode::Succeed => {
            let body = match route {
                Route::Imds | Route::Entra => serde_json::json!({
                    "access_token": IDENTITY_CANARY, "expires_in": "3599", "token_type": "Bearer"
                }),
                Route::Exchange => serde_json::json!({"refresh_token": refresh_canary()}),
                Route::Token | Route::Verify => {
                    serde_json::json!({"access_token": refresh_canary()})
                }
            };
            (200, body.to_string())
        }
        Mode::Echo {
            status,
            json: false,
        } => (status, format!("echo: {raw_request}")),
        Mode::Echo { status, json: true } => {
            let body = match route {
                Route::Imds => serde_json::json!({
                    "error": "invalid_request", "error_description": raw_request
                }),
                Route::Entra => serde_json::json!({
                    "error": "invalid_request",
                    "error_description": format!("AADSTS70021: bad assertion {raw_request}"),
                    "error_codes": [70021],
                }),
                _ => {
                    serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": raw_request}]})
                }
            };
            (status, body.to_string())
        }
    }
}

/// Reads one HTTP/1.1 request and answers it; `Connection: close`.
fn serve_one(stream: &mut (impl Read + Write), modes: &Modes) {
    let mut reader = BufReader::new(&mut *stream);
    let mut head = String::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut body = vec![0u8; content_length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let raw = format!("{head}{}", String::from_utf8_lossy(&body));
    if raw.contains("CANARY") || raw.contains("Basic ") {
        ECHOED_A_TOKEN.fetch_add(1, Ordering::SeqCst);
    }
    let mut first = head.split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let route = route_of(&method, &path);
    let mode = modes
        .lock()
        .unwrap()
        .get(&route)
        .copied()
        .unwrap_or(Mode::Succeed);
    let (status, body) = respond(route, mode, &raw);
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// An echo server on loopback: plain HTTP when `tls` is `None`.
fn start_echo(tls: Option<Arc<rustls::ServerConfig>>, modes: Modes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            let tls = tls.clone();
            let modes = modes.clone();
            std::thread::spawn(move || handle(tcp, tls, &modes));
        }
    });
    addr
}

fn handle(mut tcp: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, modes: &Modes) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    match tls {
        None => serve_one(&mut tcp, modes),
        Some(config) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            serve_one(&mut stream, modes);
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    }
}

struct CanarySa;

impl ServiceAccountTokenSource for CanarySa {
    fn token(&self, _: &str, _: &str, _: &str) -> BoxFuture<'_, Result<SecretToken, AzureError>> {
        async { Ok(SecretToken::new(SA_CANARY)) }.boxed()
    }
}

/// A `tracing` writer capturing the pipeline's log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn forms_of(token: &str) -> Vec<String> {
    let mut forms = vec![
        token.to_string(),
        STANDARD.encode(format!("00000000-0000-0000-0000-000000000000:{token}")),
    ];
    forms.push(STANDARD.encode(token));
    forms
}

fn assert_clean(context: &str, rendered: &str) {
    assert!(
        !rendered.contains("CANARY"),
        "{context}: leaked a canary: {rendered}"
    );
    for token in [
        SA_CANARY,
        IDENTITY_CANARY,
        CREDENTIAL_CANARY,
        &refresh_canary(),
    ] {
        for form in forms_of(token) {
            assert!(
                !rendered.contains(&form),
                "{context}: leaked {form}: {rendered}"
            );
        }
    }
}

#[tokio::test]
async fn no_error_path_or_log_line_contains_a_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("acrpull=trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let ca = azure_standin::tls::Tls::new(vec![
        REGISTRY.to_string(),
        "login.microsoftonline.com".to_string(),
    ])
    .unwrap();
    let mut server_config = (*ca.server_config()).clone();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let modes: Modes = Arc::default();
    let https = start_echo(Some(Arc::new(server_config)), modes.clone());
    let http = start_echo(None, modes.clone());

    let config = PipelineConfig {
        imds_base_url: format!("http://{http}"),
        resolve: vec![
            (REGISTRY.into(), https),
            ("login.microsoftonline.com".into(), https),
        ],
        extra_ca_pem: Some(ca.ca_pem().as_bytes().to_vec()),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        },
        ..PipelineConfig::default()
    };

    let managed = CredentialRequest {
        server: REGISTRY.into(),
        scope: Some("repository:app:pull".into()),
        identity: Identity::ManagedClientId("client".into()),
        cloud: Cloud::Public,
        audience: IdentityAudience::ResourceManager,
        arm_resource_override: None,
        fresher_than: None,
    };
    let workload = CredentialRequest {
        identity: Identity::Workload {
            tenant_id: "tenant".into(),
            client_id: "client".into(),
            service_account_namespace: "ns".into(),
            service_account_name: "sa".into(),
        },
        ..managed.clone()
    };

    let statuses = [400, 401, 403, 404, 410, 429, 500, 503];
    let mut checked = 0;
    for route in [Route::Entra, Route::Exchange, Route::Token, Route::Verify] {
        for status in statuses {
            for json in [true, false] {
                // A fresh pipeline each time: nothing cached, every hop up to `route` runs.
                let pipeline =
                    TokenPipeline::new(config.clone(), Arc::new(CanarySa), PipelineMetrics::new())
                        .unwrap();
                {
                    let mut modes = modes.lock().unwrap();
                    modes.clear();
                    modes.insert(route, Mode::Echo { status, json });
                }
                let result = match route {
                    Route::Entra => pipeline.credential(&workload).await.map(|c| c.token),
                    Route::Verify => {
                        pipeline
                            .verify(
                                REGISTRY,
                                &SecretToken::new(CREDENTIAL_CANARY),
                                "repository:app:pull",
                            )
                            .await
                    }
                    _ => pipeline.credential(&managed).await.map(|c| c.token),
                };
                let context = format!("{route:?} {status} json={json}");
                let err = match result {
                    Ok(_) => panic!("{context}: expected an error"),
                    Err(e) => e,
                };
                assert_eq!(err.status(), Some(status), "{context}: {err}");
                // The echoed request really is quoted (minus the tokens).
                assert!(err.to_string().contains("HTTP/1.1"), "{context}: {err}");
                let rendered = format!("{err} | {err:?} | {} | {}", err.user_message(), err.hint());
                assert_clean(&context, &rendered);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * statuses.len() * 2);
    assert!(ECHOED_A_TOKEN.load(Ordering::SeqCst) >= checked);

    // A success response that cannot be read is not quoted at all.
    let pipeline =
        TokenPipeline::new(config.clone(), Arc::new(CanarySa), PipelineMetrics::new()).unwrap();
    modes.lock().unwrap().clear();
    modes.lock().unwrap().insert(
        Route::Exchange,
        Mode::Echo {
            status: 200,
            json: false,
        },
    );
    let err = pipeline.credential(&managed).await.expect_err("unreadable");
    assert_eq!(err.reason(), "InvalidResponse");
    assert_clean("unreadable 200", &format!("{err} | {err:?}"));

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("Retrying token request"),
        "the log capture works: {logs}"
    );
    assert_clean("logs", &logs);
}

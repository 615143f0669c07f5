//! A registry host with an `upstream` fronts a real registry: `/v2` requests are forwarded
//! (method, path, query, headers including `Authorization`, streamed bodies both ways,
//! `Location` rewritten to the login server) while `/oauth2/*` stays with the token server.
//! The upstream here is a small echo server, so every forwarded detail can be asserted.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use azure_standin::{Hop, Registry, RoleAssignment, Sku};
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// Bytes in the streamed bodies: larger than the stand-in's 1 MiB buffered-body limit.
const BIG: usize = 3 * 1024 * 1024 + 7;

/// What the echo upstream saw of the last request.
#[derive(Default, Clone, Debug)]
struct Seen {
    method: String,
    path_and_query: String,
    host: String,
    authorization: Option<String>,
    forwarded_host: Option<String>,
    forwarded_proto: Option<String>,
    body_len: usize,
}

/// Starts the echo upstream; returns its `host:port`.
async fn echo_upstream(seen: Arc<Mutex<Seen>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let me = addr.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        let me = me.clone();
        async move {
            let (parts, body) = req.into_parts();
            let header = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let mut body_len = 0;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                body_len += chunk.unwrap().len();
            }
            *seen.lock().unwrap() = Seen {
                method: parts.method.to_string(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                host: header("host").unwrap_or_default(),
                authorization: header("authorization"),
                forwarded_host: header("x-forwarded-host"),
                forwarded_proto: header("x-forwarded-proto"),
                body_len,
            };
            match parts.uri.path() {
                "/v2/big" => Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(Body::from(vec![7u8; BIG]))
                    .unwrap(),
                "/v2/app/blobs/uploads/" => Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .header(
                        "location",
                        format!("http://{me}/v2/app/blobs/uploads/u1?_state=abc"),
                    )
                    .header("docker-upload-uuid", "u1")
                    .body(Body::empty())
                    .unwrap(),
                _ => Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", "Bearer realm=\"x\",service=\"y\"")
                    .header("content-type", "application/json")
                    .body(Body::from(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#))
                    .unwrap(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn fronting(host: &str, upstream: &str) -> Registry {
    Registry {
        host: host.into(),
        sku: Sku::Premium,
        authentication_as_arm: true,
        ops_per_minute: None,
        tenant: None,
        upstream: Some(format!("http://{upstream}")),
    }
}

#[tokio::test]
async fn v2_is_forwarded_to_the_upstream_and_oauth2_stays_here() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let upstream = echo_upstream(seen.clone()).await;
    let (handle, client) = start().await;
    // The login server carries the stand-in's port, as clients address it (`localhost:<port>`).
    let login = format!("localhost:{}", handle.https_addr().port());
    handle.add_registry(fronting(&login, &upstream)).unwrap();
    handle
        .add_role_assignment(RoleAssignment {
            identity: "mi-pull".into(),
            registry: login.clone(),
            repository: "app".into(),
            actions: vec!["pull".into()],
        })
        .unwrap();
    let base = format!("https://{login}");

    // The upstream's own challenge comes back unchanged; the request arrived as sent.
    let r = client
        .get(format!("{base}/v2/app/tags/list?n=10&last=a"))
        .bearer_auth("opaque-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"x\",service=\"y\""
    );
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"errors":[{"code":"UNAUTHORIZED"}]})
    );
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.method, "GET");
    assert_eq!(s.path_and_query, "/v2/app/tags/list?n=10&last=a");
    assert_eq!(s.host, upstream);
    assert_eq!(s.authorization.as_deref(), Some("Bearer opaque-token"));
    assert_eq!(s.forwarded_host.as_deref(), Some(login.as_str()));
    assert_eq!(s.forwarded_proto.as_deref(), Some("https"));

    // A body larger than the stand-in's buffered limit streams through; a Location naming the
    // upstream is rewritten to the login server.
    let r = client
        .post(format!("{base}/v2/app/blobs/uploads/"))
        .body(vec![1u8; BIG])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://{login}/v2/app/blobs/uploads/u1?_state=abc")
    );
    assert_eq!(r.headers()["docker-upload-uuid"], "u1");
    let s = seen.lock().unwrap().clone();
    assert_eq!((s.method.as_str(), s.body_len), ("POST", BIG));

    // A large response streams back whole.
    let r = client.get(format!("{base}/v2/big")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), BIG);

    // `/oauth2/token` is the stand-in's, with the login server (port included) as service and
    // as the token's audience, which is what a registry configured with that service checks.
    let refresh = refresh_token(&handle, &client, &login).await;
    let r = access_token_post(&client, &login, &refresh, "repository:app:pull").await;
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(claims(&token)["aud"], login.as_str());
    assert_eq!(
        claims(&token)["access"],
        json!([{"type": "repository", "name": "app", "actions": ["pull"]}])
    );
    // The service must name the login server with its port, as clients send it.
    for service in ["localhost", "localhost:1"] {
        let r = client
            .post(format!("{base}/oauth2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("service", service),
                ("scope", "repository:app:pull"),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{service}");
    }

    // Entra is still served on `localhost` next to the registry.
    let r = client
        .get(format!(
            "{base}/{TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Proxied requests are logged under the v2 hop with the upstream's status.
    let v2: Vec<u16> = handle
        .requests_for(Hop::V2)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(v2, vec![401, 202, 200]);
    assert!(handle
        .requests_for(Hop::AcrToken)
        .iter()
        .all(|r| r.host == "localhost"));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_bad_gateway() {
    // A port nothing listens on (bound, then released).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (handle, client) = start().await;
    let login = format!("localhost:{}", handle.https_addr().port());
    handle.add_registry(fronting(&login, &dead)).unwrap();
    let r = client
        .get(format!("https://{login}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNKNOWN");
    assert_eq!(handle.requests_for(Hop::V2)[0].status, 502);
}

#[tokio::test]
async fn hosts_without_upstream_keep_the_stand_in_challenge() {
    let (handle, client) = start().await;
    let r = client
        .get(format!("https://{REGISTRY}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains(&format!("service=\"{REGISTRY}\"")));
    assert_eq!(handle.requests_for(Hop::V2).len(), 1);
}

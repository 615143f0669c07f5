//! Fault injection end to end: every action, every trigger, scoping by hop, host and
//! identity, registry hard-down, and per-registry SKU operation limits.

mod common;

use std::time::{Duration, Instant};

use azure_standin::{FaultAction, FaultRule, Hop, Trigger};
use common::*;
use serde_json::Value;

fn status(status: u16) -> FaultAction {
    FaultAction::Status {
        status,
        retry_after_secs: None,
    }
}

#[tokio::test]
async fn imds_identity_not_found_404_410_and_5xx() {
    let (handle, client) = start().await;
    let faults = handle.faults();
    let id = faults.add(FaultRule::new(FaultAction::IdentityNotFound).hop(Hop::Imds));
    let r = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error_description"], "Identity not found");
    assert!(faults.remove(id));

    for code in [404u16, 410, 500, 503] {
        faults.clear();
        faults.add(FaultRule::new(status(code)).hop(Hop::Imds));
        let r = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
        assert_eq!(r.status().as_u16(), code);
    }
    faults.clear();
    assert_eq!(
        imds(&handle, &client, &[("client_id", MI_CLIENT)])
            .await
            .status(),
        200
    );
    let counts = &handle.counts()[&Hop::Imds];
    assert_eq!(counts.faulted, 5);
    assert_eq!(counts.server_errors, 2);
    assert_eq!(counts.ok, 1);
}

#[tokio::test]
async fn throttle_with_and_without_json_and_retry_after() {
    let (handle, client) = start().await;
    handle.faults().add(
        FaultRule::new(FaultAction::Throttle {
            json: true,
            retry_after_secs: Some(7),
        })
        .hop(Hop::AcrExchange)
        .trigger(Trigger::NextN { n: 1 }),
    );
    handle.faults().add(
        FaultRule::new(FaultAction::Throttle {
            json: false,
            retry_after_secs: None,
        })
        .hop(Hop::AcrExchange)
        .trigger(Trigger::Nth { n: 2 }),
    );
    let arm = imds_token(&handle, &client, MI_CLIENT).await;
    let r = exchange(&client, REGISTRY, &arm).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["errors"][0]["code"], "TOOMANYREQUESTS");

    let r = exchange(&client, REGISTRY, &arm).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    let text = r.text().await.unwrap();
    assert!(text.starts_with("Ref A:"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err());

    assert_eq!(exchange(&client, REGISTRY, &arm).await.status(), 200);
    let records = handle.requests_for(Hop::AcrExchange);
    assert_eq!(
        records.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 429, 200]
    );
    assert!(records[0].fault.is_some() && records[2].fault.is_none());
}

#[tokio::test]
async fn custom_answer() {
    let (handle, client) = start().await;
    handle.faults().add(
        FaultRule::new(FaultAction::Custom {
            status: 502,
            body: "<html>Bad Gateway</html>".into(),
            content_type: Some("text/html".into()),
            retry_after_secs: Some(1),
        })
        .hop(Hop::V2),
    );
    let r = client
        .get(format!("https://{REGISTRY}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.text().await.unwrap(), "<html>Bad Gateway</html>");
}

#[tokio::test]
async fn latency_is_added_before_answering() {
    let mut config = fixture();
    config.latencies.insert(
        Hop::AcrToken,
        azure_standin::Latency {
            fixed_ms: 150,
            jitter_ms: 0,
        },
    );
    let (handle, client) = start_with(config).await;
    handle.faults().add(
        FaultRule::new(FaultAction::Latency {
            fixed_ms: 200,
            jitter_ms: 50,
        })
        .hop(Hop::Imds),
    );
    let started = Instant::now();
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let started = Instant::now();
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    // Latency alone is not an error.
    assert_eq!(handle.counts()[&Hop::Imds].ok, 1);
}

#[tokio::test]
async fn hang_never_answers_and_is_logged() {
    let (handle, client) = start().await;
    handle
        .faults()
        .add(FaultRule::new(FaultAction::Hang).hop(Hop::Imds));
    let result = client
        .get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            handle.imds_url()
        ))
        .header("Metadata", "true")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    assert!(
        handle
            .wait_for_requests(Duration::from_secs(5), |r| r
                .iter()
                .any(|r| r.hop == Hop::Imds && r.status == 0))
            .await
    );
    assert_eq!(handle.counts()[&Hop::Imds].unanswered, 1);
}

#[tokio::test]
async fn reset_drops_the_connection() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    handle.faults().add(
        FaultRule::new(FaultAction::Reset)
            .hop(Hop::AcrToken)
            .trigger(Trigger::NextN { n: 1 }),
    );
    let err = client
        .post(format!("https://{REGISTRY}/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("service", REGISTRY),
            ("scope", "repository:app:pull"),
            ("refresh_token", &refresh),
        ])
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    // The next request (new connection) succeeds.
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn registry_hard_down_refuses_only_that_host() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let basic_refresh = refresh_token(&handle, &client, BASIC).await;
    let down = handle
        .faults()
        .add(FaultRule::new(FaultAction::Reset).host(REGISTRY));
    // A fresh client, so no pooled connection is reused: the TLS handshake is cut.
    let fresh = handle.client_builder().unwrap().build().unwrap();
    let err = access_token_post_result(&fresh, REGISTRY, &refresh)
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // The pooled connection of the first client is cut on its next request too.
    assert!(access_token_post_result(&client, REGISTRY, &refresh)
        .await
        .is_err());
    // Other registries and Entra are unaffected.
    assert_eq!(
        access_token_post(&fresh, BASIC, &basic_refresh, "repository:app:pull")
            .await
            .status(),
        200
    );
    handle.faults().remove(down);
    assert_eq!(
        access_token_post(&fresh, REGISTRY, &refresh, "repository:app:pull")
            .await
            .status(),
        200
    );
    assert!(handle
        .requests()
        .iter()
        .any(|r| r.error.as_deref() == Some("connection_reset") && r.host == REGISTRY));
}

async fn access_token_post_result(
    client: &reqwest::Client,
    registry: &str,
    refresh: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("https://{registry}/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("service", registry),
            ("scope", "repository:app:pull"),
            ("refresh_token", refresh),
        ])
        .send()
        .await
}

#[tokio::test]
async fn triggers_probability_and_window() {
    let (handle, client) = start().await;
    let never = handle.faults().add(
        FaultRule::new(status(500))
            .hop(Hop::Imds)
            .trigger(Trigger::Probability { p: 0.0 }),
    );
    for _ in 0..5 {
        assert_eq!(
            imds(&handle, &client, &[("client_id", MI_CLIENT)])
                .await
                .status(),
            200
        );
    }
    handle.faults().remove(never);
    let always = handle.faults().add(
        FaultRule::new(status(500))
            .hop(Hop::Imds)
            .trigger(Trigger::Probability { p: 1.0 }),
    );
    assert_eq!(
        imds(&handle, &client, &[("client_id", MI_CLIENT)])
            .await
            .status(),
        500
    );
    handle.faults().remove(always);
    // A window that closed already (0..1 ms after being added) lets requests through.
    handle.faults().add(
        FaultRule::new(status(500))
            .hop(Hop::Imds)
            .trigger(Trigger::Window {
                after_ms: 0,
                for_ms: Some(0),
            }),
    );
    // A window open for an hour fires.
    handle.faults().add(
        FaultRule::new(status(503))
            .hop(Hop::Imds)
            .trigger(Trigger::Window {
                after_ms: 0,
                for_ms: Some(3_600_000),
            }),
    );
    assert_eq!(
        imds(&handle, &client, &[("client_id", MI_CLIENT)])
            .await
            .status(),
        503
    );
    assert_eq!(handle.faults().list().len(), 2);
}

#[tokio::test]
async fn faults_scoped_by_identity_and_host() {
    let (handle, client) = start().await;
    handle.faults().add(
        FaultRule::new(FaultAction::IdentityNotFound)
            .hop(Hop::Imds)
            .identity("mi-norole"),
    );
    assert_eq!(
        imds(&handle, &client, &[("client_id", MI_CLIENT)])
            .await
            .status(),
        200
    );
    assert_eq!(
        imds(&handle, &client, &[("client_id", NOROLE_CLIENT)])
            .await
            .status(),
        400
    );
    // A client id selects the same identity.
    handle.faults().clear();
    handle
        .faults()
        .add(FaultRule::new(status(500)).identity(MI_CLIENT).host(BASIC));
    let arm = imds_token(&handle, &client, MI_CLIENT).await;
    assert_eq!(exchange(&client, REGISTRY, &arm).await.status(), 200);
    let r = exchange(&client, BASIC, &arm).await;
    assert_eq!(r.status(), 500);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["errors"][0]["code"], "UNKNOWN");
}

#[tokio::test]
async fn sku_operation_limits_per_registry() {
    let mut config = fixture();
    // Make the limits small enough to reach in a test.
    config.sku_ops_per_minute.basic = 3;
    config.registries[0].ops_per_minute = Some(100);
    let (handle, client) = start_with(config).await;
    let arm = imds_token(&handle, &client, MI_CLIENT).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(exchange(&client, BASIC, &arm).await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let r = exchange(&client, BASIC, &arm).await;
    assert_eq!(r.headers()["retry-after"], "60");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["errors"][0]["code"], "TOOMANYREQUESTS");
    // Another registry has its own budget.
    assert_eq!(exchange(&client, REGISTRY, &arm).await.status(), 200);
    let stats = handle.limiter_stats();
    let basic = stats
        .iter()
        .find(|s| s.name == format!("acr:{BASIC}"))
        .unwrap();
    assert_eq!(basic.rate_limit, 3);
    assert_eq!(basic.admitted, 3);
    assert_eq!(basic.rejected, 3);
    assert_eq!(basic.peak_rate, 6);
    let demo = stats
        .iter()
        .find(|s| s.name == format!("acr:{REGISTRY}"))
        .unwrap();
    assert_eq!((demo.rate_limit, demo.peak_rate), (100, 1));
}

#[tokio::test]
async fn sku_defaults() {
    let config = fixture();
    let by_host = |h: &str| config.registry(h).unwrap();
    assert_eq!(config.ops_per_minute(by_host(BASIC)), 1000);
    assert_eq!(config.ops_per_minute(by_host(ARMLESS)), 3000);
    assert_eq!(config.ops_per_minute(by_host(REGISTRY)), 10000);
}

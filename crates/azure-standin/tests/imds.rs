//! IMDS stand-in: the happy path, every request check of AZURE.md §1/§6 and the rate and
//! concurrency limits, measured from the server side.

mod common;

use azure_standin::{Hop, Latency};
use common::*;
use serde_json::Value;

#[tokio::test]
async fn issues_arm_token_with_string_times_consistent_with_jwt() {
    let (handle, client) = start().await;
    let r = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for field in ["expires_in", "expires_on", "not_before"] {
        assert!(body[field].is_string(), "{field} must be a string: {body}");
    }
    assert_eq!(body["resource"], "https://management.azure.com/");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], MI_CLIENT);
    assert_eq!(body["expires_in"], "86399");
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["aud"], "https://management.azure.com/");
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["oid"], MI_OBJECT);
    assert_eq!(c["appid"], MI_CLIENT);
    assert_eq!(c["xms_mirid"], MI_RESOURCE);
    assert_eq!(c["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(c["exp"].as_i64().unwrap().to_string(), body["expires_on"]);
    assert_eq!(c["nbf"].as_i64().unwrap().to_string(), body["not_before"]);
    assert!(c["iat"].is_i64());
    // The signature verifies against the published ARM key set.
    azure_standin::jwt::Unverified::parse(token)
        .unwrap()
        .verify_with_jwks(&handle.arm_jwks())
        .unwrap();

    let records = handle.requests_for(Hop::Imds);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 200);
    assert_eq!(records[0].identity.as_deref(), Some("mi-pull"));
    assert_eq!(records[0].client_id.as_deref(), Some(MI_CLIENT));
}

#[tokio::test]
async fn every_selector_resolves_the_identity_and_resource_is_kept_as_requested() {
    let (handle, client) = start().await;
    for (selector, value) in [
        ("object_id", MI_OBJECT),
        ("msi_res_id", MI_RESOURCE),
        ("mi_res_id", MI_RESOURCE),
    ] {
        let r = client
            .get(format!(
                "{}/metadata/identity/oauth2/token",
                handle.imds_url()
            ))
            .header("Metadata", "true")
            .query(&[
                ("api-version", "2018-02-01"),
                ("resource", "https://management.core.windows.net/"),
                (selector, value),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{selector}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            claims(body["access_token"].as_str().unwrap())["aud"],
            "https://management.core.windows.net/"
        );
    }
}

#[tokio::test]
async fn rejects_bad_requests_with_imds_bodies() {
    let (handle, client) = start().await;
    let url = format!("{}/metadata/identity/oauth2/token", handle.imds_url());

    let no_metadata = client
        .get(&url)
        .query(&[("api-version", "2018-02-01"), ("resource", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_metadata.status(), 400);
    let body: Value = no_metadata.json().await.unwrap();
    assert_eq!(body["error"], "bad_request_102");

    let wrong_metadata = client
        .get(&url)
        .header("Metadata", "True")
        .query(&[("api-version", "2018-02-01"), ("resource", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_metadata.status(), 400);

    let forwarded = client
        .get(&url)
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.0.0.1")
        .query(&[("api-version", "2018-02-01"), ("resource", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 400);

    let duplicate = client
        .get(format!(
            "{url}?api-version=2018-02-01&resource=x&resource=y&client_id={MI_CLIENT}"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 400);
    let body: Value = duplicate.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let no_version = client
        .get(&url)
        .header("Metadata", "true")
        .query(&[("resource", "x"), ("client_id", MI_CLIENT)])
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let body: Value = no_version.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("api-version"));

    let no_resource = client
        .get(&url)
        .header("Metadata", "true")
        .query(&[("api-version", "2018-02-01"), ("client_id", MI_CLIENT)])
        .send()
        .await
        .unwrap();
    assert_eq!(no_resource.status(), 400);

    let post = client
        .post(&url)
        .header("Metadata", "true")
        .query(&[("api-version", "2018-02-01"), ("resource", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn unknown_or_ambiguous_identity_is_400() {
    let (handle, client) = start().await;
    for selector in [
        ("client_id", "99999999-0000-0000-0000-000000000000"),
        // An app registration is not a managed identity on the VM.
        ("client_id", APP_CLIENT),
    ] {
        let r = imds(&handle, &client, &[selector]).await;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error":"invalid_request","error_description":"Identity not found"})
        );
    }
    // Two managed identities on the VM and no selector.
    let r = imds(&handle, &client, &[]).await;
    assert_eq!(r.status(), 400);
    // Two selectors.
    let r = imds(
        &handle,
        &client,
        &[("client_id", MI_CLIENT), ("object_id", MI_OBJECT)],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(handle.counts()[&Hop::Imds].client_errors, 4);
}

#[tokio::test]
async fn rate_limit_rejects_beyond_twenty_per_second() {
    let mut config = fixture();
    // Only the rate limit here (0 disables the concurrency limit), so the burst can be sent
    // at once and lands well within one second even on a busy machine.
    config.imds_limits.max_concurrent = 0;
    let (handle, client) = start_with(config).await;
    let calls = (0..25).map(|_| imds(&handle, &client, &[("client_id", MI_CLIENT)]));
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 5, "{statuses:?}");
    let stats = &handle.limiter_stats()[0];
    assert_eq!(stats.name, "imds");
    assert_eq!(stats.rate_limit, 20);
    assert!(stats.admitted <= 20);
    assert_eq!(stats.rejected as usize, throttled);
}

#[tokio::test]
async fn concurrency_limit_rejects_beyond_five_in_flight() {
    let mut config = fixture();
    config.latencies.insert(
        Hop::Imds,
        Latency {
            fixed_ms: 300,
            jitter_ms: 0,
        },
    );
    let (handle, client) = start_with(config).await;
    let calls = (0..8).map(|_| imds(&handle, &client, &[("client_id", MI_CLIENT)]));
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
    let stats = &handle.limiter_stats()[0];
    // Rejected requests leave at once, so the peak is at least one over the limit.
    assert!(stats.peak_concurrency > 5, "{stats:?}");
    assert_eq!(stats.concurrency_limit, 5);
}

#[tokio::test]
async fn limits_are_configurable_and_peaks_show_a_polite_client() {
    let mut config = fixture();
    config.imds_limits.requests_per_second = 2;
    let (handle, client) = start_with(config).await;
    let first = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    let second = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    let third = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    assert_eq!(
        (
            first.status().as_u16(),
            second.status().as_u16(),
            third.status().as_u16()
        ),
        (200, 200, 429)
    );
    assert_eq!(third.headers()["retry-after"], "1");
    handle.clear_requests();
    let r = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    // Clearing also empties the limiter windows, so the next request is admitted.
    assert_eq!(r.status(), 200);
    let stats = &handle.limiter_stats()[0];
    assert_eq!(stats.peak_rate, 1);
    assert_eq!(stats.peak_concurrency, 1);
    handle.shutdown().await;
}

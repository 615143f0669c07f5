//! The inputs hash stored in `acr.microsoft.com/token.inputs`: when a binding's inputs change,
//! the stored token was minted for something else and is re-minted.
//!
//! Two hashes per binding:
//!
//! - the **legacy** hash, exactly the old controller's (the inputs it hashed), written to
//!   `acr.microsoft.com/token.inputs`, so the old controller finds every Secret acrpull writes
//!   current (a rollback re-mints nothing);
//! - the **full** hash, which appends the inputs the old controller ignored (workload-identity
//!   client/tenant ids, air-gapped cloud config, the `acr.microsoft.com/identity-audience`
//!   annotation) only when they are set, written to `acr.microsoft.com/token.inputs-all`, so a
//!   change to them re-mints. Without them set it equals the legacy hash.

use super::names::base36_sha224;

/// v1beta1, the old controller's hash: client id + path-cleaned resource id + server + scope,
/// all *after* environment defaults were applied.
pub fn v1beta1(client_id: &str, resource_id: &str, server: &str, scope: &str) -> String {
    base36_sha224(v1beta1_text(client_id, resource_id, server, scope).as_bytes())
}

fn v1beta1_text(client_id: &str, resource_id: &str, server: &str, scope: &str) -> String {
    format!("{client_id}{resource_id}{server}{scope}")
}

/// v1beta1, every input: [`v1beta1`] plus the identity-audience annotation when set.
pub fn v1beta1_all(
    client_id: &str,
    resource_id: &str,
    server: &str,
    scope: &str,
    identity_audience: Option<&str>,
) -> String {
    let mut s = v1beta1_text(client_id, resource_id, server, scope);
    push_audience(&mut s, identity_audience);
    base36_sha224(s.as_bytes())
}

fn push_audience(s: &mut String, identity_audience: Option<&str>) {
    if let Some(audience) = identity_audience {
        s.push_str("\u{0}identityAudience=");
        s.push_str(audience);
    }
}

/// The v1beta2 spec fields that determine the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1beta2Inputs<'a> {
    pub service_account_name: &'a str,
    pub managed: Option<(&'a str, &'a str)>, // (client id, resource id) as written
    pub workload_service_account: Option<&'a str>,
    pub workload_ids: Option<(&'a str, &'a str)>, // (client id, tenant id) when set in the spec
    pub environment: &'a str,
    pub server: &'a str,
    pub scope: &'a str,
    pub cloud_config: Option<(&'a str, &'a str)>, // (authority host, ARM audience)
    /// The `acr.microsoft.com/identity-audience` annotation, when set.
    pub identity_audience: Option<&'a str>,
}

/// v1beta2, every input (the full hash): [`v1beta2_legacy`]'s text plus the inputs the old
/// controller ignored (SPEC §11), each appended only when set.
pub fn v1beta2(i: &V1beta2Inputs<'_>) -> String {
    let mut s = v1beta2_text(i);
    if let Some((client, tenant)) = i.workload_ids {
        if !client.is_empty() || !tenant.is_empty() {
            s.push_str("\u{0}workloadIdentityClientID=");
            s.push_str(client);
            s.push_str("\u{0}tenantID=");
            s.push_str(tenant);
        }
    }
    if let Some((authority, audience)) = i.cloud_config {
        s.push_str("\u{0}cloudConfig=");
        s.push_str(authority);
        s.push('\u{0}');
        s.push_str(audience);
    }
    push_audience(&mut s, i.identity_audience);
    base36_sha224(s.as_bytes())
}

/// v1beta2, the old controller's hash (what `inputsHash` in msi-acrpull computes).
pub fn v1beta2_legacy(i: &V1beta2Inputs<'_>) -> String {
    base36_sha224(v1beta2_text(i).as_bytes())
}

fn v1beta2_text(i: &V1beta2Inputs<'_>) -> String {
    let mut s = String::from(i.service_account_name);
    if let Some((client, resource)) = i.managed {
        s.push_str("managedIdentity");
        s.push_str(resource);
        s.push_str(client);
    } else if let Some(sa) = i.workload_service_account {
        s.push_str("workloadIdentity");
        s.push_str(sa);
    }
    s.push_str(i.environment);
    s.push_str(i.server);
    s.push_str(i.scope);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1beta1_matches_old_concatenation() {
        assert_eq!(
            v1beta1(
                "cid",
                "/subscriptions/s/rg",
                "r.azurecr.io",
                "repository:a:pull"
            ),
            base36_sha224(b"cid/subscriptions/s/rgr.azurecr.iorepository:a:pull")
        );
    }

    #[test]
    fn v1beta2_old_inputs_hash_as_before_and_new_inputs_change_it() {
        let base = V1beta2Inputs {
            service_account_name: "puller",
            managed: Some(("cid", "")),
            environment: "PublicCloud",
            server: "r.azurecr.io",
            scope: "repository:a:pull",
            ..Default::default()
        };
        // Exactly the old controller's concatenation.
        assert_eq!(
            v1beta2(&base),
            base36_sha224(b"pullermanagedIdentitycidPublicCloudr.azurecr.iorepository:a:pull")
        );
        let wi = V1beta2Inputs {
            managed: None,
            workload_service_account: Some("fed"),
            ..base.clone()
        };
        assert_eq!(
            v1beta2(&wi),
            base36_sha224(b"pullerworkloadIdentityfedPublicCloudr.azurecr.iorepository:a:pull")
        );
        let wi_ids = V1beta2Inputs {
            workload_ids: Some(("c2", "t2")),
            ..wi.clone()
        };
        let wi_ids_other = V1beta2Inputs {
            workload_ids: Some(("c3", "t2")),
            ..wi.clone()
        };
        let airgapped = V1beta2Inputs {
            environment: "AirgappedCloud",
            cloud_config: Some(("https://login.example", "https://mgmt.example")),
            ..base.clone()
        };
        let airgapped_other = V1beta2Inputs {
            cloud_config: Some(("https://login.example", "https://other.example")),
            ..airgapped.clone()
        };
        let all = [
            v1beta2(&base),
            v1beta2(&wi),
            v1beta2(&wi_ids),
            v1beta2(&wi_ids_other),
            v1beta2(&airgapped),
            v1beta2(&airgapped_other),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The legacy hash ignores what the old controller ignored.
        for extra in [&wi_ids, &wi_ids_other] {
            assert_eq!(v1beta2_legacy(extra), v1beta2(&wi));
        }
        assert_eq!(v1beta2_legacy(&base), v1beta2(&base));
        // The identity-audience annotation changes only the full hash, and only when set.
        let audience = V1beta2Inputs {
            identity_audience: Some("container-registry"),
            ..base.clone()
        };
        assert_ne!(v1beta2(&audience), v1beta2(&base));
        assert_eq!(v1beta2_legacy(&audience), v1beta2(&base));
        assert_eq!(
            v1beta1_all("cid", "", "r.azurecr.io", "repository:a:pull", None),
            v1beta1("cid", "", "r.azurecr.io", "repository:a:pull")
        );
        assert_ne!(
            v1beta1_all(
                "cid",
                "",
                "r.azurecr.io",
                "repository:a:pull",
                Some("resource-manager")
            ),
            v1beta1("cid", "", "r.azurecr.io", "repository:a:pull")
        );
        // Empty ids count as unset.
        assert_eq!(
            v1beta2(&V1beta2Inputs {
                workload_ids: Some(("", "")),
                ..wi.clone()
            }),
            v1beta2(&wi)
        );
    }
}

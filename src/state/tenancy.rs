//! Multi-tenant rules, decided without I/O (SPEC §12):
//!
//! - **Actions** ([`AllowedActions`], `--allowed-scope-actions`): which ACR scope actions any
//!   binding may ask for. Checked in every tenancy mode; default `pull` and `metadata_read`.
//! - **Air-gapped clouds** ([`AllowedClouds`], `--allowed-entra-authority-hosts`,
//!   `--allowed-resource-manager-audiences`): a binding's own Entra authority host and Resource
//!   Manager audience are used only when the operator listed them. Default: none.
//! - **Tenancy policies** ([`TenancyPolicy`], the cluster-scoped `AcrPullPolicy` objects):
//!   which namespaces may use which identities, registries and actions, evaluated by
//!   [`evaluate`] under the [`Mode`] the operator chose (`--tenancy-mode`).
//!
//! Every function here is pure and table-tested; the k8s layer feeds it the policies and the
//! namespace's labels from its watch caches.

use std::collections::BTreeMap;

use super::binding::IdentitySpec;
use super::scope::ResourceScope;
use super::selector::Selector;
use super::text::truncate;

/// `--tenancy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No policy is read: the old controller's behaviour (the default, so a swap changes nothing).
    #[default]
    Off,
    /// Policies are evaluated; a binding outside them is served but flagged (condition, Event,
    /// metric).
    Audit,
    /// A binding outside every policy fails with `NotPermitted` and loses its credential.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

/// The actions a pull client needs: `pull`, and the read-only `metadata_read` (tag and
/// manifest listings through ACR's own API).
pub const DEFAULT_ALLOWED_ACTIONS: [&str; 2] = ["pull", "metadata_read"];

/// Scope actions the controller grants to any binding (`--allowed-scope-actions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedActions(Vec<String>);

impl AllowedActions {
    /// Trimmed, lower-cased, without empties or duplicates. `*` is an action like any other:
    /// listing it allows scopes asking for `*`, not every action.
    pub fn new<I, S>(actions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = Vec::new();
        for a in actions {
            let a = a.as_ref().trim().to_ascii_lowercase();
            if !a.is_empty() && !out.contains(&a) {
                out.push(a);
            }
        }
        Self(out)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn allows(&self, action: &str) -> bool {
        self.0.iter().any(|a| a == action)
    }
}

impl Default for AllowedActions {
    fn default() -> Self {
        Self::new(DEFAULT_ALLOWED_ACTIONS)
    }
}

/// The first action of `scopes` that `allowed` does not grant, with its scope.
pub fn first_disallowed(
    scopes: &[ResourceScope],
    allowed: impl Fn(&str) -> bool,
) -> Option<(&ResourceScope, &str)> {
    scopes.iter().find_map(|s| {
        s.actions
            .iter()
            .find(|a| !allowed(a))
            .map(|a| (s, a.as_str()))
    })
}

/// The operator's allow-lists for air-gapped bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedClouds {
    /// Normalised `https://host[:port]` authorities (`--allowed-entra-authority-hosts`).
    pub authority_hosts: Vec<String>,
    /// Normalised audiences (`--allowed-resource-manager-audiences`).
    pub audiences: Vec<String>,
}

impl AllowedClouds {
    /// Normalises both lists; entries that are not valid authorities are dropped (the flag
    /// parser refuses them first, see [`normalize_authority`]).
    pub fn new<A: AsRef<str>, B: AsRef<str>>(
        authorities: impl IntoIterator<Item = A>,
        audiences: impl IntoIterator<Item = B>,
    ) -> Self {
        let mut authority_hosts: Vec<String> = Vec::new();
        for a in authorities {
            if let Ok(a) = normalize_authority(a.as_ref()) {
                if !authority_hosts.contains(&a) {
                    authority_hosts.push(a);
                }
            }
        }
        let mut out: Vec<String> = Vec::new();
        for a in audiences {
            let a = normalize_audience(a.as_ref());
            if !a.is_empty() && !out.contains(&a) {
                out.push(a);
            }
        }
        Self {
            authority_hosts,
            audiences: out,
        }
    }

    pub fn allows_authority(&self, normalized: &str) -> bool {
        self.authority_hosts.iter().any(|a| a == normalized)
    }

    pub fn allows_audience(&self, audience: &str) -> bool {
        let a = normalize_audience(audience);
        self.audiences.contains(&a)
    }
}

/// An Entra authority as `https://host[:port]` (lower-case host, no trailing slash). Accepts
/// `host`, `https://host` and `https://host/`; refuses any other scheme, user information, a
/// path, a query or a fragment.
pub fn normalize_authority(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some(_) => return Err("must be an https:// URL".into()),
        None => raw,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err("has no host".into());
    }
    if rest
        .bytes()
        .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\' | b'%'))
    {
        return Err(
            "must be a bare https://host[:port], without path, query or credentials".into(),
        );
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !host_ok {
        return Err("has an invalid host name".into());
    }
    let host = host.to_ascii_lowercase();
    match port {
        Some(p) => {
            let p: u16 = p.parse().map_err(|_| "has an invalid port".to_string())?;
            if p == 443 {
                Ok(format!("https://{host}"))
            } else {
                Ok(format!("https://{host}:{p}"))
            }
        }
        None => Ok(format!("https://{host}")),
    }
}

/// Audiences compare without surrounding space, a trailing `/` or `/.default`, and with the
/// scheme and host case-folded (`HTTPS://Management.Contoso/` = `https://management.contoso`).
pub fn normalize_audience(raw: &str) -> String {
    let a = raw.trim();
    let a = a.strip_suffix("/.default").unwrap_or(a);
    let a = a.trim_end_matches('/');
    match a.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase(),
                path
            )
        }
        None => a.to_string(),
    }
}

/// One `AcrPullPolicy`, as decisions see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenancyPolicy {
    pub name: String,
    /// Namespaces covered by name.
    pub namespace_names: Vec<String>,
    /// Namespaces covered by labels (`None`: none by labels; an empty selector: all).
    pub namespace_selector: Option<Selector>,
    /// Managed identities by client id (compared case-insensitively).
    pub managed_client_ids: Vec<String>,
    /// Managed identities by ARM resource id (compared case-insensitively).
    pub managed_resource_ids: Vec<String>,
    /// Workload identities as `(clientID, tenantID)`.
    pub workload_identities: Vec<(String, String)>,
    /// Registries by exact server (`host` or `host:port`).
    pub registries: Vec<String>,
    /// Registries by domain suffix (the suffix itself or any subdomain).
    pub registry_suffixes: Vec<String>,
    /// Scope actions the covered namespaces may use (still within `--allowed-scope-actions`).
    pub actions: Vec<String>,
    /// Whether unscoped (v1beta1, no `scope`) credentials are allowed.
    pub allow_unscoped: bool,
}

impl TenancyPolicy {
    /// Whether the namespace `name` with `labels` is covered.
    pub fn covers(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace_names.iter().any(|n| n == name)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches(labels))
    }

    /// Why this policy does not permit `request`, or `None` when it does.
    fn refusal(&self, request: &Request<'_>) -> Option<String> {
        let eq = |a: &String, b: &str| a.eq_ignore_ascii_case(b);
        match request.identity {
            IdentitySpec::ManagedClientId(id) => {
                if !self.managed_client_ids.iter().any(|x| eq(x, id)) {
                    return Some(format!("managed identity client id {id} is not listed"));
                }
            }
            IdentitySpec::ManagedResourceId(id) => {
                if !self.managed_resource_ids.iter().any(|x| eq(x, id)) {
                    return Some(format!(
                        "managed identity resource id {} is not listed",
                        truncate(id, 200)
                    ));
                }
            }
            IdentitySpec::Workload {
                tenant_id,
                client_id,
                ..
            } => {
                if !self
                    .workload_identities
                    .iter()
                    .any(|(c, t)| eq(c, client_id) && eq(t, tenant_id))
                {
                    return Some(format!(
                        "workload identity client id {client_id} in tenant {tenant_id} is not listed"
                    ));
                }
            }
        }
        let host = request.registry_host;
        let server = request.registry_server;
        let by_name = self.registries.iter().any(|r| eq(r, server));
        let by_suffix = self.registry_suffixes.iter().any(|s| {
            let s = s.trim().trim_matches('.').to_ascii_lowercase();
            !s.is_empty()
                && (host == s
                    || (host.len() > s.len()
                        && host.ends_with(s.as_str())
                        && host.as_bytes()[host.len() - s.len() - 1] == b'.'))
        });
        if !by_name && !by_suffix {
            return Some(format!("registry {server} is not listed"));
        }
        match request.scopes {
            None if !self.allow_unscoped => {
                return Some(
                    "unscoped credentials (a v1beta1 binding without spec.scope) are not allowed"
                        .to_string(),
                )
            }
            None => {}
            Some(scopes) => {
                if let Some((scope, action)) =
                    first_disallowed(scopes, |a| self.actions.iter().any(|x| x == a))
                {
                    return Some(format!(
                        "action {action:?} of scope {} is not listed",
                        truncate(&scope.to_string(), 120)
                    ));
                }
            }
        }
        None
    }
}

/// What a policy is asked about: a binding's resolved identity, registry and scopes.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub identity: &'a IdentitySpec,
    /// Lower-case host without port.
    pub registry_host: &'a str,
    /// `host` or `host:port`, as used for the registry.
    pub registry_server: &'a str,
    /// Parsed scopes; `None` for an unscoped v1beta1 credential.
    pub scopes: Option<&'a [ResourceScope]>,
}

/// The tenancy outcome for one binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Permitted by these policies (the first in name order is named in messages).
    Permitted { policies: Vec<String> },
    /// Refused: the message names the covering policies (if any) and what each refused.
    Denied { message: String },
    /// The namespace is not in the cache yet: no definite decision (nothing is revoked).
    Undecided,
}

/// Evaluate `request` from namespace `namespace` (with `labels`, `None` when the namespace is
/// not known yet) against every policy. A binding is permitted when one covering policy
/// permits all of it; policies are not merged.
pub fn evaluate(
    policies: &[TenancyPolicy],
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
    request: &Request<'_>,
) -> Verdict {
    let Some(labels) = labels else {
        return Verdict::Undecided;
    };
    let mut covering: Vec<&TenancyPolicy> = policies
        .iter()
        .filter(|p| p.covers(namespace, labels))
        .collect();
    covering.sort_by(|a, b| a.name.cmp(&b.name));
    if covering.is_empty() {
        return Verdict::Denied {
            message: format!(
                "not permitted: no AcrPullPolicy covers namespace {namespace}; an operator must \
                 create one that lists this binding's identity, registry and actions"
            ),
        };
    }
    let mut refusals = Vec::new();
    let mut permitting = Vec::new();
    for p in &covering {
        match p.refusal(request) {
            None => permitting.push(p.name.clone()),
            Some(why) => refusals.push(format!("AcrPullPolicy {}: {why}", p.name)),
        }
    }
    if !permitting.is_empty() {
        return Verdict::Permitted {
            policies: permitting,
        };
    }
    Verdict::Denied {
        message: truncate(
            &format!(
                "not permitted by the AcrPullPolicies covering namespace {namespace}: {}",
                refusals.join("; ")
            ),
            1000,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::scope;

    const A: &str = "11111111-1111-1111-1111-111111111111";
    const B: &str = "22222222-2222-2222-2222-222222222222";
    const T: &str = "33333333-3333-3333-3333-333333333333";
    const RID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/team-a";

    fn team_a() -> TenancyPolicy {
        TenancyPolicy {
            name: "team-a".into(),
            namespace_names: vec!["team-a".into()],
            managed_client_ids: vec![A.to_uppercase()],
            managed_resource_ids: vec![RID.to_lowercase()],
            workload_identities: vec![(A.into(), T.into())],
            registries: vec!["teama.azurecr.io".into()],
            registry_suffixes: vec![".shared.azurecr.io".into()],
            actions: vec!["pull".into()],
            ..Default::default()
        }
    }

    fn labelled() -> TenancyPolicy {
        TenancyPolicy {
            name: "by-label".into(),
            namespace_selector: Some(Selector::parse("team=b").unwrap()),
            managed_client_ids: vec![B.into()],
            registries: vec!["teamb.azurecr.io".into()],
            actions: vec!["pull".into(), "push".into()],
            allow_unscoped: true,
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(
        ns: &str,
        ns_labels: &[(&str, &str)],
        identity: IdentitySpec,
        server: &str,
        scope: Option<&str>,
    ) -> Verdict {
        let scopes = scope.map(|s| scope::parse(s).unwrap());
        let host = server.split(':').next().unwrap();
        let l = labels(ns_labels);
        evaluate(
            &[labelled(), team_a()],
            ns,
            Some(&l),
            &Request {
                identity: &identity,
                registry_host: host,
                registry_server: server,
                scopes: scopes.as_deref(),
            },
        )
    }

    fn permitted(v: &Verdict) -> bool {
        matches!(v, Verdict::Permitted { .. })
    }

    fn denied_with(v: &Verdict, needle: &str) -> bool {
        matches!(v, Verdict::Denied { message } if message.contains(needle))
    }

    #[test]
    fn a_covering_policy_permits_what_it_lists() {
        let client = || IdentitySpec::ManagedClientId(A.into());
        let pull = Some("repository:app:pull");
        for (what, v) in [
            (
                "client id, case-insensitive",
                check("team-a", &[], client(), "teama.azurecr.io", pull),
            ),
            (
                "resource id, case-insensitive",
                check(
                    "team-a",
                    &[],
                    IdentitySpec::ManagedResourceId(RID.into()),
                    "teama.azurecr.io",
                    pull,
                ),
            ),
            (
                "workload pair",
                check(
                    "team-a",
                    &[],
                    IdentitySpec::Workload {
                        tenant_id: T.into(),
                        client_id: A.into(),
                        service_account: "x".into(),
                    },
                    "teama.azurecr.io",
                    pull,
                ),
            ),
            (
                "suffix: subdomain",
                check("team-a", &[], client(), "eu.shared.azurecr.io", pull),
            ),
            (
                "suffix: itself",
                check("team-a", &[], client(), "shared.azurecr.io", pull),
            ),
            (
                "server case-insensitive",
                check("team-a", &[], client(), "TeamA.azurecr.io", pull),
            ),
            (
                "by label, extra action, unscoped",
                check(
                    "other",
                    &[("team", "b")],
                    IdentitySpec::ManagedClientId(B.into()),
                    "teamb.azurecr.io",
                    None,
                ),
            ),
            (
                "by label, push listed",
                check(
                    "other",
                    &[("team", "b")],
                    IdentitySpec::ManagedClientId(B.into()),
                    "teamb.azurecr.io",
                    Some("repository:x:pull,push"),
                ),
            ),
        ] {
            assert!(permitted(&v), "{what}: {v:?}");
        }
    }

    #[test]
    fn anything_unlisted_is_denied_naming_the_policy() {
        let client = || IdentitySpec::ManagedClientId(A.into());
        let pull = Some("repository:app:pull");
        for (what, v, needle) in [
            (
                "no policy covers",
                check("team-c", &[], client(), "teama.azurecr.io", pull),
                "no AcrPullPolicy covers namespace team-c",
            ),
            (
                "other team's identity",
                check(
                    "team-a",
                    &[],
                    IdentitySpec::ManagedClientId(B.into()),
                    "teama.azurecr.io",
                    pull,
                ),
                "AcrPullPolicy team-a: managed identity client id 2222",
            ),
            (
                "other team's registry",
                check("team-a", &[], client(), "teamb.azurecr.io", pull),
                "AcrPullPolicy team-a: registry teamb.azurecr.io is not listed",
            ),
            (
                "suffix is not a substring",
                check("team-a", &[], client(), "evilshared.azurecr.io", pull),
                "registry evilshared.azurecr.io",
            ),
            (
                "workload pair in another tenant",
                check(
                    "team-a",
                    &[],
                    IdentitySpec::Workload {
                        tenant_id: B.into(),
                        client_id: A.into(),
                        service_account: "x".into(),
                    },
                    "teama.azurecr.io",
                    pull,
                ),
                "in tenant 2222",
            ),
            (
                "push not listed",
                check(
                    "team-a",
                    &[],
                    client(),
                    "teama.azurecr.io",
                    Some("repository:app:pull repository:app:push"),
                ),
                "action \"push\"",
            ),
            (
                "unscoped not allowed",
                check("team-a", &[], client(), "teama.azurecr.io", None),
                "unscoped",
            ),
            (
                "label mismatch",
                check(
                    "other",
                    &[("team", "c")],
                    IdentitySpec::ManagedClientId(B.into()),
                    "teamb.azurecr.io",
                    pull,
                ),
                "no AcrPullPolicy covers",
            ),
            (
                "a registry with a port is not the host",
                check("team-a", &[], client(), "teama.azurecr.io:5000", pull),
                "registry teama.azurecr.io:5000",
            ),
        ] {
            assert!(denied_with(&v, needle), "{what}: {v:?}");
        }
    }

    #[test]
    fn two_covering_policies_are_not_merged_and_both_are_named() {
        // team-a's namespace also labelled team=b: covered by both. Identity of b + registry of
        // a would pass a union of the two; each policy alone refuses it.
        let v = check(
            "team-a",
            &[("team", "b")],
            IdentitySpec::ManagedClientId(B.into()),
            "teama.azurecr.io",
            Some("repository:app:pull"),
        );
        let Verdict::Denied { message } = v else {
            panic!("{v:?}")
        };
        assert!(
            message.contains("AcrPullPolicy by-label: registry"),
            "{message}"
        );
        assert!(
            message.contains("AcrPullPolicy team-a: managed identity"),
            "{message}"
        );
        // Either policy alone suffices.
        let v = check(
            "team-a",
            &[("team", "b")],
            IdentitySpec::ManagedClientId(B.into()),
            "teamb.azurecr.io",
            Some("repository:app:push"),
        );
        assert_eq!(
            v,
            Verdict::Permitted {
                policies: vec!["by-label".into()]
            }
        );
    }

    #[test]
    fn an_unknown_namespace_is_undecided_and_no_policies_deny() {
        let id = IdentitySpec::ManagedClientId(A.into());
        let req = Request {
            identity: &id,
            registry_host: "teama.azurecr.io",
            registry_server: "teama.azurecr.io",
            scopes: None,
        };
        assert_eq!(
            evaluate(&[team_a()], "team-a", None, &req),
            Verdict::Undecided
        );
        assert!(matches!(
            evaluate(&[], "team-a", Some(&BTreeMap::new()), &req),
            Verdict::Denied { .. }
        ));
        // An empty selector covers every namespace (Kubernetes semantics).
        let all = TenancyPolicy {
            name: "all".into(),
            namespace_selector: Some(Selector::default()),
            ..Default::default()
        };
        assert!(all.covers("anything", &BTreeMap::new()));
        assert!(!TenancyPolicy::default().covers("anything", &BTreeMap::new()));
    }

    #[test]
    fn actions_allow_list() {
        let allowed = AllowedActions::default();
        let scopes = scope::parse("repository:a:pull,metadata_read repository:b:pull").unwrap();
        assert_eq!(first_disallowed(&scopes, |a| allowed.allows(a)), None);
        for (scope, action) in [
            ("repository:a:push", "push"),
            ("repository:a:pull,delete", "delete"),
            ("repository:a:*", "*"),
            (
                "repository:a:pull repository:b:metadata_write",
                "metadata_write",
            ),
            ("registry:catalog:*", "*"),
        ] {
            let scopes = scope::parse(scope).unwrap();
            let (_, got) = first_disallowed(&scopes, |a| allowed.allows(a)).expect(scope);
            assert_eq!(got, action, "{scope}");
        }
        let more = AllowedActions::new([" Pull ", "push", "push", ""]);
        assert_eq!(more.as_slice(), ["pull", "push"]);
        assert!(
            !more.allows("*"),
            "* is an action, not a wildcard of the list"
        );
    }

    #[test]
    fn authorities_and_audiences_normalise() {
        for (raw, want) in [
            ("login.contoso.local", "https://login.contoso.local"),
            (
                "https://Login.Contoso.Local/",
                "https://login.contoso.local",
            ),
            (
                "https://login.contoso.local:443",
                "https://login.contoso.local",
            ),
            (
                "https://login.contoso.local:8443/",
                "https://login.contoso.local:8443",
            ),
        ] {
            assert_eq!(normalize_authority(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "http://login.contoso.local",
            "https://login.contoso.local/tenant",
            "https://user@login.contoso.local",
            "https://login.contoso.local?x",
            "https://login.contoso.local#x",
            "https://",
            "https://a..b",
            "https://login.contoso.local:99999",
            "ftp://x",
            "https://login.contoso.local%2f.evil",
        ] {
            assert!(normalize_authority(bad).is_err(), "{bad}");
        }
        let allowed = AllowedClouds::new(
            ["https://login.contoso.local/", "not a url/x"],
            ["https://Management.Contoso.Local/"],
        );
        assert_eq!(allowed.authority_hosts, ["https://login.contoso.local"]);
        assert!(allowed.allows_audience("https://management.contoso.local"));
        assert!(allowed.allows_audience("https://management.contoso.local/.default"));
        assert!(!allowed.allows_audience("https://management.contoso.local.evil"));
        assert!(!allowed.allows_audience("https://management.contoso.local/x"));
    }
}

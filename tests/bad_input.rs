//! Bad-input matrix (SPEC §10): dozens of malformed or hostile bindings, ServiceAccounts and
//! hand-edited Secrets, all served by ONE controller process, so the matrix also shows that the
//! controller never stops serving other bindings.
//!
//! Objects go in through the stand-in's `apply`, which skips the CRD's CEL rules, so what is
//! tested is the controller's own validation. Every case must end `Failed` with an actionable
//! message (a substring table below) or be repaired to `Ready`; control bindings created first
//! must stay Ready throughout (watched by a background poller); and no Azure request may reach a
//! host outside the allowed suffixes. Look-alike hosts are set up as honeypot registries on the
//! Azure stand-in and mapped to it with `--azure-resolve`, so a leaked token would not just fail
//! DNS: it would arrive, be logged, and fail the test.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Hosts a careless suffix check would let through; each is a real (stand-in) registry here.
const HONEYPOTS: [&str; 4] = [
    "evil-azurecr.io",
    "azurecr.io.evil.com",
    "example.azurecr.io.evil.com",
    "demo.azurecr.io.evil.com",
];

#[derive(Clone, Debug)]
enum Expect {
    /// Ends Failed; `status.error` contains every substring.
    Failed(&'static [&'static str]),
    /// Ends Ready with a pull secret attached.
    Ready,
}

struct Case {
    id: String,
    api: &'static str,
    ns: &'static str,
    name: String,
    obj: Value,
    expect: Expect,
}

fn v2(ns: &str, name: &str) -> Value {
    let mut b = v2_managed(ns, name, "puller", "repository:app:pull");
    b["metadata"]["name"] = json!(name);
    b
}

fn v1(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": V1, "kind": "AcrPullBinding",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn secret_name(api: &str, name: &str) -> String {
    if api == V1 {
        acrpull::state::names::legacy_pull_secret_name(name)
    } else {
        acrpull::state::names::pull_secret_name(name)
    }
}

/// Builds the matrix of spec cases (everything that can be judged from the binding alone).
fn spec_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |id: &str, obj: Value, expect: Expect| {
        let api = if obj["apiVersion"] == V1 { V1 } else { V2 };
        let ns = if obj["metadata"]["namespace"] == "team-b" {
            "team-b"
        } else {
            "team-a"
        };
        cases.push(Case {
            id: id.to_string(),
            api,
            ns,
            name: obj["metadata"]["name"].as_str().unwrap().to_string(),
            obj,
            expect,
        });
    };
    let server = |name: &str, server: &str| {
        let mut b = v2("team-a", name);
        b["spec"]["acr"]["server"] = json!(server);
        b
    };
    let scope = |name: &str, scope: &str| {
        let mut b = v2("team-a", name);
        b["spec"]["acr"]["scope"] = json!(scope);
        b
    };
    use Expect::*;
    const SUFFIX: &[&str] = &["not under an allowed registry suffix", "azurecr.io"];
    const IP: &[&str] = &["is an IP address", "DNS name"];

    // Server strings.
    add(
        "server-empty",
        server("s-empty", ""),
        Failed(&["server is empty"]),
    );
    add(
        "server-scheme",
        server("s-scheme", "https://demo.azurecr.io"),
        Failed(&["remove the scheme"]),
    );
    add(
        "server-scheme-only",
        server("s-scheme2", "ftp://demo.azurecr.io"),
        Failed(&["remove the scheme"]),
    );
    add(
        "server-path",
        server("s-path", "demo.azurecr.io/v2/app"),
        Failed(&["remove the path"]),
    );
    add(
        "server-userinfo",
        server("s-user", "user@demo.azurecr.io"),
        Failed(&["remove the user information"]),
    );
    add(
        "server-userinfo-pass",
        server("s-userpass", "u:p@demo.azurecr.io"),
        Failed(&["remove the user information"]),
    );
    add(
        "server-userinfo-evil",
        server("s-userevil", "demo.azurecr.io@evil.com"),
        Failed(&["remove the user information"]),
    );
    add(
        "server-port",
        server("s-port", "demo.azurecr.io:443"),
        Failed(&["has a port", "not allowed"]),
    );
    add(
        "server-port-garbage",
        server("s-portx", "demo.azurecr.io:http"),
        Failed(&["port is not a number"]),
    );
    add(
        "server-port-zero",
        server("s-port0", "demo.azurecr.io:0"),
        Failed(&["port is not a number"]),
    );
    add(
        "server-leading-space",
        server("s-lspace", " demo.azurecr.io"),
        Failed(&["whitespace"]),
    );
    add(
        "server-newline",
        server("s-newline", "demo.azurecr.io\nHost: evil.com"),
        Failed(&["whitespace"]),
    );
    add(
        "server-tab",
        server("s-tab", "demo.azurecr.io\t"),
        Failed(&["whitespace"]),
    );
    add(
        "server-query",
        server("s-query", "demo.azurecr.io?x=evil.com"),
        Failed(&["remove the query"]),
    );
    add(
        "server-fragment",
        server("s-frag", "demo.azurecr.io#evil"),
        Failed(&["remove the fragment"]),
    );
    add(
        "server-lookalike-dash",
        server("s-look1", "evil-azurecr.io"),
        Failed(SUFFIX),
    );
    add(
        "server-lookalike-suffix",
        server("s-look2", "azurecr.io.evil.com"),
        Failed(SUFFIX),
    );
    add(
        "server-lookalike-sub",
        server("s-look3", "example.azurecr.io.evil.com"),
        Failed(SUFFIX),
    );
    add(
        "server-lookalike-demo",
        server("s-look4", "demo.azurecr.io.evil.com"),
        Failed(SUFFIX),
    );
    add(
        "server-lookalike-nodot",
        server("s-look5", "demoazurecr.io"),
        Failed(SUFFIX),
    );
    add("server-ipv4", server("s-ip4", "127.0.0.1"), Failed(IP));
    add(
        "server-imds-ip",
        server("s-imds", "169.254.169.254"),
        Failed(IP),
    );
    add(
        "server-ipv4-port",
        server("s-ip4p", "169.254.169.254:80"),
        Failed(IP),
    );
    add(
        "server-ipv4-decimal",
        server("s-ipdec", "2130706433"),
        Failed(IP),
    );
    add("server-ipv6", server("s-ip6", "::1"), Failed(IP));
    add(
        "server-ipv6-bracket",
        server("s-ip6b", "[fe80::1]:443"),
        Failed(IP),
    );
    add(
        "server-ipv6-mapped",
        server("s-ip6m", "[::ffff:169.254.169.254]"),
        Failed(IP),
    );
    add(
        "server-unicode",
        server("s-uni", "dëmo.azurecr.io"),
        Failed(&["punycode"]),
    );
    add(
        "server-zero-width",
        server("s-zw", "demo.azurecr.io\u{200b}"),
        Failed(&["punycode"]),
    );
    add(
        "server-fullwidth-dot",
        server("s-fwdot", "demo.azurecr\u{ff0e}io"),
        Failed(&["punycode"]),
    );
    add(
        "server-empty-label",
        server("s-dots", "demo..azurecr.io"),
        Failed(&["empty label"]),
    );
    add(
        "server-dash-label",
        server("s-dash", "-demo.azurecr.io"),
        Failed(&["starts or ends with '-'"]),
    );
    add(
        "server-long-label",
        server("s-longlabel", &format!("{}.azurecr.io", "a".repeat(64))),
        Failed(&["longer than 63"]),
    );
    add(
        "server-too-long",
        server(
            "s-toolong",
            &format!("{}azurecr.io", "abcdefghi.".repeat(30)),
        ),
        Failed(&["longer than"]),
    );
    add(
        "server-backslash",
        server("s-bslash", "demo.azurecr.io\\@evil.com"),
        Failed(&["user information"]),
    );
    add(
        "server-percent",
        server("s-pct", "demo.azurecr.io%2eevil.com"),
        Failed(&["letters, digits"]),
    );
    add(
        "server-underscore",
        server("s-us", "de_mo.azurecr.io"),
        Failed(&["letters, digits"]),
    );
    // Normalised, not rejected: DNS names are case-insensitive and may carry the root dot.
    add(
        "server-uppercase",
        server("s-upper", "DEMO.AzureCR.io"),
        Ready,
    );
    add(
        "server-trailing-dot",
        server("s-rootdot", "demo.azurecr.io."),
        Ready,
    );

    // Scopes.
    add(
        "scope-empty",
        scope("sc-empty", ""),
        Failed(&["scope is empty", "repository:"]),
    );
    add(
        "scope-blank",
        scope("sc-blank", "   "),
        Failed(&["scope is empty"]),
    );
    add(
        "scope-wildcard",
        scope("sc-wild", "repository:*:pull"),
        Failed(&["wildcard"]),
    );
    add(
        "scope-wildcard-path",
        scope("sc-wild2", "repository:team/*:pull"),
        Failed(&["wildcard"]),
    );
    // SPEC §12: a pull secret never writes, deletes or holds `*` unless the operator says.
    add(
        "scope-push",
        scope("sc-push", "repository:app:pull,push"),
        Failed(&["action \"push\"", "--allowed-scope-actions"]),
    );
    add(
        "scope-star-action",
        scope("sc-star", "repository:app:*"),
        Failed(&["action \"*\"", "--allowed-scope-actions"]),
    );
    add(
        "scope-empty-name",
        scope("sc-noname", "repository::pull"),
        Failed(&["type:name:actions"]),
    );
    add(
        "scope-empty-actions",
        scope("sc-noact", "repository:app:"),
        Failed(&["type:name:actions"]),
    );
    add(
        "scope-empty-action",
        scope("sc-emptyact", "repository:app:pull,,push"),
        Failed(&["action list"]),
    );
    add(
        "scope-no-type",
        scope("sc-notype", ":app:pull"),
        Failed(&["type:name:actions"]),
    );
    add(
        "scope-bad-type",
        scope("sc-type", "Repository:app:pull"),
        Failed(&["invalid type"]),
    );
    add(
        "scope-upper-name",
        scope("sc-upper", "repository:App:pull"),
        Failed(&["lower-case"]),
    );
    add(
        "scope-empty-component",
        scope("sc-slash", "repository:a//b:pull"),
        Failed(&["empty path component"]),
    );
    add(
        "scope-colons",
        scope("sc-colons", "repository:a:b:pull"),
        Failed(&["host from its port"]),
    );
    add(
        "scope-tab",
        scope("sc-tab", "repository:app:pull\trepository:base:pull"),
        Failed(&["type:name:actions"]),
    );
    add(
        "scope-newline",
        scope("sc-nl", "repository:app:pull\nrepository:base:pull"),
        Failed(&["type:name:actions"]),
    );
    add(
        "scope-unicode",
        scope("sc-uni", "repository:äpp:pull"),
        Failed(&["lower-case"]),
    );
    add(
        "scope-5000",
        scope("sc-5000", &format!("repository:{}:pull", "a".repeat(5000))),
        Failed(&["longer than 4096"]),
    );
    add(
        "scope-100",
        scope("sc-100", &vec!["repository:app:pull"; 100].join(" ")),
        Failed(&["more than 64 scopes"]),
    );
    add(
        "scope-long-name",
        scope(
            "sc-longname",
            &format!("repository:{}:pull", "a".repeat(300)),
        ),
        Failed(&["longer than 255"]),
    );

    // Authentication.
    let mut both = v2("team-a", "auth-both");
    both["spec"]["auth"]["workloadIdentity"] = json!({"serviceAccountRef": "federated"});
    add("auth-both", both, Failed(&["exactly one", "not both"]));
    let mut neither = v2("team-a", "auth-neither");
    neither["spec"]["auth"] = json!({});
    add(
        "auth-neither",
        neither,
        Failed(&["set one of spec.auth.managedIdentity or spec.auth.workloadIdentity"]),
    );
    let mut empty_mi = v2("team-a", "auth-empty-mi");
    empty_mi["spec"]["auth"]["managedIdentity"] = json!({});
    add(
        "auth-empty-managed",
        empty_mi,
        Failed(&["set clientID or resourceID"]),
    );
    let mut mi_both = v2("team-a", "auth-mi-both");
    mi_both["spec"]["auth"]["managedIdentity"]["resourceID"] = json!(MI_RESOURCE);
    add("auth-managed-both-ids", mi_both, Failed(&["not both"]));
    let mut not_guid = v2("team-a", "auth-notguid");
    not_guid["spec"]["auth"]["managedIdentity"]["clientID"] = json!("not-a-guid");
    add(
        "auth-client-not-guid",
        not_guid,
        Failed(&["clientID", "is not a GUID"]),
    );
    let mut inject = v2("team-a", "auth-inject");
    inject["spec"]["auth"]["managedIdentity"]["clientID"] =
        json!("aaaaaaaa-0000-4000-8000-00000000&resource=https://evil.com");
    add("auth-client-injection", inject, Failed(&["is not a GUID"]));
    let mut bad_rid = v2("team-a", "auth-badrid");
    bad_rid["spec"]["auth"]["managedIdentity"] =
        json!({"resourceID": "/subscriptions/s/../../evil?x=1"});
    add(
        "auth-resource-id-malformed",
        bad_rid,
        Failed(&["must look like /subscriptions/"]),
    );
    let wi = |name: &str, w: Value| {
        let mut b = v2("team-a", name);
        b["spec"]["auth"] = json!({"workloadIdentity": w});
        b
    };
    add(
        "wi-client-without-tenant",
        wi(
            "wi-notenant",
            json!({"serviceAccountRef": "federated", "clientID": WI_CLIENT}),
        ),
        Failed(&["clientID and tenantID must be set together"]),
    );
    add(
        "wi-tenant-without-client",
        wi(
            "wi-noclient",
            json!({"serviceAccountRef": "federated", "tenantID": TENANT}),
        ),
        Failed(&["clientID and tenantID must be set together"]),
    );
    add(
        "wi-client-not-guid",
        wi(
            "wi-badclient",
            json!({"serviceAccountRef": "federated", "clientID": "app-wi", "tenantID": TENANT}),
        ),
        Failed(&["is not a GUID"]),
    );
    add(
        "wi-tenant-path",
        wi(
            "wi-badtenant",
            json!({"serviceAccountRef": "federated", "clientID": WI_CLIENT, "tenantID": "../../evil.com/oauth2"}),
        ),
        Failed(&["must be a GUID or a domain name"]),
    );
    add(
        "wi-no-sa-ref",
        wi(
            "wi-noref",
            json!({"clientID": WI_CLIENT, "tenantID": TENANT}),
        ),
        Failed(&["serviceAccountRef is required"]),
    );
    add(
        "wi-bad-sa-ref",
        wi("wi-badref", json!({"serviceAccountRef": "../default"})),
        Failed(&["not a valid ServiceAccount name"]),
    );

    // Environments.
    let mut airgap = v2("team-a", "env-airgap-nocfg");
    airgap["spec"]["acr"]["environment"] = json!("AirgappedCloud");
    add(
        "airgapped-without-cloudconfig",
        airgap,
        Failed(&["AirgappedCloud needs spec.acr.cloudConfig"]),
    );
    let mut cfg = v2("team-a", "env-public-cfg");
    cfg["spec"]["acr"]["cloudConfig"] = json!({"entraAuthorityHost": "https://login.evil.com/", "resourceManagerAudience": "https://evil.com/"});
    add(
        "cloudconfig-without-airgapped",
        cfg,
        Failed(&["cloudConfig is only allowed with environment AirgappedCloud"]),
    );
    let mut http = v2("team-a", "env-airgap-http");
    http["spec"]["acr"]["environment"] = json!("AirgappedCloud");
    http["spec"]["acr"]["cloudConfig"] = json!({"entraAuthorityHost": "http://login.evil.com/", "resourceManagerAudience": "https://management.evil.com/"});
    add(
        "airgapped-plain-http-authority",
        http,
        Failed(&["must be an https:// URL"]),
    );
    // SPEC §12: an authority the operator did not list gets nothing, not even a connection.
    let mut evil = v2("team-a", "env-airgap-evil");
    evil["spec"]["acr"]["environment"] = json!("AirgappedCloud");
    evil["spec"]["acr"]["cloudConfig"] = json!({"entraAuthorityHost": "https://login.evil.com/", "resourceManagerAudience": "https://management.evil.com/"});
    add(
        "airgapped-authority-not-allowed",
        evil,
        Failed(&["login.evil.com", "--allowed-entra-authority-hosts"]),
    );
    let mut half = v2("team-a", "env-airgap-half");
    half["spec"]["acr"]["environment"] = json!("AirgappedCloud");
    half["spec"]["acr"]["cloudConfig"] =
        json!({"entraAuthorityHost": "https://login.example/", "resourceManagerAudience": " "});
    add(
        "airgapped-half-cloudconfig",
        half,
        Failed(&["needs both entraAuthorityHost and resourceManagerAudience"]),
    );
    let mut mars = v2("team-a", "env-mars");
    mars["spec"]["acr"]["environment"] = json!("MarsCloud");
    add(
        "environment-unknown",
        mars,
        Failed(&["unknown environment", "PublicCloud"]),
    );

    // Target ServiceAccount names.
    let mut no_target = v2("team-a", "sa-empty");
    no_target["spec"]["serviceAccountName"] = json!("");
    add(
        "target-empty",
        no_target,
        Failed(&["spec.serviceAccountName is required"]),
    );
    let mut bad_target = v2("team-a", "sa-bad");
    bad_target["spec"]["serviceAccountName"] = json!("Puller_One");
    add(
        "target-invalid-name",
        bad_target,
        Failed(&["not a valid ServiceAccount name"]),
    );
    let mut uni_target = v2("team-a", "sa-unicode");
    uni_target["spec"]["serviceAccountName"] = json!("pullér");
    add(
        "target-unicode-name",
        uni_target,
        Failed(&["not a valid ServiceAccount name"]),
    );
    add(
        "target-missing",
        v2_managed("team-a", "sa-missing", "nobody-here", "repository:app:pull"),
        Failed(&["service account \"nobody-here\" not found"]),
    );

    // Names: 253 characters (secret name truncated), one with a '.' at the cut.
    let long = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(long.len(), 253);
    add("name-253", v2("team-a", &long), Ready);
    let dotted = format!(
        "{}.{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(40),
        "e".repeat(20)
    );
    assert_eq!(dotted.len(), 253);
    assert_eq!(&dotted[232..233], ".");
    add("name-253-dot-at-cut", v2("team-a", &dotted), Ready);
    // Unicode where the API allows it: annotation and label-free metadata text.
    let mut uni_meta = v2("team-a", "unicode-meta");
    uni_meta["metadata"]["annotations"] = json!({"note": "👀 ünïcødé \u{202e}txt.exe", "acr.microsoft.com/token.expiry": "not-a-date"});
    add("unicode-annotations", uni_meta, Ready);

    // v1beta1.
    add(
        "v1-lookalike",
        v1(
            "team-a",
            "v1-evil",
            json!({"acrServer": "azurecr.io.evil.com", "managedIdentityClientID": MI_CLIENT, "serviceAccountName": "puller"}),
        ),
        Failed(SUFFIX),
    );
    add(
        "v1-no-identity",
        v1(
            "team-a",
            "v1-noid",
            json!({"acrServer": REGISTRY, "serviceAccountName": "puller"}),
        ),
        Failed(&["no managed identity", "managedIdentityClientID"]),
    );
    add(
        "v1-no-server",
        v1(
            "team-a",
            "v1-noserver",
            json!({"managedIdentityClientID": MI_CLIENT, "serviceAccountName": "puller"}),
        ),
        Failed(&["server is empty", "ACR_SERVER"]),
    );
    add(
        "v1-wildcard-scope",
        v1(
            "team-a",
            "v1-wild",
            json!({"acrServer": REGISTRY, "scope": "repository:*:pull", "managedIdentityClientID": MI_CLIENT, "serviceAccountName": "puller"}),
        ),
        Failed(&["wildcard"]),
    );
    add(
        "v1-imds-ip",
        v1(
            "team-a",
            "v1-imds",
            json!({"acrServer": "169.254.169.254", "managedIdentityClientID": MI_CLIENT, "serviceAccountName": "puller"}),
        ),
        Failed(IP),
    );
    add(
        "v1-bad-resource-id",
        v1(
            "team-a",
            "v1-badrid",
            json!({"acrServer": REGISTRY, "managedIdentityResourceID": "evil", "serviceAccountName": "puller"}),
        ),
        Failed(&["must look like /subscriptions/"]),
    );

    // Workload identity whose ServiceAccount annotations are missing or malformed (team-b).
    let wi_sa = |name: &str, sa_ref: &str| {
        let mut b = v2_managed("team-b", name, "puller", "repository:app:pull");
        b["spec"]["auth"] = json!({"workloadIdentity": {"serviceAccountRef": sa_ref}});
        b
    };
    add(
        "wi-sa-no-annotations",
        wi_sa("wi-sa-none", "wi-none"),
        Failed(&["missing the azure.workload.identity/client-id annotation"]),
    );
    add(
        "wi-sa-no-tenant",
        wi_sa("wi-sa-notenant", "wi-client-only"),
        Failed(&["missing the azure.workload.identity/tenant-id annotation"]),
    );
    add(
        "wi-sa-bad-client",
        wi_sa("wi-sa-badclient", "wi-bad-client"),
        Failed(&["azure.workload.identity/client-id", "is not a GUID"]),
    );
    add(
        "wi-sa-bad-tenant",
        wi_sa("wi-sa-badtenant", "wi-bad-tenant"),
        Failed(&[
            "azure.workload.identity/tenant-id",
            "must be a GUID or a domain name",
        ]),
    );
    add(
        "wi-sa-blank-annotations",
        wi_sa("wi-sa-blank", "wi-blank"),
        Failed(&["missing the azure.workload.identity/client-id annotation"]),
    );
    add(
        "wi-sa-missing",
        wi_sa("wi-sa-missing", "wi-ghost"),
        Failed(&["service account \"wi-ghost\" not found"]),
    );
    // 300 user pull secrets on the target: the binding's secret is added, the user's are kept.
    add(
        "sa-300-pull-secrets",
        v2_managed("team-b", "crowded", "crowded", "repository:app:pull"),
        Ready,
    );
    cases
}

/// What a binding looks like now, judged against `expect`. `Ok` when settled as expected.
fn judge(env: &Env, case: &Case) -> Result<(), String> {
    let Some(b) = env
        .kube
        .get(case.api, "AcrPullBinding", case.ns, &case.name)
    else {
        return Err("binding is gone".into());
    };
    let status = &b["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
    let error = status["error"].as_str().unwrap_or_default();
    match &case.expect {
        Expect::Ready => {
            if status["phase"] != "Ready"
                || ready.as_ref().map(|c| &c["status"]) != Some(&json!("True"))
            {
                return Err(format!(
                    "want Ready, have phase {} error {error:?}",
                    status["phase"]
                ));
            }
            let secret = secret_name(case.api, &case.name);
            if secret.len() > 253 {
                return Err(format!("secret name {} characters", secret.len()));
            }
            if env.secret(case.ns, &secret).is_none() {
                return Err(format!("Ready but secret {secret} missing"));
            }
            Ok(())
        }
        Expect::Failed(subs) => {
            if status["phase"] != "Failed" {
                return Err(format!(
                    "want Failed, have phase {} error {error:?}",
                    status["phase"]
                ));
            }
            let Some(c) = ready else {
                return Err("Failed without a Ready condition".into());
            };
            if c["status"] != "False" || c["reason"].as_str().unwrap_or_default().is_empty() {
                return Err(format!("Ready condition {c}"));
            }
            if c["message"].as_str().unwrap_or_default() != error {
                return Err(format!(
                    "condition message {} != status.error {error:?}",
                    c["message"]
                ));
            }
            for s in *subs {
                if !error.contains(s) {
                    return Err(format!("error {error:?} lacks {s:?}"));
                }
            }
            if error.len() > 1024 {
                return Err(format!(
                    "error is {} bytes; unbounded echo of input",
                    error.len()
                ));
            }
            if env
                .secret(case.ns, &secret_name(case.api, &case.name))
                .is_some()
            {
                return Err("Failed binding has a pull secret".into());
            }
            Ok(())
        }
    }
}

/// Polls the control bindings until the test ends; records every moment one is not Ready
/// after it first was.
fn watch_controls(
    kube: kube_standin::Handle,
    controls: Vec<(&'static str, &'static str, &'static str)>,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let violations = Arc::new(Mutex::new(Vec::new()));
    let v = violations.clone();
    let task = tokio::spawn(async move {
        let mut seen_ready = BTreeMap::new();
        loop {
            for (api, ns, name) in &controls {
                let b = kube.get(api, "AcrPullBinding", ns, name);
                let ready = b.as_ref().is_some_and(|b| {
                    b["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                });
                let was = seen_ready.entry(*name).or_insert(false);
                if ready {
                    *was = true;
                } else if *was {
                    v.lock().unwrap().push(format!(
                        "control {ns}/{name} left Ready: {}",
                        b.map(|b| b["status"].to_string()).unwrap_or_default()
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (violations, task)
}

/// Waits until every case is judged Ok (or the deadline passes) and returns the failures.
async fn settle(env: &Env, cases: &[Case], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|c| judge(env, c).err().map(|e| format!("{:<34} {}", c.id, e)))
            .collect();
        if failures.is_empty() || Instant::now() > deadline {
            return failures;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn annotations(env: &Env, ns: &str, name: &str) -> Value {
    env.secret(ns, name)
        .map(|s| s["metadata"]["annotations"].clone())
        .unwrap_or(Value::Null)
}

fn password(env: &Env, ns: &str, name: &str) -> Option<String> {
    let s = env.secret(ns, name)?;
    docker_config(&s)["auths"][REGISTRY]["password"]
        .as_str()
        .map(String::from)
}

fn valid_future_time(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t > jiff::Timestamp::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_on_one_controller() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    for host in HONEYPOTS {
        env.azure
            .add_registry(serde_json::from_value(json!({"host": host})).unwrap())
            .unwrap();
        env.azure
            .add_role_assignment(azure_standin::RoleAssignment {
                identity: "mi-pull".into(),
                registry: host.into(),
                repository: "*".into(),
                actions: vec!["pull".into()],
            })
            .unwrap();
    }
    let https = env.azure.https_addr();
    let resolve: Vec<String> = HONEYPOTS.iter().map(|h| format!("{h}={https}")).collect();
    env.spawn(&[format!("--azure-resolve={}", resolve.join(","))]);

    // ServiceAccounts: targets, workload-identity SAs with broken annotations, a crowded one.
    for ns in ["team-a", "team-b"] {
        env.create(sa(ns, "puller", json!({})));
    }
    env.create(federated_sa("team-a"));
    env.create(sa("team-b", "wi-none", json!({})));
    env.create(sa(
        "team-b",
        "wi-client-only",
        json!({"azure.workload.identity/client-id": WI_CLIENT}),
    ));
    env.create(sa(
        "team-b",
        "wi-bad-client",
        json!({
        "azure.workload.identity/client-id": "x&client_secret=1",
        "azure.workload.identity/tenant-id": TENANT}),
    ));
    env.create(sa(
        "team-b",
        "wi-bad-tenant",
        json!({
        "azure.workload.identity/client-id": WI_CLIENT,
        "azure.workload.identity/tenant-id": "evil.com/../../x"}),
    ));
    env.create(sa(
        "team-b",
        "wi-blank",
        json!({
        "azure.workload.identity/client-id": "  ",
        "azure.workload.identity/tenant-id": ""}),
    ));
    let user_secrets: Vec<String> = (0..300)
        .rev()
        .map(|i| format!("user-secret-{i:03}"))
        .collect();
    let mut crowded = sa("team-b", "crowded", json!({}));
    crowded["imagePullSecrets"] = user_secrets.iter().map(|n| json!({"name": n})).collect();
    env.create(crowded);

    // Control bindings first: managed v1beta2, workload identity, v1beta1.
    env.create(v2_managed(
        "team-a",
        "control",
        "puller",
        "repository:app:pull",
    ));
    let mut wi_control = v2_managed("team-a", "control-wi", "puller", "repository:app:pull");
    wi_control["spec"]["auth"] = json!({"workloadIdentity": {"serviceAccountRef": "federated"}});
    env.create(wi_control);
    env.create(v1("team-a", "control-v1", json!({"acrServer": REGISTRY, "scope": "repository:base:pull", "managedIdentityClientID": MI_CLIENT, "serviceAccountName": "puller"})));
    env.wait_ready(V2, "team-a", "control", "True").await;
    env.wait_ready(V2, "team-a", "control-wi", "True").await;
    env.wait_ready(V1, "team-a", "control-v1", "True").await;
    let (violations, poller) = watch_controls(
        env.kube.clone(),
        vec![
            (V2, "team-a", "control"),
            (V2, "team-a", "control-wi"),
            (V1, "team-a", "control-v1"),
        ],
    );

    // Phase 1: every spec case, all at once.
    let mut cases = spec_cases();
    // Unicode object names: only if the API server takes them (a real one does not).
    let uni = v2("team-a", "ünïcødé");
    match env.kube.apply(uni.clone()) {
        Ok(_) => cases.push(Case {
            id: "name-unicode (accepted by stand-in)".into(),
            api: V2,
            ns: "team-a",
            name: "ünïcødé".into(),
            obj: uni,
            expect: Expect::Failed(&[]),
        }),
        Err(e) => {
            eprintln!("unicode binding name refused by the API server (as a real one would): {e}")
        }
    }
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for c in &cases {
        env.kube
            .apply(c.obj.clone())
            .unwrap_or_else(|e| panic!("{}: apply failed: {e}", c.id));
    }
    let failures = settle(&env, &cases, Duration::from_secs(90)).await;

    // Phase 2: Secrets edited by hand with garbage annotations must be repaired (re-minted).
    let edits: [(&str, &str, &str); 4] = [
        (
            "edit-expiry",
            "acr.microsoft.com/token.expiry",
            "not-a-date",
        ),
        (
            "edit-refresh",
            "acr.microsoft.com/token.refresh",
            "2024-13-45T99:99:99Z",
        ),
        ("edit-inputs", "acr.microsoft.com/token.inputs", "tampered"),
        (
            "edit-expiry-past",
            "acr.microsoft.com/token.expiry",
            "1970-01-01T00:00:00Z",
        ),
    ];
    for (name, _, _) in edits {
        env.create(v2_managed("team-a", name, "puller", "repository:app:pull"));
    }
    let mut edit_failures = Vec::new();
    for (name, key, garbage) in edits {
        env.wait_ready(V2, "team-a", name, "True").await;
        let secret_name = format!("acr-pull-{name}");
        let before = env.secret("team-a", &secret_name).unwrap();
        let old_inputs =
            before["metadata"]["annotations"]["acr.microsoft.com/token.inputs"].clone();
        let mut edited = before.clone();
        edited["metadata"]["annotations"][key] = json!(garbage);
        env.kube.apply(edited).unwrap();
        let repaired = env
            .kube
            .wait_until(
                |_| {
                    let a = annotations(&env, "team-a", &secret_name);
                    // Repaired: annotations readable again and describing the token actually in
                    // the Secret (a re-mint may legitimately return the pipeline's cached token).
                    let exp = password(&env, "team-a", &secret_name)
                        .and_then(|p| acrpull::state::jwt::token_times(&p).ok())
                        .map(|t| acrpull::k8s::binding::rfc3339(t.expires_at));
                    exp.is_some()
                        && a["acr.microsoft.com/token.expiry"].as_str() == exp.as_deref()
                        && valid_future_time(&a["acr.microsoft.com/token.expiry"])
                        && a["acr.microsoft.com/token.refresh"]
                            .as_str()
                            .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok())
                        && a["acr.microsoft.com/token.inputs"] == old_inputs
                },
                Duration::from_secs(30),
            )
            .await
            .is_ok();
        if !repaired {
            let writes: Vec<String> = env
                .kube
                .requests()
                .iter()
                .filter(|r| r.name == secret_name)
                .map(|r| format!("{} {} {}", r.verb, r.status, r.field_manager))
                .collect();
            edit_failures.push(format!(
                "{name}: {key}={garbage} not repaired: {}; requests for the secret: {writes:?}",
                annotations(&env, "team-a", &secret_name)
            ));
        }
    }
    let edit_cases: Vec<Case> = edits
        .iter()
        .map(|(name, _, _)| Case {
            id: format!("{name}-ready"),
            api: V2,
            ns: "team-a",
            name: name.to_string(),
            obj: Value::Null,
            expect: Expect::Ready,
        })
        .collect();
    edit_failures.extend(settle(&env, &edit_cases, Duration::from_secs(30)).await);

    poller.abort();

    // The crowded ServiceAccount: 300 user entries kept (sorted, SPEC §4 rule 8), ours last.
    let crowded = pull_secrets(&env.service_account("team-b", "crowded").unwrap());
    let mut want: Vec<String> = user_secrets.clone();
    want.sort();
    want.push("acr-pull-crowded".into());
    let crowded_ok = crowded == want;

    // No Azure request reached a host outside the allowed suffixes; the honeypots saw nothing.
    let requests = env.azure.requests();
    let leaked: Vec<String> = requests
        .iter()
        .filter(|r| r.hop != azure_standin::Hop::Imds)
        .filter(|r| r.host != REGISTRY && r.host != "login.microsoftonline.com")
        .map(|r| format!("{:?} {} {}{}", r.hop, r.method, r.host, r.path))
        .collect();

    // Every failed case has an event on its binding (SPEC §10).
    let events = env.kube.list("v1", "Event", None);
    let no_event: Vec<&str> = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Failed(_)))
        .filter(|c| {
            !events.iter().any(|e| {
                e["involvedObject"]["name"] == c.name.as_str()
                    && e["involvedObject"]["namespace"] == c.ns
                    && e["type"] == "Warning"
            })
        })
        .map(|c| c.id.as_str())
        .collect();

    let logs = env.logs();
    let panicked = logs.contains("panicked at");
    let alive = env.child().try_wait().unwrap().is_none();
    let violations = violations.lock().unwrap().clone();

    let mut report = String::new();
    for f in failures.iter().chain(&edit_failures) {
        report.push_str(&format!("  {f}\n"));
    }
    if !crowded_ok {
        report.push_str(&format!(
            "  crowded SA pull secrets wrong: {} entries, first {:?}, last {:?}\n",
            crowded.len(),
            crowded.first(),
            crowded.last()
        ));
    }
    for l in &leaked {
        report.push_str(&format!("  request to a disallowed host: {l}\n"));
    }
    for v in violations.iter().take(5) {
        report.push_str(&format!("  {v}\n"));
    }
    if !no_event.is_empty() {
        report.push_str(&format!(
            "  failed cases without a Warning event: {no_event:?}\n"
        ));
    }
    if panicked || !alive {
        report.push_str("  controller panicked or exited\n");
    }
    eprintln!(
        "bad-input matrix: {} spec cases + {} secret edits + crowded SA; {} azure requests",
        cases.len(),
        edits.len(),
        requests.len()
    );
    // The controller's log lines about the failing cases (the whole log is megabytes).
    let failing: Vec<&str> = cases
        .iter()
        .filter(|c| {
            failures
                .iter()
                .any(|f| f.starts_with(&format!("{:<34}", c.id)))
        })
        .map(|c| c.name.as_str())
        .collect();
    let related: Vec<&str> = logs
        .lines()
        .filter(|l| failing.iter().any(|n| l.contains(n)))
        .take(80)
        .collect();
    assert!(
        report.is_empty(),
        "bad-input matrix failures:\n{report}\nlog lines about them:\n{}",
        related.join("\n")
    );
}

/// A long but valid name for tests of name-length limits.
fn long_name(len: usize) -> String {
    let mut name = String::new();
    while name.len() < len {
        if !name.is_empty() {
            name.push('.');
        }
        let label = (len - name.len()).min(63);
        name.push_str(&"x".repeat(label));
    }
    assert_eq!(name.len(), len);
    name
}

/// v1beta1 appends `-msi-acrpull-secret` (19 characters) to the binding name, so a valid binding
/// name of 235..=253 characters would yield a Secret name the API server refuses (422): the
/// binding must fail with a message before any token is minted (it used to loop on the 422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1beta1_binding_name_too_long_for_its_secret_fails_with_a_message() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    let name = long_name(240);
    env.create(v1(
        "team-a",
        &name,
        json!({"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT, "serviceAccountName": "puller"}),
    ));
    let b = env.wait_ready(V1, "team-a", &name, "False").await;
    assert_eq!(b["status"]["phase"], "Failed");
    let error = b["status"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("253"), "actionable message: {error}");
    // A spec the controller can never serve costs no Azure tokens.
    assert!(env
        .azure
        .requests_for(azure_standin::Hop::AcrExchange)
        .is_empty());
}

/// kube-runtime names events `<binding>.<suffix>`, which the API server refuses for a binding
/// name near 253 characters; the failure event of SPEC §10 must still be recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_event_is_recorded_for_a_binding_with_a_253_character_name() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    let name = long_name(253);
    let mut b = v2("team-a", &name);
    b["spec"]["acr"]["server"] = json!("azurecr.io.evil.com");
    env.create(b);
    env.wait_ready(V2, "team-a", &name, "False").await;
    let found = env
        .kube
        .wait_until(
            |k| {
                k.list("v1", "Event", Some("team-a"))
                    .iter()
                    .any(|e| e["involvedObject"]["name"] == name.as_str() && e["type"] == "Warning")
            },
            Duration::from_secs(20),
        )
        .await
        .is_ok();
    assert!(
        found,
        "no Warning event for the failed binding\n{}",
        env.logs()
            .lines()
            .filter(|l| l.contains("event not recorded"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A hand-edited expiry far in the future (year 9999, or an extended year jiff also parses) must
/// not make the controller trust it over the token's own `exp`: the Secret would never be
/// refreshed and the real token would expire unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_expiry_annotation_is_not_trusted() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    for (name, garbage) in [
        ("future-9999", "9999-12-31T23:59:59Z"),
        ("future-ext", "+010000-01-01T00:00:00Z"),
    ] {
        env.create(v2_managed("team-a", name, "puller", "repository:app:pull"));
        env.wait_ready(V2, "team-a", name, "True").await;
        let secret_name = format!("acr-pull-{name}");
        let mut edited = env.secret("team-a", &secret_name).unwrap();
        edited["metadata"]["annotations"]["acr.microsoft.com/token.expiry"] = json!(garbage);
        env.kube.apply(edited).unwrap();
        let repaired = env
            .kube
            .wait_until(
                |_| {
                    let a = annotations(&env, "team-a", &secret_name);
                    let exp = password(&env, "team-a", &secret_name)
                        .and_then(|p| acrpull::state::jwt::token_times(&p).ok())
                        .map(|t| acrpull::k8s::binding::rfc3339(t.expires_at));
                    exp.is_some() && a["acr.microsoft.com/token.expiry"].as_str() == exp.as_deref()
                },
                Duration::from_secs(30),
            )
            .await
            .is_ok();
        let b = env.kube.get(V2, "AcrPullBinding", "team-a", name).unwrap();
        assert!(
            repaired,
            "{name}: expiry annotation {garbage} kept; status.tokenExpirationTime {}",
            b["status"]["tokenExpirationTime"]
        );
    }
}

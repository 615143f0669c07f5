//! The `.dockerconfigjson` document a pull secret holds, byte-compatible with the old
//! controller's: `{"auths":{"<server>":{"username","password","email","auth"}}}` with the null
//! GUID as user name (it tells ACR the password is an ACR token).

use base64::Engine;

use super::token::SecretToken;

/// The user name ACR expects with an ACR refresh or access token as password.
pub const ACR_USERNAME: &str = "00000000-0000-0000-0000-000000000000";
const EMAIL: &str = "msi-acrpull@azurecr.io";

/// The Secret data for `server` (`host` or `host:port`) and `token`.
///
/// Returned as bytes, not a `String`, so it cannot be logged with `{}` by accident.
pub fn docker_config_json(server: &str, token: &SecretToken) -> Vec<u8> {
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{ACR_USERNAME}:{}", token.expose()));
    // A struct keeps the old controller's key order; serde_json escapes every string.
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        username: &'a str,
        password: &'a str,
        email: &'a str,
        auth: &'a str,
    }
    let mut auths = std::collections::BTreeMap::new();
    auths.insert(
        server,
        Entry {
            username: ACR_USERNAME,
            password: token.expose(),
            email: EMAIL,
            auth: &auth,
        },
    );
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        auths: std::collections::BTreeMap<&'a str, Entry<'a>>,
    }
    serde_json::to_vec(&Doc { auths }).unwrap_or_default()
}

/// The server names a docker config document holds credentials for (no token is returned).
pub fn servers_in(doc: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Value>(doc)
        .ok()
        .and_then(|v| v.get("auths").and_then(|a| a.as_object()).cloned())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_shape() {
        let token = SecretToken::new("tok\"en");
        let doc = docker_config_json("example.azurecr.io", &token);
        let text = String::from_utf8(doc.clone()).unwrap();
        let auth = base64::engine::general_purpose::STANDARD
            .encode("00000000-0000-0000-0000-000000000000:tok\"en");
        assert_eq!(
            text,
            format!(
                r#"{{"auths":{{"example.azurecr.io":{{"username":"00000000-0000-0000-0000-000000000000","password":"tok\"en","email":"msi-acrpull@azurecr.io","auth":"{auth}"}}}}}}"#
            )
        );
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        let entry = &v["auths"]["example.azurecr.io"];
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(entry["auth"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, b"00000000-0000-0000-0000-000000000000:tok\"en");
        assert_eq!(servers_in(&doc), ["example.azurecr.io"]);
    }

    #[test]
    fn host_port_key() {
        let doc = docker_config_json("localhost:5000", &SecretToken::new("t"));
        assert_eq!(servers_in(&doc), ["localhost:5000"]);
        assert!(servers_in(b"not json").is_empty());
    }
}

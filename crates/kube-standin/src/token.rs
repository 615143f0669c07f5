//! ServiceAccount tokens: an ES256 signing key, the TokenRequest subresource, the issuer
//! discovery documents (`/.well-known/openid-configuration`, `/openid/v1/jwks`) and the record
//! of every issued token.
//!
//! Tokens are signed like a real API server's projected tokens, so a stand-in for Entra can
//! verify them against the JWKS exactly as Entra verifies federated credentials.

use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};

/// A token the stand-in issued.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    /// ServiceAccount namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// The token itself.
    pub token: String,
}

/// Errors building the signer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key could not be generated or parsed.
    #[error("signing key: {0}")]
    Key(String),
}

/// The signing key and the issued-token log.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    issued: Mutex<Vec<IssuedToken>>,
}

impl Signer {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = B64.encode(digest.as_ref());
        Ok(Signer {
            key,
            rng,
            kid,
            issued: Mutex::new(Vec::new()),
        })
    }

    /// Key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Value {
        let pk = self.key.public_key().as_ref();
        // Uncompressed point: 0x04 || X (32) || Y (32).
        let (x, y) = if pk.len() == 65 {
            (B64.encode(&pk[1..33]), B64.encode(&pk[33..65]))
        } else {
            (String::new(), String::new())
        };
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": self.kid, "alg": "ES256", "use": "sig"}]})
    }

    /// Sign arbitrary claims as a compact JWS.
    pub fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| ApiError::internal(format!("signing token: {e}")))?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }

    /// Check a compact JWS signed by this key; returns its claims. Says nothing about
    /// expiry, audience or issuer (see `authn`).
    pub fn verify(&self, token: &str) -> Result<Value, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS");
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed header")?;
        if header["alg"] != "ES256" {
            return Err("unsupported algorithm");
        }
        let sig = B64.decode(sig).map_err(|_| "malformed signature")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| "invalid signature")?;
        B64.decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .ok_or("malformed claims")
    }

    /// A ServiceAccount token for `sa` (the stored object) with these audiences and lifetime,
    /// signed like a TokenRequest's but not recorded as one (for tests that run a client as
    /// the ServiceAccount).
    pub fn service_account_token(
        &self,
        issuer: &str,
        sa: &Value,
        audiences: &[String],
        lifetime_secs: i64,
        now: i64,
    ) -> ApiResult<String> {
        let ns = sa["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = sa["metadata"]["name"].as_str().unwrap_or_default();
        let claims = json!({
            "aud": audiences,
            "exp": now + lifetime_secs,
            "iat": now,
            "nbf": now,
            "iss": issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": {
                "namespace": ns,
                "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
            },
        });
        self.sign(&claims)
    }

    /// Issued tokens so far.
    pub fn issued(&self) -> Vec<IssuedToken> {
        match self.issued.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn record(&self, t: IssuedToken) {
        match self.issued.lock() {
            Ok(mut g) => g.push(t),
            Err(p) => p.into_inner().push(t),
        }
    }

    /// Serve a TokenRequest for `sa` (the stored ServiceAccount).
    /// `expiry_override` comes from a fault (a short lifetime so rotation happens in test time).
    pub fn token_request(
        &self,
        issuer: &str,
        sa: &Value,
        body: &Value,
        expiry_override: Option<i64>,
        now: i64,
    ) -> ApiResult<Value> {
        let ns = sa["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = sa["metadata"]["name"].as_str().unwrap_or_default();
        let spec = &body["spec"];
        if !body.is_object() || (!spec.is_null() && !spec.is_object()) {
            return Err(ApiError::bad_request("TokenRequest body must be an object"));
        }
        let invalid = |field: &str, why: &str| {
            ApiError::invalid("TokenRequest", "authentication.k8s.io", name, field, why)
        };
        let exp_secs = match &spec["expirationSeconds"] {
            Value::Null => 3600,
            v => v.as_i64().ok_or_else(|| {
                invalid(
                    "spec.expirationSeconds",
                    "Invalid value: must be an integer",
                )
            })?,
        };
        if exp_secs < 600 {
            return Err(invalid(
                "spec.expirationSeconds",
                &format!(
                    "Invalid value: {exp_secs}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        if exp_secs > 1 << 32 {
            return Err(invalid(
                "spec.expirationSeconds",
                &format!("Invalid value: {exp_secs}: may not specify a duration larger than 2^32 seconds"),
            ));
        }
        let exp_secs = expiry_override.unwrap_or(exp_secs);
        let mut audiences: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        if audiences.is_empty() {
            audiences.push(issuer.to_string());
        }
        let mut k8s = json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
        });
        let bound = &spec["boundObjectRef"];
        if bound.is_object() {
            let kind = bound["kind"].as_str().unwrap_or_default();
            if !matches!(kind, "Pod" | "Secret" | "Node") {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    &format!("Unsupported value: \"{kind}\": supported values: \"Pod\", \"Secret\", \"Node\""),
                ));
            }
            k8s[kind.to_lowercase()] = json!({"name": bound["name"], "uid": bound["uid"]});
        }
        let exp = now + exp_secs;
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "iss": issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": k8s,
        });
        let token = self.sign(&claims)?;
        self.record(IssuedToken {
            namespace: ns.to_string(),
            service_account: name.to_string(),
            audiences: audiences.clone(),
            expires_at: exp,
            issued_at: now,
            token: token.clone(),
        });
        let exp_ts = jiff::Timestamp::from_second(exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let mut out_spec = spec.clone();
        if !out_spec.is_object() {
            out_spec = json!({});
        }
        out_spec["audiences"] = json!(audiences);
        out_spec["expirationSeconds"] = json!(exp_secs);
        if out_spec["boundObjectRef"].is_object() {
            // echoed
        } else {
            out_spec["boundObjectRef"] = Value::Null;
        }
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": Value::Null},
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": exp_ts},
        }))
    }
}

/// The OIDC discovery document.
pub fn openid_configuration(issuer: &str, base_url: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base_url}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifiable_tokens() {
        let s = Signer::generate().unwrap();
        let sa = json!({"metadata": {"name": "sa1", "namespace": "ns1", "uid": "u"}});
        let tr = s
            .token_request(
                "http://issuer",
                &sa,
                &json!({"spec": {"audiences": ["api://AzureADTokenExchange"]}}),
                None,
                1000,
            )
            .unwrap();
        let tok = tr["status"]["token"].as_str().unwrap();
        let parts: Vec<&str> = tok.split('.').collect();
        let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns1:sa1");
        assert_eq!(claims["exp"], 4600);
        assert_eq!(claims["aud"][0], "api://AzureADTokenExchange");
        let jwk = &s.jwks()["keys"][0];
        let mut pk = vec![4u8];
        pk.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
        pk.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
        let sig = B64.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &pk)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        assert_eq!(s.issued().len(), 1);
        assert_eq!(s.verify(tok).unwrap(), claims);
        let mut forged = tok.to_string();
        forged.replace_range(parts[0].len() + 1..parts[0].len() + 3, "ab");
        assert!(s.verify(&forged).is_err());
        let other = Signer::generate().unwrap();
        assert_eq!(other.verify(tok), Err("invalid signature"));
    }

    #[test]
    fn rejects_short_expiry() {
        let s = Signer::generate().unwrap();
        let sa = json!({"metadata": {"name": "sa1", "namespace": "ns1"}});
        let err = s
            .token_request(
                "i",
                &sa,
                &json!({"spec": {"expirationSeconds": 60}}),
                None,
                0,
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
    }
}

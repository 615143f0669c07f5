//! ARM-style access tokens, as issued by IMDS and Entra (v1 claims: `aud`, `iss`
//! `https://sts.windows.net/<tid>/`, `tid`, `oid`, `appid`, `xms_mirid`, ...), and their
//! validation by the ACR exchange.

use serde_json::{json, Value};

use crate::config::{Identity, IdentityKind};
use crate::jwt::{JwtError, Unverified};
use crate::state::State;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// `now + secs`, saturating (lifetimes come from configuration and may be absurd).
pub fn expiry(now: i64, secs: u64) -> i64 {
    now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub iat: i64,
    pub exp: i64,
}

/// Issues an access token for `identity` with `aud` = `resource` exactly as requested.
pub fn issue(
    state: &State,
    identity: &Identity,
    resource: &str,
    lifetime_secs: u64,
) -> Result<Issued, JwtError> {
    let iat = now();
    let exp = expiry(iat, lifetime_secs);
    let tid = &identity.tenant;
    let mut claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tid}/"),
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "aio": uuid::Uuid::new_v4().simple().to_string(),
        "appid": identity.client_id,
        "appidacr": "2",
        "idp": format!("https://sts.windows.net/{tid}/"),
        "idtyp": "app",
        "oid": identity.object_id,
        "sub": identity.object_id,
        "tid": tid,
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    if identity.kind == IdentityKind::Managed {
        if let Some(rid) = &identity.resource_id {
            claims["xms_mirid"] = json!(rid);
        }
    }
    Ok(Issued {
        token: state.entra_signer.sign(&claims)?,
        iat,
        exp,
    })
}

/// The claims ACR relies on, from a token this stand-in issued.
#[derive(Debug, Clone)]
pub struct ArmClaims {
    pub aud: String,
    pub tid: String,
    pub oid: Option<String>,
    pub appid: Option<String>,
}

/// Verifies signature and validity window; returns a human reason on failure.
pub fn validate(state: &State, token: &str) -> Result<ArmClaims, String> {
    let parsed = Unverified::parse(token).map_err(|e| e.to_string())?;
    parsed
        .verify(state.entra_signer.public_point())
        .map_err(|e| format!("AAD access token is invalid: {e}"))?;
    let now = now();
    match parsed.time_claim("exp") {
        Some(exp) if exp > now => {}
        Some(_) => return Err("AAD access token has expired".to_owned()),
        None => return Err("AAD access token has no expiry".to_owned()),
    }
    if parsed.time_claim("nbf").is_some_and(|nbf| nbf > now + 300) {
        return Err("AAD access token is not yet valid".to_owned());
    }
    let aud = parsed
        .audiences()
        .first()
        .map(|s| s.to_string())
        .ok_or("AAD access token has no audience")?;
    let tid = parsed
        .str_claim("tid")
        .ok_or("AAD access token has no tenant")?
        .to_owned();
    Ok(ArmClaims {
        aud,
        tid,
        oid: parsed.str_claim("oid").map(str::to_owned),
        appid: parsed.str_claim("appid").map(str::to_owned),
    })
}

/// Identity keys named by a token without verifying it (for fault scoping and the log).
pub fn unverified_identity_keys(token: &str) -> Vec<String> {
    let Ok(parsed) = Unverified::parse(token) else {
        return Vec::new();
    };
    ["oid", "appid", "sub"]
        .iter()
        .filter_map(|c| parsed.claims.get(*c).and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

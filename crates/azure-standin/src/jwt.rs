//! Compact JWS (JWT) signing and verification with ES256 (ECDSA P-256, SHA-256), on `ring`.
//!
//! Also owns the key-id formats: JWK thumbprint-style ids for the Entra keys and the libtrust
//! key id that the CNCF distribution registry computes from a trusted certificate's key.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point
/// (SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING }).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm {0:?} is not ES256")]
    Algorithm(String),
    #[error("token signature is not valid")]
    BadSignature,
    #[error("no key {0:?} in the key set")]
    UnknownKey(String),
    #[error("key is not a usable P-256 key")]
    BadKey,
    #[error("signing failed")]
    Signing,
}

/// A parsed, not yet verified JWT.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub header: Value,
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

impl Unverified {
    /// Splits and decodes a compact JWS; verifies nothing.
    pub fn parse(token: &str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed);
        let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
        let claims: Value = serde_json::from_slice(&decode(c)?).map_err(|_| JwtError::Malformed)?;
        if !header.is_object() || !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        Ok(Self {
            header,
            claims,
            signing_input: format!("{h}.{c}"),
            signature: decode(s)?,
        })
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// Verifies the ES256 signature against an uncompressed P-256 public point.
    pub fn verify(&self, public_point: &[u8]) -> Result<(), JwtError> {
        let alg = self.header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != "ES256" {
            return Err(JwtError::Algorithm(alg.to_owned()));
        }
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public_point)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwtError::BadSignature)
    }

    /// Verifies against the key of a JWKS selected by `kid` (or the only key when no kid).
    pub fn verify_with_jwks(&self, jwks: &Value) -> Result<(), JwtError> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwtError::BadKey)?;
        let kid = self.kid();
        let key = match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or_else(|| JwtError::UnknownKey(kid.unwrap_or_default().to_owned()))?;
        self.verify(&jwk_public_point(key)?)
    }

    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric date claim; accepts integers, floats and numeric strings.
    pub fn time_claim(&self, name: &str) -> Option<i64> {
        match self.claims.get(name)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// `aud` as a list, whether the token carries a string or an array.
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Extracts the uncompressed point (`0x04 || x || y`) of an EC P-256 JWK.
pub fn jwk_public_point(jwk: &Value) -> Result<Vec<u8>, JwtError> {
    let field = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
            .ok_or(JwtError::BadKey)
    };
    if jwk.get("kty").and_then(Value::as_str) != Some("EC")
        || jwk.get("crv").and_then(Value::as_str) != Some("P-256")
    {
        return Err(JwtError::BadKey);
    }
    let (x, y) = (field("x")?, field("y")?);
    if x.len() != 32 || y.len() != 32 {
        return Err(JwtError::BadKey);
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

/// DER SubjectPublicKeyInfo of an uncompressed P-256 point.
pub fn p256_spki_der(public_point: &[u8]) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_point);
    der
}

/// The libtrust key id of a public key: SHA-256 of its DER SubjectPublicKeyInfo, first 240
/// bits, base32 (RFC 4648, no padding), 12 groups of 4 characters joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// An ES256 signing key with its key id and optional certificate chain (`x5c`).
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    x5c: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// Loads a PKCS#8 P-256 key; `kid` defaults to the libtrust id of its public key.
    pub fn from_pkcs8(
        pkcs8: &[u8],
        kid: Option<String>,
        x5c: Vec<Vec<u8>>,
    ) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|_| JwtError::BadKey)?;
        let kid = kid.unwrap_or_else(|| libtrust_key_id(&p256_spki_der(key.public_key().as_ref())));
        Ok(Self {
            key,
            rng,
            kid,
            x5c: x5c.iter().map(|c| STANDARD.encode(c)).collect(),
        })
    }

    /// Generates a fresh key.
    pub fn generate(kid: Option<String>) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JwtError::Signing)?;
        Self::from_pkcs8(pkcs8.as_ref(), kid, Vec::new())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Uncompressed public point.
    pub fn public_point(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub fn jwk(&self) -> Value {
        let point = self.public_point();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// Signs `claims` into a compact JWS with header `{typ, alg, kid[, x5c]}`.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        self.sign_with_chain(claims, true)
    }

    /// Signs, with the certificate chain in `x5c` only when `with_x5c` (and one is known).
    pub fn sign_with_chain(&self, claims: &Value, with_x5c: bool) -> Result<String, JwtError> {
        let mut header = json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        if with_x5c && !self.x5c.is_empty() {
            header["x5c"] = json!(self.x5c);
        }
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|_| JwtError::Signing)?);
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|_| JwtError::Signing)?);
        let input = format!("{h}.{c}");
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| JwtError::Signing)?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_round_trips() {
        let signer = Signer::generate(Some("k1".into())).unwrap();
        let token = signer.sign(&json!({"sub": "x", "exp": 5})).unwrap();
        let parsed = Unverified::parse(&token).unwrap();
        assert_eq!(parsed.kid(), Some("k1"));
        parsed.verify(signer.public_point()).unwrap();
        parsed
            .verify_with_jwks(&json!({"keys": [signer.jwk()]}))
            .unwrap();
        assert_eq!(parsed.time_claim("exp"), Some(5));
    }

    #[test]
    fn tampered_or_foreign_tokens_fail() {
        let signer = Signer::generate(None).unwrap();
        let other = Signer::generate(None).unwrap();
        let token = signer.sign(&json!({"sub": "x"})).unwrap();
        let parsed = Unverified::parse(&token).unwrap();
        assert_eq!(
            parsed.verify(other.public_point()),
            Err(JwtError::BadSignature)
        );
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
        assert_eq!(
            Unverified::parse(&forged)
                .unwrap()
                .verify(signer.public_point()),
            Err(JwtError::BadSignature)
        );
        assert!(Unverified::parse("a.b").is_err());
        assert!(Unverified::parse("!!.??.**").is_err());
    }

    #[test]
    fn libtrust_key_id_has_twelve_groups_of_four_base32() {
        let signer = Signer::generate(None).unwrap();
        let kid = signer.kid();
        let groups: Vec<&str> = kid.split(':').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 4
            && g.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))));
    }

    /// Vector computed independently with `openssl pkey -pubin -outform DER | sha256sum` and
    /// Python's `base64.b32encode` over the first 30 bytes of the digest.
    #[test]
    fn libtrust_key_id_matches_known_vector() {
        let point = hex_point();
        assert_eq!(libtrust_key_id(&p256_spki_der(&point)), KNOWN_KID);
    }

    // Public point of the P-256 generator G, a key everyone can reproduce.
    fn hex_point() -> Vec<u8> {
        let x = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
        let y = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
        let mut out = vec![4u8];
        for s in [x, y] {
            out.extend(
                (0..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()),
            );
        }
        out
    }

    const KNOWN_KID: &str = "LTJF:F6YM:5CJS:INX2:7DGN:CBAJ:QG4J:5ZFN:NOP6:TYVC:W7TR:VLFS";
}

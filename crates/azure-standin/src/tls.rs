//! Certificates: a generated CA, the HTTPS server certificate (SANs = every served host,
//! re-issued when hosts are added at runtime) and the ACR token-signing certificate a
//! distribution registry trusts through `rootcertbundle`.
//!
//! Only `ring` is used as the crypto provider, passed explicitly, so nothing depends on a
//! process-wide default provider.

use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use crate::jwt::{JwtError, Signer};
use crate::log::lock;

/// Certificate generation or TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("signing key: {0}")]
    Key(#[from] JwtError),
}

/// The ring crypto provider, shared by server and client configurations.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA and the current server certificate.
pub struct Tls {
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server: Mutex<(Vec<String>, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Generates a CA and a server certificate for `hosts`.
    pub fn new(hosts: Vec<String>) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("azure-standin CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let ca_pem = cert.pem();
        let ca_der = cert.der().clone();
        let ca = Issuer::new(params, key);
        let config = server_config(&ca, &ca_der, &hosts)?;
        Ok(Self {
            ca,
            ca_der,
            ca_pem,
            server: Mutex::new((hosts, config)),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The configuration for the next TLS connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        lock(&self.server).1.clone()
    }

    /// Re-issues the server certificate if `hosts` are not all covered.
    pub fn ensure_hosts(&self, hosts: Vec<String>) -> Result<(), TlsError> {
        let mut guard = lock(&self.server);
        let covered = hosts
            .iter()
            .all(|h| guard.0.iter().any(|c| c.eq_ignore_ascii_case(h)));
        if !covered {
            let config = server_config(&self.ca, &self.ca_der, &hosts)?;
            *guard = (hosts, config);
        }
        Ok(())
    }

    /// A client configuration trusting only this CA (ring provider, h2 and http/1.1).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "acrpull azure-standin");
    dn
}

fn server_config(
    ca: &Issuer<'static, KeyPair>,
    ca_der: &CertificateDer<'static>,
    hosts: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name = name("azure-standin server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca)?;
    let chain = vec![cert.der().clone(), ca_der.clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The ACR token-signing key and its self-signed certificate.
///
/// Self-signed on purpose: distribution's token auth derives its trusted key ids from the
/// certificates in `rootcertbundle`, so the bundle must hold the signing certificate itself
/// for a `kid`-only token; with `x5c` the chain also verifies against the same bundle.
#[derive(Debug)]
pub struct RegistrySigning {
    pub signer: Signer,
    pub cert_pem: String,
}

impl RegistrySigning {
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("Azure Container Registry token signing");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let signer = Signer::from_pkcs8(&key.serialize_der(), None, vec![cert.der().to_vec()])?;
        Ok(Self {
            signer,
            cert_pem: cert.pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_certificate_is_reissued_for_new_hosts() {
        let tls = Tls::new(vec!["a.azurecr.io".into()]).unwrap();
        let before = tls.server_config();
        tls.ensure_hosts(vec!["a.azurecr.io".into()]).unwrap();
        assert!(Arc::ptr_eq(&before, &tls.server_config()));
        tls.ensure_hosts(vec!["a.azurecr.io".into(), "b.azurecr.io".into()])
            .unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.server_config()));
        assert!(tls.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn registry_signing_kid_is_libtrust_id_of_certificate_key() {
        let signing = RegistrySigning::generate().unwrap();
        let kid =
            crate::jwt::libtrust_key_id(&crate::jwt::p256_spki_der(signing.signer.public_point()));
        assert_eq!(signing.signer.kid(), kid);
        let token = signing.signer.sign(&serde_json::json!({})).unwrap();
        let parsed = crate::jwt::Unverified::parse(&token).unwrap();
        assert_eq!(parsed.header["x5c"].as_array().map(Vec::len), Some(1));
    }
}

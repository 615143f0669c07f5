//! TLS for the API port: a CA generated at start (the cluster CA, published in every
//! namespace's `kube-root-ca.crt` ConfigMap and put in the kubeconfig's
//! `certificate-authority-data`) and a server certificate for `127.0.0.1` and `localhost`.
//!
//! TLS matters for fidelity, not secrecy: kubectl (client-go's kubeconfig loader) sends no
//! credentials to a plain-HTTP server, so only over HTTPS does a kubeconfig's token reach the
//! stand-in and make kubectl run as that user. The API port answers both: a connection whose
//! first byte is a TLS handshake is served over TLS, any other as plain HTTP.
//!
//! Only `ring` is used, passed explicitly, so nothing depends on a process-wide provider.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// Certificate generation or TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The cluster CA and the API server's TLS configuration.
pub struct Tls {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Tls {
    /// A new CA and a server certificate for 127.0.0.1 and localhost.
    pub fn generate() -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = name("kubernetes");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        let ca_der = ca_cert.der().clone();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params.distinguished_name = name("kube-apiserver");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone(), ca_der], key_der)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            ca_pem,
            server: Arc::new(server),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server configuration.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }
}

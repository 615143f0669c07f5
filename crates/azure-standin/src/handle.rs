//! The typed Rust API: `AzureStandIn::builder().config(cfg).start().await` binds both ports
//! and returns a `Handle` to inspect and steer the running stand-in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::arm;
use crate::config::{
    Config, FederatedCredential, Identity, OidcIssuer, Registry, RoleAssignment, Tenant,
};
use crate::error::StandInError;
use crate::faults::FaultSet;
use crate::limits::LimiterStats;
use crate::log::{Hop, HopCounts, RequestRecord};
use crate::server;
use crate::state::State;

/// Entry point.
#[derive(Debug)]
pub struct AzureStandIn;

impl AzureStandIn {
    pub fn builder() -> StandInBuilder {
        StandInBuilder {
            config: Config::default(),
            imds_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Configures and starts a stand-in. Both ports default to ephemeral ports on 127.0.0.1.
#[derive(Debug)]
pub struct StandInBuilder {
    config: Config,
    imds_bind: SocketAddr,
    https_bind: SocketAddr,
}

impl StandInBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Address of the plain-HTTP port (IMDS and `/_standin`).
    pub fn imds_bind(mut self, addr: SocketAddr) -> Self {
        self.imds_bind = addr;
        self
    }

    /// Address of the HTTPS port (Entra and every registry).
    pub fn https_bind(mut self, addr: SocketAddr) -> Self {
        self.https_bind = addr;
        self
    }

    /// Binds both ports and starts serving.
    pub async fn start(self) -> Result<Handle, StandInError> {
        let imds = TcpListener::bind(self.imds_bind).await?;
        let https = TcpListener::bind(self.https_bind).await?;
        let state = State::new(self.config, imds.local_addr()?, https.local_addr()?)?;
        let (shutdown, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(server::serve_http(imds, state.clone(), rx.clone())),
            tokio::spawn(server::serve_https(https, state.clone(), rx)),
        ];
        Ok(Handle {
            state,
            shutdown,
            tasks,
        })
    }
}

/// A running stand-in. Dropping it stops the listeners; `shutdown` also waits for them.
#[derive(Debug)]
pub struct Handle {
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Handle {
    /// Base URL of IMDS, e.g. `http://127.0.0.1:41234` (append `/metadata/identity/oauth2/token`).
    pub fn imds_url(&self) -> String {
        format!("http://{}", self.state.imds_addr)
    }

    pub fn imds_addr(&self) -> SocketAddr {
        self.state.imds_addr
    }

    /// Base URL of the control API, `http://127.0.0.1:<port>/_standin`.
    pub fn control_url(&self) -> String {
        format!("{}{}", self.imds_url(), crate::control::PREFIX)
    }

    /// The HTTPS address every Entra and registry host name must resolve to.
    pub fn https_addr(&self) -> SocketAddr {
        self.state.https_addr
    }

    /// `https://<host>` for a registry or Entra host (reached through a resolve override).
    pub fn https_url(&self, host: &str) -> String {
        format!("https://{host}")
    }

    /// PEM of the CA that issued the HTTPS certificate.
    pub fn ca_pem(&self) -> String {
        self.state.tls.ca_pem().to_owned()
    }

    /// Writes the CA PEM to `path`.
    pub fn write_ca(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.state.tls.ca_pem())
    }

    /// PEM of the self-signed certificate whose key signs every ACR token (a registry's
    /// `auth.token.rootcertbundle`).
    pub fn registry_signing_cert_pem(&self) -> String {
        self.state.acr.cert_pem.clone()
    }

    /// The libtrust key id in the `kid` header of ACR tokens.
    pub fn registry_signing_kid(&self) -> String {
        self.state.acr.signer.kid().to_owned()
    }

    /// JWKS of the key that signs ARM tokens (also served at `/<tenant>/discovery/v2.0/keys`).
    pub fn arm_jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [self.state.entra_signer.jwk()]})
    }

    /// A reqwest client builder that trusts the stand-in's CA (ring provider, explicitly) and
    /// resolves every configured registry and Entra host to the HTTPS port.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, StandInError> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(self.state.tls.client_config()?)
            .no_proxy();
        for host in self.state.config().tls_hosts() {
            if host != "localhost" && host != "127.0.0.1" {
                builder = builder.resolve(&host, self.https_addr());
            }
        }
        Ok(builder)
    }

    /// A rustls client configuration that trusts the stand-in's CA.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, StandInError> {
        Ok(self.state.tls.client_config()?)
    }

    /// Every request answered so far (plus hangs and resets), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.records()
    }

    /// Requests of one hop.
    pub fn requests_for(&self, hop: Hop) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.hop == hop)
            .collect()
    }

    /// Per-hop totals.
    pub fn counts(&self) -> BTreeMap<Hop, HopCounts> {
        self.state.log.counts()
    }

    /// Peak offered rate and concurrency per limiter (IMDS, each registry).
    pub fn limiter_stats(&self) -> Vec<LimiterStats> {
        self.state.limits.stats()
    }

    /// Forgets the request log, counters and limiter peaks.
    pub fn clear_requests(&self) {
        self.state.log.clear();
        self.state.limits.reset();
    }

    /// Waits until `pred` holds over the request log (woken on every new record).
    pub async fn wait_for_requests(
        &self,
        timeout: Duration,
        pred: impl FnMut(&[RequestRecord]) -> bool,
    ) -> bool {
        self.state.log.wait_until(timeout, pred).await
    }

    /// The fault rules: `add`, `remove`, `clear`, `list`.
    pub fn faults(&self) -> &FaultSet {
        &self.state.faults
    }

    /// A snapshot of the configuration.
    pub fn config(&self) -> Config {
        Config::clone(&self.state.config())
    }

    /// Replaces the configuration (validated; the server certificate follows new hosts).
    pub fn set_config(&self, config: Config) -> Result<(), StandInError> {
        self.update_config(|c| *c = config)
    }

    /// Changes the configuration in place.
    pub fn update_config(&self, change: impl FnOnce(&mut Config)) -> Result<(), StandInError> {
        self.state.update_config(change).map(|_| ())
    }

    pub fn add_tenant(&self, tenant: Tenant) -> Result<(), StandInError> {
        self.update_config(|c| c.tenants.push(tenant))
    }

    pub fn add_identity(&self, identity: Identity) -> Result<(), StandInError> {
        self.update_config(|c| c.identities.push(identity))
    }

    pub fn add_registry(&self, registry: Registry) -> Result<(), StandInError> {
        self.update_config(|c| c.registries.push(registry))
    }

    pub fn add_role_assignment(&self, role: RoleAssignment) -> Result<(), StandInError> {
        self.update_config(|c| c.role_assignments.push(role))
    }

    /// Removes every role assignment of `identity` on `registry`.
    pub fn remove_role_assignments(
        &self,
        identity: &str,
        registry: &str,
    ) -> Result<(), StandInError> {
        self.update_config(|c| {
            c.role_assignments
                .retain(|r| !(r.identity == identity && r.registry.eq_ignore_ascii_case(registry)))
        })
    }

    pub fn add_federated_credential(&self, fic: FederatedCredential) -> Result<(), StandInError> {
        self.update_config(|c| c.federated_credentials.push(fic))
    }

    /// Configures an issuer's JWKS directly (no discovery).
    pub fn set_oidc_jwks(&self, issuer: &str, jwks: serde_json::Value) -> Result<(), StandInError> {
        self.update_config(|c| {
            c.oidc_issuers.retain(|o| o.issuer != issuer);
            c.oidc_issuers.push(OidcIssuer {
                issuer: issuer.to_owned(),
                jwks,
            });
        })
    }

    /// Mints an ARM-style access token for a configured identity (as IMDS/Entra would).
    pub fn issue_arm_token(
        &self,
        identity: &str,
        resource: &str,
        lifetime: Duration,
    ) -> Result<String, StandInError> {
        let config = self.state.config();
        let identity = config
            .identity_by_name(identity)
            .ok_or_else(|| StandInError::UnknownIdentity(identity.to_owned()))?;
        Ok(arm::issue(&self.state, identity, resource, lifetime.as_secs())?.token)
    }

    /// JSON with the URLs, ports and PEMs (what the binary's `--state-out` writes).
    pub fn info(&self) -> serde_json::Value {
        crate::control::info(&self.state)
    }

    /// Stops accepting, drops every connection and waits for the listeners to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

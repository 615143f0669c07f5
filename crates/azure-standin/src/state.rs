//! The state shared by every connection: configuration, keys, certificates, the request log,
//! fault rules, limiters and the discovered-JWKS cache.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::entra::JwksCache;
use crate::error::StandInError;
use crate::faults::FaultSet;
use crate::jwt::Signer;
use crate::limits::Limits;
use crate::log::RequestLog;
use crate::tls::{RegistrySigning, Tls};

/// Everything the handlers share.
#[derive(Debug)]
pub struct State {
    config: RwLock<Arc<Config>>,
    pub tls: Tls,
    /// Signs ARM tokens (IMDS and Entra); its JWKS is served by the Entra stand-in.
    pub entra_signer: Signer,
    /// Signs every ACR token.
    pub acr: RegistrySigning,
    pub log: RequestLog,
    pub faults: FaultSet,
    pub limits: Limits,
    pub jwks: JwksCache,
    /// Client for OIDC issuer discovery (trusts this stand-in's CA).
    pub http: reqwest::Client,
    pub imds_addr: SocketAddr,
    pub https_addr: SocketAddr,
}

impl State {
    pub fn new(
        config: Config,
        imds_addr: SocketAddr,
        https_addr: SocketAddr,
    ) -> Result<Arc<Self>, StandInError> {
        config.validate()?;
        let tls = Tls::new(config.tls_hosts())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.client_config()?)
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| StandInError::HttpClient(e.to_string()))?;
        Ok(Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            tls,
            entra_signer: Signer::generate(None)?,
            acr: RegistrySigning::generate()?,
            log: RequestLog::default(),
            faults: FaultSet::default(),
            limits: Limits::default(),
            jwks: JwksCache::default(),
            http,
            imds_addr,
            https_addr,
        }))
    }

    /// A snapshot of the configuration (cheap; handlers hold it for one request).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `change` to a copy of the configuration, validates it, re-issues the server
    /// certificate if new hosts appeared, then publishes it.
    pub fn update_config(
        &self,
        change: impl FnOnce(&mut Config),
    ) -> Result<Arc<Config>, StandInError> {
        let mut guard = self.config.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Config::clone(&guard);
        change(&mut next);
        next.validate()?;
        self.tls.ensure_hosts(next.tls_hosts())?;
        let next = Arc::new(next);
        *guard = next.clone();
        self.jwks.clear();
        Ok(next)
    }
}

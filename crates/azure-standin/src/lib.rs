//! Stand-ins for Azure IMDS, Entra ID and the Azure Container Registry token server, with
//! fault injection, for testing `acrpull` without Azure.
//!
//! * IMDS on plain HTTP (`GET /metadata/identity/oauth2/token`), with the `/_standin` control
//!   API on the same port.
//! * Entra and every registry on one HTTPS port, dispatched by host name; the certificate is
//!   issued by a generated CA for every configured host. Clients map realistic names
//!   (`demo.azurecr.io`, `login.microsoftonline.com`) to the port with a resolve override.
//! * ACR tokens are ES256 JWTs a CNCF distribution registry accepts with token auth.
//!
//! Start one with [`AzureStandIn::builder`]; see the crate README for the wire details.

pub mod acr;
pub mod arm;
pub mod config;
pub mod control;
pub mod entra;
pub mod error;
pub mod faults;
pub mod handle;
pub mod http;
pub mod imds;
pub mod jwt;
pub mod limits;
pub mod log;
pub mod proxy;
pub mod scope;
mod server;
pub mod state;
pub mod tls;

pub use config::{
    Config, FederatedCredential, Identity, IdentityKind, Latency, Lifetimes, OidcIssuer, Registry,
    RoleAssignment, Sku, Tenant,
};
pub use error::StandInError;
pub use faults::{FaultAction, FaultRule, FaultSet, Trigger};
pub use handle::{AzureStandIn, Handle, StandInBuilder};
pub use limits::LimiterStats;
pub use log::{Hop, HopCounts, RequestRecord};

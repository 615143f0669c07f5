//! An in-memory Kubernetes API server for tests, served over HTTPS and plain HTTP on
//! 127.0.0.1, that kube-rs 5 and kubectl 1.32 accept as real: it authenticates (its own
//! ServiceAccount tokens, an admin token), authorizes with RBAC, admits, validates and stores
//! like a real one (see `pipeline.rs` for the stages).
//!
//! It implements the write, list and watch semantics controllers depend on (global
//! resourceVersions, 409 on stale writes, status subresource, finalizers, asynchronous
//! garbage collection, watch cache with 410 and bookmarks, `sendInitialEvents`, selector
//! transitions, the four patch types, CRD registration with structural pruning, signed
//! TokenRequest tokens) and lets a test inject faults (latency, hangs, error codes, conflicts,
//! ambiguous writes, watch faults, API server down/up, Lease takeover, ...).
//!
//! Everything is `serde_json::Value`: the crate does not depend on kube or k8s-openapi.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_standin::HandleError> {
//! use std::time::Duration;
//! use kube_standin::{Action, Fault, StandIn};
//!
//! let server = StandIn::builder()
//!     .watch_cache_size(100)
//!     .bookmark_interval(Duration::from_secs(1))
//!     .gc_delay(Duration::from_millis(50))
//!     .start()
//!     .await?;
//! let dir = std::env::temp_dir().join("standin-example");
//! server.write_kubeconfig(&dir.join("kubeconfig"))?; // KUBECONFIG for kubectl or the controller
//! server.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: t1\n")?;
//! server.faults().add(
//!     Fault::new(Action::Error { code: 429, message: None, retry_after: Some(1) })
//!         .verb("update").resource("leases").next(2),
//! );
//! // ... run the code under test against server.url() ...
//! let sa = server
//!     .wait_for("v1", "ServiceAccount", "t1", "default", |o| o.is_some(), Duration::from_secs(5))
//!     .await?;
//! let writes = server.requests().into_iter().filter(|r| r.verb == "patch").count();
//! # let _ = (sa, writes);
//! server.shutdown();
//! # Ok(()) }
//! ```
//!
//! # Handle API
//!
//! - [`StandIn::builder`] → [`Builder`]: `watch_cache_size(n)`, `bookmark_interval(d)`,
//!   `gc_delay(d)`, `issuer(url)`, `port(p)`, `seed_yaml(text)`, `start().await`.
//! - [`Handle`]: `url()`, `https_url()`, `control_url()`, `port()`, `write_kubeconfig(path)`,
//!   `kubeconfig_yaml()`, `admin_token()`, `service_account_token(ns, name, ttl)`,
//!   `write_kubeconfig_for_token(path, token)`, `apply(value)`, `apply_yaml(text)`,
//!   `get(api_version, kind_or_plural, ns, name)`, `list(api_version, kind, ns)`,
//!   `delete(..)`, `wait_for(.., predicate, timeout)`, `wait_until(predicate, timeout)`,
//!   `requests()`, `clear_requests()`, `faults()` ([`Faults::add`], [`Faults::remove`],
//!   [`Faults::clear`], [`Faults::list`]), `compact()`, `resource_version()`,
//!   `set_resource_version(rv)`, `down()`, `up().await`, `down_for(d)`, `issued_tokens()`,
//!   `jwks()`, `issuer()`, `sign_claims(..)`, `take_over_lease(ns, name, holder)`,
//!   `set_bookmark_interval(d)`, `shutdown()`.
//!
//! The same controls are served over HTTP under `/_standin/` (see the crate's README.md).

pub mod admission;
pub mod authn;
pub mod authz;
pub mod cluster;
pub mod control;
pub mod controllers;
pub mod crd;
pub mod discovery;
pub mod error;
pub mod events;
pub mod faults;
pub mod handle;
pub mod http;
pub mod impersonation;
pub mod kubeconfig;
pub mod listener;
pub mod log;
pub mod nonresource;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod pipeline;
pub mod proto;
pub mod reply;
pub mod request;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod ssa;
pub mod store;
pub mod table;
pub mod tls;
pub mod token;
pub mod validate;
pub mod watch;

pub use error::ApiError;
pub use faults::{Action, Fault, FaultStatus, Faults, Matcher, Trigger};
pub use handle::{Builder, Handle, HandleError, StandIn};
pub use log::RequestRecord;
pub use token::IssuedToken;

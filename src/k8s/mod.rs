//! Everything that talks to the Kubernetes API: the `AcrPullBinding` types, watches, the single
//! writer and leader election.

pub mod api;

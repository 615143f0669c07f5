//! Validating admission: its single entry point, [`admit`].
//!
//! It is called for every write an API client makes (creates, updates, patches, applies,
//! deletes — each object of a deletecollection — and the `status` and `serviceaccounts/token`
//! subresources), after schema validation and before storage, with the [`Attributes`]
//! (operation, resource and kind, subresource, namespace, name, the new and the old object in
//! the request's version, the user from authentication, `dryRun`, the request's options) and
//! a [`Lookup`] to read policies, bindings, parameter objects and the namespace object.
//!
//! The only validating plugin is the ValidatingAdmissionPolicy one ([`super::policy`]).

use super::policy::{Outcome, Policies};
use super::{Attributes, Lookup};

/// Run the validating admission plugins on one write: the denial, if any, and the warnings
/// (`Warning` headers, for `validationActions: [Warn]`) and audit annotations to record
/// either way.
pub fn admit(policies: &Policies, lookup: &dyn Lookup, attrs: &Attributes<'_>) -> Outcome {
    policies.evaluate(attrs, lookup)
}

//! Writes in two steps, as the real API server's registry does them on top of etcd's
//! `GuaranteedUpdate`: *prepare* computes the object to store from the request and the current
//! object (patch application, strategy rules, managedFields) without holding the store; the
//! request path then runs its validation and admission stages on the prepared object and its
//! old version; *commit* stores it only if the object has not changed since it was read
//! (otherwise the write is prepared again on the fresh object — or fails with 409 when the
//! client sent a resourceVersion).
//!
//! [`Store::write`] runs that loop; internal writers (GC, the built-in controllers, the typed
//! handle) use the convenience methods `create`, `update`, `patch` and `delete`, which run it
//! with no stages.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::crd;
use crate::error::{ApiError, ApiResult};
use crate::patch::{self, PatchType};
use crate::resources::ResourceType;
use crate::ssa;

use super::strategy::{self, meta, meta_mut, now};
use super::{DeleteOpts, EventType, Inner, ObjKey, Store, WriteOpts};

/// What a prepared write will do.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Store a new object.
    Create {
        /// Type.
        rt: Arc<ResourceType>,
        /// Namespace (`""` if cluster-scoped).
        ns: String,
        /// Name.
        name: String,
        /// The object to store.
        object: Value,
    },
    /// Replace an object (`noop`: the new object equals the current one).
    Update {
        /// Type.
        rt: Arc<ResourceType>,
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
        /// The current object.
        old: Value,
        /// The object to store.
        new: Value,
        /// `""` or `status`.
        subresource: String,
        /// Nothing changes: no write, no event, same resourceVersion.
        noop: bool,
        /// The last finalizer of a deleting object is gone: remove it.
        remove: bool,
    },
    /// Delete an object: mark it (finalizers, namespaces) or remove it.
    Delete {
        /// Type.
        rt: Arc<ResourceType>,
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
        /// The current object.
        old: Value,
        /// The marked object, or the last state if removed now.
        new: Value,
        /// Removed now rather than marked.
        remove: bool,
        /// Already being deleted: nothing to do.
        already: bool,
    },
}

impl Plan {
    /// The object the write produces (for deletes: the marked or final object).
    pub fn object(&self) -> &Value {
        match self {
            Plan::Create { object, .. } => object,
            Plan::Update { new, .. } | Plan::Delete { new, .. } => new,
        }
    }

    /// The object before the write, if any.
    pub fn old_object(&self) -> Option<&Value> {
        match self {
            Plan::Create { .. } => None,
            Plan::Update { old, .. } | Plan::Delete { old, .. } => Some(old),
        }
    }

    /// The type written.
    pub fn resource_type(&self) -> &Arc<ResourceType> {
        match self {
            Plan::Create { rt, .. } | Plan::Update { rt, .. } | Plan::Delete { rt, .. } => rt,
        }
    }

    /// Namespace of the object (`""` if cluster-scoped).
    pub fn namespace(&self) -> &str {
        match self {
            Plan::Create { ns, .. } | Plan::Update { ns, .. } | Plan::Delete { ns, .. } => ns,
        }
    }

    /// Name of the object.
    pub fn name(&self) -> &str {
        match self {
            Plan::Create { name, .. } | Plan::Update { name, .. } | Plan::Delete { name, .. } => {
                name
            }
        }
    }

    /// The subresource written (`""` or `status`).
    pub fn subresource(&self) -> &str {
        match self {
            Plan::Update { subresource, .. } => subresource,
            _ => "",
        }
    }

    /// Whether the plan creates an object.
    pub fn is_create(&self) -> bool {
        matches!(self, Plan::Create { .. })
    }

    /// Whether the plan deletes an object.
    pub fn is_delete(&self) -> bool {
        matches!(self, Plan::Delete { .. })
    }

    /// What a dry run answers.
    fn dry_run_result(self) -> Written {
        match self {
            Plan::Create { object, .. } => Written {
                object,
                created: true,
                exists: true,
            },
            Plan::Update { old, new, noop, .. } => Written {
                object: if noop { old } else { new },
                created: false,
                exists: true,
            },
            Plan::Delete {
                old,
                new,
                already,
                remove,
                ..
            } => Written {
                object: if already { old } else { new },
                created: false,
                exists: already || !remove,
            },
        }
    }
}

/// The outcome of a committed (or dry-run) write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The stored object (deletes: the marked object, or the final state with the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The write created the object (an apply patch can).
    pub created: bool,
    /// The object still exists after the write (false once a delete removed it).
    pub exists: bool,
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// The object changed since the plan was prepared: prepare again.
    Stale,
    /// The write is refused.
    Api(ApiError),
}

impl From<ApiError> for CommitError {
    fn from(e: ApiError) -> Self {
        CommitError::Api(e)
    }
}

/// How often a write is prepared again after the object changed underneath it.
const MAX_ATTEMPTS: usize = 16;

fn request_version(rt: &ResourceType, opts: &WriteOpts) -> String {
    if opts.version.is_empty() {
        rt.storage_version().to_string()
    } else {
        opts.version.clone()
    }
}

fn manager(opts: &WriteOpts) -> &str {
    if opts.manager.is_empty() {
        "unknown"
    } else {
        &opts.manager
    }
}

/// The namespace of a namespaced write must exist and not be terminating (the storage-level
/// guard behind the NamespaceLifecycle admission plugin; it closes the race with a
/// concurrent namespace deletion).
pub(super) fn check_namespace(
    inner: &Inner,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> ApiResult<()> {
    if !rt.namespaced {
        return Ok(());
    }
    match inner.namespace(ns) {
        None => Err(ApiError::not_found("", "namespaces", ns)),
        Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => Err(
            ApiError::namespace_terminating(&rt.group, &rt.plural, name, ns),
        ),
        Some(_) => Ok(()),
    }
}

impl Store {
    /// Prepare, run `stages` on the plan, commit; again from the start when the object
    /// changed in between. A dry run runs the stages and commits nothing.
    pub fn write(
        &self,
        dry_run: bool,
        mut prepare: impl FnMut() -> ApiResult<Plan>,
        mut stages: impl FnMut(&Plan) -> ApiResult<()>,
    ) -> ApiResult<Written> {
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let plan = prepare()?;
            stages(&plan)?;
            if dry_run {
                return Ok(plan.dry_run_result());
            }
            let (group, plural, name) = {
                let rt = plan.resource_type();
                (rt.group.clone(), rt.plural.clone(), plan.name().to_string())
            };
            match self.commit(plan) {
                Ok(w) => return Ok(w),
                Err(CommitError::Api(e)) => return Err(e),
                Err(CommitError::Stale) => last = Some((group, plural, name)),
            }
        }
        let (g, p, n) = last.unwrap_or_default();
        Err(ApiError::conflict_stale(&g, &p, &n))
    }

    /// Prepare a create (POST).
    pub fn prepare_create(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        mut body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Plan> {
        let version = request_version(rt, opts);
        strategy::check_body(rt, &mut body, &version)?;
        let md = meta_mut(&mut body);
        if rt.namespaced {
            match md.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    md.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            md.remove("namespace");
        }
        let mut name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            match md.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    name = format!("{g}{}", strategy::random_suffix());
                    md.insert("name".into(), json!(name));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ))
                }
            }
        }
        if !strategy::valid_name_for(rt, &name) {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, "metadata.name", &format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")));
        }
        {
            let inner = self.lock();
            check_namespace(&inner, rt, ns, &name)?;
            if inner.get_obj(rt, ns, &name).is_some() {
                return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
            }
        }
        let now = now();
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            md.remove(k);
        }
        md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        md.insert("creationTimestamp".into(), json!(now));
        if rt.tracks_generation() {
            md.insert("generation".into(), json!(1));
        } else {
            md.remove("generation");
        }
        if rt.status_subresource && rt.resets_status_on_create() {
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
        }
        strategy::normalize(rt, &mut body, opts)?;
        strategy::prepare_for_create(rt, &mut body, &name);
        if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
            let t = crd::resource_type(&body)?;
            if let Some(existing) = self.lock().registry.by_key(&t.group, &t.plural) {
                if !existing.custom {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        &name,
                        "spec.group",
                        "Invalid value: conflicts with a built-in type",
                    ));
                }
            }
            body["status"] = crd::accepted_status(&body, &now);
        }
        ssa::record_update(
            None,
            &mut body,
            &ssa::Writer {
                manager: manager(opts),
                subresource: "",
                api_version: &rt.api_version(&version),
                now: &now,
            },
        );
        if let Some(mf) = &opts.managed_fields {
            body["metadata"]["managedFields"] = mf.clone();
        }
        Ok(Plan::Create {
            rt: rt.clone(),
            ns: ns.to_string(),
            name,
            object: body,
        })
    }

    /// Prepare an update (PUT of the main resource or `status`).
    pub fn prepare_update(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        mut body: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> ApiResult<Plan> {
        let version = request_version(rt, opts);
        strategy::check_body(rt, &mut body, &version)?;
        let current = self.get(rt, ns, name)?;
        let body_name = meta(&body, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta(&body, "namespace");
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        match body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            Some(rv) if rv != meta(&current, "resourceVersion") => {
                return Err(ApiError::conflict_stale(&rt.group, &rt.plural, name));
            }
            Some(_) => {}
            None if rt.requires_resource_version_on_update() => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
            None => {}
        }
        self.finish_update(rt, ns, name, current, body, sub, opts, &version, false)
    }

    /// Prepare a patch (main resource or `status`); an apply patch of an absent object
    /// prepares its creation.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_patch(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> ApiResult<Plan> {
        let version = request_version(rt, opts);
        let current = self.lock().get_obj(rt, ns, name).cloned();
        let Some(current) = current else {
            if ptype != PatchType::Apply || sub.is_some() {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            let mut obj = body.clone();
            if !obj.is_object() {
                return Err(ApiError::bad_request("apply body must be an object"));
            }
            let now = now();
            let applied = {
                let mut a = obj.clone();
                if let Some(m) = a["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                a
            };
            let w = ssa::Writer {
                manager: &opts.manager,
                subresource: "",
                api_version: &rt.api_version(&version),
                now: &now,
            };
            let skeleton = ssa::apply(&json!({"metadata": {"name": name}}), &applied, &w, true)
                .map_err(|_| ApiError::internal("apply on create"))?;
            let mf = skeleton["metadata"]["managedFields"].clone();
            meta_mut(&mut obj).insert("name".into(), json!(name));
            return self.prepare_create(
                rt,
                ns,
                obj,
                &WriteOpts {
                    managed_fields: Some(mf),
                    ..opts.clone()
                },
            );
        };
        let mut new = current.clone();
        let sub_name = sub.unwrap_or("");
        let now = now();
        let mut apply_done = false;
        match ptype {
            PatchType::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge(&mut new, body)
            }
            PatchType::Strategic => {
                if rt.custom {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json",
                    ));
                }
                patch::strategic(&mut new, body).map_err(ApiError::bad_request)?
            }
            PatchType::Json => patch::json_patch(&mut new, body).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?,
            PatchType::Apply => {
                if opts.manager.is_empty() {
                    return Err(ApiError::invalid(
                        "PatchOptions",
                        "meta.k8s.io",
                        "",
                        "fieldManager",
                        "Required value: is required for apply patch",
                    ));
                }
                let mut applied = body.clone();
                if !applied.is_object() {
                    return Err(ApiError::bad_request("apply body must be an object"));
                }
                strategy::check_body(rt, &mut applied, &version)?;
                let rv_pre = applied["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if let Some(m) = applied["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let w = ssa::Writer {
                    manager: &opts.manager,
                    subresource: sub_name,
                    api_version: &rt.api_version(&version),
                    now: &now,
                };
                new = ssa::apply_with_csa_upgrade(&current, &applied, &w, opts.force).map_err(|c| {
                    let fields: Vec<String> = c.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect();
                    ApiError::new(409, "Conflict", format!("Apply failed with {} conflict{}: {}", c.len(), if c.len() == 1 { "" } else { "s" }, fields.join("\n")))
                        .with_details(json!({"name": name, "kind": rt.plural, "group": rt.group,
                            "causes": c.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field})).collect::<Vec<_>>()}))
                })?;
                if let Some(rv) = rv_pre {
                    new["metadata"]["resourceVersion"] = json!(rv);
                }
                apply_done = true;
            }
        }
        let cur_rv = meta(&current, "resourceVersion");
        match new["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() && rv != cur_rv => {
                return Err(ApiError::conflict_stale(&rt.group, &rt.plural, name));
            }
            _ => {}
        }
        if !new.is_object() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "the patch produced a non-object",
            ));
        }
        self.finish_update(rt, ns, name, current, new, sub, opts, &version, apply_done)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        current: Value,
        mut new: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
        version: &str,
        managed_fields_done: bool,
    ) -> ApiResult<Plan> {
        new["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        new["kind"] = json!(rt.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        let sub_name = sub.unwrap_or("");
        let mut client_mf: Option<Value> = None;
        match sub {
            Some("status") => {
                let status = new.get("status").cloned();
                let mf = new["metadata"]["managedFields"].clone();
                new = current.clone();
                match status {
                    Some(s) if !s.is_null() => new["status"] = s,
                    _ => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if managed_fields_done {
                    new["metadata"]["managedFields"] = mf;
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported subresource {other:?}"
                )))
            }
            None => {
                if rt.status_subresource {
                    match current.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
            }
        }
        {
            let md = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
                "namespace",
            ] {
                match current["metadata"].get(k) {
                    Some(v) => {
                        md.insert(k.into(), v.clone());
                    }
                    None => {
                        md.remove(k);
                    }
                }
            }
            if !managed_fields_done {
                // A client may rewrite managedFields explicitly (kubectl's client-side-apply
                // upgrade does); omitting them keeps the stored ones.
                match md.remove("managedFields") {
                    Some(mf) if Some(&mf) != current["metadata"].get("managedFields") => {
                        client_mf = Some(mf);
                    }
                    _ => {}
                }
            }
        }
        strategy::normalize(rt, &mut new, opts)?;
        strategy::check_finalizers(rt, name, &current, &new)?;
        strategy::check_immutable(rt, name, &current, &new)?;
        if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
            crd::resource_type(&new)?;
            if sub_name.is_empty() {
                new["status"] = crd::accepted_status(&new, &meta(&current, "creationTimestamp"));
                if current.get("status").is_some() && current["status"]["conditions"].is_array() {
                    new["status"]["conditions"] = current["status"]["conditions"].clone();
                }
            }
        }
        if rt.tracks_generation() && strategy::spec_part(&new) != strategy::spec_part(&current) {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        let now = now();
        if !managed_fields_done {
            let mut cur_for_diff = current.clone();
            if let Some(mf) = &client_mf {
                // `[{}]` (or an empty list) resets ownership.
                let entries: Vec<Value> = mf
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("manager").is_some())
                    .cloned()
                    .collect();
                cur_for_diff["metadata"]["managedFields"] = Value::Array(entries);
            }
            ssa::record_update(
                Some(&cur_for_diff),
                &mut new,
                &ssa::Writer {
                    manager: manager(opts),
                    subresource: sub_name,
                    api_version: &rt.api_version(version),
                    now: &now,
                },
            );
        }
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        let noop = strategy::same_content(&new, &current) && client_mf.is_none();
        let finalizers_empty = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        let deleting = !new["metadata"]["deletionTimestamp"].is_null();
        let remove = !noop && deleting && finalizers_empty && !rt.is("", "namespaces");
        Ok(Plan::Update {
            rt: rt.clone(),
            ns: ns.to_string(),
            name: name.to_string(),
            old: current,
            new,
            subresource: sub_name.to_string(),
            noop,
            remove,
        })
    }

    /// Prepare a delete: preconditions, propagation finalizers, immediate removal or marking.
    pub fn prepare_delete(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<Plan> {
        let current = self.get(rt, ns, name)?;
        if let Some(uid) = &opts.uid {
            let have = meta(&current, "uid");
            if *uid != have {
                return Err(ApiError::conflict(&rt.group, &rt.plural, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}")));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let have = meta(&current, "resourceVersion");
            if *rv != have {
                return Err(ApiError::conflict(&rt.group, &rt.plural, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}")));
            }
        }
        let plan = |new: Value, remove: bool, already: bool| Plan::Delete {
            rt: rt.clone(),
            ns: ns.to_string(),
            name: name.to_string(),
            old: current.clone(),
            new,
            remove,
            already,
        };
        if !current["metadata"]["deletionTimestamp"].is_null() {
            return Ok(plan(current.clone(), false, true));
        }
        let mut new = current.clone();
        let mut finalizers: Vec<Value> = new["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match opts.propagation.as_deref() {
            Some("Foreground") => {
                let f = json!("foregroundDeletion");
                if !finalizers.contains(&f) {
                    finalizers.push(f);
                }
            }
            Some("Orphan") => {
                let f = json!("orphan");
                if !finalizers.contains(&f) {
                    finalizers.push(f);
                }
            }
            Some("Background") | None => {}
            Some(other) => {
                return Err(ApiError::invalid("DeleteOptions", "meta.k8s.io", "", "propagationPolicy", &format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"")));
            }
        }
        let is_ns = rt.is("", "namespaces");
        if finalizers.is_empty() && !is_ns {
            return Ok(plan(new, true, false));
        }
        if !finalizers.is_empty() {
            new["metadata"]["finalizers"] = Value::Array(finalizers);
        }
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if rt.tracks_generation() {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        if is_ns {
            new["status"]["phase"] = json!("Terminating");
        }
        Ok(plan(new, false, false))
    }

    /// Store a prepared write if the object is as it was when the write was prepared.
    pub fn commit(&self, plan: Plan) -> Result<Written, CommitError> {
        let mut inner = self.lock();
        let out = match plan {
            Plan::Create {
                rt,
                ns,
                name,
                object,
            } => {
                check_namespace(&inner, &rt, &ns, &name)?;
                if inner.get_obj(&rt, &ns, &name).is_some() {
                    return Err(ApiError::already_exists(&rt.group, &rt.plural, &name).into());
                }
                if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
                    inner.registry.upsert(crd::resource_type(&object)?);
                }
                let object =
                    inner.commit(&self.tx, EventType::Added, &rt, &ns, &name, object, None);
                Written {
                    object,
                    created: true,
                    exists: true,
                }
            }
            Plan::Update {
                rt,
                ns,
                name,
                old,
                new,
                noop,
                remove,
                ..
            } => {
                let cur = inner.get_obj(&rt, &ns, &name).ok_or(CommitError::Stale)?;
                if cur["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                    return Err(CommitError::Stale);
                }
                if noop {
                    return Ok(Written {
                        object: cur.clone(),
                        created: false,
                        exists: true,
                    });
                }
                if rt.is("apiextensions.k8s.io", "customresourcedefinitions") && !remove {
                    inner.registry.upsert(crd::resource_type(&new)?);
                }
                if remove {
                    let object = self.remove(&mut inner, &rt, &ns, &name, new, old);
                    Written {
                        object,
                        created: false,
                        exists: false,
                    }
                } else {
                    let object = inner.commit(
                        &self.tx,
                        EventType::Modified,
                        &rt,
                        &ns,
                        &name,
                        new,
                        Some(old),
                    );
                    Written {
                        object,
                        created: false,
                        exists: true,
                    }
                }
            }
            Plan::Delete {
                rt,
                ns,
                name,
                old,
                new,
                remove,
                already,
            } => {
                let cur = inner.get_obj(&rt, &ns, &name).ok_or(CommitError::Stale)?;
                if cur["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                    return Err(CommitError::Stale);
                }
                if already {
                    return Ok(Written {
                        object: cur.clone(),
                        created: false,
                        exists: true,
                    });
                }
                if remove {
                    let object = self.remove(&mut inner, &rt, &ns, &name, new, old);
                    Written {
                        object,
                        created: false,
                        exists: false,
                    }
                } else {
                    let object = inner.commit(
                        &self.tx,
                        EventType::Modified,
                        &rt,
                        &ns,
                        &name,
                        new,
                        Some(old),
                    );
                    Written {
                        object,
                        created: false,
                        exists: true,
                    }
                }
            }
        };
        self.publish_rv(&inner);
        Ok(out)
    }

    /// Remove an object for good (cascading CRD instances).
    fn remove(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        last: Value,
        prev: Value,
    ) -> Value {
        let out = inner.commit(&self.tx, EventType::Deleted, rt, ns, name, last, Some(prev));
        if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
            if let Ok(t) = crd::resource_type(&out) {
                if let Some(served) = inner.registry.by_key(&t.group, &t.plural) {
                    let objs: Vec<(ObjKey, Value)> = inner
                        .objects_of(&served)
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default();
                    for ((n, nm), o) in objs {
                        inner.commit(
                            &self.tx,
                            EventType::Deleted,
                            &served,
                            &n,
                            &nm,
                            o.clone(),
                            Some(o),
                        );
                    }
                    inner.registry.remove(&t.group, &t.plural);
                }
            }
        }
        out
    }

    /// Create (no admission or validation stages: for internal writers).
    pub fn create(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        self.write(
            opts.dry_run,
            || self.prepare_create(rt, ns, body.clone(), opts),
            |_| Ok(()),
        )
        .map(|w| w.object)
    }

    /// Update (main resource or `status`), for internal writers.
    pub fn update(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        body: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        self.write(
            opts.dry_run,
            || self.prepare_update(rt, ns, name, body.clone(), sub, opts),
            |_| Ok(()),
        )
        .map(|w| w.object)
    }

    /// Patch, for internal writers; returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> ApiResult<(Value, bool)> {
        self.write(
            opts.dry_run,
            || self.prepare_patch(rt, ns, name, ptype, body, sub, opts),
            |_| Ok(()),
        )
        .map(|w| (w.object, w.created))
    }

    /// Delete, for internal writers; returns the object and whether it still exists.
    pub fn delete(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<(Value, bool)> {
        self.write(
            opts.dry_run,
            || self.prepare_delete(rt, ns, name, opts),
            |_| Ok(()),
        )
        .map(|w| (w.object, w.exists))
    }

    /// Remove an object without finalizer processing (namespace lifecycle end).
    pub fn purge(&self, rt: &ResourceType, ns: &str, name: &str) {
        let mut inner = self.lock();
        if let Some(cur) = inner.get_obj(rt, ns, name).cloned() {
            self.remove(&mut inner, rt, ns, name, cur.clone(), cur);
            self.publish_rv(&inner);
        }
    }

    /// Write an object as-is (used by the typed handle, the control API and fault mutators):
    /// creates it if absent, else replaces it unconditionally keeping server-set metadata.
    /// `status` is written through the status subresource where the type has one. `stages`
    /// runs on every prepared write, as in [`Store::write`].
    pub fn put_unconditional(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        mut obj: Value,
        manager: &str,
        mut stages: impl FnMut(&Plan) -> ApiResult<()>,
    ) -> ApiResult<Value> {
        let name = meta(&obj, "name");
        let opts = WriteOpts {
            manager: manager.to_string(),
            ..Default::default()
        };
        let status = obj.get("status").cloned();
        // Create or replace; a concurrent create (a controller's) between the two turns the
        // create into a replace.
        let mut attempt = 0;
        let written = loop {
            attempt += 1;
            let exists = self.lock().get_obj(rt, ns, &name).cloned();
            let result = match exists {
                None => self.write(
                    false,
                    || self.prepare_create(rt, ns, obj.clone(), &opts),
                    &mut stages,
                ),
                Some(cur) => {
                    obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                    self.write(
                        false,
                        || self.prepare_update(rt, ns, &name, obj.clone(), None, &opts),
                        &mut stages,
                    )
                }
            };
            match result {
                Err(e) if attempt < 8 && (e.reason == "AlreadyExists" || e.code == 409) => {}
                other => break other?,
            }
        };
        let status_write = match &status {
            Some(s) if written.created => {
                rt.resets_status_on_create() && written.object.get("status") != Some(s)
            }
            Some(s) => {
                rt.status_subresource && written.exists && written.object.get("status") != Some(s)
            }
            None => false,
        };
        if !status_write {
            return Ok(written.object);
        }
        let mut with = written.object;
        with["status"] = status.unwrap_or_default();
        self.write(
            false,
            || self.prepare_update(rt, ns, &name, with.clone(), Some("status"), &opts),
            &mut stages,
        )
        .map(|w| w.object)
    }
}

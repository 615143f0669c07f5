//! Azure clouds and token audiences: which Entra authority and which Resource Manager audience
//! a binding's environment means, and how an audience becomes an IMDS `resource` or an Entra
//! `scope`.

use super::error::{AzureError, ErrorKind};

/// The audience ACR accepts when a registry has authentication-as-ARM disabled.
pub const CONTAINER_REGISTRY_AUDIENCE: &str = "https://containerregistry.azure.net";

/// The IMDS resource the v1beta1 API used by default (overridable by `ARM_RESOURCE`).
pub const V1BETA1_DEFAULT_ARM_RESOURCE: &str = "https://management.azure.com/";

/// A binding's Azure environment (`spec.acr.environment` plus `cloudConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cloud {
    Public,
    USGovernment,
    China,
    Airgapped {
        entra_authority_host: String,
        resource_manager_audience: String,
    },
}

/// Which audience the identity token is requested for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdentityAudience {
    /// Azure Resource Manager (the default; ACR accepts it unless authentication-as-ARM is off).
    #[default]
    ResourceManager,
    /// ACR's own audience `https://containerregistry.azure.net`, for registries with
    /// authentication-as-ARM disabled.
    ContainerRegistry,
}

/// Operator overrides of the Entra authority host of the named clouds (air-gapped bindings
/// carry their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityHosts {
    pub public: Option<String>,
    pub us_government: Option<String>,
    pub china: Option<String>,
}

impl Cloud {
    /// The Resource Manager audience azcore uses for this cloud (note the trailing `/` only on
    /// Public, as in azcore's `arm/runtime`).
    pub fn resource_manager_audience(&self) -> &str {
        match self {
            Cloud::Public => "https://management.core.windows.net/",
            Cloud::USGovernment => "https://management.core.usgovcloudapi.net",
            Cloud::China => "https://management.core.chinacloudapi.cn",
            Cloud::Airgapped {
                resource_manager_audience,
                ..
            } => resource_manager_audience,
        }
    }

    /// The Entra authority host (`https://…`), before operator overrides.
    pub fn default_authority_host(&self) -> &str {
        match self {
            Cloud::Public => "https://login.microsoftonline.com/",
            Cloud::USGovernment => "https://login.microsoftonline.us/",
            Cloud::China => "https://login.chinacloudapi.cn/",
            Cloud::Airgapped {
                entra_authority_host,
                ..
            } => entra_authority_host,
        }
    }

    /// The authority host after overrides, normalised to `https://host[:port]` without a
    /// trailing slash. Plain http is refused: the ServiceAccount token travels in the body.
    pub fn authority(&self, overrides: &AuthorityHosts) -> Result<String, AzureError> {
        let configured = match self {
            Cloud::Public => overrides.public.as_deref(),
            Cloud::USGovernment => overrides.us_government.as_deref(),
            Cloud::China => overrides.china.as_deref(),
            Cloud::Airgapped { .. } => None,
        };
        normalize_authority(configured.unwrap_or_else(|| self.default_authority_host()))
    }
}

/// Accepts `host`, `https://host`, `https://host/` (and a port); refuses anything else.
pub(crate) fn normalize_authority(raw: &str) -> Result<String, AzureError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let invalid = |why: &str| {
        AzureError::new(
            ErrorKind::InvalidRequest,
            format!("Entra authority host {raw:?} is invalid: {why}"),
        )
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|_| invalid("not a URL"))?;
    if url.scheme() != "https" {
        return Err(invalid("must use https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.path().trim_matches('/').is_empty()
    {
        return Err(invalid("must be a bare host without path or query"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The IMDS `resource` for an audience (`/.default` trimmed, as MSAL does).
pub(crate) fn imds_resource(audience: &str) -> &str {
    audience.strip_suffix("/.default").unwrap_or(audience)
}

/// The Entra v2 `scope` for an audience: `<audience>/.default`. For the Public ARM audience this
/// yields the double slash `https://management.core.windows.net//.default`, as azidentity sends.
pub(crate) fn entra_scope(audience: &str) -> String {
    if audience.ends_with("/.default") {
        audience.to_string()
    } else {
        format!("{audience}/.default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_and_scopes_per_cloud() {
        let air = Cloud::Airgapped {
            entra_authority_host: "https://login.contoso.local/".into(),
            resource_manager_audience: "https://management.contoso.local/".into(),
        };
        let cases = [
            (
                Cloud::Public,
                "https://management.core.windows.net//.default",
                "https://login.microsoftonline.com",
            ),
            (
                Cloud::USGovernment,
                "https://management.core.usgovcloudapi.net/.default",
                "https://login.microsoftonline.us",
            ),
            (
                Cloud::China,
                "https://management.core.chinacloudapi.cn/.default",
                "https://login.chinacloudapi.cn",
            ),
            (
                air,
                "https://management.contoso.local//.default",
                "https://login.contoso.local",
            ),
        ];
        for (cloud, scope, authority) in cases {
            assert_eq!(entra_scope(cloud.resource_manager_audience()), scope);
            assert_eq!(
                cloud.authority(&AuthorityHosts::default()).ok().as_deref(),
                Some(authority)
            );
        }
        assert_eq!(
            imds_resource("https://management.azure.com/.default"),
            "https://management.azure.com"
        );
        assert_eq!(
            imds_resource(V1BETA1_DEFAULT_ARM_RESOURCE),
            V1BETA1_DEFAULT_ARM_RESOURCE
        );
    }

    #[test]
    fn authority_overrides_and_validation() {
        let overrides = AuthorityHosts {
            public: Some("login.example.test:8443".into()),
            ..Default::default()
        };
        assert_eq!(
            Cloud::Public.authority(&overrides).ok().as_deref(),
            Some("https://login.example.test:8443")
        );
        assert_eq!(
            Cloud::China.authority(&overrides).ok().as_deref(),
            Some("https://login.chinacloudapi.cn")
        );
        for bad in [
            "http://login.example.test",
            "https://login.example.test/tenant",
            "https://user:pw@login.example.test",
            "https://login.example.test/?x=1",
            "",
        ] {
            let cloud = Cloud::Airgapped {
                entra_authority_host: bad.into(),
                resource_manager_audience: "x".into(),
            };
            let err = cloud.authority(&AuthorityHosts::default()).expect_err(bad);
            assert_eq!(err.reason(), "InvalidRequest", "{bad}");
        }
    }
}

//! Command-line flags. The old controller's flag names are kept so its Deployment args work
//! unchanged; every flag can also come from an environment variable (`ACRPULL_<FLAG>`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::state::server::{AllowedSuffixes, DEFAULT_ALLOWED_SUFFIXES};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--identity-audience`: what identity tokens are requested for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Audience {
    /// The cloud's Resource Manager (registries with authentication-as-ARM, the default).
    ResourceManager,
    /// The ACR audience (registries with authentication-as-ARM disabled).
    ContainerRegistry,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "acrpull",
    version,
    about = "Keeps Azure Container Registry pull secrets fresh for AcrPullBindings, from Azure managed or workload identities."
)]
pub struct Cli {
    /// Address for /metrics (":8080" = every interface, so a PodMonitor can scrape the pod
    /// IP). /debug is on --debug-bind-address unless --metrics-secure.
    #[arg(long, env = "ACRPULL_METRICS_BIND_ADDRESS", default_value = ":8080", value_parser = parse_bind)]
    pub metrics_bind_address: SocketAddr,

    /// Address for /healthz and /readyz.
    #[arg(long, env = "ACRPULL_HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081", value_parser = parse_bind)]
    pub health_probe_bind_address: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease; only the leader writes.
    #[arg(long, env = "ACRPULL_LEADER_ELECT", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "ACRPULL_LEADER_ELECTION_ID",
        default_value = "aks.azure.com"
    )]
    pub leader_election_id: String,

    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else
    /// default).
    #[arg(long, env = "ACRPULL_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// How long a Lease is valid without renewal (e.g. 15s).
    #[arg(long, env = "ACRPULL_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// A leader that cannot renew within this long steps down.
    #[arg(long, env = "ACRPULL_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often to try to acquire or renew the Lease.
    #[arg(long, env = "ACRPULL_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// Audience of the ServiceAccount tokens exchanged at Entra for workload identity; must
    /// match the federated identity credential.
    #[arg(
        long,
        env = "ACRPULL_SERVICE_ACCOUNT_TOKEN_AUDIENCE",
        default_value = "api://AzureCRTokenExchange"
    )]
    pub service_account_token_audience: String,

    /// Fraction of a v1beta2 token's lifetime after which it is refreshed, in (0, 1).
    #[arg(long, env = "ACRPULL_TTL_ROTATION_FRACTION", default_value = "0.5", value_parser = parse_fraction)]
    pub ttl_rotation_fraction: f64,

    /// Only reconcile AcrPullBindings matching this label selector
    /// (e.g. "environment!=prod,tier in (frontend,backend)").
    #[arg(long, env = "ACRPULL_LABEL_SELECTOR", default_value = "", value_parser = parse_selector)]
    pub label_selector: String,

    /// Registry domain suffixes tokens may be sent to (comma-separated, repeatable).
    /// Default: azurecr.io, azurecr.us, azurecr.cn. An explicit empty value disables the check.
    #[arg(long, env = "ACRPULL_ALLOWED_ACR_SERVER_SUFFIXES", value_delimiter = ',', num_args = 0..)]
    pub allowed_acr_server_suffixes: Option<Vec<String>>,

    /// v1beta1 default registry.
    #[arg(
        long = "default-acr-server",
        env = "ACR_SERVER",
        default_value = "",
        hide_env_values = true
    )]
    pub acr_server: String,

    /// v1beta1 default managed identity client id.
    #[arg(
        long = "default-managed-identity-client-id",
        env = "MANAGED_IDENTITY_CLIENT_ID",
        default_value = ""
    )]
    pub managed_identity_client_id: String,

    /// v1beta1 default managed identity resource id.
    #[arg(
        long = "default-managed-identity-resource-id",
        env = "MANAGED_IDENTITY_RESOURCE_ID",
        default_value = ""
    )]
    pub managed_identity_resource_id: String,

    /// v1beta1 IMDS resource (default https://management.azure.com/).
    #[arg(long = "arm-resource", env = "ARM_RESOURCE")]
    pub arm_resource: Option<String>,

    /// Log format.
    #[arg(long, env = "ACRPULL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "acrpull=debug").
    #[arg(long, env = "ACRPULL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Kubernetes API calls of reconcile passes in flight at once. Passes waiting for Azure
    /// (rate limits, retries) hold none of these: up to 8 times as many passes run at once.
    #[arg(long, env = "ACRPULL_CONCURRENCY", default_value = "16", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Serve /debug/bindings on the metrics address.
    #[arg(long, env = "ACRPULL_DEBUG_ENDPOINT", num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub debug_endpoint: bool,

    /// IMDS base URL (scheme, host and port) for managed identity tokens.
    #[arg(
        long,
        env = "ACRPULL_IMDS_ENDPOINT",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: String,

    /// Entra authority host for PublicCloud (default https://login.microsoftonline.com/).
    #[arg(long, env = "ACRPULL_ENTRA_AUTHORITY_HOST_PUBLIC")]
    pub entra_authority_host_public: Option<String>,

    /// Entra authority host for USGovernmentCloud (default https://login.microsoftonline.us/).
    #[arg(long, env = "ACRPULL_ENTRA_AUTHORITY_HOST_US_GOVERNMENT")]
    pub entra_authority_host_us_government: Option<String>,

    /// Entra authority host for ChinaCloud (default https://login.chinacloudapi.cn/).
    #[arg(long, env = "ACRPULL_ENTRA_AUTHORITY_HOST_CHINA")]
    pub entra_authority_host_china: Option<String>,

    /// Resolve HOST to ADDRESS:PORT for Azure calls (repeatable, comma-separated), e.g.
    /// demo.azurecr.io=127.0.0.1:8443; TLS still verifies HOST. For split-horizon networks
    /// and local stand-ins.
    #[arg(long, env = "ACRPULL_AZURE_RESOLVE", value_delimiter = ',', value_parser = parse_resolve)]
    pub azure_resolve: Vec<(String, SocketAddr)>,

    /// Extra CA certificates (PEM) trusted for Azure endpoints, besides the bundled roots.
    #[arg(long, env = "ACRPULL_AZURE_CA_FILE")]
    pub azure_ca_file: Option<std::path::PathBuf>,

    /// Audience of identity tokens: Resource Manager (default) or the ACR audience, for
    /// registries with authentication-as-ARM disabled.
    #[arg(long, env = "ACRPULL_IDENTITY_AUDIENCE", value_enum, default_value_t = Audience::ResourceManager)]
    pub identity_audience: Audience,

    /// IMDS requests per second (shared by all bindings).
    #[arg(long, env = "ACRPULL_IMDS_RPS", default_value = "20", value_parser = clap::value_parser!(u32).range(1..))]
    pub imds_rps: u32,

    /// IMDS requests in flight at once.
    #[arg(long, env = "ACRPULL_IMDS_CONCURRENCY", default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub imds_concurrency: u32,

    /// Entra requests per second.
    #[arg(long, env = "ACRPULL_ENTRA_RPS", default_value = "20", value_parser = clap::value_parser!(u32).range(1..))]
    pub entra_rps: u32,

    /// Entra requests in flight at once.
    #[arg(long, env = "ACRPULL_ENTRA_CONCURRENCY", default_value = "10", value_parser = clap::value_parser!(u32).range(1..))]
    pub entra_concurrency: u32,

    /// ACR token requests per second, per registry.
    #[arg(long, env = "ACRPULL_ACR_RPS", default_value = "10", value_parser = clap::value_parser!(u32).range(1..))]
    pub acr_rps: u32,

    /// ACR token requests in flight at once, per registry.
    #[arg(long, env = "ACRPULL_ACR_CONCURRENCY", default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub acr_concurrency: u32,

    /// Timeout of each Kubernetes API call the controller makes.
    #[arg(long, env = "ACRPULL_KUBE_CALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kube_call_timeout: Duration,

    /// How often the installed AcrPullBinding CRDs are read again to see which status fields
    /// they keep (an old controller's CRDs drop most of them).
    #[arg(long, env = "ACRPULL_CRD_RECHECK_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub crd_recheck_interval: Duration,

    /// This replica's name (events, Lease holder identity); from the downward API. Unset:
    /// `<hostname>_<uuid>`, unique per process, as client-go's default.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// After minting, present the credential to the registry's token endpoint the way a pull
    /// client does and check every requested scope is granted (CredentialVerified condition).
    #[arg(long, env = "ACRPULL_VERIFY_CREDENTIALS", num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub verify_credentials: bool,

    /// Accept `host:port` registry servers (for tests against a local registry).
    #[arg(long, env = "ACRPULL_ALLOW_REGISTRY_PORTS", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub allow_registry_ports: bool,

    /// ACR scope actions bindings may ask for (comma-separated, repeatable). Default: pull
    /// and metadata_read. push, delete, metadata_write and * are refused unless listed here.
    #[arg(long, env = "ACRPULL_ALLOWED_SCOPE_ACTIONS", value_delimiter = ',', default_value = "pull,metadata_read", value_parser = parse_action)]
    pub allowed_scope_actions: Vec<String>,

    /// Entra authority hosts AirgappedCloud bindings may name in cloudConfig (comma-separated,
    /// repeatable, e.g. https://login.contoso.local). Default: none, so no air-gapped binding
    /// can make the controller send a ServiceAccount token to a host of its choosing.
    #[arg(long, env = "ACRPULL_ALLOWED_ENTRA_AUTHORITY_HOSTS", value_delimiter = ',', value_parser = parse_authority)]
    pub allowed_entra_authority_hosts: Vec<String>,

    /// Resource Manager audiences AirgappedCloud bindings may name in cloudConfig
    /// (comma-separated, repeatable). Default: none.
    #[arg(
        long,
        env = "ACRPULL_ALLOWED_RESOURCE_MANAGER_AUDIENCES",
        value_delimiter = ','
    )]
    pub allowed_resource_manager_audiences: Vec<String>,

    /// Whether AcrPullPolicy objects decide which namespaces may use which identities,
    /// registries and actions: off (the default: not read), audit (served, but flagged) or
    /// enforce (refused, and an existing credential revoked).
    #[arg(long, env = "ACRPULL_TENANCY_MODE", value_enum, default_value_t = TenancyModeArg::Off)]
    pub tenancy_mode: TenancyModeArg,

    /// Address for /debug/* when --debug-endpoint is on. Default loopback only: the debug
    /// output names every binding, identity and registry. In --metrics-secure mode, /debug is
    /// served on the metrics address instead (authenticated and authorized per caller).
    #[arg(long, env = "ACRPULL_DEBUG_BIND_ADDRESS", default_value = "127.0.0.1:8082", value_parser = parse_bind)]
    pub debug_bind_address: SocketAddr,

    /// Serve /metrics (and /debug) over HTTPS, only to callers whose bearer token passes a
    /// TokenReview and who are allowed `get` on the path by a SubjectAccessReview
    /// (controller-runtime's secure metrics serving).
    #[arg(long, env = "ACRPULL_METRICS_SECURE", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub metrics_secure: bool,

    /// Directory holding tls.crt and tls.key for --metrics-secure; without it a self-signed
    /// certificate is generated at start.
    #[arg(long, env = "ACRPULL_METRICS_CERT_DIR")]
    pub metrics_cert_dir: Option<std::path::PathBuf>,

    /// Upstream's controller-runtime flags (`--kubeconfig`, `--zap-*`); parse the command line
    /// with [`crate::upstream_flags::parse`], which also accepts Go's spellings.
    #[command(flatten)]
    pub upstream: crate::upstream_flags::UpstreamFlags,
}

/// `--tenancy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TenancyModeArg {
    /// AcrPullPolicy objects are not read (the old controller's behaviour).
    Off,
    /// Bindings outside every policy are served but flagged (condition, Event, metric).
    Audit,
    /// Bindings outside every policy fail with NotPermitted and lose their credential.
    Enforce,
}

impl TenancyModeArg {
    pub fn mode(self) -> crate::state::tenancy::Mode {
        use crate::state::tenancy::Mode;
        match self {
            TenancyModeArg::Off => Mode::Off,
            TenancyModeArg::Audit => Mode::Audit,
            TenancyModeArg::Enforce => Mode::Enforce,
        }
    }
}

impl Cli {
    /// The allowed suffixes: the default list unless the flag was given (an explicit empty
    /// value disables the check).
    pub fn allowed_suffixes(&self) -> AllowedSuffixes {
        match &self.allowed_acr_server_suffixes {
            None => AllowedSuffixes::new(DEFAULT_ALLOWED_SUFFIXES),
            Some(list) => AllowedSuffixes::new(list),
        }
    }
}

/// Go-style bind addresses: ":8080" means every interface.
fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("{s:?} is not an address like :8080, 0.0.0.0:8080 or [::]:8080"))
}

/// Go-style durations ("15s", "1m30s", "500ms", "2h"), read by jiff; never negative.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 15s, 500ms or 1m30s ({e})"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is not a duration like 15s: it is negative"))
}

fn parse_resolve(s: &str) -> Result<(String, SocketAddr), String> {
    let (host, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not HOST=ADDRESS:PORT"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {s:?} is not ADDRESS:PORT"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok((host.to_ascii_lowercase(), addr))
}

fn parse_action(s: &str) -> Result<String, String> {
    let a = s.trim().to_ascii_lowercase();
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'*')
    {
        Ok(a)
    } else {
        Err(format!(
            "{s:?} is not an ACR scope action like pull, push or metadata_read"
        ))
    }
}

fn parse_authority(s: &str) -> Result<String, String> {
    crate::state::tenancy::normalize_authority(s)
        .map_err(|why| format!("Entra authority host {s:?} {why}"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if f > 0.0 && f < 1.0 {
        Ok(f)
    } else {
        Err(format!("{s} must be strictly between 0 and 1"))
    }
}

fn parse_selector(s: &str) -> Result<String, String> {
    crate::state::selector::Selector::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_old_controller() {
        let cli = Cli::try_parse_from(["acrpull"]).unwrap();
        assert_eq!(cli.metrics_bind_address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            cli.health_probe_bind_address,
            "0.0.0.0:8081".parse().unwrap()
        );
        assert!(!cli.leader_elect);
        assert_eq!(cli.leader_election_id, "aks.azure.com");
        assert_eq!(
            cli.service_account_token_audience,
            "api://AzureCRTokenExchange"
        );
        assert_eq!(cli.ttl_rotation_fraction, 0.5);
        assert_eq!(cli.allowed_suffixes(), AllowedSuffixes::defaults());
        assert_eq!(cli.lease_duration, Duration::from_secs(15));
        assert_eq!(cli.log_format, LogFormat::Text);
        assert_eq!(cli.identity_audience, Audience::ResourceManager);
        // SPEC §12: a swap changes nothing but refusing non-pull actions; debug on loopback.
        assert_eq!(cli.tenancy_mode, TenancyModeArg::Off);
        assert_eq!(cli.allowed_scope_actions, ["pull", "metadata_read"]);
        assert!(cli.allowed_entra_authority_hosts.is_empty());
        assert!(cli.allowed_resource_manager_audiences.is_empty());
        assert_eq!(cli.debug_bind_address, "127.0.0.1:8082".parse().unwrap());
        assert!(cli.debug_endpoint);
        assert!(!cli.metrics_secure);
    }

    #[test]
    fn tenancy_flags_parse() {
        let cli = Cli::try_parse_from([
            "acrpull",
            "--tenancy-mode=enforce",
            "--allowed-scope-actions=pull,push",
            "--allowed-scope-actions",
            "delete",
            "--allowed-entra-authority-hosts=https://Login.Contoso.Local/,login.fabrikam.local",
            "--allowed-resource-manager-audiences=https://management.contoso.local/",
            "--debug-bind-address=127.0.0.1:9999",
            "--metrics-secure",
        ])
        .unwrap();
        assert_eq!(cli.tenancy_mode, TenancyModeArg::Enforce);
        assert_eq!(cli.allowed_scope_actions, ["pull", "push", "delete"]);
        assert_eq!(
            cli.allowed_entra_authority_hosts,
            [
                "https://login.contoso.local",
                "https://login.fabrikam.local"
            ]
        );
        assert!(cli.metrics_secure);
        for bad in [
            "--allowed-entra-authority-hosts=http://login.contoso.local",
            "--allowed-entra-authority-hosts=https://login.contoso.local/path",
            "--allowed-scope-actions=pu ll",
            "--tenancy-mode=strict",
        ] {
            assert!(Cli::try_parse_from(["acrpull", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_old_deployment_args_still_parse() {
        // deploy/deployment.yaml of the old controller, and every spelling documented here.
        let cli = Cli::try_parse_from([
            "acrpull",
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8081",
            "--leader-elect",
            "--service-account-token-audience=api://AzureCRTokenExchange",
            "--ttl-rotation-fraction=0.5",
            "--log-format=json",
            "--identity-audience=container-registry",
            "--lease-duration=1m30s",
            "--renew-deadline=10s",
            "--retry-period=500ms",
            "--kube-call-timeout=1.5s",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.identity_audience, Audience::ContainerRegistry);
        assert_eq!(cli.lease_duration, Duration::from_secs(90));
        assert_eq!(cli.retry_period, Duration::from_millis(500));
        assert_eq!(cli.kube_call_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn go_style_flags_parse() {
        let cli = Cli::try_parse_from([
            "acrpull",
            "--leader-elect=true",
            "--metrics-bind-address=127.0.0.1:9090",
            "--allowed-acr-server-suffixes=a.io,b.io",
            "--allowed-acr-server-suffixes",
            "c.io",
            "--label-selector=tier in (a,b),env!=prod",
        ])
        .unwrap();
        assert!(cli.leader_elect);
        assert_eq!(cli.allowed_suffixes().as_slice(), ["a.io", "b.io", "c.io"]);
        let cli = Cli::try_parse_from(["acrpull", "--leader-elect"]).unwrap();
        assert!(cli.leader_elect);
        let cli = Cli::try_parse_from(["acrpull", "--allowed-acr-server-suffixes="]).unwrap();
        assert!(cli.allowed_suffixes().is_disabled());
    }

    #[test]
    fn bad_flags_fail_fast_with_a_clear_message() {
        for (args, msg) in [
            (
                vec!["--ttl-rotation-fraction=1"],
                "strictly between 0 and 1",
            ),
            (
                vec!["--ttl-rotation-fraction=0"],
                "strictly between 0 and 1",
            ),
            (vec!["--ttl-rotation-fraction=x"], "not a number"),
            (vec!["--metrics-bind-address=localhost"], "not an address"),
            (vec!["--label-selector=a in (b"], "selector"),
            (vec!["--lease-duration=fast"], "not a duration"),
            (vec!["--log-format=xml"], "xml"),
        ] {
            let mut argv = vec!["acrpull"];
            argv.extend(args.iter().copied());
            let err = Cli::try_parse_from(&argv).unwrap_err().to_string();
            assert!(err.contains(msg), "{args:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("15s", Duration::from_secs(15)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_duration(s).unwrap(), want, "{s}");
        }
        for s in ["", "s", "15", "15x", "-1s"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }
}

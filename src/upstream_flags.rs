//! Upstream msi-acrpull's command line, accepted as it is written in existing Deployments.
//!
//! Upstream parses its flags with Go's `flag` package, and controller-runtime v0.17 adds its own
//! to the same flag set: `--kubeconfig` (`pkg/client/config`) and the five `--zap-*` flags of
//! `zap.Options.BindFlags` (upstream's `cmd/main.go` binds them). Nothing else upstream links
//! registers a flag (checked: controller-runtime v0.17.5's `pkg/`, azure-workload-identity
//! v1.3.0's `pkg/webhook`; klog's flags exist only after `klog.InitFlags`, which nobody calls).
//! Two things differ from clap:
//!
//! - **Spellings.** Go accepts `-flag`, `--flag`, `-flag=value` and `-flag value` alike; clap
//!   only the double-dash forms. [`normalise`] rewrites the command line before clap sees it
//!   (see its doc for the exact rules) and spells Go's boolean values (`1`, `t`, `TRUE`, …) as
//!   clap's `true`/`false`.
//! - **Logging.** The zap flags are mapped onto acrpull's `--log-format`/`--log-level`
//!   ([`resolve_logging`]): `--zap-encoder` is the format (`console` = `text`),
//!   `--zap-log-level` the level (`debug`, `info`, `error`, or a logr verbosity `N > 0`: 1 is
//!   `debug`, more is `trace`), `--zap-devel` supplies `text` + `debug` (and `--zap-devel=false`
//!   `json` + `info`) where neither kind of flag nor `ACRPULL_LOG_FORMAT`/`ACRPULL_LOG_LEVEL`
//!   says otherwise. When acrpull's flag and the zap flag are both on the command line, **the
//!   later one wins** (as with any Go flag given twice, and so that flags appended after a
//!   chart's own, e.g. Helm `extraArgs`, take effect); any command-line flag beats the
//!   environment. `--zap-stacktrace-level` and `--zap-time-encoding` are validated as upstream
//!   validates them and have no effect: acrpull's logs carry no stack traces and always use
//!   RFC 3339 timestamps. Both are reported once at start-up ([`Compat::notes`]).
//!
//! These flags have no `ACRPULL_*` environment form: they exist for command lines written for
//! upstream; the environment forms are `ACRPULL_LOG_FORMAT`, `ACRPULL_LOG_LEVEL` and `KUBECONFIG`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, ValueEnum};

use crate::config::{Cli, LogFormat};

/// controller-runtime's flags (upstream registers them through it).
#[derive(Args, Debug, Clone, Default, PartialEq)]
#[command(next_help_heading = "Flags of upstream msi-acrpull (controller-runtime)")]
pub struct UpstreamFlags {
    /// Path to a kubeconfig. Precedence as in controller-runtime: this flag, then KUBECONFIG,
    /// then the in-cluster ServiceAccount, then ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Development mode: text logs at debug level (false: JSON at info), where no other flag
    /// or ACRPULL_LOG_FORMAT/ACRPULL_LOG_LEVEL sets them.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub zap_devel: Option<bool>,

    /// Log encoding: json or console (= --log-format=text). The later of this and
    /// --log-format on the command line wins.
    #[arg(long, value_enum, ignore_case = true, value_name = "ENCODER")]
    pub zap_encoder: Option<ZapEncoder>,

    /// Log level: debug, info, error, or a verbosity N > 0 (1 = debug, more = trace). The
    /// later of this and --log-level on the command line wins.
    #[arg(long, value_parser = parse_zap_level, value_name = "LEVEL")]
    pub zap_log_level: Option<String>,

    /// Accepted for compatibility (info, error or panic); acrpull's logs carry no stack
    /// traces.
    #[arg(long, value_parser = parse_stacktrace_level, value_name = "LEVEL")]
    pub zap_stacktrace_level: Option<String>,

    /// Accepted for compatibility (epoch, millis, nanos, iso8601, rfc3339, rfc3339nano);
    /// acrpull's timestamps are always RFC 3339.
    #[arg(long, value_parser = parse_time_encoding, value_name = "ENCODING")]
    pub zap_time_encoding: Option<String>,
}

/// `--zap-encoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ZapEncoder {
    Json,
    Console,
}

/// `--zap-log-level` as a tracing level: zap's names, or a logr verbosity (`V(1)` is zap's
/// debug; higher verbosities are finer than debug).
fn parse_zap_level(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        "debug" => return Ok("debug".into()),
        "info" => return Ok("info".into()),
        "error" => return Ok("error".into()),
        _ => {}
    }
    match s.parse::<i64>() {
        Ok(1) => Ok("debug".into()),
        Ok(n) if n > 1 => Ok("trace".into()),
        _ => Err(format!(
            "invalid log level {s:?}: one of debug, info, error, or an integer > 0"
        )),
    }
}

fn one_of(s: &str, what: &str, allowed: &[&str]) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if allowed.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!(
            "invalid {what} {s:?}: one of {}",
            allowed.join(", ")
        ))
    }
}

fn parse_stacktrace_level(s: &str) -> Result<String, String> {
    one_of(s, "stacktrace level", &["info", "error", "panic"])
}

fn parse_time_encoding(s: &str) -> Result<String, String> {
    // Exactly what controller-runtime v0.17 accepts (its help says "nano"; its parser wants
    // "nanos").
    one_of(
        s,
        "time-encoding value",
        &[
            "epoch",
            "millis",
            "nanos",
            "iso8601",
            "rfc3339",
            "rfc3339nano",
        ],
    )
}

/// Go's `strconv.ParseBool` spellings, as clap's.
fn go_bool(s: &str) -> Option<&'static str> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some("true"),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some("false"),
        _ => None,
    }
}

/// How a long flag of `cmd` takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A Go-style boolean: bare, or `=value`; never the next argument.
    Bool,
    /// Takes a value: `=value` or the next argument.
    Value,
    /// Takes no value (`--help`, `--version`).
    Switch,
}

fn kind_of(cmd: &Command, name: &str) -> Option<Kind> {
    let arg = cmd.get_arguments().find(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|v| v.contains(&name))
    })?;
    // acrpull's booleans take an optional value (`num_args = 0..=1`, a bare flag is `true`).
    let optional_value = arg
        .get_num_args()
        .is_some_and(|n| n.min_values() == 0 && n.max_values() == 1);
    Some(if optional_value {
        Kind::Bool
    } else if arg.get_action().takes_values() {
        Kind::Value
    } else {
        Kind::Switch
    })
}

/// Rewrites a Go-style command line into one clap parses the same way. `argv[0]` is kept.
///
/// - `-name`, `-name=value` become `--name`, `--name=value` when `name` has more than one
///   character (Go has no short flags; a one-character `-x`, such as clap's `-h`/`-V`, stays
///   as it is). An unknown name is rewritten too, so clap reports it (as `--name`) and exits.
/// - The argument after a flag that takes a value and was given without `=` is that flag's
///   value, even when it starts with `-`, as in Go: the two become `--name=value` (so
///   `-ttl-rotation-fraction -1` reaches the fraction check instead of clap reading `-1` as a
///   flag). At the very end of the command line such a flag stays as it is (clap then says the
///   value is missing).
/// - Boolean flags never take the next argument as their value (Go's rule); their `=value` is
///   one of Go's spellings (`1`, `t`, `TRUE`, …), passed on as `true`/`false`.
/// - `--` ends the flags: it and everything after it pass unchanged (clap then rejects them,
///   since acrpull takes no positional arguments, as upstream ignored them). So does `-`
///   alone, and any argument not starting with `-`.
/// - Arguments that are not UTF-8 pass unchanged.
pub fn normalise<I, T>(cmd: &Command, args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut cmd = cmd.clone();
    cmd.build();
    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    // A flag that takes a value and was given without `=`: its value is the next argument.
    let mut pending: Option<String> = None;
    let mut flags_ended = false;
    for arg in args {
        if let Some(name) = pending.take() {
            let mut joined = OsString::from(format!("--{name}="));
            joined.push(&arg);
            out.push(joined);
            continue;
        }
        if flags_ended {
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            flags_ended = true;
            out.push(arg);
            continue;
        }
        let body = match text.strip_prefix("--") {
            Some(body) => body,
            None => match text.strip_prefix('-') {
                Some(body) if body.chars().count() > 1 && !body.starts_with('=') => body,
                _ => {
                    // `-`, a one-letter short flag, or not a flag at all.
                    out.push(arg);
                    continue;
                }
            },
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        match (kind_of(&cmd, name), value) {
            (Some(Kind::Bool), Some(v)) => {
                out.push(format!("--{name}={}", go_bool(v).unwrap_or(v)).into());
            }
            (Some(Kind::Value), None) => pending = Some(name.to_string()),
            _ => out.push(format!("--{body}").into()),
        }
    }
    if let Some(name) = pending {
        out.push(format!("--{name}").into());
    }
    out
}

/// What the zap flags changed, to be logged once logging is set up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compat {
    pub notes: Vec<String>,
}

/// Where a setting came from.
fn from_command_line(matches: &ArgMatches, id: &str) -> Option<usize> {
    (matches.value_source(id) == Some(ValueSource::CommandLine))
        .then(|| matches.index_of(id))
        .flatten()
}

fn from_env(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::EnvVariable)
}

/// The effective log format and level (see the module doc for the rules), given acrpull's own
/// values and the zap flags as parsed into `matches`.
pub fn resolve_logging(
    matches: &ArgMatches,
    format: LogFormat,
    level: &str,
    upstream: &UpstreamFlags,
) -> (LogFormat, String, Compat) {
    let mut compat = Compat::default();
    let devel = upstream.zap_devel;

    let zap_format = upstream.zap_encoder.map(|e| match e {
        ZapEncoder::Json => LogFormat::Json,
        ZapEncoder::Console => LogFormat::Text,
    });
    let format = match (
        from_command_line(matches, "log_format"),
        from_command_line(matches, "zap_encoder").zip(zap_format),
    ) {
        (Some(own), Some((zap, f))) if zap > own => f,
        (Some(_), _) => format,
        (None, Some((_, f))) => f,
        (None, None) if from_env(matches, "log_format") => format,
        (None, None) => match devel {
            Some(true) => LogFormat::Text,
            Some(false) => LogFormat::Json,
            None => format,
        },
    };

    let zap_level = upstream.zap_log_level.clone();
    let level = match (
        from_command_line(matches, "log_level"),
        from_command_line(matches, "zap_log_level").zip(zap_level),
    ) {
        (Some(own), Some((zap, l))) if zap > own => l,
        (Some(_), _) => level.to_string(),
        (None, Some((_, l))) => l,
        (None, None) if from_env(matches, "log_level") => level.to_string(),
        (None, None) => match devel {
            Some(true) => "debug".to_string(),
            Some(false) => "info".to_string(),
            None => level.to_string(),
        },
    };

    if let Some(l) = &upstream.zap_stacktrace_level {
        compat.notes.push(format!(
            "--zap-stacktrace-level={l} has no effect: acrpull's logs carry no stack traces"
        ));
    }
    if let Some(t) = &upstream.zap_time_encoding {
        compat.notes.push(format!(
            "--zap-time-encoding={t} has no effect: timestamps are RFC 3339"
        ));
    }
    (format, level, compat)
}

/// Parses a command line as upstream's was parsed: Go spellings normalised ([`normalise`]),
/// then clap, then the zap flags folded into `log_format`/`log_level` ([`resolve_logging`]).
/// A flag given twice takes its last value, as in Go (repeatable lists append).
pub fn parse<I, T>(args: I) -> Result<(Cli, Compat), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cmd = Cli::command().args_override_self(true);
    let argv = normalise(&cmd, args);
    let matches = cmd.try_get_matches_from(argv)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let (format, level, compat) =
        resolve_logging(&matches, cli.log_format, &cli.log_level, &cli.upstream);
    cli.log_format = format;
    cli.log_level = level;
    Ok((cli, compat))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> Command {
        Cli::command()
    }

    fn parsed(args: &[&str]) -> Cli {
        let mut argv = vec!["acrpull"];
        argv.extend_from_slice(args);
        parse(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")).0
    }

    fn refused(args: &[&str]) -> String {
        let mut argv = vec!["acrpull"];
        argv.extend_from_slice(args);
        match parse(argv) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(e) => e.to_string(),
        }
    }

    fn norm(args: &[&str]) -> Vec<String> {
        let mut argv = vec!["acrpull"];
        argv.extend_from_slice(args);
        normalise(&cmd(), argv)
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_spellings_become_clap_spellings() {
        assert_eq!(
            norm(&[
                "-leader-elect",
                "-metrics-bind-address=:8080",
                "-zap-log-level",
                "debug",
                "--health-probe-bind-address",
                ":8081",
                "-kubeconfig",
                "/tmp/kc",
            ]),
            [
                "--leader-elect",
                "--metrics-bind-address=:8080",
                "--zap-log-level=debug",
                "--health-probe-bind-address=:8081",
                "--kubeconfig=/tmp/kc",
            ]
        );
    }

    #[test]
    fn values_are_never_rewritten() {
        // A value that starts with a dash belongs to the flag before it.
        assert_eq!(
            norm(&["-ttl-rotation-fraction", "-0.5", "-label-selector", "-x"]),
            ["--ttl-rotation-fraction=-0.5", "--label-selector=-x"]
        );
        // A value flag at the very end keeps its spelling; clap says the value is missing.
        assert_eq!(norm(&["-kubeconfig"]), ["--kubeconfig"]);
        assert_eq!(
            norm(&["-label-selector=a=b,c!=d"]),
            ["--label-selector=a=b,c!=d"]
        );
    }

    #[test]
    fn booleans_take_go_spellings_and_never_the_next_argument() {
        assert_eq!(
            norm(&["-leader-elect=T", "-zap-devel=0", "-leader-elect=TRUE"]),
            [
                "--leader-elect=true",
                "--zap-devel=false",
                "--leader-elect=true"
            ]
        );
        // The argument after a bare boolean is a new flag, not its value.
        assert_eq!(
            norm(&["-leader-elect", "-zap-devel"]),
            ["--leader-elect", "--zap-devel"]
        );
        // Not a Go boolean: passed on for clap to refuse.
        assert_eq!(norm(&["-leader-elect=yes"]), ["--leader-elect=yes"]);
    }

    #[test]
    fn short_flags_dash_and_double_dash_are_kept() {
        assert_eq!(norm(&["-h"]), ["-h"]);
        assert_eq!(norm(&["-V"]), ["-V"]);
        assert_eq!(norm(&["-"]), ["-"]);
        assert_eq!(norm(&["-help"]), ["--help"]);
        assert_eq!(
            norm(&["-leader-elect", "--", "-metrics-bind-address=:1"]),
            ["--leader-elect", "--", "-metrics-bind-address=:1"]
        );
        assert_eq!(norm(&["positional"]), ["positional"]);
        assert_eq!(norm(&["-=x"]), ["-=x"]);
    }

    #[test]
    fn unknown_flags_are_rewritten_for_clap_to_refuse() {
        assert_eq!(norm(&["-no-such-flag=1"]), ["--no-such-flag=1"]);
        assert_eq!(norm(&["-no-such-flag", "x"]), ["--no-such-flag", "x"]);
        assert_eq!(norm(&["--", "-no-such-flag"]), ["--", "-no-such-flag"]);
    }

    #[test]
    fn non_utf8_passes_unchanged() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![b'-', b'x', 0xff]);
        let out = normalise(&cmd(), [OsString::from("acrpull"), odd.clone()]);
        assert_eq!(out[1], odd);
    }

    #[test]
    fn zap_levels() {
        for (input, want) in [
            ("debug", "debug"),
            ("INFO", "info"),
            ("error", "error"),
            ("1", "debug"),
            ("2", "trace"),
            ("10", "trace"),
        ] {
            assert_eq!(parse_zap_level(input).unwrap(), want, "{input}");
        }
        for bad in ["0", "-1", "warn", "", "x"] {
            assert!(parse_zap_level(bad).is_err(), "{bad}");
        }
        assert!(parse_time_encoding("nano").is_err());
        assert_eq!(parse_time_encoding("RFC3339Nano").unwrap(), "rfc3339nano");
        assert!(parse_stacktrace_level("warn").is_err());
    }

    #[test]
    fn upstream_deployment_args_parse() {
        // Upstream's chart (config/helm/templates/deployment.yaml) and kubebuilder's default
        // manager args, in Go's single-dash spellings too.
        let cli = parsed(&[
            "--health-probe-bind-address=:8081",
            "--metrics-bind-address=127.0.0.1:8080",
            "--leader-elect",
            "--ttl-rotation-fraction=0.5",
            "--allowed-acr-server-suffixes=azurecr.io",
        ]);
        assert!(cli.leader_elect);
        assert_eq!(cli.allowed_suffixes().as_slice(), ["azurecr.io"]);
        let cli = parsed(&[
            "-health-probe-bind-address=:8081",
            "-metrics-bind-address",
            ":9090",
            "-leader-elect=1",
            "-service-account-token-audience",
            "api://x",
            "-label-selector=tier in (a,b)",
            "-allowed-acr-server-suffixes",
            "a.io,b.io",
            "-allowed-acr-server-suffixes=c.io",
            "-kubeconfig=/etc/kc",
            "-zap-log-level",
            "debug",
            "-zap-devel=false",
            "-zap-encoder=console",
            "-zap-stacktrace-level=error",
            "-zap-time-encoding=rfc3339nano",
        ]);
        assert!(cli.leader_elect);
        assert_eq!(cli.metrics_bind_address, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(cli.service_account_token_audience, "api://x");
        assert_eq!(cli.label_selector, "tier in (a,b)");
        assert_eq!(cli.allowed_suffixes().as_slice(), ["a.io", "b.io", "c.io"]);
        assert_eq!(cli.upstream.kubeconfig, Some(PathBuf::from("/etc/kc")));
        assert_eq!(cli.log_level, "debug");
        assert_eq!(cli.log_format, LogFormat::Text);
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let cli = parsed(&["--ttl-rotation-fraction=0.5", "-ttl-rotation-fraction=0.7"]);
        assert_eq!(cli.ttl_rotation_fraction, 0.7);
        let cli = parsed(&["--leader-elect", "--leader-elect=false"]);
        assert!(!cli.leader_elect);
    }

    #[test]
    fn zap_flags_map_onto_logging_and_the_later_flag_wins() {
        let cli = parsed(&[]);
        assert_eq!(
            (cli.log_format, cli.log_level.as_str()),
            (LogFormat::Text, "info")
        );
        // zap-devel supplies defaults only.
        let cli = parsed(&["--zap-devel"]);
        assert_eq!(
            (cli.log_format, cli.log_level.as_str()),
            (LogFormat::Text, "debug")
        );
        let cli = parsed(&["-zap-devel=false"]);
        assert_eq!(
            (cli.log_format, cli.log_level.as_str()),
            (LogFormat::Json, "info")
        );
        let cli = parsed(&["--zap-devel", "--log-level=warn", "--zap-encoder=json"]);
        assert_eq!(
            (cli.log_format, cli.log_level.as_str()),
            (LogFormat::Json, "warn")
        );
        // Both kinds given: the later one on the command line wins, either way round.
        let cli = parsed(&[
            "--log-format=json",
            "--log-level=info",
            "--zap-encoder=console",
            "--zap-log-level=2",
        ]);
        assert_eq!(
            (cli.log_format, cli.log_level.as_str()),
            (LogFormat::Text, "trace")
        );
        let cli = parsed(&[
            "--zap-encoder=console",
            "--zap-log-level=error",
            "--log-format=json",
            "--log-level=info,acrpull=debug",
        ]);
        assert_eq!(
            (cli.log_format, cli.log_level.as_str()),
            (LogFormat::Json, "info,acrpull=debug")
        );
    }

    #[test]
    fn compatibility_notes_name_the_flags_without_effect() {
        let mut argv = vec![
            "acrpull",
            "-zap-stacktrace-level=panic",
            "-zap-time-encoding=epoch",
        ];
        let (_, compat) = parse(argv.drain(..)).unwrap();
        assert_eq!(compat.notes.len(), 2, "{:?}", compat.notes);
        assert!(compat.notes[0].contains("--zap-stacktrace-level=panic"));
        assert!(compat.notes[1].contains("--zap-time-encoding=epoch"));
    }

    #[test]
    fn unknown_and_invalid_flags_fail_with_a_clear_message() {
        for (args, want) in [
            (
                vec!["-no-such-flag"],
                "unexpected argument '--no-such-flag'",
            ),
            (
                vec!["--no-such-flag=1"],
                "unexpected argument '--no-such-flag'",
            ),
            (vec!["-zap-log-level=warn"], "invalid log level \"warn\""),
            (vec!["-zap-encoder=xml"], "xml"),
            (
                vec!["-zap-time-encoding=nano"],
                "invalid time-encoding value",
            ),
            (
                vec!["-zap-stacktrace-level=debug"],
                "invalid stacktrace level",
            ),
            (vec!["-leader-elect=yes"], "yes"),
            (
                vec!["-ttl-rotation-fraction", "-0.5"],
                "strictly between 0 and 1",
            ),
            (vec!["positional"], "unexpected argument 'positional'"),
            (vec!["-"], "unexpected argument '-'"),
            (
                vec!["-kubeconfig"],
                "a value is required for '--kubeconfig <PATH>'",
            ),
            (
                vec!["--", "-leader-elect"],
                "unexpected argument '-leader-elect'",
            ),
        ] {
            let err = refused(&args);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}

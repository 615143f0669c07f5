//! The real `acrpull` binary as a child process: finding it, its command line against the
//! stand-ins, where its output goes, readiness, and a graceful stop (SIGTERM, then wait).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Errors running the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(
        "the acrpull binary was not found at {0}; build it first \
         (`cargo build --release -p acrpull --bin acrpull`, or run scripts/sandbox.sh which does), \
         or name it with --acrpull-bin / ACRPULL_BIN"
    )]
    NotFound(PathBuf),
    #[error("starting {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating the controller log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the controller's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum Output {
    /// Both into this file.
    File(PathBuf),
    /// Both to the sandbox's stdout, each line prefixed.
    Interleaved,
}

/// The default binary: `acrpull` next to the sandbox's own executable (both are built into
/// the same `target/<profile>/`).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("acrpull")))
        .unwrap_or_else(|| PathBuf::from("acrpull"))
}

/// A shell-safe rendering of a command line, for the user to copy.
pub fn shell_line(env: &[(String, String)], bin: &Path, args: &[String]) -> String {
    fn quote(s: &str) -> String {
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
        if plain {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    }
    let mut parts: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    parts.push(quote(&bin.display().to_string()));
    parts.extend(args.iter().map(|a| quote(a)));
    parts.join(" ")
}

/// A running controller.
pub struct Controller {
    child: Child,
}

impl Controller {
    pub fn spawn(
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        output: &Output,
    ) -> Result<Controller, ControllerError> {
        if !bin.is_file() {
            return Err(ControllerError::NotFound(bin.to_path_buf()));
        }
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // A default registry or identity from the user's shell would change what the
            // examples do.
            .env_remove("ACR_SERVER")
            .env_remove("MANAGED_IDENTITY_CLIENT_ID")
            .stdin(Stdio::null())
            // If the sandbox dies without its shutdown path, the controller must not outlive it.
            .kill_on_drop(true);
        // And if the sandbox is killed outright (SIGKILL), the kernel stops the controller.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match output {
            Output::File(path) => {
                let log = |e| ControllerError::Log {
                    path: path.clone(),
                    source: e,
                };
                let file = std::fs::File::create(path).map_err(log)?;
                let copy = file.try_clone().map_err(log)?;
                cmd.stdout(copy).stderr(file);
            }
            Output::Interleaved => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = cmd.spawn().map_err(|e| ControllerError::Spawn {
            path: bin.to_path_buf(),
            source: e,
        })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(err));
        }
        Ok(Controller { child })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then wait up to `grace` for a clean exit before killing it.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped (try_wait above saw
            // it running), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!("acrpull did not exit {grace:?} after SIGTERM; killing it");
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

async fn forward(stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("acrpull | {line}");
    }
}

/// One plain HTTP/1.0 GET to 127.0.0.1; the status code, or None when nothing answers.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_line_quotes_only_what_needs_it() {
        let line = shell_line(
            &[("KUBECONFIG".into(), "/tmp/a b/kubeconfig".into())],
            Path::new("/x/acrpull"),
            &["--log-level=info".into(), "it's".into()],
        );
        assert_eq!(
            line,
            r"KUBECONFIG='/tmp/a b/kubeconfig' /x/acrpull --log-level=info 'it'\''s'"
        );
    }
}

//! A private containerd for one test: its own root, state and socket under the test's
//! directory, the native snapshotter (no overlay mounts needed), no CRI plugin. Needs root and
//! the `containerd` component (`tests/prereq`). Dropping it kills and deletes every container
//! it ran, then containerd itself: the runc shims would otherwise outlive it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::prereq;

pub struct Containerd {
    pub ctr: PathBuf,
    /// `--address=<socket>`, the first argument of every `ctr` call.
    pub address: String,
    pub base: PathBuf,
    child: std::process::Child,
}

/// A finished `ctr` call.
pub struct CtrOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Containerd {
    /// Starts containerd under `base` and waits until `ctr version` answers.
    pub fn start(base: &Path) -> Containerd {
        let containerd = prereq::containerd();
        let ctr = prereq::ctr();
        prereq::require_root("containerd");
        let sock = base.join("containerd.sock");
        std::fs::create_dir_all(base).unwrap();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = base.join("root").display(),
            state = base.join("state").display(),
            sock = sock.display(),
        );
        std::fs::write(base.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(base.join("containerd.log")).unwrap();
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(base.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let c = Containerd {
            ctr,
            address: format!("--address={}", sock.display()),
            base: base.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.run(&["version"]).ok {
            assert!(
                Instant::now() < deadline,
                "containerd never answered: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address=… args…`, to completion.
    pub fn run(&self, args: &[&str]) -> CtrOutput {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr runs");
        CtrOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A `ctr --address=… args…` command, for the caller to run or spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg(&self.address).args(args);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.run(&["tasks", "ls", "-q"]).stdout;
        for task in tasks.lines().filter(|t| !t.trim().is_empty()) {
            let _ = self.run(&["tasks", "kill", "--signal", "SIGKILL", task]);
        }
        let containers = self.run(&["containers", "ls", "-q"]).stdout;
        for container in containers.lines().filter(|c| !c.trim().is_empty()) {
            // `tasks delete` waits for the killed task to be reaped; then the container goes.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.run(&["tasks", "delete", container]).ok
                && self.run(&["tasks", "ls", "-q"]).stdout.contains(container)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.run(&["containers", "delete", container]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

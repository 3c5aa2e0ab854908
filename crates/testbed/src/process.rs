//! The processes a control plane runs, and the guarantee that none outlives the test binary.
//!
//! Every child is recorded in the run directory's `pids` file. A watchdog shell, started with the
//! first child, polls the test process and, once it is gone (normal exit, panic, SIGKILL), kills every
//! recorded process whose command line still names the run directory, tears down real nodes
//! (`realnode/host.sh down`) and removes the directory.
//! `Drop` does the same at once for control planes that are dropped normally.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running child with its log file.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap. Safe to call more than once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns and tracks the processes of one run directory.
pub struct Supervisor {
    run_dir: PathBuf,
    pids: File,
    watchdog: Option<Child>,
}

impl Supervisor {
    pub fn new(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("pids");
        let pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        let mut supervisor = Self {
            run_dir: run_dir.to_owned(),
            pids,
            watchdog: None,
        };
        supervisor.watchdog = Some(supervisor.start_watchdog()?);
        Ok(supervisor)
    }

    fn start_watchdog(&self) -> Result<Child> {
        // Plain sh so that it needs nothing the machine lacks. It checks /proc/<pid>/cmdline against the
        // run directory before killing, so a recycled pid is never hit.
        let script = r#"
owner=$1; dir=$2
while kill -0 "$owner" 2>/dev/null; do sleep 0.3; done
if [ -f "$dir/pids" ]; then
  for p in $(cat "$dir/pids"); do
    if tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -qF "$dir"; then kill -9 "$p" 2>/dev/null; fi
  done
fi
# Real nodes: what their processes left outside the run directory (see realnode/host.sh).
for d in "$dir"/rn-*/; do [ -f "$d/host.sh" ] && sh "$d/host.sh" down "${d%/}"; done
[ -f "$dir/keep" ] || rm -rf "$dir"
"#;
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("tke-testbed-watchdog")
            .arg(std::process::id().to_string())
            .arg(&self.run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                name: "watchdog".into(),
                program: "sh".into(),
                source,
            })
    }

    /// Starts `program` with `args`, output to `<run>/logs/<name>.log`. Every program the test bed runs
    /// receives a path inside the run directory in its arguments, which is how the watchdog recognises
    /// it.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Result<Proc> {
        let logs = self.run_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| Error::Io {
            path: logs.clone(),
            source,
        })?;
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| Error::Io {
            path: log.clone(),
            source,
        })?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().map_err(|source| Error::Spawn {
            name: name.to_owned(),
            program: program.to_owned(),
            source,
        })?;
        let _ = writeln!(self.pids, "{}", child.id());
        let _ = self.pids.flush();
        Ok(Proc {
            name: name.to_owned(),
            log,
            child,
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

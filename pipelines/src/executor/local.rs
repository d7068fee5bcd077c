//! Steps as local processes. Each attempt runs in its own process group, so a timeout or
//! a cancel stops everything the step started (a shell and its children), not just the
//! first process; the child also dies with Nexus (`PR_SET_PDEATHSIG`), and a restarted
//! Nexus stops any leftover group before re-running the step.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Executor, Exit, Launch, OnStart};

/// How long a stopped group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// Variables a step inherits from the server by name: what a process needs to run at all
/// (PATH, HOME, locale, time zone, temp folder) and what its own tools need to reach
/// package indexes (proxies, CA bundles). Everything else — database URLs, JWT secrets,
/// cloud keys, tokens — stays with the server unless named with `--pipeline-env`.
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

/// Prefixes of inherited variables: pip's own configuration (index URL, trusted hosts).
const INHERITED_PREFIXES: &[&str] = &["PIP_"];

/// Runs steps as child processes that start from a clean environment: the variables in
/// [`INHERITED`] plus the launch's own (the step's `env`, `NEXUS_*`, `--pipeline-env`).
#[derive(Debug, Default)]
pub struct LocalExecutor {
    inherited: Vec<(OsString, OsString)>,
}

impl LocalExecutor {
    /// An executor whose steps inherit [`INHERITED`] from this process's environment.
    pub fn new() -> Self {
        LocalExecutor {
            inherited: inherited(std::env::vars_os()),
        }
    }
}

/// The variables of `vars` a step inherits.
fn inherited(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.filter(|(name, _)| {
        name.to_str().is_some_and(|name| {
            INHERITED.contains(&name) || INHERITED_PREFIXES.iter().any(|p| name.starts_with(p))
        })
    })
    .collect()
}

/// Signals a whole process group; false when it no longer exists.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: killpg has no memory-safety preconditions; a stale id fails with ESRCH.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Stops a group: SIGTERM, then SIGKILL for what is left after the grace period.
async fn stop_group(pgid: i32) {
    if !signal_group(pgid, libc::SIGTERM) {
        return;
    }
    let deadline = tokio::time::Instant::now() + GRACE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !signal_group(pgid, 0) {
            return;
        }
    }
    signal_group(pgid, libc::SIGKILL);
}

async fn note(log: &mut tokio::fs::File, text: &str) {
    let _ = log.write_all(text.as_bytes()).await;
    let _ = log.flush().await;
}

impl LocalExecutor {
    async fn run_attempt(
        &self,
        launch: Launch,
        on_start: OnStart,
        cancel: CancellationToken,
    ) -> Exit {
        let mut log = match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                return Exit::Failed(format!("cannot open log {}: {e}", launch.log.display()));
            }
        };
        note(
            &mut log,
            &format!("--- attempt {} of {} ---\n", launch.attempt, launch.path),
        )
        .await;
        let (stdout, stderr) = match (log.try_clone().await, log.try_clone().await) {
            (Ok(a), Ok(b)) => (a.into_std().await, b.into_std().await),
            (Err(e), _) | (_, Err(e)) => return Exit::Failed(format!("cannot share log: {e}")),
        };
        let Some((program, args)) = launch.argv.split_first() else {
            return Exit::Failed("empty command".into());
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(self.inherited.iter().map(|(k, v)| (k, v)))
            .envs(&launch.env)
            .env(MARKER, step_id(&launch.run_id, &launch.path))
            .current_dir(&launch.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                let message = format!(
                    "cannot start '{program}' in {}: {e}",
                    launch.workdir.display()
                );
                note(&mut log, &format!("{message}\n")).await;
                return Exit::Failed(message);
            }
        };
        let Some(pid) = child.id() else {
            return Exit::Failed("the process exited before it could be tracked".into());
        };
        let pgid = pid as i32;
        on_start(format!(
            "{pgid} {MARKER}={}",
            step_id(&launch.run_id, &launch.path)
        ));
        let timeout = async {
            match launch.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let exit = tokio::select! {
            status = child.wait() => match status {
                Ok(s) if s.success() => Exit::Succeeded,
                Ok(s) => Exit::Failed(describe(s)),
                Err(e) => Exit::Failed(format!("waiting for the step: {e}")),
            },
            () = timeout => {
                stop_group(pgid).await;
                let _ = child.wait().await;
                let t = launch.timeout.unwrap_or_default();
                note(&mut log, &format!("timed out after {}\n", humantime::format_duration(t))).await;
                Exit::TimedOut(t)
            }
            () = cancel.cancelled() => {
                stop_group(pgid).await;
                let _ = child.wait().await;
                note(&mut log, "cancelled\n").await;
                Exit::Cancelled
            }
        };
        // Whatever the step left running in its group goes with it.
        signal_group(pgid, libc::SIGKILL);
        exit
    }
}

/// The environment variable that marks every process of a step, so a restarted Nexus can
/// tell its own leftovers from whatever now has the same process group id.
const MARKER: &str = "NEXUS_STEP_ID";

fn step_id(run_id: &str, path: &str) -> String {
    format!("{run_id}/{path}")
}

/// Whether any live process in group `pgid` has `marker` in its environment.
fn group_carries(pgid: i32, marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            return false;
        };
        // Fields after the command name, which may itself hold spaces and parentheses:
        // state, ppid, pgrp, …
        let group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().nth(2)?.parse::<i32>().ok()
            });
        group == Some(pgid)
            && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|entry| entry == marker.as_bytes())
            })
    })
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended abnormally".into(),
    }
}

impl Executor for LocalExecutor {
    fn run(
        &self,
        launch: Launch,
        on_start: OnStart,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Exit> {
        Box::pin(self.run_attempt(launch, on_start, cancel))
    }

    /// The handle is `PGID NEXUS_STEP_ID=RUN/PATH`: the group is stopped only if a process in it
    /// still carries that marker in its environment, so a process group id the system has
    /// since given to something else is left alone.
    fn stop_stale(&self, handle: &str) -> BoxFuture<'_, ()> {
        let parsed = handle.split_once(' ').and_then(|(pgid, marker)| {
            Some((
                pgid.parse::<i32>().ok().filter(|p| *p > 1)?,
                marker.to_string(),
            ))
        });
        Box::pin(async move {
            if let Some((pgid, marker)) = parsed
                && group_carries(pgid, &marker)
            {
                stop_group(pgid).await;
            }
        })
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn steps_inherit_only_what_they_need() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/n"),
            ("PIP_INDEX_URL", "http://pypi.example"),
            ("https_proxy", "http://proxy:3128"),
            ("SSL_CERT_FILE", "/etc/ca.pem"),
            ("NEXUS_DATABASE_URL", "postgres://u:p@db/x"),
            ("NEXUS_JWT_SECRET", "s"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("GITHUB_TOKEN", "t"),
            ("PIPX", "not pip's"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let names: Vec<OsString> = inherited(vars.into_iter())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "PIP_INDEX_URL",
                "https_proxy",
                "SSL_CERT_FILE"
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn only_groups_carrying_the_marker_are_stale() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(MARKER, "run/step")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pgid = child.id() as i32;
        // spawn returns while the kernel is still inside execve: until the new image's
        // environment is set up, /proc/<pid>/environ is empty. Wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !group_carries(pgid, "NEXUS_STEP_ID=run/step") {
            assert!(
                std::time::Instant::now() < deadline,
                "the step's group never showed its marker"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!group_carries(pgid, "NEXUS_STEP_ID=run/other"));
        // This test's own group is not a step's.
        // SAFETY: getpgrp has no preconditions.
        let own = unsafe { libc::getpgrp() };
        assert!(!group_carries(own, "NEXUS_STEP_ID=run/step"));
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}

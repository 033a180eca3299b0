//! The `meshca` CLI run as a user runs it, written once: a KUBECONFIG of one or more files
//! (colon-separated, merged as kubectl merges them), what it printed and how long it took.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What `meshca` did: its exit code, what it printed, how long it took.
#[derive(Debug)]
pub struct MeshcaRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl MeshcaRun {
    /// Everything it said: stdout, then stderr.
    pub fn said(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The ✖ lines with the line after each (what is wrong).
    pub fn failures(&self) -> Vec<(String, String)> {
        self.marked("✖")
    }

    pub fn warnings(&self) -> Vec<(String, String)> {
        self.marked("⚠")
    }

    fn marked(&self, mark: &str) -> Vec<(String, String)> {
        let lines: Vec<&str> = self.stdout.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with(mark))
            .map(|(i, l)| {
                (
                    l.to_string(),
                    lines.get(i + 1).map(|s| s.trim().to_string()).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Runs `meshca args` with `KUBECONFIG` set to every file of `kubeconfigs` and `env` added
/// (`NO_COLOR` removed: what it prints is piped, plain whatever the caller's environment says).
pub fn run(kubeconfigs: &[&Path], args: &[&str], env: &[(&str, &str)]) -> MeshcaRun {
    let kubeconfig = std::env::join_paths(kubeconfigs).expect("KUBECONFIG");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .expect("meshca runs");
    MeshcaRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// `verb --context C1 --context C2 ... --namespace namespace` and `extra`: a command across a
/// fleet of clusters (federate, unfederate, rotation ...).
pub fn across<'a>(verb: &'a str, contexts: &[&'a str], namespace: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![verb];
    for context in contexts {
        args.extend(["--context", context]);
    }
    args.extend(["--namespace", namespace]);
    args.extend_from_slice(extra);
    args
}

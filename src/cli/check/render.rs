//! How `meshca check` prints: groups with a heading, one line per check (✔ / ⚠ / ✖ and what
//! holds), and under a warning or failure one line of what is wrong and one of what to do, as
//! `linkerd check` does; then a summary with the exit code. Colour only on a terminal and
//! without `NO_COLOR` (no-color.org). `-o json` gives the same findings with stable ids and doc
//! links, for scripts.

use std::io::IsTerminal;

use serde_json::json;

use super::{ClusterReport, Finding, Group, Report, Status};

/// Whether to colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    Colour,
}

impl Style {
    /// Colour when stdout is a terminal, `NO_COLOR` is unset or empty and `TERM` is not `dumb`.
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Self::choose(std::io::stdout().is_terminal(), no_color, dumb)
    }

    pub fn choose(terminal: bool, no_color: bool, dumb: bool) -> Self {
        if terminal && !no_color && !dumb {
            Style::Colour
        } else {
            Style::Plain
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        match self {
            Style::Plain => text.to_string(),
            Style::Colour => format!("\x1b[{code}m{text}\x1b[0m"),
        }
    }
}

pub fn symbol(status: Status) -> &'static str {
    match status {
        Status::Pass => "✔",
        Status::Warn => "⚠",
        Status::Fail => "✖",
    }
}

fn colour_of(status: Status) -> &'static str {
    match status {
        Status::Pass => "32",
        Status::Warn => "33",
        Status::Fail => "31",
    }
}

fn heading(out: &mut String, style: Style, title: &str, underline: char) {
    out.push_str(&style.paint("1", title));
    out.push('\n');
    out.push_str(&underline.to_string().repeat(title.chars().count()));
    out.push('\n');
}

fn finding(out: &mut String, style: Style, f: &Finding) {
    out.push_str(&style.paint(colour_of(f.status), symbol(f.status)));
    out.push(' ');
    out.push_str(f.id.title());
    out.push('\n');
    if let Some(problem) = &f.problem {
        out.push_str(&format!("    {problem}\n"));
    }
    if let Some(fix) = &f.fix {
        out.push_str(&format!("    {} {fix}\n", style.paint("36", "→")));
    }
}

/// Findings by group, in the order they came.
fn grouped(findings: &[Finding]) -> Vec<(Group, Vec<&Finding>)> {
    let mut out: Vec<(Group, Vec<&Finding>)> = Vec::new();
    for f in findings {
        match out.last_mut() {
            Some((g, list)) if *g == f.id.group() => list.push(f),
            _ => out.push((f.id.group(), vec![f])),
        }
    }
    out
}

fn cluster(out: &mut String, style: Style, c: &ClusterReport) {
    heading(
        out,
        style,
        &format!("Context {} (namespace {})", c.context, c.namespace),
        '=',
    );
    for (group, findings) in grouped(&c.findings) {
        out.push('\n');
        heading(out, style, group.title(), '-');
        for f in findings {
            finding(out, style, f);
        }
    }
    out.push('\n');
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The text a person reads.
pub fn text(report: &Report, exit_code: u8, style: Style) -> String {
    let mut out = String::new();
    for c in &report.clusters {
        cluster(&mut out, style, c);
    }
    if !report.fleet.is_empty() {
        heading(&mut out, style, super::Group::Fleet.title(), '=');
        out.push('\n');
        for f in &report.fleet {
            finding(&mut out, style, f);
        }
        out.push('\n');
    }
    let (passed, warnings, failed) = report.counts();
    let verdict = match exit_code {
        0 => style.paint(colour_of(Status::Pass), "all checks passed"),
        4 => style.paint(colour_of(Status::Warn), "warnings only"),
        _ => style.paint(colour_of(Status::Fail), "checks failed"),
    };
    out.push_str(&format!(
        "{verdict}: {} passed, {}, {} (exit {exit_code}; every check is explained in {})\n",
        passed,
        plural(warnings, "warning", "warnings"),
        failed.to_string() + " failed",
        super::DOCS
    ));
    out
}

fn finding_json(f: &Finding) -> serde_json::Value {
    let mut v = json!({
        "id": f.id.id(),
        "title": f.id.title(),
        "status": f.status,
        "doc": f.id.doc(),
    });
    if let Some(p) = &f.problem {
        v["problem"] = json!(p);
    }
    if let Some(fix) = &f.fix {
        v["fix"] = json!(fix);
    }
    v
}

fn groups_json(findings: &[Finding]) -> serde_json::Value {
    grouped(findings)
        .into_iter()
        .map(|(group, list)| {
            json!({
                "name": group.title(),
                "checks": list.into_iter().map(finding_json).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The same findings as JSON.
pub fn json(report: &Report, exit_code: u8) -> String {
    let (passed, warnings, failed) = report.counts();
    let mut v = json!({
        "success": exit_code == 0,
        "exitCode": exit_code,
        "summary": {"passed": passed, "warnings": warnings, "failed": failed},
        "clusters": report.clusters.iter().map(|c| json!({
            "context": c.context,
            "namespace": c.namespace,
            "groups": groups_json(&c.findings),
        })).collect::<Vec<_>>(),
    });
    if !report.fleet.is_empty() {
        v["fleet"] = json!({
            "name": super::Group::Fleet.title(),
            "checks": report.fleet.iter().map(finding_json).collect::<Vec<_>>(),
        });
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::CheckId;

    fn report() -> Report {
        Report {
            clusters: vec![ClusterReport {
                context: "east".into(),
                namespace: "istio-system".into(),
                findings: vec![
                    Finding::pass(CheckId::ApiReachable),
                    Finding::pass(CheckId::Crds),
                    Finding::fail(
                        CheckId::Controller,
                        "Lease cert-manager/mesh-ca-issuer does not exist",
                        "kubectl -n cert-manager get pods",
                    ),
                    Finding::warn(CheckId::ApprovalScope, "it approves everything", "use approver-policy"),
                ],
            }],
            fleet: vec![Finding::pass(CheckId::FleetPeerRoots)],
        }
    }

    #[test]
    fn text_shows_groups_symbols_and_two_lines_under_a_problem() {
        let r = report();
        let text = text(&r, r.exit_code(false), Style::Plain);
        let expected_start = "\
Context east (namespace istio-system)
=====================================

Kubernetes API
--------------
✔ the API server answers

Installation
------------
✔ mesh-ca-issuer's CRDs are installed at this meshca's version
✖ the controller runs and one replica holds a fresh leader Lease
    Lease cert-manager/mesh-ca-issuer does not exist
    → kubectl -n cert-manager get pods

Approval
--------
⚠ cert-manager's approver does not approve every request for our issuers in every namespace
    it approves everything
    → use approver-policy

Across the named clusters
=========================

✔ each federated peer's current roots are all among our trust anchors

checks failed: 3 passed, 1 warning, 1 failed (exit 1;";
        assert!(text.starts_with(expected_start), "{text}");
        assert!(!text.contains('\x1b'), "no escape codes in plain text");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert_eq!(Style::choose(true, false, false), Style::Colour);
        assert_eq!(Style::choose(true, true, false), Style::Plain, "NO_COLOR");
        assert_eq!(Style::choose(false, false, false), Style::Plain, "a pipe");
        assert_eq!(Style::choose(true, false, true), Style::Plain, "TERM=dumb");
        let r = report();
        let text = text(&r, 1, Style::Colour);
        assert!(text.contains("\x1b[31m✖\x1b[0m the controller"), "{text}");
        assert!(text.contains("\x1b[32m✔\x1b[0m the API server answers"), "{text}");
        assert!(text.contains("\x1b[33m⚠\x1b[0m"), "{text}");
    }

    #[test]
    fn json_has_ids_statuses_and_doc_links() {
        let r = report();
        let v: serde_json::Value = serde_json::from_str(&json(&r, 1)).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["exitCode"], 1);
        assert_eq!(
            v["summary"],
            serde_json::json!({"passed": 3, "warnings": 1, "failed": 1})
        );
        let installation = &v["clusters"][0]["groups"][1];
        assert_eq!(installation["name"], "Installation");
        assert_eq!(installation["checks"][1]["id"], "controller");
        assert_eq!(installation["checks"][1]["status"], "fail");
        assert_eq!(installation["checks"][1]["fix"], "kubectl -n cert-manager get pods");
        assert!(
            installation["checks"][1]["doc"]
                .as_str()
                .unwrap()
                .ends_with("docs/check.md#controller")
        );
        assert!(
            installation["checks"][0].get("problem").is_none(),
            "a pass has no problem"
        );
        assert_eq!(v["fleet"]["checks"][0]["id"], "fleet-peer-roots");
    }
}

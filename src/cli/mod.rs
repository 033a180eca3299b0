//! `meshca`: the command line for operators of several clusters (also installed as
//! `kubectl-meshca`, so `kubectl meshca ...` works). `check` says whether mesh trust is healthy
//! and what to do when not ([`check`], read-only); `status` shows issuers and IstioCACerts
//! across clusters; `federate`/`unfederate` exchange published roots between clusters as trust
//! anchors. The decisions live in [`federation`]; this module reads, prints and writes.
//!
//! Every command that writes reads all clusters before it writes to any, and refuses (exit
//! code 3, nothing written) when a cluster is unreachable or a check fails.

pub mod check;
pub mod federation;
pub mod revoke;
pub mod rotation;
pub mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource};

use crate::api::istio_cacerts::IstioCACerts;
use federation::{ClusterPlan, FIELD_MANAGER, PEER_CLUSTER_LABEL, Snapshot};

const EXAMPLES: &str = "\
Examples:
  # Is this cluster's mesh trust healthy? What to do if not:
  meshca check

  # Two clusters, each with a kubeconfig of its own:
  export KUBECONFIG=$HOME/.kube/east:$HOME/.kube/west
  meshca check --context east --context west
  meshca status --context east --context west
  meshca federate --context east --context west --dry-run
  meshca federate --context east --context west --yes
  meshca unfederate --context east --context west

  # Three clusters trust each other (a full mesh of trust anchors):
  meshca federate --context east --context west --context north

  # east follows west's SPIFFE bundle endpoint (and so its root rotations) instead of a copy:
  meshca federate --context east --context west --yes \\
    --bundle-endpoint west=https://bundle.west.example:8443/west.example

  # A root rotation waits for its new root's approval (Ready=False/NewRootNotApproved):
  meshca rotation status --context east --namespace istio-system --name istiod
  meshca rotation approve --context east --namespace istio-system --name istiod --fingerprint <SHA-256>

  # Cluster west's intermediate was compromised: revoke it at the shared root's issuer in
  # every cluster, and wait until their ca-crl.pem lists it (docs/revocation.md):
  meshca revoke --context east --context west --issuer mesh-root --cert-from-context west --yes

  # Shell completion:
  meshca completion bash > /etc/bash_completion.d/meshca

Exit codes of `meshca check`:
  0  every check passed
  1  a check failed (or, with --strict, warned); an unreachable cluster is a failed check
  2  bad usage
  4  warnings only

Exit codes of the other commands:
  0  done
  1  a cluster could not be read or written after the checks passed (re-running is safe)
  2  bad usage
  3  refused before writing anything: a context is unreachable or unknown, two contexts are
     the same cluster, a cluster has no IstioCACerts or no spec.publishRoot, a published
     root is not a valid CA, the clusters are not ready to advance, the fingerprint given to
     `rotation approve` is not the new root a cluster waits for, the issuer `revoke` names
     does not exist, a cluster named by --bundle-endpoint serves no bundle endpoint (or
     other roots than it publishes), or a write was not confirmed (--yes)";

/// meshca: trust across clusters for mesh-ca-issuer.
#[derive(Parser, Debug)]
#[command(name = "meshca", version = crate::cli::version(), about, after_help = EXAMPLES)]
pub struct Cli {
    /// Kubeconfig file(s), colon-separated and merged like kubectl. Default: $KUBECONFIG, then
    /// ~/.kube/config.
    #[arg(long, global = true)]
    pub kubeconfig: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Checks every part of mesh trust (installation, approval, issuers, istiod's Certificate,
    /// IstioCACerts and cacerts, istiod, and across the named clusters), each with what is
    /// wrong and what to do. Reads only.
    Check(CheckArgs),
    /// One table across clusters: issuers (Ready, backend, CA expiry) and IstioCACerts
    /// (intermediate, next renewal, roots and trust anchors with their windows, any problem).
    Status(StatusArgs),
    /// Make every named cluster trust every other one's published root: copies each root into
    /// the others as a ConfigMap and a spec.trustAnchors entry (server-side apply, field manager
    /// meshca-cli). Repeatable with the same result.
    Federate(FederateArgs),
    /// Undo `federate` between the named clusters: removes the trust anchors and ConfigMaps it
    /// wrote for them; anchors written by anyone else stay.
    Unfederate(FederateArgs),
    /// Root rotation across clusters: `status` shows each cluster's phase and next step;
    /// `advance` moves every cluster (Manual mode) to the next phase together, only when all
    /// are in the same phase and past their delay.
    #[command(subcommand)]
    Rotation(RotationCommand),
    /// Revoke an intermediate (a compromised cluster's): adds its serial to the issuer's
    /// spec.revoked in every named cluster, then waits until each IstioCACerts with revocation
    /// on lists it in ca-crl.pem. Asks first on a terminal; --yes for scripts.
    Revoke(RevokeArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Kubeconfig context of a cluster (repeat for several: the checks across clusters run
    /// too). Default: the current context.
    #[arg(long = "context")]
    pub contexts: Vec<String>,
    /// istiod's namespace in every cluster (its Deployment, mesh config, Certificate and
    /// IstioCACerts).
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = CheckOutput::Text)]
    pub output: CheckOutput,
    /// Treat warnings as failures (exit 1 instead of 4).
    #[arg(long)]
    pub strict: bool,
    /// The controller's namespace. Default: where the chart's Deployment is found, else
    /// cert-manager.
    #[arg(long)]
    pub controller_namespace: Option<String>,
    /// cert-manager's namespace: its ServiceAccounts cert-manager and
    /// cert-manager-approver-policy are the approvers checked.
    #[arg(long, default_value = "cert-manager")]
    pub cert_manager_namespace: String,
    /// How long one cluster may take to be read (a Go duration); a slower one is a failed check.
    #[arg(long, default_value = "20s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::duration::parse_go_duration(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Kubeconfig context to show (repeat for several). Default: the current context.
    #[arg(long = "context")]
    pub contexts: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum RotationCommand {
    /// Each cluster's rotation phase, since when, and its next step, side by side.
    Status(RotationStatusArgs),
    /// Annotate every cluster's IstioCACerts to advance its current phase (meshca.io/advance-rotation),
    /// only when every cluster is in the same phase, in Manual mode, not paused and past its
    /// delay. Otherwise says which cluster holds things up and writes nothing.
    Advance(AdvanceArgs),
    /// Approve the new root a rotation waits for (Ready=False/NewRootNotApproved): writes
    /// spec.rootRotation.expectedNewRoot on every cluster, only when each cluster reports that
    /// very root as waiting for approval. Otherwise says why and writes nothing.
    Approve(ApproveArgs),
}

#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub clusters: RotationArgs,
    /// The new root's SHA-256 fingerprint, as the NewRootNotApproved condition and
    /// status.newRootAwaitingApproval show it (64 hex digits, any case).
    #[arg(long)]
    pub fingerprint: String,
}

#[derive(clap::Args, Debug)]
pub struct RotationArgs {
    /// Kubeconfig context of a cluster (repeat for several).
    #[arg(long = "context", required = true, num_args = 1)]
    pub contexts: Vec<String>,
    /// Namespace of the IstioCACerts (istiod's namespace) in every cluster.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Name of the IstioCACerts in every cluster.
    #[arg(long, default_value = "istiod")]
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct RotationStatusArgs {
    #[command(flatten)]
    pub clusters: RotationArgs,
    /// Kubeconfig context of a federated peer (repeat for several): the next step says whether
    /// it trusts each cluster's new root yet.
    #[arg(long = "peer", num_args = 1)]
    pub peers: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct AdvanceArgs {
    #[command(flatten)]
    pub clusters: RotationArgs,
    /// Kubeconfig context of a federated peer (repeat for several): the intermediate is not
    /// switched while a peer does not yet trust the new root.
    #[arg(long = "peer", num_args = 1)]
    pub peers: Vec<String>,
    /// The phase to move to; refused unless it is the next one for every cluster.
    #[arg(long, value_parser = parse_phase)]
    pub to: Option<crate::api::istio_cacerts::RotationPhase>,
}

fn parse_phase(s: &str) -> Result<crate::api::istio_cacerts::RotationPhase, String> {
    crate::api::istio_cacerts::RotationPhase::parse(s)
        .ok_or_else(|| format!("unknown phase {s:?}: one of SwitchingIntermediate, RemovingOldRoot, Completed"))
}

#[derive(clap::Args, Debug)]
pub struct FederateArgs {
    /// Kubeconfig context of a cluster; at least two.
    #[arg(long = "context", required = true, num_args = 1)]
    pub contexts: Vec<String>,
    /// Namespace of the IstioCACerts (istiod's namespace) in every cluster.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Name of the IstioCACerts in every cluster.
    #[arg(long, default_value = "istiod")]
    pub name: String,
    /// Check everything and print what would be written; the API servers validate each write
    /// (server-side dry run) but keep nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the pins (the peers' root fingerprints, printed first) without asking: for
    /// scripts. Without it, `federate` asks on a terminal, and writes nothing elsewhere.
    #[arg(long)]
    pub yes: bool,
    /// `CONTEXT=URL`: follow that cluster's SPIFFE bundle endpoint at URL (as the other
    /// clusters reach it) instead of copying its root once. The cluster must serve one
    /// (`spec.bundleEndpoint`); its current roots are copied as the pinned bootstrap bundle.
    /// Repeat for each cluster that serves one.
    #[arg(long = "bundle-endpoint", value_name = "CONTEXT=URL")]
    pub bundle_endpoints: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// Kubeconfig context of a cluster whose issuer gets the serial (repeat: every cluster
    /// sharing the CA that signed the intermediate).
    #[arg(long = "context", required = true, num_args = 1)]
    pub contexts: Vec<String>,
    /// The issuer that signed the intermediate, by name in every cluster: a
    /// ClusterMeshCAIssuer, or a MeshCAIssuer with --issuer-namespace.
    #[arg(long)]
    pub issuer: String,
    /// The namespace of a MeshCAIssuer.
    #[arg(long)]
    pub issuer_namespace: Option<String>,
    /// The serial to revoke, in hex (case, colons and 0x ignored).
    #[arg(
        long,
        required_unless_present = "cert_from_context",
        conflicts_with = "cert_from_context"
    )]
    pub serial: Option<String>,
    /// Revoke the intermediate this cluster's IstioCACerts shows (status.intermediate).
    #[arg(long)]
    pub cert_from_context: Option<String>,
    /// Namespace of that IstioCACerts.
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,
    /// Name of that IstioCACerts.
    #[arg(long, default_value = "istiod")]
    pub name: String,
    /// Why (RFC 5280).
    #[arg(long, value_enum, default_value_t = Reason::KeyCompromise)]
    pub reason: Reason,
    /// How long to wait for every IstioCACerts with revocation on to list the serial (a Go
    /// duration; 0s: do not wait).
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub wait: Duration,
    /// Write without asking (for scripts). Without it, `revoke` asks on a terminal and writes
    /// nothing elsewhere.
    #[arg(long)]
    pub yes: bool,
}

/// RFC 5280 reasons as `spec.revoked[].reason` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Reason {
    #[value(name = "keyCompromise")]
    KeyCompromise,
    #[value(name = "cACompromise")]
    CaCompromise,
    #[value(name = "superseded")]
    Superseded,
    #[value(name = "cessationOfOperation")]
    CessationOfOperation,
    #[value(name = "unspecified")]
    Unspecified,
}

impl From<Reason> for crate::api::issuer::RevocationReason {
    fn from(r: Reason) -> Self {
        use crate::api::issuer::RevocationReason as R;
        match r {
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::Unspecified => R::Unspecified,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// `meshca --version`: the crate version and the git revision it was built from.
pub fn version() -> &'static str {
    crate::build_info::VERSION_LINE
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn refused(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

/// Parses the arguments and runs the command; the exit code follows [`EXAMPLES`].
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    crate::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Command::Check(args) = &cli.command {
        // Its own exit codes: 0 all pass, 1 a failure, 4 warnings only.
        return ExitCode::from(runtime.block_on(run_check(cli.kubeconfig.as_deref(), args)));
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// `meshca check`: every cluster is read, whatever happens to the others; nothing is written.
async fn run_check(kubeconfig: Option<&str>, args: &CheckArgs) -> u8 {
    let kubeconfig = load_kubeconfig(kubeconfig).map_err(|f| f.message);
    let contexts = if args.contexts.is_empty() {
        match kubeconfig.as_ref().ok().and_then(|k| k.current_context.clone()) {
            Some(c) => vec![c],
            None => vec!["(current context)".to_string()],
        }
    } else {
        args.contexts.clone()
    };
    let check_args = check::Args {
        contexts,
        settings: check::observe::Settings {
            namespace: args.namespace.clone(),
            controller_namespace: args.controller_namespace.clone(),
            cert_manager_namespace: args.cert_manager_namespace.clone(),
        },
        json: args.output == CheckOutput::Json,
        strict: args.strict,
        timeout: args.timeout,
    };
    check::run(kubeconfig, &check_args).await
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        // Run by `main_with_args` before this, for its own exit codes.
        Command::Check(_) => Ok(()),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshca", &mut std::io::stdout());
            Ok(())
        }
        Command::Status(args) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            let contexts =
                if args.contexts.is_empty() {
                    vec![kubeconfig.current_context.clone().ok_or_else(|| {
                        Failure::refused("no --context given and the kubeconfig has no current context")
                    })?]
                } else {
                    args.contexts.clone()
                };
            status::run(&kubeconfig, &contexts, args.output).await
        }
        Command::Federate(args) | Command::Unfederate(args) if args.contexts.len() < 2 => Err(Failure {
            code: 2,
            message: "name at least two clusters: --context A --context B".into(),
        }),
        Command::Federate(args) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            federate(&kubeconfig, &args, true).await
        }
        Command::Unfederate(args) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            federate(&kubeconfig, &args, false).await
        }
        Command::Rotation(RotationCommand::Status(args)) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            let clusters = read_rotations(&kubeconfig, &args.clusters).await?;
            let peers = read_peers(&kubeconfig, &args.clusters, &args.peers).await?;
            let now = jiff::Timestamp::now();
            let rows: Vec<rotation::Row> = clusters.iter().map(|c| rotation::row(c, &peers, now)).collect();
            print!("{}", render_rotation_rows(&rows, args.output)?);
            Ok(())
        }
        Command::Rotation(RotationCommand::Approve(args)) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            let clusters = read_rotations(&kubeconfig, &args.clusters).await?;
            let fingerprint = rotation::plan_approve(&clusters, &args.fingerprint)
                .map_err(|problems| Failure::refused(format!("nothing was written:\n  {}", problems.join("\n  "))))?;
            let patch = serde_json::json!({
                "apiVersion": "meshca.io/v1alpha1",
                "kind": "IstioCACerts",
                "metadata": {"name": args.clusters.name, "namespace": args.clusters.namespace},
                "spec": {"rootRotation": {"expectedNewRoot": fingerprint}},
            });
            // The user named this root: take the field over from whoever set it before.
            let (params, patch) = (PatchParams::apply(FIELD_MANAGER).force(), Patch::Apply(&patch));
            patch_each(
                &kubeconfig,
                &clusters,
                &args.clusters,
                &params,
                &patch,
                "approving the new root on",
                |at| format!("approved new root {fingerprint} on {at} (spec.rootRotation.expectedNewRoot)"),
            )
            .await
        }
        Command::Revoke(args) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            revoke(&kubeconfig, &args).await
        }
        Command::Rotation(RotationCommand::Advance(args)) => {
            let kubeconfig = load_kubeconfig(cli.kubeconfig.as_deref())?;
            let clusters = read_rotations(&kubeconfig, &args.clusters).await?;
            let peers = read_peers(&kubeconfig, &args.clusters, &args.peers).await?;
            let phase = rotation::plan_advance(&clusters, &peers, args.to, jiff::Timestamp::now())
                .map_err(|problems| Failure::refused(format!("nothing was written:\n  {}", problems.join("\n  "))))?;
            let patch = serde_json::json!({"metadata": {"annotations": {
                crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION: phase.as_str()
            }}});
            let next = rotation::next_phase(phase).map_or("-", |p| p.as_str());
            let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
            patch_each(
                &kubeconfig,
                &clusters,
                &args.clusters,
                &params,
                &patch,
                "annotating",
                |at| format!("asked {at} to advance {} to {next}", phase.as_str()),
            )
            .await
        }
    }
}

/// `meshca revoke`: every issuer is read before anything is written; each is written with the
/// resourceVersion read (a concurrent edit is a conflict, and re-running is safe).
async fn revoke(kubeconfig: &Kubeconfig, args: &RevokeArgs) -> Result<(), Failure> {
    use crate::api::issuer::{ClusterMeshCAIssuer, MeshCAIssuer, RevokedCertificate};
    let (serial, what) = match (&args.serial, &args.cert_from_context) {
        (Some(serial), _) => (
            revoke::canonical(serial).map_err(Failure::refused)?,
            format!("serial {serial}"),
        ),
        (None, Some(victim)) => {
            let client = client_for(kubeconfig, victim).await?;
            let icc = Api::<IstioCACerts>::namespaced(client, &args.namespace)
                .get(&args.name)
                .await
                .map_err(|e| {
                    Failure::refused(format!(
                        "context {victim}: reading IstioCACerts {}/{}: {e}",
                        args.namespace, args.name
                    ))
                })?;
            let (serial, subject) = revoke::victim_serial(&icc, victim).map_err(Failure::refused)?;
            (
                serial.clone(),
                format!("the intermediate of context {victim} ({subject}, serial {serial})"),
            )
        }
        (None, None) => return Err(Failure::refused("name what to revoke: --serial or --cert-from-context")),
    };
    let issuer_display = match &args.issuer_namespace {
        Some(ns) => format!("MeshCAIssuer {ns}/{}", args.issuer),
        None => format!("ClusterMeshCAIssuer {}", args.issuer),
    };
    // Read every issuer first: nothing is written unless all can be.
    let mut reads = Vec::new();
    for context in &args.contexts {
        let client = client_for(kubeconfig, context).await?;
        let got = match &args.issuer_namespace {
            Some(ns) => Api::<MeshCAIssuer>::namespaced(client.clone(), ns)
                .get_opt(&args.issuer)
                .await
                .map(|i| i.map(|i| (i.spec.revoked, i.metadata.resource_version, i.status))),
            None => Api::<ClusterMeshCAIssuer>::all(client.clone())
                .get_opt(&args.issuer)
                .await
                .map(|i| i.map(|i| (i.spec.revoked, i.metadata.resource_version, i.status))),
        };
        let (revoked, version, status) = got
            .map_err(|e| Failure::refused(format!("context {context}: reading {issuer_display}: {e}")))?
            .ok_or_else(|| Failure::refused(format!("context {context}: {issuer_display} does not exist")))?;
        // The CA whose CRL lists the serial: the IstioCACerts under it are the ones to wait for.
        let ca = status.and_then(|s| s.ca).map(|c| c.fingerprint_sha256).ok_or_else(|| {
            Failure::refused(format!(
                "context {context}: {issuer_display} shows no CA yet (status.ca): it is not Ready"
            ))
        })?;
        reads.push((context.clone(), client, revoked, version, ca));
    }
    println!("Revoking {what} at {issuer_display} in {}.", args.contexts.join(", "));
    println!("Workloads under it are refused wherever this mesh's CRLs are checked.");
    confirm("Revoke it?", args.yes)?;
    let at = jiff::Timestamp::now();
    let started = std::time::Instant::now();
    for (context, client, revoked, version, _) in &reads {
        let Some(list): Option<Vec<RevokedCertificate>> = revoke::add(revoked, &serial, args.reason.into(), at) else {
            println!("context {context}: {issuer_display} already lists serial {serial}");
            continue;
        };
        let patch = serde_json::json!({"metadata": {"resourceVersion": version}, "spec": {"revoked": list}});
        let params = PatchParams::default();
        let written = match &args.issuer_namespace {
            Some(ns) => Api::<MeshCAIssuer>::namespaced(client.clone(), ns)
                .patch(&args.issuer, &params, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
            None => Api::<ClusterMeshCAIssuer>::all(client.clone())
                .patch(&args.issuer, &params, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        };
        written.map_err(|e| {
            Failure::failed(format!(
                "context {context}: writing spec.revoked of {issuer_display}: {e} (re-running is safe)"
            ))
        })?;
        println!("context {context}: {issuer_display} revokes serial {serial}");
    }
    if args.wait.is_zero() {
        return Ok(());
    }
    // Every IstioCACerts with revocation on under that CA, in every named cluster, until each
    // lists it.
    let deadline = started + args.wait;
    for (context, client, _, _, ca) in &reads {
        let api = Api::<IstioCACerts>::all(client.clone());
        loop {
            let iccs = api
                .list(&ListParams::default())
                .await
                .map_err(|e| Failure::failed(format!("context {context}: listing IstioCACerts: {e}")))?;
            let waiting: Vec<String> = iccs
                .items
                .iter()
                .filter(|i| revoke::lists(i, &serial, ca) == Some(false))
                .map(|i| {
                    format!(
                        "{}/{}",
                        i.metadata.namespace.as_deref().unwrap_or_default(),
                        i.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            let enabled = iccs
                .items
                .iter()
                .filter(|i| revoke::lists(i, &serial, ca).is_some())
                .count();
            if waiting.is_empty() {
                println!(
                    "context {context}: {enabled} IstioCACerts with revocation on list serial {serial} in ca-crl.pem ({:.1}s after the write)",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Failure::failed(format!(
                    "context {context}: after {:?}, ca-crl.pem of {} does not list serial {serial} yet: see their CRLsCurrent condition",
                    args.wait,
                    waiting.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// Reads the federated peers' IstioCACerts (same namespace and name as the clusters').
async fn read_peers(
    kubeconfig: &Kubeconfig,
    clusters: &RotationArgs,
    peers: &[String],
) -> Result<Vec<rotation::ClusterRotation>, Failure> {
    if peers.is_empty() {
        return Ok(Vec::new());
    }
    let args = RotationArgs {
        contexts: peers.to_vec(),
        namespace: clusters.namespace.clone(),
        name: clusters.name.clone(),
    };
    read_rotations(kubeconfig, &args).await
}

/// Reads every cluster's IstioCACerts, all before anything is decided.
async fn read_rotations(
    kubeconfig: &Kubeconfig,
    args: &RotationArgs,
) -> Result<Vec<rotation::ClusterRotation>, Failure> {
    let reads = futures::future::join_all(args.contexts.iter().map(|context| async move {
        let client = client_for(kubeconfig, context).await?;
        let api: Api<IstioCACerts> = Api::namespaced(client, &args.namespace);
        let icc = api
            .get_opt(&args.name)
            .await
            .map_err(|e| Failure::refused(format!("context {context} is unreachable or refuses us: {e}")))?
            .ok_or_else(|| {
                Failure::refused(format!(
                    "context {context}: IstioCACerts {}/{} does not exist (use --namespace/--name)",
                    args.namespace, args.name
                ))
            })?;
        Ok::<_, Failure>(rotation::ClusterRotation {
            context: context.clone(),
            istio_cacerts: icc,
        })
    }))
    .await;
    let mut clusters = Vec::new();
    let mut problems = Vec::new();
    for read in reads {
        match read {
            Ok(c) => clusters.push(c),
            Err(f) => problems.push(f.message),
        }
    }
    if problems.is_empty() {
        Ok(clusters)
    } else {
        Err(Failure::refused(format!(
            "nothing was written:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// `meshca rotation status` in the chosen format: the same rows as the table, in camelCase
/// fields for JSON and YAML.
fn render_rotation_rows(rows: &[rotation::Row], output: Output) -> Result<String, Failure> {
    match output {
        Output::Json => serde_json::to_string_pretty(rows)
            .map(|s| s + "\n")
            .map_err(|e| Failure::failed(e.to_string())),
        Output::Yaml => serde_yaml::to_string(rows).map_err(|e| Failure::failed(e.to_string())),
        Output::Table => Ok(rotation_table(rows)),
    }
}

fn rotation_table(rows: &[rotation::Row]) -> String {
    let header = ["CONTEXT", "PHASE", "MODE", "SINCE", "NEXT PHASE AT", "NEXT STEP"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.context.clone(),
                r.phase.clone(),
                r.mode.clone(),
                r.since.clone(),
                r.next_phase_at.clone(),
                r.next_step.clone(),
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..5).map(width).collect();
    let line = |c: [&str; 6]| {
        let mut out = String::new();
        for i in 0..5 {
            out.push_str(&format!("{:<w$}  ", c[i], w = widths[i]));
        }
        out.push_str(c[5]);
        out
    };
    let mut out = line(header) + "\n";
    for c in &cells {
        out.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]));
        out.push('\n');
    }
    out
}

/// The kubeconfig: `--kubeconfig` (colon-separated like $KUBECONFIG), else $KUBECONFIG, else
/// ~/.kube/config; several files are merged as kubectl merges them (first one wins).
fn load_kubeconfig(paths: Option<&str>) -> Result<Kubeconfig, Failure> {
    let merged = match paths {
        Some(paths) => std::env::split_paths(paths)
            .filter(|p| !p.as_os_str().is_empty())
            .try_fold(Kubeconfig::default(), |merged, path| {
                Kubeconfig::read_from(&path)
                    .and_then(|c| merged.merge(c))
                    .map_err(|e| format!("{}: {e}", path.display()))
            }),
        None => Kubeconfig::read().map_err(|e| e.to_string()),
    };
    merged.map_err(|e| Failure::refused(format!("cannot read the kubeconfig: {e}")))
}

/// Patches the IstioCACerts of each cluster in turn and says so for each (`done` gets
/// "IstioCACerts ns/name"). A refusal stops there; every patch here is idempotent, so the
/// message says re-running is safe.
async fn patch_each(
    kubeconfig: &Kubeconfig,
    clusters: &[rotation::ClusterRotation],
    target: &RotationArgs,
    params: &PatchParams,
    patch: &Patch<&serde_json::Value>,
    doing: &str,
    done: impl Fn(&str) -> String,
) -> Result<(), Failure> {
    let at = format!("IstioCACerts {}/{}", target.namespace, target.name);
    for c in clusters {
        let client = client_for(kubeconfig, &c.context).await?;
        let api: Api<IstioCACerts> = Api::namespaced(client, &target.namespace);
        api.patch(&target.name, params, patch)
            .await
            .map_err(|e| Failure::failed(format!("context {}: {doing} {at}: {e} (re-running is safe)", c.context)))?;
        println!("context {}: {}", c.context, done(&at));
    }
    Ok(())
}

/// A client for one context, with short timeouts: an unreachable cluster is reported within
/// seconds, not after the OS gives up.
pub async fn client_for(kubeconfig: &Kubeconfig, context: &str) -> Result<Client, Failure> {
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        return Err(Failure::refused(format!(
            "context {context} is not in the kubeconfig (known: {})",
            kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| Failure::refused(format!("context {context}: {e}")))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(15));
    Client::try_from(config).map_err(|e| Failure::refused(format!("context {context}: {e}")))
}

/// The identity of a cluster: the UID of its kube-system namespace.
async fn cluster_id(client: &Client, context: &str) -> Result<String, Failure> {
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .map_err(|e| Failure::refused(format!("context {context} is unreachable or refuses us: {e}")))?;
    ns.metadata
        .uid
        .ok_or_else(|| Failure::refused(format!("context {context}: namespace kube-system has no UID")))
}

/// Reads one cluster for federate/unfederate.
async fn snapshot(
    kubeconfig: &Kubeconfig,
    context: &str,
    namespace: &str,
    name: &str,
) -> Result<(Client, Snapshot), Failure> {
    let client = client_for(kubeconfig, context).await?;
    let cluster_id = cluster_id(&client, context).await?;
    let iccs: Api<IstioCACerts> = Api::namespaced(client.clone(), namespace);
    let istio_cacerts = iccs
        .get_opt(name)
        .await
        .map_err(|e| {
            Failure::refused(format!(
                "context {context}: reading IstioCACerts {namespace}/{name}: {e}"
            ))
        })?
        .ok_or_else(|| {
            Failure::refused(format!(
                "context {context}: IstioCACerts {namespace}/{name} does not exist (use --namespace/--name)"
            ))
        })?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let published = match &istio_cacerts.spec.publish_root {
        Some(p) => config_maps.get_opt(&p.config_map_name).await.map_err(|e| {
            Failure::refused(format!(
                "context {context}: reading ConfigMap {namespace}/{}: {e}",
                p.config_map_name
            ))
        })?,
        None => None,
    };
    let peer_config_maps = config_maps
        .list(&ListParams::default().labels(PEER_CLUSTER_LABEL))
        .await
        .map_err(|e| Failure::refused(format!("context {context}: listing ConfigMaps in {namespace}: {e}")))?
        .items;
    Ok((
        client,
        Snapshot {
            context: context.to_string(),
            cluster_id,
            istio_cacerts,
            published,
            peer_config_maps,
        },
    ))
}

async fn federate(kubeconfig: &Kubeconfig, args: &FederateArgs, join: bool) -> Result<(), Failure> {
    // Read every cluster, all at once, before anything is written anywhere.
    let reads = futures::future::join_all(
        args.contexts
            .iter()
            .map(|c| snapshot(kubeconfig, c, &args.namespace, &args.name)),
    )
    .await;
    let mut problems = Vec::new();
    let mut clients = Vec::new();
    let mut snapshots = Vec::new();
    for read in reads {
        match read {
            Ok((client, snap)) => {
                clients.push(client);
                snapshots.push(snap);
            }
            Err(f) => problems.push(f.message),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::refused(format!(
            "nothing was written:\n  {}",
            problems.join("\n  ")
        )));
    }
    let mut endpoints = std::collections::BTreeMap::new();
    for pair in &args.bundle_endpoints {
        let Some((context, url)) = pair.split_once('=') else {
            return Err(Failure::refused(format!(
                "--bundle-endpoint {pair:?}: expected CONTEXT=URL (e.g. west=https://bundle.west.example:8443/west.example)"
            )));
        };
        if !args.contexts.iter().any(|c| c == context) {
            return Err(Failure::refused(format!(
                "--bundle-endpoint names context {context:?}, which is not among the --context flags"
            )));
        }
        endpoints.insert(context.to_string(), url.to_string());
    }
    let plans = if join {
        federation::plan_federation(&snapshots, &endpoints, jiff::Timestamp::now())
    } else {
        federation::plan_unfederation(&snapshots)
    }
    .map_err(|problems| Failure::refused(format!("nothing was written:\n  {}", problems.join("\n  "))))?;
    if join && !args.dry_run {
        confirm_pins(&plans, args.yes)?;
    }

    for (client, plan) in clients.iter().zip(&plans) {
        apply(client, plan, args.dry_run)
            .await
            .map_err(|e| Failure::failed(format!("context {}: {e} (re-running is safe)", plan.context)))?;
    }
    print_plans(&plans, join, args.dry_run);
    Ok(())
}

/// Writes one cluster's plan: peer ConfigMaps first, then the anchors that name them, then
/// deletes ConfigMaps no anchor names any more — so the controller never sees an anchor whose
/// ConfigMap is missing.
async fn apply(client: &Client, plan: &ClusterPlan, dry_run: bool) -> Result<(), String> {
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = dry_run;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &plan.namespace);
    for cm in &plan.apply_config_maps {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": cm.name,
                "namespace": plan.namespace,
                "labels": cm.labels,
                "annotations": cm.annotations,
            },
            "data": {federation::PEER_KEY: cm.pem},
        });
        config_maps
            .patch(&cm.name, &params, &Patch::Apply(&patch))
            .await
            .map_err(|e| format!("writing ConfigMap {}/{}: {e}", plan.namespace, cm.name))?;
    }
    // The list holds exactly the entries this manager owns; server-side apply keeps the entries
    // other managers own, and removes ours that are no longer listed. An empty list (never an
    // omitted one, which the API server turns into null) when we own none.
    let patch = serde_json::json!({
        "apiVersion": IstioCACerts::api_version(&()),
        "kind": "IstioCACerts",
        "metadata": {"name": plan.name, "namespace": plan.namespace},
        "spec": {"trustAnchors": plan.anchors},
    });
    let iccs: Api<IstioCACerts> = Api::namespaced(client.clone(), &plan.namespace);
    iccs.patch(&plan.name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| {
            format!(
                "writing spec.trustAnchors of IstioCACerts {}/{}: {e}",
                plan.namespace, plan.name
            )
        })?;
    for name in &plan.delete_config_maps {
        let delete = DeleteParams {
            dry_run,
            ..Default::default()
        };
        match config_maps.delete(name, &delete).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("deleting ConfigMap {}/{name}: {e}", plan.namespace)),
        }
    }
    Ok(())
}

/// Shows the pins every cluster is about to trust, and asks (on a terminal) before writing:
/// a root is trusted mesh-wide, so the person running this should see which. `--yes` skips
/// the question; without a terminal and without `--yes` nothing is written.
fn confirm_pins(plans: &[ClusterPlan], yes: bool) -> Result<(), Failure> {
    println!("Pins (SHA-256 of each peer root; the controller refuses a copy holding anything else):");
    for plan in plans {
        for anchor in plan.anchors.iter().filter(|a| !a.fingerprints.is_empty()) {
            println!(
                "  context {} trusts {} ({}): {}",
                plan.context,
                anchor.name,
                anchor.trust_domains.join(", "),
                anchor.fingerprints.join(", ")
            );
        }
    }
    confirm("Write these?", yes)
}

/// Asks `question` on a terminal before a write; `--yes` skips it, and without a terminal and
/// without `--yes` nothing is written.
fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::refused(
            "nothing was written: check what is printed above, then run again with --yes (or from a terminal, to be asked)",
        ));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::refused("nothing was written: not confirmed"))
    }
}

fn print_plans(plans: &[ClusterPlan], join: bool, dry_run: bool) {
    let verb = if dry_run { "would write" } else { "wrote" };
    for plan in plans {
        println!(
            "== context {} (IstioCACerts {}/{}) ==",
            plan.context, plan.namespace, plan.name
        );
        for cm in &plan.apply_config_maps {
            println!(
                "  {verb} ConfigMap {} (root of {})",
                cm.name,
                cm.annotations.values().cloned().collect::<Vec<_>>().join("")
            );
        }
        println!(
            "  {verb} spec.trustAnchors owned by {FIELD_MANAGER}: [{}]",
            plan.anchors
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for name in &plan.delete_config_maps {
            println!(
                "  {} ConfigMap {name}",
                if dry_run { "would delete" } else { "deleted" }
            );
        }
        if join {
            println!("  mesh config this cluster still needs (status.meshConfig says the same):");
            for line in plan.mesh_config.lines() {
                println!("    {line}");
            }
        }
    }
    println!("{}.", crate::istio::trust_bundle::RELOAD_NOTE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(context: &str, phase: &str) -> rotation::Row {
        rotation::Row {
            context: context.into(),
            phase: phase.into(),
            mode: "Manual".into(),
            since: "2026-12-02T10:00:00Z".into(),
            next_phase_at: "-".into(),
            next_step: "SwitchingIntermediate: ready, waiting for `meshca rotation advance`".into(),
        }
    }

    #[test]
    fn rotation_status_speaks_table_json_and_yaml() {
        let cli = Cli::try_parse_from(["meshca", "rotation", "status", "--context", "east", "-o", "json"]).unwrap();
        let Command::Rotation(RotationCommand::Status(args)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(
            (args.output, args.clusters.contexts),
            (Output::Json, vec!["east".to_string()])
        );

        let rows = [row("east", "AddingNewRoot"), row("west", "AddingNewRoot")];
        let json: serde_json::Value =
            serde_json::from_str(&render_rotation_rows(&rows, Output::Json).unwrap()).unwrap();
        assert_eq!(json[1]["context"], "west");
        assert_eq!(json[0]["nextPhaseAt"], "-");
        let yaml: serde_json::Value =
            serde_yaml::from_str(&render_rotation_rows(&rows, Output::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, json);
        let table = render_rotation_rows(&rows, Output::Table).unwrap();
        assert!(table.starts_with("CONTEXT"), "{table}");
        assert_eq!(table.lines().count(), 3, "{table}");
    }
}

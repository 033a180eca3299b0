//! `root-cert.pem` with trust anchors: which extra roots istiod trusts, checked before they are
//! written, and how the file changes so that istiod accepts each change. Pure.
//!
//! istiod compares a changed `root-cert.pem` with the one it loaded *byte for byte*: with
//! `ISTIO_MULTIROOT_MESH=true` it accepts the new file only when one contains the other
//! (`bytes.Contains`; newer versions compare the parsed sets), otherwise it ignores the whole
//! update. So the file is never re-encoded: every PEM block stays byte-identical to how it was
//! first written, an anchor is appended at the end when added and cut out when removed, and an
//! addition and a removal never happen in the same write (that would be neither a superset nor
//! a subset). Removing an anchor that is not the last one is a subset of the certificates but
//! not of the bytes; [`Change::Reordered`] says so and the controller tells the user.
//!
//! Only anchors the controller appended itself are ever cut: the target Secret records their
//! fingerprints ([`RECORD_ANNOTATION`]). A root someone put into `root-cert.pem` by hand stays.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::cacerts::{CacertsPlan, Problem, ROOT_CERT, Target, verify_bundle};
use crate::api::istio_cacerts::{MeshConfigAdvice, TrustAnchor};
use crate::pki::{Certificate, pem, strength};

/// On the target Secret: the SHA-256 fingerprints (comma-separated) of the anchors this
/// controller appended to `root-cert.pem`, so it cuts only those.
pub const RECORD_ANNOTATION: &str = "meshca.io/appended-trust-anchors";

/// Reasons of the `Ready` condition for trust anchor problems.
pub mod reason {
    pub const TRUST_ANCHOR_NOT_FOUND: &str = "TrustAnchorNotFound";
    pub const INVALID_TRUST_ANCHOR: &str = "InvalidTrustAnchor";
}

/// What the controller found behind one `spec.trustAnchors` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The key's bytes.
    Found(Vec<u8>),
    /// The ConfigMap or Secret does not exist.
    ObjectNotFound,
    /// It exists but has no such key.
    KeyNotFound,
    /// Neither or both of configMapKeyRef and secretKeyRef are set.
    NotExactlyOneSource,
    /// A SPIFFE bundle endpoint with no bundle yet: why.
    NotYet(String),
}

/// One anchor as read: its spec entry, where it comes from (for messages) and what was there.
#[derive(Clone, Debug)]
pub struct AnchorInput {
    pub spec: TrustAnchor,
    /// "ConfigMap istio-system/peer key root-cert.pem"
    pub source: String,
    pub fetched: Fetched,
    /// For a `spiffeBundleEndpoint` anchor: how fresh the bundle in use is (status only).
    pub endpoint: Option<crate::api::istio_cacerts::AnchorSource>,
}

/// A checked anchor: its certificates, in the order of its source, minus those that duplicate
/// this cluster's own roots or an earlier anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedAnchor {
    pub name: String,
    pub trust_domains: Vec<String>,
    pub certificates: Vec<Certificate>,
}

/// Every anchor checked, with notes for the Ready message (duplicates that were dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedAnchors {
    pub anchors: Vec<CheckedAnchor>,
    pub notes: Vec<String>,
}

impl CheckedAnchors {
    /// Every anchor certificate in spec order, each once.
    pub fn certificates(&self) -> Vec<Certificate> {
        self.anchors
            .iter()
            .flat_map(|a| a.certificates.iter().cloned())
            .collect()
    }
}

/// Checks every anchor. Any bad anchor fails the whole set, naming each bad anchor: one is
/// never dropped silently while the others are written.
pub fn check_anchors(
    inputs: &[AnchorInput],
    own_roots: &[Certificate],
    now: Timestamp,
) -> Result<CheckedAnchors, Problem> {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    let mut checked = CheckedAnchors::default();
    let mut seen_names = BTreeSet::new();
    let mut seen: Vec<(Certificate, String)> = Vec::new();
    for input in inputs {
        let name = &input.spec.name;
        if !seen_names.insert(name.clone()) {
            problems.push((
                reason::INVALID_TRUST_ANCHOR,
                format!("two trust anchors are named {name:?}: give each a unique name"),
            ));
            continue;
        }
        let certificates = match read_anchor(input, now) {
            Ok(certs) => certs,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let mut kept = Vec::new();
        for cert in certificates {
            if own_roots.contains(&cert) {
                checked.notes.push(format!(
                    "trust anchor {name:?}: {} (SHA-256 {}) is this cluster's own root and is trusted already; it is not added twice",
                    cert.subject(),
                    cert.fingerprint()
                ));
            } else if let Some((_, first)) = seen.iter().find(|(c, _)| *c == cert) {
                checked.notes.push(format!(
                    "trust anchor {name:?}: {} (SHA-256 {}) is already in trust anchor {first:?}; it is not added twice",
                    cert.subject(),
                    cert.fingerprint()
                ));
            } else if !kept.contains(&cert) {
                seen.push((cert.clone(), name.clone()));
                kept.push(cert);
            }
        }
        checked.anchors.push(CheckedAnchor {
            name: name.clone(),
            trust_domains: input.spec.trust_domains.clone(),
            certificates: kept,
        });
    }
    match problems.first() {
        None => Ok(checked),
        Some((reason, _)) => Err(Problem {
            reason,
            message: problems.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// The certificates of one anchor as [`check_anchors`] accepts them (PEM or a SPIFFE bundle,
/// strong self-signed CAs valid now, exactly its pins), or why not. The bundle endpoint poller
/// takes a bootstrap bundle's roots through this, so that what authenticates a first fetch is
/// what the anchor itself would trust.
pub fn anchor_certificates(input: &AnchorInput, now: Timestamp) -> Result<Vec<Certificate>, String> {
    read_anchor(input, now).map_err(|(_, message)| message)
}

/// The certificates of one anchor, each a CA valid now; the problem names the anchor and its
/// source, never the bytes (a key pasted by mistake must not land in a condition).
fn read_anchor(input: &AnchorInput, now: Timestamp) -> Result<Vec<Certificate>, (&'static str, String)> {
    let name = &input.spec.name;
    let source = &input.source;
    let invalid = |what: String| {
        (
            reason::INVALID_TRUST_ANCHOR,
            format!("trust anchor {name:?} ({source}) {what}"),
        )
    };
    let bytes = match &input.fetched {
        Fetched::Found(bytes) => bytes,
        Fetched::ObjectNotFound => {
            return Err((
                reason::TRUST_ANCHOR_NOT_FOUND,
                format!("trust anchor {name:?}: {source}: the object does not exist"),
            ));
        }
        Fetched::KeyNotFound => {
            return Err((
                reason::TRUST_ANCHOR_NOT_FOUND,
                format!("trust anchor {name:?}: {source}: the key does not exist"),
            ));
        }
        Fetched::NotExactlyOneSource => {
            return Err((
                reason::INVALID_TRUST_ANCHOR,
                format!(
                    "trust anchor {name:?}: set exactly one of configMapKeyRef, secretKeyRef and spiffeBundleEndpoint"
                ),
            ));
        }
        Fetched::NotYet(why) => {
            return Err((reason::TRUST_ANCHOR_NOT_FOUND, format!("trust anchor {name:?}: {why}")));
        }
    };
    let mut certs = Vec::new();
    for (label, der) in anchor_blocks(bytes, now).map_err(invalid)? {
        if label != pem::CERTIFICATE {
            // The label only: a private key's bytes never reach a message.
            return Err(invalid(format!(
                "holds a PEM block of type {label:?}: a trust anchor holds CA certificates only"
            )));
        }
        let cert =
            Certificate::from_der(der).map_err(|e| invalid(format!("holds a certificate that cannot be read: {e}")))?;
        let who = format!("{} (SHA-256 {})", cert.subject(), cert.fingerprint());
        if !cert.is_ca() || cert.key_usage_cert_sign() == Some(false) {
            return Err(invalid(format!(
                "holds {who}, which is not a CA certificate (a leaf or intermediate's end-entity?): only a CA can vouch for other clusters' workloads"
            )));
        }
        if now > cert.not_after() {
            return Err(invalid(format!("holds {who}, which expired at {}", cert.not_after())));
        }
        if now < cert.not_before() {
            return Err(invalid(format!(
                "holds {who}, which is not valid before {}",
                cert.not_before()
            )));
        }
        // Strength first: a signature under a weak RSA key cannot be checked, and would read
        // as "not self-signed".
        if let Err(weak) = strength::check_key(&cert.public_key_info(), "its") {
            return Err(invalid(format!("holds {who}, which is too weak to trust: {weak}")));
        }
        if !cert.is_self_signed() && !input.spec.allow_intermediate {
            return Err(invalid(format!(
                "holds {who}, which is not self-signed (issued by {}): a trust anchor is a root. Set allowIntermediate: true on the anchor to trust an intermediate CA",
                cert.issuer()
            )));
        }
        certs.push(cert);
    }
    check_pins(&input.spec.fingerprints, &certs).map_err(invalid)?;
    Ok(certs)
}

/// The PEM blocks of an anchor's source: PEM as it is, or the roots of a SPIFFE bundle (JSON),
/// which [`crate::spiffe_bundle::decode`] checks on the way.
fn anchor_blocks(bytes: &[u8], now: Timestamp) -> Result<Vec<(String, Vec<u8>)>, String> {
    if bytes.trim_ascii_start().starts_with(b"{") {
        let bundle = crate::spiffe_bundle::decode(bytes, None, now)
            .map_err(|refusal| format!("holds a SPIFFE bundle that is refused: {refusal}"))?;
        return Ok(bundle
            .roots
            .iter()
            .map(|c| (pem::CERTIFICATE.to_string(), c.der().to_vec()))
            .collect());
    }
    pem::decode_all(bytes, "the trust anchor").map_err(|_| "holds no PEM certificate".to_string())
}

/// With pins, the source must hold exactly the pinned certificates: one more (a root slipped
/// into the peer's ConfigMap) or one fewer is refused. Fingerprints compare in any case.
fn check_pins(pins: &[String], certs: &[Certificate]) -> Result<(), String> {
    if pins.is_empty() {
        return Ok(());
    }
    let pinned: BTreeSet<String> = pins.iter().map(|p| p.to_ascii_lowercase()).collect();
    let held: BTreeSet<String> = certs.iter().map(|c| c.fingerprint().to_ascii_lowercase()).collect();
    if pinned == held {
        return Ok(());
    }
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    let unpinned: BTreeSet<String> = held.difference(&pinned).cloned().collect();
    let missing: BTreeSet<String> = pinned.difference(&held).cloned().collect();
    let mut what = Vec::new();
    if !unpinned.is_empty() {
        what.push(format!("certificates that are not pinned ({})", list(&unpinned)));
    }
    if !missing.is_empty() {
        what.push(format!("none for the pins {}", list(&missing)));
    }
    Err(format!(
        "does not hold exactly the certificates its fingerprints pin: it holds {}; root-cert.pem is left as it is. If the peer rotated its root, re-run meshca federate (it checks the peer and writes the new pins), or update spec.trustAnchors[].fingerprints",
        what.join(" and ")
    ))
}

/// How the new `root-cert.pem` relates to the old bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Byte for byte the same.
    Unchanged,
    /// There was no readable `root-cert.pem`: written fresh.
    Fresh,
    /// The old bytes are a prefix of the new: anchors appended.
    Grew,
    /// The new bytes are contained in the old: anchors cut out.
    Shrank,
    /// The certificates are a subset, but the bytes are not contained in the old (an anchor was
    /// cut from the middle). istiod versions that compare bytes ignore this; a restart helps.
    Reordered,
}

/// The next `root-cert.pem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembly {
    pub bytes: Vec<u8>,
    pub added: Vec<Certificate>,
    pub removed: Vec<Certificate>,
    /// Fingerprints to record in [`RECORD_ANNOTATION`]: the anchors we appended that are in it.
    pub record: BTreeSet<String>,
    pub change: Change,
    /// Additions held back because this step removes anchors; the next reconcile adds them.
    pub deferred: usize,
}

/// One PEM block of an existing file: its exact byte span and certificate.
struct Block {
    start: usize,
    end: usize,
    certificate: Certificate,
}

/// Splits `bytes` into certificate blocks with their spans (the block and its line ending).
/// None when any block does not parse: such a file is rewritten fresh.
fn blocks(bytes: &[u8]) -> Option<Vec<Block>> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let find = |from: usize, needle: &[u8]| {
        bytes
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = find(at, BEGIN) {
        let end_marker = find(start, END)?;
        // The END line runs to its closing dashes; the span takes its line ending too.
        let close = find(end_marker + END.len(), b"-----")? + 5;
        let mut end = close;
        if bytes.get(end) == Some(&b'\r') {
            end += 1;
        }
        if bytes.get(end) == Some(&b'\n') {
            end += 1;
        }
        let mut certs = Certificate::parse_pem_bundle(&bytes[start..end], "root-cert.pem").ok()?;
        if certs.len() != 1 {
            return None;
        }
        out.push(Block {
            start,
            end,
            certificate: certs.remove(0),
        });
        at = end;
    }
    (!out.is_empty()).then_some(out)
}

/// The next `root-cert.pem`: `existing` with the anchors we appended earlier and no longer want
/// cut out, then (in a separate step, never together with a cut) the own roots and anchors it
/// lacks appended in order. `recorded` is what [`RECORD_ANNOTATION`] said.
pub fn assemble(
    existing: Option<&[u8]>,
    own_roots: &[Certificate],
    anchors: &[Certificate],
    recorded: &BTreeSet<String>,
) -> Assembly {
    let wanted: Vec<&Certificate> = own_roots.iter().chain(anchors.iter()).collect();
    let Some((old, blocks)) = existing.and_then(|b| blocks(b).map(|blocks| (b, blocks))) else {
        let mut bytes = Vec::new();
        let mut written: Vec<&Certificate> = Vec::new();
        for cert in &wanted {
            if !written.contains(cert) {
                bytes.extend_from_slice(cert.to_pem().as_bytes());
                written.push(cert);
            }
        }
        return Assembly {
            bytes,
            added: anchors.to_vec(),
            removed: Vec::new(),
            record: anchors.iter().map(Certificate::fingerprint).collect(),
            change: Change::Fresh,
            deferred: 0,
        };
    };
    let cut: Vec<&Block> = blocks
        .iter()
        .filter(|b| recorded.contains(&b.certificate.fingerprint()) && !wanted.contains(&&b.certificate))
        .collect();
    let present: Vec<&Certificate> = blocks.iter().map(|b| &b.certificate).collect();
    let mut missing: Vec<&Certificate> = Vec::new();
    for cert in &wanted {
        if !present.contains(cert) && !missing.contains(cert) {
            missing.push(cert);
        }
    }
    let mut bytes = Vec::with_capacity(old.len());
    let mut record: BTreeSet<String> = recorded
        .iter()
        .filter(|fp| present.iter().any(|c| &c.fingerprint() == *fp) && anchors.iter().any(|a| &a.fingerprint() == *fp))
        .cloned()
        .collect();
    let (added, deferred) = if cut.is_empty() {
        bytes.extend_from_slice(old);
        // A file without a final line ending would glue the next block onto its last line.
        if !missing.is_empty() && !old.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        for cert in &missing {
            bytes.extend_from_slice(cert.to_pem().as_bytes());
            if anchors.contains(cert) {
                record.insert(cert.fingerprint());
            }
        }
        (missing.iter().map(|c| (*c).clone()).collect(), 0)
    } else {
        let mut at = 0;
        for block in &cut {
            bytes.extend_from_slice(&old[at..block.start]);
            at = block.end;
        }
        bytes.extend_from_slice(&old[at..]);
        (Vec::new(), missing.len())
    };
    let change = if bytes == old {
        Change::Unchanged
    } else if bytes.starts_with(old) {
        Change::Grew
    } else if contains(old, &bytes) {
        Change::Shrank
    } else {
        Change::Reordered
    };
    Assembly {
        bytes,
        added,
        removed: cut.iter().map(|b| b.certificate.clone()).collect(),
        record,
        change,
        deferred,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses [`RECORD_ANNOTATION`]'s value.
pub fn parse_record(value: Option<&str>) -> BTreeSet<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// [`RECORD_ANNOTATION`]'s value for a record.
pub fn format_record(record: &BTreeSet<String>) -> String {
    record.iter().cloned().collect::<Vec<_>>().join(",")
}

/// Puts the anchors into a planned bundle: `root-cert.pem` becomes the assembly of what the
/// plan would write (the existing file, or the fresh own root) with the anchors, and the bundle
/// is verified again as istiod would load it. `changed` also covers a changed record.
pub fn apply(
    mut plan: CacertsPlan,
    target: &Target,
    recorded: &BTreeSet<String>,
    anchors: &CheckedAnchors,
    now: Timestamp,
) -> Result<(CacertsPlan, Assembly), Problem> {
    let own_roots = [plan.contents.anchor.clone()];
    let base = plan.data.get(ROOT_CERT).cloned();
    let assembly = assemble(base.as_deref(), &own_roots, &anchors.certificates(), recorded);
    plan.data.insert(ROOT_CERT.to_string(), assembly.bytes.clone());
    plan.contents = verify_bundle(&plan.data, now)?;
    let existing = match target {
        Target::Present { data, .. } => Some(data),
        Target::Absent => None,
    };
    plan.changed = existing != Some(&plan.data) || (existing.is_some() && &assembly.record != recorded);
    Ok((plan, assembly))
}

/// What istiod needs to pick up a changed `root-cert.pem`, for the Ready message.
pub const RELOAD_NOTE: &str = "istiod reloads a changed root-cert.pem only with ISTIO_MULTIROOT_MESH=true (and only a byte superset or subset of what it loaded); without it, restart istiod";

/// The mesh config istiod still needs for `anchors`, and what works where.
pub fn mesh_config(trust_domain: &str, anchors: &[CheckedAnchor]) -> MeshConfigAdvice {
    use serde_json::{Value, json};
    let mut aliases: Vec<String> = Vec::new();
    for td in anchors.iter().flat_map(|a| a.trust_domains.iter()) {
        if td != trust_domain && !aliases.contains(td) {
            aliases.push(td.clone());
        }
    }
    let mut mesh = serde_json::Map::new();
    mesh.insert("trustDomain".into(), json!(trust_domain));
    if !aliases.is_empty() {
        mesh.insert("trustDomainAliases".into(), json!(aliases));
    }
    // One entry per certificate: istiod checks only the first PEM block of each entry.
    let entries: Vec<Value> = anchors
        .iter()
        .flat_map(|a| {
            a.certificates.iter().map(move |c| {
                let mut entry = serde_json::Map::new();
                entry.insert("pem".into(), json!(c.to_pem()));
                if !a.trust_domains.is_empty() {
                    entry.insert("trustDomains".into(), json!(a.trust_domains));
                }
                Value::Object(entry)
            })
        })
        .collect();
    if !entries.is_empty() {
        mesh.insert("caCertificates".into(), Value::Array(entries));
        mesh.insert(
            "defaultConfig".into(),
            json!({"proxyMetadata": {"PROXY_CONFIG_XDS_AGENT": "true"}}),
        );
    }
    let snippet = serde_yaml::to_string(&json!({ "meshConfig": Value::Object(mesh) })).unwrap_or_default();
    let guidance = if anchors.is_empty() {
        "No trust anchors: every workload chains to this cluster's own root. Set meshConfig.trustDomain as shown."
            .to_string()
    } else {
        format!(
            "root-cert.pem of cacerts already holds the {n} anchor certificate(s) after this cluster's root; istiod sends the whole file as the last element of its answer to every certificate request, and the workload keeps all of it as its roots (istio-agent; ambient's ztunnel reads the same answer). istiod takes a grown or shrunk root-cert.pem only with ISTIO_MULTIROOT_MESH=true, otherwise not before a restart; so set it on istiod before the anchors are added. A workload gets the new roots with its next certificate; sooner only through the mesh trust bundle istiod pushes with ISTIO_MULTIROOT_MESH=true to proxies with PROXY_CONFIG_XDS_AGENT=true (in the snippet), which also carries caCertificates. caCertificates alone reaches sidecars only. trustDomainAliases matters when peers use other trust domains; ztunnel does not honour it, so ambient across clusters needs one trust domain (and, per istio/istio#61719, is reported to work only with one shared root).",
            n = anchors.iter().map(|a| a.certificates.len()).sum::<usize>()
        )
    };
    MeshConfigAdvice { snippet, guidance }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::api::istio_cacerts::KeyRef;
    use crate::pki::sign::self_signed_root;
    use jiff::SignedDuration;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn root() -> Certificate {
        self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(1))
            .unwrap()
            .0
    }

    fn fps(certs: &[&Certificate]) -> BTreeSet<String> {
        certs.iter().map(|c| c.fingerprint()).collect()
    }

    fn pems(certs: &[&Certificate]) -> Vec<u8> {
        certs.iter().map(|c| c.to_pem()).collect::<String>().into_bytes()
    }

    fn input(name: &str, fetched: Fetched) -> AnchorInput {
        AnchorInput {
            spec: TrustAnchor {
                name: name.into(),
                trust_domains: vec!["b.example".into()],
                config_map_key_ref: Some(KeyRef {
                    name: "peer".into(),
                    key: "root-cert.pem".into(),
                }),
                secret_key_ref: None,
                spiffe_bundle_endpoint: None,
                fingerprints: vec![],
                allow_intermediate: false,
            },
            source: "ConfigMap ns/peer key root-cert.pem".into(),
            fetched,
            endpoint: None,
        }
    }

    #[test]
    fn the_file_only_ever_grows_at_its_end_or_shrinks_by_cuts() {
        let (own, b, c) = (root(), root(), root());
        let none = BTreeSet::new();
        // (case, existing, anchors, recorded, expected bytes, change)
        type Case<'a> = (
            &'a str,
            Option<Vec<u8>>,
            Vec<Certificate>,
            BTreeSet<String>,
            Vec<u8>,
            Change,
        );
        let cases: Vec<Case> = vec![
            // No file yet: own root first, then the anchors.
            (
                "fresh",
                None,
                vec![b.clone()],
                none.clone(),
                pems(&[&own, &b]),
                Change::Fresh,
            ),
            // Nothing to do: not a byte moves.
            (
                "unchanged",
                Some(pems(&[&own, &b])),
                vec![b.clone()],
                fps(&[&b]),
                pems(&[&own, &b]),
                Change::Unchanged,
            ),
            // An anchor is appended after what is there.
            (
                "added",
                Some(pems(&[&own])),
                vec![b.clone()],
                none.clone(),
                pems(&[&own, &b]),
                Change::Grew,
            ),
            // Another is appended after the first, in the order added.
            (
                "added second",
                Some(pems(&[&own, &b])),
                vec![c.clone(), b.clone()],
                fps(&[&b]),
                pems(&[&own, &b, &c]),
                Change::Grew,
            ),
            // The last anchor is cut off the end: a byte subset.
            (
                "removed last",
                Some(pems(&[&own, &b, &c])),
                vec![b.clone()],
                fps(&[&b, &c]),
                pems(&[&own, &b]),
                Change::Shrank,
            ),
            // A middle anchor is cut out: a subset of certificates, not of bytes.
            (
                "removed middle",
                Some(pems(&[&own, &b, &c])),
                vec![c.clone()],
                fps(&[&b, &c]),
                pems(&[&own, &c]),
                Change::Reordered,
            ),
            // A root someone added by hand (not recorded as ours) is never cut.
            (
                "foreign kept",
                Some(pems(&[&own, &b])),
                vec![],
                none.clone(),
                pems(&[&own, &b]),
                Change::Unchanged,
            ),
            // Cut and add together would be neither superset nor subset: the cut goes first.
            (
                "cut before add",
                Some(pems(&[&own, &b])),
                vec![c.clone()],
                fps(&[&b]),
                pems(&[&own]),
                Change::Shrank,
            ),
            // An unreadable file is rewritten.
            (
                "garbage",
                Some(b"garbage".to_vec()),
                vec![b.clone()],
                none.clone(),
                pems(&[&own, &b]),
                Change::Fresh,
            ),
        ];
        for (name, existing, anchors, recorded, expected, change) in cases {
            let got = assemble(existing.as_deref(), std::slice::from_ref(&own), &anchors, &recorded);
            assert_eq!(
                String::from_utf8_lossy(&got.bytes),
                String::from_utf8_lossy(&expected),
                "{name}"
            );
            assert_eq!(got.change, change, "{name}");
        }
    }

    #[test]
    fn blocks_keep_their_bytes_however_they_were_written() {
        let (own, b) = (root(), root());
        // CRLF line endings, a comment, no final newline: all kept as they are.
        let written = format!("# mesh root\r\n{}", own.to_pem().replace('\n', "\r\n"));
        let written = written.trim_end().to_string();
        let grown = assemble(
            Some(written.as_bytes()),
            std::slice::from_ref(&own),
            std::slice::from_ref(&b),
            &BTreeSet::new(),
        );
        assert_eq!(grown.change, Change::Grew);
        assert!(grown.bytes.starts_with(written.as_bytes()));
        assert_eq!(grown.record, fps(&[&b]));
        let shrunk = assemble(Some(&grown.bytes), std::slice::from_ref(&own), &[], &grown.record);
        assert_eq!(shrunk.change, Change::Shrank);
        assert_eq!(shrunk.removed, vec![b]);
        // The line ending added before the appended block stays: the file is the old one plus
        // a newline, contained in the grown file.
        assert_eq!(shrunk.bytes, format!("{written}\n").into_bytes());
        assert!(contains(&grown.bytes, &shrunk.bytes));
        assert!(shrunk.record.is_empty());
    }

    #[test]
    fn the_deferred_addition_follows_in_the_next_step() {
        let (own, b, c) = (root(), root(), root());
        let first = assemble(
            Some(&pems(&[&own, &b])),
            std::slice::from_ref(&own),
            std::slice::from_ref(&c),
            &fps(&[&b]),
        );
        assert_eq!((first.change, first.deferred), (Change::Shrank, 1));
        let second = assemble(
            Some(&first.bytes),
            std::slice::from_ref(&own),
            std::slice::from_ref(&c),
            &first.record,
        );
        assert_eq!((second.change, second.deferred), (Change::Grew, 0));
        assert_eq!(second.bytes, pems(&[&own, &c]));
    }

    #[test]
    fn bad_anchors_are_named_and_never_dropped() {
        use crate::pki::sign::tests::istiod_csr_with_key;
        let own = root();
        let peer = root();
        let (expired, _) = self_signed_root(
            &RootBootstrap {
                duration: "1h".into(),
                ..Default::default()
            },
            now() - SignedDuration::from_hours(10),
        )
        .unwrap();
        let (future, _) = self_signed_root(&RootBootstrap::default(), now() + SignedDuration::from_hours(10)).unwrap();
        let (_, key) = istiod_csr_with_key();
        let key_pem = key.to_pem();
        let leaf = leaf_certificate();
        let found = |b: Vec<u8>| Fetched::Found(b);
        // (case, fetched, expected reason, text the message must hold)
        let cases: Vec<(&str, Fetched, &str, &str)> = vec![
            (
                "missing object",
                Fetched::ObjectNotFound,
                reason::TRUST_ANCHOR_NOT_FOUND,
                "does not exist",
            ),
            (
                "missing key",
                Fetched::KeyNotFound,
                reason::TRUST_ANCHOR_NOT_FOUND,
                "key does not exist",
            ),
            (
                "two sources",
                Fetched::NotExactlyOneSource,
                reason::INVALID_TRUST_ANCHOR,
                "exactly one",
            ),
            (
                "garbage",
                found(b"garbage".to_vec()),
                reason::INVALID_TRUST_ANCHOR,
                "no PEM",
            ),
            (
                "a key",
                found(key_pem.clone().into_bytes()),
                reason::INVALID_TRUST_ANCHOR,
                "PRIVATE KEY",
            ),
            (
                "a leaf",
                found(leaf.to_pem().into_bytes()),
                reason::INVALID_TRUST_ANCHOR,
                "not a CA",
            ),
            (
                "expired",
                found(expired.to_pem().into_bytes()),
                reason::INVALID_TRUST_ANCHOR,
                "expired",
            ),
            (
                "not yet valid",
                found(future.to_pem().into_bytes()),
                reason::INVALID_TRUST_ANCHOR,
                "not valid before",
            ),
        ];
        for (name, fetched, expected, text) in cases {
            let inputs = vec![input("good", found(peer.to_pem().into_bytes())), input("bad", fetched)];
            let err = check_anchors(&inputs, std::slice::from_ref(&own), now()).unwrap_err();
            assert_eq!(err.reason, expected, "{name}");
            assert!(
                err.message.contains("\"bad\"") && err.message.contains(text),
                "{name}: {}",
                err.message
            );
            assert!(
                !err.message.contains(&key_pem[30..60]),
                "{name}: key material in a message"
            );
        }
        let dup = vec![
            input("b", found(peer.to_pem().into_bytes())),
            input("b", found(peer.to_pem().into_bytes())),
        ];
        assert!(
            check_anchors(&dup, &[], now())
                .unwrap_err()
                .message
                .contains("two trust anchors are named")
        );
    }

    /// An anchor is a self-signed root with a strong key (an intermediate only when the entry
    /// allows one), and with pins the source holds exactly the pinned certificates: a root
    /// slipped in beside them, or a pinned one gone, is refused and nothing of it is used.
    #[test]
    fn anchors_are_strong_self_signed_roots_holding_exactly_their_pins() {
        let own = root();
        let (peer, peer_key) =
            self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(1)).unwrap();
        let other = root();
        let intermediate = certificate_under(&peer, &peer_key, Some(0));
        let weak = crate::istio::testing::weak_root().0;
        let with = |fetched: &[&Certificate], pins: &[&Certificate], allow_intermediate: bool| {
            let mut i = input("peer", Fetched::Found(pems(fetched)));
            i.spec.fingerprints = pins.iter().map(|c| c.fingerprint().to_uppercase()).collect();
            i.spec.allow_intermediate = allow_intermediate;
            check_anchors(&[i], std::slice::from_ref(&own), now())
        };
        let refused = |result: Result<CheckedAnchors, Problem>| result.unwrap_err().message;
        // (case, outcome: Ok(certificates used) or Err(text of the refusal))
        type Case<'a> = (
            &'a str,
            Result<Vec<Certificate>, String>,
            Result<Vec<Certificate>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "a strong root",
                with(&[&peer], &[], false)
                    .map(|c| c.certificates())
                    .map_err(|p| p.message),
                Ok(vec![peer.clone()]),
            ),
            (
                "a weak root",
                Err(refused(with(&[&weak], &[], false))),
                Err("too weak to trust"),
            ),
            (
                "an intermediate",
                Err(refused(with(&[&intermediate], &[], false))),
                Err("not self-signed"),
            ),
            (
                "an intermediate, allowed",
                with(&[&intermediate], &[], true)
                    .map(|c| c.certificates())
                    .map_err(|p| p.message),
                Ok(vec![intermediate.clone()]),
            ),
            (
                "pinned, as pinned (any case)",
                with(&[&peer, &other], &[&peer, &other], false)
                    .map(|c| c.certificates())
                    .map_err(|p| p.message),
                Ok(vec![peer.clone(), other.clone()]),
            ),
            (
                "a root slipped in beside the pin",
                Err(refused(with(&[&peer, &other], &[&peer], false))),
                Err("not pinned"),
            ),
            (
                "a pinned root gone",
                Err(refused(with(&[&peer], &[&peer, &other], false))),
                Err("none for the pins"),
            ),
            (
                "another root than pinned",
                Err(refused(with(&[&other], &[&peer], false))),
                Err("re-run meshca federate"),
            ),
        ];
        for (case, got, expected) in cases {
            match expected {
                Ok(certs) => assert_eq!(got, Ok(certs), "{case}"),
                Err(text) => {
                    let message = got.expect_err(case);
                    assert!(
                        message.contains(text) && message.contains("\"peer\""),
                        "{case}: {message}"
                    );
                }
            }
        }
    }

    #[test]
    fn duplicates_of_the_own_root_or_of_each_other_are_noted_and_kept_once() {
        let (own, b, c) = (root(), root(), root());
        let inputs = vec![
            input("b", Fetched::Found(pems(&[&own, &b]))),
            // A peer mid-rotation publishes two roots.
            input("c", Fetched::Found(pems(&[&b, &c]))),
        ];
        let checked = check_anchors(&inputs, std::slice::from_ref(&own), now()).unwrap();
        assert_eq!(checked.certificates(), vec![b.clone(), c.clone()]);
        assert_eq!(checked.notes.len(), 2);
        assert!(checked.notes[0].contains("own root"), "{:?}", checked.notes);
        assert!(
            checked.notes[1].contains("already in trust anchor \"b\""),
            "{:?}",
            checked.notes
        );
    }

    #[test]
    fn mesh_config_lists_each_anchor_certificate_with_its_trust_domains() {
        let b = root();
        let anchors = vec![CheckedAnchor {
            name: "b".into(),
            trust_domains: vec!["b.example".into(), "a.example".into()],
            certificates: vec![b.clone()],
        }];
        let advice = mesh_config("a.example", &anchors);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&advice.snippet).unwrap();
        let mesh = &parsed["meshConfig"];
        assert_eq!(mesh["trustDomain"], "a.example");
        // Our own trust domain is no alias of itself.
        assert_eq!(
            mesh["trustDomainAliases"],
            serde_yaml::to_value(vec!["b.example"]).unwrap()
        );
        assert_eq!(mesh["caCertificates"][0]["pem"], b.to_pem().as_str());
        assert_eq!(mesh["defaultConfig"]["proxyMetadata"]["PROXY_CONFIG_XDS_AGENT"], "true");
        assert!(advice.guidance.contains("ISTIO_MULTIROOT_MESH=true"));
        let alone = mesh_config("a.example", &[]);
        assert!(!alone.snippet.contains("caCertificates"));
    }

    fn leaf_certificate() -> Certificate {
        // Any non-CA certificate will do: istiod's intermediate CSR signed as an end entity.
        let (root, key) = self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(1)).unwrap();
        certificate_under(&root, &key, None)
    }

    /// istiod's intermediate CSR signed by `root`: a CA with `path_len`, or (None) an end entity.
    fn certificate_under(root: &Certificate, key: &crate::pki::SigningKey, path_len: Option<u8>) -> Certificate {
        use crate::pki::policy::SigningPlan;
        use crate::pki::sign::{CaSigner, sign_csr, tests::istiod_csr_with_key};
        let (csr, _) = istiod_csr_with_key();
        let plan = SigningPlan {
            ca_path_len: path_len,
            not_before: now() - SignedDuration::from_hours(1),
            not_after: now() + SignedDuration::from_hours(1),
            requested: std::time::Duration::from_secs(1),
            clamped: None,
            name_constraints: None,
        };
        sign_csr(&csr, &plan, &CaSigner { certificate: root, key }).unwrap()
    }
}

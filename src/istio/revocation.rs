//! `ca-crl.pem` for istiod (`spec.revocation`): one CRL for every CA of `cert-chain.pem`, or
//! none at all. Pure: [`apply`] puts the CRL set into a planned bundle and says what the
//! `CRLsCurrent` condition, `status.crl` and the requeue become.
//!
//! Why all or nothing: istiod refuses a whole `cacerts` update whose `ca-crl.pem` lacks a CRL
//! signed by any certificate of `cert-chain.pem` (`missing CRL signed by certificates`), which
//! would leave a renewal or a rotation stuck behind it. And why never an expired CRL: a TLS
//! stack that checks CRLs refuses every handshake under a CA whose CRL has lapsed.
//!
//! Where each CRL comes from, for each CA of the chain:
//! - the intermediate's is signed here with `ca-key.pem`, the key being written; it revokes
//!   nothing (workload certificates live a day and are not revoked one by one);
//! - the backend's CA, when the backend holds its key (the local CA), signs one listing the
//!   issuer's `spec.revoked`;
//! - any other CA's comes fetched (the issuer's `spec.crlFrom`, a backend's published CRL).
//!
//! A CRL already in `ca-crl.pem` is kept while it is outside its refresh window and still says
//! what it should; one that cannot be replaced in time is kept until it expires, with the
//! condition escalating, and is never replaced by nothing before that.

use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeSet;

use super::cacerts::{CA_CERT, CA_CRL, CA_KEY, CERT_CHAIN, CacertsPlan, Target};
use crate::api::issuer::{RevocationReason, RevokedCertificate};
use crate::api::istio_cacerts::{CrlWindow, Revocation, TrackedCrl};
use crate::duration::parse_go_duration;
use crate::pki::Certificate;
use crate::pki::crl::{self, Crl, CrlSigner, CrlSpec, Reason, Revoked, serial_number};
use crate::pki::key::SigningKey;
use crate::pki::sign::CaSigner;

/// The condition that says whether `ca-crl.pem` is complete and fresh (only with
/// `spec.revocation.enabled`).
pub const CRLS_CURRENT: &str = "CRLsCurrent";

/// Reasons of [`CRLS_CURRENT`] and of Ready when the intermediate itself is revoked.
pub mod reason {
    /// Every CA of the chain has a CRL outside its refresh window.
    pub const CURRENT: &str = "Current";
    /// Some CA has no CRL that may be written: `ca-crl.pem` is not written at all.
    pub const UNAVAILABLE: &str = "CRLUnavailable";
    /// A CRL is past its refresh time and could not be replaced: it stays until it expires.
    pub const REFRESH_DUE: &str = "CRLRefreshDue";
    /// As REFRESH_DUE, with less than half the refresh window left.
    pub const EXPIRING: &str = "CRLExpiring";
    /// `spec.revocation` cannot be read (a bad duration).
    pub const INVALID_SPEC: &str = "InvalidRevocationSpec";
    /// Revocation is off, but istiod still distributes the CRLs it loaded.
    pub const STALE_CRLS_DISTRIBUTED: &str = "StaleCRLsDistributed";
    /// Ready's reason: the issuer's `spec.revoked` lists the intermediate istiod signs with.
    pub const INTERMEDIATE_REVOKED: &str = "IntermediateRevoked";
    /// Ready's reason: a new chain would be written without a CRL for every one of its CAs,
    /// while istiod holds CRLs; the write is held (see [`super::apply`]).
    pub const CRLS_INCOMPLETE: &str = "CRLsIncomplete";
}

/// What observe found for revocation, from the issuer that signed the source.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// `MeshCAIssuer ns/name` or `ClusterMeshCAIssuer name`, for messages.
    pub issuer: String,
    /// The issuer's `spec.revoked`, read.
    pub revoked: Vec<Revoked>,
    /// The backend's CA key, when the backend signs CRLs here.
    pub signer: Option<CrlSigner>,
    /// CRLs fetched for CAs whose keys are elsewhere (`spec.crlFrom`, the backend's own).
    pub fetched: Vec<Crl>,
    /// What could not be read or had to be refused; shown in the condition.
    pub problems: Vec<String>,
    /// `status.crl` as last written: names the CAs of retired CRLs kept in place.
    pub tracked: Vec<TrackedCrl>,
    /// Peers' CRLs, from the bundles their SPIFFE bundle endpoints serve ([`peers`]).
    pub peers: Vec<PeerCrls>,
}

/// What one peer's bundle carries for revocation, with the roots it came with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCrls {
    /// The trust anchor it came through.
    pub anchor: String,
    pub roots: Vec<Certificate>,
    pub cas: Vec<Certificate>,
    pub crls: Vec<Crl>,
}

/// The CRLs in the bundles last accepted from peers' SPIFFE bundle endpoints (see
/// [`crate::spiffe_bundle::Revocation`]), and what could not be read of them. A bootstrap
/// bundle carries none.
pub fn peers(anchors: &[super::trust_bundle::AnchorInput], now: Timestamp) -> (Vec<PeerCrls>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for anchor in anchors.iter().filter(|a| a.endpoint.is_some()) {
        let super::trust_bundle::Fetched::Found(body) = &anchor.fetched else {
            continue;
        };
        let Ok(bundle) = crate::spiffe_bundle::decode(body, None, now) else {
            continue;
        };
        match bundle.revocation {
            Some(Ok(r)) => out.push(PeerCrls {
                anchor: anchor.spec.name.clone(),
                roots: bundle.roots,
                cas: r.cas,
                crls: r.crls,
            }),
            Some(Err(why)) => problems.push(format!("trust anchor {}: {why}", anchor.spec.name)),
            None => {}
        }
    }
    (out, problems)
}

/// The issuer's `spec.revoked`, read: entries without `revokedAt` date from `changed` (when
/// the list was last written), else from the epoch's start of the CRL (never the future). An
/// entry that cannot be read is left out and named.
pub fn revoked(entries: &[RevokedCertificate], changed: Option<Timestamp>) -> (Vec<Revoked>, Vec<String>) {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for entry in entries {
        let serial = match crl::parse_serial(&entry.serial_number) {
            Ok(serial) => serial,
            Err(why) => {
                problems.push(format!("spec.revoked: {why}; that entry is left out"));
                continue;
            }
        };
        let revoked_at = match entry.revoked_at.as_deref().map(str::parse::<Timestamp>) {
            Some(Ok(at)) => at,
            Some(Err(_)) => {
                problems.push(format!(
                    "spec.revoked: revokedAt of serial {} is not an RFC 3339 time; the time the list was changed is used",
                    entry.serial_number
                ));
                changed.unwrap_or(Timestamp::UNIX_EPOCH)
            }
            None => changed.unwrap_or(Timestamp::UNIX_EPOCH),
        };
        let reason = match entry.reason {
            RevocationReason::Unspecified => Reason::Unspecified,
            RevocationReason::KeyCompromise => Reason::KeyCompromise,
            RevocationReason::CaCompromise => Reason::CaCompromise,
            RevocationReason::Superseded => Reason::Superseded,
            RevocationReason::CessationOfOperation => Reason::CessationOfOperation,
        };
        out.push(Revoked {
            serial,
            reason,
            revoked_at,
        });
    }
    (out, problems)
}

/// `spec.revocation`, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub validity: SignedDuration,
    pub refresh_before: SignedDuration,
}

impl Settings {
    /// Reads `crlValidity` and `refreshBefore` (default a third of the validity).
    pub fn of(spec: &Revocation) -> Result<Self, String> {
        let read = |field: &str, text: &str| {
            parse_go_duration(text)
                .ok()
                .and_then(|d| SignedDuration::try_from(d).ok())
                .ok_or_else(|| format!("spec.revocation.{field} {text:?} is not a Go duration (e.g. 72h)"))
        };
        let validity = read("crlValidity", &spec.crl_validity)?;
        if validity < SignedDuration::from_secs(1) {
            return Err(format!(
                "spec.revocation.crlValidity {} is shorter than 1s",
                spec.crl_validity
            ));
        }
        let refresh_before = match &spec.refresh_before {
            Some(text) => read("refreshBefore", text)?,
            None => validity / 3,
        };
        if refresh_before <= SignedDuration::ZERO || refresh_before >= validity {
            return Err(format!(
                "spec.revocation.refreshBefore ({refresh_before:#}) must be above zero and below crlValidity ({validity:#})"
            ));
        }
        Ok(Self {
            validity,
            refresh_before,
        })
    }
}

/// The CRL set of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `CRLsCurrent`: (ok, reason, message).
    pub condition: (bool, &'static str, String),
    /// `status.crl`: what `ca-crl.pem` holds after the write.
    pub tracked: Vec<TrackedCrl>,
    /// When to look again: the next refresh or escalation time, or soon when one is overdue.
    pub requeue_at: Option<Timestamp>,
    /// Set when the issuer's `spec.revoked` lists the intermediate being written.
    pub intermediate_revoked: Option<String>,
    /// Set when the plan must not be written: it changes `cert-chain.pem` without a CRL for
    /// every CA of the new chain, while the target holds CRLs. istiod keeps distributing the
    /// CRLs it loaded when `ca-crl.pem` goes (Istio #61073), and Envoy refuses every
    /// certificate under a CA of the new chain that has none: the mesh would break. The old
    /// chain stays until a complete set can be written.
    pub hold: Option<String>,
}

/// The ConfigMap istiod writes its CRLs into, in every namespace (`PILOT_CRL_CONFIGMAP`).
pub const DISTRIBUTED_CONFIG_MAP: &str = "istio-ca-crl";

/// `CRLsCurrent` once revocation is off: istiod keeps handing its sidecars the CRLs it loaded
/// when `ca-crl.pem` goes (Istio #61073), nobody refreshes them any more, and once one lapses
/// Envoy refuses every certificate under its CA. Only a restart of istiod clears them. `None`:
/// istiod distributes none, nothing to say.
pub fn after_turned_off(distributed: &[Crl], namespace: &str, now: Timestamp) -> Option<(bool, &'static str, String)> {
    let lapse = distributed.iter().filter_map(Crl::next_update).min()?;
    let when = if lapse <= now {
        format!("one lapsed at {lapse}: Envoy sidecars already refuse every certificate under its CA")
    } else {
        format!(
            "the first lapses at {lapse} ({:#} from now), after which Envoy sidecars refuse every certificate under its CA",
            lapse.duration_since(now)
        )
    };
    Some((
        false,
        reason::STALE_CRLS_DISTRIBUTED,
        format!(
            "spec.revocation is off, but istiod still distributes {} CRLs (ConfigMap {namespace}/{DISTRIBUTED_CONFIG_MAP}): it keeps the CRLs it loaded when ca-crl.pem goes (istio/istio#61073) and nothing refreshes them; {when}. Restart istiod now: kubectl -n {namespace} rollout restart deployment/istiod",
            distributed.len()
        ),
    ))
}

/// How often CRLs fetched from elsewhere are read again.
const FETCH_POLL: SignedDuration = SignedDuration::from_mins(5);

/// How often a CRL that is due but cannot be replaced is tried again.
const RETRY_OVERDUE: SignedDuration = SignedDuration::from_secs(30);

/// Where one CA's CRL came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The one in place, still good.
    Kept,
    /// Signed now.
    Signed,
    /// Fetched, newer than the one in place.
    Fetched,
    /// The one in place, past its refresh time: nothing better could be had.
    Overdue,
}

/// Puts `ca-crl.pem` into `plan` (or takes it out) as `spec` says, and re-judges whether the
/// plan changes the target. `None`: revocation is off, and `ca-crl.pem` is not written.
pub fn apply(
    mut plan: CacertsPlan,
    target: &Target,
    spec: Option<&Revocation>,
    inputs: Option<&Inputs>,
    now: Timestamp,
) -> (CacertsPlan, Option<Verdict>) {
    let Some(spec) = spec.filter(|s| s.enabled) else {
        return (plan, None);
    };
    let existing = match target {
        Target::Present { data, .. } => Some(data),
        Target::Absent => None,
    };
    let in_place = existing
        .and_then(|d| d.get(CA_CRL))
        .and_then(|pem| Crl::parse_pem_bundle(pem, "ca-crl.pem").ok())
        .unwrap_or_default();
    let mut verdict = match Settings::of(spec) {
        // The CRLs in place stay as they are: a typo in the spec must not strip them.
        Err(why) => {
            match existing.and_then(|d| d.get(CA_CRL)) {
                Some(pem) => plan.data.insert(CA_CRL.to_string(), pem.clone()),
                None => plan.data.remove(CA_CRL),
            };
            Verdict {
                condition: (false, reason::INVALID_SPEC, why),
                tracked: Vec::new(),
                requeue_at: None,
                intermediate_revoked: None,
                hold: None,
            }
        }
        Ok(settings) => {
            let default_inputs = Inputs::default();
            let inputs = inputs.unwrap_or(&default_inputs);
            let retiring = retiring(existing, &plan);
            let (pem, verdict) = crl_set(&plan, &in_place, inputs, &settings, retiring.as_ref(), now);
            match pem {
                Some(pem) => plan.data.insert(CA_CRL.to_string(), pem),
                None => plan.data.remove(CA_CRL),
            };
            verdict
        }
    };
    // Judged anew on the whole data, as the plan's own steps judge it: the plan was made
    // without ca-crl.pem, so against a target holding one it always looked changed.
    plan.changed = existing != Some(&plan.data);
    let held_crls = existing.and_then(|d| d.get(CA_CRL)).is_some_and(|pem| !pem.is_empty());
    let chain_changes = existing.and_then(|d| d.get(CERT_CHAIN)) != plan.data.get(CERT_CHAIN);
    let written = plan
        .data
        .get(CA_CRL)
        .and_then(|pem| Crl::parse_pem_bundle(pem, "ca-crl.pem").ok())
        .unwrap_or_default();
    let uncovered: Vec<String> = plan
        .contents
        .chain
        .iter()
        .filter(|ca| !written.iter().any(|c| c.is_signed_by(ca)))
        .map(Certificate::subject)
        .collect();
    if held_crls && chain_changes && !uncovered.is_empty() {
        verdict.hold = Some(format!(
            "the new intermediate {} is not written: no CRL can be written for {} ({}), and istiod keeps distributing the CRLs it already loaded (Istio #61073), so Envoy sidecars would refuse every certificate under a CA without one. The current intermediate stays until a CRL for every CA of the new chain can be had",
            plan.contents.intermediate.subject(),
            uncovered.join(", "),
            verdict.condition.2
        ));
    }
    (plan, Some(verdict))
}

/// One CA of the chain with the CRL chosen for it.
type Chosen = (Certificate, Crl, Origin);

/// One CRL per CA of the chain, or `None` and why.
fn crl_set(
    plan: &CacertsPlan,
    in_place: &[Crl],
    inputs: &Inputs,
    settings: &Settings,
    retiring: Option<&(Certificate, SigningKey)>,
    now: Timestamp,
) -> (Option<Vec<u8>>, Verdict) {
    let chain = &plan.contents.chain;
    let intermediate_key = plan.data.get(CA_KEY).and_then(|pem| SigningKey::from_pem(pem).ok());
    let mut chosen: Vec<Chosen> = Vec::new();
    // CAs whose CRL comes from elsewhere (Vault, crlFrom): looked at again every FETCH_POLL,
    // so a revocation made there reaches ca-crl.pem within minutes.
    let mut fetched_cas = 0;
    let mut missing: Vec<String> = Vec::new();
    let mut problems = inputs.problems.clone();
    for (i, ca) in chain.iter().enumerate() {
        let current = in_place
            .iter()
            .filter(|c| c.is_signed_by(ca))
            .max_by_key(|c| c.number());
        // What this CA's CRL must list when it is signed here.
        let key: Option<(&SigningKey, Vec<Revoked>)> = if i == 0 {
            intermediate_key.as_ref().map(|k| (k, Vec::new()))
        } else {
            inputs
                .signer
                .as_ref()
                .filter(|s| s.certificate == *ca)
                .map(|s| (s.key.as_ref(), inputs.revoked.clone()))
        };
        let pick = match key {
            Some((key, revoked)) => signed_here(ca, key, &revoked, current, settings, now, &mut problems),
            None => {
                fetched_cas += 1;
                fetched(ca, current, &inputs.fetched, settings, now, &mut problems)
            }
        };
        // Nothing better: the one in place, until it expires.
        let pick = pick.or_else(|| {
            current
                .filter(|c| c.next_update().is_some_and(|n| n > now))
                .map(|c| (c.clone(), Origin::Overdue))
        });
        match pick {
            Some((crl, origin)) => chosen.push((ca.clone(), crl, origin)),
            None => missing.push(ca.subject()),
        }
    }

    problems.extend(strays(chain, &inputs.fetched));
    let extras = beyond_the_chain(plan, in_place, inputs, &chosen, retiring, now, &mut problems);
    let intermediate_revoked = intermediate_revoked(plan, &chosen, inputs);
    let problems_text = if problems.is_empty() {
        String::new()
    } else {
        format!(": {}", problems.join("; "))
    };
    if !missing.is_empty() {
        return (None, unavailable(&missing, &problems_text, intermediate_revoked, now));
    }

    let mut tracked: Vec<TrackedCrl> = chosen
        .iter()
        .map(|(ca, crl, _)| tracked(ca, crl, settings, now))
        .collect();
    let condition = condition(&chosen, &tracked, &extras, &problems_text, settings, now);
    // Extras are looked at again when they lapse, to take them out.
    let requeue_at = requeue_at(&chosen, fetched_cas > 0, settings, now)
        .into_iter()
        .chain(extras.iter().filter_map(|(crl, _)| crl.next_update()))
        .filter(|t| *t > now)
        .min();
    let pem: String = chosen
        .iter()
        .map(|(_, crl, _)| crl.to_pem())
        .chain(extras.iter().map(|(crl, _)| crl.to_pem()))
        .collect();
    tracked.extend(extras.into_iter().map(|(_, t)| t));
    (
        Some(pem.into_bytes()),
        Verdict {
            condition,
            tracked,
            requeue_at,
            intermediate_revoked,
            hold: None,
        },
    )
}

/// The intermediate the target holds and its key, when the plan replaces it: its CRL is
/// signed as it goes (see [`retired`]). Not when the target is adopted: its CA is not ours.
fn retiring(
    existing: Option<&super::secret_data::SecretData>,
    plan: &CacertsPlan,
) -> Option<(Certificate, SigningKey)> {
    let data = existing.filter(|_| !plan.adopting)?;
    let certificate = Certificate::parse_pem_bundle(data.get(CA_CERT)?, "ca-cert.pem")
        .ok()?
        .into_iter()
        .next()?;
    if certificate == plan.contents.intermediate {
        return None;
    }
    let key = SigningKey::from_pem(data.get(CA_KEY)?).ok()?;
    Some((certificate, key))
}

/// A fetched CRL no CA of the chain signed is named: a forgery, or a CRL of another CA.
fn strays<'a>(chain: &'a [Certificate], fetched: &'a [Crl]) -> impl Iterator<Item = String> + 'a {
    fetched
        .iter()
        .filter(|c| !chain.iter().any(|ca| c.is_signed_by(ca)))
        .map(|stray| {
            format!(
                "a fetched CRL naming issuer {} is signed by no CA of cert-chain.pem: not used",
                stray.issuer()
            )
        })
}

/// The CRLs written after the chain's own, each with its `status.crl` entry: peers' (see
/// [`from_peers`]), then those of CAs no longer in the chain (see [`retire`] and [`retired`]).
fn beyond_the_chain(
    plan: &CacertsPlan,
    in_place: &[Crl],
    inputs: &Inputs,
    chosen: &[Chosen],
    retiring: Option<&(Certificate, SigningKey)>,
    now: Timestamp,
    problems: &mut Vec<String>,
) -> Vec<(Crl, TrackedCrl)> {
    let from_peers = from_peers(&plan.contents.chain, in_place, inputs, now, problems);
    let revoked: BTreeSet<Vec<u8>> = inputs
        .revoked
        .iter()
        .map(|r| serial_number(&r.serial))
        .chain(chosen.iter().flat_map(|(_, crl, _)| crl.revoked_numbers()))
        .collect();
    // Retiring an adopted target's intermediate is never asked for (see `retiring`).
    let retired_now = retiring.and_then(|r| retire(r, in_place, &revoked, now, problems));
    let renewed: Vec<&Certificate> = from_peers
        .iter()
        .map(|(ca, _, _)| ca)
        .chain(retiring.map(|(c, _)| c))
        .collect();
    let kept = retired(plan, in_place, inputs, &renewed, now);
    from_peers
        .iter()
        .map(|(_, crl, entry)| (crl.clone(), entry.clone()))
        .chain(retired_now)
        .chain(kept)
        .collect()
}

/// What `CRLsCurrent` says of the CRLs after the chain's own.
fn beyond_the_chain_text(extras: &[(Crl, TrackedCrl)]) -> String {
    let count = |window: CrlWindow| extras.iter().filter(|(_, t)| t.window == window).count();
    let mut text = String::new();
    if count(CrlWindow::Peer) > 0 {
        text.push_str(&format!(", {} of peers' CAs", count(CrlWindow::Peer)));
    }
    if count(CrlWindow::Retired) > 0 {
        text.push_str(&format!(
            ", and {} of CAs no longer in it, kept until they lapse so that the workloads under them keep verifying",
            count(CrlWindow::Retired)
        ));
    }
    text
}

/// CRLs of CAs no longer in `cert-chain.pem`, written after the chain's own, each with its
/// `status.crl` entry. A workload certificate signed under the intermediate a renewal (or a
/// rotation) replaces stays valid until it expires, and istiod hands it out until then; a
/// sidecar that checks CRLs needs a CRL of every CA of a peer's chain, so without one it would
/// refuse those workloads ("unable to get certificate CRL") until they are renewed.
/// - The intermediate being replaced gets one CRL signed now with its key ([`retire`]).
/// - CRLs in place that no CA of the new chain signed were written here (the target is ours),
///   and stay until their `nextUpdate`; not those of a CA whose CRL is written anew
///   (`renewed`: the one being retired, peers' CAs).
fn retired(
    plan: &CacertsPlan,
    in_place: &[Crl],
    inputs: &Inputs,
    renewed: &[&Certificate],
    now: Timestamp,
) -> Vec<(Crl, TrackedCrl)> {
    let mut out = Vec::new();
    if plan.adopting {
        return out;
    }
    for crl in in_place {
        let superseded = renewed.iter().any(|c| crl.is_signed_by(c));
        let lapsed = crl.next_update().is_none_or(|n| n <= now);
        if superseded || lapsed || plan.contents.chain.iter().any(|ca| crl.is_signed_by(ca)) {
            continue;
        }
        // Told apart by its lapse too: an intermediate renewed under the same name can sign
        // its first CRL in the same second as its predecessor's last.
        let next_update = crl.next_update().map(|t| t.to_string());
        let known = inputs.tracked.iter().find(|t| {
            t.issuer == crl.issuer()
                && t.number == crl.number().unwrap_or(0)
                && Some(&t.next_update) == next_update.as_ref()
        });
        let entry = retired_entry(
            crl,
            crl.issuer().to_string(),
            known.map(|t| t.ca_fingerprint_sha256.clone()).unwrap_or_default(),
        );
        out.push((crl.clone(), entry));
    }
    out
}

/// The last CRL of the intermediate being replaced, signed with its key, valid until it
/// expires: no certificate under it verifies after that, and its key is gone once the new one
/// is written, so it could never be signed again. It revokes nothing. None for a revoked
/// intermediate (its workloads are refused anyway: `revoked` holds the serials revoked at the
/// issuer and in the chain's CRLs) or one already expired.
fn retire(
    replaced: &(Certificate, SigningKey),
    in_place: &[Crl],
    revoked: &BTreeSet<Vec<u8>>,
    now: Timestamp,
    problems: &mut Vec<String>,
) -> Option<(Crl, TrackedCrl)> {
    let (certificate, key) = replaced;
    if certificate.not_after() <= now || revoked.contains(&certificate.serial_number()) {
        return None;
    }
    let previous = in_place
        .iter()
        .filter(|c| c.is_signed_by(certificate))
        .filter_map(Crl::number)
        .max();
    // Checked only for being in date: it is never refreshed, so no refresh window applies.
    match sign_checked(
        certificate,
        key,
        previous,
        certificate.not_after(),
        Vec::new(),
        now,
        SignedDuration::ZERO,
    ) {
        Ok(crl) => {
            let entry = retired_entry(&crl, certificate.subject(), certificate.fingerprint());
            Some((crl, entry))
        }
        Err(why) => {
            problems.push(format!("the replaced intermediate's CRL: {why}"));
            None
        }
    }
}

/// The `status.crl` entry of a retired CRL: never refreshed, so due only when it lapses.
fn retired_entry(crl: &Crl, issuer: String, ca_fingerprint_sha256: String) -> TrackedCrl {
    untended(crl, issuer, ca_fingerprint_sha256, CrlWindow::Retired)
}

/// The `status.crl` entry of a CRL this controller does not refresh (a retired one, a peer's):
/// due only when it lapses.
fn untended(crl: &Crl, issuer: String, ca_fingerprint_sha256: String, window: CrlWindow) -> TrackedCrl {
    let next_update = crl.next_update().map(|t| t.to_string()).unwrap_or_default();
    TrackedCrl {
        issuer,
        ca_fingerprint_sha256,
        number: crl.number().unwrap_or(0),
        this_update: crl.this_update().to_string(),
        refresh_at: next_update.clone(),
        next_update,
        revoked_serials: crl.revoked_serials(),
        window,
    }
}

/// Peers' CRLs to write after the chain's own: a proxy that checks CRLs refuses a peer's
/// workload without a CRL of every CA of its chain (Envoy: "unable to get certificate CRL").
/// A peer is believed only about its own CAs:
/// - a CA it names must chain to the roots of its bundle; a CRL must be signed by one of
///   those CAs or roots;
/// - never about a CA of this cluster's chain (a shared root): the CRL written here is the
///   one that counts, and a peer, compromised, could otherwise hand over an older one that
///   does not list it;
/// - a CRL must be in date, and its number not below the one in place for its CA (no
///   rollback); the newest of several for one CA is taken.
///
/// Refused ones are named in `problems`; the one in place, if any, then stays until it lapses.
fn from_peers(
    chain: &[Certificate],
    in_place: &[Crl],
    inputs: &Inputs,
    now: Timestamp,
    problems: &mut Vec<String>,
) -> Vec<(Certificate, Crl, TrackedCrl)> {
    let mut out: Vec<(Certificate, Crl, TrackedCrl)> = Vec::new();
    for peer in &inputs.peers {
        let mut cas: Vec<&Certificate> = peer.roots.iter().collect();
        // Each pass takes the CAs signed by one already taken: a chain of n CAs takes n passes.
        for _ in 0..peer.cas.len() {
            for ca in &peer.cas {
                if !cas.contains(&ca) && cas.iter().any(|parent| ca.is_signed_by(parent)) {
                    cas.push(ca);
                }
            }
        }
        for ca in peer.cas.iter().filter(|ca| !cas.contains(ca)) {
            problems.push(format!(
                "peer {}: CA {} does not chain to the roots of its bundle; its CRL is not used",
                peer.anchor,
                ca.subject()
            ));
        }
        for crl in &peer.crls {
            let Some(ca) = cas.iter().find(|ca| crl.is_signed_by(ca)) else {
                problems.push(format!(
                    "peer {}: a CRL naming issuer {} is signed by none of its CAs: not used",
                    peer.anchor,
                    crl.issuer()
                ));
                continue;
            };
            if chain.contains(ca) {
                continue;
            }
            let in_place_number = in_place
                .iter()
                .filter(|c| c.is_signed_by(ca))
                .filter_map(Crl::number)
                .max();
            if let (Some(n), Some(p)) = (crl.number(), in_place_number)
                && n < p
            {
                problems.push(format!(
                    "peer {}: the CRL of {} has number {n}, below {p}, the one in place: an older CRL is never taken",
                    peer.anchor,
                    ca.subject()
                ));
                continue;
            }
            if let Err(why) = crl::check(crl, ca, None, now, SignedDuration::ZERO) {
                problems.push(format!("peer {}: {why}", peer.anchor));
                continue;
            }
            match out.iter_mut().find(|(c, _, _)| c == *ca) {
                Some(taken) if taken.1.number() >= crl.number() => {}
                Some(taken) => *taken = peer_entry(ca, crl),
                None => out.push(peer_entry(ca, crl)),
            }
        }
    }
    out
}

fn peer_entry(ca: &Certificate, crl: &Crl) -> (Certificate, Crl, TrackedCrl) {
    let entry = untended(crl, ca.subject(), ca.fingerprint(), CrlWindow::Peer);
    (ca.clone(), crl.clone(), entry)
}

/// The verdict when some CA of the chain has no CRL that may be written: `ca-crl.pem` is not
/// written at all.
fn unavailable(
    missing: &[String],
    problems_text: &str,
    intermediate_revoked: Option<String>,
    now: Timestamp,
) -> Verdict {
    Verdict {
        condition: (
            false,
            reason::UNAVAILABLE,
            format!(
                "no CRL that may be written for {}{problems_text}. ca-crl.pem is not written, because istiod refuses a ca-crl.pem that lacks the CRL of any CA of cert-chain.pem; cacerts is renewed as usual without it",
                missing.join(", ")
            ),
        ),
        tracked: Vec::new(),
        requeue_at: Some(now + RETRY_OVERDUE),
        intermediate_revoked,
        hold: None,
    }
}

/// The CRL of a CA whose key is here (the intermediate's, the local CA's): the one in place
/// while it is fresh and lists exactly `revoked`, else one signed now. `None`: signing failed
/// (named in `problems`).
fn signed_here(
    ca: &Certificate,
    key: &SigningKey,
    revoked: &[Revoked],
    current: Option<&Crl>,
    settings: &Settings,
    now: Timestamp,
    problems: &mut Vec<String>,
) -> Option<(Crl, Origin)> {
    let fresh = |c: &Crl| crl::check(c, ca, None, now, settings.refresh_before).is_ok();
    let lists = |c: &Crl| {
        c.revoked_numbers()
            == revoked
                .iter()
                .map(|r| serial_number(&r.serial))
                .collect::<BTreeSet<_>>()
    };
    if let Some(c) = current.filter(|c| fresh(c) && lists(c)) {
        return Some((c.clone(), Origin::Kept));
    }
    let previous = current.and_then(Crl::number);
    match sign_checked(
        ca,
        key,
        previous,
        now + settings.validity,
        revoked.to_vec(),
        now,
        settings.refresh_before,
    ) {
        Ok(c) => Some((c, Origin::Signed)),
        Err(why) => {
            problems.push(why);
            None
        }
    }
}

/// A CRL of `ca` signed now with `key`, valid until `next_update`, then checked as every CRL
/// written is (`previous`: the number in place, which it must pass). Its number is the seconds
/// since the epoch: it grows with time with no state kept, and goes past `previous` should the
/// clock ever step back.
fn sign_checked(
    ca: &Certificate,
    key: &SigningKey,
    previous: Option<u64>,
    next_update: Timestamp,
    revoked: Vec<Revoked>,
    now: Timestamp,
    refresh_before: SignedDuration,
) -> Result<Crl, String> {
    let spec = CrlSpec {
        number: u64::try_from(now.as_second())
            .unwrap_or(0)
            .max(previous.map_or(1, |p| p.saturating_add(1))),
        this_update: now,
        next_update,
        revoked,
    };
    crl::issue(&spec, &CaSigner { certificate: ca, key })
        .map_err(|e| e.to_string())
        .and_then(|c| crl::check(&c, ca, previous, now, refresh_before).map(|()| c))
}

/// The CRL of a CA whose key is elsewhere: the newest fetched one that may be written, unless
/// the one in place is at least as new and still fresh. Fetched CRLs refused are named in
/// `problems`.
fn fetched(
    ca: &Certificate,
    current: Option<&Crl>,
    fetched: &[Crl],
    settings: &Settings,
    now: Timestamp,
    problems: &mut Vec<String>,
) -> Option<(Crl, Origin)> {
    let fresh = |c: &Crl| crl::check(c, ca, None, now, settings.refresh_before).is_ok();
    let newest = fetched
        .iter()
        .filter(|c| c.is_signed_by(ca))
        .filter(|c| {
            let previous = current.filter(|p| p.der() != c.der()).and_then(Crl::number);
            match crl::check(c, ca, previous, now, settings.refresh_before) {
                Ok(()) => true,
                Err(why) => {
                    problems.push(format!("fetched: {why}"));
                    false
                }
            }
        })
        .max_by_key(|c| c.number());
    match (newest, current) {
        (Some(f), Some(c)) if f.number() <= c.number() && fresh(c) => Some((c.clone(), Origin::Kept)),
        (Some(f), _) => Some((f.clone(), Origin::Fetched)),
        (None, Some(c)) if fresh(c) => Some((c.clone(), Origin::Kept)),
        _ => None,
    }
}

/// Ready's message when the intermediate being written is revoked: at the issuer
/// (`spec.revoked`), or in the CRL of the CA that signed it (one fetched from Vault or
/// `crlFrom` lists what was revoked there).
fn intermediate_revoked(plan: &CacertsPlan, chosen: &[Chosen], inputs: &Inputs) -> Option<String> {
    let intermediate = &plan.contents.intermediate;
    let own_serial = intermediate.serial_number();
    // Found by the CA, not by position: a CA without a CRL leaves no entry in `chosen`.
    let in_parent_crl = chosen
        .iter()
        .find(|(ca, _, _)| plan.contents.chain.get(1) == Some(ca))
        .is_some_and(|(_, crl, _)| crl.revoked_numbers().contains(&own_serial));
    (inputs.revoked.iter().any(|r| serial_number(&r.serial) == own_serial) || in_parent_crl).then(|| {
        format!(
            "{} lists the intermediate istiod signs with ({}, serial {}) as revoked: peers that load this mesh's CRLs refuse its workloads. A new intermediate is requested from cert-manager",
            if inputs.issuer.is_empty() { "the issuer" } else { inputs.issuer.as_str() },
            intermediate.subject(),
            intermediate.serial_hex()
        )
    })
}

/// `CRLsCurrent` for a complete set: current, or the CRL nearest its lapse among those past
/// their refresh time that could not be replaced.
fn condition(
    chosen: &[Chosen],
    tracked: &[TrackedCrl],
    extras: &[(Crl, TrackedCrl)],
    problems_text: &str,
    settings: &Settings,
    now: Timestamp,
) -> (bool, &'static str, String) {
    let overdue = chosen
        .iter()
        .filter(|(_, _, o)| *o == Origin::Overdue)
        .map(|(ca, crl, _)| (ca, crl))
        .min_by_key(|(_, c)| c.next_update());
    match overdue {
        None => (
            true,
            reason::CURRENT,
            format!(
                "ca-crl.pem holds {} CRLs, one for each CA of cert-chain.pem ({}){}; the next is replaced at {}",
                chosen.len(),
                chosen
                    .iter()
                    .map(|(ca, crl, _)| format!("{} number {}", ca.subject(), crl.number().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", "),
                beyond_the_chain_text(extras),
                tracked.iter().map(|t| t.refresh_at.as_str()).min().unwrap_or_default()
            ) + &match problems_text {
                "" => String::new(),
                text => format!(". Not used{text}"),
            },
        ),
        Some((ca, crl)) => {
            let next_update = crl.next_update().unwrap_or(now);
            let left = next_update.duration_since(now);
            let expiring = left <= settings.refresh_before / 2;
            (
                false,
                if expiring {
                    reason::EXPIRING
                } else {
                    reason::REFRESH_DUE
                },
                format!(
                    "the CRL of {} is past its refresh time and could not be replaced{problems_text}. The one in place stays until its nextUpdate {next_update} ({left:#} from now); after that ca-crl.pem is no longer written, so that no proxy meets an expired CRL",
                    ca.subject(),
                ),
            )
        }
    }
}

/// When to look again: the first refresh time; for an overdue CRL, soon, then at its
/// escalation and its lapse; and every FETCH_POLL while some CRL is fetched.
fn requeue_at(chosen: &[Chosen], any_fetched: bool, settings: &Settings, now: Timestamp) -> Option<Timestamp> {
    chosen
        .iter()
        .flat_map(|(_, crl, origin)| {
            let next_update = crl.next_update().unwrap_or(now);
            match origin {
                Origin::Overdue => vec![
                    now + RETRY_OVERDUE,
                    next_update - settings.refresh_before / 2,
                    next_update,
                ],
                _ => vec![next_update - settings.refresh_before],
            }
        })
        .chain(any_fetched.then_some(now + FETCH_POLL))
        .filter(|t| *t > now)
        .min()
}

fn tracked(ca: &Certificate, crl: &Crl, settings: &Settings, now: Timestamp) -> TrackedCrl {
    let next_update = crl.next_update().unwrap_or(now);
    let refresh_at = next_update - settings.refresh_before;
    let window = if now < refresh_at {
        CrlWindow::Current
    } else if next_update.duration_since(now) <= settings.refresh_before / 2 {
        CrlWindow::Expiring
    } else {
        CrlWindow::RefreshDue
    };
    TrackedCrl {
        issuer: ca.subject(),
        ca_fingerprint_sha256: ca.fingerprint(),
        number: crl.number().unwrap_or(0),
        this_update: crl.this_update().to_string(),
        next_update: next_update.to_string(),
        refresh_at: refresh_at.to_string(),
        revoked_serials: crl.revoked_serials(),
        window,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::istio_cacerts::AdoptExisting;
    use crate::istio::cacerts;
    use crate::istio::testing::{DAY, HOUR, root, source_under, t0};

    fn enabled() -> Revocation {
        Revocation {
            enabled: true,
            crl_validity: "72h".into(),
            refresh_before: None,
        }
    }

    /// A chain under a fresh root, planned into an absent target; and the local CA's inputs.
    fn setup() -> (CacertsPlan, Inputs, (Certificate, SigningKey)) {
        let r = root(3650);
        let source = source_under(&r);
        let plan = cacerts::plan(&source, &Target::Absent, "mesh", &AdoptExisting::default(), t0()).unwrap();
        let inputs = Inputs {
            issuer: "ClusterMeshCAIssuer mesh-root".into(),
            signer: Some(CrlSigner {
                certificate: r.0.clone(),
                key: Arc::new(SigningKey::from_pem(r.1.to_pem().as_bytes()).unwrap()),
            }),
            ..Default::default()
        };
        (plan, inputs, r)
    }

    /// The target as the write of `plan` leaves it.
    fn written(plan: &CacertsPlan) -> Target {
        Target::Present {
            data: plan.data.clone(),
            owner: Some("mesh".into()),
        }
    }

    fn crls(plan: &CacertsPlan) -> Vec<Crl> {
        plan.data
            .get(CA_CRL)
            .map(|pem| Crl::parse_pem_bundle(pem, "ca-crl.pem").unwrap())
            .unwrap_or_default()
    }

    fn revoked(serial: &str) -> Revoked {
        Revoked {
            serial: crl::parse_serial(serial).unwrap(),
            reason: Reason::KeyCompromise,
            revoked_at: t0() - HOUR,
        }
    }

    /// The local CA's chain gets one CRL per CA, kept while fresh and re-signed with a larger
    /// number inside its refresh window or when the revoked list changes.
    #[test]
    fn a_local_chain_gets_a_crl_for_every_ca_kept_fresh() {
        let (plan, mut inputs, r) = setup();
        let intermediate = plan.contents.intermediate.clone();
        let spec = enabled();
        let (first, verdict) = apply(plan.clone(), &Target::Absent, Some(&spec), Some(&inputs), t0());
        let verdict = verdict.unwrap();
        let set = crls(&first);
        assert!(verdict.condition.0, "{:?}", verdict.condition);
        assert_eq!(verdict.condition.1, reason::CURRENT);
        assert_eq!(set.len(), 2);
        assert!(set[0].is_signed_by(&intermediate) && set[1].is_signed_by(&r.0));
        assert_eq!(set[1].number(), Some(1_800_000_000));
        assert_eq!(verdict.tracked.len(), 2);
        assert_eq!(verdict.tracked[1].window, CrlWindow::Current);
        assert_eq!(
            verdict.requeue_at,
            Some(t0() + DAY * 2),
            "refreshBefore is a third of 72h"
        );
        assert!(first.changed && verdict.intermediate_revoked.is_none());

        // Written, and looked at again an hour later: nothing changes.
        let target = written(&first);
        let (again, _) = apply(plan.clone(), &target, Some(&spec), Some(&inputs), t0() + HOUR);
        assert!(!again.changed, "a fresh set is kept byte for byte");

        // A serial revoked at the issuer: the root's CRL is signed again, listing it.
        inputs.revoked = vec![revoked("0B:AD")];
        let (revoking, verdict) = apply(plan.clone(), &target, Some(&spec), Some(&inputs), t0() + HOUR);
        let set = crls(&revoking);
        assert!(revoking.changed);
        assert_eq!(set[0], crls(&first)[0], "the intermediate's CRL is kept");
        assert_eq!(set[1].revoked_serials(), vec!["0bad"]);
        assert!(set[1].number() > crls(&first)[1].number());
        assert_eq!(verdict.unwrap().tracked[1].revoked_serials, vec!["0bad"]);

        // Inside the refresh window: both are signed again, with larger numbers.
        let later = t0() + DAY * 2 + HOUR;
        let (refreshed, verdict) = apply(plan.clone(), &written(&revoking), Some(&spec), Some(&inputs), later);
        let (old, new) = (crls(&revoking), crls(&refreshed));
        assert!(new[0].number() > old[0].number() && new[1].number() > old[1].number());
        assert_eq!(new[1].next_update(), Some(later + HOUR * 72));
        assert_eq!(verdict.unwrap().condition.1, reason::CURRENT);
    }

    /// A CA with no CRL to be had: nothing is written (istiod would refuse the whole bundle);
    /// one in place is kept until it expires, the condition escalating; an expired one goes.
    #[test]
    fn without_a_crl_for_every_ca_none_is_written_and_one_in_place_stays_until_it_expires() {
        let (plan, inputs, r) = setup();
        let spec = enabled();
        let unreachable = Inputs {
            signer: None,
            problems: vec!["reading Secret cert-manager/mesh-root: connection refused".into()],
            ..inputs.clone()
        };
        let (none, verdict) = apply(plan.clone(), &Target::Absent, Some(&spec), Some(&unreachable), t0());
        let verdict = verdict.unwrap();
        assert!(!none.data.contains_key(CA_CRL));
        assert_eq!(verdict.condition.1, reason::UNAVAILABLE);
        assert!(verdict.condition.2.contains(&r.0.subject()), "{}", verdict.condition.2);
        assert!(
            verdict.condition.2.contains("connection refused"),
            "{}",
            verdict.condition.2
        );
        assert!(verdict.tracked.is_empty());

        let (first, _) = apply(plan.clone(), &Target::Absent, Some(&spec), Some(&inputs), t0());
        let target = written(&first);
        let cases = [
            (t0() + HOUR, Some(reason::CURRENT), true),
            (t0() + DAY * 2 + HOUR, Some(reason::REFRESH_DUE), true),
            (t0() + DAY * 2 + HOUR * 13, Some(reason::EXPIRING), true),
            (t0() + DAY * 3 + HOUR, Some(reason::UNAVAILABLE), false),
        ];
        for (at, want, kept) in cases {
            let (out, verdict) = apply(plan.clone(), &target, Some(&spec), Some(&unreachable), at);
            let verdict = verdict.unwrap();
            assert_eq!(Some(verdict.condition.1), want, "at {at}: {}", verdict.condition.2);
            let root_crl = crls(&out).get(1).cloned();
            assert_eq!(root_crl.is_some(), kept, "at {at}");
            if let Some(root_crl) = root_crl {
                assert_eq!(root_crl, crls(&first)[1], "the root's CRL in place is kept as it is");
                assert!(root_crl.next_update().unwrap() > at, "never an expired CRL");
            }
        }
    }

    /// The intermediate a renewal replaces gets a CRL signed with its key, valid until it
    /// expires, so that its workloads keep verifying where CRLs are checked; it is kept byte
    /// for byte while the chain's own are refreshed, goes when it lapses, and is never made for
    /// a revoked intermediate or an adopted target's.
    #[test]
    fn the_replaced_intermediate_keeps_a_crl_until_it_expires() {
        let (plan, inputs, r) = setup();
        let spec = enabled();
        let (first, _) = apply(plan, &Target::Absent, Some(&spec), Some(&inputs), t0());
        let replaced = first.contents.intermediate.clone();
        let target = written(&first);
        let source = source_under(&r);
        let renewed = cacerts::plan(&source, &target, "mesh", &AdoptExisting::default(), t0()).unwrap();
        let (out, verdict) = apply(renewed.clone(), &target, Some(&spec), Some(&inputs), t0() + HOUR);
        let verdict = verdict.unwrap();
        let set = crls(&out);
        assert_eq!(set.len(), 3, "{set:?}");
        assert!(set[0].is_signed_by(&renewed.contents.intermediate) && set[1].is_signed_by(&r.0));
        assert!(set[2].is_signed_by(&replaced));
        assert_eq!(set[2].next_update(), Some(replaced.not_after()));
        assert!(set[2].revoked_serials().is_empty());
        assert!(verdict.condition.0, "{:?}", verdict.condition);
        assert!(
            verdict.condition.2.contains("1 of CAs no longer in it"),
            "{}",
            verdict.condition.2
        );
        let entry = &verdict.tracked[2];
        assert_eq!(entry.window, CrlWindow::Retired);
        assert_eq!(entry.ca_fingerprint_sha256, replaced.fingerprint());
        assert_eq!(entry.refresh_at, entry.next_update);

        // The next look (status as written): the retired CRL is kept as it is.
        let after = written(&out);
        let seen = Inputs {
            tracked: verdict.tracked.clone(),
            ..inputs.clone()
        };
        let again = cacerts::plan(&source, &after, "mesh", &AdoptExisting::default(), t0()).unwrap();
        let (kept, v) = apply(again.clone(), &after, Some(&spec), Some(&seen), t0() + DAY * 2 + HOUR);
        assert_eq!(crls(&kept)[2], set[2], "kept byte for byte");
        assert!(crls(&kept)[1].number() > set[1].number(), "the root's own is refreshed");
        assert_eq!(v.unwrap().tracked[2].ca_fingerprint_sha256, replaced.fingerprint());
        // Once the replaced intermediate has expired, its CRL goes, and the look after that is
        // asked for then.
        assert!(verdict.requeue_at <= Some(replaced.not_after()));
        let late = replaced.not_after() + SignedDuration::from_secs(1);
        let (gone, _) = apply(again, &after, Some(&spec), Some(&seen), late);
        assert!(crls(&gone).iter().all(|c| !c.is_signed_by(&replaced)));

        // Revoked: its workloads are refused anyway, and no CRL of it is made.
        let revoking = Inputs {
            revoked: vec![revoked(&replaced.serial_hex())],
            ..inputs.clone()
        };
        let (out, _) = apply(renewed.clone(), &target, Some(&spec), Some(&revoking), t0() + HOUR);
        assert!(crls(&out).iter().all(|c| !c.is_signed_by(&replaced)));

        // Adopted: the Secret's CA is not ours to sign with, nor are its extra CRLs ours.
        let foreign = Target::Present {
            data: first.data.clone(),
            owner: None,
        };
        let adopting = cacerts::plan(
            &source_under(&r),
            &foreign,
            "mesh",
            &AdoptExisting::KeepForeignKeys,
            t0(),
        )
        .unwrap();
        let (out, _) = apply(adopting, &foreign, Some(&spec), Some(&inputs), t0() + HOUR);
        assert_eq!(crls(&out).len(), 2);
    }

    /// Peers' CRLs (from their bundle endpoints) follow the chain's own. A peer is believed
    /// only about CAs under its own roots: never about this cluster's own CA (a shared root),
    /// nor a CA that does not chain to its roots; an expired CRL or one older than the CRL in
    /// place is refused, and the one in place then stays.
    #[test]
    fn peers_crls_follow_the_chains_own_and_are_believed_only_about_their_own_cas() {
        let (plan, inputs, r) = setup();
        let spec = enabled();
        let peer_root = root(3650);
        let peer = source_under(&peer_root);
        let peer_key = SigningKey::from_pem(&peer.key_pem).unwrap();
        let stranger_root = root(3650);
        let stranger = source_under(&stranger_root);
        let sign = |ca: &Certificate, key: &SigningKey, number: u64, at: Timestamp| {
            let spec = CrlSpec {
                number,
                this_update: at,
                next_update: at + DAY * 3,
                revoked: Vec::new(),
            };
            crl::issue(&spec, &CaSigner { certificate: ca, key }).unwrap()
        };
        let peer_crls = |intermediate_number: u64, at: Timestamp| PeerCrls {
            anchor: "cluster-b".into(),
            // It shares this cluster's root too, as every cluster of a shared-root mesh does.
            roots: vec![peer_root.0.clone(), r.0.clone()],
            cas: vec![peer.intermediate.clone(), stranger.intermediate.clone()],
            crls: vec![
                sign(&peer.intermediate, &peer_key, intermediate_number, at),
                sign(&peer_root.0, &peer_root.1, 10, at),
                // This cluster's own root, as a compromised peer sharing it could hand over.
                sign(&r.0, &r.1, 1, at),
                sign(&stranger_root.0, &stranger_root.1, 10, at),
            ],
        };
        let with = |peer: PeerCrls| Inputs {
            peers: vec![peer],
            ..inputs.clone()
        };
        let (out, verdict) = apply(
            plan,
            &Target::Absent,
            Some(&spec),
            Some(&with(peer_crls(10, t0()))),
            t0() + HOUR,
        );
        let verdict = verdict.unwrap();
        let set = crls(&out);
        assert_eq!(set.len(), 4, "{set:?}");
        assert!(set[0].is_signed_by(&out.contents.intermediate) && set[1].is_signed_by(&r.0));
        assert!(set[1].number() != Some(1), "this cluster's own root CRL is its own");
        assert!(set[2].is_signed_by(&peer.intermediate) && set[3].is_signed_by(&peer_root.0));
        let windows: Vec<CrlWindow> = verdict.tracked.iter().map(|t| t.window).collect();
        assert_eq!(
            windows,
            [CrlWindow::Current, CrlWindow::Current, CrlWindow::Peer, CrlWindow::Peer]
        );
        assert_eq!(
            verdict.tracked[2].ca_fingerprint_sha256,
            peer.intermediate.fingerprint()
        );
        let message = &verdict.condition.2;
        assert!(verdict.condition.0, "{message}");
        assert!(
            message.contains("does not chain to the roots of its bundle"),
            "{message}"
        );
        assert!(message.contains("signed by none of its CAs"), "{message}");
        // A peer's CRL lapsing is looked at when it lapses.
        assert!(verdict.requeue_at <= set[2].next_update());

        // An older CRL than the one in place (a rollback) is refused; the one in place stays.
        let target = written(&out);
        let seen = |peer: PeerCrls| Inputs {
            tracked: verdict.tracked.clone(),
            ..with(peer)
        };
        let again = cacerts::plan(&source_under(&r), &target, "mesh", &AdoptExisting::default(), t0()).unwrap();
        let (out, v) = apply(
            again.clone(),
            &target,
            Some(&spec),
            Some(&seen(peer_crls(5, t0()))),
            t0() + HOUR,
        );
        let message = v.unwrap().condition.2;
        assert!(message.contains("number 5, below 10"), "{message}");
        assert!(crls(&out).contains(&set[2]), "the one in place stays");
        // A newer one replaces it.
        let (out, _) = apply(
            again.clone(),
            &target,
            Some(&spec),
            Some(&seen(peer_crls(11, t0()))),
            t0() + HOUR,
        );
        let peers_now: Vec<Crl> = crls(&out)
            .into_iter()
            .filter(|c| c.is_signed_by(&peer.intermediate))
            .collect();
        assert_eq!(peers_now.iter().map(Crl::number).collect::<Vec<_>>(), [Some(11)]);
        // An expired one is refused.
        let late = t0() + DAY * 4;
        let (_, v) = apply(again, &target, Some(&spec), Some(&seen(peer_crls(12, t0()))), late);
        assert!(v.unwrap().condition.2.contains("expired"));
    }

    /// A renewed intermediate is held back while the target holds CRLs and the new chain
    /// cannot have a CRL for every CA (istiod would keep the old CRLs, and Envoy refuse the new
    /// intermediate's workloads); it goes through once it can, and freely when no CRL was ever
    /// written.
    #[test]
    fn a_new_chain_without_a_crl_for_every_ca_is_held_while_istiod_holds_crls() {
        let (plan, inputs, r) = setup();
        let spec = enabled();
        let (first, _) = apply(plan.clone(), &Target::Absent, Some(&spec), Some(&inputs), t0());
        let target = written(&first);
        let renewed = cacerts::plan(&source_under(&r), &target, "mesh", &AdoptExisting::default(), t0()).unwrap();
        let unreachable = Inputs {
            signer: None,
            problems: vec!["connection refused".into()],
            ..inputs.clone()
        };
        // The root's CRL in place still serves the new chain while it is fresh; the replaced
        // intermediate's follows the chain's own.
        let replaced = &first.contents.intermediate;
        let (out, verdict) = apply(renewed.clone(), &target, Some(&spec), Some(&unreachable), t0() + HOUR);
        assert!(verdict.unwrap().hold.is_none() && crls(&out).len() == 3);
        assert!(crls(&out)[2].is_signed_by(replaced));
        // Once it has lapsed, nothing covers the root.
        let lapsed = t0() + DAY * 3 + HOUR;
        let (_, verdict) = apply(renewed.clone(), &target, Some(&spec), Some(&unreachable), lapsed);
        let hold = verdict.unwrap().hold.expect("held");
        assert!(hold.contains(&r.0.subject()) && hold.contains("#61073"), "{hold}");

        let (out, verdict) = apply(renewed.clone(), &target, Some(&spec), Some(&inputs), lapsed);
        assert!(verdict.unwrap().hold.is_none());
        assert_eq!(crls(&out).len(), 3);
        assert!(crls(&out)[0].is_signed_by(&renewed.contents.intermediate));
        assert!(crls(&out)[2].is_signed_by(replaced));

        let bare = Target::Present {
            data: plan.data.clone(),
            owner: Some("mesh".into()),
        };
        let (out, verdict) = apply(renewed, &bare, Some(&spec), Some(&unreachable), lapsed);
        let verdict = verdict.unwrap();
        assert!(verdict.hold.is_none() && !out.data.contains_key(CA_CRL));
        assert_eq!(verdict.condition.1, reason::UNAVAILABLE);
    }

    /// Revocation off while istiod still hands out CRLs: say when they lapse and to restart
    /// istiod; nothing distributed, nothing to say.
    #[test]
    fn crls_istiod_keeps_after_revocation_is_off_are_named_with_their_lapse() {
        let (plan, inputs, _) = setup();
        let (first, _) = apply(plan, &Target::Absent, Some(&enabled()), Some(&inputs), t0());
        let distributed = crls(&first);
        let (ok, why, message) = after_turned_off(&distributed, "istio-system", t0() + HOUR).unwrap();
        assert!(!ok && why == reason::STALE_CRLS_DISTRIBUTED);
        assert!(
            message.contains("lapses at 2027-01-18T08:00:00Z (71h from now)"),
            "{message}"
        );
        assert!(
            message.contains("kubectl -n istio-system rollout restart deployment/istiod"),
            "{message}"
        );
        let (_, _, lapsed) = after_turned_off(&distributed, "istio-system", t0() + DAY * 4).unwrap();
        assert!(lapsed.contains("already refuse"), "{lapsed}");
        assert_eq!(after_turned_off(&[], "istio-system", t0()), None);
    }

    /// Fetched CRLs are written only when signed by their CA and fresh; anything else is
    /// refused by name and leaves the CA without a CRL.
    #[test]
    fn fetched_crls_must_be_signed_by_their_ca_and_fresh() {
        let (plan, inputs, r) = setup();
        let other = root(3650);
        let sign = |ca: &(Certificate, SigningKey), number: u64, valid: SignedDuration| {
            crl::issue(
                &CrlSpec {
                    number,
                    this_update: t0() - HOUR,
                    next_update: t0() + valid,
                    revoked: vec![revoked("07")],
                },
                &CaSigner {
                    certificate: &ca.0,
                    key: &ca.1,
                },
            )
            .unwrap()
        };
        let fetching = |fetched: Vec<Crl>| Inputs {
            signer: None,
            fetched,
            ..inputs.clone()
        };
        let cases = [
            ("the root's own", vec![sign(&r, 5, DAY * 7)], Some(5)),
            ("another CA's", vec![sign(&other, 5, DAY * 7)], None),
            ("inside its refresh window", vec![sign(&r, 5, HOUR * 2)], None),
            (
                "the newest of two",
                vec![sign(&r, 5, DAY * 7), sign(&r, 6, DAY * 7)],
                Some(6),
            ),
        ];
        for (case, fetched, want) in cases {
            let (out, verdict) = apply(
                plan.clone(),
                &Target::Absent,
                Some(&enabled()),
                Some(&fetching(fetched)),
                t0(),
            );
            let verdict = verdict.unwrap();
            assert_eq!(
                crls(&out).get(1).and_then(Crl::number),
                want,
                "{case}: {}",
                verdict.condition.2
            );
            if want.is_none() {
                assert_eq!(verdict.condition.1, reason::UNAVAILABLE, "{case}");
                assert!(!out.data.contains_key(CA_CRL), "{case}");
            } else {
                assert_eq!(
                    verdict.requeue_at,
                    Some(t0() + FETCH_POLL),
                    "{case}: fetched again soon"
                );
            }
        }
        // The CA's own CRL listing the intermediate: revoked there, and said.
        let listing = crl::issue(
            &CrlSpec {
                number: 9,
                this_update: t0() - HOUR,
                next_update: t0() + DAY * 7,
                revoked: vec![revoked(&plan.contents.intermediate.serial_hex())],
            },
            &CaSigner {
                certificate: &r.0,
                key: &r.1,
            },
        )
        .unwrap();
        let (_, verdict) = apply(
            plan.clone(),
            &Target::Absent,
            Some(&enabled()),
            Some(&fetching(vec![listing])),
            t0(),
        );
        assert!(verdict.unwrap().intermediate_revoked.is_some());
    }

    /// The issuer revoking the very intermediate being written is said; a spec that cannot be
    /// read leaves what is in place; revocation off writes no ca-crl.pem.
    #[test]
    fn a_revoked_intermediate_a_bad_spec_and_revocation_off() {
        let (plan, mut inputs, _) = setup();
        let serial = plan.contents.intermediate.serial_hex();
        inputs.revoked = vec![revoked(&serial)];
        let (_, verdict) = apply(plan.clone(), &Target::Absent, Some(&enabled()), Some(&inputs), t0());
        let message = verdict.unwrap().intermediate_revoked.expect("said");
        assert!(
            message.contains(&serial) && message.contains("ClusterMeshCAIssuer mesh-root"),
            "{message}"
        );

        inputs.revoked.clear();
        let (first, _) = apply(plan.clone(), &Target::Absent, Some(&enabled()), Some(&inputs), t0());
        let bad = Revocation {
            refresh_before: Some("80h".into()),
            ..enabled()
        };
        let (out, verdict) = apply(plan.clone(), &written(&first), Some(&bad), Some(&inputs), t0());
        let verdict = verdict.unwrap();
        assert_eq!(verdict.condition.1, reason::INVALID_SPEC);
        assert!(
            verdict.condition.2.contains("below crlValidity"),
            "{}",
            verdict.condition.2
        );
        assert_eq!(out.data.get(CA_CRL), first.data.get(CA_CRL));

        let off = Revocation {
            enabled: false,
            ..enabled()
        };
        let (out, verdict) = apply(plan.clone(), &Target::Absent, Some(&off), Some(&inputs), t0());
        assert!(verdict.is_none() && !out.data.contains_key(CA_CRL));
        assert!(
            Settings::of(&Revocation {
                crl_validity: "soon".into(),
                ..enabled()
            })
            .is_err()
        );
    }
}

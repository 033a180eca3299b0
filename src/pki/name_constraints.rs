//! X.509 NameConstraints (RFC 5280 §4.2.1.10): which constraints an intermediate gets under
//! `policy.nameConstraints`, their DER encoding, and the check that an issued certificate
//! carries exactly them.
//!
//! rcgen's `GeneralSubtree` has no URI form, so the extension is encoded here by hand:
//!
//! ```text
//! NameConstraints ::= SEQUENCE {
//!      permittedSubtrees       [0]     GeneralSubtrees OPTIONAL,
//!      excludedSubtrees        [1]     GeneralSubtrees OPTIONAL }
//! GeneralSubtrees ::= SEQUENCE SIZE (1..MAX) OF GeneralSubtree
//! GeneralSubtree ::= SEQUENCE {
//!      base                    GeneralName,
//!      minimum         [0]     BaseDistance DEFAULT 0,   -- never encoded (DER, RFC 5280)
//!      maximum         [1]     BaseDistance OPTIONAL }   -- never encoded (RFC 5280)
//! ```
//!
//! The module uses implicit tags, so `[0]`/`[1]` replace the SEQUENCE tag (0xA0/0xA1,
//! constructed) and a `dNSName [2] IA5String` / `uniformResourceIdentifier [6] IA5String` is
//! 0x82/0x86 followed by the name's bytes. A URI subtree is a host or domain name, never a URI:
//! `cluster.local` permits `spiffe://cluster.local/...`; `.example.org` permits every host
//! *below* example.org but not example.org itself.

use std::collections::BTreeSet;
use std::fmt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::Certificate;
use super::csr::{CertificateSigningRequest, spiffe_trust_domain};
use crate::api::issuer::IssuancePolicy;
use crate::api::name_constraints::{NameConstraintsMode, NameConstraintsPolicy, NameConstraintsSummary};

/// The NameConstraints extension's OID, 2.5.29.30.
pub const OID: &[u64] = &[2, 5, 29, 30];
/// The same, as AWS Private CA's `ApiPassthrough` wants it.
pub const OID_STRING: &str = "2.5.29.30";
/// The trust domain an intermediate is constrained to when its CSR names none (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const TAG_SEQUENCE: u8 = 0x30;
const TAG_PERMITTED: u8 = 0xa0;
const TAG_EXCLUDED: u8 = 0xa1;
const TAG_DNS_NAME: u8 = 0x82;
const TAG_URI: u8 = 0x86;

/// One subtree: the base name of a GeneralSubtree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subtree {
    /// A host (`cluster.local`) or, with a leading dot, a domain (`.example.org`).
    Uri(String),
    /// A DNS domain; it also permits every name below it.
    Dns(String),
    /// Any other name form, found in a certificate (as openssl would print it); never encoded.
    Other(String),
}

impl fmt::Display for Subtree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subtree::Uri(host) => write!(f, "URI:{host}"),
            Subtree::Dns(domain) => write!(f, "DNS:{domain}"),
            Subtree::Other(text) => f.write_str(text),
        }
    }
}

/// The content of a NameConstraints extension.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameConstraints {
    pub permitted: Vec<Subtree>,
    pub excluded: Vec<Subtree>,
}

impl NameConstraints {
    /// Whether a URI with host `host` is within these constraints, as RFC 5280 §4.2.1.10 (and
    /// Go's `crypto/x509`) judge URI subtrees: `example.org` matches that host only,
    /// `.example.org` any host below it. With permitted URI subtrees the host must match one;
    /// it must match no excluded one. A subtree of a form this code does not read fails closed.
    pub fn permits_uri_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let matches = |base: &str| match base.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == base,
        };
        if self
            .permitted
            .iter()
            .chain(&self.excluded)
            .any(|s| matches!(s, Subtree::Other(_)))
        {
            return false;
        }
        let permitted: Vec<&str> = self
            .permitted
            .iter()
            .filter_map(|s| match s {
                Subtree::Uri(base) => Some(base.as_str()),
                _ => None,
            })
            .collect();
        let excluded = self
            .excluded
            .iter()
            .any(|s| matches!(s, Subtree::Uri(base) if matches(base)));
        (permitted.is_empty() || permitted.iter().any(|b| matches(b))) && !excluded
    }

    /// The extension value (the DER inside the extension's OCTET STRING).
    pub fn to_der(&self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        for (tag, subtrees) in [(TAG_PERMITTED, &self.permitted), (TAG_EXCLUDED, &self.excluded)] {
            // GeneralSubtrees is SIZE (1..MAX): an empty list is left out, not encoded empty.
            if subtrees.is_empty() {
                continue;
            }
            let mut list = Vec::new();
            for subtree in subtrees {
                let base = match subtree {
                    Subtree::Uri(host) => tlv(TAG_URI, ia5(host)?),
                    Subtree::Dns(domain) => tlv(TAG_DNS_NAME, ia5(domain)?),
                    Subtree::Other(text) => return Err(format!("cannot encode the subtree {text:?}")),
                };
                list.extend(tlv(TAG_SEQUENCE, &base));
            }
            body.extend(tlv(tag, &list));
        }
        if body.is_empty() {
            // RFC 5280: "Conforming CAs MUST NOT issue certificates where name constraints is
            // an empty sequence."
            return Err("name constraints without any subtree".into());
        }
        Ok(tlv(TAG_SEQUENCE, &body))
    }

    /// Decodes an extension value.
    pub fn from_der(value: &[u8]) -> Result<Self, String> {
        let (rest, parsed) = x509_parser::extensions::NameConstraints::from_der(value)
            .map_err(|e| format!("the NameConstraints extension cannot be decoded: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the NameConstraints extension".into());
        }
        let convert = |subtrees: Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
            subtrees
                .unwrap_or_default()
                .iter()
                .map(|s| match &s.base {
                    GeneralName::URI(host) => Subtree::Uri(host.to_string()),
                    GeneralName::DNSName(domain) => Subtree::Dns(domain.to_string()),
                    other => Subtree::Other(other.to_string()),
                })
                .collect()
        };
        Ok(Self {
            permitted: convert(parsed.permitted_subtrees),
            excluded: convert(parsed.excluded_subtrees),
        })
    }

    /// The same subtrees, whatever their order and letter case (names compare case-insensitively).
    pub fn same_as(&self, other: &NameConstraints) -> bool {
        let set = |subtrees: &[Subtree]| -> BTreeSet<String> {
            subtrees.iter().map(|s| s.to_string().to_ascii_lowercase()).collect()
        };
        set(&self.permitted) == set(&other.permitted) && set(&self.excluded) == set(&other.excluded)
    }

    /// "permitted URI:cluster.local; excluded URI:.cluster.local", for messages.
    pub fn describe(&self) -> String {
        let list = |s: &[Subtree]| s.iter().map(Subtree::to_string).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.permitted.is_empty() {
            parts.push(format!("permitted {}", list(&self.permitted)));
        }
        if !self.excluded.is_empty() {
            parts.push(format!("excluded {}", list(&self.excluded)));
        }
        parts.join("; ")
    }

    pub fn summary(&self, critical: bool) -> NameConstraintsSummary {
        NameConstraintsSummary {
            critical,
            permitted: self.permitted.iter().map(Subtree::to_string).collect(),
            excluded: self.excluded.iter().map(Subtree::to_string).collect(),
        }
    }
}

/// A DER TLV with a definite length (short form below 128 bytes, long form above).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn ia5(name: &str) -> Result<&[u8], String> {
    if name.is_ascii() {
        Ok(name.as_bytes())
    } else {
        Err(format!("{name:?} is not ASCII (IA5String)"))
    }
}

/// The NameConstraints extension a certificate carries: `None` when it has none, else whether
/// it is critical and what it says. More than one such extension is an error (RFC 5280: an
/// extension appears at most once).
pub fn carried_by(certificate: &Certificate) -> Result<Option<(bool, NameConstraints)>, String> {
    let (_, cert) = X509Certificate::from_der(certificate.der()).map_err(|e| e.to_string())?;
    let oid = x509_parser::der_parser::oid::Oid::from(OID).map_err(|_| "bad OID".to_string())?;
    let mut found = cert.extensions().iter().filter(|e| e.oid == oid);
    let Some(ext) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err("the certificate carries more than one NameConstraints extension".into());
    }
    Ok(Some((ext.critical, NameConstraints::from_der(ext.value)?)))
}

/// Checks that `certificate` carries exactly `expected`, in a critical extension. The last
/// check before an intermediate meant to be constrained is handed out.
pub fn check_carries(certificate: &Certificate, expected: &NameConstraints) -> Result<(), String> {
    match carried_by(certificate)? {
        None => Err(format!(
            "the issued certificate carries no NameConstraints extension, but {} was requested",
            expected.describe()
        )),
        Some((false, _)) => Err("the issued certificate's NameConstraints extension is not critical".into()),
        Some((true, found)) if !found.same_as(expected) => Err(format!(
            "the issued certificate's name constraints ({}) are not the requested ones ({})",
            found.describe(),
            expected.describe()
        )),
        Some(_) => Ok(()),
    }
}

/// A host or domain name as a subtree base: ASCII letters, digits, `-` and `_` in dot-separated
/// labels, optionally one leading dot; lower-cased. Anything that looks like a URI is refused:
/// a URI subtree names a host, never a URI.
pub fn normalize_domain(text: &str) -> Result<String, String> {
    let name = text.strip_prefix('.').unwrap_or(text);
    let bad = |why: &str| Err(format!("{text:?} is not a host or domain name: {why}"));
    if name.is_empty() {
        return bad("it is empty");
    }
    if text.contains("://") || text.contains('/') || text.contains(':') {
        return bad("write the host only (cluster.local), not a URI");
    }
    if text.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("every label must have 1 to 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return bad("only letters, digits, '-' and '_' may appear in a label");
        }
    }
    Ok(text.to_ascii_lowercase())
}

/// Checks `policy.nameConstraints`; an invalid one makes the issuer not Ready.
pub fn validate_policy(policy: &NameConstraintsPolicy) -> Result<(), String> {
    if !policy.enabled() && (!policy.permitted_dns_domains.is_empty() || !policy.excluded_uri_domains.is_empty()) {
        return Err(
            "policy.nameConstraints lists domains but its mode is None, so they would be ignored: set mode to TrustDomain or Required, or remove them"
                .into(),
        );
    }
    for (field, list) in [
        ("permittedDNSDomains", &policy.permitted_dns_domains),
        ("excludedURIDomains", &policy.excluded_uri_domains),
    ] {
        for entry in list {
            normalize_domain(entry).map_err(|e| format!("policy.nameConstraints.{field}: {e}"))?;
        }
    }
    Ok(())
}

/// Why a request cannot get the name constraints its issuer's policy calls for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameConstraintViolation {
    #[error(
        "the CSR has no spiffe:// URI SAN, so the trust domain to constrain the intermediate to cannot be determined (policy.nameConstraints.mode Required); add a URI SAN such as spiffe://<trust domain>/ns/istio-system/sa/istiod to the Certificate"
    )]
    NoTrustDomain,
    #[error(
        "the CSR has no spiffe:// URI SAN, and the default trust domain {domain:?} it would be constrained to is not in policy.allowedTrustDomains {allowed:?}; add a spiffe:// URI SAN to the Certificate"
    )]
    DefaultTrustDomainNotAllowed { domain: String, allowed: Vec<String> },
    #[error("the intermediate cannot be name-constrained: {0}")]
    Invalid(String),
}

/// The name constraints `csr` gets under `policy` when the plan already made for it signs a
/// CA certificate (`is_ca`: its `ca_path_len` is set); `None` for a leaf, or when the mode is
/// `None`. The CSR's trust domains were checked against `allowedTrustDomains` when the plan
/// was made; the default trust domain is checked here.
pub fn decide(
    csr: &CertificateSigningRequest,
    is_ca: bool,
    policy: &IssuancePolicy,
    default_trust_domain: &str,
) -> Result<Option<NameConstraints>, NameConstraintViolation> {
    let nc = &policy.name_constraints;
    // Name constraints bind what a CA signs: a leaf gets none.
    if !nc.enabled() || !is_ca {
        return Ok(None);
    }
    let mut domains: Vec<String> = Vec::new();
    for uri in csr.spiffe_ids() {
        // Malformed SPIFFE IDs were refused by the plan; skip rather than panic.
        if let Some(domain) = spiffe_trust_domain(uri)
            && !domains.contains(&domain)
        {
            domains.push(domain);
        }
    }
    if domains.is_empty() {
        if nc.mode == NameConstraintsMode::Required {
            return Err(NameConstraintViolation::NoTrustDomain);
        }
        let domain = default_trust_domain.to_ascii_lowercase();
        let allowed = &policy.allowed_trust_domains;
        if !allowed.is_empty() && !allowed.iter().any(|d| d.eq_ignore_ascii_case(&domain)) {
            return Err(NameConstraintViolation::DefaultTrustDomainNotAllowed {
                domain,
                allowed: allowed.clone(),
            });
        }
        domains.push(domain);
    }
    let normalize = |d: &String| normalize_domain(d).map_err(NameConstraintViolation::Invalid);
    let mut permitted = domains
        .iter()
        .map(|d| normalize(d).map(Subtree::Uri))
        .collect::<Result<Vec<_>, _>>()?;
    for d in &nc.permitted_dns_domains {
        permitted.push(Subtree::Dns(normalize(d)?));
    }
    let excluded = nc
        .excluded_uri_domains
        .iter()
        .map(|d| normalize(d).map(Subtree::Uri))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(NameConstraints { permitted, excluded }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::SubjectAltName;

    fn uri(host: &str) -> Subtree {
        Subtree::Uri(host.into())
    }

    fn hex(der: &[u8]) -> String {
        crate::pki::hex(der)
    }

    // The expected bytes below are what openssl 3 writes for the same configuration
    // (`openssl req -x509 -addext 'nameConstraints=critical,permitted;URI:cluster.local'`, the
    // extension value cut out with `openssl asn1parse -strparse`), and what
    // `openssl asn1parse -inform DER` reads back as the structure in the comment.
    // tests/pki_openssl.rs compares against a live openssl too.

    #[test]
    fn one_permitted_uri_subtree_is_encoded_as_openssl_encodes_it() {
        // SEQUENCE { [0] { SEQUENCE { [6] "cluster.local" } } }
        let nc = NameConstraints {
            permitted: vec![uri("cluster.local")],
            excluded: vec![],
        };
        assert_eq!(hex(&nc.to_der().unwrap()), "3013a011300f860d636c75737465722e6c6f63616c");
    }

    #[test]
    fn permitted_uri_and_dns_with_an_excluded_uri_domain_are_encoded_in_order() {
        // SEQUENCE { [0] { SEQ { [6] "a.example" } SEQ { [2] "istio-system.svc" } }
        //            [1] { SEQ { [6] ".a.example" } } }
        let nc = NameConstraints {
            permitted: vec![uri("a.example"), Subtree::Dns("istio-system.svc".into())],
            excluded: vec![uri(".a.example")],
        };
        assert_eq!(
            hex(&nc.to_der().unwrap()),
            concat!(
                "3033",
                "a021",
                "300b8609612e6578616d706c65",
                "30128210697374696f2d73797374656d2e737663",
                "a10e",
                "300c860a2e612e6578616d706c65"
            )
        );
    }

    #[test]
    fn long_contents_use_the_long_length_form() {
        let permitted = (0..20).map(|i| uri(&format!("trust-domain-{i:02}.example"))).collect();
        let der = NameConstraints {
            permitted,
            excluded: vec![],
        }
        .to_der()
        .unwrap();
        // 20 subtrees of 2 + 2 + 23 bytes = 540 (0x021c) bytes inside [0]: two length bytes.
        assert_eq!(hex(&der[..8]), "30820220a082021c");
        assert_eq!(der.len(), 4 + 4 + 540);
        assert_eq!(
            NameConstraints::from_der(&der).unwrap().permitted.len(),
            20,
            "and it decodes again"
        );
    }

    #[test]
    fn encoding_round_trips_and_compares_as_sets() {
        let nc = NameConstraints {
            permitted: vec![uri("b.example"), uri("a.example"), Subtree::Dns("svc".into())],
            excluded: vec![uri(".a.example")],
        };
        let back = NameConstraints::from_der(&nc.to_der().unwrap()).unwrap();
        assert_eq!(back, nc);
        let reordered = NameConstraints {
            permitted: vec![Subtree::Dns("SVC".into()), uri("a.example"), uri("b.example")],
            excluded: vec![uri(".a.example")],
        };
        assert!(back.same_as(&reordered));
        let fewer = NameConstraints {
            permitted: vec![uri("a.example")],
            excluded: vec![uri(".a.example")],
        };
        assert!(!back.same_as(&fewer));
        assert_eq!(
            nc.describe(),
            "permitted URI:b.example, URI:a.example, DNS:svc; excluded URI:.a.example"
        );
    }

    #[test]
    fn nothing_to_constrain_is_refused_rather_than_encoded_empty() {
        assert!(NameConstraints::default().to_der().is_err());
        assert!(
            NameConstraints {
                permitted: vec![Subtree::Other("IP:10.0.0.0/8".into())],
                excluded: vec![],
            }
            .to_der()
            .is_err()
        );
    }

    #[test]
    fn uri_hosts_are_judged_as_rfc_5280_and_go_judge_them() {
        let uri = |s: &str| Subtree::Uri(s.into());
        let nc = |permitted: Vec<Subtree>, excluded: Vec<Subtree>| NameConstraints { permitted, excluded };
        // (constraints, host, permitted)
        let cases = [
            (nc(vec![uri("peer.example")], vec![]), "peer.example", true),
            (nc(vec![uri("peer.example")], vec![]), "Peer.Example", true),
            (nc(vec![uri("peer.example")], vec![]), "a.peer.example", false),
            (nc(vec![uri(".example")], vec![]), "peer.example", true),
            (nc(vec![uri(".example")], vec![]), "example", false),
            (nc(vec![uri("other.example")], vec![]), "peer.example", false),
            (nc(vec![Subtree::Dns("example".into())], vec![]), "peer.example", true),
            (nc(vec![], vec![uri("peer.example")]), "peer.example", false),
            (
                nc(vec![uri(".example")], vec![uri("bad.example")]),
                "bad.example",
                false,
            ),
            (
                nc(vec![Subtree::Other("IP:10.0.0.0/8".into())], vec![]),
                "peer.example",
                false,
            ),
        ];
        for (constraints, host, permitted) in cases {
            assert_eq!(constraints.permits_uri_host(host), permitted, "{constraints:?} {host}");
        }
    }

    #[test]
    fn domains_are_hosts_not_uris() {
        let cases = [
            ("cluster.local", Ok("cluster.local")),
            ("Cluster.Local", Ok("cluster.local")),
            (".example.org", Ok(".example.org")),
            ("td_1.example", Ok("td_1.example")),
            ("spiffe://cluster.local", Err("not a URI")),
            ("cluster.local/ns", Err("not a URI")),
            ("", Err("empty")),
            (".", Err("empty")),
            ("a..b", Err("1 to 63")),
            ("*.example", Err("only letters")),
            ("exämple.org", Err("only letters")),
        ];
        for (input, expected) in cases {
            match (normalize_domain(input), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn policy_validation() {
        let p = |mode, dns: &[&str], excluded: &[&str]| NameConstraintsPolicy {
            mode,
            permitted_dns_domains: dns.iter().map(|s| s.to_string()).collect(),
            excluded_uri_domains: excluded.iter().map(|s| s.to_string()).collect(),
        };
        use NameConstraintsMode::*;
        // Off, nothing listed: fine.
        assert_eq!(validate_policy(&p(None, &[], &[])), Ok(()));
        // Domains listed while off would be silently ignored: refused.
        assert!(
            validate_policy(&p(None, &["svc"], &[]))
                .unwrap_err()
                .contains("mode is None")
        );
        // On, with valid domains.
        assert_eq!(
            validate_policy(&p(TrustDomain, &["istio-system.svc"], &[".x.example"])),
            Ok(())
        );
        // A URI where a host belongs: refused, naming the field.
        let e = validate_policy(&p(Required, &[], &["spiffe://x.example"])).unwrap_err();
        assert!(e.contains("excludedURIDomains") && e.contains("not a URI"), "{e}");
    }

    fn csr(uris: &[&str]) -> CertificateSigningRequest {
        let mut c = crate::pki::sign::tests::istiod_csr();
        c.sans = uris.iter().map(|u| SubjectAltName::Uri(u.to_string())).collect();
        c
    }

    #[test]
    fn which_constraints_a_request_gets() {
        use NameConstraintsMode::*;
        let policy = |mode, allowed: &[&str], dns: &[&str], excluded: &[&str]| IssuancePolicy {
            allowed_trust_domains: allowed.iter().map(|s| s.to_string()).collect(),
            name_constraints: NameConstraintsPolicy {
                mode,
                permitted_dns_domains: dns.iter().map(|s| s.to_string()).collect(),
                excluded_uri_domains: excluded.iter().map(|s| s.to_string()).collect(),
            },
            ..IssuancePolicy::default()
        };
        let istiod_a = "spiffe://a.example/ns/istio-system/sa/istiod";
        type Expected<'a> = Result<Option<(&'a [&'a str], &'a [&'a str])>, &'a str>;
        let cases: Vec<(&str, CertificateSigningRequest, bool, IssuancePolicy, Expected)> = vec![
            // Off: nothing, whatever the CSR says.
            (
                "off",
                csr(&[istiod_a]),
                true,
                policy(None, &[], &[], &[]),
                Ok(Option::None),
            ),
            // The CSR's trust domain, exactly.
            (
                "trust domain of the CSR",
                csr(&[istiod_a]),
                true,
                policy(TrustDomain, &[], &[], &[]),
                Ok(Some((&["URI:a.example"], &[]))),
            ),
            // Several SPIFFE IDs: each trust domain once, lower-cased; other URIs ignored.
            (
                "several trust domains",
                csr(&[
                    istiod_a,
                    "spiffe://B.example/ns/x/sa/y",
                    "spiffe://a.example/ns/x/sa/z",
                    "https://example.org",
                ]),
                true,
                policy(TrustDomain, &[], &[], &[]),
                Ok(Some((&["URI:a.example", "URI:b.example"], &[]))),
            ),
            // No SPIFFE ID: the issuer's default trust domain.
            (
                "default trust domain",
                csr(&[]),
                true,
                policy(TrustDomain, &[], &[], &[]),
                Ok(Some((&["URI:cluster.local"], &[]))),
            ),
            // ... which must be allowed by policy.
            (
                "default trust domain not allowed",
                csr(&[]),
                true,
                policy(TrustDomain, &["a.example"], &[], &[]),
                Err("DefaultTrustDomainNotAllowed"),
            ),
            // Required: no SPIFFE ID, no intermediate.
            (
                "required without spiffe",
                csr(&[]),
                true,
                policy(Required, &[], &[], &[]),
                Err("NoTrustDomain"),
            ),
            (
                "required with spiffe",
                csr(&[istiod_a]),
                true,
                policy(Required, &["a.example"], &[], &[]),
                Ok(Some((&["URI:a.example"], &[]))),
            ),
            // DNS subtrees and excluded URI domains are added as given.
            (
                "dns and excluded",
                csr(&[istiod_a]),
                true,
                policy(TrustDomain, &[], &["istio-system.svc"], &[".a.example"]),
                Ok(Some((&["URI:a.example", "DNS:istio-system.svc"], &["URI:.a.example"]))),
            ),
            // A leaf is never constrained.
            (
                "leaf",
                csr(&[istiod_a]),
                false,
                policy(Required, &[], &[], &[]),
                Ok(Option::None),
            ),
        ];
        for (name, csr, ca, policy, expected) in cases {
            let got = decide(&csr, ca, &policy, DEFAULT_TRUST_DOMAIN);
            match (got, expected) {
                (Ok(Option::None), Ok(Option::None)) => {}
                (Ok(Some(nc)), Ok(Some((permitted, excluded)))) => {
                    let summary = nc.summary(true);
                    assert_eq!(summary.permitted, permitted, "{name}");
                    assert_eq!(summary.excluded, excluded, "{name}");
                }
                (Err(v), Err(variant)) => assert!(format!("{v:?}").starts_with(variant), "{name}: {v:?}"),
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}

//! The Go judge judged: `tests/goverify` (Go's `crypto/x509`, as istiod) must accept what istiod
//! accepts and refuse what istiod refuses, or every test that leans on it proves nothing. All
//! inputs are made by openssl, independently of this crate.

mod support;

use std::collections::BTreeMap;

use support::goverify::{cacerts, istiod_loads, istiod_loads_at, workload_verifies};
use support::openssl::{Workdir, workload_certificate};

fn pki(root_bc: &str, int_ext: &str) -> Workdir {
    support::openssl::root_and_intermediate(root_bc, int_ext)
}

/// A workload certificate for `id` signed by the intermediate of `dir` (int.pem, int.key),
/// followed by the chain a proxy presents (the intermediate and root.pem).
fn workload(dir: &Workdir, id: &str) -> String {
    let chain = format!("{}{}", dir.read("int.pem"), dir.read("root.pem"));
    workload_certificate(
        dir.read("int.pem").as_bytes(),
        dir.read("int.key").as_bytes(),
        chain.as_bytes(),
        id,
    )
}

const CA_EXT: &str =
    "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n";

fn bundle(dir: &Workdir) -> BTreeMap<String, Vec<u8>> {
    cacerts(&dir.read("int.pem"), &dir.read("int.key"), "", &dir.read("root.pem"))
}

#[test]
fn istiod_check_accepts_a_plain_intermediate_bundle() {
    let dir = pki("CA:TRUE", CA_EXT);
    assert_eq!(istiod_loads(&bundle(&dir)), Ok(()));
}

#[test]
fn istiod_check_refuses_an_intermediate_whose_eku_excludes_server_auth() {
    let dir = pki("CA:TRUE", &format!("{CA_EXT}extendedKeyUsage=clientAuth\n"));
    let verdict = istiod_loads(&bundle(&dir));
    assert!(verdict.as_ref().is_err_and(|e| e.contains("key usage")), "{verdict:?}");
}

/// root (with `root_bc`) -> int -> istiod's CA, as a cacerts bundle for istiod's CA.
fn three_levels(root_bc: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = pki(
        root_bc,
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n",
    );
    dir.req_with_new_p256_key("istiod.key", "istiod.csr", None, "/O=goverify/CN=istiod", &[]);
    dir.sign("istiod.csr", ("int.pem", "int.key"), "30", "int.cnf", "istiod.pem", &[]);
    cacerts(
        &dir.read("istiod.pem"),
        &dir.read("istiod.key"),
        &dir.read("int.pem"),
        &dir.read("root.pem"),
    )
}

#[test]
fn istiod_check_refuses_a_sub_ca_below_a_root_with_path_length_zero() {
    // int is an intermediate that a root with path length 0 does not allow.
    let verdict = istiod_loads(&three_levels("CA:TRUE,pathlen:0"));
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("too many intermediates")),
        "{verdict:?}"
    );
    // The same three levels under a root without a path length load fine.
    assert_eq!(istiod_loads(&three_levels("CA:TRUE")), Ok(()));
}

/// Go counts intermediates *below* a CA, and istiod verifies `ca-cert.pem` as if it were the
/// leaf: a root with pathLen 0 above it passes istiod's load check — but every workload
/// certificate istiod then signs has `ca-cert.pem` as an intermediate, and Go refuses those.
/// (This is why `pki::chain` counts `ca-cert.pem` as an intermediate: stricter than the load
/// check, exactly as strict as the workloads.)
#[test]
fn a_root_with_path_length_zero_passes_istiods_load_check_but_fails_every_workload() {
    let dir = pki("CA:TRUE,pathlen:0", CA_EXT);
    assert_eq!(istiod_loads(&bundle(&dir)), Ok(()));
    let leaf = workload(&dir, "spiffe://cluster.local/ns/default/sa/x");
    let verdict = workload_verifies(leaf.as_bytes(), b"", dir.read("root.pem").as_bytes());
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("too many intermediates")),
        "{verdict:?}"
    );
}

#[test]
fn istiod_check_refuses_a_key_of_another_certificate() {
    let dir = pki("CA:TRUE", CA_EXT);
    let mut data = bundle(&dir);
    data.insert("ca-key.pem".into(), dir.read("root.key").into_bytes());
    let verdict = istiod_loads(&data);
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("does not match")),
        "{verdict:?}"
    );
}

#[test]
fn istiod_check_refuses_a_bundle_outside_its_validity() {
    let dir = pki("CA:TRUE", CA_EXT);
    let verdict = istiod_loads_at(&bundle(&dir), Some("2000-01-01T00:00:00Z"));
    assert!(
        verdict
            .as_ref()
            .is_err_and(|e| e.contains("expired or is not yet valid")),
        "{verdict:?}"
    );
}

#[test]
fn istiod_check_reads_the_tls_format_as_istiod_does() {
    let dir = pki("CA:TRUE", CA_EXT);
    let data = BTreeMap::from([
        ("tls.crt".to_string(), dir.read("int.pem").into_bytes()),
        ("tls.key".to_string(), dir.read("int.key").into_bytes()),
        ("ca.crt".to_string(), dir.read("root.pem").into_bytes()),
        // Ignored when tls.crt exists, as in istiod.
        ("root-cert.pem".to_string(), b"garbage".to_vec()),
    ]);
    assert_eq!(istiod_loads(&data), Ok(()));
}

#[test]
fn workload_certificate_verifies_under_its_own_root_only() {
    let dir = pki("CA:TRUE", CA_EXT);
    let leaf = workload(&dir, "spiffe://cluster.local/ns/default/sa/x");
    assert_eq!(
        workload_verifies(leaf.as_bytes(), b"", dir.read("root.pem").as_bytes()),
        Ok(())
    );
    let other = pki("CA:TRUE", CA_EXT);
    let verdict = workload_verifies(leaf.as_bytes(), b"", other.read("root.pem").as_bytes());
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("unknown authority")),
        "{verdict:?}"
    );
}

#[test]
fn workload_certificate_outside_a_uri_name_constraint_is_refused() {
    let constrained = format!("{CA_EXT}nameConstraints=critical,permitted;URI:cluster-a.example\n");
    let dir = pki("CA:TRUE", &constrained);
    let make = |id: &str| workload(&dir, id);
    let root = dir.read("root.pem");
    let own = make("spiffe://cluster-a.example/ns/x/sa/y");
    assert_eq!(workload_verifies(own.as_bytes(), b"", root.as_bytes()), Ok(()));
    let foreign = make("spiffe://cluster-b.example/ns/x/sa/y");
    let verdict = workload_verifies(foreign.as_bytes(), b"", root.as_bytes());
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("not permitted")),
        "{verdict:?}"
    );
}

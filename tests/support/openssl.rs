//! openssl, the independent judge of what we sign: a scratch directory to run it in, and the
//! two questions the tests ask most (does this chain verify, what does this certificate hold).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A temporary directory in which to write files and run openssl.
pub struct Workdir(tempfile::TempDir);

impl Workdir {
    pub fn new() -> Self {
        Self(tempfile::tempdir().expect("temporary directory"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> &Self {
        std::fs::write(self.path().join(name), contents).expect("write file");
        self
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).expect("read file")
    }

    /// Runs openssl with `args`; whether it succeeded, and what it said (stdout then stderr).
    pub fn try_run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("openssl is installed");
        let said = super::said(&out);
        (out.status.success(), said)
    }

    /// Runs openssl with `args`, which must succeed; returns what it said.
    pub fn run(&self, args: &[&str]) -> String {
        let (ok, said) = self.try_run(args);
        assert!(ok, "openssl {args:?}: {said}");
        said
    }

    /// `openssl req` with a new P-256 key written to `key`: a self-signed certificate valid for
    /// `days` when given, else a CSR, written to `out`, for `subject`, with each of
    /// `extensions` added (`-addext`).
    pub fn req_with_new_p256_key(&self, key: &str, out: &str, days: Option<u32>, subject: &str, extensions: &[&str]) {
        let days = days.map(|d| d.to_string());
        let mut args = vec!["req"];
        match &days {
            Some(days) => args.extend_from_slice(&["-x509", "-days", days]),
            None => args.push("-new"),
        }
        args.extend_from_slice(&[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-out",
            out,
            "-subj",
            subject,
        ]);
        for extension in extensions {
            args.extend_from_slice(&["-addext", extension]);
        }
        self.run(&args);
    }

    /// `openssl x509 -req`: signs the CSR in `csr` with the CA certificate and key in the files
    /// `(certificate, key)` of `ca` for `days`, with the extensions in file `extfile`, into
    /// `out`; `extra` adds options (a digest such as `-sha1`). Every certificate the tests make
    /// under a CA of their own is signed here.
    pub fn sign(&self, csr: &str, ca: (&str, &str), days: &str, extfile: &str, out: &str, extra: &[&str]) {
        let (ca, ca_key) = ca;
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-days", days, "-extfile", extfile, "-out", out]);
        self.run(&args);
    }

    /// A new P-256 key (PKCS#8) in `out`, made with `openssl genpkey`.
    pub fn new_p256_key(&self, out: &str) {
        self.run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            out,
        ]);
    }
}

/// A root (`CN=Root`, its basicConstraints `root_bc`, keyCertSign and cRLSign) and an
/// intermediate under it (`CN=Intermediate`, extfile lines `int_ext`), made by openssl: the
/// working directory holding root.pem, root.key, int.pem and int.key.
pub fn root_and_intermediate(root_bc: &str, int_ext: &str) -> Workdir {
    let dir = Workdir::new();
    dir.req_with_new_p256_key(
        "root.key",
        "root.pem",
        Some(3650),
        "/O=goverify/CN=Root",
        &[
            &format!("basicConstraints=critical,{root_bc}"),
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.req_with_new_p256_key("int.key", "int.csr", None, "/O=goverify/CN=Intermediate", &[]);
    dir.write("int.cnf", int_ext);
    dir.sign("int.csr", ("root.pem", "root.key"), "365", "int.cnf", "int.pem", &[]);
    dir
}

/// openssl's verdict on `chain_pem` (the leaf first) against `root_pem`, with x509_strict:
/// `"chain.pem: OK"` when it verifies.
pub fn verify(root_pem: &[u8], chain_pem: &[u8]) -> String {
    let dir = Workdir::new();
    dir.write("root.pem", root_pem).write("chain.pem", chain_pem);
    dir.try_run(&["verify", "-x509_strict", "-CAfile", "root.pem", "chain.pem"])
        .1
        .trim()
        .to_string()
}

/// openssl's verdict (x509_strict) on the first certificate of `leaf_pem`, with `untrusted_pem`
/// as untrusted intermediates, against every certificate of `roots_pem`: what a peer checks.
/// `Err` carries openssl's words.
pub fn verify_leaf(leaf_pem: &[u8], untrusted_pem: &[u8], roots_pem: &[u8]) -> Result<(), String> {
    let dir = Workdir::new();
    dir.write("leaf.pem", leaf_pem)
        .write("untrusted.pem", untrusted_pem)
        .write("roots.pem", roots_pem);
    let (ok, said) = dir.try_run(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        "roots.pem",
        "-untrusted",
        "untrusted.pem",
        "leaf.pem",
    ]);
    if ok && said.contains("leaf.pem: OK") {
        Ok(())
    } else {
        Err(said.trim().to_string())
    }
}

/// openssl's judgement of the intermediate a request was issued: its chain verifies against
/// `status.ca` (x509_strict), and it is a CA for workloads only (pathLen 0) carrying istiod's
/// SPIFFE ID. Returns its `openssl x509 -text`, for the caller's own checks.
pub fn assert_istiod_intermediate(cr: &mesh_ca_issuer::api::cert_manager::CertificateRequest) -> String {
    let status = cr.status.as_ref().expect("an issued request");
    let certificate = status.certificate.clone().expect("status.certificate");
    let ca = status.ca.clone().expect("status.ca");
    assert_eq!(verify(&ca, &certificate), "chain.pem: OK");
    let text = text(&certificate);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/istio-system/sa/istiod"),
        "{text}"
    );
    text
}

/// `openssl x509 -text` of the first certificate in `pem`.
pub fn text(pem: &[u8]) -> String {
    let dir = Workdir::new();
    dir.write("c.pem", pem);
    dir.run(&["x509", "-in", "c.pem", "-noout", "-text"])
}

/// A workload certificate as istiod makes one: a new P-256 key, the URI SAN `spiffe_id`, no
/// subject, serverAuth + clientAuth, valid for a day, signed with the CA certificate and key
/// (`ca-cert.pem`, `ca-key.pem`) and followed by `cert_chain_pem` (`cert-chain.pem`), as a
/// proxy presents it. Extra SANs (`DNS:...`) may be appended to `spiffe_id` with a comma.
pub fn workload_certificate(ca_cert_pem: &[u8], ca_key_pem: &[u8], cert_chain_pem: &[u8], spiffe_id: &str) -> String {
    let dir = Workdir::new();
    dir.write("ca.pem", ca_cert_pem).write("ca.key", ca_key_pem);
    let sans = spiffe_id
        .split(',')
        .map(|san| {
            if san.contains(':') && !san.starts_with("spiffe:") {
                san.to_string()
            } else {
                format!("URI:{san}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    dir.write(
        "ext.cnf",
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,{sans}\n"
        ),
    );
    dir.req_with_new_p256_key("leaf.key", "leaf.csr", None, "/", &[]);
    dir.sign("leaf.csr", ("ca.pem", "ca.key"), "1", "ext.cnf", "leaf.pem", &[]);
    let mut pem = dir.read("leaf.pem");
    pem.push_str(&String::from_utf8_lossy(cert_chain_pem));
    pem
}

/// openssl's verdict on a workload certificate followed by its chain (the first PEM block is
/// the leaf, the rest untrusted intermediates) against every root in `roots`.
pub fn workload_verifies(leaf_and_chain: &str, roots: &[u8]) -> bool {
    let end = "-----END CERTIFICATE-----\n";
    let split = leaf_and_chain.find(end).map(|i| i + end.len()).expect("a PEM leaf");
    let (leaf, untrusted) = leaf_and_chain.split_at(split);
    verify_leaf(leaf.as_bytes(), untrusted.as_bytes(), roots).is_ok()
}

/// openssl's verdict on the leaf of `leaf_and_chain` with the CRL of every CA of its chain
/// checked (`-crl_check_all`, as Envoy checks a peer): `untrusted` holds the intermediates,
/// `roots` the trust anchors, `crls` the PEM CRLs.
pub fn verify_with_crls(leaf_and_chain: &str, untrusted: &[u8], roots: &[u8], crls: &[u8]) -> (bool, String) {
    let dir = Workdir::new();
    let end = "-----END CERTIFICATE-----\n";
    let leaf = &leaf_and_chain[..leaf_and_chain.find(end).expect("a certificate") + end.len()];
    dir.write("leaf.pem", leaf)
        .write("untrusted.pem", untrusted)
        .write("roots.pem", roots)
        .write("crls.pem", crls);
    dir.try_run(&[
        "verify",
        "-crl_check_all",
        "-CAfile",
        "roots.pem",
        "-untrusted",
        "untrusted.pem",
        "-CRLfile",
        "crls.pem",
        "leaf.pem",
    ])
}

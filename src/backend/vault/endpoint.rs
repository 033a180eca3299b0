//! Where a Vault issuer's calls go, decided from its spec before any call: the server (https,
//! or http to a loopback address), the PKI mount and issuer its `path` names, the auth mount,
//! and whether a namespaced issuer may call that server at all (`--vault-servers`). Pure.

use std::net::IpAddr;

/// The server an issuer names, as called: `scheme://authority[/prefix]`, no trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub base: String,
}

/// Parses `spec.vault.server`. Plain `http://` only to a loopback address: a token sent to
/// anything else in clear could be read on the way.
pub fn parse_server(server: &str) -> Result<Server, String> {
    let uri: http::Uri = server
        .parse()
        .map_err(|e| format!("spec.vault.server {server:?} is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("spec.vault.server {server:?} names no host"));
    }
    match scheme.as_str() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "spec.vault.server {server:?} is plain http to a host that is not loopback: tokens would cross the network in clear; use https"
            ));
        }
        _ => return Err(format!("spec.vault.server {server:?} must be an https:// URL")),
    }
    if uri.query().is_some() {
        return Err(format!("spec.vault.server {server:?} must not carry a query"));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("spec.vault.server {server:?} must not carry user information"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(Server {
        base: format!("{scheme}://{}{prefix}", authority.to_ascii_lowercase()),
    })
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a namespaced issuer may call `server` under `--vault-servers` (`allowed`, URL
/// prefixes; empty: any). A prefix matches at a path boundary only, so
/// `https://vault.example` does not admit `https://vault.example.evil.test`.
pub fn server_allowed(server: &Server, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let with_slash = |s: &str| format!("{}/", s.trim_end_matches('/'));
    let server = with_slash(&server.base);
    allowed.iter().any(|prefix| match parse_server(prefix) {
        Ok(p) => server.starts_with(&with_slash(&p.base)),
        Err(_) => false,
    })
}

/// The `sign-intermediate` endpoint an issuer's `path` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignPath {
    /// The PKI mount, e.g. `pki` or `pki/mesh`.
    pub mount: String,
    /// The issuer: `default` for `<mount>/root/sign-intermediate`.
    pub issuer: String,
    /// The API path, without `/v1/`.
    pub path: String,
}

impl SignPath {
    /// Where the issuer's certificate and chain are read (Vault >= 1.11, every OpenBao).
    pub fn issuer_json(&self) -> String {
        format!("{}/issuer/{}/json", self.mount, self.issuer)
    }
}

/// Parses `spec.vault.path`: `<mount>/root/sign-intermediate` or
/// `<mount>/issuer/<ref>/sign-intermediate`, without `/v1/`.
pub fn parse_sign_path(path: &str) -> Result<SignPath, String> {
    let trimmed = path.trim_matches('/');
    let usage = format!(
        "spec.vault.path {path:?} is not a sign-intermediate endpoint: use <mount>/root/sign-intermediate or <mount>/issuer/<ref>/sign-intermediate (without /v1/)"
    );
    let segments: Vec<&str> = trimmed.split('/').collect();
    let valid = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if segments.first() == Some(&"v1") || !segments.iter().all(|s| valid(s)) {
        return Err(usage);
    }
    let (mount, issuer) = match segments.as_slice() {
        [mount @ .., "root", "sign-intermediate"] if !mount.is_empty() => (mount.join("/"), "default".to_string()),
        [mount @ .., "issuer", issuer, "sign-intermediate"] if !mount.is_empty() => {
            (mount.join("/"), issuer.to_string())
        }
        _ => return Err(usage),
    };
    Ok(SignPath {
        mount,
        issuer,
        path: trimmed.to_string(),
    })
}

/// The login path of the Kubernetes auth method from `mountPath` (with `/v1/`, as in
/// cert-manager): `/v1/auth/kubernetes` → `auth/kubernetes/login`.
pub fn kubernetes_login_path(mount_path: &str) -> Result<String, String> {
    let mount = mount_path
        .trim_end_matches('/')
        .strip_prefix("/v1/")
        .filter(|m| !m.is_empty() && !m.split('/').any(|s| s.is_empty() || s == ".."))
        .ok_or_else(|| {
            format!(
                "spec.vault.auth.kubernetes.mountPath {mount_path:?} must be the auth mount with its /v1/ prefix, e.g. /v1/auth/kubernetes"
            )
        })?;
    Ok(format!("{mount}/login"))
}

/// The login path of the AppRole auth method from `path` (without `/v1/auth/`, as in
/// cert-manager): `approle` → `auth/approle/login`.
pub fn app_role_login_path(path: &str) -> Result<String, String> {
    let mount = path.trim_matches('/');
    if mount.is_empty() || mount.starts_with("v1/") || mount.split('/').any(|s| s.is_empty() || s == "..") {
        return Err(format!(
            "spec.vault.auth.appRole.path {path:?} must be the AppRole mount without /v1/auth/, e.g. approle"
        ));
    }
    Ok(format!("auth/{mount}/login"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_https_or_loopback_http() {
        let cases = [
            ("https://vault.example:8200", Some("https://vault.example:8200")),
            ("https://Vault.Example:8200/", Some("https://vault.example:8200")),
            ("https://proxy.example/vault/", Some("https://proxy.example/vault")),
            ("http://127.0.0.1:8200", Some("http://127.0.0.1:8200")),
            ("http://[::1]:8200", Some("http://[::1]:8200")),
            ("http://localhost:8200", Some("http://localhost:8200")),
            // A token in clear across a network: refused.
            ("http://vault.example:8200", None),
            ("http://10.0.0.1:8200", None),
            ("ftp://vault.example", None),
            ("vault.example:8200", None),
            ("https://user:pw@vault.example", None),
            ("https://vault.example/?x=1", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_server(input).ok().map(|s| s.base),
                expected.map(String::from),
                "{input}"
            );
        }
    }

    #[test]
    fn vault_servers_match_at_a_path_boundary() {
        let server = |s: &str| parse_server(s).unwrap();
        let allowed = vec![
            "https://vault.example:8200".to_string(),
            "https://proxy.example/vault/".to_string(),
        ];
        assert!(server_allowed(&server("https://vault.example:8200"), &allowed));
        assert!(server_allowed(&server("https://VAULT.example:8200/"), &allowed));
        assert!(server_allowed(&server("https://proxy.example/vault"), &allowed));
        assert!(server_allowed(&server("https://proxy.example/vault/ns"), &allowed));
        // Prefixes of a host name or a path segment are not the server.
        assert!(!server_allowed(&server("https://vault.example:82000"), &allowed));
        assert!(!server_allowed(
            &server("https://vault.example:8200.evil.test"),
            &allowed
        ));
        assert!(!server_allowed(&server("https://proxy.example/vaulted"), &allowed));
        assert!(!server_allowed(&server("https://other.example"), &allowed));
        // No list: any server.
        assert!(server_allowed(&server("https://other.example"), &[]));
    }

    #[test]
    fn sign_paths_name_a_mount_and_an_issuer() {
        let ok = |path: &str, mount: &str, issuer: &str| {
            let parsed = parse_sign_path(path).unwrap();
            assert_eq!(
                (parsed.mount.as_str(), parsed.issuer.as_str()),
                (mount, issuer),
                "{path}"
            );
        };
        ok("pki/root/sign-intermediate", "pki", "default");
        ok("/pki/root/sign-intermediate/", "pki", "default");
        ok("pki/mesh/root/sign-intermediate", "pki/mesh", "default");
        ok("pki/issuer/mesh-root/sign-intermediate", "pki", "mesh-root");
        assert_eq!(
            parse_sign_path("pki/issuer/mesh-root/sign-intermediate")
                .unwrap()
                .issuer_json(),
            "pki/issuer/mesh-root/json"
        );
        for bad in [
            "v1/pki/root/sign-intermediate",
            "root/sign-intermediate",
            "pki/sign/istiod",
            "pki/root/sign-self-issued",
            "pki/../sys/root/sign-intermediate",
            "pki/issuer//sign-intermediate",
            "pki/root/sign-intermediate?x",
        ] {
            let err = parse_sign_path(bad).unwrap_err();
            assert!(err.contains("sign-intermediate endpoint"), "{bad}: {err}");
        }
    }

    #[test]
    fn auth_mounts_are_written_as_cert_manager_writes_them() {
        assert_eq!(
            kubernetes_login_path("/v1/auth/kubernetes").unwrap(),
            "auth/kubernetes/login"
        );
        assert_eq!(kubernetes_login_path("/v1/auth/east/").unwrap(), "auth/east/login");
        assert!(kubernetes_login_path("auth/kubernetes").is_err());
        assert!(kubernetes_login_path("/v1/").is_err());
        assert_eq!(app_role_login_path("approle").unwrap(), "auth/approle/login");
        assert!(app_role_login_path("/v1/auth/approle").is_err());
        assert!(app_role_login_path("").is_err());
    }
}

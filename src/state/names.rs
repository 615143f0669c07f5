//! Names and labels the old controller fixed, kept identical so a cluster can swap
//! controllers without re-creating a single object, and the ServiceAccount pull-secret order.

use sha2::{Digest, Sha224};

/// Label on every pull secret: the binding's name.
pub const BINDING_LABEL: &str = "acr.microsoft.com/binding";
/// RFC 3339 expiry of the token in the secret.
pub const EXPIRY_ANNOTATION: &str = "acr.microsoft.com/token.expiry";
/// RFC 3339 time the token was written into the secret (the old controller's name and meaning;
/// `status.lastTokenRefreshTime`).
pub const REFRESH_ANNOTATION: &str = "acr.microsoft.com/token.refresh";
/// RFC 3339 time the token was issued (its `iat`), when that is earlier than the write: a token
/// served from the pipeline's cache part-way through its life refreshes at its own half-life.
/// Absent on secrets of the old controller (the refresh time stands in).
pub const ISSUED_ANNOTATION: &str = "acr.microsoft.com/token.issued";
/// base36(sha224) of the binding inputs the token was minted for, as the old controller hashes
/// them (so it finds acrpull's Secrets current after a rollback).
pub const INPUTS_ANNOTATION: &str = "acr.microsoft.com/token.inputs";
/// When the token in the Secret is planned to be refreshed (RFC 3339, seconds): planned when it
/// was written, the same for every binding holding that token, never later than the boundary.
pub const REFRESH_AT_ANNOTATION: &str = "acr.microsoft.com/token.refresh-at";
/// base36(sha224) of every input, including those the old controller ignored (workload
/// identity client/tenant ids, air-gapped cloud config, the identity-audience annotation).
/// Written by acrpull on every Secret; absent on the old controller's.
pub const INPUTS_ALL_ANNOTATION: &str = "acr.microsoft.com/token.inputs-all";
/// On a binding (either version): `container-registry` requests identity tokens for the ACR
/// audience (registries with authentication-as-ARM disabled), `resource-manager` for Resource
/// Manager; absent, `--identity-audience` decides. An annotation rather than a spec field so
/// the v1beta2 schema is unchanged and the old controller's CRDs keep it (they would prune a
/// new field).
pub const IDENTITY_AUDIENCE_ANNOTATION: &str = "acr.microsoft.com/identity-audience";
/// Outcome of checking the credential at the registry's token endpoint after minting:
/// `true` (every requested scope granted) or `false`; absent when not checked.
pub const VERIFIED_ANNOTATION: &str = "acr.microsoft.com/token.verified";
/// The only key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// v1beta1 ServiceAccount default.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

const CURRENT_PREFIX: &str = "acr-pull-";
const LEGACY_SUFFIX: &str = "-msi-acrpull-secret";
/// 253 (longest object name) − 10 (static content) − 10 (hash): the old controller's bound.
const MAX_NAME_PART: usize = 233;

/// base36 of the SHA-224 digest, most significant digit first, no leading zeros
/// (what Go's `big.Int.Text(36)` prints).
pub fn base36_sha224(input: &[u8]) -> String {
    let digest = Sha224::digest(input);
    base36(&digest)
}

fn base36(bytes: &[u8]) -> String {
    // Repeated division of a big-endian byte string by 36.
    let mut num: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if num.is_empty() {
        return "0".into();
    }
    let mut digits = Vec::new();
    while !num.is_empty() {
        let mut rem: u32 = 0;
        let mut next = Vec::with_capacity(num.len());
        for &b in &num {
            let acc = (rem << 8) | u32::from(b);
            let q = acc / 36;
            rem = acc % 36;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize]);
        num = next;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// v1beta2 pull secret: `acr-pull-<binding>`; a binding name longer than 233 characters is cut
/// to 233, stripped of a trailing `.`, and suffixed with `-` and 10 characters of
/// base36(sha224(name)), so the result is at most 253 characters and still unique.
///
/// The old controller cuts at 233 characters of *binding name* (not when the whole name would
/// pass 253); acrpull does the same so existing secrets keep their names.
pub fn pull_secret_name(binding: &str) -> String {
    if binding.len() <= MAX_NAME_PART {
        return format!("{CURRENT_PREFIX}{binding}");
    }
    // Object names are ASCII (RFC 1123), but never slice through a UTF-8 character.
    let mut cut = MAX_NAME_PART;
    while !binding.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = binding[..cut].trim_end_matches('.');
    let hash = base36_sha224(binding.as_bytes());
    let hash = &hash[..hash.len().min(10)];
    format!("{CURRENT_PREFIX}{head}-{hash}")
}

/// v1beta1 pull secret: `<binding>-msi-acrpull-secret`.
pub fn legacy_pull_secret_name(binding: &str) -> String {
    format!("{binding}{LEGACY_SUFFIX}")
}

/// The name the pull secret of a binding of `version` named `binding` must have.
pub fn expected_secret_name(version: super::binding::Version, binding: &str) -> String {
    match version {
        super::binding::Version::V1beta1 => legacy_pull_secret_name(binding),
        super::binding::Version::V1beta2 => pull_secret_name(binding),
    }
}

/// Which controller-managed family a pull-secret name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretFamily {
    /// Not managed by acrpull (a user's own pull secret).
    Unmanaged,
    /// `acr-pull-*` (v1beta2).
    Current,
    /// `*-msi-acrpull-secret` (v1beta1).
    Legacy,
}

pub fn secret_family(name: &str) -> SecretFamily {
    if name.starts_with(CURRENT_PREFIX) {
        SecretFamily::Current
    } else if name.ends_with(LEGACY_SUFFIX) {
        SecretFamily::Legacy
    } else {
        SecretFamily::Unmanaged
    }
}

/// The order kubelet tries pull secrets in is the list order; keep (a) secrets not managed by
/// acrpull, (b) `acr-pull-*`, (c) `*-msi-acrpull-secret`, each group sorted by name, and drop
/// duplicate entries.
pub fn sort_pull_secrets(names: &mut Vec<String>) {
    names.sort_by(|a, b| (secret_family(a), a).cmp(&(secret_family(b), b)));
    names.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_matches_go_big_int_text() {
        // Go: new(big.Int).SetBytes(x).Text(36)
        assert_eq!(base36(&[0]), "0");
        assert_eq!(base36(&[35]), "z");
        assert_eq!(base36(&[36]), "10");
        assert_eq!(base36(&[0x01, 0x00]), "74"); // 256 = 7*36 + 4
        assert_eq!(base36(&[0xff, 0xff, 0xff, 0xff]), "1z141z3"); // 4294967295
        assert_eq!(base36(&[0, 0, 1]), "1");
    }

    #[test]
    fn sha224_hash_is_deterministic_and_name_safe() {
        // sha224("") = d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f
        let empty = base36_sha224(b"");
        assert_eq!(
            empty,
            base36(&[
                0xd1, 0x4a, 0x02, 0x8c, 0x2a, 0x3a, 0x2b, 0xc9, 0x47, 0x61, 0x02, 0xbb, 0x28, 0x82,
                0x34, 0xc4, 0x15, 0xa2, 0xb0, 0x1f, 0x82, 0x8e, 0xa6, 0x2a, 0xc5, 0xb3, 0xe4, 0x2f
            ])
        );
        assert!(empty
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        // 224 bits in base36 is at most 44 digits.
        assert!(empty.len() <= 44 && empty.len() > 30);
    }

    type NameCheck = Box<dyn Fn(&str) -> bool>;

    #[test]
    fn pull_secret_names() {
        let long = "a".repeat(240);
        let long_dot = format!("{}.{}", "b".repeat(232), "c".repeat(20));
        let exactly = "d".repeat(233);
        let cases: Vec<(&str, NameCheck)> = vec![
            ("app", Box::new(|n| n == "acr-pull-app")),
            (
                &exactly,
                Box::new(|n| n == format!("acr-pull-{}", "d".repeat(233))),
            ),
            (
                &long,
                Box::new(|n| {
                    n.len() == 253
                        && n.starts_with(&format!("acr-pull-{}-", "a".repeat(233)))
                        && n.ends_with(&base36_sha224("a".repeat(240).as_bytes())[..10])
                }),
            ),
            (
                // the cut lands right after a '.', which must not be followed by '-'
                &long_dot,
                Box::new(|n| {
                    n.starts_with(&format!("acr-pull-{}-", "b".repeat(232))) && !n.contains(".-")
                }),
            ),
        ];
        for (binding, check) in cases {
            let name = pull_secret_name(binding);
            assert!(check(&name), "{binding:?} -> {name:?}");
            assert!(name.len() <= 253, "{name}");
        }
        // Distinct long names sharing the first 233 characters get distinct secrets.
        let a = format!("{}x", "q".repeat(240));
        let b = format!("{}y", "q".repeat(240));
        assert_ne!(pull_secret_name(&a), pull_secret_name(&b));
        assert_eq!(legacy_pull_secret_name("app"), "app-msi-acrpull-secret");
    }

    #[test]
    fn families() {
        for (name, family) in [
            ("regcred", SecretFamily::Unmanaged),
            ("acr-pull-app", SecretFamily::Current),
            ("app-msi-acrpull-secret", SecretFamily::Legacy),
            // both patterns: the acr-pull- prefix wins, as in the old controller
            ("acr-pull-x-msi-acrpull-secret", SecretFamily::Current),
            ("acr-pullx", SecretFamily::Unmanaged),
            ("msi-acrpull-secret", SecretFamily::Unmanaged),
        ] {
            assert_eq!(secret_family(name), family, "{name}");
        }
    }

    #[test]
    fn ordering_mixed_managed_and_unmanaged() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (
                &[
                    "z-msi-acrpull-secret",
                    "acr-pull-b",
                    "zeta",
                    "acr-pull-a",
                    "alpha",
                    "a-msi-acrpull-secret",
                ],
                &[
                    "alpha",
                    "zeta",
                    "acr-pull-a",
                    "acr-pull-b",
                    "a-msi-acrpull-secret",
                    "z-msi-acrpull-secret",
                ],
            ),
            (
                &["acr-pull-a", "acr-pull-a", "mine"],
                &["mine", "acr-pull-a"],
            ),
            (&["b", "a"], &["a", "b"]),
        ];
        for (input, want) in cases {
            let mut names: Vec<String> = input.iter().map(|s| s.to_string()).collect();
            sort_pull_secrets(&mut names);
            assert_eq!(
                names,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            );
        }
    }
}

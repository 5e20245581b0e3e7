//! Passwords: the policy a new password must meet, and Argon2id hashing with a pepper.
//!
//! This module owns the rules and the arithmetic, nothing else: it never reads the database, never
//! sees a request, and never logs a password. A handler that sets a password (sign-up, change,
//! reset) runs [`PasswordPolicy::check`] and reports every violation at once; it stores only what
//! [`PasswordHasher::hash`] returns. Login checks with [`PasswordHasher::verify`], spends the same
//! time through [`PasswordHasher::dummy_verify`] when the account does not exist, and hashes the
//! password again after a successful login when [`PasswordHasher::needs_rehash`] says so.
//!
//! # The policy
//! At least [`PasswordPolicy::MIN_CHARS`] and at most [`PasswordPolicy::MAX_CHARS`] characters,
//! counted as Unicode scalar values (`str::chars`) with no normalisation, so `é` typed as one code
//! point counts 1 and typed as `e` plus a combining accent counts 2. Nothing is ever cut off: the
//! maximum exists to bound the work per request, and Argon2 hashes every byte it is given. No
//! composition rules (digits, symbols, upper case): a password is refused only when it is on the
//! common-password list (`api/data/`, compared in lower case), or contains the local part of the
//! account's email address or the organisation's slug.
//!
//! # Hashing
//! Argon2id, version 0x13, m = 19 MiB, t = 2, p = 1, 32-byte output and 16-byte random salt: the
//! OWASP recommendation for interactive logins, and also the `argon2` crate's defaults (a test
//! holds the two together, so a change in the crate's defaults cannot move ours silently). The
//! pepper is Argon2's secret input: it lives in configuration, never in the database, so a stolen
//! database alone does not let anyone test guesses offline.
//!
//! # Migration
//! A PHC string does not record whether a pepper was used. Hashes made without one (plain
//! `Argon2::default()`, as the API's first login code made them) never verify under a peppered
//! hasher, and neither do hashes made with a different pepper: switching to this module, or
//! changing the pepper later, means every existing password must be reset. No production account exists yet, so the switch costs nothing
//! today; after it, treat the pepper as permanent.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use model::settings::Secret;

/// The rules a new password must meet. See the module documentation for the reasoning.
#[derive(Debug, Clone, Copy, Default)]
pub struct PasswordPolicy;

/// What the policy knows about the account whose password is being set. A field left `None`
/// skips its check.
#[derive(Debug, Clone, Copy, Default)]
pub struct PasswordContext<'a> {
    /// The account's email address; its local part (before `@`, without a `+tag`) may not appear
    /// in the password.
    pub email: Option<&'a str>,
    /// The organisation's slug, which may not appear in the password either.
    pub tenant_slug: Option<&'a str>,
}

/// One rule a password breaks. `Display` is the message for the person choosing the password;
/// [`PolicyViolation::code`] is a stable identifier for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error(
        "use at least {min} characters (this one has {actual}); a few unrelated words make a long password that is easy to remember"
    )]
    TooShort { min: usize, actual: usize },
    #[error("use at most {max} characters (this one has {actual})")]
    TooLong { max: usize, actual: usize },
    #[error("this password is on a list of commonly used passwords; choose one that is not")]
    Common,
    #[error("do not use your email address in your password")]
    ContainsEmail,
    #[error("do not use your organisation's name in your password")]
    ContainsTenant,
}

impl PolicyViolation {
    /// A stable, machine-readable name for this violation.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyViolation::TooShort { .. } => "too_short",
            PolicyViolation::TooLong { .. } => "too_long",
            PolicyViolation::Common => "common",
            PolicyViolation::ContainsEmail => "contains_email",
            PolicyViolation::ContainsTenant => "contains_tenant",
        }
    }
}

/// An email local part or slug shorter than this is not searched for inside passwords: `jo` or
/// `abc` would refuse countless good passwords while protecting nothing.
const MIN_IDENTIFIER_CHARS: usize = 4;

/// Lowercase, deduplicated; see `api/data/README.md` for where it comes from.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .filter(|line| !line.is_empty())
        .collect()
});

impl PasswordPolicy {
    /// Fewest characters a password may have.
    pub const MIN_CHARS: usize = 12;
    /// Most characters a password may have: well above 64, so that pass phrases and password
    /// managers' output fit, and low enough to bound the work one request can cause.
    pub const MAX_CHARS: usize = 256;

    /// Every rule `password` breaks, in a fixed order; empty when it may be used.
    #[must_use]
    pub fn check(&self, password: &str, context: &PasswordContext<'_>) -> Vec<PolicyViolation> {
        let mut violations = Vec::new();
        let chars = password.chars().count();
        if chars < Self::MIN_CHARS {
            violations.push(PolicyViolation::TooShort {
                min: Self::MIN_CHARS,
                actual: chars,
            });
        }
        if chars > Self::MAX_CHARS {
            violations.push(PolicyViolation::TooLong {
                max: Self::MAX_CHARS,
                actual: chars,
            });
        }
        let lower = password.to_lowercase();
        if COMMON_PASSWORDS.contains(lower.as_str()) || COMMON_PASSWORDS.contains(lower.trim()) {
            violations.push(PolicyViolation::Common);
        }
        if let Some(local) = context.email.map(email_local_part)
            && contains_identifier(&lower, local)
        {
            violations.push(PolicyViolation::ContainsEmail);
        }
        if let Some(slug) = context.tenant_slug
            && contains_identifier(&lower, slug)
        {
            violations.push(PolicyViolation::ContainsTenant);
        }
        violations
    }
}

/// `jane.doe` of `Jane.Doe+cmms@plant.example`.
fn email_local_part(email: &str) -> &str {
    let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
    local.split('+').next().unwrap_or(local)
}

fn contains_identifier(lower_password: &str, identifier: &str) -> bool {
    let identifier = identifier.trim().to_lowercase();
    identifier.chars().count() >= MIN_IDENTIFIER_CHARS && lower_password.contains(&identifier)
}

/// Why a hasher could not be built or a hash could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "the password pepper must be at least {min} bytes of random data (this one has {len})",
        min = PasswordHasher::MIN_PEPPER_BYTES
    )]
    PepperTooShort { len: usize },
    #[error("Argon2 refused the pepper or the parameters")]
    Setup(#[source] argon2::Error),
    #[error("hashing the password failed")]
    Hash(#[source] argon2::password_hash::Error),
}

/// Memory cost in KiB (19 MiB).
const M_COST_KIB: u32 = 19 * 1024;
/// Passes over memory.
const T_COST: u32 = 2;
/// Lanes.
const P_COST: u32 = 1;
/// Length of the stored hash in bytes.
const OUTPUT_LEN: usize = 32;
/// Salt for [`PasswordHasher::dummy_verify`]: its output is thrown away, so it need not be random.
const DUMMY_SALT: &[u8; 16] = b"no-such-account!";

/// Hashes and checks passwords with Argon2id and the pepper from configuration.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    pepper: Secret,
}

impl PasswordHasher {
    /// Shortest pepper accepted, in bytes. Use random data, such as 48 random bytes in base64.
    pub const MIN_PEPPER_BYTES: usize = 32;

    /// A hasher keyed with `pepper`, refused when the pepper is shorter than
    /// [`Self::MIN_PEPPER_BYTES`].
    pub fn new(pepper: Secret) -> Result<Self, PasswordError> {
        let len = pepper.expose().len();
        if len < Self::MIN_PEPPER_BYTES {
            return Err(PasswordError::PepperTooShort { len });
        }
        let hasher = Self { pepper };
        hasher.argon2().map_err(PasswordError::Setup)?;
        Ok(hasher)
    }

    fn argon2(&self) -> Result<Argon2<'_>, argon2::Error> {
        Argon2::new_with_secret(
            self.pepper.expose().as_bytes(),
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))?,
        )
    }

    /// The PHC string to store for `password`, with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let salt = SaltString::generate(&mut OsRng);
        let argon2 = self.argon2().map_err(PasswordError::Setup)?;
        let hash = argon2
            .hash_password(password.as_bytes(), &salt)
            .map_err(PasswordError::Hash)?;
        Ok(hash.to_string())
    }

    /// Whether `password` matches `phc_hash`, a hash this hasher (same pepper) made, possibly
    /// with older parameters. The comparison is constant-time; anything that is not a valid
    /// Argon2 PHC string is simply a mismatch.
    #[must_use]
    pub fn verify(&self, password: &str, phc_hash: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc_hash) else {
            return false;
        };
        let Ok(argon2) = self.argon2() else {
            return false;
        };
        argon2.verify_password(password.as_bytes(), &hash).is_ok()
    }

    /// Spends the time [`Self::verify`] would on a hash of today's parameters, and learns
    /// nothing: for logins naming an account that does not exist, so the response time does not
    /// tell which accounts do.
    pub fn dummy_verify(&self, password: &str) {
        let mut out = [0u8; OUTPUT_LEN];
        if let Ok(argon2) = self.argon2() {
            let _ = argon2.hash_password_into(password.as_bytes(), DUMMY_SALT, &mut out);
        }
        black_box(out);
    }

    /// Whether `phc_hash` was made with another algorithm, version or parameters than this
    /// hasher uses today (or is not a hash at all), so that it should be replaced by a fresh hash
    /// of the password just verified. It cannot tell which pepper a hash was made with.
    #[must_use]
    pub fn needs_rehash(&self, phc_hash: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc_hash) else {
            return true;
        };
        if hash.algorithm != Algorithm::Argon2id.ident()
            || hash.version != Some(u32::from(Version::V0x13))
        {
            return true;
        }
        match (
            Params::try_from(&hash),
            Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)),
        ) {
            (Ok(used), Ok(current)) => used != current,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper(c: char) -> Secret {
        Secret::new(c.to_string().repeat(PasswordHasher::MIN_PEPPER_BYTES))
    }

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(pepper('p')).unwrap()
    }

    fn codes(password: &str, context: PasswordContext<'_>) -> Vec<&'static str> {
        PasswordPolicy
            .check(password, &context)
            .iter()
            .map(PolicyViolation::code)
            .collect()
    }

    /// Distinct words, so that no prefix of it is a common password.
    fn long_password(chars: usize) -> String {
        "valve seat gasket torque wrench spindle bearing "
            .chars()
            .cycle()
            .take(chars)
            .collect()
    }

    #[test]
    fn policy_table() {
        let none = PasswordContext::default();
        let jane = PasswordContext {
            email: Some("Jane.Doe+cmms@plant.example"),
            tenant_slug: Some("acme-plant"),
        };
        let short_names = PasswordContext {
            email: Some("jo@plant.example"),
            tenant_slug: Some("abc"),
        };
        let at_max = long_password(PasswordPolicy::MAX_CHARS);
        let over_max = long_password(PasswordPolicy::MAX_CHARS + 1);
        let cases: &[(&str, &str, PasswordContext<'_>, &[&str])] = &[
            ("empty", "", none, &["too_short"]),
            ("eleven", "pump-valve7", none, &["too_short"]),
            ("exactly twelve", "pump-valve-7", none, &[]),
            ("at the maximum", &at_max, none, &[]),
            ("over the maximum", &over_max, none, &["too_long"]),
            ("common", "qwerty123456", none, &["common"]),
            ("common in capitals", "QWERTY123456", none, &["common"]),
            ("common in mixed case", "PassWord1234", none, &["common"]),
            ("common with spaces", " 1qaz2wsx3edc ", none, &["common"]),
            (
                "email local part",
                "jane.doe-pumps",
                jane,
                &["contains_email"],
            ),
            (
                "email local part only",
                "JANE.DOE.JANE.DOE",
                jane,
                &["contains_email"],
            ),
            (
                "tenant slug",
                "ACME-PLANT pumps",
                jane,
                &["contains_tenant"],
            ),
            (
                "both names",
                "acme-plant jane.doe",
                jane,
                &["contains_email", "contains_tenant"],
            ),
            (
                "short names are not searched",
                "jo-abc-pump-valve",
                short_names,
                &[],
            ),
            (
                "everything at once",
                "Jane.Doe",
                jane,
                &["too_short", "contains_email"],
            ),
            (
                "short and common",
                "password",
                none,
                &["too_short", "common"],
            ),
        ];
        for (name, password, context, expected) in cases {
            assert_eq!(codes(password, *context), *expected, "{name}");
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let none = PasswordContext::default();
        // 11 characters but 22 bytes, then 12 characters.
        assert_eq!(
            PasswordPolicy.check(&"é".repeat(11), &none),
            [PolicyViolation::TooShort {
                min: 12,
                actual: 11
            }]
        );
        assert!(PasswordPolicy.check(&"é".repeat(12), &none).is_empty());
        assert!(PasswordPolicy.check(&"🔧".repeat(12), &none).is_empty());
        // No normalisation: `e` plus a combining accent is two characters.
        assert!(
            PasswordPolicy
                .check(&"e\u{301}".repeat(6), &none)
                .is_empty()
        );
        assert_eq!(
            codes(&"ß".repeat(PasswordPolicy::MAX_CHARS + 1), none),
            ["too_long"]
        );
    }

    #[test]
    fn violations_read_as_advice() {
        let v = PasswordPolicy.check("short", &PasswordContext::default());
        assert!(
            v[0].to_string().starts_with("use at least 12 characters"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn the_common_list_is_loaded_and_lowercase() {
        assert!(COMMON_PASSWORDS.len() > 19_000);
        assert!(COMMON_PASSWORDS.iter().all(|p| *p == p.to_lowercase()));
        assert!(COMMON_PASSWORDS.contains("password1234"));
    }

    #[test]
    fn short_peppers_are_refused() {
        let short = Secret::new("x".repeat(PasswordHasher::MIN_PEPPER_BYTES - 1));
        assert!(matches!(
            PasswordHasher::new(short),
            Err(PasswordError::PepperTooShort { len: 31 })
        ));
        assert!(PasswordHasher::new(pepper('x')).is_ok());
    }

    #[test]
    fn parameters_are_the_owasp_ones_and_argon2s_defaults() {
        let ours = Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)).unwrap();
        assert_eq!(
            (ours.m_cost(), ours.t_cost(), ours.p_cost()),
            (19 * 1024, 2, 1)
        );
        assert_eq!(ours.m_cost(), Params::DEFAULT_M_COST);
        assert_eq!(ours.t_cost(), Params::DEFAULT_T_COST);
        assert_eq!(ours.p_cost(), Params::DEFAULT_P_COST);
        assert_eq!(OUTPUT_LEN, Params::DEFAULT_OUTPUT_LEN);
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hasher();
        let hash = h.hash("correct horse battery staple").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(h.verify("correct horse battery staple", &hash));
        assert!(!h.verify("correct horse battery stapler", &hash));
        assert!(!h.verify("correct horse battery staple", "not a hash"));
        assert!(!h.needs_rehash(&hash));
    }

    #[test]
    fn another_pepper_does_not_verify() {
        let hash = hasher().hash("correct horse battery staple").unwrap();
        let other = PasswordHasher::new(pepper('q')).unwrap();
        assert!(!other.verify("correct horse battery staple", &hash));
    }

    #[test]
    fn hashes_made_without_a_pepper_do_not_verify() {
        let salt = SaltString::generate(&mut OsRng);
        let unpeppered = Argon2::default()
            .hash_password(b"correct horse battery staple", &salt)
            .unwrap()
            .to_string();
        assert!(!hasher().verify("correct horse battery staple", &unpeppered));
        // Same algorithm and parameters as ours: only the reset described in the module
        // documentation gets rid of such a hash.
        assert!(!hasher().needs_rehash(&unpeppered));
    }

    #[test]
    fn other_algorithms_and_parameters_need_a_rehash() {
        let h = hasher();
        let pepper = pepper('p');
        let old = |algorithm, params| {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new_with_secret(
                pepper.expose().as_bytes(),
                algorithm,
                Version::V0x13,
                params,
            )
            .unwrap()
            .hash_password(b"correct horse battery staple", &salt)
            .unwrap()
            .to_string()
        };
        let cheaper = old(Algorithm::Argon2id, Params::new(4096, 3, 1, None).unwrap());
        assert!(h.verify("correct horse battery staple", &cheaper));
        assert!(h.needs_rehash(&cheaper));
        let argon2i = old(Algorithm::Argon2i, Params::new(4096, 3, 1, None).unwrap());
        assert!(h.verify("correct horse battery staple", &argon2i));
        assert!(h.needs_rehash(&argon2i));
        assert!(h.needs_rehash("not a hash"));
        assert!(h.needs_rehash("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"));
    }

    #[test]
    fn nothing_is_truncated() {
        let h = hasher();
        let password = long_password(200);
        let mut other = password.clone();
        other.pop();
        other.push('!');
        assert_ne!(password, other);
        let hash = h.hash(&password).unwrap();
        assert!(h.verify(&password, &hash));
        assert!(!h.verify(&other, &hash));
    }

    #[test]
    fn dummy_verify_accepts_any_input() {
        let h = hasher();
        h.dummy_verify("");
        h.dummy_verify(&long_password(PasswordPolicy::MAX_CHARS * 4));
    }
}

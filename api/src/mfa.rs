//! Multi-factor authentication: the arithmetic of TOTP (RFC 6238), the secrets and the
//! recovery codes.
//!
//! This module owns the rules and the cryptography, nothing else: it never reads the database,
//! never sees a request and never reads the clock (callers pass the time in). The handlers in
//! [`crate::routes::mfa`] keep what it returns and call it with what they read.
//!
//! # TOTP
//! HMAC-SHA-1, 6 digits, 30-second steps from the Unix epoch: what every authenticator app
//! computes from an `otpauth://` URI. A code is accepted for the current step and one step
//! either side (clocks of phones drift), compared in constant time, and only for a step later
//! than the last one accepted for the account, so a code is never accepted twice, even within
//! its own 90 seconds.
//!
//! # Secrets at rest
//! A TOTP secret is 20 random bytes (the RFC's size for SHA-1), shown to the user once in
//! base32. The database keeps it sealed with ChaCha20-Poly1305: a random 12-byte nonce
//! followed by the ciphertext and tag, with the user's id as associated data, so a sealed
//! secret copied onto another user's row does not open. The key is HMAC-SHA-256 of a fixed
//! label under the password pepper: like the password hashes, a stolen database alone gives
//! nothing away, and changing the pepper means every user enrolls again.
//!
//! # Recovery codes
//! Ten codes of 80 random bits each, written `xxxx-xxxx-xxxx-xxxx` in lower-case base32 and
//! shown once. Only a keyed hash is stored (HMAC-SHA-256 under a second key derived from the
//! pepper, rather than a bare SHA-256, so that a database without the configuration cannot
//! even be searched offline); each code is good for one use.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use data_encoding::{BASE32_NOPAD, Encoding};
use hmac::{Hmac, Mac};
use model::settings::Secret;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The issuer authenticator apps show next to the account.
pub const ISSUER: &str = "MaintAInPro";
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Seconds of one time step.
pub const PERIOD: u64 = 30;
/// Steps accepted either side of the current one.
pub const SKEW: u64 = 1;
/// Bytes of a TOTP secret (RFC 4226 recommends 160 bits for HMAC-SHA-1).
pub const SECRET_BYTES: usize = 20;
/// Recovery codes made at a time.
pub const RECOVERY_CODES: usize = 10;
/// Random bytes of a recovery code: 80 bits, 16 base32 characters.
const RECOVERY_CODE_BYTES: usize = 10;
/// Bytes of a ChaCha20-Poly1305 nonce.
const NONCE_BYTES: usize = 12;

const SECRET_KEY_LABEL: &[u8] = b"maintainpro mfa totp-secret sealing key v1";
const RECOVERY_KEY_LABEL: &[u8] = b"maintainpro mfa recovery-code hashing key v1";

/// RFC 4648 base32 in lower case, without padding: recovery codes read and type more easily
/// in lower case, and are accepted in either.
fn lower_base32() -> Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.encoding().expect("a valid base32 specification")
}

/// The time step of `unix_secs`.
#[must_use]
pub fn step(unix_secs: u64) -> u64 {
    unix_secs / PERIOD
}

/// HOTP (RFC 4226) of `secret` at `counter`, with `digits` digits (at most 9).
#[must_use]
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[19] & 0x0f);
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    binary % 10u32.pow(digits.min(9))
}

/// The 6-digit code of `secret` for time step `step`, zero-padded.
#[must_use]
pub fn code_for_step(secret: &[u8], step: u64) -> String {
    format!(
        "{:0width$}",
        hotp(secret, step, DIGITS),
        width = DIGITS as usize
    )
}

/// The 6-digit code of `secret` at `unix_secs`.
#[must_use]
pub fn code_at(secret: &[u8], unix_secs: u64) -> String {
    code_for_step(secret, step(unix_secs))
}

/// The step `code` matches at `unix_secs`, within [`SKEW`] steps either side, if that step is
/// later than `last_step` (the last step accepted for the account: a code is never accepted
/// twice). Spaces in the code are ignored, as apps show `123 456`. Every candidate is
/// compared, in constant time, whatever matched before it.
#[must_use]
pub fn verify(secret: &[u8], code: &str, unix_secs: u64, last_step: Option<u64>) -> Option<u64> {
    let code: Vec<u8> = code.bytes().filter(|b| *b != b' ').collect();
    if code.len() != DIGITS as usize || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let now = step(unix_secs);
    let mut matched = None;
    for candidate in now.saturating_sub(SKEW)..=now.saturating_add(SKEW) {
        let expected = code_for_step(secret, candidate);
        let fresh = last_step.is_none_or(|last| candidate > last);
        if bool::from(expected.as_bytes().ct_eq(&code)) && fresh {
            matched = Some(candidate);
        }
    }
    matched
}

/// A new random TOTP secret.
#[must_use]
pub fn new_secret() -> [u8; SECRET_BYTES] {
    let mut secret = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut secret);
    secret
}

/// `secret` in base32 without padding, as authenticator apps take it.
#[must_use]
pub fn secret_base32(secret: &[u8]) -> String {
    BASE32_NOPAD.encode(secret)
}

/// The secret of a base32 string (upper or lower case, spaces ignored), if it is one.
#[must_use]
pub fn secret_from_base32(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    BASE32_NOPAD.decode(cleaned.as_bytes()).ok()
}

/// Unreserved characters (RFC 3986) stay as they are; everything else is encoded.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `otpauth://` URI an authenticator app scans (as a QR code) or takes as text:
/// `otpauth://totp/MaintAInPro:<email>?secret=...&issuer=MaintAInPro&algorithm=SHA1&digits=6&period=30`.
#[must_use]
pub fn otpauth_uri(secret: &[u8], account: &str) -> String {
    let issuer = utf8_percent_encode(ISSUER, URI_COMPONENT);
    format!(
        "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        utf8_percent_encode(account, URI_COMPONENT),
        secret_base32(secret),
    )
}

/// New recovery codes, `xxxx-xxxx-xxxx-xxxx` each: shown once, stored as
/// [`MfaKeys::recovery_code_hash`].
#[must_use]
pub fn new_recovery_codes() -> Vec<String> {
    let encoding = lower_base32();
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; RECOVERY_CODE_BYTES];
            OsRng.fill_bytes(&mut bytes);
            let text = encoding.encode(&bytes);
            text.as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// The canonical form of a recovery code as typed: lower case, without dashes or spaces;
/// `None` when it cannot be one.
fn canonical_recovery_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let decoded = lower_base32().decode(code.as_bytes()).ok()?;
    (decoded.len() == RECOVERY_CODE_BYTES).then_some(code)
}

/// Why a sealed secret did not open.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error(
        "an MFA secret cannot be decrypted: it belongs to another user or was sealed under another password pepper"
    )]
    Unsealable,
    #[error("an MFA secret cannot be encrypted")]
    Seal,
}

/// The keys derived from the password pepper: one seals TOTP secrets, one hashes recovery
/// codes.
#[derive(Clone)]
pub struct MfaKeys {
    sealing: [u8; 32],
    recovery: [u8; 32],
}

impl std::fmt::Debug for MfaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaKeys(***)")
    }
}

/// A key for one purpose (`label`) derived from the pepper; API keys derive theirs too.
pub(crate) fn derive(pepper: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl MfaKeys {
    #[must_use]
    pub fn new(pepper: &Secret) -> Self {
        let pepper = pepper.expose().as_bytes();
        Self {
            sealing: derive(pepper, SECRET_KEY_LABEL),
            recovery: derive(pepper, RECOVERY_KEY_LABEL),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(self.sealing))
    }

    /// `secret` sealed for `user`: nonce, then ciphertext and tag.
    pub fn seal(&self, user: Uuid, secret: &[u8]) -> Result<Vec<u8>, MfaError> {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: user.as_bytes(),
                },
            )
            .map_err(|_| MfaError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The secret [`Self::seal`] sealed for `user`.
    pub fn open(&self, user: Uuid, sealed: &[u8]) -> Result<Vec<u8>, MfaError> {
        let (nonce, ciphertext) = sealed
            .split_at_checked(NONCE_BYTES)
            .ok_or(MfaError::Unsealable)?;
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| MfaError::Unsealable)?;
        self.cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: user.as_bytes(),
                },
            )
            .map_err(|_| MfaError::Unsealable)
    }

    /// What the database keeps of a recovery code as typed (upper or lower case, with or
    /// without dashes); `None` when the text cannot be a recovery code at all.
    #[must_use]
    pub fn recovery_code_hash(&self, typed: &str) -> Option<[u8; 32]> {
        let code = canonical_recovery_code(typed)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.recovery).expect("HMAC takes keys of any length");
        mac.update(code.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-1 seed of RFC 6238 appendix B.
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    /// RFC 6238 appendix B, SHA-1 rows: time and 8-digit TOTP.
    const RFC_VECTORS: &[(u64, u32)] = &[
        (59, 94_287_082),
        (1_111_111_109, 7_081_804),
        (1_111_111_111, 14_050_471),
        (1_234_567_890, 89_005_924),
        (2_000_000_000, 69_279_037),
        (20_000_000_000, 65_353_130),
    ];

    fn keys(c: char) -> MfaKeys {
        MfaKeys::new(&Secret::new(c.to_string().repeat(32)))
    }

    #[test]
    fn rfc_6238_sha1_vectors() {
        for &(time, expected) in RFC_VECTORS {
            assert_eq!(hotp(RFC_SECRET, step(time), 8), expected, "T = {time}");
            // Six digits are the same truncation, modulo 10^6.
            let six = format!("{:06}", expected % 1_000_000);
            assert_eq!(code_at(RFC_SECRET, time), six, "T = {time}");
            assert_eq!(
                verify(RFC_SECRET, &six, time, None),
                Some(step(time)),
                "T = {time}"
            );
        }
        // Zero-padded: 07081804 gives 081804.
        assert_eq!(code_at(RFC_SECRET, 1_111_111_109), "081804");
    }

    #[test]
    fn one_step_of_skew_is_accepted_two_are_not() {
        let now = 1_234_567_890;
        let s = step(now);
        let at = |step| code_for_step(RFC_SECRET, step);
        let cases = [
            ("current", s, Some(s)),
            ("one behind", s - 1, Some(s - 1)),
            ("one ahead", s + 1, Some(s + 1)),
            ("two behind", s - 2, None),
            ("two ahead", s + 2, None),
        ];
        for (name, step, expected) in cases {
            assert_eq!(verify(RFC_SECRET, &at(step), now, None), expected, "{name}");
        }
        // The edges of a step belong to it.
        assert_eq!(verify(RFC_SECRET, &at(s), s * PERIOD, None), Some(s));
        assert_eq!(verify(RFC_SECRET, &at(s), s * PERIOD + 29, None), Some(s));
        // At the epoch there is no step before the first.
        assert_eq!(
            verify(RFC_SECRET, &code_for_step(RFC_SECRET, 0), 0, None),
            Some(0)
        );
    }

    #[test]
    fn a_step_is_accepted_once_and_never_an_earlier_one() {
        let now = 1_234_567_890;
        let s = step(now);
        let code = code_at(RFC_SECRET, now);
        assert_eq!(verify(RFC_SECRET, &code, now, Some(s - 1)), Some(s));
        assert_eq!(verify(RFC_SECRET, &code, now, Some(s)), None, "replayed");
        assert_eq!(verify(RFC_SECRET, &code, now + 30, Some(s)), None, "later");
        let behind = code_for_step(RFC_SECRET, s - 1);
        assert_eq!(
            verify(RFC_SECRET, &behind, now, Some(s)),
            None,
            "older step"
        );
        let ahead = code_for_step(RFC_SECRET, s + 1);
        assert_eq!(verify(RFC_SECRET, &ahead, now, Some(s)), Some(s + 1));
    }

    #[test]
    fn malformed_codes_never_match() {
        let now = 59;
        let good = code_at(RFC_SECRET, now);
        assert_eq!(
            verify(
                RFC_SECRET,
                &format!("{} {}", &good[..3], &good[3..]),
                now,
                None
            ),
            Some(step(now)),
            "spaces as apps show them"
        );
        for bad in [
            "",
            "28708",
            "2870820",
            "94287082",
            "28708a",
            "２８７０８２",
            "-87082",
        ] {
            assert_eq!(verify(RFC_SECRET, bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_random_base32_and_round_trip() {
        let a = new_secret();
        assert_ne!(a, new_secret());
        let text = secret_base32(&a);
        assert_eq!(text.len(), 32);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(secret_from_base32(&text).as_deref(), Some(&a[..]));
        assert_eq!(
            secret_from_base32(&text.to_lowercase()).as_deref(),
            Some(&a[..])
        );
        assert_eq!(secret_from_base32("not base32!"), None);
        assert_eq!(
            secret_base32(RFC_SECRET),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }

    #[test]
    fn the_otpauth_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri(RFC_SECRET, "jane.doe+cmms@plant.example");
        assert_eq!(
            uri,
            "otpauth://totp/MaintAInPro:jane.doe%2Bcmms%40plant.example\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=MaintAInPro\
             &algorithm=SHA1&digits=6&period=30"
        );
        let odd = otpauth_uri(RFC_SECRET, "a b&c=d?@x.y");
        assert!(odd.contains("MaintAInPro:a%20b%26c%3Dd%3F%40x.y?"), "{odd}");
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_pepper() {
        let k = keys('p');
        let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = new_secret();
        let sealed = k.seal(user, &secret).unwrap();
        assert_eq!(sealed.len(), NONCE_BYTES + SECRET_BYTES + 16);
        assert_eq!(k.open(user, &sealed).unwrap(), secret);
        assert_ne!(k.seal(user, &secret).unwrap(), sealed, "fresh nonce");
        assert!(k.open(other, &sealed).is_err(), "another user's row");
        assert!(keys('q').open(user, &sealed).is_err(), "another pepper");
        let mut tampered = sealed.clone();
        tampered[NONCE_BYTES] ^= 1;
        assert!(k.open(user, &tampered).is_err());
        assert!(k.open(user, &sealed[..5]).is_err());
        assert!(k.open(user, &[]).is_err());
    }

    #[test]
    fn recovery_codes_are_ten_distinct_and_hash_as_typed() {
        let k = keys('p');
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            assert_eq!(code.matches('-').count(), 3, "{code}");
            let hash = k.recovery_code_hash(code).unwrap();
            assert_eq!(
                k.recovery_code_hash(&code.to_uppercase()),
                Some(hash),
                "case"
            );
            assert_eq!(
                k.recovery_code_hash(&code.replace('-', "")),
                Some(hash),
                "dashes"
            );
            assert_eq!(
                k.recovery_code_hash(&format!(" {} ", code.replace('-', " "))),
                Some(hash),
                "spaces"
            );
            assert_ne!(keys('q').recovery_code_hash(code), Some(hash), "pepper");
        }
        assert_ne!(
            k.recovery_code_hash(&codes[0]),
            k.recovery_code_hash(&codes[1])
        );
        for bad in [
            "",
            "abcd",
            "abcd-efgh-ijkl-mnop-qrst",
            "1111-1111-1111-1111",
        ] {
            assert_eq!(k.recovery_code_hash(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_never_print() {
        assert_eq!(format!("{:?}", keys('p')), "MfaKeys(***)");
    }
}

//! A gateway's API key as its broker login: the key (`mpak.<tenant>.<key id>.<secret>`, made by
//! the API with the scope `readings:publish`) is the MQTT password, and the key without its
//! secret is the user name. The edge agent and the server's account keeping agree on this
//! here; the API owns the key's making and checking.

use uuid::Uuid;

use crate::TenantId;

/// The first part of every API key.
pub const PREFIX: &str = "mpak";
/// Characters of a key's secret: 32 random bytes in base64url without padding.
const SECRET_CHARS: usize = 43;

/// The broker user name of key `key` of `tenant`.
pub fn username(tenant: Uuid, key: Uuid) -> String {
    format!("{PREFIX}.{}.{}", tenant.simple(), key.simple())
}

/// The tenant and key id of a key's user name; `None` for any other user name.
pub fn parse_username(name: &str) -> Option<(Uuid, Uuid)> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (tenant, key) = rest.split_once('.')?;
    let simple = |s: &str| {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Uuid::try_parse(s).ok())
            .flatten()
    };
    Some((simple(tenant)?, simple(key)?))
}

/// The broker login of a key: its tenant and its user name. `None` when `key` does not have
/// a key's shape.
pub fn broker_login(key: &str) -> Option<(TenantId, &str)> {
    let (name, secret) = key.rsplit_once('.')?;
    let (tenant, _) = parse_username(name)?;
    let secret_ok = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    secret_ok.then_some((TenantId::from_uuid(tenant), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_its_user_name_and_a_secret() {
        let (tenant, key) = (Uuid::new_v4(), Uuid::new_v4());
        let name = username(tenant, key);
        assert_eq!(parse_username(&name), Some((tenant, key)));
        let text = format!("{name}.{}", "A".repeat(SECRET_CHARS));
        assert_eq!(
            broker_login(&text),
            Some((TenantId::from_uuid(tenant), name.as_str()))
        );
        for bad in [
            String::new(),
            name.clone(),
            format!("{name}."),
            format!("{name}.{}", "A".repeat(SECRET_CHARS - 1)),
            format!("{name}.{}!", "A".repeat(SECRET_CHARS - 1)),
            format!("{}.{}", name.to_uppercase(), "A".repeat(SECRET_CHARS)),
            format!("mprs{}", &text[4..]),
            format!("{text}.more"),
        ] {
            assert_eq!(broker_login(&bad), None, "{bad}");
        }
        assert_eq!(parse_username("admin"), None);
        assert_eq!(parse_username(&format!("{name}.x")), None);
    }
}

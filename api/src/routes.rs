//! HTTP handlers, one module per resource.

pub mod alarms;
pub mod api_keys;
pub mod assets;
pub mod attachments;
pub mod audit;
pub mod devices;
pub mod docs;
pub mod health;
pub mod live;
pub mod login;
pub mod mfa;
pub mod parts;
pub mod password;
pub mod password_reset;
pub mod pm;
pub mod privacy;
pub mod readings;
pub mod registry;
pub mod reliability;
pub mod rules;
pub mod sessions;
pub mod sla;
pub mod teams;
pub mod webhooks;
pub mod work_orders;

/// A `LIKE`/`ILIKE` pattern matching text that contains `text` (trimmed), its wildcards and
/// escape character taken literally.
pub(crate) fn contains_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.trim()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_take_wildcards_literally() {
        assert_eq!(super::contains_pattern(" 50%_off\\ "), "%50\\%\\_off\\\\%");
    }
}

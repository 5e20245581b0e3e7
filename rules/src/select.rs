//! Which tags a rule watches: by tag name, asset name, asset class and labels.
//!
//! ```toml
//! tags = ["*.bearing_temp"]             # tag-name patterns
//! assets = ["press-*"]                  # asset-name patterns
//! asset_classes = ["hydraulic-press"]   # asset-class patterns
//! labels = { line = "2", medium = "oil*" }   # every key present, its value matching
//! ```
//!
//! Patterns use `*` for any run of characters and `?` for one. Each key given narrows the
//! selection (a tag must pass all of them); within a list, one matching pattern is enough. A
//! key left out selects everything. A tag's labels are its asset's labels with the tag's own on
//! top (the tag's value wins for a key both have). A tag on no asset is never evaluated, so a
//! rule selecting by asset, class or label never sees one either.

use std::collections::BTreeMap;
use std::fmt;

use wildmatch::WildMatch;

use crate::engine::TagContext;

/// Labels of an asset or a tag: key to value.
pub type Labels = BTreeMap<String, String>;

/// The longest label key; keys use letters, digits, `-`, `_` and `.`.
pub const MAX_LABEL_KEY: usize = 64;
/// The longest label value.
pub const MAX_LABEL_VALUE: usize = 200;

/// Whether `key` is a valid label key: 1-64 letters, digits, `-`, `_` or `.`.
pub fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Whether `value` is a valid label value: 1-200 characters, no control characters.
pub fn is_label_value(value: &str) -> bool {
    !value.is_empty()
        && value.chars().count() <= MAX_LABEL_VALUE
        && !value.chars().any(char::is_control)
}

/// A list of patterns; empty selects everything.
#[derive(Debug, Clone, Default)]
struct Patterns {
    text: Vec<String>,
    matchers: Vec<WildMatch>,
}

impl Patterns {
    fn new(text: Vec<String>) -> Self {
        let matchers = text.iter().map(|p| WildMatch::new(p)).collect();
        Self { text, matchers }
    }

    fn admits(&self, value: &str) -> bool {
        self.matchers.is_empty() || self.matchers.iter().any(|m| m.matches(value))
    }
}

/// A validated selection of tags.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    tags: Patterns,
    assets: Patterns,
    asset_classes: Patterns,
    labels: Vec<(String, WildMatch)>,
    label_text: Labels,
}

impl Selector {
    /// A selector from checked parts; see [`Selector::problems`] for the checks.
    pub fn new(
        tags: Vec<String>,
        assets: Vec<String>,
        asset_classes: Vec<String>,
        labels: Labels,
    ) -> Self {
        Self {
            tags: Patterns::new(tags),
            assets: Patterns::new(assets),
            asset_classes: Patterns::new(asset_classes),
            labels: labels
                .iter()
                .map(|(k, v)| (k.clone(), WildMatch::new(v)))
                .collect(),
            label_text: labels,
        }
    }

    /// What is wrong with the label selection, one message per problem.
    pub fn label_problems(labels: &Labels) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in labels {
            if !is_label_key(key) {
                problems.push(format!(
                    "label key {key:?} is not valid: use 1-{MAX_LABEL_KEY} letters, digits, `-`, `_` or `.`"
                ));
            }
            if !is_label_value(value) {
                problems.push(format!(
                    "label {key:?}: the value pattern must be 1-{MAX_LABEL_VALUE} characters without control characters"
                ));
            }
        }
        problems
    }

    /// Whether the selector names something besides tag-name patterns.
    pub fn narrows_assets(&self) -> bool {
        !self.assets.matchers.is_empty()
            || !self.asset_classes.matchers.is_empty()
            || !self.labels.is_empty()
    }

    /// The tag-name patterns; empty: every tag.
    pub fn tag_patterns(&self) -> &[String] {
        &self.tags.text
    }

    pub fn asset_patterns(&self) -> &[String] {
        &self.assets.text
    }

    pub fn asset_class_patterns(&self) -> &[String] {
        &self.asset_classes.text
    }

    pub fn label_patterns(&self) -> &Labels {
        &self.label_text
    }

    /// Whether the selector admits the tag. Tags on no asset pass only a selector that does
    /// not narrow assets.
    pub fn selects(&self, ctx: &TagContext) -> bool {
        if !self.tags.admits(ctx.tag.as_str()) {
            return false;
        }
        if !self.narrows_assets() {
            return true;
        }
        if ctx.asset.is_none() {
            return false;
        }
        self.assets.admits(&ctx.asset_name)
            && (self.asset_classes.matchers.is_empty()
                || ctx
                    .asset_class
                    .as_deref()
                    .is_some_and(|c| self.asset_classes.admits(c)))
            && self.labels.iter().all(|(key, pattern)| {
                ctx.labels
                    .get(key)
                    .is_some_and(|value| pattern.matches(value))
            })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let list = |what: &str, p: &Patterns| format!("{what} {}", p.text.join(" | "));
        if !self.tags.text.is_empty() {
            parts.push(list("tags", &self.tags));
        }
        if !self.assets.text.is_empty() {
            parts.push(list("assets", &self.assets));
        }
        if !self.asset_classes.text.is_empty() {
            parts.push(list("asset classes", &self.asset_classes));
        }
        for (key, value) in &self.label_text {
            parts.push(format!("label {key}={value}"));
        }
        if parts.is_empty() {
            f.write_str("every tag")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use model::{AssetId, Criticality, TagName, TenantId};
    use uuid::Uuid;

    use super::*;

    fn ctx(tag: &str, asset: Option<(&str, Option<&str>)>, labels: &[(&str, &str)]) -> TagContext {
        TagContext {
            tenant: TenantId::from_uuid(Uuid::nil()),
            tag_id: 1,
            tag: TagName::parse(tag).unwrap(),
            unit: None,
            asset: asset.map(|_| AssetId::from_uuid(Uuid::from_u128(7))),
            asset_name: asset.map(|(n, _)| n.to_owned()).unwrap_or_default(),
            asset_class: asset.and_then(|(_, c)| c.map(str::to_owned)),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            criticality: Criticality::DEFAULT,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_key_given_narrows_and_lists_are_alternatives() {
        let s = Selector::new(
            vec!["*.temp".into(), "*.vib".into()],
            vec!["press-*".into()],
            vec!["hydraulic-press".into()],
            labels(&[("line", "2"), ("medium", "oil*")]),
        );
        let good = ctx(
            "press-1.vib",
            Some(("press-1", Some("hydraulic-press"))),
            &[("line", "2"), ("medium", "oil-46"), ("extra", "x")],
        );
        assert!(s.selects(&good));
        let wrong_tag = ctx(
            "press-1.flow",
            Some(("press-1", Some("hydraulic-press"))),
            &[],
        );
        assert!(!s.selects(&wrong_tag));
        let mut other_class = good.clone();
        other_class.asset_class = Some("pump".into());
        assert!(!s.selects(&other_class));
        let mut no_class = good.clone();
        no_class.asset_class = None;
        assert!(!s.selects(&no_class));
        let mut other_asset = good.clone();
        other_asset.asset_name = "pump-1".into();
        assert!(!s.selects(&other_asset));
        let mut missing_label = good.clone();
        missing_label.labels.remove("medium");
        assert!(!s.selects(&missing_label));
        let mut wrong_label = good;
        wrong_label.labels.insert("line".into(), "3".into());
        assert!(!s.selects(&wrong_label));
    }

    #[test]
    fn without_asset_keys_tags_on_no_asset_pass_by_name() {
        let by_name = Selector::new(vec!["*".into()], vec![], vec![], Labels::new());
        let loose = ctx("spare.temp", None, &[]);
        assert!(by_name.selects(&loose));
        let by_label = Selector::new(vec![], vec![], vec![], labels(&[("line", "*")]));
        assert!(!by_label.selects(&loose));
        assert!(by_label.selects(&ctx("p.t", Some(("p", None)), &[("line", "1")])));
    }

    #[test]
    fn label_checks_and_display() {
        assert!(Selector::label_problems(&labels(&[("line", "2")])).is_empty());
        assert_eq!(
            Selector::label_problems(&labels(&[("bad key", "")])).len(),
            2,
            "the key and the empty value"
        );
        let s = Selector::new(
            vec!["*.temp".into()],
            vec![],
            vec!["pump".into(), "fan".into()],
            labels(&[("line", "2")]),
        );
        assert_eq!(
            s.to_string(),
            "tags *.temp, asset classes pump | fan, label line=2"
        );
        assert_eq!(Selector::default().to_string(), "every tag");
    }
}

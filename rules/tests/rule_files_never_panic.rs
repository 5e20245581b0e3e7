//! Robustness of the rule-file parser, which reads what reliability engineers write: any text,
//! and any damage to the shipped demo file, gives a rule set or diagnostics, never a panic.

use proptest::prelude::*;
use rules::RuleSet;

const DEMO: &str = include_str!("../../config/rules/demo.toml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_text(text in "(?s).{0,400}") {
        let _ = RuleSet::parse("fuzz.toml", &text);
    }

    #[test]
    fn damaged_demo_file(
        cuts in prop::collection::vec((0..DEMO.len(), 0..40usize, "[ -~\n]{0,12}"), 1..6)
    ) {
        let mut text = DEMO.to_owned();
        for (at, len, insert) in cuts {
            let start = at.min(text.len());
            let end = (start + len).min(text.len());
            if text.is_char_boundary(start) && text.is_char_boundary(end) {
                text.replace_range(start..end, &insert);
            }
        }
        if let Err(diagnostics) = RuleSet::parse("fuzz.toml", &text) {
            prop_assert!(!diagnostics.is_empty(), "a refusal says why");
        }
    }
}

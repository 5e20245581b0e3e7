//! # bad_quality
//!
#![doc = include_str!("bad_quality.md")]

use model::Quality;
use serde::Deserialize;

use crate::alarm::Verdict;

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("bad_quality.md");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadQuality {
    /// Count readings of uncertain quality as bad too.
    #[serde(default)]
    pub include_uncertain: bool,
}

impl BadQuality {
    pub fn verdict(&self, quality: Quality) -> Verdict {
        match quality {
            Quality::Bad => Verdict::Breach,
            Quality::Uncertain if self.include_uncertain => Verdict::Breach,
            Quality::Uncertain => Verdict::Hold,
            Quality::Good => Verdict::Clear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncertain_holds_unless_included() {
        let strict = BadQuality {
            include_uncertain: false,
        };
        assert_eq!(strict.verdict(Quality::Bad), Verdict::Breach);
        assert_eq!(strict.verdict(Quality::Uncertain), Verdict::Hold);
        assert_eq!(strict.verdict(Quality::Good), Verdict::Clear);
        let wide = BadQuality {
            include_uncertain: true,
        };
        assert_eq!(wide.verdict(Quality::Uncertain), Verdict::Breach);
    }
}

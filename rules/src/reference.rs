//! The rule-kind reference page (`docs/RULES-REFERENCE.md`), rendered from each kind's
//! reference text so that the page and the code cannot disagree.

use crate::kinds::REGISTRY;

/// The reference page in Markdown: every kind's table name and reference text.
pub fn markdown() -> String {
    let mut page = String::from(
        "# Rule kinds reference\n\n\
         Generated from the reference text of each kind in `rules/src/kinds/` by\n\
         `rules::reference::markdown()`; do not edit by hand. Regenerate with\n\
         `UPDATE_SNAPSHOTS=1 cargo test -p rules --test snapshots`. The rule-file format, alarm\n\
         timing, escalation and work orders are described in [RULES.md](RULES.md).\n\n",
    );
    for kind in REGISTRY {
        page.push_str(&format!("- [`{0}`](#{0})\n", kind.name));
    }
    for kind in REGISTRY {
        page.push_str(&format!("\n## {}\n\n", kind.name));
        page.push_str(&format!("`[rule.{}]`\n\n", kind.name));
        page.push_str(kind.doc.trim_end());
        page.push('\n');
    }
    page
}

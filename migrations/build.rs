// `sqlx::migrate!` embeds the files of `sql/` at compile time but cannot tell Cargo to watch the
// directory, so a newly added migration would otherwise not be embedded until something else
// changed.
fn main() {
    println!("cargo:rerun-if-changed=sql");
}

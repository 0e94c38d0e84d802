//! Rebuild when a migration is added: `embed_migrations!` only tracks the files it saw last time.
fn main() {
    println!("cargo:rerun-if-changed=../../sql/hr");
}

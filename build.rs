//! Records the tract version this build resolved (from Cargo.lock) for `bench`'s machine
//! report, so that no version is written by hand.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::env::var("CARGO_MANIFEST_DIR")
        .ok()
        .and_then(|dir| std::fs::read_to_string(std::path::Path::new(&dir).join("Cargo.lock")).ok());
    let version = lock
        .as_deref()
        .and_then(|text| {
            // A lock entry is `[[package]]`, `name = "..."`, `version = "..."`, in that order.
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.trim() == "name = \"tract-core\"" {
                    let v = lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"')?;
                    return Some(v.to_string());
                }
            }
            None
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=EBM_GATE_TRACT_VERSION={version}");
}

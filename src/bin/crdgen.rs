//! Prints the CRD manifests generated from the Rust types.
//!
//! `cargo run --bin crdgen` prints both CRDs as one YAML stream;
//! `cargo run --bin crdgen -- --write deploy/crds` rewrites the committed files.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => print!("{}", acrpull::k8s::api::crds_yaml()?),
        Some("--write") => {
            let dir = PathBuf::from(args.next().unwrap_or_else(|| "deploy/crds".into()));
            std::fs::create_dir_all(&dir)?;
            for (name, body) in acrpull::k8s::api::crd_files()? {
                std::fs::write(dir.join(&name), body)?;
                eprintln!("wrote {}", dir.join(&name).display());
            }
        }
        Some(other) => anyhow::bail!("unknown argument {other:?}; usage: crdgen [--write DIR]"),
    }
    Ok(())
}

//! `tke-image`: writes the tke-resilience OCI image archive without Docker or a registry (what
//! `make image` runs): the binary, the shared libraries it loads (none when static), the CA bundle
//! and the non-root user, reproducibly. Prints the manifest digest on stderr and the archive's path on stdout.
//!
//! Usage: `tke-image BINARY OUT.tar [--name REFERENCE]`

use std::path::PathBuf;

use anyhow::{Context, bail};
use tke_testbed::images;

fn main() -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut name = format!(
        "ghcr.io/tke-resilience/tke-resilience:{}",
        env!("CARGO_PKG_VERSION")
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next().context("--name needs a value")?,
            "-h" | "--help" => {
                println!("usage: tke-image BINARY OUT.tar [--name REFERENCE]");
                return Ok(());
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [binary, out] = positional.as_slice() else {
        bail!("usage: tke-image BINARY OUT.tar [--name REFERENCE]");
    };
    let begun = std::time::Instant::now();
    let libraries = images::shared_libraries(binary)?;
    let image = images::tke_resilience(binary, &libraries, &name, out)?;
    let size = std::fs::metadata(&image.archive)?.len();
    eprintln!(
        "{} {} ({:.1} MiB, {} shared libraries, {:.2}s)",
        image.name,
        image.digest,
        size as f64 / (1024.0 * 1024.0),
        libraries.len(),
        begun.elapsed().as_secs_f64()
    );
    eprintln!("{}", image.digest);
    println!("{}", image.archive.display());
    Ok(())
}

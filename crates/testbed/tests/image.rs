//! Our container image, built without Docker or a registry (`make image`, `tke_testbed::images`):
//! reproducible, and holding only the binary, the libraries it loads, the CA bundle and the
//! non-root user.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    path::{Path, PathBuf},
};

use tke_testbed::images;

/// The binary the image is made of: tke-resilience when there is one (see
/// `images::built_tke_resilience`), else this package's `tke-image`, a Rust binary of the same
/// toolchain and linking.
fn image_binary() -> PathBuf {
    images::built_tke_resilience().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tke-image")))
}

/// The archive's files by path (blobs, index.json, oci-layout).
fn read_archive(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    let mut files = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(entry.path()?.display().to_string(), data);
    }
    Ok(files)
}

fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> anyhow::Result<&'a [u8]> {
    let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    files
        .get(&path)
        .map(Vec::as_slice)
        .ok_or_else(|| anyhow::anyhow!("{path} missing"))
}

#[test]
fn the_image_is_reproducible_and_holds_only_the_binary_its_libraries_ca_certificates_and_the_user()
-> anyhow::Result<()> {
    let binary = image_binary();
    let dir = std::env::temp_dir().join(format!("tke-image-{}", tke_testbed::random_suffix()));
    let libraries = images::shared_libraries(&binary)?;
    let name = "tke-testbed.local/tke-resilience:test";
    let begun = std::time::Instant::now();
    let first = images::tke_resilience(&binary, &libraries, name, &dir.join("first.tar"))?;
    let took = begun.elapsed();
    let second = images::tke_resilience(&binary, &libraries, name, &dir.join("second.tar"))?;
    let size = std::fs::metadata(&first.archive)?.len();
    eprintln!(
        "[image] {} from {}: {:.1} MiB, {} libraries, built in {:.2}s, {}",
        name,
        binary.display(),
        size as f64 / (1024.0 * 1024.0),
        libraries.len(),
        took.as_secs_f64(),
        first.digest
    );

    assert_eq!(
        first.digest, second.digest,
        "the same binary gives the same digest"
    );
    assert_eq!(
        std::fs::read(&first.archive)?,
        std::fs::read(&second.archive)?,
        "and the same bytes"
    );

    let files = read_archive(&first.archive)?;
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"])?;
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap_or_default();
    assert_eq!(manifest_digest, first.digest);
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        name
    );
    let manifest: serde_json::Value = serde_json::from_slice(blob(&files, manifest_digest)?)?;
    let config: serde_json::Value = serde_json::from_slice(blob(
        &files,
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    )?)?;
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/tke-resilience"])
    );

    let layer = blob(
        &files,
        manifest["layers"][0]["digest"].as_str().unwrap_or_default(),
    )?;
    let mut entries = BTreeMap::new();
    for entry in tar::Archive::new(layer).entries()? {
        let mut entry = entry?;
        let header = entry.header();
        let path = entry.path()?.display().to_string();
        assert_eq!(
            (header.uid()?, header.gid()?, header.mtime()?),
            (0, 0, 0),
            "{path}: owner and mtime are fixed"
        );
        let kind = header.entry_type();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        if !kind.is_dir() {
            entries.insert(path.trim_end_matches('/').to_owned(), data);
        }
    }
    let mut expected: BTreeSet<String> = [
        "usr/local/bin/tke-resilience",
        images::CA_BUNDLE,
        "etc/passwd",
        "etc/group",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    expected.extend(
        libraries
            .iter()
            .map(|l| l.display().to_string().trim_start_matches('/').to_owned()),
    );
    assert_eq!(
        entries.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "only the binary, its libraries, the CA bundle and the user"
    );
    assert_eq!(entries["usr/local/bin/tke-resilience"], std::fs::read(&binary)?);
    let passwd = String::from_utf8_lossy(&entries["etc/passwd"]).into_owned();
    assert!(
        passwd.contains("nonroot:x:65532:65532:"),
        "/etc/passwd names the user: {passwd}"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

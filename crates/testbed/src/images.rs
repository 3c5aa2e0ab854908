//! Container images without a registry or Docker: single-layer OCI image archives (`oci-layout`,
//! `index.json`, content-addressed blobs) that `ctr images import` loads into a real node's
//! containerd.
//!
//! Archives are reproducible: the same files give the same bytes, hence the same digests. Entries
//! are sorted, every mtime is 0, every owner is 0:0 (files a non-root user needs are readable by
//! all), and the JSON documents are written with fixed field order. The only inputs are the files
//! named here (busybox-static from Debian, the host's CA bundle, our own binary).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The image the real nodes' containerd runs as every pod's sandbox (`sandbox_image`).
pub const PAUSE: &str = "tke-testbed.local/pause:1";
/// busybox-static: `sh`, `httpd`, `nc`, `wget`, `tar` and the rest of its applets.
pub const BUSYBOX: &str = "tke-testbed.local/busybox:1";
/// Where the test images take busybox from (Debian's `busybox-static`).
pub const BUSYBOX_BINARY: &str = "/bin/busybox";
/// The user our image runs as (distroless' `nonroot`).
pub const NONROOT_UID: u32 = 65532;

/// One file system entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// What an image is made of: one layer and the runtime configuration.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// The reference containerd stores it under, e.g. `tke-testbed.local/busybox:1`.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `uid:gid`; empty means root.
    pub user: String,
    /// Paths without a leading slash. Parent directories are added as needed.
    pub files: BTreeMap<String, Entry>,
}

impl ImageSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..Default::default()
        }
    }

    pub fn file(mut self, path: &str, data: Vec<u8>, mode: u32) -> Self {
        self.files
            .insert(path.trim_start_matches('/').into(), Entry::File { data, mode });
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.files.insert(
            path.trim_start_matches('/').into(),
            Entry::Symlink {
                target: target.into(),
            },
        );
        self
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.files
            .insert(path.trim_start_matches('/').into(), Entry::Dir { mode });
        self
    }

    /// Every entry, parents included, in the order they are written (sorted by path, so a
    /// directory comes before what it holds).
    pub fn entries(&self) -> BTreeMap<String, Entry> {
        let mut all = self.files.clone();
        for path in self.files.keys() {
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                all.entry(p.display().to_string())
                    .or_insert(Entry::Dir { mode: 0o755 });
                parent = p.parent();
            }
        }
        all
    }
}

/// A written archive: its path, the reference it imports as, and its manifest digest.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub archive: PathBuf,
    /// `sha256:<hex>` of the manifest: what a registry and containerd call the image digest.
    pub digest: String,
}

/// Writes `spec` as an OCI image archive at `out`.
pub fn write_archive(spec: &ImageSpec, out: &Path) -> Result<Image> {
    let layer = layer_tar(spec)?;
    let layer_digest = sha256(&layer);
    let mut config = json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {
            "Env": spec.env,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "tke-testbed images", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    });
    if !spec.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        config["config"]["Cmd"] = json!(spec.cmd);
    }
    if !spec.user.is_empty() {
        config["config"]["User"] = json!(spec.user);
    }
    let config = to_json(&config);
    let config_digest = sha256(&config);
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }));
    let manifest_digest = sha256(&manifest);
    let tag = spec.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": oci_architecture(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }));

    let mut outer = tar::Builder::new(Vec::new());
    append_dir(&mut outer, "blobs", 0o755)?;
    append_dir(&mut outer, "blobs/sha256", 0o755)?;
    // Blobs sorted by digest, like every other entry.
    let mut blobs = [
        (blob_path(&layer_digest), &layer),
        (blob_path(&config_digest), &config),
        (blob_path(&manifest_digest), &manifest),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, data) in blobs {
        append_file(&mut outer, &path, data, 0o644)?;
    }
    append_file(&mut outer, "index.json", &index, 0o644)?;
    append_file(
        &mut outer,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    let bytes = outer.into_inner().map_err(|e| Error::Input(e.to_string()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    std::fs::write(out, bytes).map_err(|source| Error::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(Image {
        name: spec.name.clone(),
        archive: out.to_owned(),
        digest: manifest_digest,
    })
}

fn layer_tar(spec: &ImageSpec) -> Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    for (path, entry) in spec.entries() {
        match entry {
            Entry::Dir { mode } => append_dir(&mut layer, &path, mode)?,
            Entry::File { data, mode } => append_file(&mut layer, &path, &data, mode)?,
            Entry::Symlink { target } => {
                let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                layer
                    .append_link(&mut header, &path, &target)
                    .map_err(|e| Error::Input(format!("{path}: {e}")))?;
            }
        }
    }
    layer.into_inner().map_err(|e| Error::Input(e.to_string()))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    // ustar user/group names stay empty: the numeric ids are what counts.
    header
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, 0);
    builder
        .append_data(&mut header, format!("{path}/"), std::io::empty())
        .map_err(|e| Error::Input(format!("{path}: {e}")))
}

fn append_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
    builder
        .append_data(&mut header, path, data)
        .map_err(|e| Error::Input(format!("{path}: {e}")))
}

/// The OCI (GOARCH) name of the architecture the files were built for: this machine's.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    // serde_json's Map is a BTreeMap here (no preserve_order feature): keys come out sorted.
    serde_json::to_vec(value).unwrap_or_default()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// The applets the test image links to busybox.
const APPLETS: &[&str] = &[
    "cat", "date", "echo", "env", "hostname", "httpd", "id", "ip", "ls", "mkdir", "nc", "printf", "ps", "sh",
    "sleep", "tar", "test", "true", "wget",
];

/// A small test image: busybox-static and its common applets, `sh` by default.
pub fn busybox(out: &Path) -> Result<Image> {
    let mut spec = ImageSpec::new(BUSYBOX)
        .file("bin/busybox", read(Path::new(BUSYBOX_BINARY))?, 0o755)
        .dir("tmp", 0o1777);
    for applet in APPLETS {
        spec = spec.symlink(&format!("bin/{applet}"), "busybox");
    }
    spec.cmd = vec!["sh".into()];
    write_archive(&spec, out)
}

/// The sandbox ("pause") image: a shell that sleeps until SIGTERM or SIGINT and, being the pod's
/// init when the pod shares its process namespace, reaps children: `wait` without arguments
/// collects any child, orphans handed to it included.
pub fn pause(out: &Path) -> Result<Image> {
    let mut spec = ImageSpec::new(PAUSE)
        .file("bin/busybox", read(Path::new(BUSYBOX_BINARY))?, 0o755)
        .symlink("bin/sh", "busybox")
        .symlink("bin/sleep", "busybox");
    spec.entrypoint = vec![
        "/bin/sh".into(),
        "-c".into(),
        "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done".into(),
    ];
    write_archive(&spec, out)
}

/// A static binary of the test-bed tools (e.g. `kube-scheduler`, which the chart runs next to our
/// extender) as an image holding only that binary, at `/usr/local/bin/<file name>` and on `PATH`,
/// as the upstream images are used (`command: [kube-scheduler, ...]`).
pub fn tool(binary: &Path, name: &str, out: &Path) -> Result<Image> {
    let file = binary
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut spec = ImageSpec::new(name).file(&format!("usr/local/bin/{file}"), read(binary)?, 0o755);
    spec.env.push("PATH=/usr/local/bin".into());
    write_archive(&spec, out)
}

/// Where our image keeps the CA bundle, and the host file it is taken from (Debian's
/// `ca-certificates`).
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The tke-resilience image: the binary at `/usr/local/bin/tke-resilience`, the shared libraries it
/// is linked against (none when static), the CA bundle for the clouds' HTTPS APIs, and
/// `/etc/passwd` and `/etc/group` naming the non-root user it runs as. Nothing else.
pub fn tke_resilience(binary: &Path, libraries: &[PathBuf], name: &str, out: &Path) -> Result<Image> {
    let ca = Path::new("/").join(CA_BUNDLE);
    let mut spec = ImageSpec::new(name)
        .file("usr/local/bin/tke-resilience", read(binary)?, 0o755)
        .file(CA_BUNDLE, read(&ca)?, 0o644)
        .file(
            "etc/passwd",
            format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n")
                .into_bytes(),
            0o644,
        )
        .file(
            "etc/group",
            format!("root:x:0:\nnonroot:x:{NONROOT_UID}:\n").into_bytes(),
            0o644,
        );
    for lib in libraries {
        let path = lib.display().to_string();
        spec = spec.file(&path, read(lib)?, 0o755);
    }
    spec.entrypoint = vec!["/usr/local/bin/tke-resilience".into()];
    spec.user = format!("{NONROOT_UID}:{NONROOT_UID}");
    spec.env.push(format!("SSL_CERT_FILE=/{CA_BUNDLE}"));
    write_archive(&spec, out)
}

/// The tke-resilience binary for tests to package: `$TKE_IMAGE_BINARY` (e.g. the release build),
/// else the one next to the running test binary when the build made it (`cargo test --workspace`
/// does).
pub fn built_tke_resilience() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TKE_IMAGE_BINARY") {
        return Some(PathBuf::from(path));
    }
    let test = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> -> target/<profile>/tke-resilience
    Some(test.parent()?.parent()?.join("tke-resilience")).filter(|p| p.is_file())
}

/// The shared libraries `binary` loads, as `ldd` resolves them (the dynamic loader included); empty
/// for a static binary. Symlinks stay as the paths the loader asks for, with the target's content.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| Error::Read {
            path: "ldd".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_before_their_entries_and_are_added_once() {
        let spec = ImageSpec::new("x:1")
            .file("usr/local/bin/a", b"a".to_vec(), 0o755)
            .file("usr/lib/b", b"b".to_vec(), 0o644)
            .file("usr-x", b"c".to_vec(), 0o644);
        let paths: Vec<String> = spec.entries().into_keys().collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr-x",
                "usr/lib",
                "usr/lib/b",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/a"
            ]
        );
    }

    #[test]
    fn the_same_files_give_the_same_digest_and_other_files_another() {
        let dir = std::env::temp_dir().join(format!("tke-images-{}", crate::random_suffix()));
        let spec = ImageSpec::new("x:1").file("a", b"one".to_vec(), 0o644);
        let first = write_archive(&spec, &dir.join("1.tar")).unwrap();
        let second = write_archive(&spec, &dir.join("2.tar")).unwrap();
        let other = write_archive(
            &ImageSpec::new("x:1").file("a", b"two".to_vec(), 0o644),
            &dir.join("3.tar"),
        )
        .unwrap();
        let bytes = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(first.digest, second.digest);
        assert_eq!(bytes(&first.archive), bytes(&second.archive));
        assert_ne!(first.digest, other.digest);
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! `ido run` imports DiskImports itself: the importer Jobs the controller makes run in the
//! process, their claims as local paths (a directory under the state, or one `--volume`
//! names), their Secrets as private files; qemu-img is the oracle.

#[path = "../../disk/tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::http_server::{Behaviour, FileServer};
use common::*;

/// `ido run --once` (awaited: the test's HTTP server runs on this thread meanwhile).
async fn ido_run(state: &Path, manifest: &Path, extra: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(["run", "--once", "--timeout", "2m", "--state"])
        .arg(state)
        .arg("-f")
        .arg(manifest)
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("IDO_LOG")
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The DiskImport as the state holds it.
fn stored(state: &Path, name: &str) -> serde_json::Value {
    let path = state.join("diskimports.ido.dev/vms").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

#[tokio::test]
async fn run_imports_disks_into_local_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (q, oracle) = write_qcow2(d);
    let sum = sha256(&q);
    let server = FileServer::start(
        std::fs::read(&q).unwrap(),
        Behaviour {
            ranges: true,
            // base64("importer:s3cr3t-pw")
            authorization: Some("Basic aW1wb3J0ZXI6czNjcjN0LXB3".into()),
            ..Default::default()
        },
    )
    .await;
    let url = server.url();
    let state = d.join("state");
    let block = d.join("block.img");
    std::fs::write(&block, b"").unwrap();
    let manifest = d.join("disks.yaml");
    let good = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: auth, namespace: vms}}\nstringData: {{accessKeyId: importer, secretKey: s3cr3t-pw}}\n---\n\
apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: fedora, namespace: vms}}\nspec:\n  source:\n    http: {{url: \"{url}\", secretRef: auth, checksum: \"{sum}\"}}\n  storage: {{size: 128Mi}}\n---\n\
apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: raw, namespace: vms}}\nspec:\n  source:\n    http: {{url: \"{url}\", secretRef: auth}}\n  storage: {{size: 128Mi, volumeMode: Block}}\n---\n\
apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: scratch, namespace: vms}}\nspec:\n  source: {{blank: {{}}}}\n  storage: {{size: 32Mi}}\n---\n\
apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: copy, namespace: vms}}\nspec:\n  source: {{pvc: {{name: fedora}}}}\n  storage: {{size: 128Mi}}\n---\n\
apiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: from-block, namespace: vms}}\nspec:\n  source: {{pvc: {{name: raw, namespace: vms}}}}\n  storage: {{size: 128Mi}}\n"
    );
    std::fs::write(&manifest, &good).unwrap();
    let volume = format!("vms/raw={}", block.display());
    let o = ido_run(&state, &manifest, &["--volume", &volume]).await;
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"), "{out}\n{err}");
    for name in ["fedora", "raw", "scratch", "copy", "from-block"] {
        assert_eq!(
            stored(&state, name)["status"]["phase"],
            "Succeeded",
            "{name}: {out}\n{err}"
        );
    }
    // Filesystem: disk.img in the claim's directory under the state; Block: the named file.
    let fs_disk = state.join("volumes/vms/fedora/disk.img");
    assert_same(
        &std::fs::read(&fs_disk).unwrap(),
        &oracle,
        "Filesystem claim vs qemu-img",
    );
    assert_same(
        &std::fs::read(&block).unwrap(),
        &oracle,
        "Block claim vs qemu-img",
    );
    // Clones, once their sources were filled: Filesystem → Filesystem, Block → Filesystem.
    for name in ["copy", "from-block"] {
        let path = state.join(format!("volumes/vms/{name}/disk.img"));
        assert_same(&std::fs::read(&path).unwrap(), &oracle, &format!("clone {name}"));
    }
    assert_sparse(&state.join("volumes/vms/copy/disk.img"));
    // A blank disk: a sparse disk.img of the size.
    let blank = std::fs::metadata(state.join("volumes/vms/scratch/disk.img")).unwrap();
    assert_eq!(blank.len(), 32 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&blank) * 512 < 1 << 20,
        "sparse"
    );
    // The Secret's files went with the attempt: no scratch directory is left.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("ido-importer-"))
        .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut r| r.next().is_some()))
        .filter(|e| e.path().join("volume-1/secretKey").exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A wrong checksum: the import fails for good, the DiskImport says why, exit 1.
    let bad = format!(
        "{good}---\napiVersion: ido.dev/v1alpha1\nkind: DiskImport\nmetadata: {{name: broken, namespace: vms}}\nspec:\n  source:\n    http: {{url: \"{url}\", secretRef: auth, checksum: \"sha256:{}\"}}\n  storage: {{size: 128Mi}}\n",
        "0".repeat(64)
    );
    std::fs::write(&manifest, bad).unwrap();
    let o = ido_run(&state, &manifest, &["--volume", &volume]).await;
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    let broken = stored(&state, "broken");
    assert_eq!(broken["status"]["phase"], "Failed", "{broken}");
    let ready = broken["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert!(ready["message"].as_str().unwrap().contains("checksum"), "{ready}");
    assert!(
        !state.join("volumes/vms/broken/disk.img").exists(),
        "a failed import leaves no disk"
    );
    assert_eq!(stored(&state, "fedora")["status"]["phase"], "Succeeded");
}

/// CDI's PVC annotation flow under `ido run`: CDI's golden-pvc.yaml (its endpoint this
/// test's server) is filled by an import, and its annotations say so as CDI's would.
#[tokio::test]
async fn run_fills_cdis_annotated_claims() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (q, oracle) = write_qcow2(d);
    let server = FileServer::start(
        std::fs::read(&q).unwrap(),
        Behaviour {
            ranges: true,
            ..Default::default()
        },
    )
    .await;
    let state = d.join("state");
    let manifest = d.join("golden-pvc.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: \"golden-pvc\"\n  namespace: vms\n  labels:\n    app: containerized-data-importer\n  annotations:\n    cdi.kubevirt.io/storage.import.endpoint: \"{}\"   # Required. Format: (http||s3)://www.myUrl.com/path/of/data\n    cdi.kubevirt.io/storage.import.secretName: \"\" # Optional. The name of the secret containing credentials for the data source\nspec:\n  accessModes:\n  - ReadWriteOnce\n  resources:\n    requests:\n      storage: 10Gi\n",
            server.url()
        ),
    )
    .unwrap();
    let o = ido_run(&state, &manifest, &[]).await;
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{out}\n{err}");
    let claim: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("persistentvolumeclaims./vms/golden-pvc.json")).unwrap(),
    )
    .unwrap();
    let a = &claim["metadata"]["annotations"];
    assert_eq!(
        a["cdi.kubevirt.io/storage.pod.phase"], "Succeeded",
        "{claim}\n{err}"
    );
    assert_eq!(a["cdi.kubevirt.io/storage.pod.restarts"], "0", "{claim}");
    assert!(claim["metadata"]["ownerReferences"].is_null(), "{claim}");
    assert_eq!(stored(&state, "golden-pvc")["status"]["phase"], "Succeeded");
    let disk = state.join("volumes/vms/golden-pvc/disk.img");
    assert_same(
        &std::fs::read(&disk).unwrap(),
        &oracle,
        "the claim's disk vs qemu-img",
    );
}

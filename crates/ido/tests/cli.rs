//! The `ido` binary end to end: `ido run --once` against SeaweedFS and the vCenter simulator,
//! configured from files as the README says; exit codes, the status table, and no secret in
//! any output or state file.

use std::{path::Path, process::Output};

use ido_testkit::{
    oracle::oracle_list_vms,
    ova::OvaFixture,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};

const IMAGE: &str = "flatcar-stable-4000.0.0-kube-1.33.1-tooling-1.20.0-gs";
const KEY: &str =
    "capv/flatcar-stable-4000.0.0-kube-1.33.1-tooling-1.20.0-gs/flatcar-stable-4000.0.0-kube-v1.33.1.ova";
const PASSWORD: &str = "pw-that-must-not-leak-8e1f";

const RELEASE: &str = "apiVersion: release.giantswarm.io/v1alpha1
kind: Release
metadata: {name: vsphere-33.0.0}
spec:
  components:
  - {name: flatcar, version: 4000.0.0}
  - {name: kubernetes, version: v1.33.1}
  - {name: os-tooling, version: v1.20.0}
";

fn ido(args: &[&str], dir: &Path) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(args)
        .current_dir(dir)
        .env("IDO_LOG", "debug")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(PASSWORD), "the password leaked into the output");
    out
}

fn no_secret_in(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            no_secret_in(&p);
        } else if !["values.yaml", "credentials"].contains(&p.file_name().unwrap().to_str().unwrap()) {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                !text.contains(PASSWORD),
                "the password leaked into {}",
                p.display()
            );
        }
    }
}

#[tokio::test]
async fn run_once_distributes_and_removes() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ova = d.join("x.ova");
    OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", 123_456)], "nic0")
        .await
        .unwrap();
    s3.put_object(PUBLIC_BUCKET, KEY, ova.as_path()).await.unwrap();

    // Values file without credentials; credentials merged from a separate file (a mounted Secret).
    let ca: String = vc
        .ca_pem()
        .unwrap()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    std::fs::write(
        d.join("values.yaml"),
        format!(
            "s3: {{bucket: {PUBLIC_BUCKET}, region: us-east-1, endpoint: \"{}\"}}\nvsphere:\n  enabled: true\n  caBundle: |\n{ca}  locations:\n    loc1: {{datacenter: DC0, datastore: LocalDS_0, cluster: DC0_C0, folder: vm}}\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("credentials"),
        format!(
            "vcenter: \"{}\"\nusername: someone\npassword: {PASSWORD}\n",
            vc.url()
        ),
    )
    .unwrap();
    std::fs::create_dir(d.join("releases")).unwrap();
    std::fs::write(d.join("releases/r.yaml"), RELEASE).unwrap();
    let base = [
        "run",
        "--once",
        "--config",
        "values.yaml",
        "--merge",
        "vsphere.credentials=credentials",
        "--state",
        "st",
    ];

    let out = ido(&[&base[..], &["-f", "releases"]].concat(), d);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("Available") && table.contains(IMAGE), "{table}");
    assert!(table.contains("bytes=123456"), "{table}");
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(vms.iter().any(|v| v["name"] == IMAGE && v["template"] == true));

    // A broken manifest is refused with the file and the field named; nothing changes.
    std::fs::write(d.join("bad.yaml"), "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {name: vsphere-1.0.0}\nspec: {components: 7}\n").unwrap();
    let out = ido(&[&base[..], &["-f", "bad.yaml"]].concat(), d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.yaml") && err.contains("components"),
        "{err}"
    );

    // Running without the Release removes the template everywhere; with no manifest left
    // at all, only when asked to.
    std::fs::remove_file(d.join("releases/r.yaml")).unwrap();
    let out = ido(&[&base[..], &["-f", "releases"]].concat(), d);
    assert!(
        !out.status.success(),
        "an empty desired set pruned without --prune-empty"
    );
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(
        vms.iter().any(|v| v["name"] == IMAGE),
        "the template went without --prune-empty"
    );
    let out = ido(&[&base[..], &["-f", "releases", "--prune-empty"]].concat(), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(!vms.iter().any(|v| v["name"] == IMAGE));
    no_secret_in(d);
}

#[tokio::test]
async fn run_once_fails_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No provider reachable on this port: the import fails and the run says why, exit 1.
    std::fs::write(
        d.join("values.yaml"),
        format!("s3: {{bucket: b, region: us-east-1, endpoint: \"http://127.0.0.1:9\"}}\nvsphere:\n  enabled: true\n  credentials: {{vcenter: \"127.0.0.1:9\", username: u, password: {PASSWORD}}}\n  locations:\n    loc1: {{datacenter: DC0, datastore: LocalDS_0, cluster: DC0_C0, folder: vm}}\n"),
    )
    .unwrap();
    std::fs::write(d.join("r.yaml"), RELEASE).unwrap();
    let out = ido(
        &[
            "run",
            "--once",
            "--timeout",
            "10s",
            "-f",
            "r.yaml",
            "--config",
            "values.yaml",
            "--state",
            "st",
        ],
        d,
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.contains("NotReady") || table.contains("Error"), "{table}");
    no_secret_in(d);

    // Bad values: a clear error naming the key and value.
    std::fs::write(d.join("bad.yaml"), "imageRetentionPeriod: soon\n").unwrap();
    let out = ido(
        &[
            "run", "--once", "-f", "r.yaml", "--config", "bad.yaml", "--state", "st2",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("imageRetentionPeriod") && err.contains("soon"),
        "{err}"
    );
}

#[test]
fn crds_print_both_kinds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("crds")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("nodeimages.image.giantswarm.io") && text.contains("releases.release.giantswarm.io")
    );
    // Other projects' kinds only on request: applying them would take over their CRDs.
    assert!(!text.contains("datavolumes.cdi.kubevirt.io") && !text.contains("images.skopeo.io"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(["crds", "--compat"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("datavolumes.cdi.kubevirt.io") && text.contains("images.skopeo.io"));
}

/// Names become state file paths and S3 keys: hostile ones are refused by object and field,
/// and nothing outside the state directory is written or deleted.
#[test]
fn hostile_names_are_refused_and_nothing_outside_the_state_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir_all(d.join("victim")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(d.join("victim/config.json"), "{\"keep\": true}").unwrap();
    std::fs::write(
        work.join("values.yaml"),
        "s3: {bucket: b, region: us-east-1, endpoint: \"http://127.0.0.1:9\"}\nvsphere:\n  enabled: true\n  credentials: {vcenter: \"127.0.0.1:9\", username: u, password: p}\n  locations:\n    loc1: {datacenter: DC0, datastore: LocalDS_0, cluster: DC0_C0, folder: vm}\n",
    )
    .unwrap();
    let before = ido_testkit::files_below(d, &work);
    let run = |manifest: &str| {
        std::fs::write(work.join("m.yaml"), manifest).unwrap();
        let out = ido(
            &[
                "run",
                "--once",
                "--timeout",
                "10s",
                "-f",
                "m.yaml",
                "--config",
                "values.yaml",
                "--state",
                "st",
            ],
            &work,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(!text.contains("panicked"), "{text}");
        text
    };

    let rel = RELEASE.replace("vsphere-33.0.0", "vsphere-49.0.0/../../../../../victim/config");
    let text = run(&rel);
    assert!(
        text.contains("Release \"vsphere-49.0.0/../../../../../victim/config\": metadata.name"),
        "{text}"
    );

    let rel = RELEASE.replace("v1.33.1", "../../../../victim/x");
    let text = run(&rel);
    assert!(text.contains("spec.components[kubernetes].version"), "{text}");

    let ni = "apiVersion: image.giantswarm.io/v1alpha1\nkind: NodeImage\nmetadata: {name: ok, namespace: ../../victim}\nspec: {name: img, provider: capv}\n";
    let text = run(ni);
    assert!(text.contains("metadata.namespace \"../../victim\""), "{text}");

    // A NodeImage whose spec.name would leave the provider's S3 prefix never becomes a key.
    let ni = "apiVersion: image.giantswarm.io/v1alpha1\nkind: NodeImage\nmetadata: {name: ok}\nspec: {name: ../../other-bucket/x, provider: capv}\n";
    let text = run(ni);
    assert!(text.contains("spec.name \"../../other-bucket/x\""), "{text}");

    // Control characters in a name are escaped, never printed raw.
    let rel = RELEASE.replace("vsphere-33.0.0", "\"vsphere-1.0.0\\n\\u001b[31mFORGED\"");
    let text = run(&rel);
    assert!(!text.contains('\x1b') && !text.contains("\nFORGED"), "{text}");

    // The configuration's namespace is a name too.
    std::fs::write(work.join("bad-values.yaml"), "namespace: ../../victim\n").unwrap();
    std::fs::write(work.join("m.yaml"), RELEASE).unwrap();
    let out = ido(
        &[
            "run",
            "--once",
            "-f",
            "m.yaml",
            "--config",
            "bad-values.yaml",
            "--state",
            "st",
        ],
        &work,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("namespace: invalid value \"../../victim\""), "{err}");

    assert_eq!(
        ido_testkit::files_below(d, &work),
        before,
        "files outside the working directory changed"
    );
}

/// An empty desired set is refused when it would delete what earlier runs applied, unless
/// `--prune-empty`; a second ido on the same state fails at once naming the holder.
#[test]
fn an_empty_desired_set_deletes_nothing_unless_told_and_one_writer_per_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("values.yaml"), "namespace: team\n").unwrap();
    std::fs::write(
        d.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: x}\n",
    )
    .unwrap();
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::write(d.join("empty.yaml"), "").unwrap();
    let run = |file: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--once",
            "--timeout",
            "10s",
            "-f",
            file,
            "--config",
            "values.yaml",
            "--state",
            "st",
        ];
        args.extend(extra);
        ido(&args, d)
    };
    let out = run("cm.yaml", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = d.join("st/configmaps./team/ca.json");
    assert!(stored.is_file());
    // The state is private: the directory 0700, objects (Secrets among them) 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.join("st")), 0o700);
    assert_eq!(mode(&stored), 0o600);

    for empty in ["empty.yaml", "empty"] {
        let out = run(empty, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{empty} hold no object")) && err.contains("--prune-empty"),
            "{err}"
        );
        assert!(stored.is_file(), "an empty desired set deleted an applied object");
    }
    let out = run("empty.yaml", &["--prune-empty"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stored.exists(), "--prune-empty prunes");

    // One writer per state: a running `ido run` holds it; a second fails at once.
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(["run", "-f", "cm.yaml", "--config", "values.yaml", "--state", "st"])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = d.join("st/.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != first.id().to_string() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let started = std::time::Instant::now();
    let out = run("cm.yaml", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("in use by another ido (pid {})", first.id())),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "it did not fail at once"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The kernel dropped the lock with the process: the next run proceeds.
    let out = run("cm.yaml", &["--wait-lock"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A reader that goes away (`ido crds | head -1`) ends ido quietly, never with a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("crds")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

/// Ctrl-C in the middle of an upload: `ido run` stops, aborts the NFC lease and removes the
/// half-made VM before it exits 130; the state is not left locked, and the next run
/// uploads the template from the start.
#[tokio::test]
async fn an_interrupted_run_removes_its_half_made_vm_and_exits_130() {
    use ido_testkit::fault_proxy::{Fault, FaultProxy, Rule};
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions {
        username: Some("someone".into()),
        password: Some(PASSWORD.into()),
        ..VcsimOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ova = d.join("x.ova");
    OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", 16 << 20)], "nic0")
        .await
        .unwrap();
    s3.put_object(PUBLIC_BUCKET, KEY, ova.as_path()).await.unwrap();
    // The download is slowed to 2 MiB/s so the upload is surely in flight.
    let proxy = FaultProxy::start(&s3.endpoint()).await.unwrap();
    proxy.set_rules(vec![
        Rule::new(Fault::Throttle {
            bytes_per_sec: 2 << 20,
        })
        .method("GET"),
    ]);
    std::fs::write(d.join("values.yaml"), vc.values_yaml(&proxy.url(), "").unwrap()).unwrap();
    std::fs::write(d.join("r.yaml"), RELEASE).unwrap();
    let args = [
        "run",
        "--once",
        "-f",
        "r.yaml",
        "--config",
        "values.yaml",
        "--state",
        "st",
    ];
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(args)
        .current_dir(d)
        .env("IDO_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until the import's VM exists (not yet a template).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
        if vms.iter().any(|v| v["name"] == IMAGE && v["template"] == false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started: {vms:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(PASSWORD));
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("SIGINT: stopping"), "{err}");
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(
        !vms.iter().any(|v| v["name"] == IMAGE),
        "the half-made VM is still there: {vms:?}\n{err}"
    );

    // The next run takes the lock and uploads it whole.
    proxy.clear_rules();
    // Off the test's thread: the proxy serves on it.
    let dd = d.to_path_buf();
    let out = tokio::task::spawn_blocking(move || ido(&args, &dd))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vms = oracle_list_vms(&vc, "/DC0/vm").await.unwrap();
    assert!(
        vms.iter().any(|v| v["name"] == IMAGE && v["template"] == true),
        "{vms:?}"
    );
    no_secret_in(d);
}

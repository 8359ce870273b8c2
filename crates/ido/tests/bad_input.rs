//! The bad-input corpus: the `ido` binary on every kind of input it reads — manifests,
//! values, disk images and OVAs, URLs, registry responses, names — with hostile values:
//! traversal, control characters, overlong, empty, truncated, huge. Every case must end
//! with a clear error naming the input, never a panic; write or delete nothing outside
//! its working directory; leave no partial target; and print no secret and no raw control
//! character (no forged line, no terminal escape).

use std::{
    path::Path,
    process::{Output, Stdio},
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const SECRET: &str = "s3cr3t-never-printed-41d9";

/// What one case runs and what its error must say.
struct Case {
    /// Which input kind and hostile value, for failure messages.
    name: &'static str,
    /// `ido` arguments; `{w}` is the case's working directory.
    args: Vec<String>,
    /// Files written into the working directory first.
    files: Vec<(&'static str, Vec<u8>)>,
    /// Every one of these must be in the output (the input, the field, the value).
    expect: Vec<&'static str>,
    /// A file that must not exist afterwards (an import target).
    no_target: Option<&'static str>,
    /// Bytes on stdin.
    stdin: Option<Vec<u8>>,
    /// Whether the command may succeed (it skips the bad part and says so).
    may_succeed: bool,
}

impl Case {
    fn new(name: &'static str, args: &[&str]) -> Self {
        Self {
            name,
            args: args.iter().map(|s| s.to_string()).collect(),
            files: vec![],
            expect: vec![],
            no_target: None,
            stdin: None,
            may_succeed: false,
        }
    }
    fn file(mut self, name: &'static str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name, content.into()));
        self
    }
    fn expect(mut self, s: &[&'static str]) -> Self {
        self.expect.extend(s);
        self
    }
    fn no_target(mut self, t: &'static str) -> Self {
        self.no_target = Some(t);
        self
    }
    fn may_succeed(mut self) -> Self {
        self.may_succeed = true;
        self
    }
    fn stdin(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(b.into());
        self
    }
}

async fn run_case(root: &Path, i: usize, case: Case) -> Result<(), String> {
    let work = root.join(format!("case-{i}"));
    std::fs::create_dir_all(&work).unwrap();
    for (name, content) in &case.files {
        std::fs::write(work.join(name), content).unwrap();
    }
    let before = ido_testkit::files_below(root, &work);
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| a.replace("{w}", work.to_str().unwrap()))
        .collect();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"));
    cmd.args(&args)
        .current_dir(&work)
        .env_remove("RUST_LOG")
        .env("IDO_LOG", "debug")
        .env("IDO_IMPORT_PASSWORD", SECRET)
        .stdin(if case.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = case.stdin.clone() {
        let mut stdin = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
        });
    }
    let out: Output = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| format!("{}: still running after 60 s", case.name))?
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fail = |why: &str| Err(format!("{}: {why}\n--- ido {args:?} said:\n{text}", case.name));
    if out.status.success() && !case.may_succeed {
        return fail("succeeded");
    }
    if out.status.code() == Some(101) || text.contains("panicked") {
        return fail("panicked");
    }
    if out.status.code().is_none() {
        return fail("killed by a signal");
    }
    if text.contains(SECRET) {
        return fail("printed the secret");
    }
    if text.contains('\x1b') || text.contains('\r') || text.contains('\0') {
        return fail("printed a raw control character");
    }
    if text.lines().any(|l| l.starts_with("FORGED")) {
        return fail("printed a forged line");
    }
    for e in &case.expect {
        if !text.contains(e) {
            return fail(&format!("does not say {e:?}"));
        }
    }
    if let Some(t) = case.no_target
        && work.join(t).exists()
    {
        return fail(&format!("left the target {t}"));
    }
    if ido_testkit::files_below(root, &work) != before {
        return fail("changed files outside its working directory");
    }
    Ok(())
}

/// A ustar archive of `(name, data)` members, built by Python's tarfile (names taken as
/// given, however hostile).
fn tar(members: &[(&str, &[u8])], dir: &Path) -> Vec<u8> {
    let list: Vec<(String, String)> = members
        .iter()
        .enumerate()
        .map(|(i, (name, data))| {
            let p = dir.join(format!("member-{i}"));
            std::fs::write(&p, data).unwrap();
            (name.to_string(), p.to_str().unwrap().to_string())
        })
        .collect();
    let out = dir.join("out.tar");
    let script = format!(
        "import json, tarfile\nwith tarfile.open({:?}, 'w', format=tarfile.USTAR_FORMAT) as t:\n    for n, p in json.loads({:?}):\n        t.add(p, arcname=n)\n",
        out.to_str().unwrap(),
        serde_json::to_string(&list).unwrap()
    );
    let ok = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "python3 tarfile");
    std::fs::read(out).unwrap()
}

/// A qcow2 made by qemu-img, then changed by `edit`.
fn qcow2(dir: &Path, size: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let p = dir.join("base.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", p.to_str().unwrap(), size])
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-img create");
    let mut b = std::fs::read(&p).unwrap();
    edit(&mut b);
    b
}

/// A plain-HTTP server answering every request from `answer(path)`: status line, extra
/// headers and body, then closing.
async fn canned(
    answer: impl Fn(&str) -> (String, String, Vec<u8>) + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = l.local_addr().unwrap().to_string();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                // TLS spoken to this plain-HTTP server: close at once, as a real one would fail.
                if matches!(sock.peek(&mut tmp[..1]).await, Ok(1) if tmp[0] == 0x16) {
                    return;
                }
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let (status, headers, body) = answer(&path);
                let mut resp = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                if !head.starts_with("HEAD ") {
                    resp.extend_from_slice(&body);
                }
                let _ = sock.write_all(&resp).await;
            });
        }
    });
    (host, task)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_kind_with_hostile_values_fails_clearly_and_safely() {
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path();
    // What a traversal would reach: it must stay as it is.
    std::fs::create_dir_all(root.join("victim")).unwrap();
    std::fs::write(root.join("victim/config.json"), "{\"keep\": true}").unwrap();
    std::fs::write(root.join("victim/secret.bin"), SECRET).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let sc = scratch.path();

    let run = [
        "run",
        "--once",
        "--timeout",
        "10s",
        "-f",
        "m.yaml",
        "--config",
        "v.yaml",
        "--state",
        "st",
    ];
    let values = "namespace: team\n";
    let enabled = format!(
        "s3: {{bucket: b, region: us-east-1, endpoint: \"http://127.0.0.1:9\"}}\nvsphere:\n  enabled: true\n  credentials: {{vcenter: \"127.0.0.1:9\", username: u, password: {SECRET}}}\n  locations:\n    l: {{datacenter: DC0, datastore: d, cluster: c, folder: vm}}\n"
    );
    let release = |name: &str, version: &str| {
        format!(
            "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {{name: {name}}}\nspec:\n  components:\n  - {{name: flatcar, version: 4000.0.0}}\n  - {{name: kubernetes, version: {version}}}\n  - {{name: os-tooling, version: v1.20.0}}\n"
        )
    };
    let long = "a".repeat(300);
    let bomb = {
        let mut y =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (i, c) in "bcdefghi".chars().enumerate() {
            let p = (b'a' + i as u8) as char;
            y += &format!("{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n");
        }
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\n{y}")
    };

    let mut cases = vec![
        // --- manifests ---
        Case::new("manifest: traversal name", &run)
            .file("v.yaml", values)
            .file("m.yaml", release("vsphere-1.0.0/../../../victim/config", "v1.33.1"))
            .expect(&["m.yaml", "metadata.name", "vsphere-1.0.0/../../../victim/config"]),
        Case::new("manifest: traversal version", &run)
            .file("v.yaml", enabled)
            .file("m.yaml", release("vsphere-1.0.0", "../../../victim/x"))
            .expect(&["spec.components[kubernetes].version", "../../../victim/x"]),
        Case::new("manifest: control characters in a name", &run)
            .file("v.yaml", values)
            .file("m.yaml", release("\"vsphere-1.0.0\\n\\u001b[31mFORGED\\r\"", "v1.33.1"))
            .expect(&["metadata.name", "\\u{1b}"]),
        Case::new("manifest: overlong name", &run)
            .file("v.yaml", values)
            .file("m.yaml", release(&long, "v1.33.1"))
            .expect(&["metadata.name", "253"]),
        Case::new("manifest: truncated", &run)
            .file("v.yaml", values)
            .file("m.yaml", "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {name: vsphere-1.0.0\n")
            .expect(&["m.yaml"]),
        Case::new("manifest: binary garbage", &run)
            .file("v.yaml", values)
            .file("m.yaml", b"\x00\x01\x02\xff\xfe\x1b[31mFORGED\n\x00".to_vec())
            .expect(&["m.yaml"]),
        Case::new("manifest: alias bomb", &run)
            .file("v.yaml", values)
            .file("m.yaml", bomb)
            .expect(&["m.yaml"]),
        Case::new("manifest: a Secret in malformed YAML", &run)
            .file("v.yaml", values)
            .file(
                "m.yaml",
                format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {SECRET}\nother: [\n"),
            )
            .expect(&["m.yaml"]),
        Case::new("manifest: a Secret value of the wrong type", &run)
            .file("v.yaml", values)
            .file("m.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: [1, 2]}\n")
            .expect(&["m.yaml", "Secret"]),
        Case::new("manifest: unknown kind with control characters", &run)
            .file("v.yaml", values)
            .file("m.yaml", "apiVersion: v1\nkind: \"Pod\\u001b[2J\\nFORGED\"\nmetadata: {name: x}\n")
            .expect(&["m.yaml", "kind"]),
        Case::new("manifest: ImageSync with a hostile name", &s(&["sync", "-f", "m.yaml", "--state", "st"]).iter().map(String::as_str).collect::<Vec<_>>())
            .file("m.yaml", "apiVersion: ido.dev/v1alpha1\nkind: ImageSync\nmetadata: {name: ../../victim/x}\nspec: {mode: OneShot, source: {name: a/b, version: \"1\"}, destination: {name: c/d}}\n")
            .expect(&["metadata.name", "../../victim/x"]),
        // --- values ---
        Case::new("values: empty", &run)
            .file("v.yaml", "")
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["v.yaml", "empty"]),
        Case::new("values: misspelled key", &run)
            .file("v.yaml", "vsphere:\n  enabeld: true\n")
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["vsphere.enabeld"]),
        Case::new("values: control characters in a key", &run)
            .file("v.yaml", "\"\\u001b[31mFORGED\\nx\": 1\n")
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["\\u{1b}"]),
        Case::new("values: a secret in malformed YAML", &run)
            .file(
                "v.yaml",
                format!("vsphere:\n  enabled: true\n  credentials: {{vcenter: x, username: u, password: {SECRET}\n  locations: [\n"),
            )
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["v.yaml"]),
        Case::new("values: a secret where a list belongs", &run)
            .file("v.yaml", format!("vsphere:\n  credentials: [{SECRET}]\n"))
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["vsphere.credentials"]),
        Case::new("values: huge duration", &run)
            .file("v.yaml", "imageRetentionPeriod: 99999999999999999999999h\n")
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["imageRetentionPeriod", "99999999999999999999999h"]),
        Case::new("values: traversal namespace", &run)
            .file("v.yaml", "namespace: ../../victim\n")
            .file("m.yaml", release("vsphere-1.0.0", "v1.33.1"))
            .expect(&["namespace", "../../victim"]),
        // --- disk images and archives (ido import) ---
        Case::new("import: empty file", &["import", "x.raw", "t.img"])
            .file("x.raw", "")
            .expect(&["empty"])
            .no_target("t.img"),
        Case::new("import: empty stdin", &["import", "-", "t.img"])
            .stdin(vec![])
            .expect(&["empty"])
            .no_target("t.img"),
        Case::new("import: garbage named .ova", &["import", "x.ova", "t.img"])
            .file("x.ova", b"\x1b[31mFORGED\nnot an ova at all".repeat(100))
            .expect(&["x.ova", "ova"])
            .no_target("t.img"),
        Case::new("import: truncated qcow2", &["import", "x.qcow2", "t.img"])
            .file("x.qcow2", qcow2(sc, "64M", |b| b.truncate(100)))
            .expect(&["qcow2"])
            .no_target("t.img"),
        Case::new("import: qcow2 of 1 EiB", &["import", "x.qcow2", "t.img", "--size", "1Gi"])
            .file(
                "x.qcow2",
                qcow2(sc, "64M", |b| b[24..32].copy_from_slice(&(1u64 << 60).to_be_bytes())),
            )
            .expect(&["1152921504606846976"])
            .no_target("t.img"),
        Case::new("import: qcow2 with a backing file outside", &["import", "x.qcow2", "t.img"])
            .file("x.qcow2", {
                let base = sc.join("backing.raw");
                std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
                let p = sc.join("overlay.qcow2");
                let ok = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(root.join("victim/secret.bin"))
                    .arg(&p)
                    .arg("1M")
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
                std::fs::read(p).unwrap()
            })
            .expect(&["backing"])
            .no_target("t.img"),
        Case::new("import: vmdk descriptor naming an extent outside", &["import", "x.vmdk", "t.img"])
            .file(
                "x.vmdk",
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"../victim/secret.bin\" 0\n\nddb.virtualHWVersion = \"4\"\n",
            )
            .expect(&["x.vmdk"])
            .no_target("t.img"),
        Case::new("import: OVA with a traversal member and control characters", &["import", "x.ova", "t.img"])
            .file(
                "x.ova",
                tar(
                    &[
                        ("../../victim/x.ovf", b"<Envelope/>"),
                        ("disk\u{1b}[31m\nFORGED.vmdk", b"not a disk"),
                    ],
                    sc,
                ),
            )
            .expect(&["x.ova"])
            .no_target("t.img"),
        Case::new("import: tar member declaring 8 EiB", &["import", "x.tar", "t.img"])
            .file("x.tar", {
                let mut t = tar(&[("disk.raw", &[1u8; 512])], sc);
                // The size field (octal, 12 bytes at 124) says 0o777777777777 … as base-256.
                t[124] = 0x80;
                t[125..136].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
                t
            })
            .expect(&["x.tar"])
            .no_target("t.img"),
        Case::new("import: target in a missing directory", &["import", "x.raw", "no/such/dir/t.img"])
            .file("x.raw", vec![1u8; 4096])
            .expect(&["no/such/dir/t.img"]),
        Case::new("import: overlong target name", &["import", "x.raw", &format!("{}.img", "t".repeat(300))])
            .file("x.raw", vec![1u8; 4096])
            .expect(&["File name too long"]),
        // --- URLs ---
        Case::new("url: credentials in an unparseable URL", &["import", &format!("http://user:{SECRET}@[::1/x"), "t.img"])
            .expect(&["invalid"])
            .no_target("t.img"),
        Case::new("url: a signed query", &["import", &format!("http://127.0.0.1:9/x.raw?X-Amz-Signature={SECRET}"), "t.img", "--retries", "1"])
            .expect(&["127.0.0.1:9"])
            .no_target("t.img"),
        Case::new("url: control characters", &["import", "http://127.0.0.1:9/a\u{1b}[31m\nFORGED", "t.img", "--retries", "1"])
            .expect(&["127.0.0.1:9"])
            .no_target("t.img"),
        Case::new("url: credentials in a copy reference", &["copy", &format!("docker://user:{SECRET}@127.0.0.1:9/x:1"), "127.0.0.1:9/y:1"])
            .expect(&["credentials in a reference"]),
        Case::new("url: overlong reference", &["copy", &format!("127.0.0.1:9/{}:1", "x".repeat(5000)), "127.0.0.1:9/y:1"])
            .expect(&["reference"]),
        Case::new("url: a password in the environment, server unreachable", &["import", "http://127.0.0.1:9/x.raw", "t.img", "--username", "u", "--retries", "1"])
            .expect(&["127.0.0.1:9"])
            .no_target("t.img"),
    ];

    // --- registry responses (a server that answers what a hostile registry would) ---
    let (reg, _task) = canned(|path| {
        let forged = "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"no\\u001b[31m\\nFORGED line\"}]}";
        if path.starts_with("/v2/denied/") {
            ("401 Unauthorized".into(), String::new(), forged.as_bytes().to_vec())
        } else if path.starts_with("/v2/garbage/tags/list") {
            ("200 OK".into(), "Content-Type: application/json\r\n".into(), b"\x1b[31m{not json\nFORGED".to_vec())
        } else if path.starts_with("/v2/badtags/tags/list") {
            (
                "200 OK".into(),
                "Content-Type: application/json\r\n".into(),
                b"{\"name\":\"badtags\",\"tags\":[\"1.0\",\"x\\u001b[2J\\nFORGED\"]}".to_vec(),
            )
        } else if path.starts_with("/v2/huge/manifests/") {
            // A "manifest" of 64 MiB.
            (
                "200 OK".into(),
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                vec![b' '; 64 << 20],
            )
        } else if path.starts_with("/v2/traversal/manifests/") {
            let m = "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:../../../victim/x\",\"size\":2},\"layers\":[]}";
            (
                "200 OK".into(),
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                m.as_bytes().to_vec(),
            )
        } else if path == "/v2/" {
            ("200 OK".into(), String::new(), b"{}".to_vec())
        } else {
            ("404 Not Found".into(), String::new(), b"{\"errors\":[]}".to_vec())
        }
    })
    .await;
    let r = |p: &str| format!("{reg}/{p}");
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let denied = leak(r("denied/x"));
    let garbage = leak(r("garbage"));
    let badtags = leak(r("badtags"));
    let huge = leak(r("huge:1"));
    let traversal = leak(r("traversal:1"));
    let dest = leak(r("dest/y:1"));
    let insecure = ["--src-tls-verify=false", "--dest-tls-verify=false"];
    cases.extend([
        Case::new(
            "registry: 401 with control characters in its message",
            &[&["copy", denied, dest][..], &insecure].concat(),
        )
        .expect(&[denied, "401"]),
        Case::new(
            "registry: tag list that is not JSON",
            &["tags", garbage, "--tls-verify=false"],
        )
        .expect(&[garbage]),
        Case::new(
            "registry: tag names with control characters",
            &["tags", badtags, "--tls-verify=false"],
        )
        .may_succeed()
        .expect(&["1.0", "not a tag", "\\u{1b}"]),
        Case::new(
            "registry: a 64 MiB manifest",
            &[&["copy", huge, dest][..], &insecure].concat(),
        )
        .expect(&[huge]),
        Case::new(
            "registry: a digest that is a path",
            &[&["copy", traversal, dest][..], &insecure].concat(),
        )
        .expect(&["sha256:../../../victim/x"]),
    ]);

    let total = cases.len();
    let mut failures = vec![];
    for (i, case) in cases.into_iter().enumerate() {
        let name = case.name;
        match run_case(root, i, case).await {
            Ok(()) => eprintln!("ok: {name}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

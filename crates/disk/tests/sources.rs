//! S3 and registry (containerDisk) sources against real peers: SeaweedFS (public and
//! private buckets, anonymous and signed) and docker-registry (plain, and TLS with
//! htpasswd auth through a docker config file), with images pushed by skopeo. qemu-img is
//! the oracle for the bytes.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ido_disk::source::{RegistryOptions, S3Options};
use ido_disk::{DiskFormat, ImportOptions, SourceSpec, TargetSpec, import};
use ido_io::s3::S3Credentials;
use ido_oci::auth::AuthStore;
use ido_testkit::oci_image::{Layout, push_layout};
use ido_testkit::registry::{DockerRegistry, RegistryOptions as PeerOptions};
use ido_testkit::seaweed::{self, SeaweedFs};
use serde_json::json;
use sha2::Digest as _;

fn target(out: &Path) -> TargetSpec {
    TargetSpec {
        path: out.to_path_buf(),
        capacity: None,
    }
}

/// The fixture as qcow2 (its path) and qemu-img's raw of it.
fn qcow2(dir: &Path) -> (PathBuf, Vec<u8>) {
    let raw = write_raw(dir);
    let q = dir.join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let oracle = qemu_raw(&q, dir);
    (q, oracle)
}

fn s3_options(sw: &SeaweedFs, bucket: &str, key: &str, creds: Option<S3Credentials>) -> S3Options {
    let mut o = S3Options::parse(&format!("s3://{bucket}/{key}")).unwrap();
    o.endpoint = Some(sw.endpoint());
    o.region = seaweed::REGION.into();
    o.credentials = creds;
    // Small chunks: the 8 MiB object takes the parallel path too.
    o.http.chunk_size = 1 << 20;
    o.http.parallel_min = 0;
    o.http.retry.initial_backoff = std::time::Duration::from_millis(10);
    o.http.retry.attempts = 3;
    o
}

fn test_credentials() -> S3Credentials {
    S3Credentials {
        access_key_id: seaweed::ACCESS_KEY.into(),
        secret_access_key: seaweed::SECRET_KEY.into(),
    }
}

/// Import options that may replace the target: these tests import into one file again and
/// again (the existing-target check has its own test in `ido`'s).
fn forced(source: SourceSpec, target: TargetSpec) -> ImportOptions {
    let mut o = ImportOptions::new(source, target);
    o.overwrite = true;
    o
}

#[tokio::test]
async fn s3_public_bucket_anonymously_and_private_bucket_with_keys() {
    let sw = SeaweedFs::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (q, oracle) = qcow2(dir.path());
    let key = format!("disk-import/{}/disk.qcow2", std::process::id());
    sw.put_object(seaweed::PUBLIC_BUCKET, &key, q.as_path())
        .await
        .unwrap();
    sw.put_object(seaweed::PRIVATE_BUCKET, &key, q.as_path())
        .await
        .unwrap();
    let sum = sha256(&q);

    // Public, anonymous, parallel ranged GETs.
    let out = dir.path().join("public.img");
    let mut opts = forced(
        SourceSpec::S3(Box::new(s3_options(sw, seaweed::PUBLIC_BUCKET, &key, None))),
        target(&out),
    );
    opts.checksum = Some(sum.parse().unwrap());
    let r = import(opts).await.unwrap();
    assert_eq!(r.format, DiskFormat::Qcow2);
    assert_eq!(r.source_bytes, std::fs::metadata(&q).unwrap().len());
    assert_same(&std::fs::read(&out).unwrap(), &oracle, "public bucket");

    // Private with the keys (presigned URL, then the HTTP source).
    let out = dir.path().join("private.img");
    let opts = forced(
        SourceSpec::S3(Box::new(s3_options(
            sw,
            seaweed::PRIVATE_BUCKET,
            &key,
            Some(test_credentials()),
        ))),
        target(&out),
    );
    let shown = opts.source.to_string();
    assert_eq!(shown, format!("s3://{}/{key}", seaweed::PRIVATE_BUCKET));
    import(opts).await.unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &oracle, "private bucket");

    // Private without keys: denied, nothing written.
    let out = dir.path().join("denied.img");
    let e = import(forced(
        SourceSpec::S3(Box::new(s3_options(sw, seaweed::PRIVATE_BUCKET, &key, None))),
        target(&out),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.label(), "denied", "{e}");
    assert!(!out.exists());

    // A missing key with the keys: not found, and the signature is not in the message.
    let e = import(forced(
        SourceSpec::S3(Box::new(s3_options(
            sw,
            seaweed::PRIVATE_BUCKET,
            "disk-import/missing.qcow2",
            Some(test_credentials()),
        ))),
        target(&out),
    ))
    .await
    .unwrap_err();
    let text = format!("{e} {e:?}");
    assert_eq!(e.label(), "not_found", "{e}");
    assert!(
        !text.contains("X-Amz-Signature") && !text.contains(seaweed::SECRET_KEY),
        "{text}"
    );
    let debug = format!("{:?}", s3_options(sw, "b", "k", Some(test_credentials())));
    assert!(!debug.contains(seaweed::SECRET_KEY), "{debug}");
}

// --- containerDisk images -------------------------------------------------------------

/// A layer: the given files (relative path → bytes) as a tar made by GNU tar, gzip'd
/// when asked. Returns (media type, bytes).
fn layer(dir: &Path, files: &[(&str, &[u8])], gzip: bool) -> (String, Vec<u8>) {
    let root = tempfile::tempdir_in(dir).unwrap();
    for (name, data) in files {
        let p = root.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    let tar = dir.join("layer.tar");
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let mut args = vec![
        "--owner=107",
        "--group=107",
        "-C",
        root.path().to_str().unwrap(),
        "-cf",
        tar.to_str().unwrap(),
    ];
    args.extend(names);
    run("tar", &args);
    let mut bytes = std::fs::read(&tar).unwrap();
    std::fs::remove_file(&tar).unwrap();
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &bytes).unwrap();
        bytes = e.finish().unwrap();
        ("application/vnd.oci.image.layer.v1.tar+gzip".into(), bytes)
    } else {
        ("application/vnd.oci.image.layer.v1.tar".into(), bytes)
    }
}

/// The OCI layout every image of a test goes into (pushed one tag at a time).
fn layout_dir(dir: &Path) -> PathBuf {
    dir.join("layout")
}

fn blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let hex = hex::encode(sha2::Sha256::digest(data));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

/// One image of layers (bottom first) for `platform`: its manifest descriptor.
fn image(dir: &Path, platform: &str, layers: &[(String, Vec<u8>)]) -> serde_json::Value {
    let layout = &layout_dir(dir);
    let (os, arch) = platform.split_once('/').unwrap();
    let mut descs = vec![];
    let mut diff_ids = vec![];
    for (media_type, bytes) in layers {
        let (d, s) = blob(layout, bytes);
        diff_ids.push(d.clone()); // not the uncompressed digest; nothing here reads it
        descs.push(json!({"mediaType": media_type, "digest": d, "size": s}));
    }
    let config = json!({"architecture": arch, "os": os, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = blob(layout, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = blob(layout, &serde_json::to_vec(&manifest).unwrap());
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
           "platform": {"os": os, "architecture": arch}})
}

/// Writes an OCI layout of `images` (one: a plain image; several: an index) and pushes it
/// with skopeo as `repo:tag`.
async fn push(reg: &DockerRegistry, dir: &Path, repo_tag: &str, images: Vec<serde_json::Value>) {
    let layout = layout_dir(dir);
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut top = if images.len() == 1 {
        let mut d = images[0].clone();
        d.as_object_mut().unwrap().remove("platform");
        d
    } else {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": images});
        let (d, s) = blob(&layout, &serde_json::to_vec(&index).unwrap());
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    };
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "t"});
    let digest = top["digest"].as_str().unwrap().to_string();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).unwrap(),
    )
    .unwrap();
    let l = Layout {
        dir: layout,
        tag: "t".into(),
        digest,
        images: vec![],
        layer_bytes: 0,
    };
    push_layout(&l, reg, repo_tag).await.unwrap();
}

fn registry_source(reg: &DockerRegistry, repo_tag: &str) -> RegistryOptions {
    let mut o = RegistryOptions::parse(&format!("docker://{}/{repo_tag}", reg.host())).unwrap();
    o.tls_verify = reg.ca().is_some();
    o.ca_bundle = reg.ca().map(|c| c.ca_pem());
    o
}

#[tokio::test]
async fn container_disk_from_a_registry() {
    let reg = DockerRegistry::start(PeerOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (q, oracle) = qcow2(dir.path());
    let qbytes = std::fs::read(&q).unwrap();

    // Bottom: an older disk of the same name; then the real one (gzip); on top, a layer
    // without a disk (uncompressed).
    let layers = vec![
        layer(dir.path(), &[("disk/disk.qcow2", b"old bytes, overridden")], true),
        layer(dir.path(), &[("disk/disk.qcow2", &qbytes)], true),
        layer(dir.path(), &[("etc/motd", b"hello")], false),
    ];
    push(
        &reg,
        dir.path(),
        "disks/fixture:v1",
        vec![image(dir.path(), "linux/amd64", &layers)],
    )
    .await;

    let out = dir.path().join("out.img");
    let mut opts = forced(
        SourceSpec::Registry(Box::new(registry_source(&reg, "disks/fixture:v1"))),
        target(&out),
    );
    opts.checksum = Some(sha256(&q).parse().unwrap());
    let r = import(opts).await.unwrap();
    assert_eq!(r.format, DiskFormat::Qcow2);
    assert_eq!(r.source_bytes, qbytes.len() as u64, "the disk file's bytes");
    assert_same(&std::fs::read(&out).unwrap(), &oracle, "containerDisk");
    assert_sparse(&out);

    // A platform the single image is not.
    let mut o = registry_source(&reg, "disks/fixture:v1");
    o.platform = Some("linux/s390x".into());
    let e = import(forced(SourceSpec::Registry(Box::new(o)), target(&out)))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("platform") && e.to_string().contains("linux/amd64"),
        "{e}"
    );

    // A missing tag.
    let e = import(forced(
        SourceSpec::Registry(Box::new(registry_source(&reg, "disks/fixture:nope"))),
        target(&dir.path().join("x.img")),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.label(), "not_found", "{e}");
}

#[tokio::test]
async fn container_disk_platform_from_an_index_and_ambiguity() {
    let reg = DockerRegistry::start(PeerOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let amd = random_bytes(21, 3 << 20);
    let arm = random_bytes(22, 5 << 20);
    let images = vec![
        image(
            dir.path(),
            "linux/amd64",
            &[layer(dir.path(), &[("disk/amd64.img", &amd)], true)],
        ),
        image(
            dir.path(),
            "linux/arm64",
            &[layer(dir.path(), &[("disk/arm64.img", &arm)], true)],
        ),
    ];
    push(&reg, dir.path(), "disks/multi:v1", images).await;

    let out = dir.path().join("arm.img");
    let mut o = registry_source(&reg, "disks/multi:v1");
    o.platform = Some("linux/arm64".into());
    let mut opts = forced(SourceSpec::Registry(Box::new(o)), target(&out));
    opts.format = Some(DiskFormat::Raw);
    import(opts).await.unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &arm, "linux/arm64 from the index");

    let mut o = registry_source(&reg, "disks/multi:v1");
    o.platform = Some("linux/ppc64le".into());
    let e = import(forced(SourceSpec::Registry(Box::new(o)), target(&out)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("linux/arm64"), "lists what there is: {e}");

    // Two files under disk/ in the disk's layer: refused, no target left.
    let layers = vec![layer(
        dir.path(),
        &[("disk/a.img", &amd), ("disk/b.img", &arm)],
        false,
    )];
    push(
        &reg,
        dir.path(),
        "disks/two:v1",
        vec![image(dir.path(), "linux/amd64", &layers)],
    )
    .await;
    let out = dir.path().join("two.img");
    let e = import(forced(
        SourceSpec::Registry(Box::new(registry_source(&reg, "disks/two:v1"))),
        target(&out),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    assert!(e.to_string().contains("ambiguous"), "{e}");
    assert!(!out.exists());

    // No disk at all.
    let layers = vec![layer(dir.path(), &[("etc/motd", b"hi")], true)];
    push(
        &reg,
        dir.path(),
        "disks/none:v1",
        vec![image(dir.path(), "linux/amd64", &layers)],
    )
    .await;
    let e = import(forced(
        SourceSpec::Registry(Box::new(registry_source(&reg, "disks/none:v1"))),
        target(&out),
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no regular file under /disk/"), "{e}");
}

#[tokio::test]
async fn container_disk_over_tls_with_credentials_from_an_authfile() {
    let reg = DockerRegistry::start(PeerOptions {
        tls: true,
        auth: Some(("disk".into(), "s3cret-pw".into())),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(23, (2 << 20) + 512);
    let layers = vec![layer(dir.path(), &[("disk/d.raw", &data)], true)];
    push(
        &reg,
        dir.path(),
        "private/disk:1",
        vec![image(dir.path(), "linux/amd64", &layers)],
    )
    .await;

    let out = dir.path().join("out.img");
    let anonymous = registry_source(&reg, "private/disk:1");
    let e = import(forced(
        SourceSpec::Registry(Box::new(anonymous.clone())),
        target(&out),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.label(), "denied", "{e}");

    let authfile = dir.path().join("auth.json");
    reg.write_authfile(&authfile).unwrap();
    let mut o = anonymous;
    o.auth = AuthStore::from_docker_config(&std::fs::read(&authfile).unwrap(), "auth.json").unwrap();
    assert!(!format!("{o:?}").contains("s3cret-pw"));
    import(forced(SourceSpec::Registry(Box::new(o)), target(&out)))
        .await
        .unwrap();
    assert_same(&std::fs::read(&out).unwrap(), &data, "private registry over TLS");
}

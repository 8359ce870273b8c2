//! The copy engine against `skopeo copy --preserve-digests` on the shapes registries hold:
//! Docker manifest lists, OCI indexes with attestation manifests, OCI 1.1 artifacts with
//! `subject` and `artifactType`, zstd, uncompressed, zero-byte and foreign layers, 100+
//! layers; `--all`, the host's platform, one other platform and several; on plain,
//! htpasswd+TLS and token-authenticated registries. Each source is pushed with skopeo, then
//! copied by ido and by skopeo into two repositories of another registry of the same kind:
//! the manifests there are the same, and so are the blobs they reference that are present.

mod common;

use common::side;

use std::{collections::BTreeMap, path::Path};

use ido_oci::{
    Reference,
    copy::{Platforms, copy},
    media::{self, Platform},
    registry::Registry,
};
use ido_testkit::{
    oci_image::{Format, LayerKind, Layout, Shape, build_artifact, build_shape, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo, skopeo_raw},
    token_server::TokenPolicy,
};
use oci_client::{RegistryOperation, client::ClientConfig};
use serde_json::Value;

/// How an image is selected, for both tools.
#[derive(Clone, Debug)]
enum Select {
    /// `--all`.
    All,
    /// No flag: the host's platform.
    Host,
    /// One platform (skopeo: `--override-os`/`--override-arch`).
    One(String),
    /// Several platforms: all of the source index's images, which is what skopeo's `--all`
    /// copies when the index has nothing else.
    Several(Vec<String>),
}

/// A pair of registries of one kind and what each tool needs to reach them.
struct Env {
    kind: &'static str,
    src: DockerRegistry,
    dst: DockerRegistry,
    sa: Registry,
    sb: Registry,
    dir: tempfile::TempDir,
}

async fn start(kind: &'static str) -> DockerRegistry {
    match kind {
        "plain" => DockerRegistry::start(Default::default()).await.unwrap(),
        "htpasswd+tls" => DockerRegistry::start(RegistryOptions {
            tls: true,
            auth: Some(("shapes".into(), "shapes-pw-5511".into())),
        })
        .await
        .unwrap(),
        "token" => DockerRegistry::start_with_token(
            Default::default(),
            TokenPolicy::new()
                .user("alice", "alice-pw-7071")
                .allow("alice", "", &["*"]),
        )
        .await
        .unwrap(),
        _ => unreachable!("{kind}"),
    }
}

impl Env {
    async fn new(kind: &'static str) -> Self {
        let (src, dst) = tokio::join!(start(kind), start(kind));
        let (sa, sb) = tokio::join!(side(&src), side(&dst));
        Self {
            kind,
            src,
            dst,
            sa,
            sb,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `shape` and pushes it as `src/NAME:t`.
    async fn push(&self, name: &str, shape: &Shape) -> Layout {
        let layout = build_shape(&self.path().join(name), "t", shape).await.unwrap();
        push_layout(&layout, &self.src, &format!("src/{name}:t"))
            .await
            .unwrap();
        layout
    }

    /// Copies `src/NAME:t` with ido to `ido/NAME-LABEL:t` and with skopeo to
    /// `skopeo/NAME-LABEL:t`, then compares what each left there.
    async fn check(&self, name: &str, label: &str, select: &Select) -> Outcome {
        let what = format!("{}: {name} ({label})", self.kind);
        let src_ref = format!("src/{name}:t");
        let dst = format!("{name}-{label}");
        let platforms = match select {
            Select::All => Platforms::All,
            Select::Host => Platforms::Host,
            Select::One(p) => Platforms::Only(vec![Platform::parse(p).unwrap()]),
            Select::Several(ps) => Platforms::Only(ps.iter().map(|p| Platform::parse(p).unwrap()).collect()),
        };
        let rep = copy(
            &self.sa,
            &reference(&self.src, &src_ref),
            &self.sb,
            &reference(&self.dst, &format!("ido/{dst}:t")),
            &platforms,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: ido copy: {e}"));

        let mut args: Vec<String> = vec!["copy".into(), "--preserve-digests".into(), "-q".into()];
        match select {
            Select::All | Select::Several(_) => args.push("--all".into()),
            Select::Host => {}
            Select::One(p) => {
                let (os, arch) = p.split_once('/').unwrap();
                args.extend([format!("--override-os={os}"), format!("--override-arch={arch}")]);
            }
        }
        args.extend(self.src.skopeo_flags("src", self.path()).unwrap());
        args.extend(self.dst.skopeo_flags("dest", self.path()).unwrap());
        args.push(format!("docker://{}/{src_ref}", self.src.host()));
        args.push(format!("docker://{}/skopeo/{dst}:t", self.dst.host()));
        skopeo(&args)
            .await
            .unwrap_or_else(|e| panic!("{what}: skopeo copy: {e}"));

        let (by_ido, ido_digest) = skopeo_raw(&self.dst, &format!("ido/{dst}:t"), self.path())
            .await
            .unwrap();
        let (by_skopeo, skopeo_digest) = skopeo_raw(&self.dst, &format!("skopeo/{dst}:t"), self.path())
            .await
            .unwrap();
        assert_eq!(
            ido_digest,
            skopeo_digest,
            "{what}: ido's manifest differs from skopeo's:\n{}\n{}",
            String::from_utf8_lossy(&by_ido),
            String::from_utf8_lossy(&by_skopeo)
        );
        assert_eq!(rep.digest, ido_digest, "{what}: the digest ido reports");

        // Every manifest under the tag, and the blobs they reference.
        let mut manifests = vec![(ido_digest.clone(), by_ido)];
        let mut blobs: BTreeMap<String, bool> = BTreeMap::new();
        let mut i = 0;
        while i < manifests.len() {
            let m: Value = serde_json::from_slice(&manifests[i].1).unwrap();
            i += 1;
            for child in m["manifests"].as_array().into_iter().flatten() {
                let d = child["digest"].as_str().unwrap();
                let (a, _) = skopeo_raw(&self.dst, &format!("ido/{dst}@{d}"), self.path())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {d} missing at ido's destination: {e}"));
                let (b, _) = skopeo_raw(&self.dst, &format!("skopeo/{dst}@{d}"), self.path())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {d} missing at skopeo's destination: {e}"));
                assert_eq!(a, b, "{what}: {d}");
                assert_eq!(media::sha256(&a), d, "{what}: {d} is byte-exact");
                manifests.push((d.to_string(), a));
            }
            let descs = std::iter::once(&m["config"])
                .filter(|c| c.is_object())
                .chain(m["layers"].as_array().into_iter().flatten());
            for d in descs {
                let foreign = d["urls"].as_array().is_some_and(|u| !u.is_empty());
                blobs.insert(d["digest"].as_str().unwrap().to_string(), foreign);
            }
        }
        let heads = BlobHeads::new(&self.dst).await;
        let mut outcome = Outcome {
            manifests: manifests.len(),
            ..Outcome::default()
        };
        for (digest, foreign) in &blobs {
            let at_ido = heads.present(&format!("ido/{dst}"), digest).await;
            let at_skopeo = heads.present(&format!("skopeo/{dst}"), digest).await;
            assert_eq!(
                at_ido, at_skopeo,
                "{what}: blob {digest} (foreign: {foreign}) present at ido's destination: {at_ido}, at skopeo's: {at_skopeo}"
            );
            if *foreign {
                outcome.foreign.push(at_skopeo);
            } else {
                assert!(at_ido, "{what}: blob {digest} missing");
                outcome.blobs += 1;
            }
        }
        eprintln!("{what}: {ido_digest}, {outcome:?}");
        outcome
    }
}

/// What a [`Env::check`] found at both destinations.
#[derive(Debug, Default)]
struct Outcome {
    /// Manifests under the tag (the top one and those it lists).
    manifests: usize,
    /// Distributable blobs, present at both.
    blobs: usize,
    /// Per foreign layer: whether its bytes were copied (by both, or by neither).
    foreign: Vec<bool>,
}

fn reference(reg: &DockerRegistry, repo_ref: &str) -> Reference {
    format!("{}/{repo_ref}", reg.host()).parse().unwrap()
}

/// `HEAD` of blobs with oci-client (a client of neither tool), authenticated as skopeo is.
struct BlobHeads {
    client: oci_client::Client,
    auth: oci_client::secrets::RegistryAuth,
    host: String,
}

impl BlobHeads {
    async fn new(reg: &DockerRegistry) -> Self {
        let mut config = ClientConfig {
            protocol: if reg.ca().is_some() {
                oci_client::client::ClientProtocol::Https
            } else {
                oci_client::client::ClientProtocol::Http
            },
            ..ClientConfig::default()
        };
        if let Some(ca) = reg.ca() {
            config
                .extra_root_certificates
                .push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: ca.ca_pem().into_bytes(),
                });
        }
        let auth = match reg.credentials() {
            Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        Self {
            client: oci_client::Client::new(config),
            auth,
            host: reg.host().into(),
        }
    }

    async fn present(&self, repo: &str, digest: &str) -> bool {
        let r: oci_client::Reference = format!("{}/{repo}@{digest}", self.host).parse().unwrap();
        self.client
            .auth(&r, &self.auth, RegistryOperation::Pull)
            .await
            .unwrap();
        self.client.blob_exists(&r, digest).await.unwrap()
    }
}

fn host() -> String {
    Platform::host().to_string()
}

/// A platform other than the host's.
fn other() -> String {
    if host() == "linux/arm64" {
        "linux/amd64".into()
    } else {
        "linux/arm64".into()
    }
}

fn docker_list() -> Shape {
    Shape {
        format: Format::Docker,
        platforms: vec![host(), other()],
        layers: vec![LayerKind::Gzip, LayerKind::Uncompressed],
        layer_size: 4096,
        seed: 101,
        ..Shape::default()
    }
}

fn oci_index_with_attestations() -> Shape {
    Shape {
        platforms: vec![host(), other()],
        layers: vec![LayerKind::Gzip],
        layer_size: 4096,
        attestations: true,
        seed: 102,
        ..Shape::default()
    }
}

fn compressions() -> Shape {
    Shape {
        layers: vec![
            LayerKind::Zstd,
            LayerKind::Uncompressed,
            LayerKind::Empty,
            LayerKind::Gzip,
        ],
        layer_size: 3000,
        seed: 103,
        ..Shape::default()
    }
}

fn foreign(format: Format) -> Shape {
    Shape {
        format,
        layers: vec![LayerKind::Foreign, LayerKind::Gzip],
        layer_size: 2048,
        seed: 104 + format as u64,
        ..Shape::default()
    }
}

/// An image and an OCI 1.1 artifact referring to it, pushed as `src/NAME:t` (the artifact)
/// and `src/NAME:image` (its subject).
async fn push_artifact(env: &Env, name: &str) -> Layout {
    let image = build_shape(
        &env.path().join(format!("{name}-image")),
        "image",
        &Shape {
            seed: 107,
            ..Shape::default()
        },
    )
    .await
    .unwrap();
    push_layout(&image, &env.src, &format!("src/{name}:image"))
        .await
        .unwrap();
    let artifact = build_artifact(
        &env.path().join(name),
        "t",
        "application/vnd.example.sbom.v1+json",
        &image,
        1500,
        108,
    )
    .await
    .unwrap();
    push_layout(&artifact, &env.src, &format!("src/{name}:t"))
        .await
        .unwrap();
    artifact
}

#[tokio::test]
async fn shapes_on_a_plain_registry() {
    let env = Env::new("plain").await;
    let t = std::time::Instant::now();

    // A Docker manifest list: --all, the host's image, another platform, both platforms.
    let layout = env.push("list", &docker_list()).await;
    let all = env.check("list", "all", &Select::All).await;
    assert_eq!(all.manifests, 3);
    assert_eq!(all.blobs, 6, "two configs, four layers");
    let h = env.check("list", "host", &Select::Host).await;
    assert_eq!(h.manifests, 1);
    let one = env.check("list", "one", &Select::One(other())).await;
    assert_eq!(one.manifests, 1);
    let several = env
        .check("list", "several", &Select::Several(vec![other(), host()]))
        .await;
    assert_eq!(several.manifests, 3);
    let raw = |n: &str| {
        let n = n.to_string();
        let env = &env;
        async move { skopeo_raw(&env.dst, &n, env.path()).await.unwrap().1 }
    };
    assert_eq!(raw("ido/list-all:t").await, layout.digest);
    assert_eq!(raw("ido/list-several:t").await, layout.digest);
    let image = |p: &str| layout.images.iter().find(|(q, _)| q == p).unwrap().1.clone();
    assert_eq!(raw("ido/list-host:t").await, image(&host()));
    assert_eq!(raw("ido/list-one:t").await, image(&other()));

    // An OCI index with attestation manifests: all of it, or one platform's image.
    let layout = env.push("attested", &oci_index_with_attestations()).await;
    let all = env.check("attested", "all", &Select::All).await;
    assert_eq!(all.manifests, 5, "the index, two images, two attestations");
    assert_eq!(raw("ido/attested-all:t").await, layout.digest);
    env.check("attested", "host", &Select::Host).await;
    let one = env.check("attested", "one", &Select::One(other())).await;
    assert_eq!(one.manifests, 1);

    // One image in an index: --all keeps the index.
    let single = Shape {
        index: true,
        layers: vec![LayerKind::Gzip],
        seed: 109,
        platforms: vec![host()],
        ..Shape::default()
    };
    let layout = env.push("single-index", &single).await;
    let all = env.check("single-index", "all", &Select::All).await;
    assert_eq!(all.manifests, 2);
    assert_eq!(raw("ido/single-index-all:t").await, layout.digest);

    // zstd, uncompressed, zero-byte and gzip layers.
    env.push("compressions", &compressions()).await;
    let c = env.check("compressions", "host", &Select::Host).await;
    assert_eq!(c.blobs, 5, "the config and four layers");

    // 120 layers.
    let many = Shape {
        layers: vec![LayerKind::Gzip; 120],
        layer_size: 512,
        seed: 110,
        ..Shape::default()
    };
    env.push("many", &many).await;
    let m = env.check("many", "host", &Select::Host).await;
    assert_eq!(m.blobs, 121);

    // An OCI 1.1 artifact with `artifactType` and `subject`.
    push_artifact(&env, "artifact").await;
    let a = env.check("artifact", "host", &Select::Host).await;
    assert_eq!(a.blobs, 2, "the empty config and the layer");
    let (bytes, _) = skopeo_raw(&env.dst, "ido/artifact-host:t", env.path())
        .await
        .unwrap();
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(m["artifactType"], "application/vnd.example.sbom.v1+json");
    assert!(m["subject"]["digest"].is_string(), "{m}");

    eprintln!("plain: {:?}", t.elapsed());
}

#[tokio::test]
async fn shapes_on_an_htpasswd_tls_registry() {
    let env = Env::new("htpasswd+tls").await;
    let layout = env.push("list", &docker_list()).await;
    let all = env.check("list", "all", &Select::All).await;
    assert_eq!(all.manifests, 3);
    let one = env.check("list", "one", &Select::One(other())).await;
    assert_eq!(one.manifests, 1);
    assert_eq!(
        skopeo_raw(&env.dst, "ido/list-all:t", env.path())
            .await
            .unwrap()
            .1,
        layout.digest
    );
    env.push("compressions", &compressions()).await;
    env.check("compressions", "host", &Select::Host).await;
}

#[tokio::test]
async fn shapes_on_a_token_registry() {
    let env = Env::new("token").await;
    let layout = env.push("attested", &oci_index_with_attestations()).await;
    let all = env.check("attested", "all", &Select::All).await;
    assert_eq!(all.manifests, 5);
    assert_eq!(
        skopeo_raw(&env.dst, "ido/attested-all:t", env.path())
            .await
            .unwrap()
            .1,
        layout.digest
    );
    env.check("attested", "host", &Select::Host).await;
    push_artifact(&env, "artifact").await;
    env.check("artifact", "host", &Select::Host).await;
}

/// Foreign (Docker) and non-distributable (OCI) layers with `urls`: whatever skopeo does with
/// their bytes (1.9 does not copy them), ido does. docker-registry 2.8 refuses manifests with
/// `urls` ("invalid URL on layer", a 500) unless started with
/// `validation: {manifests: {urls: {allow: ['^https?://']}}}`, which the test kit's
/// registries are not.
#[tokio::test]
async fn foreign_layers() {
    for kind in ["plain", "htpasswd+tls", "token"] {
        let env = Env::new(kind).await;
        for (name, format) in [("foreign-docker", Format::Docker), ("foreign-oci", Format::Oci)] {
            env.push(name, &foreign(format)).await;
            let f = env.check(name, "host", &Select::Host).await;
            assert_eq!(f.foreign.len(), 1, "{kind}: {name}");
            assert_eq!(f.blobs, 2, "{kind}: {name}: the config and the gzip layer");
        }
    }
}

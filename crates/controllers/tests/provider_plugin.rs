//! A provider is a plug-in: the `files` provider below (a module of this test, nothing else)
//! declares its section of the configuration (`files:`) and how it is built from it; its
//! registration beside the built-in ones is all the configuration needs
//! (`Config::from_value_with`), and the unchanged controllers serve it through `ido run`'s
//! driver. Its section is decoded and checked like a built-in one (errors name the key
//! path), and it is built only when enabled. Its Releases (`files-x.y.z`) make NodeImages of
//! its id; the image controller reads its source format from it, uploads into each of its
//! configured locations (as a task), and removes the copies when the Release goes.

use std::{path::PathBuf, sync::Arc, time::Duration};

use ido_api::{NodeImage, NodeImageState, Release};
use ido_controllers::{
    Store,
    config::Config,
    file_store::FileStore,
    run::{Manifest, RunOptions, apply_desired, run},
};
use ido_io::s3::node_image_key;
use ido_providers::Registration;
use ido_testkit::seaweed::{PUBLIC_BUCKET, SeaweedFs};
use serde_json::{Value, json};

const IMAGE: &str = "flatcar-stable-4081.2.0-kube-1.32.3-tooling-1.24.0-gs";

/// The whole provider: it "imports" an image by streaming its qcow2 from S3 into a file per
/// location directory, marked as its own by a `.ido` file beside it. Its configuration:
///
/// ```yaml
/// files: {enabled: true, root: /var/lib/catalog, locations: [east, west]}
/// ```
mod files {
    use std::{path::PathBuf, sync::Arc};

    use futures::StreamExt;
    use ido_io::s3::S3Object;
    use ido_providers::{
        Bindings, Progress, Provider, ProviderConfig, ProviderError, Registration, SourceFormat, Template,
    };
    use serde::Deserialize;
    use tokio::io::AsyncWriteExt;

    /// The `files:` section.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct FilesConfig {
        #[serde(default)]
        pub enabled: bool,
        /// The catalog: a directory per location below it.
        #[serde(default)]
        pub root: PathBuf,
        #[serde(default)]
        pub locations: Vec<String>,
    }

    /// The `files:` section registered.
    pub const REGISTRATION: Registration = Registration::of::<FilesConfig>();

    impl ProviderConfig for FilesConfig {
        const SECTION: &'static str = "files";
        fn enabled(&self) -> bool {
            self.enabled
        }
        fn build(&self, _: &Bindings) -> Result<Arc<dyn Provider>, ProviderError> {
            if !self.root.is_absolute() {
                return Err(ProviderError::Config {
                    key: "files.root".into(),
                    message: format!("{:?} is not an absolute path", self.root),
                });
            }
            if self.locations.is_empty() {
                return Err(ProviderError::Config {
                    key: "files.locations".into(),
                    message: "at least one location is needed".into(),
                });
            }
            let mut locations = self.locations.clone();
            locations.sort();
            Ok(Arc::new(FilesProvider {
                root: self.root.clone(),
                locations,
            }))
        }
    }

    pub struct FilesProvider {
        root: PathBuf,
        locations: Vec<String>,
    }

    impl FilesProvider {
        fn path(&self, location: &str, image: &str) -> PathBuf {
            self.root.join(location).join(format!("{image}.qcow2"))
        }
        fn mark(&self, location: &str, image: &str) -> PathBuf {
            self.root.join(location).join(format!("{image}.ido"))
        }
    }

    fn io(e: std::io::Error) -> ProviderError {
        ProviderError::Transport(e.to_string())
    }

    #[async_trait::async_trait]
    impl Provider for FilesProvider {
        fn id(&self) -> &'static str {
            "capfiles"
        }
        fn release_prefix(&self) -> &'static str {
            "files"
        }
        fn format(&self) -> SourceFormat {
            SourceFormat::Qcow2
        }
        fn locations(&self) -> Vec<String> {
            self.locations.clone()
        }
        async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>, ProviderError> {
            let path = self.path(location, image);
            Ok(
                (path.exists() && self.mark(location, image).exists()).then(|| Template {
                    reference: format!("file:{}", path.display()),
                    path: path.display().to_string(),
                }),
            )
        }
        async fn create(
            &self,
            location: &str,
            image: &str,
            source: &S3Object,
            progress: &Progress,
        ) -> Result<Template, ProviderError> {
            tokio::fs::create_dir_all(self.root.join(location))
                .await
                .map_err(io)?;
            let path = self.path(location, image);
            let mut out = tokio::fs::File::create(&path).await.map_err(io)?;
            let mut body = source.get().await?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(io)?;
                out.write_all(&chunk).await.map_err(io)?;
                progress.add(chunk.len() as u64);
            }
            out.sync_all().await.map_err(io)?;
            tokio::fs::write(self.mark(location, image), b"ido")
                .await
                .map_err(io)?;
            Ok(self.exists(location, image).await?.expect("just made"))
        }
        async fn delete(&self, location: &str, image: &str) -> Result<(), ProviderError> {
            if self.mark(location, image).exists() {
                let _ = tokio::fs::remove_file(self.path(location, image)).await;
                tokio::fs::remove_file(self.mark(location, image))
                    .await
                    .map_err(io)?;
            }
            Ok(())
        }
    }
}

/// The built-in providers and `files`: the one line that registers it.
fn registrations() -> Vec<Registration> {
    [ido_providers::BUILT_IN, &[files::REGISTRATION]].concat()
}

fn config(v: Value) -> Result<Config, String> {
    Config::from_value_with(v, &registrations()).map_err(|e| e.to_string())
}

fn release(name: &str) -> Release {
    Release::with_components(
        name,
        &[
            ("flatcar", "4081.2.0"),
            ("kubernetes", "v1.32.3"),
            ("os-tooling", "1.24.0"),
        ],
    )
}

#[tokio::test]
async fn a_provider_module_and_its_registration_are_all_it_takes() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("n.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&qcow).unwrap();
    s3.put_object(
        PUBLIC_BUCKET,
        &node_image_key("capfiles", IMAGE, "qcow2"),
        qcow.as_path(),
    )
    .await
    .unwrap();

    let root: PathBuf = dir.path().join("catalog");
    let cfg = config(json!({
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
        "files": {"enabled": true, "root": root, "locations": ["west", "east"]},
    }))
    .unwrap();
    let store = FileStore::open(&dir.path().join("state")).unwrap();
    let ctx = Arc::new(cfg.context(store.clone()).unwrap());
    assert_eq!(ctx.providers.ids(), ["capfiles"]);
    let opts = RunOptions {
        timeout: Duration::from_secs(120),
        ..RunOptions::default()
    };

    apply_desired(&store, &[Manifest::Release(Box::new(release("files-32.0.0")))])
        .await
        .unwrap();
    let report = run(ctx.clone(), opts.clone()).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    let images = store.list::<NodeImage>().await.unwrap();
    assert_eq!(images.len(), 1);
    let st = images[0].status.as_ref().unwrap();
    assert_eq!(images[0].spec.provider, "capfiles");
    assert_eq!(st.state, NodeImageState::Available, "{}", report.table());
    assert_eq!(st.locations.len(), 2);
    for loc in ["east", "west"] {
        let copy = std::fs::read(root.join(loc).join(format!("{IMAGE}.qcow2"))).unwrap();
        assert_eq!(copy, bytes, "{loc} holds the image byte for byte");
        let l = st.locations.iter().find(|l| l.location == loc).unwrap();
        assert_eq!(l.bytes_transferred, bytes.len() as u64);
    }

    // Without the Release the image is unused, and with no retention period it goes, and
    // its copies with it.
    apply_desired(&store, &[]).await.unwrap();
    let report = run(ctx.clone(), opts).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    assert!(
        store.list::<NodeImage>().await.unwrap().is_empty(),
        "{}",
        report.table()
    );
    for loc in ["east", "west"] {
        assert!(!root.join(loc).join(format!("{IMAGE}.qcow2")).exists());
    }
}

#[test]
fn its_section_is_decoded_checked_and_built_by_its_registration() {
    // Unregistered, the section is a key the values do not have.
    let e = Config::from_value(json!({"files": {"enabled": true}}))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("files: invalid value") && e.contains("not a key"),
        "{e}"
    );

    // Registered, its decoding names the key path, as a built-in section's does.
    let e = config(json!({"files": {"enabled": true, "root": 7}})).unwrap_err();
    assert!(
        e.starts_with("files.root: invalid value \"7\": invalid type"),
        "{e}"
    );
    let e = config(json!({"files": {"locations": ["east", {"name": "west"}]}})).unwrap_err();
    assert!(e.starts_with("files.locations[1]: invalid value"), "{e}");
    let e = config(json!({"files": {"rooot": "/srv"}})).unwrap_err();
    assert!(
        e.starts_with("files") && e.contains("unknown field `rooot`"),
        "{e}"
    );
    let e = config(json!({"files": ["east"]})).unwrap_err();
    assert!(e.starts_with("files: expected object, got array"), "{e}");
    // The chart's keys are still checked.
    let e = config(json!({"files": {}, "vsphere": {"enabeld": true}})).unwrap_err();
    assert!(e.starts_with("vsphere.enabeld: invalid value"), "{e}");

    // Its build validates it, errors naming the key; only an enabled section is built.
    let cfg = config(json!({"files": {"enabled": true, "root": "/srv/catalog"}})).unwrap();
    let e = cfg.providers().err().unwrap().to_string();
    assert_eq!(e, "files.locations: at least one location is needed");
    let cfg = config(json!({"files": {"root": "/srv/catalog", "locations": ["east"]}})).unwrap();
    assert!(cfg.providers().unwrap().is_empty());
    let section = cfg.providers.get::<files::FilesConfig>().unwrap();
    assert_eq!(section.locations, ["east"]);
    assert!(
        config(json!({"files": null}))
            .unwrap()
            .providers()
            .unwrap()
            .is_empty()
    );

    // Beside the built-in sections, which keep working as before.
    let cfg = config(json!({
        "files": {"enabled": true, "root": "/srv/catalog", "locations": ["east"]},
        "kubevirt": {"enabled": true, "locations": {"vms": {"namespace": "vm-images"}}},
    }))
    .unwrap();
    assert_eq!(cfg.providers().unwrap().ids(), ["capfiles", "capk"]);
    assert!(
        cfg.settings().unwrap().disk_import.enabled,
        "kubevirt's DiskImports"
    );
}

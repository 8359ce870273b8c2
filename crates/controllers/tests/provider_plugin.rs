//! A provider is a plug-in: the `files` provider below (a module of this test, nothing else)
//! is registered with `Providers::insert`, and the unchanged controllers serve it through
//! `ido run`'s driver. Its Releases (`files-x.y.z`) make NodeImages of its id; the image
//! controller reads its source format from it, uploads into each of its locations (as a
//! task), and removes the copies when the Release goes.

use std::{path::PathBuf, sync::Arc, time::Duration};

use ido_api::{NodeImage, NodeImageState, Release};
use ido_controllers::{
    Store,
    config::Config,
    file_store::FileStore,
    run::{Manifest, RunOptions, apply_desired, run},
};
use ido_io::s3::node_image_key;
use ido_testkit::seaweed::{PUBLIC_BUCKET, SeaweedFs};
use serde_json::json;

const IMAGE: &str = "flatcar-stable-4081.2.0-kube-1.32.3-tooling-1.24.0-gs";

/// The whole provider: it "imports" an image by streaming its qcow2 from S3 into a file per
/// location directory, marked as its own by a `.ido` file beside it.
mod files {
    use std::path::PathBuf;

    use futures::StreamExt;
    use ido_io::s3::S3Object;
    use ido_providers::{Progress, Provider, ProviderError, SourceFormat, Template};
    use tokio::io::AsyncWriteExt;

    pub struct FilesProvider {
        pub root: PathBuf,
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
            vec!["east".into(), "west".into()]
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

    let cfg = Config::from_value(json!({
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
    }))
    .unwrap();
    let store = FileStore::open(&dir.path().join("state")).unwrap();
    let mut ctx = cfg.context(store.clone()).unwrap();
    let root: PathBuf = dir.path().join("catalog");
    // The registration.
    ctx.providers
        .insert(Arc::new(files::FilesProvider { root: root.clone() }));
    let ctx = Arc::new(ctx);
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

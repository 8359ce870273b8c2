//! The reconciler over a file store and an in-memory provider: what it writes for specs
//! it cannot work on, and how a deletion removes the templates and lets go.

use std::sync::Mutex as StdMutex;

use ido_api::{LocationState, NodeImageSpec};
use ido_io::s3::S3Object;
use ido_providers::{Providers, SourceFormat, Template};

use super::*;
use crate::{Settings, file_store::FileStore};

/// Templates in memory; deletions recorded; `fail_delete` makes deletions fail; with
/// `hang_uploads` an upload never ends (it counts its starts, and its drops in `dropped`).
#[derive(Default)]
struct Mem {
    deleted: StdMutex<Vec<(String, String)>>,
    fail_delete: bool,
    hang_uploads: bool,
    started: std::sync::atomic::AtomicUsize,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a drop of the upload holding it.
struct Abandoned(Arc<std::sync::atomic::AtomicUsize>);
impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Provider for Mem {
    fn id(&self) -> &'static str {
        "capv"
    }
    fn release_prefix(&self) -> &'static str {
        "vsphere"
    }
    fn format(&self) -> SourceFormat {
        SourceFormat::Ova
    }
    fn locations(&self) -> Vec<String> {
        vec!["a".into(), "b".into()]
    }
    async fn exists(&self, _: &str, _: &str) -> Result<Option<Template>, ProviderError> {
        Ok(None)
    }
    async fn create(&self, _: &str, _: &str, _: &S3Object, _: &Progress) -> Result<Template, ProviderError> {
        if self.hang_uploads {
            let _guard = Abandoned(self.dropped.clone());
            self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Err(ProviderError::Transport("not in this test".into()))
    }
    async fn delete(&self, location: &str, image: &str) -> Result<(), ProviderError> {
        if self.fail_delete {
            return Err(ProviderError::Transport(format!("{location} is down")));
        }
        self.deleted.lock().unwrap().push((location.into(), image.into()));
        Ok(())
    }
}

fn context(dir: &std::path::Path, provider: Option<Arc<Mem>>) -> Arc<Context<FileStore>> {
    let mut providers = Providers::default();
    if let Some(p) = provider {
        providers.insert(p);
    }
    Arc::new(Context {
        providers,
        ..Context::new(FileStore::open(dir).unwrap(), Settings::default())
    })
}

async fn stored(ctx: &Context<FileStore>, spec_name: &str, provider: &str, releases: &[&str]) -> NodeImage {
    let mut ni = NodeImage::new(
        "img",
        NodeImageSpec {
            name: spec_name.into(),
            provider: provider.into(),
        },
    );
    ni.metadata.namespace = Some(ctx.settings.namespace.clone());
    let ni = ctx.store.create(&ni).await.unwrap();
    modify_status(&ctx.store, &ni, |n: &mut NodeImage| {
        n.status.get_or_insert_with(Default::default).releases =
            releases.iter().map(|r| r.to_string()).collect();
    })
    .await
    .unwrap()
    .unwrap()
}

async fn get(ctx: &Context<FileStore>) -> NodeImage {
    ctx.store
        .get::<NodeImage>(Some(&ctx.settings.namespace), "img")
        .await
        .unwrap()
        .unwrap()
}

fn ready(ni: &NodeImage) -> (NodeImageState, String, String) {
    let st = ni.status.as_ref().unwrap();
    let c = ido_api::condition::find(&st.conditions, conditions::READY).unwrap();
    (st.state, c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_name_that_could_leave_a_path_is_invalid_and_nothing_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(Mem::default());
    let ctx = context(dir.path(), Some(mem.clone()));
    let ni = stored(&ctx, "../../etc", "capv", &["vsphere-1.0.0"]).await;
    assert_eq!(reconcile(&ni, &ctx).await.unwrap(), Action::AwaitChange);
    let ni = get(&ctx).await;
    let (state, reason, message) = ready(&ni);
    assert_eq!((state, reason.as_str()), (NodeImageState::Error, "InvalidSpec"));
    assert!(
        message.contains("spec.name") && message.contains("../../etc"),
        "{message}"
    );
    assert!(
        !has_finalizer(&ni, nodeimage::FINALIZER),
        "nothing to clean up later"
    );
}

#[tokio::test]
async fn a_provider_not_enabled_is_named_with_the_enabled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), Some(Arc::new(Mem::default())));
    let ni = stored(&ctx, "flatcar-x", "capz", &["azure-1.0.0"]).await;
    reconcile(&ni, &ctx).await.unwrap();
    let (state, reason, message) = ready(&get(&ctx).await);
    assert_eq!(
        (state, reason.as_str()),
        (NodeImageState::Error, "ProviderNotEnabled")
    );
    assert!(
        message.contains("\"capz\"") && message.contains("capv"),
        "{message}"
    );
}

#[tokio::test]
async fn without_a_source_the_image_says_so_and_keeps_its_finalizer() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), Some(Arc::new(Mem::default())));
    let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
    reconcile(&ni, &ctx).await.unwrap();
    let ni = get(&ctx).await;
    assert_eq!(ready(&ni).1, "NoSource");
    assert!(has_finalizer(&ni, nodeimage::FINALIZER), "taken before any work");
}

#[tokio::test]
async fn deletion_removes_the_template_everywhere_then_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(Mem::default());
    let ctx = context(dir.path(), Some(mem.clone()));
    let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
    reconcile(&ni, &ctx).await.unwrap(); // takes the finalizer
    ctx.store.delete(&get(&ctx).await).await.unwrap();
    let deleting = get(&ctx).await;
    assert!(
        deleting.metadata.deletion_timestamp.is_some(),
        "held by the finalizer"
    );
    reconcile(&deleting, &ctx).await.unwrap();
    let mut deleted = mem.deleted.lock().unwrap().clone();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            ("a".to_string(), "flatcar-x".to_string()),
            ("b".into(), "flatcar-x".into())
        ]
    );
    assert!(
        ctx.store
            .get::<NodeImage>(Some(&ctx.settings.namespace), "img")
            .await
            .unwrap()
            .is_none(),
        "the finalizer went, and the object with it"
    );
}

#[tokio::test]
async fn a_failed_deletion_keeps_the_finalizer_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(Mem {
        fail_delete: true,
        ..Mem::default()
    });
    let ctx = context(dir.path(), Some(mem));
    let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
    reconcile(&ni, &ctx).await.unwrap();
    ctx.store.delete(&get(&ctx).await).await.unwrap();
    let _ = reconcile(&get(&ctx).await, &ctx).await;
    let ni = get(&ctx).await;
    assert!(has_finalizer(&ni, nodeimage::FINALIZER));
    let st = ni.status.unwrap();
    assert_eq!(st.state, NodeImageState::Error);
    assert!(
        st.locations
            .iter()
            .all(|l| l.state == LocationState::Error && l.message.contains("is down")),
        "{:?}",
        st.locations
    );
}

/// An S3 endpoint that has every object: it answers every request `200` with a few bytes.
async fn s3_with_everything() -> ido_io::s3::S3Source {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\netag: \"e\"\r\n\r\n";
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    ido_testkit::install_crypto_provider();
    let client = ido_io::http::client(&Default::default(), "s3.caBundle").unwrap();
    let loc = ido_io::s3::S3Location {
        bucket: "images".into(),
        region: String::new(),
        endpoint: Some(endpoint),
        http: false,
        credentials: None,
    };
    ido_io::s3::S3Source::new(&loc, client).unwrap()
}

/// The uploads run as a task, so the reconcile returns while they run; deleting the image
/// then stops them (dropped, so they clean up after themselves) instead of waiting for them,
/// and the templates are removed as usual.
#[tokio::test]
async fn deletion_stops_a_running_upload_instead_of_waiting_for_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(Mem {
        hang_uploads: true,
        ..Mem::default()
    });
    let mut ctx = context(dir.path(), Some(mem.clone()));
    Arc::get_mut(&mut ctx).unwrap().source = Some(s3_with_everything().await);
    let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
    let quick = std::time::Duration::from_secs(5);
    tokio::time::timeout(quick, reconcile(&ni, &ctx))
        .await
        .expect("the reconcile returns while the uploads run")
        .unwrap();
    let key = TaskKey::of(&ni);
    assert!(ctx.tasks.occupied(&key));
    // Both locations' uploads start (and hang).
    tokio::time::timeout(quick, async {
        while mem.started.load(SeqCst) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both uploads started");
    tokio::time::timeout(quick, reconcile(&get(&ctx).await, &ctx))
        .await
        .expect("a reconcile while the uploads run returns at once")
        .unwrap();
    assert_eq!(mem.started.load(SeqCst), 2, "no second round while one runs");

    ctx.store.delete(&get(&ctx).await).await.unwrap();
    tokio::time::timeout(quick, reconcile(&get(&ctx).await, &ctx))
        .await
        .expect("the deletion does not wait for the uploads")
        .unwrap();
    assert_eq!(mem.dropped.load(SeqCst), 2, "both uploads were stopped");
    assert!(!ctx.tasks.occupied(&key));
    assert_eq!(mem.deleted.lock().unwrap().len(), 2, "templates removed");
    assert!(
        ctx.store
            .get::<NodeImage>(Some(&ctx.settings.namespace), "img")
            .await
            .unwrap()
            .is_none()
    );
}

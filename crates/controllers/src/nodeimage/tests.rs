//! The reconciler over a file store and an in-memory provider: what it writes for specs
//! it cannot work on, and how a deletion removes the templates and lets go.

use std::sync::Mutex as StdMutex;

use ido_api::{LocationState, NodeImageSpec};
use ido_engine::s3::S3Object;
use ido_providers::{Providers, SourceFormat, Template};

use super::*;
use crate::{Settings, file_store::FileStore, metrics::Metrics};

/// Templates in memory; deletions recorded; `fail_delete` makes deletions fail.
#[derive(Default)]
struct Mem {
    deleted: StdMutex<Vec<(String, String)>>,
    fail_delete: bool,
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

fn context(dir: &std::path::Path, provider: Option<Arc<Mem>>) -> Context<FileStore> {
    let mut providers = Providers::default();
    if let Some(p) = provider {
        providers.insert(p);
    }
    Context {
        store: FileStore::open(dir).unwrap(),
        providers,
        source: None,
        settings: Settings::default(),
        metrics: Metrics::default(),
        seen_releases: Default::default(),
    }
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

use ido_api::{NodeImage, NodeImageSpec, Release};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn names_that_leave_the_state_directory_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = FileStore::open(&state).unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("config.json"), "keep").unwrap();

    for name in ["vsphere-49.0.0/../../victim/config", "..", "a/b", "Upper", ""] {
        let e = store
            .create(&Release::with_components(name, &[]))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{name:?}: {e}");
        assert!(e.to_string().starts_with("Release"), "{e}");
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }
    for ns in ["../../victim", "a.b", "x/y"] {
        let ni = NodeImage {
            metadata: ObjectMeta {
                name: Some("ok".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: NodeImageSpec {
                name: "img".into(),
                provider: "capv".into(),
            },
            status: None,
        };
        let e = store.create(&ni).await.unwrap_err();
        assert!(e.to_string().contains("metadata.namespace"), "{ns:?}: {e}");
        assert!(store.get::<NodeImage>(Some(ns), "ok").await.unwrap().is_none());
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("config.json")).unwrap(),
        "keep"
    );
    assert_eq!(files_under(dir.path()), vec![victim.join("config.json")]);

    // A key that did not come through create (e.g. a name in a delete) cannot reach a path.
    let key = Key::named::<Release>(None, "../../victim/config");
    assert!(key.path(&state).is_err());
}

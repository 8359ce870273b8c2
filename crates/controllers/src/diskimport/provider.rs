//! The DiskImports of the kubevirt provider, over a [`Store`].

use std::sync::Arc;

use async_trait::async_trait;
use ido_api::{DiskImport, DiskSource};
use ido_providers::{ProviderError, kubevirt::DiskImports};
use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim};

use super::{job_name, owned_by};
use crate::store::{Store, StoreError};

/// [`DiskImports`] over a [`Store`]: what the kubevirt provider uses.
pub struct StoreDiskImports<S: Store>(pub S);

fn provider_err(e: StoreError) -> ProviderError {
    match e {
        StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } | StoreError::Invalid(_) => {
            ProviderError::api(e)
        }
        StoreError::Conflict { .. }
        | StoreError::Api { .. }
        | StoreError::Io { .. }
        | StoreError::Busy { .. }
        | StoreError::Encoding { .. } => ProviderError::Transport(e.to_string()),
    }
}

#[async_trait]
impl<S: Store> DiskImports for StoreDiskImports<S> {
    async fn get(&self, namespace: &str, name: &str) -> ido_providers::Result<Option<DiskImport>> {
        self.0.get(Some(namespace), name).await.map_err(provider_err)
    }

    async fn create(&self, di: &DiskImport) -> ido_providers::Result<DiskImport> {
        match self.0.create(di).await {
            Err(StoreError::AlreadyExists { .. }) => {
                let m = &di.metadata;
                self.0
                    .get(m.namespace.as_deref(), m.name.as_deref().unwrap_or_default())
                    .await
                    .map_err(provider_err)?
                    .ok_or_else(|| ProviderError::Transport("DiskImport vanished while created".into()))
            }
            r => r.map_err(provider_err),
        }
    }

    async fn delete(&self, namespace: &str, name: &str) -> ido_providers::Result<()> {
        let Some(di) = self
            .0
            .get::<DiskImport>(Some(namespace), name)
            .await
            .map_err(provider_err)?
        else {
            return Ok(());
        };
        self.0.delete(&di).await.map_err(provider_err)?;
        // The garbage collector removes these too; deleting them here does not depend on it.
        if let Some(j) = self
            .0
            .get::<Job>(Some(namespace), &job_name(&di))
            .await
            .map_err(provider_err)?
            && owned_by(&j.metadata, &di)
        {
            self.0.delete(&j).await.map_err(provider_err)?;
        }
        if let Some(c) = self
            .0
            .get::<PersistentVolumeClaim>(Some(namespace), name)
            .await
            .map_err(provider_err)?
            && owned_by(&c.metadata, &di)
        {
            self.0.delete(&c).await.map_err(provider_err)?;
        }
        Ok(())
    }

    async fn get_disk_source(
        &self,
        namespace: &str,
        name: &str,
    ) -> ido_providers::Result<Option<DiskSource>> {
        self.0.get(Some(namespace), name).await.map_err(provider_err)
    }

    async fn put_disk_source(&self, ds: &DiskSource) -> ido_providers::Result<()> {
        if ds.metadata.resource_version.is_some() {
            self.0.replace(ds).await.map_err(provider_err)?;
        } else {
            self.0.create(ds).await.map_err(provider_err)?;
        }
        Ok(())
    }
}

impl<S: Store> StoreDiskImports<S> {
    /// The store as the providers' [`DiskImports`].
    pub fn shared(store: S) -> Arc<dyn DiskImports> {
        Arc::new(Self(store))
    }
}

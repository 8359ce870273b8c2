//! Resolving a location's names to inventory objects.

use super::{
    VsphereLocation,
    client::{Client, PropertyQuery},
    import::Target,
    xml::MoRef,
};
use crate::{ProviderError, Result};

/// Kinds a network reference may have.
const NETWORK_KINDS: &[&str] = &["Network", "DistributedVirtualPortgroup", "OpaqueNetwork"];

/// Resolves datacenter, datastore, cluster, pool, folder, network and host of `loc`.
pub async fn resolve(client: &Client, name: &str, loc: &VsphereLocation) -> Result<Target> {
    let key = |field: &str| format!("vsphere.locations.{name}.{field}");
    let dc_path = loc.datacenter_path();
    let dc = find(
        client,
        &key("datacenter"),
        &loc.datacenter,
        std::slice::from_ref(&dc_path),
        &["Datacenter"],
    )
    .await?;
    let ds_path = under(&format!("{dc_path}/datastore"), &loc.datastore);
    let datastore = find(
        client,
        &key("datastore"),
        &loc.datastore,
        &[ds_path],
        &["Datastore"],
    )
    .await?;
    let cluster_path = under(&format!("{dc_path}/host"), &loc.cluster);
    let cluster = find(
        client,
        &key("cluster"),
        &loc.cluster,
        std::slice::from_ref(&cluster_path),
        &["ClusterComputeResource", "ComputeResource"],
    )
    .await?;

    let pool_paths = pool_paths(loc, &cluster_path);
    let rp_value = loc.resourcepool.clone().unwrap_or_default();
    let pool = find(
        client,
        &key("resourcepool"),
        &rp_value,
        &pool_paths,
        &["ResourcePool", "VirtualApp"],
    )
    .await?;

    let folder_path = loc.folder_path();
    let folder = find(
        client,
        &key("folder"),
        &loc.folder,
        std::slice::from_ref(&folder_path),
        &["Folder"],
    )
    .await?;

    let network = network(client, &key("network"), loc, &dc_path, &dc).await?;
    let host = host(client, &key("host"), loc, &cluster_path, &cluster).await?;
    Ok(Target {
        pool,
        datastore,
        folder,
        folder_path,
        host: Some(host),
        network,
        suffix: loc
            .imagesuffix
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// Where the resource pool may be: the cluster's root pool when none is set; an absolute
/// inventory path as it is; else under the cluster's root pool, or under the cluster.
fn pool_paths(loc: &VsphereLocation, cluster_path: &str) -> Vec<String> {
    match loc
        .resourcepool
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => vec![format!("{cluster_path}/Resources")],
        Some(rp) if rp.starts_with('/') => vec![under("", rp)],
        Some(rp) => {
            let rp = rp.trim_matches('/');
            vec![
                format!("{cluster_path}/Resources/{rp}"),
                format!("{cluster_path}/{rp}"),
            ]
        }
    }
}

/// The network set (`key`), else the datacenter's first one.
async fn network(
    client: &Client,
    key: &str,
    loc: &VsphereLocation,
    dc_path: &str,
    dc: &MoRef,
) -> Result<MoRef> {
    match loc.network.as_deref() {
        Some(n) => {
            let path = under(&format!("{dc_path}/network"), n);
            find(client, key, n, &[path], NETWORK_KINDS).await
        }
        None => first_network(client, dc)
            .await?
            .ok_or_else(|| ProviderError::Config {
                key: key.to_string(),
                message: format!(
                    "not set, and datacenter {:?} has no network to default to",
                    loc.datacenter
                ),
            }),
    }
}

/// The host set (`key`) in the cluster, else the cluster's first usable one.
async fn host(
    client: &Client,
    key: &str,
    loc: &VsphereLocation,
    cluster_path: &str,
    cluster: &MoRef,
) -> Result<MoRef> {
    match loc.host.as_deref() {
        Some(h) => {
            let path = format!("{cluster_path}/{}", h.trim_matches('/'));
            find(client, key, h, &[path], &["HostSystem"]).await
        }
        None => first_usable_host(client, cluster).await?.ok_or_else(|| {
            ProviderError::api(super::VsphereError::NoUsableHost {
                cluster: cluster_path.to_string(),
            })
        }),
    }
}

/// `rel` under `base`, or `rel` itself when it is an absolute inventory path.
fn under(base: &str, rel: &str) -> String {
    let rel = rel.trim();
    if rel.starts_with('/') || base.is_empty() {
        format!("/{}", rel.trim_matches('/'))
    } else {
        format!("{base}/{}", rel.trim_matches('/'))
    }
}

/// The first of `paths` that exists, which must be one of `kinds`; else a config error
/// naming `key`, `value` and the paths tried.
async fn find(client: &Client, key: &str, value: &str, paths: &[String], kinds: &[&str]) -> Result<MoRef> {
    for path in paths {
        if let Some(obj) = client.find_by_inventory_path(path).await? {
            if kinds.contains(&obj.kind.as_str()) {
                return Ok(obj);
            }
            return Err(ProviderError::Config {
                key: key.into(),
                message: format!(
                    "{value:?}: {path} is a {}, expected {}",
                    obj.kind,
                    kinds.join(" or ")
                ),
            });
        }
    }
    Err(ProviderError::Config {
        key: key.into(),
        message: format!("{value:?} not found (inventory path {})", paths.join(" or ")),
    })
}

async fn first_network(client: &Client, dc: &MoRef) -> Result<Option<MoRef>> {
    let q = PropertyQuery {
        obj: dc,
        kind: "Network",
        paths: &["name"],
        traverse: Some(("Datacenter", "network")),
    };
    let objects = client.retrieve_properties(q).await?;
    Ok(objects
        .into_iter()
        .filter_map(|o| o.obj)
        .find(|o| NETWORK_KINDS.contains(&o.kind.as_str())))
}

async fn first_usable_host(client: &Client, cluster: &MoRef) -> Result<Option<MoRef>> {
    let q = PropertyQuery {
        obj: cluster,
        kind: "HostSystem",
        paths: &[
            "name",
            "runtime.connectionState",
            "runtime.inMaintenanceMode",
            "runtime.powerState",
        ],
        traverse: Some(("ComputeResource", "host")),
    };
    let hosts = client.retrieve_properties(q).await?;
    Ok(hosts
        .into_iter()
        .find(|h| {
            h.text("runtime.connectionState") == Some("connected")
                && h.bool("runtime.inMaintenanceMode") != Some(true)
                && h.text("runtime.powerState") == Some("poweredOn")
        })
        .and_then(|h| h.obj))
}

#[cfg(test)]
mod tests {
    use super::under;

    #[test]
    fn relative_and_absolute_paths() {
        assert_eq!(under("/DC0/datastore", "LocalDS_0"), "/DC0/datastore/LocalDS_0");
        assert_eq!(under("/DC0/datastore", "/DC1/datastore/x/"), "/DC1/datastore/x");
        assert_eq!(under("/DC0/network", "VM Network"), "/DC0/network/VM Network");
    }
}

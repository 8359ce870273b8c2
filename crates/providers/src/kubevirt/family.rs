//! Node-image families: one DiskSource per family and location, pointed at the newest image.
//!
//! A node image `flatcar-<channel>-<flatcar>-kube-<k8s>-tooling-<tooling>-gs` belongs to the
//! family `kubevirt-flatcar-<channel>-kube-<k8s major.minor>`: the release prefix, the OS and
//! channel, and the Kubernetes minor version (a cluster's nodes must not move to another
//! Kubernetes minor because a newer image of it exists). Within a family, newer is the
//! higher Kubernetes version, then Flatcar version, then tooling version. Names of any other
//! shape have no family.

use std::cmp::Ordering;

/// The parts of a node image's name that order it within its family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeImageName {
    /// `kubevirt-flatcar-stable-kube-1.30`.
    pub family: String,
    kube: Vec<u64>,
    flatcar: Vec<u64>,
    tooling: Vec<u64>,
}

fn numbers(v: &str) -> Option<Vec<u64>> {
    let n: Option<Vec<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
    n.filter(|n| !n.is_empty())
}

impl NodeImageName {
    /// Parses `image` (the release controller's node image name) for a `prefix` release.
    pub fn parse(prefix: &str, image: &str) -> Option<Self> {
        let rest = image.strip_suffix("-gs")?;
        let (os_flatcar, rest) = rest.split_once("-kube-")?;
        let (kube, tooling) = rest.split_once("-tooling-")?;
        let (os, flatcar) = os_flatcar.rsplit_once('-')?;
        let kube = numbers(kube)?;
        let minor = kube
            .iter()
            .take(2)
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".");
        Some(Self {
            family: format!("{prefix}-{os}-kube-{minor}"),
            flatcar: numbers(flatcar)?,
            tooling: numbers(tooling)?,
            kube,
        })
    }

    /// Orders two images of one family (newer is greater).
    pub fn newer(&self, other: &Self) -> Ordering {
        (&self.kube, &self.flatcar, &self.tooling).cmp(&(&other.kube, &other.flatcar, &other.tooling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_order() {
        let a = NodeImageName::parse(
            "kubevirt",
            "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs",
        )
        .unwrap();
        assert_eq!(a.family, "kubevirt-flatcar-stable-kube-1.30");
        let b = NodeImageName::parse(
            "kubevirt",
            "flatcar-stable-4081.2.0-kube-1.30.4-tooling-1.18.1-gs",
        )
        .unwrap();
        assert_eq!(b.family, a.family);
        assert_eq!(b.newer(&a), Ordering::Greater);
        let c = NodeImageName::parse(
            "kubevirt",
            "flatcar-stable-3975.2.0-kube-1.30.10-tooling-1.2.0-gs",
        )
        .unwrap();
        assert_eq!(c.newer(&b), Ordering::Greater, "Kubernetes first, numerically");
        let other =
            NodeImageName::parse("kubevirt", "flatcar-beta-3975.2.0-kube-1.31.0-tooling-1.18.1-gs").unwrap();
        assert_eq!(other.family, "kubevirt-flatcar-beta-kube-1.31");
        for bad in [
            "golden",
            "flatcar-stable-x-kube-1.30.4-tooling-1-gs",
            "flatcar-stable-1-kube-1.30-tooling-1",
        ] {
            assert_eq!(NodeImageName::parse("kubevirt", bad), None, "{bad}");
        }
    }
}

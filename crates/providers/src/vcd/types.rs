//! The VCD objects this provider reads (catalogs, vApp templates, files, tasks), parsed
//! from their XML, and the small helpers for hrefs and filter values.

use super::error::{VcdError, error_of};
use ido_io::xml::Node;

/// A catalog, resolved: where to upload and which org owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    /// `…/api/catalog/<uuid>`.
    pub href: String,
    /// Catalog name.
    pub name: String,
    /// Organization name.
    pub org: String,
    /// The `add` link taking `UploadVAppTemplateParams`.
    pub upload_href: String,
    /// The org's href (the `up` link), to tell apart same-named catalogs of other orgs.
    pub org_href: Option<String>,
}

/// One `VAppTemplateRecord` of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateRecord {
    /// `…/api/vAppTemplate/vappTemplate-<uuid>`.
    pub href: String,
    /// Template name.
    pub name: String,
    /// The record's status, e.g. `RESOLVED`, `FAILED_CREATION`.
    pub status: String,
}

/// A vApp template entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// `…/api/vAppTemplate/vappTemplate-<uuid>`.
    pub href: String,
    /// `urn:vcloud:vapptemplate:<uuid>`.
    pub id: String,
    /// Template name.
    pub name: String,
    /// -1 failed, 0 not (yet) complete, ≥ 1 usable (8 after an upload).
    pub status: i32,
    /// Its tasks (the running upload among them).
    pub tasks: Vec<Task>,
    /// Files of an upload in progress.
    pub files: Vec<File>,
    /// Its catalog item (the `catalogItem` link).
    pub catalog_item_href: Option<String>,
    /// The owner's user name (`Owner/User@name`), if shown.
    pub owner: Option<String>,
}

impl Template {
    /// The first task of `operation_name`.
    pub fn task(&self, operation_name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.operation_name == operation_name)
    }

    /// The failure message of a failed template (its task's error), if it failed.
    pub fn failure(&self) -> Option<String> {
        if let Some(t) = self.tasks.iter().find(|t| t.status.is_failed()) {
            return Some(
                t.error
                    .clone()
                    .unwrap_or_else(|| format!("task {}", t.status.as_str())),
            );
        }
        (self.status < 0).then(|| format!("template status {}", self.status))
    }
}

/// A `File` of a template upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Name (the OVF's `ovf:href`, or `descriptor.ovf`).
    pub name: String,
    /// Expected size; -1 when unknown.
    pub size: i64,
    /// Bytes received so far.
    pub transferred: i64,
    /// The `upload:default` link.
    pub upload_href: Option<String>,
}

/// Status of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    /// `queued`, `preRunning`, `running` or `postRunning`.
    Running(String),
    /// `success`.
    Success,
    /// `error`.
    Error,
    /// `aborted`.
    Aborted,
}

impl TaskStatus {
    fn parse(s: &str) -> Self {
        match s {
            "success" => Self::Success,
            "error" => Self::Error,
            "aborted" | "canceled" => Self::Aborted,
            other => Self::Running(other.to_string()),
        }
    }
    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Running(s) => s,
            Self::Success => "success",
            Self::Error => "error",
            Self::Aborted => "aborted",
        }
    }
    /// Whether the task ended (in any way).
    pub fn is_done(&self) -> bool {
        !matches!(self, Self::Running(_))
    }
    /// `error` or `aborted`.
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Error | Self::Aborted)
    }
}

/// A task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// `…/api/task/<uuid>`.
    pub href: String,
    /// e.g. `vdcUploadOvfContents`, `vdcDeleteTemplate`.
    pub operation_name: String,
    /// Current status.
    pub status: TaskStatus,
    /// The `<Error message>` of a failed task.
    pub error: Option<String>,
    /// Name of the object it works on.
    pub owner: String,
    /// The `task:cancel` link.
    pub cancel_href: Option<String>,
}

impl Task {
    /// Reads a `<Task>` element.
    pub fn from_node(n: &Node) -> Option<Self> {
        let link = n
            .children_named("Link")
            .find(|l| l.attr("rel") == Some("task:cancel"))
            .and_then(|l| l.attr("href"));
        Some(Self {
            href: n.attr("href")?.to_string(),
            operation_name: n.attr("operationName").unwrap_or_default().to_string(),
            status: TaskStatus::parse(n.attr("status").unwrap_or_default()),
            error: error_of(n).map(|(code, m)| format!("{code}: {m}")),
            owner: n
                .child("Owner")
                .and_then(|o| o.attr("name"))
                .unwrap_or_default()
                .to_string(),
            cancel_href: link.map(str::to_string),
        })
    }
}

impl Template {
    /// Reads a `<VAppTemplate>` element.
    pub fn from_node(n: &Node, what: &str) -> Result<Self, VcdError> {
        if n.name != "VAppTemplate" {
            return Err(VcdError::protocol(
                what,
                format!("<{}> is not a VAppTemplate", n.name),
            ));
        }
        let attr = |a: &str| n.attr(a).unwrap_or_default().to_string();
        let tasks = n
            .child("Tasks")
            .map(|t| t.children_named("Task").filter_map(Task::from_node).collect())
            .unwrap_or_default();
        let files = n
            .child("Files")
            .map(|f| {
                f.children_named("File")
                    .map(|f| File {
                        name: f.attr("name").unwrap_or_default().to_string(),
                        size: f.attr("size").and_then(|s| s.parse().ok()).unwrap_or(-1),
                        transferred: f
                            .attr("bytesTransferred")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        upload_href: f
                            .children_named("Link")
                            .find(|l| l.attr("rel") == Some("upload:default"))
                            .and_then(|l| l.attr("href"))
                            .map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let catalog_item_href = n
            .children_named("Link")
            .find(|l| l.attr("rel") == Some("catalogItem"))
            .and_then(|l| l.attr("href"))
            .map(str::to_string);
        let owner = n
            .at("Owner/User")
            .and_then(|u| u.attr("name"))
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        Ok(Self {
            href: attr("href"),
            id: attr("id"),
            name: attr("name"),
            status: n.attr("status").and_then(|s| s.parse().ok()).unwrap_or(0),
            tasks,
            files,
            catalog_item_href,
            owner,
        })
    }
}

/// The last path segment of an href (the uuid that identifies it under any API prefix).
pub fn id_of(href: &str) -> &str {
    href.trim_end_matches('/').rsplit('/').next().unwrap_or(href)
}

/// Percent-encodes a filter value (everything but RFC 3986 unreserved characters).
pub use ido_io::http::encode_unreserved as encode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_encoded() {
        assert_eq!(encode("node images;x==y,z"), "node%20images%3Bx%3D%3Dy%2Cz");
        assert_eq!(encode("flatcar-1.2_3~"), "flatcar-1.2_3~");
        assert_eq!(id_of("https://v/api/admin/org/abc/"), "abc");
    }

    #[test]
    fn templates_and_tasks_are_read() {
        let xml = r#"<VAppTemplate xmlns="http://www.vmware.com/vcloud/v1.5" href="https://v/api/vAppTemplate/vappTemplate-1" id="urn:vcloud:vapptemplate:1" name="img" status="-1" ovfDescriptorUploaded="true">
  <Link rel="catalogItem" type="application/vnd.vmware.vcloud.catalogItem+xml" href="https://v/api/catalogItem/7"/>
  <Tasks><Task href="https://v/api/task/9" status="error" operationName="vdcUploadOvfContents"><Link rel="task:cancel" href="https://v/api/task/9/action/cancel"/><Owner name="img"/><Error majorErrorCode="500" minorErrorCode="INTERNAL_SERVER_ERROR" message="disk too small"/></Task></Tasks>
  <Files><File name="disk-0.vmdk" size="100" bytesTransferred="40"><Link rel="upload:default" href="https://v/transfer/s/disk-0.vmdk"/></File></Files>
  <Owner type="application/vnd.vmware.vcloud.owner+xml"><User type="application/vnd.vmware.admin.user+xml" name="alice" href="https://v/api/admin/user/u"/></Owner>
</VAppTemplate>"#;
        let t = Template::from_node(&Node::parse(xml).unwrap(), "t").unwrap();
        assert_eq!((t.status, t.name.as_str()), (-1, "img"));
        assert_eq!(t.files[0].size, 100);
        assert_eq!(t.files[0].transferred, 40);
        assert_eq!(
            t.files[0].upload_href.as_deref(),
            Some("https://v/transfer/s/disk-0.vmdk")
        );
        let task = t.task("vdcUploadOvfContents").unwrap();
        assert_eq!(task.status, TaskStatus::Error);
        assert_eq!(
            task.cancel_href.as_deref(),
            Some("https://v/api/task/9/action/cancel")
        );
        assert!(t.failure().unwrap().contains("disk too small"));
        assert_eq!(
            t.catalog_item_href.as_deref(),
            Some("https://v/api/catalogItem/7")
        );
        assert_eq!(t.owner.as_deref(), Some("alice"));
    }
}

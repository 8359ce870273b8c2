//! The inspection API's view of the state, and templates planted by tests.

use super::{
    FakeFile, FakeTemplate, Seed,
    state::{FileState, State, Tmpl},
};

impl State {
    /// The templates matching `keep`, as the inspection API shows them.
    pub fn inspect(&self, keep: impl Fn(&Tmpl) -> bool) -> Vec<FakeTemplate> {
        let mut out: Vec<FakeTemplate> = self
            .templates
            .values()
            .filter(|t| keep(t))
            .map(|t| {
                let task = self.tasks.get(&t.upload_task);
                FakeTemplate {
                    id: t.uuid.clone(),
                    name: t.name.clone(),
                    description: t.description.clone(),
                    org: t.org.clone(),
                    catalog: t.catalog.clone(),
                    status: t.status,
                    task_status: task.map(|k| k.status.clone()).unwrap_or_default(),
                    task_error: task.and_then(|k| k.error.as_ref().map(|e| e.2.clone())),
                    deleting: t.delete_task.is_some(),
                    ovf: t.ovf.clone(),
                    files: t
                        .files
                        .iter()
                        .chain(&t.pending_files)
                        .map(|f| FakeFile {
                            name: f.name.clone(),
                            size: f.size,
                            received: f.data.len() as u64,
                            complete: f.complete,
                            sha256: f.sha256.clone(),
                        })
                        .collect(),
                    metadata: t
                        .metadata
                        .iter()
                        .map(|(k, (_, v))| (k.clone(), v.clone()))
                        .collect(),
                    item_metadata: t
                        .item_metadata
                        .iter()
                        .map(|(k, (_, v))| (k.clone(), v.clone()))
                        .collect(),
                    owner: t.owner.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.org, &a.name).cmp(&(&b.org, &b.name)));
        out
    }

    pub fn file_bytes(&self, id: &str, file: &str) -> Option<Vec<u8>> {
        let t = self.templates.get(id)?;
        t.files.iter().find(|f| f.name == file).map(|f| f.data.clone())
    }

    /// Plants a template (see [`Seed`]).
    pub fn seed(&mut self, org: &str, catalog: &str, name: &str, seed: Seed) -> anyhow::Result<String> {
        let cat_id = self
            .org(org)
            .and_then(|o| o.catalogs.iter().find(|(_, n)| n == catalog))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| anyhow::anyhow!("no catalog {catalog} in org {org}"))?;
        let id = self.create_upload(org, &cat_id, catalog, name, &format!("Node image {name}"));
        let t = self.templates.get_mut(&id).expect("just made");
        t.ovf = Some("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"/>".into());
        t.files[0].append(b"<Envelope/>", true);
        let task = t.upload_task.clone();
        match seed {
            Seed::Resolved => {
                t.status = 8;
                self.end_task(&task, "success", None);
            }
            Seed::Failed => {
                let err = (500, "INTERNAL_SERVER_ERROR".into(), "seeded failure".into());
                self.fail_upload(&id, err);
            }
            Seed::Unfinished => {
                t.files.push(FileState::new("disk-0.vmdk", 1 << 20));
            }
        }
        Ok(id)
    }
}

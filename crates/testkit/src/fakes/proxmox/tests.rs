//! The fake's protocol, checked with a raw HTTP client.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{FailHow, FakeProxmox, FakeProxmoxOptions, Step};

/// A raw client of the fake.
struct Raw {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Raw {
    fn new(pve: &FakeProxmox) -> Self {
        crate::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(pve.ca_pem().as_bytes()).unwrap();
        let o = pve.options();
        Self {
            http: reqwest::Client::builder()
                .tls_certs_only([ca])
                .no_proxy()
                .build()
                .unwrap(),
            base: format!("{}/api2/json", pve.url()),
            auth: format!("PVEAPIToken={}!{}={}", o.userid, o.token_id, o.secret),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, v)
    }

    async fn call(&self, method: Method, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        if !form.is_empty() {
            rb = if matches!(method, Method::GET | Method::DELETE) {
                rb.query(form)
            } else {
                rb.form(form)
            };
        }
        self.send(rb).await
    }

    async fn wait(&self, upid: &Value) -> Value {
        let upid = upid.as_str().unwrap();
        let node = upid.split(':').nth(1).unwrap();
        let path = format!("/nodes/{node}/tasks/{}/status", urlencode(upid));
        for _ in 0..500 {
            let (s, v) = self.call(Method::GET, &path, &[]).await;
            assert_eq!(s, 200, "{v}");
            if v["data"]["status"] == "stopped" {
                return v["data"].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {upid} never stopped");
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn auth_envelope_and_error_shapes() {
    let pve = FakeProxmox::start().await.unwrap();
    let c = Raw::new(&pve);
    let url = format!("{}/version", c.base);
    assert_eq!(c.send(c.http.get(&url)).await, (401, Value::Null), "no token");
    let wrong = c
        .http
        .get(&url)
        .header("Authorization", "PVEAPIToken=ido@pve!capmox=nope");
    assert_eq!(c.send(wrong).await, (401, Value::Null), "wrong secret");
    let (s, v) = c.call(Method::GET, "/version", &[]).await;
    assert_eq!(
        (s, &v["data"]["version"], &v["data"]["release"]),
        (200, &json!("8.4.1"), &json!("8.4"))
    );
    pve.revoke_token(true);
    assert_eq!(c.call(Method::GET, "/version", &[]).await.0, 401);
    pve.revoke_token(false);

    let (s, v) = c.call(Method::GET, "/nodes/pve1/foo", &[]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (501, Some("Method 'GET /nodes/pve1/foo' not implemented\n"))
    );
    let (s, v) = c.call(Method::GET, "/cluster/nextid", &[]).await;
    assert_eq!(
        (s, &v["data"]),
        (200, &json!("100")),
        "a string, like real servers"
    );
    let (s, v) = c.call(Method::GET, "/cluster/nextid", &[("vmid", "abc")]).await;
    assert_eq!(s, 400);
    assert!(v["errors"]["vmid"].as_str().unwrap().contains("integer"), "{v}");
    let form = [("vmid", "100"), ("name", "bad_name"), ("bogus", "1")];
    let (s, v) = c.call(Method::POST, "/nodes/pve1/qemu", &form).await;
    assert_eq!((s, &v["data"]), (400, &Value::Null));
    assert!(v["errors"]["name"].as_str().unwrap().contains("DNS"), "{v}");
    assert!(
        v["errors"]["bogus"]
            .as_str()
            .unwrap()
            .contains("not defined in schema"),
        "{v}"
    );
    let body = c
        .http
        .delete(format!("{}/nodes/pve1/qemu/100", c.base))
        .header("Authorization", &c.auth)
        .body("purge=1");
    let (s, v) = c.send(body).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (501, Some("Unexpected content for method 'DELETE'\n"))
    );
    let (s, v) = c.call(Method::DELETE, "/nodes/pve1/qemu/555", &[]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (
            500,
            Some("Configuration file 'nodes/pve1/qemu-server/555.conf' does not exist\n")
        )
    );
    let (s, v) = c.call(Method::GET, "/nodes/pve9/qemu", &[]).await;
    assert!(s == 500 && v["message"].as_str().unwrap().contains("pve9"), "{v}");
    pve.fail(Step::NextId, FailHow::Forbidden, 1);
    let (s, v) = c.call(Method::GET, "/cluster/nextid", &[]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (403, Some("Permission check failed (/vms, VM.Allocate)\n"))
    );
    assert!(
        pve.requests()
            .iter()
            .all(|r| !format!("{r:?}").contains(&pve.options().secret))
    );
}

#[tokio::test]
async fn vm_lifecycle_runs_as_tasks() {
    let pve = FakeProxmox::start().await.unwrap();
    pve.set_task_delay(Duration::from_millis(100));
    let c = Raw::new(&pve);
    // A JSON body works like a form.
    let create = c
        .http
        .post(format!("{}/nodes/pve1/qemu", c.base))
        .header("Authorization", &c.auth)
        .json(
            &json!({"vmid": 100, "name": "img", "memory": "512", "cores": 1, "net0": "virtio,bridge=vmbr0"}),
        );
    let (s, v) = c.send(create).await;
    assert_eq!(s, 200, "{v}");
    let upid = v["data"].clone();
    let parts: Vec<&str> = upid.as_str().unwrap().split(':').collect();
    assert_eq!(
        (parts.len(), parts[1], parts[5], parts[6], parts[7]),
        (9, "pve1", "qmcreate", "100", "ido@pve!capmox")
    );
    assert_eq!(pve.vms()[0].lock.as_deref(), Some("create"));
    let (s, v) = c.call(Method::POST, "/nodes/pve1/qemu/100/template", &[]).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (500, Some("VM 100 is locked (create)\n"))
    );
    let st = c.wait(&upid).await;
    assert_eq!(
        (&st["exitstatus"], &st["tokenid"]),
        (&json!("OK"), &json!("capmox"))
    );
    let path = format!("/nodes/pve1/tasks/{}/log", urlencode(upid.as_str().unwrap()));
    let (_, log) = c.call(Method::GET, &path, &[]).await;
    assert_eq!(log["data"].as_array().unwrap().last().unwrap()["t"], "TASK OK");
    assert_eq!(log["total"], json!(log["data"].as_array().unwrap().len()));

    let (_, cfg) = c.call(Method::GET, "/nodes/pve1/qemu/100/config", &[]).await;
    let cfg = &cfg["data"];
    assert_eq!(
        (&cfg["memory"], &cfg["cores"], &cfg["name"]),
        (&json!("512"), &json!(1), &json!("img"))
    );
    assert!(
        cfg["net0"].as_str().unwrap().starts_with("virtio=BC:24:11:"),
        "{cfg}"
    );
    assert_eq!(cfg["digest"].as_str().unwrap().len(), 40);
    let (s, v) = c.call(Method::POST, "/nodes/pve1/qemu", &[("vmid", "100")]).await;
    assert!(
        s == 500 && v["message"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    let (_, v) = c.call(Method::GET, "/nodes/pve2/qemu/100/config", &[]).await;
    assert!(v["message"].as_str().unwrap().contains("pve2"), "{v}");

    // Import syntax, then a disk, the template, tags and destroy.
    let (s, v) = c
        .call(
            Method::POST,
            "/nodes/pve1/qemu/100/config",
            &[("scsi0", "local-lvm:4,import-from=local:import/x.qcow2")],
        )
        .await;
    assert!(
        s == 400 && v["errors"]["scsi0"].as_str().unwrap().contains("special syntax"),
        "{v}"
    );
    let (s, v) = c
        .call(
            Method::POST,
            "/nodes/pve1/qemu/100/config",
            &[("scsi0", "local-lvm:0,import-from=local:import/x.qcow2")],
        )
        .await;
    assert!(
        s == 500 && v["message"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    let (_, v) = c
        .call(
            Method::POST,
            "/nodes/pve1/qemu/100/config",
            &[("scsi0", "local-lvm:1")],
        )
        .await;
    assert_eq!(c.wait(&v["data"]).await["exitstatus"], "OK");
    let (_, v) = c
        .call(Method::PUT, "/nodes/pve1/qemu/100/config", &[("tags", "a_1;b.2")])
        .await;
    assert_eq!(v["data"], Value::Null, "PUT is synchronous");
    let (_, v) = c.call(Method::POST, "/nodes/pve1/qemu/100/template", &[]).await;
    assert_eq!(c.wait(&v["data"]).await["exitstatus"], "OK");
    let vm = &pve.vms()[0];
    assert!(vm.template && vm.tags.as_deref() == Some("a_1;b.2"), "{vm:?}");
    assert_eq!(vm.config["scsi0"], "local-lvm:base-100-disk-0,size=1G");
    assert_eq!(pve.volumes("pve1", "local-lvm"), vec!["base-100-disk-0"]);
    let (s, v) = c.call(Method::POST, "/nodes/pve1/qemu/100/template", &[]).await;
    assert!(
        s == 500 && v["message"].as_str().unwrap().contains("template to a template"),
        "{v}"
    );
    let (_, res) = c.call(Method::GET, "/cluster/resources", &[("type", "vm")]).await;
    assert_eq!(
        (&res["data"][0]["id"], &res["data"][0]["template"]),
        (&json!("qemu/100"), &json!(1))
    );
    // Tags as PVE stores them: `;`-joined, duplicates dropped; listed with the VM.
    let (_, v) = c
        .call(
            Method::PUT,
            "/nodes/pve1/qemu/100/config",
            &[("tags", "a_1,b.2 a_1;c")],
        )
        .await;
    assert_eq!(v["data"], Value::Null);
    let (_, list) = c.call(Method::GET, "/nodes/pve1/qemu", &[]).await;
    assert_eq!(
        (&list["data"][0]["tags"], &list["data"][0]["status"]),
        (&json!("a_1;b.2;c"), &json!("stopped"))
    );
    // A running VM is not destroyed.
    pve.set_running(100, true);
    let (_, list) = c.call(Method::GET, "/nodes/pve1/qemu", &[]).await;
    assert_eq!(list["data"][0]["status"], "running");
    let (s, v) = c
        .call(Method::DELETE, "/nodes/pve1/qemu/100", &[("purge", "1")])
        .await;
    assert!(
        s == 500
            && v["message"]
                .as_str()
                .unwrap()
                .contains("VM 100 is running - destroy failed"),
        "{v}"
    );
    pve.set_running(100, false);
    let (_, v) = c
        .call(Method::DELETE, "/nodes/pve1/qemu/100", &[("purge", "1")])
        .await;
    assert_eq!(c.wait(&v["data"]).await["exitstatus"], "OK");
    assert!(pve.vms().is_empty() && pve.volumes("pve1", "local-lvm").is_empty());
    let bogus = "/nodes/pve1/tasks/UPID:pve1:00000001:00000001:00000001:x::u@pam:/status";
    let (s, v) = c.call(Method::GET, bogus, &[]).await;
    assert_eq!((s, &v["errors"]["upid"]), (400, &json!("no such task")));
}

#[tokio::test]
async fn download_url_checks_its_parameters_and_fails_tasks() {
    let pve = FakeProxmox::with_options(FakeProxmoxOptions {
        nodes: vec!["a".into(), "b".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = Raw::new(&pve);
    let url = format!("{}/nothing-here", pve.url());
    let dl = |file: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut f = vec![("content", "import"), ("filename", file), ("url", url.as_str())];
        f.extend_from_slice(extra);
        f
    };
    let path = "/nodes/a/storage/local/download-url";
    let (s, v) = c.call(Method::POST, path, &dl("img.iso", &[])).await;
    assert!(
        s == 400 && v["errors"]["filename"] == "invalid filename or wrong extension",
        "{v}"
    );
    let (s, v) = c
        .call(Method::POST, path, &dl("img.qcow2", &[("checksum", "00")]))
        .await;
    assert!(s == 400 && v["errors"]["checksum-algorithm"].is_string(), "{v}");
    let form = dl("img.qcow2", &[]);
    let (s, v) = c
        .call(Method::POST, "/nodes/a/storage/isos/download-url", &form)
        .await;
    assert!(
        s == 500 && v["message"].as_str().unwrap().contains("content-type 'import'"),
        "{v}"
    );
    let (s, v) = c
        .call(Method::POST, "/nodes/b/storage/local/download-url", &form)
        .await;
    assert_eq!(s, 200, "{v}");
    let st = c.wait(&v["data"]).await;
    assert!(
        st["exitstatus"].as_str().unwrap().starts_with("download failed"),
        "{st}"
    );
    assert!(pve.import_files("b", "local").is_empty());
    let (s, v) = c
        .call(Method::GET, "/nodes/b/network", &[("type", "any_bridge")])
        .await;
    let names: Vec<_> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["iface"].clone())
        .collect();
    assert_eq!((s, names), (200, vec![json!("vmbr0"), json!("vmbr1")]));
    let (_, v) = c
        .call(
            Method::DELETE,
            "/nodes/b/storage/local/content/local:import/gone.qcow2",
            &[],
        )
        .await;
    assert_eq!(
        c.wait(&v["data"]).await["exitstatus"],
        "WARNINGS: 1",
        "already gone"
    );
}

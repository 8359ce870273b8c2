//! An independent vSphere client (pyVmomi, `testkit/oracle/vsphere.py`) to assert what exists
//! in a [`Vcsim`] without trusting the project's own SOAP client.
//!
//! Credentials reach the Python process as one JSON line on stdin, never through its
//! command line or environment. TLS is verified against the simulator's [`TestCa`](crate::TestCa)
//! when it has one (`--cafile`); only the built-in self-signed certificate uses `--insecure`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::vcsim::Vcsim;

/// How long one oracle call may take.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `python3 testkit/oracle/vsphere.py --url URL (--cafile CA | --insecure) ARGS...` and
/// returns its JSON output.
///
/// `args` is a command and its flags, e.g. `["list-vms", "--folder", "/DC0/vm"]` (an array of
/// `{name, moref, type, template, powerState}`) or `["find", "--path", "/DC0/vm/x"]` (one
/// such object without the VM-only fields for other types, or `null`).
pub async fn vsphere_oracle(vcsim: &Vcsim, args: &[&str]) -> anyhow::Result<Value> {
    let script = crate::workspace_root().join("testkit/oracle/vsphere.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script).arg("--url").arg(vcsim.url());
    match vcsim.ca() {
        // The CA file lives as long as `vcsim`, which outlives this call.
        Some(ca) => {
            cmd.arg("--cafile").arg(&ca.ca_cert);
        }
        None if !vcsim.is_plain() => {
            cmd.arg("--insecure");
        }
        None => {}
    }
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("vsphere oracle {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: spawning python3 {}", script.display()))?;

    let creds = serde_json::json!({"user": vcsim.username(), "password": vcsim.password()});
    let mut stdin = child.stdin.take().context("oracle stdin")?;
    stdin
        .write_all(format!("{creds}\n").as_bytes())
        .await
        .with_context(|| format!("{what}: writing credentials"))?;
    drop(stdin);

    let out = tokio::time::timeout(ORACLE_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what}: no answer within {ORACLE_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: waiting for python3"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{what} failed ({}): {stderr}\n{}", out.status, vcsim.log_tail());
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{what}: output is not JSON: {:?} (stderr: {stderr})",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The VMs directly in `folder` (e.g. [`VM_FOLDER`](crate::vcsim::VM_FOLDER)), as listed by
/// the oracle: `{name, moref, type, template, powerState}` each.
pub async fn oracle_list_vms(vcsim: &Vcsim, folder: &str) -> anyhow::Result<Vec<Value>> {
    match vsphere_oracle(vcsim, &["list-vms", "--folder", folder]).await? {
        Value::Array(vms) => Ok(vms),
        other => bail!("vsphere oracle list-vms {folder}: expected an array, got {other}"),
    }
}

/// The object at an inventory path as seen by the oracle, or `None` when nothing is there.
pub async fn oracle_find(vcsim: &Vcsim, path: &str) -> anyhow::Result<Option<Value>> {
    match vsphere_oracle(vcsim, &["find", "--path", path]).await? {
        Value::Null => Ok(None),
        v => Ok(Some(v)),
    }
}

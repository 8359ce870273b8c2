//! Worker tasks: real-format UPIDs, `running` for the configured delay, then `stopped` with
//! `OK`, `WARNINGS: n` or the error as exit status; the log ends with a `TASK …` line.

use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Step;
use super::server::{Data, PveError, Reply, Req, Shared};
use super::state::{Task, unix_now};

/// Exit status of a stopped (killed) task.
const INTERRUPTED: &str = "interrupted by signal";

/// Starts a task of `kind` with `id` on `node` and returns its UPID. The worker waits for
/// the task delay, then runs `work` (which applies its effects and returns log lines, or the
/// error that ends the task). A task of a `step` marked for warnings ends `WARNINGS: 1`.
/// `locked_vm`'s lock is released when the task stops.
pub(super) fn spawn(
    sh: &Arc<Shared>,
    node: &str,
    kind: &str,
    id: &str,
    step: Option<Step>,
    locked_vm: Option<u32>,
    work: impl Future<Output = Result<Vec<String>, String>> + Send + 'static,
) -> String {
    let (upid, delay, warn) = {
        let mut st = sh.lock();
        let pid = st.next_pid;
        st.next_pid += 1;
        let starttime = unix_now();
        let pstart = 0x01a4_bb10 + pid % 0x0100_0000;
        let upid = format!(
            "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{id}:{}:",
            sh.token_user
        );
        st.tasks.insert(
            upid.clone(),
            Task {
                node: node.to_string(),
                pid,
                pstart,
                starttime,
                kind: kind.to_string(),
                id: id.to_string(),
                exit: None,
                log: Vec::new(),
                abort: None,
                locked_vm,
            },
        );
        let warn = step.is_some_and(|s| st.faults.warn.contains(&s));
        (upid, st.faults.task_delay, warn)
    };
    let (sh2, u) = (sh.clone(), upid.clone());
    let handle = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let result = work.await;
        finish(&sh2, &u, result, warn);
    });
    if let Some(t) = sh.lock().tasks.get_mut(&upid) {
        t.abort = Some(handle.abort_handle());
    }
    upid
}

/// Marks a task stopped with the outcome of its work (unless it was stopped already).
fn finish(sh: &Shared, upid: &str, result: Result<Vec<String>, String>, warn: bool) {
    let mut st = sh.lock();
    let Some(t) = st.tasks.get_mut(upid) else {
        return;
    };
    if t.exit.is_some() {
        return;
    }
    match result {
        Ok(mut lines) => {
            if warn {
                lines.push("WARN: injected warning".into());
            }
            let n = lines.iter().filter(|l| l.starts_with("WARN")).count();
            t.log.extend(lines);
            if n > 0 {
                t.log.push(format!("TASK WARNINGS: {n}"));
                t.exit = Some(format!("WARNINGS: {n}"));
            } else {
                t.log.push("TASK OK".into());
                t.exit = Some("OK".into());
            }
        }
        Err(msg) => {
            t.log.push(format!("TASK ERROR: {msg}"));
            t.exit = Some(msg.lines().next().unwrap_or_default().to_string());
        }
    }
    let vm = t.locked_vm;
    if let Some(vm) = vm.and_then(|id| st.vms.get_mut(&id)) {
        vm.lock = None;
    }
}

/// Appends log lines to a running task (e.g. download progress).
pub(super) fn log_line(sh: &Shared, upid: &str, line: String) {
    if let Some(t) = sh.lock().tasks.get_mut(upid) {
        t.log.push(line);
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
pub(super) fn status(sh: &Arc<Shared>, node: &str, upid: &str, req: &Req) -> Reply {
    req.check(&[], &[])?;
    let st = sh.lock();
    let t = task(&st, node, upid)?;
    let (user, tokenid) = sh.token_user.split_once('!').unwrap_or((&sh.token_user, ""));
    let mut out = json!({
        "upid": upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
        "starttime": t.starttime, "type": t.kind, "id": t.id, "user": user, "tokenid": tokenid,
        "status": if t.exit.is_some() { "stopped" } else { "running" },
    });
    if let Some(e) = &t.exit {
        out["exitstatus"] = json!(e);
    }
    Ok(out.into())
}

/// `GET /nodes/{node}/tasks/{upid}/log?start=0&limit=50`: `{n, t}` lines and `total`.
pub(super) fn log(sh: &Arc<Shared>, node: &str, upid: &str, req: &Req) -> Reply {
    req.check(&["start", "limit", "download"], &[])?;
    let start = req.int("start", 0, i64::MAX)?.unwrap_or(0) as usize;
    let limit = req.int("limit", 0, i64::MAX)?.unwrap_or(50) as usize;
    let st = sh.lock();
    let t = task(&st, node, upid)?;
    let lines: Vec<Value> = t
        .log
        .iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(i, l)| json!({"n": i + 1, "t": l}))
        .collect();
    Ok(Data(Value::Array(lines), Some(t.log.len())))
}

/// `DELETE /nodes/{node}/tasks/{upid}`: stops a running task (its effects never happen).
pub(super) fn stop(sh: &Arc<Shared>, node: &str, upid: &str, req: &Req) -> Reply {
    req.check(&[], &[])?;
    let mut st = sh.lock();
    let t = st
        .tasks
        .get_mut(upid)
        .filter(|t| t.node == node)
        .ok_or_else(|| PveError::param("upid", "no such task"))?;
    if t.exit.is_none() {
        if let Some(a) = t.abort.take() {
            a.abort();
        }
        t.log.push(format!("TASK ERROR: {INTERRUPTED}"));
        t.exit = Some(INTERRUPTED.into());
        let vm = t.locked_vm;
        if let Some(vm) = vm.and_then(|id| st.vms.get_mut(&id)) {
            vm.lock = None;
        }
    }
    Ok(Value::Null.into())
}

/// The task `upid` of `node`, or PVE's `400 upid: no such task`.
fn task<'a>(st: &'a super::state::State, node: &str, upid: &str) -> Result<&'a Task, PveError> {
    if !upid.starts_with("UPID:") || upid.split(':').count() < 9 {
        return Err(PveError::param("upid", "unable to parse worker upid"));
    }
    st.tasks
        .get(upid)
        .filter(|t| t.node == node)
        .ok_or_else(|| PveError::param("upid", "no such task"))
}

/// Percent-encodes a task id the way PVE encodes download file names in UPIDs.
pub(super) fn encode_id(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! Transfer PUTs: the descriptor first, then each file it references, checked against
//! the OVF (`ovf:size`) and the `Content-Range` of each piece; bytes stored and hashed.

use std::sync::Arc;

use axum::{
    body::{Body, to_bytes},
    extract::{Path, State as AxState},
    http::{HeaderMap, header},
    response::Response,
};

use super::{
    FailStep, Shared, ovf,
    render::{empty, error, forbidden},
    server::transfer_caller,
    state::{DESCRIPTOR, FileState, State},
};

/// Largest descriptor VCD takes (12 MB by default).
const MAX_DESCRIPTOR: usize = 12 << 20;

enum Plan {
    Descriptor {
        uuid: String,
    },
    Disk {
        uuid: String,
        file: String,
        start: u64,
        len: u64,
        last: bool,
    },
    FailDisk {
        len: u64,
    },
}

/// `PUT /transfer/{session}/{file}`: the descriptor, then the files it references.
pub async fn put_file(
    AxState(sh): AxState<Arc<Shared>>,
    Path((session, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (plan, delay) = {
        let mut st = sh.lock();
        match plan(&mut st, &headers, &session, &file) {
            Ok(p) => (p, st.transfer_delay),
            Err(r) => return *r,
        }
    };
    let limit = match &plan {
        Plan::Descriptor { .. } => MAX_DESCRIPTOR,
        Plan::Disk { len, .. } | Plan::FailDisk { len } => *len as usize,
    };
    let Ok(bytes) = to_bytes(body, limit).await else {
        return error(
            400,
            "BAD_REQUEST",
            "the request body was cut short or is longer than declared",
        );
    };
    tokio::time::sleep(delay).await;
    let mut st = sh.lock();
    match plan {
        Plan::FailDisk { .. } => error(500, "INTERNAL_SERVER_ERROR", "injected transfer failure"),
        Plan::Descriptor { uuid } => take_descriptor(&mut st, &uuid, &bytes),
        Plan::Disk {
            uuid,
            file,
            start,
            len,
            last,
        } => {
            if bytes.len() as u64 != len {
                return error(400, "BAD_REQUEST", "the body does not match Content-Length");
            }
            let uploading = st.templates.get(&uuid).is_some_and(|t| st.uploading(t));
            let Some(f) = st
                .templates
                .get_mut(&uuid)
                .filter(|_| uploading)
                .and_then(|t| t.files.iter_mut().find(|f| f.name == file))
            else {
                return error(400, "BAD_REQUEST", "the upload is no longer in progress");
            };
            if f.data.len() as u64 != start {
                return error(400, "BAD_REQUEST", "another piece arrived meanwhile");
            }
            f.append(&bytes, last);
            st.maybe_finish(&uuid);
            empty(200)
        }
    }
}

/// Checks a transfer PUT before its body is read.
fn plan(st: &mut State, headers: &HeaderMap, session: &str, file: &str) -> Result<Plan, Box<Response>> {
    let caller = transfer_caller(st, headers)?;
    let Some(t) = st.templates.values().find(|t| t.transfer == session) else {
        return Err(Box::new(error(
            404,
            "RESOURCE_NOT_FOUND",
            "no such transfer session",
        )));
    };
    if !caller.sees(&t.org) {
        return Err(Box::new(forbidden()));
    }
    if !st.uploading(t) {
        return Err(Box::new(error(
            400,
            "BAD_REQUEST",
            "no upload is in progress for this template",
        )));
    }
    let uuid = t.uuid.clone();
    if file == DESCRIPTOR {
        if t.descriptor_uploaded() {
            return Err(Box::new(error(
                400,
                "BAD_REQUEST",
                "the descriptor was uploaded already",
            )));
        }
        return Ok(Plan::Descriptor { uuid });
    }
    if !t.descriptor_uploaded() {
        return Err(Box::new(error(
            400,
            "BAD_REQUEST",
            "upload the OVF descriptor first",
        )));
    }
    let Some(f) = t.files.iter().find(|f| f.name == file) else {
        return Err(Box::new(error(
            404,
            "RESOURCE_NOT_FOUND",
            &format!("no file {file:?} in this upload"),
        )));
    };
    if f.complete {
        return Err(Box::new(error(
            400,
            "BAD_REQUEST",
            &format!("{file} is complete already"),
        )));
    }
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or_else(|| Box::new(error(411, "LENGTH_REQUIRED", "Content-Length is required")))?;
    let (received, size) = (f.data.len() as u64, f.size);
    let range = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
    let (total, last) = match range {
        Some(r) => {
            let (a, b, total) = parse_range(r)
                .ok_or_else(|| Box::new(error(400, "BAD_REQUEST", &format!("bad Content-Range {r:?}"))))?;
            if b < a || b - a + 1 != len || b >= total {
                return Err(Box::new(error(
                    400,
                    "BAD_REQUEST",
                    &format!("Content-Range {r:?} does not match Content-Length {len}"),
                )));
            }
            if a != received {
                return Err(Box::new(error(
                    416,
                    "BAD_REQUEST",
                    &format!("Content-Range starts at {a}, but {received} bytes were received"),
                )));
            }
            (total, b + 1 == total)
        }
        None if received != 0 => {
            return Err(Box::new(error(
                400,
                "BAD_REQUEST",
                "a PUT without Content-Range must carry the whole file",
            )));
        }
        None => (len, true),
    };
    if size >= 0 && total != size as u64 {
        let msg = format!("{file}: the OVF declares {size} bytes, the upload sends {total}");
        st.fail_upload(&uuid, (400, "BAD_REQUEST".into(), msg.clone()));
        return Err(Box::new(error(400, "BAD_REQUEST", &msg)));
    }
    if st.fails(FailStep::Disk) {
        return Ok(Plan::FailDisk { len });
    }
    Ok(Plan::Disk {
        uuid,
        file: file.to_string(),
        start: received,
        len,
        last,
    })
}

fn parse_range(r: &str) -> Option<(u64, u64, u64)> {
    let (span, total) = r.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

/// Stores the descriptor; a bad (or failed-by-switch) one fails the upload, as VCD does.
fn take_descriptor(st: &mut State, uuid: &str, bytes: &[u8]) -> Response {
    if !st
        .templates
        .get(uuid)
        .is_some_and(|t| st.uploading(t) && !t.descriptor_uploaded())
    {
        return error(400, "BAD_REQUEST", "the upload is no longer in progress");
    }
    let text = String::from_utf8_lossy(bytes).into_owned();
    let parsed = if st.fails(FailStep::Descriptor) {
        Err("injected descriptor failure".to_string())
    } else {
        ovf::parse_ovf(&text)
    };
    let polls = st.opts.files_after_polls;
    let t = st.templates.get_mut(uuid).expect("checked");
    t.ovf = Some(text);
    t.files[0].append(bytes, true);
    match parsed {
        Err(m) => {
            let msg = format!("The OVF descriptor is invalid: {m}");
            st.fail_upload(uuid, (400, "BAD_REQUEST".into(), msg));
        }
        Ok(files) => {
            t.pending_files = files
                .iter()
                .map(|(href, size)| FileState::new(href, *size))
                .collect();
            t.polls_left = polls;
            if polls == 0 {
                let pending = std::mem::take(&mut t.pending_files);
                t.files.extend(pending);
            }
            st.maybe_finish(uuid);
        }
    }
    empty(200)
}

//! The XML the fake reads: `UploadVAppTemplateParams` and OVF descriptors (namespace
//! prefixes ignored, local names matched).

use quick_xml::{XmlVersion, events::Event};

use super::state::DESCRIPTOR;

/// `(name, Description, manifestRequired)` of an `UploadVAppTemplateParams` body.
pub fn upload_params(body: &str) -> Result<(String, String, bool), String> {
    let mut r = quick_xml::Reader::from_str(body);
    let (mut name, mut manifest, mut desc, mut in_desc, mut root) =
        (None, false, String::new(), false, false);
    loop {
        match r.read_event().map_err(|e| format!("malformed XML: {e}"))? {
            Event::Start(e) | Event::Empty(e) if !root => {
                if e.local_name().as_ref() != "UploadVAppTemplateParams" {
                    return Err("the body is not an UploadVAppTemplateParams".into());
                }
                root = true;
                for a in e.attributes().flatten() {
                    let v = a
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|e| e.to_string())?;
                    match a.key.local_name().as_ref() {
                        "name" => name = Some(v.into_owned()),
                        "manifestRequired" => manifest = v == "true",
                        _ => {}
                    }
                }
            }
            Event::Start(e) => in_desc = e.local_name().as_ref() == "Description",
            Event::End(_) => in_desc = false,
            Event::Text(t) if in_desc => desc.push_str(&t.xml10_content()),
            Event::GeneralRef(g) if in_desc => {
                let n = g.xml10_content();
                let c = quick_xml::escape::resolve_predefined_entity(&n).unwrap_or("");
                desc.push_str(c);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    match name.filter(|n| !n.trim().is_empty()) {
        Some(n) => Ok((n, desc, manifest)),
        None => Err("the name attribute is required".into()),
    }
}

/// The `References/File` entries of an OVF (`ovf:href`, `ovf:size` or -1), checked the
/// way VCD would: an `Envelope` with a virtual system, no compression, no chunks.
pub fn parse_ovf(text: &str) -> Result<Vec<(String, i64)>, String> {
    let mut r = quick_xml::Reader::from_str(text.trim_start_matches('\u{feff}'));
    let (mut stack, mut files, mut systems) = (Vec::<String>::new(), Vec::new(), 0);
    loop {
        let ev = r
            .read_event()
            .map_err(|e| format!("not well-formed XML near byte {}: {e}", r.buffer_position()))?;
        let (e, open) = match ev {
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = e.local_name().as_ref().to_string();
        if stack.is_empty() && name != "Envelope" {
            return Err("the root element is not an OVF Envelope".into());
        }
        if matches!(name.as_str(), "VirtualSystem" | "VirtualSystemCollection") {
            systems += 1;
        }
        if name == "File" && stack.last().map(String::as_str) == Some("References") {
            let (mut href, mut size) = (None, -1i64);
            for a in e.attributes().flatten() {
                let v = a
                    .normalized_value(XmlVersion::Implicit1_0)
                    .map_err(|e| e.to_string())?
                    .into_owned();
                match a.key.local_name().as_ref() {
                    "href" => href = Some(v),
                    "size" => size = v.parse().map_err(|_| format!("bad ovf:size {v:?}"))?,
                    "compression" if v != "identity" => {
                        return Err(format!("compressed files ({v}) are not supported"));
                    }
                    "chunkSize" => return Err("chunked files are not supported by the fake".into()),
                    _ => {}
                }
            }
            let href = href.ok_or("a References/File has no ovf:href")?;
            if files.iter().any(|(h, _)| *h == href) || href == DESCRIPTOR {
                return Err(format!("File {href:?} is referenced twice"));
            }
            files.push((href, size));
        }
        if open {
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    if systems == 0 {
        return Err("no VirtualSystem or VirtualSystemCollection".into());
    }
    Ok(files)
}

/// The texts of the `VirtualSystemType` elements of an OVF.
pub fn virtual_system_types(text: &str) -> Vec<String> {
    let mut r = quick_xml::Reader::from_str(text);
    let (mut out, mut inside) = (Vec::new(), false);
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) => {
                inside = e.local_name().as_ref() == "VirtualSystemType";
                if inside {
                    out.push(String::new());
                }
            }
            Ok(Event::Text(t)) if inside => {
                if let Some(last) = out.last_mut() {
                    last.push_str(t.xml10_content().trim());
                }
            }
            Ok(Event::End(_)) => inside = false,
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

//! A small Helm renderer for chart tests: Go `text/template` with the subset of Helm and
//! sprig functions the chart uses, evaluated (not pattern-substituted) over the chart's
//! `values.yaml` merged with test overrides. There is no helm binary on these machines.
//!
//! Supported: `{{ }}` with `{{-`/`-}}` trimming, comments, `if`/`else`/`with`/`end`,
//! `define` + `include`, pipelines with parentheses, fields of `.` and `$`, and the functions
//! `default quote toString toYaml toJson nindent indent b64enc sha256sum printf`. Anything
//! else fails the test, so the chart cannot silently use what is not checked here.

mod parse;

use std::{collections::HashMap, path::Path};

use parse::{Node, Tok, lex, parse, tokenize};
use serde_json::{Map, Value, json};

/// Go template truthiness.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as template output.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        other => panic!("cannot print {other} in a template"),
    }
}

fn to_yaml(v: &Value) -> String {
    yaml::to_string(v)
        .expect("toYaml")
        .trim_end_matches('\n')
        .to_string()
}

fn indent(n: usize, s: &str) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            out.push(if k <= c.len() {
                A[(n >> (18 - 6 * k) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Go's `%q` for the strings a chart quotes.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out + "\""
}

/// A chart loaded for rendering.
pub struct Chart {
    files: Vec<(String, Vec<Node>)>,
    defines: HashMap<String, Vec<Node>>,
    chart: Value,
    defaults: Value,
}

/// Deep-merges `over` into `base` (maps merge, anything else replaces, null deletes).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl Chart {
    /// Loads `dir` (Chart.yaml, values.yaml, templates/*).
    pub fn load(dir: &Path) -> Self {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let meta: Value = yaml::from_str(&read(&dir.join("Chart.yaml"))).expect("Chart.yaml");
        let mut chart = Map::new();
        for (k, v) in meta.as_object().expect("Chart.yaml map") {
            let mut c = k.chars();
            let key = c
                .next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default();
            chart.insert(key, v.clone());
        }
        let defaults: Value = yaml::from_str(&read(&dir.join("values.yaml"))).expect("values.yaml");
        let mut names: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let (mut files, mut defines) = (vec![], HashMap::new());
        for p in names {
            let tokens = lex(&read(&p));
            let (nodes, term) = parse(&tokens, &mut 0, &mut defines);
            assert!(term.is_empty(), "{}: unexpected {{{{ {term} }}}}", p.display());
            files.push((p.file_name().unwrap().to_string_lossy().to_string(), nodes));
        }
        Self {
            files,
            defines,
            chart: Value::Object(chart),
            defaults,
        }
    }

    /// The default values.
    pub fn defaults(&self) -> &Value {
        &self.defaults
    }

    /// Renders every template (not `_*` files) with `overrides` merged into the defaults:
    /// `(file name, rendered text)`.
    pub fn render(&self, release: &str, namespace: &str, overrides: &Value) -> Vec<(String, String)> {
        let mut values = self.defaults.clone();
        merge(&mut values, overrides);
        let root = json!({
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": self.chart,
        });
        self.files
            .iter()
            .filter(|(n, _)| !n.starts_with('_'))
            .map(|(n, nodes)| (n.clone(), self.exec(nodes, &root, &root)))
            .collect()
    }

    /// Renders and parses every manifest: `(file name, document)`, empty documents dropped.
    pub fn manifests(&self, release: &str, namespace: &str, overrides: &Value) -> Vec<(String, Value)> {
        let mut out = vec![];
        for (file, text) in self.render(release, namespace, overrides) {
            let docs: Vec<Value> = yaml::from_str_multiple(&text)
                .unwrap_or_else(|e| panic!("{file} does not render to YAML: {e}\n{text}"));
            out.extend(
                docs.into_iter()
                    .filter(|d| !d.is_null())
                    .map(|d| (file.clone(), d)),
            );
        }
        out
    }

    fn exec(&self, nodes: &[Node], dot: &Value, root: &Value) -> String {
        let mut out = String::new();
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Output(e) => out.push_str(&text(&self.eval(e, dot, root))),
                Node::If {
                    cond,
                    then,
                    otherwise,
                } => {
                    let branch = if truthy(&self.eval(cond, dot, root)) {
                        then
                    } else {
                        otherwise
                    };
                    out.push_str(&self.exec(branch, dot, root));
                }
                Node::With {
                    value,
                    then,
                    otherwise,
                } => {
                    let v = self.eval(value, dot, root);
                    if truthy(&v) {
                        out.push_str(&self.exec(then, &v, root));
                    } else {
                        out.push_str(&self.exec(otherwise, dot, root));
                    }
                }
            }
        }
        out
    }

    fn eval(&self, expr: &str, dot: &Value, root: &Value) -> Value {
        let toks = tokenize(expr);
        let mut pos = 0;
        let v = self.pipeline(&toks, &mut pos, dot, root);
        assert_eq!(pos, toks.len(), "trailing tokens in {expr:?}");
        v
    }

    fn pipeline(&self, toks: &[Tok], pos: &mut usize, dot: &Value, root: &Value) -> Value {
        let mut acc: Option<Value> = None;
        loop {
            let mut args = vec![];
            let mut func = None;
            while *pos < toks.len() && toks[*pos] != Tok::Pipe && toks[*pos] != Tok::Close {
                match &toks[*pos] {
                    Tok::Ident(f) if func.is_none() && args.is_empty() => func = Some(f.clone()),
                    Tok::Ident(f) => panic!("function {f} used as an argument needs parentheses"),
                    Tok::Open => {
                        *pos += 1;
                        args.push(self.pipeline(toks, pos, dot, root));
                        assert_eq!(toks.get(*pos), Some(&Tok::Close), "unclosed (");
                    }
                    Tok::Lit(v) => args.push(v.clone()),
                    Tok::Field(from_root, path) => {
                        let mut v = if *from_root { root } else { dot };
                        for p in path {
                            assert!(v.is_object(), "nil pointer evaluating .{p} (in {path:?})");
                            v = v.get(p).unwrap_or(&Value::Null);
                        }
                        args.push(v.clone());
                    }
                    other => panic!("unexpected {other:?}"),
                }
                *pos += 1;
            }
            args.extend(acc.take());
            acc = Some(match func {
                Some(f) => self.call(&f, args),
                None => {
                    assert_eq!(args.len(), 1, "a command without a function takes one value");
                    args.remove(0)
                }
            });
            if toks.get(*pos) == Some(&Tok::Pipe) {
                *pos += 1;
            } else {
                return acc.expect("empty pipeline");
            }
        }
    }

    fn call(&self, f: &str, a: Vec<Value>) -> Value {
        let s = |i: usize| text(&a[i]);
        let n = |i: usize| {
            a[i].as_u64()
                .unwrap_or_else(|| panic!("{f}: argument {i} is not a number")) as usize
        };
        match (f, a.len()) {
            ("include", 2) => {
                let body = self
                    .defines
                    .get(&s(0))
                    .unwrap_or_else(|| panic!("no template {:?}", s(0)));
                json!(self.exec(body, &a[1], &a[1]))
            }
            ("or", _) => a
                .iter()
                .find(|v| truthy(v))
                .or(a.last())
                .cloned()
                .unwrap_or(Value::Null),
            ("default", 1) => a[0].clone(),
            ("default", 2) => {
                if truthy(&a[1]) {
                    a[1].clone()
                } else {
                    a[0].clone()
                }
            }
            ("quote", 1) => json!(if a[0].is_null() {
                String::new()
            } else {
                go_quote(&s(0))
            }),
            ("toString", 1) => json!(s(0)),
            ("toYaml", 1) => json!(to_yaml(&a[0])),
            ("toJson", 1) => json!(a[0].to_string()),
            ("nindent", 2) => json!(format!("\n{}", indent(n(0), &s(1)))),
            ("indent", 2) => json!(indent(n(0), &s(1))),
            ("b64enc", 1) => json!(b64(s(0).as_bytes())),
            ("sha256sum", 1) => {
                use sha2::Digest;
                json!(
                    sha2::Sha256::digest(s(0).as_bytes())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                )
            }
            ("printf", _) => {
                let mut it = a[1..].iter();
                let fmt = s(0);
                let mut out = String::new();
                let mut chars = fmt.chars();
                while let Some(c) = chars.next() {
                    if c == '%' {
                        let verb = chars.next().expect("printf verb");
                        assert!("sdv".contains(verb), "printf %{verb} unsupported");
                        out.push_str(&text(it.next().expect("printf argument")));
                    } else {
                        out.push(c);
                    }
                }
                json!(out)
            }
            _ => panic!("the test renderer does not support {f}/{}", a.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_quote_like_go() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(go_quote("a\"b\n"), r#""a\"b\n""#);
    }

    #[test]
    fn trimming_and_pipelines() {
        let mut defines = HashMap::new();
        let toks = lex("a:\n  {{- \"x\" | quote }}\n{{ if .b -}}\n  yes\n{{- else }}no{{ end }}");
        let (nodes, _) = parse(&toks, &mut 0, &mut defines);
        let c = Chart {
            files: vec![],
            defines,
            chart: json!({}),
            defaults: json!({}),
        };
        assert_eq!(c.exec(&nodes, &json!({"b": true}), &json!({})), "a:\"x\"\nyes");
        assert_eq!(c.exec(&nodes, &json!({"b": false}), &json!({})), "a:\"x\"\nno");
        assert_eq!(
            c.eval(
                "(.x | default \"d\") | printf \"%s-%s\" \"p\"",
                &json!({}),
                &json!({})
            ),
            json!("p-d")
        );
    }
}

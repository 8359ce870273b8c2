//! Lexing and parsing of Go templates, and tokenizing of their pipelines.

use std::collections::HashMap;

use serde_json::{Value, json};

/// A parsed template node.
#[derive(Clone, Debug)]
pub(super) enum Node {
    Text(String),
    Output(String),
    If {
        cond: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    With {
        value: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Splits `src` into text and actions, applying `{{-` / `-}}` trimming.
pub(super) fn lex(src: &str) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = vec![];
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("unclosed action");
        let mut body = &after[..end];
        if body.starts_with("- ") || body.starts_with("-\n") {
            text = text.trim_end().to_string();
            body = &body[1..];
        }
        trim_next = body.ends_with(" -") || body.ends_with("\n-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        out.push((false, text));
        out.push((true, body.trim().to_string()));
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    out.push((false, text.to_string()));
    out
}

/// Parses tokens into nodes until `else`/`end` (returned as the terminator).
pub(super) fn parse(
    tokens: &[(bool, String)],
    pos: &mut usize,
    defines: &mut HashMap<String, Vec<Node>>,
) -> (Vec<Node>, String) {
    let mut nodes = vec![];
    while *pos < tokens.len() {
        let (action, s) = &tokens[*pos];
        *pos += 1;
        if !action {
            nodes.push(Node::Text(s.clone()));
            continue;
        }
        if s.starts_with("/*") {
            assert!(s.ends_with("*/"), "bad comment {s:?}");
        } else if s == "end" || s == "else" {
            return (nodes, s.clone());
        } else if let Some(c) = s.strip_prefix("if ") {
            let (then, term) = parse(tokens, pos, defines);
            let otherwise = if term == "else" {
                parse(tokens, pos, defines).0
            } else {
                vec![]
            };
            nodes.push(Node::If {
                cond: c.to_string(),
                then,
                otherwise,
            });
        } else if let Some(c) = s.strip_prefix("with ") {
            let (then, term) = parse(tokens, pos, defines);
            let otherwise = if term == "else" {
                parse(tokens, pos, defines).0
            } else {
                vec![]
            };
            nodes.push(Node::With {
                value: c.to_string(),
                then,
                otherwise,
            });
        } else if let Some(name) = s.strip_prefix("define ") {
            let name: String = serde_json::from_str(name.trim()).expect("define name");
            let (body, _) = parse(tokens, pos, defines);
            defines.insert(name, body);
        } else {
            for kw in ["range ", "template ", "block ", "else if", "$"] {
                assert!(!s.starts_with(kw), "the test renderer does not support {s:?}");
            }
            nodes.push(Node::Output(s.clone()));
        }
    }
    (nodes, String::new())
}

/// Expression tokens.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Open,
    Close,
    Pipe,
    Lit(Value),
    Field(bool, Vec<String>),
    Ident(String),
}

pub(super) fn tokenize(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let (mut i, mut out) = (0, vec![]);
    while i < b.len() {
        let c = b[i] as char;
        let word_end = |from: usize| {
            from + src[from..]
                .find(|c: char| c.is_whitespace() || "()|".contains(c))
                .unwrap_or(src.len() - from)
        };
        match c {
            _ if c.is_whitespace() => i += 1,
            '(' => (out.push(Tok::Open), i += 1).1,
            ')' => (out.push(Tok::Close), i += 1).1,
            '|' => (out.push(Tok::Pipe), i += 1).1,
            '"' => {
                let mut j = i + 1;
                while b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                out.push(Tok::Lit(Value::String(
                    serde_json::from_str(&src[i..=j]).expect("string literal"),
                )));
                i = j + 1;
            }
            '.' | '$' => {
                let e = word_end(i);
                let w = &src[i..e];
                let root = w.starts_with('$');
                let path = w
                    .trim_start_matches('$')
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                out.push(Tok::Field(root, path));
                i = e;
            }
            _ if c.is_ascii_digit() => {
                let e = word_end(i);
                out.push(Tok::Lit(serde_json::from_str(&src[i..e]).expect("number")));
                i = e;
            }
            _ => {
                let e = word_end(i);
                let w = &src[i..e];
                out.push(match w {
                    "true" => Tok::Lit(json!(true)),
                    "false" => Tok::Lit(json!(false)),
                    "nil" => Tok::Lit(Value::Null),
                    _ => Tok::Ident(w.to_string()),
                });
                i = e;
            }
        }
    }
    out
}

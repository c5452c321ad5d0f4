//! A tiny YAML document tree that remembers where every key and value came from.
//!
//! Built from `saphyr-parser`'s event stream with an explicit stack (no recursion, so deeply
//! nested input cannot overflow the stack). Anchors and aliases are supported (an alias is a
//! copy of the anchored node, with a cap on the total size to defuse "billion laughs" input);
//! core-schema tags (`!!str`, `!!int`, ...) are ignored; any other tag is an error.

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Maximum number of nodes alias expansion may add to the document.
const MAX_ALIAS_NODES: usize = 100_000;

/// A position in the source: 1-based line and 1-based column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    /// A scalar. `plain` is true for an unquoted flow scalar (only those can mean null).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug)]
pub(crate) struct Key {
    pub text: String,
    pub pos: Pos,
}

impl Node {
    /// An unquoted empty value, `~` or `null` (YAML 1.2 core schema null).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn describe(&self) -> &'static str {
        match self.kind {
            NodeKind::Scalar { .. } => "a single value",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            NodeKind::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.size()).sum::<usize>(),
        }
    }
}

/// A YAML problem: position and message.
#[derive(Debug)]
pub(crate) struct YamlError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

/// Parses `text` into the tree of its single document. `Ok(None)` for an empty stream.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: BTreeMap<usize, Node> = BTreeMap::new();
    let mut alias_nodes = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let pos = Pos::from_span(&span);
        let done: Node = match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos,
                        message:
                            "the file holds more than one YAML document; only one is supported"
                                .to_owned(),
                    });
                }
                continue;
            }
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    return Err(YamlError {
                        pos,
                        message: "invalid YAML: alias to an unknown anchor".to_owned(),
                    });
                };
                alias_nodes = alias_nodes.saturating_add(node.size());
                if alias_nodes > MAX_ALIAS_NODES {
                    return Err(YamlError {
                        pos,
                        message: "invalid YAML: aliases expand to too large a document".to_owned(),
                    });
                }
                node.clone()
            }
            Event::Scalar(value, style, anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        text: value.into_owned(),
                        plain: matches!(style, ScalarStyle::Plain),
                    },
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (
                        Node {
                            pos,
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            pos,
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    ),
                    None => {
                        return Err(YamlError {
                            pos,
                            message: "invalid YAML: unbalanced collection end".to_owned(),
                        })
                    }
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
        };
        match stack.last_mut() {
            None => {
                if root.is_none() {
                    root = Some(done);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(done),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, done)),
                None => match done.kind {
                    NodeKind::Scalar { text, .. } => {
                        *key = Some(Key {
                            text,
                            pos: done.pos,
                        })
                    }
                    _ => {
                        return Err(YamlError {
                            pos: done.pos,
                            message: "a mapping key must be a single value, not a list or mapping"
                                .to_owned(),
                        })
                    }
                },
            },
        }
    }
    Ok(root)
}

fn check_tag(tag: Option<&saphyr_parser::Tag>, pos: Pos) -> Result<(), YamlError> {
    match tag {
        Some(tag) if !tag.is_yaml_core_schema() => Err(YamlError {
            pos,
            message: format!("YAML tag {tag} is not supported"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Key, Node)] {
        match &node.kind {
            NodeKind::Map(e) => e,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn block_mapping_keeps_positions_of_keys_and_values() {
        let root = parse("# comment\na: 1\nb:\n  - x: 'q'\n    y: [1, 2]\n")
            .unwrap()
            .unwrap();
        let entries = map(&root);
        assert_eq!(entries[0].0.text, "a");
        assert_eq!(entries[0].0.pos, Pos { line: 2, column: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 2, column: 4 });
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(items[0].pos.line, 4);
        let inner = map(&items[0]);
        assert_eq!(inner[1].0.pos, Pos { line: 5, column: 5 });
        assert!(matches!(&inner[0].1.kind, NodeKind::Scalar { text, plain: false } if text == "q"));
    }

    #[test]
    fn empty_stream_is_none_and_null_is_detected() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
        let root = parse("a:\nb: ~\nc: ''\n").unwrap().unwrap();
        let e = map(&root);
        assert!(e[0].1.is_null());
        assert!(e[1].1.is_null());
        assert!(!e[2].1.is_null());
    }

    #[test]
    fn aliases_are_copies_and_foreign_tags_are_rejected() {
        let root = parse("a: &x 5\nb: *x\nc: !!str 7\n").unwrap().unwrap();
        let e = map(&root);
        assert!(matches!(&e[1].1.kind, NodeKind::Scalar { text, .. } if text == "5"));
        let err = parse("a: !custom 5\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 1, column: 4 });
        assert!(err.message.contains("!custom"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_and_multiple_documents_are_errors() {
        let err = parse("a: [1, 2\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(parse("---\na: 1\n...\n").is_ok());
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let text = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let _ = parse(&text);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("too large"), "{}", err.message);
    }
}

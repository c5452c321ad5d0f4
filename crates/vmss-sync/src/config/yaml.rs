//! A tiny YAML document tree that remembers where every key and value came from.
//!
//! Built from `saphyr-parser`'s event stream with an explicit stack (no recursion, so deeply
//! nested input cannot overflow the stack). Anchors and aliases are supported (an alias is a
//! copy of the anchored node); core-schema tags (`!!str`, `!!int`, ...) are ignored; any
//! other tag is an error.
//!
//! The tree is built in bounded memory ([`super::limits`]): nesting depth, node count, the
//! length of each value and key, and the bytes that anchors and aliases copy (measured as the
//! memory the copies take, so one long anchored string aliased many times is caught as
//! surely as a "billion laughs" of small nodes). The first limit crossed ends the parse.

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::limits::{MAX_ALIAS_BYTES, MAX_DEPTH, MAX_KEY_BYTES, MAX_NODES, MAX_SCALAR_BYTES};

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

    /// (nodes, bytes) of a copy of this node: its nodes (a key counts as one), and the
    /// memory they take (each node's and key's size plus its text).
    fn weight(&self) -> (usize, usize) {
        const NODE: usize = std::mem::size_of::<Node>();
        const KEY: usize = std::mem::size_of::<Key>();
        match &self.kind {
            NodeKind::Scalar { text, .. } => (1, NODE + text.len()),
            NodeKind::Seq(items) => items.iter().fold((1, NODE), |(n, b), item| {
                let (n2, b2) = item.weight();
                (n + n2, b + b2)
            }),
            NodeKind::Map(entries) => entries.iter().fold((1, NODE), |(n, b), (k, v)| {
                let (n2, b2) = v.weight();
                (n + 1 + n2, b + KEY + k.text.len() + b2)
            }),
        }
    }
}

/// Counts what the tree holds against the limits.
struct Budget {
    nodes: usize,
    copied: usize,
}

impl Budget {
    fn too_many_nodes(&self, pos: Pos) -> Result<(), YamlError> {
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!(
                    "the document has more than {MAX_NODES} values, lists and mappings \
                     (aliases counted as copies), the most a configuration may have"
                ),
            });
        }
        Ok(())
    }

    /// Counts a copy of `node` (made for an anchor or an alias) at `pos`.
    fn copy(&mut self, node: &Node, pos: Pos, what: &str) -> Result<(), YamlError> {
        let (nodes, bytes) = node.weight();
        self.copied = self.copied.saturating_add(bytes);
        if self.copied > MAX_ALIAS_BYTES {
            return Err(YamlError {
                pos,
                message: format!(
                    "invalid YAML: {what} makes anchors and aliases copy more than \
                     {MAX_ALIAS_BYTES} bytes (1 MiB), the most they may (this one copies a \
                     node of line {} holding {bytes} bytes)",
                    node.pos.line
                ),
            });
        }
        self.nodes = self.nodes.saturating_add(nodes);
        self.too_many_nodes(pos)
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
    let mut budget = Budget {
        nodes: 0,
        copied: 0,
    };
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
                budget.copy(node, pos, "this alias")?;
                node.clone()
            }
            Event::Scalar(value, style, anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                let is_key = matches!(stack.last(), Some(Frame::Map { key: None, .. }));
                let (limit, what) = if is_key {
                    (MAX_KEY_BYTES, "a key")
                } else {
                    (MAX_SCALAR_BYTES, "a value")
                };
                if value.len() > limit {
                    return Err(YamlError {
                        pos,
                        message: format!(
                            "{what} of {} bytes: the most {what} may hold is {limit} bytes",
                            value.len()
                        ),
                    });
                }
                budget.nodes += 1;
                budget.too_many_nodes(pos)?;
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        text: value.into_owned(),
                        plain: matches!(style, ScalarStyle::Plain),
                    },
                };
                if anchor > 0 {
                    budget.copy(&node, pos, "this anchor")?;
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                enter(&stack, &mut budget, pos)?;
                stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
                continue;
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                enter(&stack, &mut budget, pos)?;
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
                    budget.copy(&node, pos, "this anchor")?;
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

/// A list or mapping starts at `pos`, inside the `stack.len()` open ones.
fn enter(stack: &[Frame], budget: &mut Budget, pos: Pos) -> Result<(), YamlError> {
    if stack.len() >= MAX_DEPTH {
        return Err(YamlError {
            pos,
            message: format!(
                "lists and mappings nested more than {MAX_DEPTH} deep, the most a configuration \
                 may have"
            ),
        });
    }
    budget.nodes += 1;
    budget.too_many_nodes(pos)
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
        assert!(
            err.message.contains("copy more than 1048576 bytes"),
            "{}",
            err.message
        );
        assert_eq!(err.pos.line, 4, "refused where the copies cross the limit");
    }

    #[test]
    fn aliases_are_measured_in_bytes_not_nodes() {
        // One 60,000-byte string: the anchor's copy and 16 aliases fit in 1 MiB, the 17th
        // alias does not, though they are only 17 nodes.
        let long = "x".repeat(60_000);
        let doc = |n: usize| format!("a: &s {long}\nb: [{}]\n", vec!["*s"; n].join(", "));
        let root = parse(&doc(16)).unwrap().unwrap();
        let NodeKind::Seq(items) = &map(&root)[1].1.kind else {
            panic!()
        };
        assert_eq!(items.len(), 16);
        let err = parse(&doc(17)).unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(
            err.message.contains("node of line 1 holding"),
            "{}",
            err.message
        );
    }

    #[test]
    fn nesting_deeper_than_32_is_refused_where_it_happens() {
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(parse(&ok).is_ok());
        let err = parse(&format!("{}{}", "[".repeat(33), "]".repeat(33))).unwrap_err();
        assert_eq!(
            err.pos,
            Pos {
                line: 1,
                column: 33
            }
        );
        assert!(
            err.message.contains("nested more than 32 deep"),
            "{}",
            err.message
        );
        let mut block = String::new();
        for i in 0..40 {
            block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        let err = parse(&block).unwrap_err();
        assert_eq!(err.pos.line, 33, "{}", err.message);
    }

    #[test]
    fn values_over_64_kib_and_keys_over_1_kib_are_refused() {
        let at_limit = format!("a: {}\n", "v".repeat(65_536));
        assert!(parse(&at_limit).is_ok());
        let err = parse(&format!("a: 1\nb: '{}'\n", "v".repeat(65_537))).unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 4 });
        assert_eq!(
            err.message,
            "a value of 65537 bytes: the most a value may hold is 65536 bytes"
        );
        // YAML itself limits implicit keys to 1024 characters; an explicit key has no limit.
        let err = parse(&format!("a: 1\n? {}\n: 2\n", "k".repeat(1025))).unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 3 });
        assert!(
            err.message.starts_with("a key of 1025 bytes"),
            "{}",
            err.message
        );
        // A long value is not taken for a key.
        assert!(parse(&format!("- {}\n", "v".repeat(2000))).is_ok());
    }

    #[test]
    fn documents_over_100_000_nodes_are_refused() {
        let items = "1,".repeat(100_100);
        let err = parse(&format!("[{items}]")).unwrap_err();
        assert!(
            err.message.contains("more than 100000 values"),
            "{}",
            err.message
        );
        assert!(parse(&format!("[{}]", "1,".repeat(99_000))).is_ok());
    }
}

//! ARCHITECTURE.md's layering, enforced: every module path a source file names
//! (`use crate::…` lines, multi-line `use crate::{a, b::{c}}` groups, `super::`/`self::`
//! paths and inline `crate::x::y` paths in code, tests included) is checked against the
//! `layers` tables of ARCHITECTURE.md's "Layers" section, which this test reads: the
//! document and the check cannot drift apart.
//!
//! A table lists modules from the lowest layer (first row) to the highest, each with the
//! modules it may import; a row may list only rows before it (so the table has no cycle).
//! A file belongs to the longest listed module its module path starts with, and so does a
//! path it names. Comments, string and character literals are not read.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The crate root (`lib.rs`) in a table.
const ROOT: &str = "crate";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One row of a layering table.
#[derive(Debug)]
struct Row {
    /// Module path, empty for the crate root.
    module: Vec<String>,
    /// Modules it may import (rows of the same table).
    allowed: BTreeSet<String>,
    /// Line in ARCHITECTURE.md.
    line: usize,
}

fn module_name(m: &[String]) -> String {
    if m.is_empty() {
        ROOT.to_string()
    } else {
        m.join("::")
    }
}

fn split_module(s: &str) -> Vec<String> {
    if s == ROOT {
        Vec::new()
    } else {
        s.split("::").map(str::to_string).collect()
    }
}

/// The ```` ```layers CRATE ```` blocks of `doc`: rows `module: allowed allowed …`.
fn parse_tables(doc: &str) -> Vec<(String, Vec<Row>)> {
    let mut tables = Vec::new();
    let mut current: Option<(String, Vec<Row>)> = None;
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim();
        if let Some((name, rows)) = current.as_mut() {
            if t.starts_with("```") {
                tables.push((std::mem::take(name), std::mem::take(rows)));
                current = None;
                continue;
            }
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            // The first ':' that is not half of a `::`.
            let b = t.as_bytes();
            let colon = (0..b.len())
                .find(|&k| {
                    b[k] == b':' && b.get(k + 1) != Some(&b':') && (k == 0 || b[k - 1] != b':')
                })
                .unwrap_or_else(|| {
                    panic!(
                        "ARCHITECTURE.md:{}: a layers row is `module: allowed …`, found {t:?}",
                        i + 1
                    )
                });
            let (module, allowed) = (&t[..colon], &t[colon + 1..]);
            rows.push(Row {
                module: split_module(module.trim()),
                allowed: allowed
                    .split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                line: i + 1,
            });
        } else if let Some(name) = t.strip_prefix("```layers ") {
            current = Some((name.trim().to_string(), Vec::new()));
        }
    }
    assert!(
        current.is_none(),
        "ARCHITECTURE.md: a layers block is not closed"
    );
    tables
}

/// `src` with comments, string and character literals blanked out (newlines kept).
fn strip(src: &str) -> Vec<char> {
    let c: Vec<char> = src.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in out.iter_mut().take(to.min(c.len())).skip(from) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let mut i = 0;
    while i < c.len() {
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            let end = c[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(c.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            let mut j = i;
            while j < c.len() {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !ident_before && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && {
            let k = if c[i] == 'b' { i + 2 } else { i + 1 };
            let hashes = c[k..].iter().take_while(|&&x| x == '#').count();
            c.get(k + hashes) == Some(&'"')
        } {
            let k = if c[i] == 'b' { i + 2 } else { i + 1 };
            let hashes = c[k..].iter().take_while(|&&x| x == '#').count();
            let mut j = k + hashes + 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"'
                    && c[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&x| x == '#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), else a lifetime or label.
            let end = if c.get(i + 1) == Some(&'\\') {
                c.get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&x| x == '\''))
                    .map(|p| i + 3 + p)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    blank(&mut out, i, e + 1);
                    i = e + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// A path named in a file: its segments as written and the line of its last segment.
#[derive(Debug, PartialEq)]
struct Named {
    segments: Vec<String>,
    line: usize,
    /// The module path of the code that names it (inline `mod`s included).
    scope: Vec<String>,
}

struct Scanner<'a> {
    c: &'a [char],
    i: usize,
    line: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.c.len() && self.c[self.i].is_whitespace() {
            if self.c[self.i] == '\n' {
                self.line += 1;
            }
            self.i += 1;
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        while self.i < self.c.len() && is_ident(self.c[self.i]) {
            self.i += 1;
        }
        (self.i > start).then(|| self.c[start..self.i].iter().collect())
    }

    fn at(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(k, ch)| self.c.get(self.i + k) == Some(&ch))
    }

    /// A use tree or a path in code after `prefix`, positioned after `prefix::`.
    fn tree(&mut self, prefix: Vec<String>, out: &mut Vec<(Vec<String>, usize)>) {
        self.skip_ws();
        if self.at("{") {
            self.i += 1;
            loop {
                self.skip_ws();
                if self.at("}") {
                    self.i += 1;
                    return;
                }
                if self.i >= self.c.len() {
                    return;
                }
                self.tree(prefix.clone(), out);
                self.skip_ws();
                if self.at(",") {
                    self.i += 1;
                }
            }
        }
        if self.at("*") {
            self.i += 1;
            out.push((prefix, self.line));
            return;
        }
        let line = self.line;
        let Some(id) = self.ident() else {
            out.push((prefix, line));
            return;
        };
        let mut path = prefix;
        if id != "self" {
            path.push(id);
        }
        self.skip_ws();
        if self.at("::") && !self.at("::<") {
            self.i += 2;
            self.tree(path, out);
        } else {
            out.push((path, line));
        }
    }
}

/// Every path starting with `crate`, `super`, `self` or `extra_root` (the library's name,
/// in `main.rs`) that `src` names, with the module scope it is named in (`file_module`
/// plus inline `mod`s).
fn named_paths(src: &str, file_module: &[String], extra_root: Option<&str>) -> Vec<Named> {
    let c = strip(src);
    let mut s = Scanner {
        c: &c,
        i: 0,
        line: 1,
    };
    let mut depth = 0usize;
    // Inline modules: (name, brace depth inside them).
    let mut mods: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut out = Vec::new();
    let starts: Vec<&str> = ["crate", "super", "self"]
        .into_iter()
        .chain(extra_root)
        .collect();
    while s.i < c.len() {
        let ch = c[s.i];
        if ch == '\n' {
            s.line += 1;
            s.i += 1;
            continue;
        }
        if ch == '{' {
            depth += 1;
            if let Some(name) = pending_mod.take() {
                mods.push((name, depth));
            }
            s.i += 1;
            continue;
        }
        if ch == '}' {
            if mods.last().is_some_and(|(_, d)| *d == depth) {
                mods.pop();
            }
            depth = depth.saturating_sub(1);
            s.i += 1;
            continue;
        }
        if ch == ';' {
            pending_mod = None;
        }
        if !is_ident(ch) || (s.i > 0 && is_ident(c[s.i - 1])) {
            s.i += 1;
            continue;
        }
        let word = s.ident().unwrap_or_default();
        if word == "mod" {
            s.skip_ws();
            pending_mod = s.ident();
            continue;
        }
        if starts.contains(&word.as_str()) && s.at("::") && !s.at("::<") {
            s.i += 2;
            let mut found = Vec::new();
            s.tree(vec![word.clone()], &mut found);
            let scope: Vec<String> = file_module
                .iter()
                .cloned()
                .chain(mods.iter().map(|(m, _)| m.clone()))
                .collect();
            out.extend(found.into_iter().map(|(segments, line)| Named {
                segments,
                line,
                scope: scope.clone(),
            }));
        }
    }
    out
}

/// The absolute module path (from the crate root) a named path means.
fn resolve(named: &Named, extra_root: Option<&str>) -> Vec<String> {
    let mut segs = named.segments.iter().peekable();
    let mut base: Vec<String> = Vec::new();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
        }
        Some(r) if Some(r) == extra_root => {
            segs.next();
        }
        Some("self") => {
            segs.next();
            base = named.scope.clone();
        }
        Some("super") => {
            base = named.scope.clone();
            while segs.peek().map(|s| s.as_str()) == Some("super") {
                segs.next();
                base.pop();
            }
        }
        _ => {}
    }
    base.extend(segs.cloned());
    base
}

/// The row (index) whose module is the longest prefix of `path`.
fn row_of(rows: &[Row], path: &[String]) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| path.starts_with(&r.module))
        .max_by_key(|(_, r)| r.module.len())
        .map(|(i, _)| i)
}

/// The row of a module path, as [`row_of`], except that a path into a module of the crate
/// (`top`: the crate's top-level modules) that has no row of its own is in no row, not in the
/// crate root's: a new module must be placed in the table.
fn placed_row(rows: &[Row], path: &[String], top: &BTreeSet<String>) -> Option<usize> {
    let r = row_of(rows, path)?;
    let unplaced = rows[r].module.is_empty() && path.first().is_some_and(|s| top.contains(s));
    (!unplaced).then_some(r)
}

/// The module path of a source file under `src/`.
fn file_module(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let Some(last) = parts.pop() else {
        return parts;
    };
    let stem = last.trim_end_matches(".rs");
    if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The problems of one table itself: allowed modules that are not rows above.
fn table_problems(rows: &[Row]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if rows[..i].iter().any(|o| o.module == r.module) {
            problems.push(format!(
                "ARCHITECTURE.md:{}: {} is listed twice",
                r.line,
                module_name(&r.module)
            ));
        }
        for a in &r.allowed {
            // The crate root holds the state every module shares and wires them all: it
            // may be named by a row that lists it, whatever its place.
            if a == ROOT {
                continue;
            }
            if !rows[..i].iter().any(|o| module_name(&o.module) == *a) {
                problems.push(format!(
                    "ARCHITECTURE.md:{}: {} may import {a}, which is not a module listed above it",
                    r.line,
                    module_name(&r.module)
                ));
            }
        }
    }
    problems
}

/// The imports of one file that its row does not allow, as `file:line: from → to (path)`.
fn file_violations(
    rows: &[Row],
    display: &str,
    module: &[String],
    src: &str,
    extra_root: Option<&str>,
    top: &BTreeSet<String>,
) -> Vec<String> {
    let Some(from) = placed_row(rows, module, top) else {
        return vec![format!(
            "{display}: module {} is not in the layering table",
            module_name(module)
        )];
    };
    let mut v = Vec::new();
    for named in named_paths(src, module, extra_root) {
        let target = resolve(&named, extra_root);
        let Some(to) = placed_row(rows, &target, top) else {
            v.push(format!(
                "{display}:{}: {} names {}, which is in no row of the layering table",
                named.line,
                module_name(&rows[from].module),
                named.segments.join("::")
            ));
            continue;
        };
        let to_name = module_name(&rows[to].module);
        if to != from && !rows[from].allowed.contains(&to_name) {
            v.push(format!(
                "{display}:{}: {} → {} ({}) is not allowed by ARCHITECTURE.md:{}",
                named.line,
                module_name(&rows[from].module),
                to_name,
                named.segments.join("::"),
                rows[from].line
            ));
        }
    }
    v
}

fn table<'t>(tables: &'t [(String, Vec<Row>)], name: &str) -> &'t [Row] {
    &tables
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no ```layers {name} block"))
        .1
}

fn architecture() -> Vec<(String, Vec<Row>)> {
    parse_tables(&read(&repo_root().join("ARCHITECTURE.md")))
}

/// Checks every file of one crate's `src/` against its table; `lib_name` is how `main.rs`
/// names the library.
fn check_crate(table_name: &str, krate: &str, lib_name: &str) {
    let tables = architecture();
    let rows = table(&tables, table_name);
    let mut problems = table_problems(rows);
    let src = repo_root().join("crates").join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let top: BTreeSet<String> = files
        .iter()
        .filter_map(|f| file_module(f.strip_prefix(&src).ok()?).first().cloned())
        .chain(["main".to_string()])
        .collect();
    let mut used_rows = BTreeSet::new();
    let mut edges = 0usize;
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let display = format!("crates/{krate}/src/{}", rel.display());
        let module = file_module(rel);
        let is_main = rel == Path::new("main.rs");
        // main.rs is the binary: it names the library by its name, and has its own row.
        let (module, extra) = if is_main {
            (vec!["main".to_string()], Some(lib_name))
        } else {
            (module, None)
        };
        let text = read(f);
        if let Some(r) = placed_row(rows, &module, &top) {
            used_rows.insert(r);
        }
        edges += named_paths(&text, &module, extra).len();
        problems.extend(file_violations(rows, &display, &module, &text, extra, &top));
    }
    for (i, r) in rows.iter().enumerate() {
        if !used_rows.contains(&i) {
            problems.push(format!(
                "ARCHITECTURE.md:{}: {} has no source file in crates/{krate}/src",
                r.line,
                module_name(&r.module)
            ));
        }
    }
    println!(
        "{table_name}: {} files, {edges} module paths checked against {} rows",
        files.len(),
        rows.len()
    );
    assert!(
        problems.is_empty(),
        "{} layering violation(s) in {table_name}:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn vmss_sync_modules_import_only_what_architecture_md_allows() {
    check_crate("vmss-sync", "vmss-sync", "vmss_sync");
}

#[test]
fn testbed_modules_import_only_what_architecture_md_allows() {
    check_crate("vmss-testbed", "testbed", "vmss_testbed");
}

#[test]
fn every_crate_of_the_workspace_has_a_layers_table_checked_here() {
    let tables = architecture();
    let checked = ["vmss-sync", "vmss-testbed"];
    let mut missing = Vec::new();
    let crates = repo_root().join("crates");
    let mut dirs: Vec<_> = fs::read_dir(&crates)
        .expect("crates/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let manifest = read(&dir.join("Cargo.toml"));
        // The package's name: the first `name =` of the manifest, under [package].
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("{}: no package name", dir.display()));
        if !checked.contains(&name.as_str()) || !tables.iter().any(|(t, _)| *t == name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "crates without a ```layers block in ARCHITECTURE.md and a test here: {missing:?}"
    );
}

// The checker itself, on made-up sources against the real vmss-sync table.

fn sync_rows() -> Vec<Row> {
    let mut tables = architecture();
    let i = tables
        .iter()
        .position(|(n, _)| n == "vmss-sync")
        .expect("vmss-sync table");
    tables.swap_remove(i).1
}

/// The top-level modules of the table's rows (what the crate's files would give).
fn top(rows: &[Row]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|r| r.module.first().cloned())
        .collect()
}

fn m(s: &str) -> Vec<String> {
    split_module(s)
}

#[test]
fn a_forbidden_use_line_is_reported_with_file_line_and_direction() {
    let rows = sync_rows();
    let src = "//! doc\nuse crate::model::Found;\nuse crate::daemon::Daemon;\n";
    let v = file_violations(&rows, "src/plan.rs", &m("plan"), src, None, &top(&rows));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("src/plan.rs:3: plan → daemon (crate::daemon::Daemon)"),
        "{v:?}"
    );
}

#[test]
fn a_forbidden_import_inside_a_multi_line_group_is_found_at_its_line() {
    let rows = sync_rows();
    let src =
        "use crate::{\n    model::Found,\n    reconcile::{\n        Mode, CycleReport},\n};\n";
    let v = file_violations(
        &rows,
        "src/config/mod.rs",
        &m("config"),
        src,
        None,
        &top(&rows),
    );
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].starts_with("src/config/mod.rs:4: config → reconcile (crate::reconcile::Mode)"),
        "{v:?}"
    );
}

#[test]
fn an_inline_path_in_code_is_an_import_too() {
    let rows = sync_rows();
    let src = "fn f() -> u32 {\n    let x = crate::metrics::secs(d);\n    x\n}\n";
    let v = file_violations(&rows, "src/net.rs", &m("net"), src, None, &top(&rows));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("src/net.rs:2: net → metrics"), "{v:?}");
}

#[test]
fn super_paths_resolve_from_the_file_and_its_inline_modules() {
    let rows = sync_rows();
    // route_server may use its parent and azure_common, not its sibling nginx_plus.
    let src = "use super::azure_common::ip_of;\nuse super::{Target, nginx_plus::NginxPlus};\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::haproxy_runtime::X;\n}\n";
    let v = file_violations(
        &rows,
        "src/target/route_server.rs",
        &m("target::route_server"),
        src,
        None,
        &top(&rows),
    );
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v[0].contains(":2: target::route_server → target::nginx_plus"),
        "{v:?}"
    );
    assert!(
        v[1].contains(":6: target::route_server → target::haproxy_runtime"),
        "{v:?}"
    );
}

#[test]
fn comments_strings_and_char_literals_are_not_imports() {
    let src = "// use crate::daemon;\n/* crate::daemon::x */\nconst S: &str = \"crate::daemon::x\";\nconst R: &str = r#\"crate::daemon\"#;\nconst C: char = '{';\nfn f<'a>(x: &'a str) {}\nuse crate::model::Found;\n";
    let named = named_paths(src, &m("plan"), None);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0].segments, ["crate", "model", "Found"]);
    assert_eq!(named[0].line, 7);
}

#[test]
fn a_table_that_lets_a_module_import_one_listed_below_it_is_refused() {
    let rows = parse_tables("```layers t\nmodel:\nplan: model reconcile\nreconcile: plan\n```\n")
        .remove(0)
        .1;
    let p = table_problems(&rows);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("plan may import reconcile, which is not a module listed above it"),
        "{p:?}"
    );
}

#[test]
fn a_module_missing_from_the_table_and_a_path_into_it_are_reported() {
    let rows = sync_rows();
    let mut top = top(&rows);
    top.insert("gossip".to_string());
    let v = file_violations(
        &rows,
        "src/gossip.rs",
        &m("gossip"),
        "use crate::model::Found;\n",
        None,
        &top,
    );
    assert_eq!(
        v,
        ["src/gossip.rs: module gossip is not in the layering table"]
    );
    let v = file_violations(
        &rows,
        "src/daemon.rs",
        &m("daemon"),
        "use crate::gossip::Watch;\n",
        None,
        &top,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("src/daemon.rs:1: daemon names crate::gossip::Watch, which is in no row"),
        "{v:?}"
    );
}

#[test]
fn an_escaped_quote_char_literal_does_not_unbalance_the_braces() {
    // Read wrongly, `'\''` would leave a quote that turns `','` into a literal and
    // counts the `'{'` as a brace: `use self::…` would seem to be inside `mod inner`.
    let src = "mod inner {\n    const B: [char; 2] = ['\\'','{'];\n}\nuse self::x::Y;\n";
    let named = named_paths(src, &m("plan"), None);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0].line, 4);
    assert_eq!(named[0].scope, ["plan"]);
}

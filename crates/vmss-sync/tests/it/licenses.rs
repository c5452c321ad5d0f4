//! Every crate in the workspace's dependency graph is under a permissive licence.
//!
//! Reads `cargo metadata --format-version 1 --filter-platform x86_64-unknown-linux-gnu`
//! (the packages Cargo resolved for the workspace members on Linux: normal, build and dev
//! dependencies), walks the resolve graph from the workspace members and checks each
//! package's SPDX licence expression against [`ALLOWED`]: an `OR` needs one allowed side,
//! an `AND` both, `A WITH exception` needs `A` and the exception allowed. A package with no
//! `license` field (only a `license-file`) fails: its terms need reading by a person.
//! The test prints how many packages carry each expression.
//!
//! Why not `cargo deny`: it is not installed here, it takes minutes to compile on the two
//! cores the test run has, and its other half, the advisory check, needs the RustSec
//! advisory database cloned from GitHub, which the test machines cannot reach. Licences
//! are what can be checked offline, from what Cargo already knows, so that is what this
//! test does.

// Tests may unwrap: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

/// Licences every crate may use. Each is permissive: it allows use, modification and
/// redistribution in a binary under other terms, asking at most for the notice.
const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    // The Unicode data licence of the ICU4X crates (under url's IDNA) and unicode-ident.
    "Unicode-3.0",
    "Zlib",
    // webpki-roots: Mozilla's root certificates as data (reqwest's built-in roots).
    "CDLA-Permissive-2.0",
];

/// SPDX licence exceptions that only add permissions.
const ALLOWED_EXCEPTIONS: &[&str] = &["LLVM-exception"];

#[derive(Debug, PartialEq)]
enum Expr {
    License(String),
    With(String, String),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Parses an SPDX licence expression; `/` is read as `OR`, as crates.io did in its early
/// years (`MIT/Apache-2.0`).
fn parse(expr: &str) -> Result<Expr, String> {
    let spaced = expr
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let e = parse_or(&tokens, &mut pos)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?} in {expr:?}", tokens[pos]));
    }
    Ok(e)
}

fn parse_or(t: &[&str], pos: &mut usize) -> Result<Expr, String> {
    let mut left = parse_and(t, pos)?;
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        left = Expr::Or(Box::new(left), Box::new(parse_and(t, pos)?));
    }
    Ok(left)
}

fn parse_and(t: &[&str], pos: &mut usize) -> Result<Expr, String> {
    let mut left = parse_with(t, pos)?;
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        left = Expr::And(Box::new(left), Box::new(parse_with(t, pos)?));
    }
    Ok(left)
}

fn parse_with(t: &[&str], pos: &mut usize) -> Result<Expr, String> {
    let token = *t.get(*pos).ok_or("expression ends too early")?;
    *pos += 1;
    let id = match token {
        "(" => {
            let inner = parse_or(t, pos)?;
            if t.get(*pos) != Some(&")") {
                return Err("unclosed (".into());
            }
            *pos += 1;
            return Ok(inner);
        }
        ")" | "AND" | "OR" | "WITH" => return Err(format!("unexpected {token:?}")),
        id => id.to_string(),
    };
    if t.get(*pos) == Some(&"WITH") {
        let exception = t.get(*pos + 1).ok_or("WITH without an exception")?;
        *pos += 2;
        return Ok(Expr::With(id, (*exception).to_string()));
    }
    Ok(Expr::License(id))
}

fn allowed(e: &Expr) -> bool {
    match e {
        Expr::License(id) => ALLOWED.contains(&id.as_str()),
        Expr::With(id, exc) => {
            ALLOWED.contains(&id.as_str()) && ALLOWED_EXCEPTIONS.contains(&exc.as_str())
        }
        Expr::And(a, b) => allowed(a) && allowed(b),
        Expr::Or(a, b) => allowed(a) || allowed(b),
    }
}

/// Whether a crate under `license` (its Cargo.toml field) may be used.
fn permitted(license: &str) -> Result<bool, String> {
    parse(license).map(|e| allowed(&e))
}

#[test]
fn license_expressions_are_parsed_and_judged_as_spdx_says() {
    for ok in [
        "MIT",
        "MIT OR Apache-2.0",
        "MIT/Apache-2.0",
        "Apache-2.0 / MIT",
        "(MIT OR Apache-2.0) AND Unicode-3.0",
        "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
        "Apache-2.0 AND ISC",
        "GPL-3.0-only OR MIT",
    ] {
        assert_eq!(permitted(ok), Ok(true), "{ok}");
    }
    for refused in [
        "GPL-3.0-only",
        "MIT AND GPL-3.0-only",
        "(MIT OR Apache-2.0) AND LGPL-2.1-or-later",
        "GPL-2.0-only WITH Classpath-exception-2.0",
        "Apache-2.0 WITH Some-unknown-exception",
        "MPL-2.0",
        "Unlicense",
    ] {
        assert_eq!(permitted(refused), Ok(false), "{refused}");
    }
    for malformed in ["", "MIT OR", "(MIT", "MIT)", "AND MIT", "MIT WITH"] {
        assert!(permitted(malformed).is_err(), "{malformed:?}");
    }
}

#[test]
fn every_dependency_of_the_workspace_is_under_a_permissive_license() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");

    let packages: HashMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("package id"), p))
        .collect();
    let deps: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| {
            let to = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .map(|d| d["pkg"].as_str().expect("dep pkg"))
                .collect();
            (n["id"].as_str().expect("node id"), to)
        })
        .collect();

    // Every package reachable from a workspace member.
    let mut reached = BTreeSet::new();
    let mut todo: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|m| m.as_str().expect("member id"))
        .collect();
    assert!(!todo.is_empty(), "no workspace members");
    while let Some(id) = todo.pop() {
        if reached.insert(id) {
            todo.extend(deps.get(id).into_iter().flatten());
        }
    }

    let mut per_license: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for id in &reached {
        let p = packages[id];
        let name = format!(
            "{} {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?")
        );
        match p["license"].as_str() {
            None => problems.push(format!(
                "{name}: no SPDX `license` (license-file: {})",
                p["license_file"]
            )),
            Some(license) => {
                *per_license.entry(license).or_default() += 1;
                match permitted(license) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!("{name}: {license} is not allowed")),
                    Err(e) => problems.push(format!("{name}: cannot read {license:?}: {e}")),
                }
            }
        }
    }

    println!("{} packages in the dependency graph:", reached.len());
    let mut counts: Vec<_> = per_license.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (license, n) in counts {
        println!("{n:5}  {license}");
    }
    // The graph is not trivially small: the walk found the real dependencies.
    assert!(
        reached.len() > 50,
        "only {} packages reached: {reached:?}",
        reached.len()
    );
    assert!(
        problems.is_empty(),
        "crates under licences not on the allow-list (tests/it/licenses.rs):\n{}",
        problems.join("\n")
    );
}

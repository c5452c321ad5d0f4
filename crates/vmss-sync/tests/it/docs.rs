//! The documentation against the code: every configuration key the parser accepts is in the
//! reference (`docs/configuration.md`) and every key the reference lists is accepted; every
//! YAML block marked as a complete configuration passes `vmss-sync validate`; the README stays
//! under 12 KB; relative links (and their `#anchors`) in README.md and docs/ lead somewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The line before a fenced `yaml` block that says "this is a whole configuration file".
const COMPLETE_MARKER: &str = "<!-- complete-config -->";
/// Starts a section of the reference: `<!-- keys: upstreams.tags -->`.
const KEYS_MARKER: &str = "<!-- keys: ";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// README.md and every `.md` under docs/, as paths relative to the repository root.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().expect("file name").to_owned();
            if p.is_dir() {
                walk(&p, &rel.join(&name), out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(rel.join(&name));
            }
        }
    }
    let root = repo_root();
    let mut files = vec![PathBuf::from("README.md")];
    walk(&root.join("docs"), Path::new("docs"), &mut files);
    files
}

/// The lines of `text` outside fenced code blocks, with their line numbers (from 1).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") || t.starts_with("~~~") => fence = Some(&t[..3]),
            None => out.push((i + 1, line)),
        }
    }
    out
}

/// `(section, key)` of every table row `| `key` | …` after a `<!-- keys: SECTION -->` marker,
/// up to the next marker or heading.
fn documented_keys(reference: &str) -> BTreeSet<(String, String)> {
    let mut section: Option<String> = None;
    let mut keys = BTreeSet::new();
    for (_, line) in prose_lines(reference) {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(KEYS_MARKER) {
            section = Some(rest.trim_end_matches("-->").trim().to_owned());
        } else if t.starts_with('#') {
            section = None;
        } else if let (Some(s), Some(cell)) = (&section, t.strip_prefix("| `")) {
            if let Some(end) = cell.find('`') {
                keys.insert((s.clone(), cell[..end].to_owned()));
            }
        }
    }
    keys
}

#[test]
fn every_configuration_key_is_in_the_reference_and_every_documented_key_exists() {
    let reference = read(&repo_root().join("docs/configuration.md"));
    let documented = documented_keys(&reference);
    let accepted: BTreeSet<(String, String)> = vmss_sync::config::all_keys()
        .into_iter()
        .map(|(s, k)| (s, k.to_owned()))
        .collect();
    assert!(
        accepted.len() > 50,
        "too few keys from the parser: {accepted:?}"
    );
    let missing: Vec<String> = accepted
        .difference(&documented)
        .map(|(s, k)| format!("{s}: {k}"))
        .collect();
    let stale: Vec<String> = documented
        .difference(&accepted)
        .map(|(s, k)| format!("{s}: {k}"))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/configuration.md is out of step with the parser's key tables.\n\
         Keys the parser accepts but the reference does not list (add a row `| `key` | … |` \
         under the section's `<!-- keys: SECTION -->` marker):\n  {}\n\
         Keys the reference lists but the parser does not accept:\n  {}",
        missing.join("\n  "),
        stale.join("\n  ")
    );
}

/// Every fenced block right after the complete-config marker: the line of its fence (from 1)
/// and its text.
fn complete_configs(file: &Path, text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != COMPLETE_MARKER {
            continue;
        }
        let open = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
        assert!(
            open.starts_with("```yaml"),
            "{}:{}: {COMPLETE_MARKER} must be followed by a ```yaml block, not {open:?}",
            file.display(),
            i + 1
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| l.trim() != "```")
            .copied()
            .collect();
        out.push((i + 2, body.join("\n") + "\n"));
    }
    out
}

/// `validate`'s messages with the temporary file's `path:line:` turned into the page's own
/// `page:line:`, so that a failure points at the line to fix.
fn in_page_terms(output: &str, temp: &Path, page: &Path, fence: usize) -> String {
    let prefix = format!("{}:", temp.display());
    output
        .lines()
        .map(|l| {
            let Some(rest) = l.strip_prefix(&prefix) else {
                return l.to_owned();
            };
            match rest.split_once(':').map(|(n, r)| (n.parse::<usize>(), r)) {
                Some((Ok(n), r)) => format!("{}:{}:{r}", page.display(), fence + n),
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names of the `${VAR}`s of a block (given a placeholder value when validating).
fn variables(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        if let Some(end) = rest.find('}') {
            vars.insert(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    vars
}

#[test]
fn every_complete_configuration_in_the_docs_passes_validate() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in doc_files() {
        for (fence, yaml) in complete_configs(&file, &read(&root.join(&file))) {
            let path = dir.path().join(format!("config-{checked}.yaml"));
            fs::write(&path, &yaml).expect("write config");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmss-sync"));
            cmd.arg("validate").arg("--config").arg(&path);
            for var in variables(&yaml) {
                cmd.env(var, "placeholder-value");
            }
            let out = cmd.output().expect("run vmss-sync validate");
            if !out.status.success() {
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                failures.push(format!(
                    "{}:{fence}: the block does not validate (exit {:?}):\n{}",
                    file.display(),
                    out.status.code(),
                    in_page_terms(&said, &path, &file, fence)
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The reference, the quick start and every target page carry one at least.
    assert!(
        checked >= 10,
        "only {checked} complete configurations found"
    );
}

#[test]
fn readme_is_under_12_kb() {
    let size = read(&repo_root().join("README.md")).len();
    assert!(
        size < 12_000,
        "README.md is {size} bytes; move detail into docs/"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to
/// `-`; repeated anchors get `-1`, `-2`, …
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Every `](target)` link in the prose of `text`, with its line.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((n, rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
    }
    out
}

/// `a/b/../c` → `a/c`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[test]
fn relative_links_in_the_docs_lead_to_existing_files_and_headings() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut count = 0;
    for file in doc_files() {
        let text = read(&root.join(&file));
        for (line, link) in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            count += 1;
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().unwrap_or(Path::new("")).join(path))
            };
            let shown = target.to_string_lossy().replace('\\', "/");
            let at = format!("{}:{line}: ({link})", file.display());
            if !root.join(&target).exists() {
                broken.push(format!("{at}: {shown} does not exist"));
                continue;
            }
            if let (Some(a), true) = (anchor, shown.ends_with(".md")) {
                if !anchors(&read(&root.join(&target))).contains(a) {
                    broken.push(format!("{at}: {shown} has no heading #{a}"));
                }
            }
        }
    }
    assert!(count > 20, "only {count} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

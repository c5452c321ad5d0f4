//! The documentation against the code: every configuration key the parser accepts is in the
//! reference (`docs/configuration.md`) and every key the reference lists is accepted; every
//! YAML block marked as a complete configuration passes `vmss-sync validate`; the README stays
//! under 12 KB; relative links (and their `#anchors`) in README.md and docs/ lead somewhere;
//! metric names, types and labels match what `/metrics` serves and observability.md lists
//! every served family; the docs quote only messages the source writes; every
//! `vmss-sync …` command line parses; role definitions match packaging/azure-roles/; the
//! repository paths named exist.

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

/// Every `.rs` file under `dir`, recursively.
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

/// The library's and binary's source as one text, with string continuations (`\` at the end
/// of a line and the next line's indentation) joined and `\"` unescaped, so that a message
/// split over two source lines reads as the user sees it.
fn source_text() -> String {
    let mut files = Vec::new();
    rust_files(&repo_root().join("crates/vmss-sync/src"), &mut files);
    let mut all = String::new();
    for f in files {
        let text = read(&f);
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            match line.strip_suffix('\\') {
                Some(head) => {
                    all.push_str(head);
                    if let Some(next) = lines.peek_mut() {
                        *next = next.trim_start();
                    }
                }
                None => {
                    all.push_str(line);
                    all.push('\n');
                }
            }
        }
    }
    all.replace("\\\"", "\"")
}

/// Every inline code span (`` `…` ``) of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Words of a quoted message that stand for a value: `NAME`, `STATUS`, `HTTP`, `N`, `404`,
/// `30s` (upper-case words, and words that start with a digit). `…` is one too.
fn is_placeholder(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_digit())
        || word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The literal pieces of a quoted message: the text between its placeholders, without
/// the punctuation and spaces at either end, keeping only pieces with two letters or more.
fn literal_pieces(message: &str) -> Vec<String> {
    let message = message.replace("...", "…");
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut word = String::new();
    let flush_word = |word: &mut String, current: &mut String, pieces: &mut Vec<String>| {
        if is_placeholder(word) {
            pieces.push(std::mem::take(current));
        } else {
            current.push_str(word);
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        flush_word(&mut word, &mut current, &mut pieces);
        if c == '…' {
            pieces.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    flush_word(&mut word, &mut current, &mut pieces);
    pieces.push(current);
    // A message is a chain of `context: cause`; each link is written by its own string.
    pieces
        .iter()
        .flat_map(|p| p.split(": "))
        .map(|p| {
            p.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                .to_owned()
        })
        .filter(|p| p.chars().filter(|c| c.is_alphabetic()).count() >= 2)
        .collect()
}

/// Words in the docs' messages that other programs write, not vmss-sync: they
/// are taken out of a message before its pieces are looked for in the source.
const FOREIGN_WORDS: [&str; 9] = [
    // An example address.
    "unix:/run/haproxy/admin.sock",
    // rustls's Display of an untrusted, misnamed or expired certificate, of the server's
    // alert and of a plain-http answer.
    "invalid peer certificate: UnknownIssuer",
    "invalid peer certificate: NotValidForName",
    "invalid peer certificate: Expired",
    "received fatal alert",
    "received corrupt message",
    // The NGINX Plus API's own error texts and codes.
    "upstream not found (UpstreamNotFound)",
    "(UpstreamStatic)",
    "method disabled (MethodDisabled)",
];

/// The messages a page quotes: the code spans of its `###` headings, the first
/// cell of the rows of its tables whose first column is `Message` or `Words`, and every code
/// span of its prose that reads like a message (three words or more, one `: ` at least).
fn quoted_messages(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // The page with its fenced blocks blanked, so that lines keep their numbers.
    let mut prose = vec![""; text.lines().count()];
    for (n, line) in prose_lines(text) {
        prose[n - 1] = line;
    }
    for (n, span) in prose_spans(&(prose.join("\n") + "\n"), 1) {
        if span.contains(": ") && span.split_whitespace().count() >= 3 {
            out.push((n, span));
        }
    }
    let mut in_table = false;
    for (n, line) in prose_lines(text) {
        let t = line.trim();
        if t.starts_with("### ") {
            out.extend(code_spans(t).into_iter().map(|s| (n, s.to_owned())));
        }
        if !t.starts_with('|') {
            in_table = false;
            continue;
        }
        let first = t.trim_matches('|').split('|').next().unwrap_or("").trim();
        if first == "Message" || first == "Words" {
            in_table = true;
        } else if in_table && !first.starts_with("---") {
            out.extend(code_spans(first).into_iter().map(|s| (n, s.to_owned())));
        }
    }
    out
}

/// Each source line split at its `{…}` (the format arguments): the literal chunks between.
fn format_templates(source: &str) -> Vec<Vec<&str>> {
    source
        .lines()
        .filter(|l| l.contains('{') && l.contains('"'))
        .map(|line| {
            let mut chunks = Vec::new();
            let mut rest = line;
            while let Some(open) = rest.find('{') {
                let Some(close) = rest[open..].find('}') else {
                    break;
                };
                chunks.push(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            chunks.push(rest);
            chunks
        })
        .filter(|c| c.len() > 1)
        .collect()
}

/// Longest text a `{…}` of a template stands for when a quoted piece is matched against it.
const MAX_ARGUMENT: usize = 40;

/// Whether `piece` reads as a stretch of `chunks` with each `{…}` between them filled by at
/// most [`MAX_ARGUMENT`] bytes (`a key of N bytes: the most a key may hold` against
/// `{what} of {} bytes: the most {what} may hold is {limit} bytes`), with at least half of
/// the piece matched by the chunks' literal text.
fn fits_template(piece: &str, chunks: &[&str]) -> bool {
    fn rest_fits(rest: &str, chunks: &[&str], literal: usize, whole: usize) -> bool {
        let Some((chunk, later)) = chunks.split_first() else {
            return false;
        };
        for (w, _) in rest.char_indices().chain([(rest.len(), ' ')]) {
            if w > MAX_ARGUMENT {
                break;
            }
            let after = &rest[w..];
            if !after.is_empty() && chunk.starts_with(after) {
                return (literal + after.len()) * 2 >= whole;
            }
            if !chunk.is_empty()
                && after.starts_with(chunk)
                && rest_fits(&after[chunk.len()..], later, literal + chunk.len(), whole)
            {
                return true;
            }
        }
        false
    }
    // The piece starts inside a chunk, or inside the `{…}` before chunk `j`.
    let in_chunk = chunks.iter().enumerate().any(|(i, chunk)| {
        chunk.char_indices().any(|(k, _)| {
            let head = &chunk[k..];
            piece.len() > head.len()
                && piece.starts_with(head)
                && rest_fits(
                    &piece[head.len()..],
                    &chunks[i + 1..],
                    head.len(),
                    piece.len(),
                )
        })
    });
    in_chunk || (1..chunks.len()).any(|j| rest_fits(piece, &chunks[j..], 0, piece.len()))
}

#[test]
fn every_message_the_docs_quote_is_written_by_the_source() {
    let source = source_text();
    let templates = format_templates(&source);
    let mut missing = Vec::new();
    let mut count = 0;
    for page in doc_files() {
        let text = read(&repo_root().join(&page));
        let messages = quoted_messages(&text);
        count += messages.len();
        for (line, message) in &messages {
            let mut ours = message.clone();
            for foreign in FOREIGN_WORDS {
                ours = ours.replace(foreign, "…");
            }
            for piece in literal_pieces(&ours) {
                if !source.contains(&piece) && !templates.iter().any(|t| fits_template(&piece, t)) {
                    missing.push(format!(
                        "{}:{line}: `{message}`: {piece:?} is in no string of crates/vmss-sync/src",
                        page.display()
                    ));
                }
            }
        }
    }
    println!("{count} quoted messages checked");
    assert!(count >= 60, "only {count} quoted messages found");
    assert!(
        missing.is_empty(),
        "messages quoted in the docs that the code does not write (fix the \
         page to say what the code says):\n{}",
        missing.join("\n")
    );
}

/// What `/metrics` serves (classic format) once a daemon has run a cycle of one upstream
/// that held a condition, and sent one ARM request: family name → (type, label names of
/// its series).
fn served_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    use std::time::Duration;
    use vmss_sync::metrics::{Format, Metrics};
    use vmss_sync::reconcile::{CycleReport, Mode, UpstreamOutcome};
    let m = Metrics::new();
    m.declare_upstreams([("web", vmss_sync::model::UpstreamKind::Http, "nginx-plus")]);
    let outcome = UpstreamOutcome {
        upstream: "web".into(),
        template: None,
        target: "nginx-plus",
        kind: vmss_sync::model::UpstreamKind::Http,
        group: "web-vmss".into(),
        plan: Some(vmss_sync::plan::Plan::default()),
        hold: None,
        report: None,
        error: None,
        conditions: vec!["unusable"],
        observed: 2,
        desired: 2,
        active: 2,
        draining: 0,
        duration: Duration::from_millis(20),
    };
    m.record_cycle(
        &CycleReport {
            outcomes: vec![outcome],
            duration: Duration::from_millis(25),
        },
        Mode::Apply,
    );
    let mut arm = vmss_sync::azure::arm::ArmStats::default();
    arm.by_operation
        .insert("VirtualMachineScaleSets_Get".into(), 1);
    arm.by_status.insert(200, 1);
    arm.by_operation_status
        .insert(("VirtualMachineScaleSets_Get".into(), 200), 1);
    m.record_arm(&arm);
    let text = m.encode_as(Format::Classic);
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            families.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, labels) = match line.split_once('{') {
            Some((s, rest)) => (s, rest.split_once('}').map(|(l, _)| l).unwrap_or("")),
            None => (line.split(' ').next().unwrap_or(""), ""),
        };
        let family = [series, series.trim_end_matches("_bucket")]
            .into_iter()
            .chain(["_sum", "_count"].map(|s| series.trim_end_matches(s)))
            .find(|f| families.contains_key(*f));
        let Some(family) = family else { continue };
        let entry = families.get_mut(family).expect("family");
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let name = pair.split('=').next().unwrap_or("").trim_matches(',');
            if name != "le" {
                entry.1.insert(name.to_owned());
            }
        }
    }
    families
}

/// The metric names a page mentions: `vmss_sync_…` and `process_…` words.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["vmss_sync_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = text.len() - rest.len() + i;
            let boundary = text[..before]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let word: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + word.len()..];
            if boundary && word.len() > prefix.len() {
                out.insert(word);
            }
        }
    }
    out
}

/// The family of a documented series name: `x_bucket`, `x_sum` and `x_count` of a
/// histogram `x` are `x`.
fn family_of<'a>(word: &'a str, served: &BTreeMap<String, (String, BTreeSet<String>)>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = word.strip_suffix(suffix) {
            if served.get(base).is_some_and(|(k, _)| k == "histogram") {
                return base;
            }
        }
    }
    word
}

#[test]
fn every_metric_the_docs_name_is_served_and_observability_md_lists_every_served_one() {
    let root = repo_root();
    let served = served_metrics();
    assert!(
        served
            .keys()
            .filter(|k| k.starts_with("vmss_sync_"))
            .count()
            > 30,
        "too few metric families served: {served:?}"
    );
    let mut unknown = Vec::new();
    for file in doc_files() {
        for word in metric_words(&read(&root.join(&file))) {
            let family = family_of(&word, &served);
            // process_max_fds is absent when the limit is unlimited, as the page says.
            if !served.contains_key(family) && family != "process_max_fds" {
                unknown.push(format!("{}: {word}", file.display()));
            }
        }
    }
    let reference = read(&root.join("docs/observability.md"));
    let listed = metric_words(&reference);
    let unlisted: Vec<&String> = served.keys().filter(|k| !listed.contains(*k)).collect();
    assert!(
        unknown.is_empty() && unlisted.is_empty(),
        "metric names in the docs that /metrics does not serve:\n  {}\n\
         metrics served that docs/observability.md does not list:\n  {}",
        unknown.join("\n  "),
        unlisted
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Every row `| `metric` | … |` of a table with a `labels` column, in every page: the metric,
/// its type (when the table has a `type` column) and its label names (the code spans of the
/// labels cell outside parentheses), with the page and line.
fn documented_metric_rows() -> Vec<(String, String, Option<String>, BTreeSet<String>)> {
    let root = repo_root();
    let mut rows = Vec::new();
    for file in doc_files() {
        let text = read(&root.join(&file));
        let mut columns: Option<(Option<usize>, usize)> = None;
        for (n, line) in prose_lines(&text) {
            let t = line.trim();
            if !t.starts_with('|') {
                columns = None;
                continue;
            }
            let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
            let lower: Vec<String> = cells.iter().map(|c| c.to_lowercase()).collect();
            if let Some(labels) = lower.iter().position(|c| c == "labels") {
                columns = Some((lower.iter().position(|c| c == "type"), labels));
                continue;
            }
            let Some((type_col, labels_col)) = columns else {
                continue;
            };
            let Some(name) = cells[0]
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|c| c.starts_with("vmss_sync_") || c.starts_with("process_"))
            else {
                continue;
            };
            let mut depth = 0;
            let mut outside = String::new();
            for c in cells.get(labels_col).copied().unwrap_or("").chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    c if depth == 0 => outside.push(c),
                    _ => {}
                }
            }
            let labels = code_spans(&outside)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let kind = type_col
                .and_then(|i| cells.get(i))
                .map(|c| c.split_whitespace().next().unwrap_or("").to_owned());
            rows.push((
                format!("{}:{n}", file.display()),
                name.to_owned(),
                kind,
                labels,
            ));
        }
    }
    rows
}

#[test]
fn every_metric_table_row_has_the_served_type_and_labels() {
    let served = served_metrics();
    let rows = documented_metric_rows();
    assert!(rows.len() > 30, "only {} metric rows found", rows.len());
    let mut wrong = Vec::new();
    let mut labels_checked = 0;
    for (at, name, kind, labels) in &rows {
        let Some((served_kind, served_labels)) = served.get(name) else {
            if name != "process_max_fds" {
                wrong.push(format!("{at}: {name} is not served"));
            }
            continue;
        };
        if let Some(k) = kind {
            if k != served_kind {
                wrong.push(format!(
                    "{at}: {name} is a {served_kind}, the page says {k}"
                ));
            }
        }
        // A family without series yet (labelled by what the first request brings) shows no
        // label names; the others must show exactly the documented ones.
        if !served_labels.is_empty() || labels.is_empty() {
            labels_checked += 1;
            if labels != served_labels {
                wrong.push(format!(
                    "{at}: {name} has the labels {served_labels:?}, the page says {labels:?}"
                ));
            }
        }
    }
    println!(
        "{} metric rows, {labels_checked} label sets compared",
        rows.len()
    );
    assert!(
        labels_checked > 20,
        "only {labels_checked} label sets compared"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The subcommands of `vmss-sync` a doc may show.
const SUBCOMMANDS: [&str; 5] = ["run", "once", "plan", "validate", "generate"];

/// The arguments of every `vmss-sync …` command line in `text`: in code blocks, each line
/// (with `\` continuations joined); in prose, each code span. `vmss-sync` counts as the
/// command when it (or a path ending in `/vmss-sync`, or `ExecStart=` one) opens the
/// command, after an optional `$` or `sudo`, and is followed by a subcommand or a flag.
/// The arguments end at a comment, a pipe, a redirection or `&&`; `[` `]` around an
/// optional part are dropped and `a|b` alternatives give the first.
fn command_lines(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut candidates: Vec<(usize, String)> = Vec::new();
    let mut fence: Option<&str> = None;
    let mut joined = String::new();
    let mut prose = String::new();
    let mut prose_start = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => match line.trim_end().strip_suffix('\\') {
                Some(head) => joined.push_str(head),
                None => {
                    joined.push_str(line);
                    candidates.push((i + 1, std::mem::take(&mut joined)));
                }
            },
            None if t.starts_with("```") || t.starts_with("~~~") => {
                fence = Some(&t[..3]);
                for (n, span) in prose_spans(&prose, prose_start) {
                    candidates.push((n, span));
                }
                prose.clear();
            }
            None => {
                if prose.is_empty() {
                    prose_start = i + 1;
                }
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    for (n, span) in prose_spans(&prose, prose_start) {
        candidates.push((n, span));
    }
    let mut out = Vec::new();
    for (n, candidate) in candidates {
        let words: Vec<&str> = candidate.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let is_command = *w == "vmss-sync" || w.ends_with("/vmss-sync");
            let opens = i == 0 || matches!(words[i - 1], "$" | "sudo" | "exec");
            let Some(next) = words.get(i + 1) else {
                continue;
            };
            if !(is_command && opens && (SUBCOMMANDS.contains(next) || next.starts_with('-'))) {
                continue;
            }
            let args: Vec<String> = words[i + 1..]
                .iter()
                .take_while(|a| {
                    !(a.starts_with('#') || matches!(**a, "|" | ">" | "&&" | ";" | "&"))
                })
                .map(|a| a.trim_matches(|c| c == '[' || c == ']'))
                .filter(|a| !a.is_empty())
                .map(|a| a.split('|').next().unwrap_or(a).to_owned())
                .collect();
            out.push((n, args));
        }
    }
    out
}

/// The code spans of a run of prose lines that starts at line `first`, each with its line.
fn prose_spans(prose: &str, first: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut line = first;
    for (i, part) in prose.split('`').enumerate() {
        if i % 2 == 1 {
            out.push((line, part.replace('\n', " ")));
        }
        line += part.matches('\n').count();
    }
    out
}

#[test]
fn every_vmss_sync_command_line_in_the_docs_is_accepted_by_the_parser() {
    let root = repo_root();
    let mut seen = BTreeSet::new();
    let mut refused = Vec::new();
    for file in doc_files() {
        for (line, args) in command_lines(&read(&root.join(&file))) {
            if !seen.insert(args.clone()) {
                continue;
            }
            // `--help` at the end: clap checks every argument before it and then prints
            // help instead of running, so nothing is read or started.
            let out = Command::new(env!("CARGO_BIN_EXE_vmss-sync"))
                .args(&args)
                .arg("--help")
                .output()
                .expect("run vmss-sync");
            if !out.status.success() {
                refused.push(format!(
                    "{}:{line}: vmss-sync {}: exit {:?}: {}",
                    file.display(),
                    args.join(" "),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    println!("{} distinct command lines checked", seen.len());
    assert!(
        seen.len() >= 10,
        "only {} command lines found: {seen:?}",
        seen.len()
    );
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

/// `Actions` and `DataActions` of a role definition, lower case (Azure compares them so).
fn role_actions(role: &serde_json::Value) -> BTreeSet<String> {
    ["Actions", "DataActions"]
        .iter()
        .filter_map(|k| role[*k].as_array())
        .flatten()
        .filter_map(|a| a.as_str())
        .map(str::to_ascii_lowercase)
        .collect()
}

#[test]
fn every_role_and_action_in_the_docs_matches_a_packaged_role() {
    let root = repo_root();
    let dir = root.join("packaging/azure-roles");
    let mut packaged = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("packaging/azure-roles") {
        let path = entry.expect("entry").path();
        let role: serde_json::Value =
            serde_json::from_str(&read(&path)).expect("role definition is JSON");
        packaged.insert(
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
            role_actions(&role),
        );
    }
    let discovery = packaged
        .get("vmss-sync-discovery.json")
        .expect("the discovery role")
        .clone();
    let every_action: BTreeSet<&String> = packaged.values().flatten().collect();
    let mut blocks = 0;
    let mut wrong = Vec::new();
    for file in doc_files() {
        let text = read(&root.join(&file));
        // Role definitions shown whole: the actions of one packaged role, or of one
        // without the discovery actions (a page about a target shows only its own).
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim() != "```json" {
                continue;
            }
            let body: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim() != "```")
                .copied()
                .collect();
            let Ok(role) = serde_json::from_str::<serde_json::Value>(&body.join("\n")) else {
                continue;
            };
            if role.get("Actions").is_none() {
                continue;
            }
            blocks += 1;
            let shown = role_actions(&role);
            let with_discovery: BTreeSet<String> = shown.union(&discovery).cloned().collect();
            let fits = packaged
                .values()
                .any(|p| shown.is_subset(p) && p.is_subset(&with_discovery));
            if !fits {
                wrong.push(format!(
                    "{}:{}: the role {:?} matches no file of packaging/azure-roles/ (with or \
                     without the discovery actions): {shown:?}",
                    file.display(),
                    i + 1,
                    role["Name"]
                ));
            }
        }
        // Any action named in full must be in some packaged role.
        for span in code_spans(&text) {
            let a = span.to_ascii_lowercase();
            if a.starts_with("microsoft.")
                && ["/read", "/write", "/delete", "/action"]
                    .iter()
                    .any(|s| a.ends_with(s))
                && !every_action.contains(&a)
            {
                wrong.push(format!(
                    "{}: `{span}` is in no role of packaging/azure-roles/",
                    file.display()
                ));
            }
        }
    }
    println!("{blocks} role definitions compared");
    assert!(
        blocks >= 3,
        "only {blocks} role definitions found in the docs"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.len() >= part.len() && rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let root = repo_root();
    let mut checked = 0;
    let mut missing = Vec::new();
    for file in doc_files() {
        for (n, line) in prose_lines(&read(&root.join(&file))) {
            for span in code_spans(line) {
                let span = span.trim_start_matches("./");
                let path = if let Some(rest) = span.strip_prefix("tests/it/") {
                    format!("crates/vmss-sync/tests/it/{rest}")
                } else if ["packaging/", "crates/", "scripts/", ".ci/"]
                    .iter()
                    .any(|p| span.starts_with(p))
                    && !span.contains(' ')
                {
                    span.to_owned()
                } else {
                    continue;
                };
                checked += 1;
                let full = root.join(&path);
                let (dir, name) = match path.rsplit_once('/') {
                    Some((d, n)) => (root.join(d), n),
                    None => (root.clone(), path.as_str()),
                };
                let found = if name.contains('*') {
                    fs::read_dir(&dir).is_ok_and(|entries| {
                        entries
                            .filter_map(Result::ok)
                            .any(|e| glob_matches(name, &e.file_name().to_string_lossy()))
                    })
                } else {
                    full.exists()
                };
                if !found {
                    missing.push(format!("{}:{n}: `{span}` does not exist", file.display()));
                }
            }
        }
    }
    println!("{checked} repository paths checked");
    assert!(checked > 20, "only {checked} repository paths found");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

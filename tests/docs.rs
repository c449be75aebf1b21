//! The documentation is tested like code: what it links to exists, the configuration reference
//! lists exactly the keys the parser accepts, every example configuration loads, the benchmark
//! figures come from `bench/results/`, and nothing names a path outside the repository.
//!
//! Conventions the tests read (docs/development.md, "Documentation"):
//! - in docs/configuration.md, a table whose first header cell starts with `key` lists
//!   configuration keys: the first `code` span of each row's first cell, under each `code` span
//!   of that header cell (none: from the top), and a table whose first header cell starts with
//!   `annotation` lists pod annotations by their whole name;
//! - every ```json block in README.md and docs/ is a plugin configuration (other JSON: ```text);
//! - in docs/configuration.md, every ```text block lists refusals, each one of the messages in
//!   testdata/config.json (which tests/vectors.rs checks against the parser word for word);
//! - in docs/performance.md, figures live only between `<!-- BEGIN GENERATED` and
//!   `<!-- END GENERATED -->`, written by `bench/bench.py --report-only` from bench/results/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use faas_mesh_filter::annotations;
use faas_mesh_filter::config::{Config, ANY_FUNCTION, OBJECTS};
use faas_mesh_filter::policy::PolicyRules;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents a reader follows: README.md, CHANGELOG.md, CONTRIBUTING.md (when there),
/// everything in docs/, and the benchmark's README.
fn documents() -> Vec<String> {
    let mut docs: Vec<String> = ["README.md", "CHANGELOG.md", "CONTRIBUTING.md"]
        .iter()
        .filter(|f| root().join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let mut in_docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| {
            e.expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    in_docs.sort();
    assert!(in_docs.len() >= 5, "docs/ has only {in_docs:?}");
    docs.extend(in_docs);
    docs.push("bench/README.md".into());
    docs
}

/// One line of a Markdown file, with where it is.
struct Line<'a> {
    number: usize,
    text: &'a str,
    /// `Some(info string)` inside a fenced code block (the fences themselves included).
    fence: Option<&'a str>,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut fence: Option<(&str, &str)> = None; // (marker, info)
    for (i, text) in text.lines().enumerate() {
        let trimmed = text.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => {
                let info = trimmed.trim_start_matches(m).trim();
                fence = Some((m, info));
                out.push(Line {
                    number: i + 1,
                    text,
                    fence: Some(info),
                });
            }
            (Some((m, info)), Some(close)) if close == m && trimmed.trim_end() == m => {
                out.push(Line {
                    number: i + 1,
                    text,
                    fence: Some(info),
                });
                fence = None;
            }
            (f, _) => out.push(Line {
                number: i + 1,
                text,
                fence: f.map(|(_, info)| info),
            }),
        }
    }
    out
}

/// The text with `code spans` removed (links inside them are not links).
fn without_code(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in text.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The `code spans` of a piece of text, in order.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// GitHub's anchor for a heading: the rendered text, lowercased, spaces to '-', everything but
/// letters, digits, '-' and '_' dropped.
fn slug(heading: &str) -> String {
    // Rendered text: link targets and emphasis marks go, code spans keep their text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find("](") {
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c + 1);
        text.push_str(&rest[..open]);
        rest = &rest[close..];
    }
    text.push_str(rest);
    text.chars()
        .filter(|c| !matches!(c, '[' | ']' | '`' | '*'))
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings, as GitHub makes them (a repeated one gets `-1`,
/// `-2`, ...).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in lines(text).iter().filter(|l| l.fence.is_none()) {
        let t = line.text.trim_start();
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !t[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(t[hashes..].trim().trim_end_matches('#').trim());
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Every link target in a Markdown file outside code: `[text](target)`, `![alt](target)` and
/// reference definitions `[label]: target`, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for line in lines(text).iter().filter(|l| l.fence.is_none()) {
        let t = without_code(line.text);
        let mut rest = t.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((line.number, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
        let trimmed = t.trim_start();
        if trimmed.starts_with('[') {
            if let Some(def) = trimmed.find("]: ") {
                let target = trimmed[def + 3..].split_whitespace().next().unwrap_or("");
                out.push((line.number, target.to_string()));
            }
        }
    }
    out
}

/// `dir/rel` without `.` and `..`, or `None` if it leaves the repository.
fn inside_repository(dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    for c in dir.join(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// The problems with every relative link and anchor in `docs` (paths from the repository root).
fn link_problems(docs: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for doc in docs {
        let text = read(doc);
        let dir = Path::new(doc).parent().unwrap_or(Path::new(""));
        for (line, target) in links(&text) {
            let at = format!("{doc}:{line}: link {target:?}");
            if target.is_empty() {
                problems.push(format!("{at}: empty"));
                continue;
            }
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                PathBuf::from(doc)
            } else {
                match inside_repository(dir, path) {
                    Some(f) => f,
                    None => {
                        problems.push(format!("{at}: leaves the repository"));
                        continue;
                    }
                }
            };
            let full = root().join(&file);
            if !full.exists() {
                problems.push(format!("{at}: no such file {}", file.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if !full.extension().is_some_and(|e| e == "md") {
                    problems.push(format!("{at}: an anchor into a file that is not Markdown"));
                } else if !anchors(&read(&file.to_string_lossy())).contains(anchor) {
                    problems.push(format!(
                        "{at}: no heading in {} has the anchor #{anchor}",
                        file.display()
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let docs = documents();
    let problems = link_problems(&docs);
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    // The check bites: a link to a missing heading, file or place outside is reported.
    let probe = "docs/.link-probe.md";
    let path = root().join(probe);
    std::fs::write(
        &path,
        "# Probe\n[a](#probe) [b](#nowhere) [c](configuration.md#no-such-heading) [d](missing.md) \
         [e](../../outside.md) `[f](#code-is-not-a-link)`\n",
    )
    .unwrap();
    let found = link_problems(&[probe.to_string()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(found.len(), 4, "{found:#?}");
}

#[test]
fn anchors_follow_githubs_rules() {
    let text = "# Faults: never open, and back on its own\n## `readiness.path` and the 404\n\
                ### With the OpenFaaS gateway in front\n## Tests\n## Tests\n```\n# not a heading\n```\n";
    let got = anchors(text);
    let want: BTreeSet<String> = [
        "faults-never-open-and-back-on-its-own",
        "readinesspath-and-the-404",
        "with-the-openfaas-gateway-in-front",
        "tests",
        "tests-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
}

#[test]
fn no_document_names_a_path_outside_the_repository() {
    // Spelled in two parts so that this file does not name it either.
    let outside = format!("{}/shared", "..");
    for doc in documents() {
        for (i, line) in read(&doc).lines().enumerate() {
            assert!(
                !line.contains(&outside),
                "{doc}:{}: names {outside}, outside the repository: {line}",
                i + 1
            );
        }
    }
}

/// A configuration with `null` at key path `path` (`<name>` as the function `env`).
fn config_with(path: &str) -> Vec<u8> {
    let mut value = Value::Null;
    for key in path.split('.').rev() {
        let key = if key == ANY_FUNCTION { "env" } else { key };
        let mut map = Map::new();
        map.insert(key.to_string(), value);
        value = Value::Object(map);
    }
    value.to_string().into_bytes()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Rows of the Markdown tables in `text` whose first header cell starts with `kind`: (line,
/// the header's first cell, the row's first cell).
fn table_rows<'a>(text: &'a str, kind: &str) -> Vec<(usize, &'a str, &'a str)> {
    let mut out = Vec::new();
    let mut header: Option<&str> = None;
    for line in lines(text) {
        let t = line.text.trim();
        if line.fence.is_some() || !t.starts_with('|') {
            header = None;
            continue;
        }
        let first = t
            .trim_start_matches('|')
            .split('|')
            .next()
            .unwrap_or("")
            .trim();
        match header {
            None => header = Some(first),
            Some(_) if first.starts_with("---") || first.starts_with(":--") => {}
            Some(h) if h.to_lowercase().starts_with(kind) => out.push((line.number, h, first)),
            Some(_) => {}
        }
    }
    out
}

/// The configuration keys docs/configuration.md documents, by key path, with their lines.
fn documented_keys(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (line, header, cell) in table_rows(text, "key") {
        let prefixes = code_spans(header);
        let prefixes = if prefixes.is_empty() {
            vec![""]
        } else {
            prefixes
        };
        // A row without a `key` is reported as the key "?" (never accepted by the parser).
        let key = code_spans(cell).first().copied().unwrap_or("?");
        for prefix in prefixes {
            out.insert(join(prefix, key), line);
        }
    }
    out
}

/// Every key path the parser accepts, and which of them hold objects.
fn parser_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let objects: BTreeSet<String> = OBJECTS.iter().map(|(p, _)| p.to_string()).collect();
    let all = OBJECTS
        .iter()
        .flat_map(|(p, keys)| keys.iter().map(move |k| join(p, k)))
        .collect();
    (all, objects)
}

fn key_problems(text: &str) -> Vec<String> {
    let documented = documented_keys(text);
    let (accepted, objects) = parser_keys();
    let mut problems = Vec::new();
    for key in accepted.iter().filter(|k| !objects.contains(*k)) {
        if !documented.contains_key(key) {
            problems.push(format!(
                "{key}: accepted by the parser, missing from docs/configuration.md"
            ));
        }
    }
    for (key, line) in &documented {
        match Config::parse(&config_with(key)) {
            Err(e) if e.problem.starts_with("unknown key") => problems.push(format!(
                "docs/configuration.md:{line}: {key}: documented, refused by the parser ({e})"
            )),
            _ if !accepted.contains(key) => problems.push(format!(
                "docs/configuration.md:{line}: {key}: documented, not in config::OBJECTS"
            )),
            _ => {}
        }
    }
    problems
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_parser_accepts() {
    let text = read("docs/configuration.md");
    let problems = key_problems(&text);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(documented_keys(&text).contains_key("readiness.max_pending_bytes"));
    assert!(documented_keys(&text).contains_key("policy.functions.<name>.methods"));
    // The check bites both ways: a key dropped from the reference, and one the parser refuses.
    let dropped = text.replace("| `readiness.max_pending_bytes` |", "| max pending bytes |");
    assert!(
        dropped != text,
        "the probe found no readiness.max_pending_bytes row"
    );
    assert!(key_problems(&dropped)
        .iter()
        .any(|p| p.starts_with("readiness.max_pending_bytes: accepted by the parser")));
    let dropped = text.replace("| `methods` |", "| methods |");
    assert!(dropped != text, "the probe found no methods row");
    let problems = key_problems(&dropped);
    for key in ["policy.default.methods", "policy.functions.<name>.methods"] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("{key}: accepted"))),
            "{problems:?}"
        );
    }
    let invented = text.replace(
        "| `readiness.max_pending_bytes` |",
        "| `readiness.max_pending_bites` |",
    );
    assert!(key_problems(&invented)
        .iter()
        .any(|p| p.contains("readiness.max_pending_bites: documented, refused by the parser")));
}

#[test]
fn config_objects_is_what_the_parser_checks_keys_against() {
    for (path, keys) in OBJECTS {
        if keys == &[ANY_FUNCTION] {
            continue;
        }
        let probe = join(path, "no-such-key");
        let e = Config::parse(&config_with(&probe)).expect_err(&probe);
        assert_eq!(
            e.to_string(),
            format!(
                "{}: unknown key (expected one of: {})",
                probe.replace(ANY_FUNCTION, "env"),
                keys.join(", ")
            )
        );
    }
}

#[test]
fn the_annotations_documented_are_the_ones_the_filter_reads() {
    let text = read("docs/configuration.md");
    let documented: BTreeSet<&str> = table_rows(&text, "annotation")
        .into_iter()
        .map(|(line, _, cell)| {
            let name = *code_spans(cell)
                .first()
                .unwrap_or_else(|| panic!("docs/configuration.md:{line}: no `annotation`"));
            let (_, outcomes) = annotations::narrow(
                &PolicyRules::default(),
                &[(name.to_string(), "1".to_string())],
            );
            assert!(
                name.starts_with(annotations::PREFIX)
                    && outcomes.iter().all(|o| o.refused != Some(annotations::UNKNOWN)),
                "docs/configuration.md:{line}: {name}: documented, not an annotation the filter reads"
            );
            name
        })
        .collect();
    for key in annotations::KEYS {
        let name = format!("{}{key}", annotations::PREFIX);
        assert!(
            documented.contains(name.as_str()),
            "{name}: read by the filter, missing from docs/configuration.md"
        );
    }
}

/// Every ```json block of a document: (line, text).
fn json_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in lines(text) {
        match (line.fence, current.as_mut()) {
            (Some("json"), None) => current = Some((line.number, String::new())),
            (Some("json"), Some(_)) if line.text.trim_start().starts_with("```") => {
                out.extend(current.take())
            }
            (Some("json"), Some((_, body))) => {
                body.push_str(line.text);
                body.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_example_configuration_loads() {
    let mut count = 0;
    for doc in documents().iter().filter(|d| !d.starts_with("bench/")) {
        for (line, block) in json_blocks(&read(doc)) {
            count += 1;
            if let Err(e) = Config::parse(block.as_bytes()) {
                panic!(
                    "{doc}:{line}: this example configuration is refused: {e}\n(every ```json \
                     block in the docs is a plugin configuration; other JSON goes in ```text)"
                );
            }
        }
    }
    assert!(count >= 5, "only {count} example configurations found");
    // The check bites: a refused configuration in a ```json block is found.
    let broken = "```json\n{\"readiness\": {\"max_wait_ms\": 0}}\n```\n";
    let blocks = json_blocks(broken);
    assert_eq!(blocks.len(), 1);
    assert!(Config::parse(blocks[0].1.as_bytes()).is_err());
}

#[test]
fn the_refusals_shown_are_the_parsers_own_words() {
    let vectors: Value = serde_json::from_str(&read("testdata/config.json")).unwrap();
    let known: BTreeSet<&str> = vectors["error"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["error"].as_str().unwrap())
        .collect();
    let text = read("docs/configuration.md");
    let mut count = 0;
    for line in lines(&text) {
        let is_fence = line.text.trim_start().starts_with("```");
        if line.fence == Some("text") && !is_fence && !line.text.trim().is_empty() {
            count += 1;
            assert!(
                known.contains(line.text.trim()),
                "docs/configuration.md:{}: not a refusal in testdata/config.json: {}",
                line.number,
                line.text
            );
        }
    }
    assert!(count >= 5, "only {count} refusals shown");
}

/// docs/performance.md without its generated blocks, and the number of those blocks.
fn performance_prose(text: &str) -> (Vec<(usize, String)>, usize) {
    let mut prose = Vec::new();
    let mut blocks = 0;
    let mut generated = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("<!-- BEGIN GENERATED") {
            assert!(!generated, "docs/performance.md:{}: nested block", i + 1);
            generated = true;
            blocks += 1;
        } else if line.starts_with("<!-- END GENERATED") {
            assert!(
                generated,
                "docs/performance.md:{}: END without BEGIN",
                i + 1
            );
            generated = false;
        } else if !generated {
            prose.push((i + 1, line.to_string()));
        }
    }
    assert!(
        !generated,
        "docs/performance.md: a generated block is not closed"
    );
    (prose, blocks)
}

/// Numbers in a line of prose: digits not part of a word (`W3C`, `x86_64` and `wasm32` are
/// names; `18,340`, `3.4 MB`, `+76k` and `50ms` are figures). Link targets are not looked at.
fn figures(line: &str) -> Vec<String> {
    let mut text = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        text.push_str(&rest[..at]);
        rest = rest[at..].find(')').map_or("", |c| &rest[at + c + 1..]);
    }
    text.push_str(rest);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let word = |c: &char| c.is_alphabetic() || *c == '_';
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || ",.".contains(chars[i])) {
                i += 1;
            }
            if start == 0 || !word(&chars[start - 1]) {
                let number: String = chars[start..i].iter().collect();
                out.push(number.trim_end_matches([',', '.']).to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn performance_figures_come_only_from_the_generated_results() {
    let text = read("docs/performance.md");
    let (prose, blocks) = performance_prose(&text);
    assert!(
        blocks >= 2,
        "docs/performance.md has {blocks} generated blocks"
    );
    for (line, t) in &prose {
        let found = figures(t);
        assert!(
            found.is_empty(),
            "docs/performance.md:{line}: {found:?} outside a generated block: figures come from \
             bench/results/ by `python3 bench/bench.py --report-only`, never by hand: {t}"
        );
    }
    assert_eq!(
        figures("+18,360 instructions, 3.4 MB, 12k, 100ms, 2.5."),
        ["18,360", "3.4", "12", "100", "2.5"]
    );
    assert!(figures("W3C, B3, x86_64, wasm32, [x](results.md#l10)").is_empty());

    // And what is inside the blocks is what the benchmark's report makes of bench/results/.
    let out = Command::new("python3")
        .arg(root().join("bench/bench.py"))
        .arg("--report-only")
        .arg("--check")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("python3 bench/bench.py --report-only --check: {e}"));
    assert!(
        out.status.success(),
        "bench/bench.py --report-only --check:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! The docs against the code: the configuration table against `shared/src/config.rs`, and every
//! `make` target, command, stack output and function name that README.md and docs/*.md name
//! against the Makefile, the tools and the SAM template. A reader following them literally meets
//! nothing that does not exist.

use std::collections::{BTreeMap, BTreeSet};

use keapalive::config::{Config, KNOWN_VARIABLES, Requirements};
use keapalive_tests::workspace;

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace::root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ------------------------------------------------------------------ configuration table

/// The rows of docs/configuration.md's table: each backticked name of the first column with the
/// second column (its default). Only the page's first table: later tables (what a deployer can
/// set) have other columns.
fn configuration_rows(markdown: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let first_table = markdown
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    for line in first_table.filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, default) = (cells[1], cells[2]);
        for name in names.split(',').map(|n| n.trim().trim_matches('`')) {
            if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty() {
                rows.push((name.to_owned(), default.to_owned()));
            }
        }
    }
    rows
}

/// Differences between the table and the code: a variable the code knows and the table lacks
/// (or the reverse), and a documented default that is not the code's (setting a variable to its
/// documented default must give the same configuration as leaving it unset).
fn configuration_mismatches(markdown: &str) -> Vec<String> {
    let rows = configuration_rows(markdown);
    let documented: BTreeSet<&str> = rows
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("KEAPALIVE_"))
        .collect();
    let known: BTreeSet<&str> = KNOWN_VARIABLES.iter().copied().collect();
    let mut out = Vec::new();
    for missing in known.difference(&documented) {
        out.push(format!("{missing}: read by config.rs, not in the table"));
    }
    for extra in documented.difference(&known) {
        out.push(format!("{extra}: in the table, unknown to config.rs"));
    }
    let base: Vec<(String, String)> = [
        ("KEAPALIVE_TABLE", "t"),
        ("KEAPALIVE_CLIENT_SECRET_ID", "s"),
        (
            "KEAPALIVE_REDIRECT_URI",
            "https://example.com/oauth/callback",
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let defaults = format!(
        "{:?}",
        Config::from_vars(&base, Requirements::default()).expect("minimal configuration")
    );
    for (name, default) in &rows {
        // Only a literal default (`300`, `false`, `webpki`, a URL) can be set back.
        let Some(value) = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|d| !d.contains('`'))
        else {
            continue;
        };
        let mut vars = base.clone();
        vars.push((name.clone(), value.to_owned()));
        match Config::from_vars(&vars, Requirements::default()) {
            Ok(config) if format!("{config:?}") == defaults => {}
            Ok(_) => out.push(format!(
                "{name}: documented default `{value}` is not the code's default"
            )),
            Err(e) => out.push(format!(
                "{name}: documented default `{value}` is refused: {e}"
            )),
        }
    }
    out
}

#[test]
fn the_configuration_table_is_the_codes() {
    let markdown = read("docs/configuration.md");
    let rows = configuration_rows(&markdown);
    let with_defaults = rows.iter().filter(|(_, d)| d.starts_with('`')).count();
    println!(
        "docs/configuration.md: {} variables, {with_defaults} literal defaults",
        rows.len()
    );
    assert!(rows.len() >= KNOWN_VARIABLES.len());
    assert!(with_defaults >= 15, "{with_defaults} defaults checked");
    let mismatches = configuration_mismatches(&markdown);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[test]
fn the_configuration_check_catches_a_wrong_default_and_a_missing_row() {
    let markdown = read("docs/configuration.md");
    let wrong = markdown.replace(
        "| `KEAPALIVE_LEASE_SECS` | `300` |",
        "| `KEAPALIVE_LEASE_SECS` | `600` |",
    );
    assert_ne!(wrong, markdown);
    let found = configuration_mismatches(&wrong);
    assert!(
        found.iter().any(|m| m.starts_with("KEAPALIVE_LEASE_SECS")),
        "{found:?}"
    );
    let missing: String = markdown
        .lines()
        .filter(|l| !l.starts_with("| `KEAPALIVE_STAGE`"))
        .map(|l| format!("{l}\n"))
        .collect();
    let found = configuration_mismatches(&missing);
    assert!(
        found.iter().any(|m| m.starts_with("KEAPALIVE_STAGE")),
        "{found:?}"
    );
}

// ------------------------------------------------------------------ names in the docs

/// What exists: make targets, stack outputs and parameters, function names, admin subcommands,
/// packages.
struct Reality {
    targets: BTreeSet<String>,
    outputs: BTreeSet<String>,
    parameters: BTreeSet<String>,
    /// `keapalive-<stage>-<suffix>` physical names the template gives (functions, table...).
    physical: BTreeSet<String>,
    admin_commands: BTreeSet<String>,
    packages: BTreeSet<String>,
}

/// Top-level keys of a YAML section (`Outputs:`), read as text: two-space-indented `Name:`.
fn yaml_section_keys(template: &str, section: &str) -> BTreeSet<String> {
    template
        .lines()
        .skip_while(|l| *l != section)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .filter_map(|l| {
            let key = l.strip_prefix("  ")?.strip_suffix(':')?;
            key.chars()
                .all(|c| c.is_ascii_alphanumeric())
                .then(|| key.to_owned())
        })
        .collect()
}

fn reality() -> Reality {
    let mut targets = BTreeSet::new();
    for makefile in ["Makefile", "infra/infra.mk"] {
        for line in read(makefile).lines() {
            if let Some((name, _)) = line.split_once(':')
                && !name.is_empty()
                && !line.starts_with(['\t', '#', ' ', '.', '$'])
                && !line.contains(":=")
                && !line.contains("?=")
            {
                targets.extend(name.split_whitespace().map(str::to_owned));
            }
        }
    }
    let template = read("infra/template.yaml");
    let physical = template
        .split("keapalive-${Stage}-")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    let admin_commands = keapalive_admin::cli::USAGE
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| !w.starts_with(['-', '['])))
        .filter(|w| *w != "usage:" && *w != "keapalive-admin")
        .map(str::to_owned)
        .collect();
    let mut packages = BTreeSet::new();
    for dir in ["functions", "tools", "tests", "bench", "shared"] {
        for entry in std::fs::read_dir(workspace::root().join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let manifest = entry.path().join("Cargo.toml");
            let manifest = if manifest.exists() {
                manifest
            } else {
                workspace::root().join(dir).join("Cargo.toml")
            };
            if let Ok(text) = std::fs::read_to_string(manifest)
                && let Some(name) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("name = \""))
                    .and_then(|n| n.strip_suffix('"'))
            {
                packages.insert(name.to_owned());
            }
        }
    }
    Reality {
        targets,
        outputs: yaml_section_keys(&template, "Outputs:"),
        parameters: yaml_section_keys(&template, "Parameters:"),
        physical,
        admin_commands,
        packages,
    }
}

#[derive(Debug, Default)]
struct Named {
    /// kind -> (name, exists)
    found: BTreeMap<&'static str, Vec<(String, bool)>>,
}

impl Named {
    fn add(&mut self, kind: &'static str, name: &str, exists: bool) {
        self.found
            .entry(kind)
            .or_default()
            .push((name.to_owned(), exists));
    }

    fn count(&self, kind: &str) -> usize {
        self.found.get(kind).map_or(0, Vec::len)
    }

    fn missing(&self) -> Vec<String> {
        self.found
            .iter()
            .flat_map(|(kind, names)| {
                names
                    .iter()
                    .filter(|(_, exists)| !exists)
                    .map(move |(name, _)| format!("{kind} `{name}` does not exist"))
            })
            .collect()
    }
}

fn is_camel(word: &str) -> bool {
    word.len() > 3
        && word.starts_with(|c: char| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric())
        && word.chars().skip(1).any(|c| c.is_ascii_uppercase())
        && word.chars().any(|c| c.is_ascii_lowercase())
}

/// Words that can end a name (a command, a target): letters, digits, `-`, `_`, `.`, `/`.
fn word_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .unwrap_or(text.len());
    text[..end].trim_end_matches('.')
}

/// Every name a document gives of each kind, and whether it exists.
fn names_in(document: &str, reality: &Reality, named: &mut Named) {
    for line in document.lines() {
        // make targets: `make <target>` (not "make sure", "make it"): a target is what follows
        // `make ` inside code (a code span or block line).
        for (at, _) in line.match_indices("make ") {
            let before = &line[..at];
            let in_code = before.matches('`').count() % 2 == 1
                || line.trim_start().starts_with("make ")
                || before.ends_with("$(")
                || before.trim_end().ends_with(';');
            if !in_code {
                continue;
            }
            let target = word_at(&line[at + 5..]);
            if target.is_empty() || target.contains('=') || target.starts_with('-') {
                continue;
            }
            named.add("make target", target, reality.targets.contains(target));
        }
        // Stack outputs: CamelCase <placeholders> (a command's value to fill in from the stack),
        // and CamelCase code spans on a line that speaks of an output (not the CLI's `--output`).
        let lower = line.to_ascii_lowercase().replace("--output", "");
        let spans = line
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|_| lower.contains("output"));
        let placeholders = line.split('<').skip(1).filter_map(|p| p.split_once('>'));
        for name in spans.chain(placeholders.map(|(p, _)| p)) {
            if is_camel(name) && !reality.parameters.contains(name) {
                named.add("stack output", name, reality.outputs.contains(name));
            }
        }
        // Function (and other physical) names: keapalive-<stage>-<name>.
        for stage in ["dev", "stage", "prod"] {
            let prefix = format!("keapalive-{stage}-");
            for (at, _) in line.match_indices(&prefix) {
                let name = word_at(&line[at + prefix.len()..]);
                if name.is_empty() || name.ends_with('*') {
                    continue;
                }
                named.add(
                    "function name",
                    &format!("{prefix}{name}"),
                    reality.physical.contains(name),
                );
            }
        }
        // Function names as the local tools take them: `cargo lambda invoke <function>`.
        for (at, _) in line.match_indices("cargo lambda invoke ") {
            let name = word_at(&line[at + 20..]);
            if !name.is_empty() && !name.starts_with('-') {
                named.add(
                    "function name",
                    name,
                    workspace::root().join("functions").join(name).is_dir(),
                );
            }
        }
        // Commands: keapalive-admin subcommands, cargo -p packages, scripts in the repository.
        for (at, _) in line.match_indices("keapalive-admin ") {
            let rest = line[at + 16..].trim_start();
            let rest = rest
                .strip_prefix("[--table NAME] ")
                .unwrap_or(rest)
                .trim_start();
            let sub = word_at(rest);
            if !sub.is_empty()
                && !sub.starts_with('-')
                && sub.chars().all(|c| c.is_ascii_lowercase())
            {
                named.add(
                    "command",
                    &format!("keapalive-admin {sub}"),
                    reality.admin_commands.contains(sub),
                );
            }
        }
        for (at, _) in line.match_indices(" -p ") {
            let package = word_at(&line[at + 4..]);
            if line.contains("cargo") && !package.is_empty() {
                named.add(
                    "command",
                    &format!("cargo -p {package}"),
                    reality.packages.contains(package),
                );
            }
        }
        for prefix in ["docs/examples/", "infra/checks/", "tests/emulator/"] {
            for (at, _) in line.match_indices(prefix) {
                let path = word_at(&line[at..]);
                if path.len() > prefix.len() {
                    named.add("command", path, workspace::root().join(path).exists());
                }
            }
        }
    }
}

fn documents() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_owned(), read("README.md"))];
    let mut pages: Vec<_> = std::fs::read_dir(workspace::root().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    for page in pages {
        let name = format!("docs/{}", page.file_name().unwrap().to_string_lossy());
        docs.push((name.clone(), read(&name)));
    }
    docs
}

const FLOORS: &[(&str, usize)] = &[
    ("make target", 20),
    ("command", 15),
    ("stack output", 10),
    ("function name", 4),
];

#[test]
fn every_target_command_output_and_function_the_docs_name_exists() {
    let reality = reality();
    let mut report = Vec::new();
    let mut total = Named::default();
    for (name, text) in documents() {
        let mut named = Named::default();
        names_in(&text, &reality, &mut named);
        report.extend(named.missing().into_iter().map(|m| format!("{name}: {m}")));
        for (kind, names) in named.found {
            total.found.entry(kind).or_default().extend(names);
        }
    }
    for (kind, floor) in FLOORS {
        let count = total.count(kind);
        println!("{kind}s named in README.md and docs/*.md: {count} (floor {floor})");
        assert!(
            count >= *floor,
            "only {count} {kind}s found: the reader lost track"
        );
    }
    assert!(report.is_empty(), "{report:#?}");
}

#[test]
fn a_document_with_one_bad_name_of_each_kind_fails() {
    let reality = reality();
    let mutant = "\
Run `make tset` first.\n\
```sh\nkeapalive-admin stauts\ncargo run -p keapalive-admn\n```\n\
Redrive with `--source-arn <DeadLetterQueueArn>`.\n\
Invoke `keapalive-dev-contact-upsret`.\n\
Or `cargo lambda invoke token-refreshr`.\n";
    let mut named = Named::default();
    names_in(mutant, &reality, &mut named);
    let missing = named.missing();
    for kind in ["make target", "command", "stack output", "function name"] {
        assert!(
            missing.iter().any(|m| m.starts_with(kind)),
            "a bad {kind} passed: {missing:#?}"
        );
    }
    assert_eq!(missing.len(), 6, "{missing:#?}");
}

//! The README and the book (`docs/src/**/*.md`) against the real binaries:
//! every `--flag` shown on a command line after `offramp-edge`,
//! `offramp-cloud`, `offramp-link` or `offramp` (also as `cargo run -p
//! offramp -- ...` or `target/release/offramp ...`) and its subcommands must
//! be listed in that command's `--help`, run on the binary under test.
//!
//! Command lines are the logical lines of fenced code blocks (a trailing `\`
//! joins the next line; a line quoting code in backticks, as help text does,
//! counts as prose) and the inline code spans of the prose. Words after
//! the binary that name one of its subcommands (from the `Commands:` list of
//! its help) select that subcommand; a flag is checked against the command
//! selected when it appears. A flag shown without a binary in front of it
//! (`--deadline` in a sentence) is not checked: nothing says whose it is.
//! Every missing flag is reported in one failure, as `file:line`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::repo;

/// The binaries the docs name, with the executable under test for each.
const BINARIES: [(&str, &str); 4] = [
    ("offramp-edge", env!("CARGO_BIN_EXE_offramp-edge-under-test")),
    ("offramp-cloud", env!("CARGO_BIN_EXE_offramp-cloud-under-test")),
    ("offramp-link", env!("CARGO_BIN_EXE_offramp-link-under-test")),
    ("offramp", env!("CARGO_BIN_EXE_offramp-under-test")),
];

/// Cargo's options that name a package or binary (`cargo build -p
/// offramp-edge` does not run it).
const PACKAGE_OPTIONS: [&str; 3] = ["-p", "--package", "--bin"];

/// Words that end a command line in a shell snippet.
const TERMINATORS: [&str; 5] = ["|", "||", "&&", ";", "&"];

/// One command line of a Markdown file that runs one of [`BINARIES`].
#[derive(Debug)]
struct Invocation {
    /// `file:line` of the line it starts on.
    at: String,
    binary: &'static str,
    /// The words after the binary's name, up to the end of the command.
    words: Vec<String>,
}

/// What a command's `--help` lists.
#[derive(Debug, Clone, Default)]
struct CommandHelp {
    flags: BTreeSet<String>,
    subcommands: BTreeSet<String>,
}

/// `--help` of each (binary, subcommand path), run once.
#[derive(Default)]
struct Helps {
    cache: HashMap<(&'static str, Vec<String>), CommandHelp>,
}

impl Helps {
    fn get(&mut self, binary: &'static str, path: &[String]) -> CommandHelp {
        self.cache.entry((binary, path.to_vec())).or_insert_with(|| run_help(binary, path)).clone()
    }
}

fn run_help(binary: &str, path: &[String]) -> CommandHelp {
    let exe = BINARIES.iter().find(|(name, _)| *name == binary).map(|(_, exe)| *exe).unwrap();
    let out = Command::new(exe).args(path).arg("--help").output().unwrap_or_else(|e| panic!("run {exe}: {e}"));
    assert!(
        out.status.success(),
        "`{binary} {} --help` failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_help(&String::from_utf8_lossy(&out.stdout))
}

/// The long flags of a clap help text (option lines: `  -h, --help`,
/// `      --model <MODEL>`) and the subcommands under `Commands:`.
fn parse_help(text: &str) -> CommandHelp {
    let mut help = CommandHelp::default();
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            match line.strip_prefix("  ").and_then(|l| l.split_whitespace().next()) {
                Some(name) if !line.starts_with("   ") && name != "help" => {
                    help.subcommands.insert(name.to_string());
                }
                Some(_) if !line.starts_with("   ") => {}
                _ if line.trim().is_empty() => in_commands = false,
                _ => {}
            }
            continue;
        }
        // Option lines are indented 2 (`-h, --help`) or 6 (`--model`) spaces;
        // their descriptions 10.
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
            if let Some(flag) = trimmed.split_whitespace().find_map(|w| flag_name(w.trim_end_matches(','))) {
                help.flags.insert(flag);
            }
        }
    }
    help
}

/// `--name` of a word that is a long flag (`--model`, `--json]`,
/// `--deadline=500ms`), or None (`--`, `--up-*`, `-p`, words).
fn flag_name(word: &str) -> Option<String> {
    let rest = word.strip_prefix("--")?;
    let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
    let (name, after) = rest.split_at(end);
    let clean_end = after.is_empty() || after.starts_with(['=', ',', '.', ')', ']', ':', ';', '`', '"', '\'']);
    let well_formed = name.starts_with(|c: char| c.is_ascii_alphanumeric()) && !name.ends_with('-');
    (clean_end && well_formed).then(|| format!("--{name}"))
}

/// Command-line candidates of a Markdown text, each with the line it starts
/// on: the logical lines of fenced code blocks and the inline code spans of
/// the prose (a span may wrap across lines).
fn snippets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    // A fenced line ending in `\` waiting for the next: (first line, text).
    let mut pending: Option<(usize, String)> = None;
    // The prose paragraph being read: (first line, text).
    let mut paragraph: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => {
                out.extend(paragraph.take().map(|(n, p)| code_spans(n, &p)).unwrap_or_default());
                fence = Some(m);
            }
            (Some(open), Some(m)) if open == m => {
                out.extend(pending.take());
                fence = None;
            }
            (Some(_), _) => {
                let (first, mut joined) = pending.take().unwrap_or((number, String::new()));
                joined.push(' ');
                match line.trim_end().strip_suffix('\\') {
                    Some(head) => {
                        joined.push_str(head);
                        pending = Some((first, joined));
                    }
                    // A line that quotes code in backticks is prose (help
                    // text in a `text` block): its spans are the commands.
                    None if line.contains('`') => {
                        joined.push_str(line);
                        out.extend(code_spans(first, &joined));
                    }
                    None => {
                        joined.push_str(line);
                        out.push((first, joined));
                    }
                }
            }
            (None, None) if trimmed.is_empty() => {
                out.extend(paragraph.take().map(|(n, p)| code_spans(n, &p)).unwrap_or_default());
            }
            (None, None) => {
                let (first, mut joined) = paragraph.take().unwrap_or((number, String::new()));
                if !joined.is_empty() {
                    joined.push('\n');
                }
                joined.push_str(line);
                paragraph = Some((first, joined));
            }
        }
    }
    out.extend(pending);
    out.extend(paragraph.map(|(n, p)| code_spans(n, &p)).unwrap_or_default());
    out
}

/// The inline code spans of a paragraph starting at line `first`, each with
/// its own line, line breaks inside a span read as spaces.
fn code_spans(first: usize, paragraph: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = paragraph.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let open = run_at(i);
        let start = i + open;
        // The closing run has exactly as many backticks as the opening one.
        let mut j = start;
        let close = loop {
            if j >= chars.len() {
                break None;
            }
            if chars[j] == '`' {
                let run = run_at(j);
                if run == open {
                    break Some(j);
                }
                j += run;
            } else {
                j += 1;
            }
        };
        let Some(end) = close else {
            i = start;
            continue;
        };
        let line = first + chars[..i].iter().filter(|&&c| c == '\n').count();
        let span: String = chars[start..end].iter().map(|&c| if c == '\n' { ' ' } else { c }).collect();
        spans.push((line, span));
        i = end + open;
    }
    spans
}

/// The binary a word names: `offramp-edge`, `target/release/offramp`.
fn binary_named(word: &str) -> Option<&'static str> {
    let word = word.trim_matches(|c: char| matches!(c, '`' | '"' | '\'' | '(' | ')' | '[' | ']'));
    let base = word.rsplit('/').next().unwrap_or(word);
    BINARIES.iter().map(|(name, _)| *name).find(|name| *name == base)
}

/// The invocations of one snippet: a binary's name (or `cargo run -p NAME
/// --`) and the words after it, up to a shell separator or the next
/// invocation.
fn invocations(at: &str, snippet: &str) -> Vec<Invocation> {
    let words: Vec<&str> = snippet.split_whitespace().collect();
    let mut found: Vec<Invocation> = Vec::new();
    let mut open = false;
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if TERMINATORS.contains(&word) || word.starts_with('>') || word.starts_with("2>") {
            open = false;
        } else if word == "cargo" && words.get(i + 1) == Some(&"run") {
            // cargo run [--release] -p NAME [--bin NAME] -- ARGS...
            let dashes = words[i..].iter().position(|w| *w == "--").map(|p| i + p);
            let option = |name: &str| {
                let end = dashes.unwrap_or(words.len());
                words[i..end].windows(2).find(|w| w[0] == name).map(|w| w[1])
            };
            let named = option("--bin").or_else(|| option("-p")).or_else(|| option("--package"));
            match (named.and_then(binary_named), dashes) {
                (Some(binary), Some(d)) => {
                    found.push(Invocation { at: at.to_string(), binary, words: Vec::new() });
                    open = true;
                    i = d;
                }
                _ => open = false,
            }
        } else if let Some(binary) = binary_named(word).filter(|_| i == 0 || !PACKAGE_OPTIONS.contains(&words[i - 1])) {
            found.push(Invocation { at: at.to_string(), binary, words: Vec::new() });
            open = true;
        } else if open {
            found.last_mut().unwrap().words.push(word.to_string());
        }
        i += 1;
    }
    found
}

/// Every invocation in a Markdown text; `name` is how `file:line` names it.
fn invocations_in(name: &str, text: &str) -> Vec<Invocation> {
    snippets(text).into_iter().flat_map(|(line, snippet)| invocations(&format!("{name}:{line}"), &snippet)).collect()
}

/// The flags of `found` that their command's help does not list, as one
/// line each, and how many flags were checked.
fn missing_flags(found: &[Invocation], helps: &mut Helps) -> (Vec<String>, usize) {
    let mut missing = Vec::new();
    let mut checked = 0;
    for inv in found {
        let mut path: Vec<String> = Vec::new();
        let mut help = helps.get(inv.binary, &path);
        for word in &inv.words {
            let bare = word.trim_matches(|c: char| matches!(c, '`' | '"' | '\'' | '(' | ')' | '[' | ']'));
            if word.starts_with("--") || word.starts_with("[--") {
                for part in word.split('/') {
                    let Some(flag) = flag_name(part.trim_start_matches('[')) else { continue };
                    checked += 1;
                    if !help.flags.contains(&flag) {
                        let command = [inv.binary.to_string()].into_iter().chain(path.iter().cloned());
                        missing.push(format!("{}: `{}` has no {flag}", inv.at, command.collect::<Vec<_>>().join(" ")));
                    }
                }
            } else if help.subcommands.contains(bare) {
                path.push(bare.to_string());
                help = helps.get(inv.binary, &path);
            }
        }
    }
    (missing, checked)
}

/// README.md and every Markdown file under docs/src, relative to the repo.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs/src"), &mut files);
    files
}

#[test]
fn every_flag_in_the_readme_and_the_book_is_in_its_commands_help() {
    let root = repo().canonicalize().unwrap();
    let mut helps = Helps::default();
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut commands = 0;
    for file in doc_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        let found = invocations_in(&name, &text);
        commands += found.len();
        let (m, c) = missing_flags(&found, &mut helps);
        missing.extend(m);
        checked += c;
    }
    // A scanner that finds nothing would pass anything.
    assert!(
        commands >= 50 && checked >= 100,
        "only {commands} command lines and {checked} flags found: is the scanner broken?"
    );
    assert!(
        missing.is_empty(),
        "{} flag(s) shown in the docs are not in their command's --help (deploy/scripts/cli_reference.sh regenerates \
         the reference pages):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn a_made_up_flag_is_reported_with_its_file_and_line() {
    let text = "Some prose with `offramp-edge run --model DIR\n--no-such-flag` wrapped.\n\
                \n\
                ```sh\n\
                cargo run --release -p offramp -- demo --split 1 --no-such-demo-flag\n\
                target/release/offramp bench blocks --no-such-bench-flag   # [--json]\n\
                offramp-cloud --model C \\\n    --listen 127.0.0.1:0 --no-such-cloud-flag | head\n\
                Help text: a bundle (from `offramp import hf`) is fine-tuned on --data sentences\n\
                ```\n\
                No owner: `--no-owner-flag`. Real: `offramp link --upstream X --delay 25ms`.\n";
    let found = invocations_in("made-up.md", text);
    let (missing, checked) = missing_flags(&found, &mut Helps::default());
    assert_eq!(
        missing,
        [
            "made-up.md:1: `offramp-edge run` has no --no-such-flag",
            "made-up.md:5: `offramp demo` has no --no-such-demo-flag",
            "made-up.md:6: `offramp bench blocks` has no --no-such-bench-flag",
            "made-up.md:7: `offramp-cloud` has no --no-such-cloud-flag",
        ]
    );
    // --model, --no-such-flag, --split, --no-such-demo-flag, --no-such-bench-flag,
    // --json, --model, --listen, --no-such-cloud-flag, --upstream, --delay.
    assert_eq!(checked, 11, "{found:#?}");
}

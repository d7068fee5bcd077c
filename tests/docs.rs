//! The docs stay true to the binary: every `nexus …` command that README.md or a file under
//! docs/ shows (in a fenced shell block, or in an inline code span) names subcommands that
//! exist, and every `--flag` on it is one that the command's `--help` lists.
//!
//! Subcommands are not listed here: they are read from the `Commands:` section of each
//! `nexus … --help`, and the flags from its option lines, so a renamed flag or subcommand
//! fails this test until the docs follow. A flag is checked against the command it follows
//! (`nexus token --data-dir D list`: `--data-dir` belongs to `token`), as clap parses it;
//! clap prints `global = true` flags in every subcommand's help, so those pass anywhere.
//! The flags after `nexus config show` are `nexus up` flags and are checked against it.
//!
//! What counts as a command: a line (with its `\` continuations) whose first word, after
//! any `NAME=value` assignments and a `$ ` prompt, is `nexus`, `…/nexus` (such as
//! `./target/release/nexus`) or `$NEXUS_BIN`. A trailing `# comment` is ignored; `a | b`,
//! `a && b` and `a; b` are separate commands, and a part after a `nexus` command that starts
//! with one of its sibling subcommands is shorthand for it (`nexus pipeline list | status
//! RUN`). `up|serve` checks both. Placeholders (`<…>`, `…`, `COMMAND`) are skipped. In a
//! block that has `$ ` prompts, only prompted lines are commands (the rest is output).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nexus");

/// Fenced blocks whose lines may be commands (by the first word of their info string).
const SHELL_BLOCKS: &[&str] = &[
    "",
    "sh",
    "bash",
    "shell",
    "console",
    "shell-session",
    "text",
];

/// Commands whose flags are another command's: `config show` takes `nexus up` flags.
const FLAGS_OF: &[(&[&str], &[&str])] = &[(&["config", "show"], &["up"])];

/// One command line as a doc shows it.
#[derive(Debug, Clone)]
struct Shown {
    file: String,
    line: usize,
    text: String,
}

/// What `nexus <path> --help` says.
#[derive(Debug, Default)]
struct Help {
    subcommands: BTreeSet<String>,
    flags: BTreeSet<String>,
    /// Why `--help` failed, if it did.
    error: Option<String>,
}

/// Runs `nexus <path> --help` once per path.
#[derive(Default)]
struct Helps(BTreeMap<Vec<String>, Help>);

impl Helps {
    fn get(&mut self, path: &[String]) -> &Help {
        self.0
            .entry(path.to_vec())
            .or_insert_with(|| run_help(path))
    }
}

fn run_help(path: &[String]) -> Help {
    let output = Command::new(BIN)
        .args(path)
        .arg("--help")
        .env_remove("NEXUS_CONFIG")
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            return Help {
                error: Some(format!("cannot run {BIN}: {e}")),
                ..Help::default()
            };
        }
    };
    if !output.status.success() {
        return Help {
            error: Some(format!(
                "exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            ..Help::default()
        };
    }
    parse_help(&String::from_utf8_lossy(&output.stdout))
}

/// The subcommands (from the `Commands:` section) and long flags (from the option lines of
/// every other section) of a clap help text, short or long form.
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut in_commands = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            // A section heading ("Commands:", "Options:", "Arguments:", "Usage: …").
            in_commands = line.trim_end() == "Commands:";
            continue;
        }
        if in_commands {
            // "  name  description": exactly two spaces before the name; deeper lines are
            // a wrapped description.
            if let Some(rest) = line.strip_prefix("  ")
                && !rest.starts_with(' ')
                && let Some(name) = rest.split_whitespace().next()
            {
                help.subcommands
                    .insert(name.trim_end_matches(',').to_string());
            }
            continue;
        }
        let trimmed = line.trim_start();
        if !trimmed.starts_with('-') {
            continue;
        }
        // "-h, --help  Print help" or "--http-port <HTTP_PORT>": the spec ends where two
        // spaces start the description.
        let spec = trimmed.split("  ").next().unwrap_or("");
        for word in spec.split([' ', ',', '=', '[', ']']) {
            if let Some(name) = word.strip_prefix("--")
                && !name.is_empty()
            {
                help.flags.insert(format!("--{name}"));
            }
        }
    }
    help
}

/// Markdown files to check: README.md and every `.md` under docs/.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut folders = vec![root.join("docs")];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

/// A fence opening or closing line: its character, length and info string.
fn fence(line: &str) -> Option<(char, usize, &str)> {
    let trimmed = line.trim_start();
    let c = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = trimmed.chars().take_while(|x| *x == c).count();
    (len >= 3).then(|| (c, len, trimmed[len..].trim()))
}

/// The command lines a markdown text shows, with their line numbers.
fn shown_commands(file: &str, text: &str) -> Vec<Shown> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut prose: Vec<(usize, &str)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((c, len, info)) = fence(lines[i]) else {
            prose.push((i + 1, lines[i]));
            i += 1;
            continue;
        };
        found.extend(inline_commands(file, &std::mem::take(&mut prose)));
        let language = info.split_whitespace().next().unwrap_or("").to_lowercase();
        let start = i + 1;
        let mut end = start;
        while end < lines.len() {
            match fence(lines[end]) {
                Some((c2, len2, rest)) if c2 == c && len2 >= len && rest.is_empty() => break,
                _ => end += 1,
            }
        }
        if SHELL_BLOCKS.contains(&language.as_str()) {
            found.extend(block_commands(file, &lines[start..end], start + 1));
        }
        i = end + 1;
    }
    found.extend(inline_commands(file, &prose));
    found.sort_by_key(|s| s.line);
    found
}

/// Commands in the lines of one fenced block; `first` is the line number of its first line.
fn block_commands(file: &str, lines: &[&str], first: usize) -> Vec<Shown> {
    let prompted = lines.iter().any(|l| l.trim_start().starts_with("$ "));
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let number = first + i;
        let mut text = lines[i].trim().to_string();
        // Joins `\` continuations.
        while text.ends_with('\\') && i + 1 < lines.len() {
            text.pop();
            text.truncate(text.trim_end().len());
            i += 1;
            text.push(' ');
            text.push_str(lines[i].trim());
        }
        i += 1;
        let text = match text.strip_prefix("$ ") {
            Some(rest) => rest.to_string(),
            None if prompted => continue,
            None => text,
        };
        if text.starts_with('#') {
            continue;
        }
        found.push(Shown {
            file: file.to_string(),
            line: number,
            text,
        });
    }
    found
}

/// Inline code spans that start with a command, in prose lines (numbered). A span may
/// continue on the next line of its paragraph; it closes with as many backticks as opened it.
fn inline_commands(file: &str, lines: &[(usize, &str)]) -> Vec<Shown> {
    let mut found = Vec::new();
    // The open span: its backtick count, first line and text so far.
    let mut open: Option<(usize, usize, String)> = None;
    for &(number, line) in lines {
        if line.trim().is_empty() {
            // A span never crosses a paragraph.
            open = None;
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('`') {
            let ticks = rest[at..].chars().take_while(|c| *c == '`').count();
            match open.take() {
                None => open = Some((ticks, number, String::new())),
                Some((n, first, mut text)) => {
                    text.push_str(&rest[..at]);
                    if n == ticks {
                        // In a table cell, `\|` is a literal bar.
                        let text = text.replace("\\|", "|");
                        let text = text.trim();
                        let program = text.split_whitespace().next().unwrap_or("");
                        if is_program(program) {
                            found.push(Shown {
                                file: file.to_string(),
                                line: first,
                                text: text.to_string(),
                            });
                        }
                    } else {
                        text.push_str(&rest[at..at + ticks]);
                        open = Some((n, first, text));
                    }
                }
            }
            rest = &rest[at + ticks..];
        }
        if let Some((_, _, text)) = &mut open {
            text.push_str(rest);
            text.push(' ');
        }
    }
    found
}

/// Whether `word` runs the nexus binary.
fn is_program(word: &str) -> bool {
    let word = word.trim_matches('"');
    word == "nexus" || word.ends_with("/nexus") || word == "$NEXUS_BIN" || word == "${NEXUS_BIN}"
}

/// Shell words of `text` (quotes group, and are kept), up to an unquoted `#` comment.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                word.push(c);
            }
            None if c == '#' && word.is_empty() => break,
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Whether `word` stands for something the reader fills in: `<…>`, `…`, or an upper-case
/// name such as `COMMAND` (subcommands are lower case).
fn is_placeholder(word: &str) -> bool {
    let upper = word.chars().any(|c| c.is_ascii_uppercase())
        && !word.chars().any(|c| c.is_ascii_lowercase());
    upper || word.starts_with('<') || word.contains('…') || word.contains("...")
}

/// A word without the brackets and punctuation docs put around optional parts.
fn bare(word: &str) -> &str {
    word.trim_start_matches(['[', '(', '{'])
        .trim_end_matches([']', ')', '}', ',', ';', '.'])
}

/// One problem, for the failure message.
fn problem(shown: &Shown, what: String) -> String {
    format!(
        "{}:{}: `{}`\n    {what}",
        shown.file, shown.line, shown.text
    )
}

/// Checks the words after the program name, at subcommand `path`. Returns the path it
/// ended at (for sibling shorthand) when the words named a command.
fn check_words(
    helps: &mut Helps,
    shown: &Shown,
    path: Vec<String>,
    words: &[String],
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    let mut path = path;
    // Whether the previous word was a flag that may take the next word as its value.
    let mut after_flag = false;
    for (i, word) in words.iter().enumerate() {
        let help = help_of(helps, &path, shown, problems)?;
        let subcommands = help.subcommands.clone();
        if word == "--" {
            break;
        }
        let w = bare(word);
        if let Some(flag) = w.strip_prefix("--").filter(|f| !f.is_empty()) {
            let name = flag.split('=').next().unwrap_or(flag);
            check_flag(helps, shown, &path, &format!("--{name}"), problems);
            after_flag = !flag.contains('=');
            continue;
        }
        let value_of_flag = std::mem::replace(&mut after_flag, false);
        if subcommands.is_empty() || w.is_empty() || w.starts_with('-') {
            // A leaf command's arguments, or a short flag.
            continue;
        }
        if is_placeholder(w) {
            // `nexus <command> --help`: nothing to check past a placeholder command.
            return None;
        }
        let alternatives: Vec<&str> = w.split('|').collect();
        let unknown = alternatives.iter().find(|a| !subcommands.contains(**a));
        match unknown {
            // A flag's value (`nexus token --data-dir D list`).
            Some(_) if value_of_flag => continue,
            Some(unknown) => {
                let known: Vec<&str> = subcommands.iter().map(String::as_str).collect();
                problems.push(problem(
                    shown,
                    format!(
                        "`{}` has no subcommand `{unknown}` (it has: {})",
                        command_name(&path),
                        known.join(", ")
                    ),
                ));
                return None;
            }
            None if alternatives.len() > 1 => {
                let mut last = None;
                for alternative in alternatives {
                    let mut next = path.clone();
                    next.push(alternative.to_string());
                    last = check_words(helps, shown, next, &words[i + 1..], problems);
                }
                return last;
            }
            None => path.push(w.to_string()),
        }
    }
    // Runs `--help` of the last subcommand too, so a command with no flags is checked.
    help_of(helps, &path, shown, problems)?;
    Some(path)
}

/// The `--help` of `path`, or `None` with a problem noted when it failed.
fn help_of<'h>(
    helps: &'h mut Helps,
    path: &[String],
    shown: &Shown,
    problems: &mut Vec<String>,
) -> Option<&'h Help> {
    let help = helps.get(path);
    if let Some(error) = &help.error {
        problems.push(problem(
            shown,
            format!("`{} --help` failed: {error}", command_name(path)),
        ));
        return None;
    }
    Some(help)
}

/// `nexus` and the subcommands of `path`.
fn command_name(path: &[String]) -> String {
    std::iter::once("nexus")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that `flag` is listed by the help of the command at `path` (or of the command
/// whose flags it takes, see [`FLAGS_OF`]).
fn check_flag(
    helps: &mut Helps,
    shown: &Shown,
    path: &[String],
    flag: &str,
    problems: &mut Vec<String>,
) {
    let owner: Vec<String> = FLAGS_OF
        .iter()
        .find(|(of, _)| of.iter().copied().eq(path.iter().map(String::as_str)))
        .map_or_else(
            || path.to_vec(),
            |(_, to)| to.iter().map(|s| s.to_string()).collect(),
        );
    let help = helps.get(&owner);
    let what = match &help.error {
        Some(error) => format!("`{} --help` failed: {error}", command_name(&owner)),
        None if help.flags.contains(flag) => return,
        None => format!("`{} --help` does not list {flag}", command_name(&owner)),
    };
    problems.push(problem(shown, what));
}

/// Checks one shown line: each `nexus` command on it, and sibling shorthand after one.
/// Returns how many commands it checked.
fn check_shown(helps: &mut Helps, shown: &Shown, problems: &mut Vec<String>) -> usize {
    let all = words(&shown.text);
    // Separate commands: `a | b`, `a && b`, `a || b`, `a; b`.
    let mut segments: Vec<Vec<String>> = vec![Vec::new()];
    for word in all {
        if matches!(word.as_str(), "|" | "||" | "&&" | ";" | "&") {
            segments.push(Vec::new());
        } else if let Some(w) = word.strip_suffix(';') {
            segments.last_mut().unwrap().push(w.to_string());
            segments.push(Vec::new());
        } else {
            segments.last_mut().unwrap().push(word);
        }
    }
    let mut checked = 0;
    // The path of the previous command on this line, for `nexus pipeline list | status RUN`.
    let mut previous: Option<Vec<String>> = None;
    for segment in segments {
        // `NAME=value` assignments before the program.
        let start = segment
            .iter()
            .position(|w| {
                let name = w.split_once('=').map_or("", |(name, _)| name);
                name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .unwrap_or(segment.len());
        let command = &segment[start..];
        let Some(first) = command.first() else {
            previous = None;
            continue;
        };
        if is_program(first) {
            checked += 1;
            previous = check_words(helps, shown, Vec::new(), &command[1..], problems);
            continue;
        }
        // A sibling of the previous command's last subcommand, written without its parents.
        let sibling = previous.as_ref().and_then(|path| {
            let parent = &path[..path.len().saturating_sub(1)];
            let help = helps.get(parent);
            let name = bare(first);
            (!path.is_empty() && help.subcommands.contains(name)).then(|| parent.to_vec())
        });
        previous = match sibling {
            Some(parent) => {
                checked += 1;
                check_words(helps, shown, parent, command, problems)
            }
            None => None,
        };
    }
    checked
}

#[test]
fn every_documented_command_and_flag_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = doc_files(root);
    assert!(
        files.iter().any(|f| f.starts_with(root.join("docs"))),
        "no docs/*.md found under {}",
        root.display()
    );
    let mut helps = Helps::default();
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let name = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        for shown in shown_commands(&name, &text) {
            checked += check_shown(&mut helps, &shown, &mut problems);
        }
    }
    eprintln!("checked {checked} nexus commands in {} files", files.len());
    // A parser that finds nothing would pass everything.
    assert!(
        checked >= 20,
        "only {checked} nexus commands found in the docs; is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "{} documented command(s) do not match `nexus … --help`:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_parsers_read_what_the_docs_write() {
    let doc = "Prose with `nexus up --auth`, `nexus_events_total` and ``nexus up\n\
               --model m``.\n\
               ```sh\n\
               # a comment\n\
               NEXUS_X=1 ./target/release/nexus serve --a 1 \\\n    --b=2   # --not-a-flag\n\
               curl -s x | grep y\n\
               ```\n\
               ```python\n\
               nexus = 1\n\
               ```\n\
               ```console\n\
               $ nexus models list\n\
               nexus output line\n\
               ```\n\
               Unclosed `nexus up\n\
               \n\
               ends at the paragraph.\n";
    let shown = shown_commands("t.md", doc);
    let texts: Vec<(usize, &str)> = shown.iter().map(|s| (s.line, s.text.as_str())).collect();
    assert_eq!(
        texts,
        [
            (1, "nexus up --auth"),
            (1, "nexus up --model m"),
            (
                5,
                "NEXUS_X=1 ./target/release/nexus serve --a 1 --b=2   # --not-a-flag"
            ),
            (7, "curl -s x | grep y"),
            (13, "nexus models list"),
        ]
    );
    assert_eq!(
        words("a \"b c\" --d # e"),
        ["a", "\"b c\"", "--d"].map(String::from)
    );

    let help_text = [
        "Serve models",
        "",
        "Usage: nexus serve [OPTIONS]",
        "",
        "Commands:",
        "  push  Upload",
        "        and register",
        "  help  Print this message",
        "",
        "Options:",
        "      --http-port <HTTP_PORT>",
        "          Port [default: 8000]",
        "  -f, --follow  Keep streaming --not-this",
        "  -h, --help  Print help",
    ]
    .join("\n");
    let help = parse_help(&help_text);
    assert_eq!(
        help.subcommands,
        ["help", "push"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        help.flags,
        ["--follow", "--help", "--http-port"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

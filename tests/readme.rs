//! Every command line README.md and the docs it sends readers to show parses: each `gpt2 ...`
//! (or `cargo run --release -- ...`) of their code blocks and of their inline code, tables
//! included, runs with `--help` appended and exits 0. The synopses of the command table are
//! made concrete first: an optional `[...]` is kept, an alternative `a|b` becomes its first
//! choice, and a placeholder (`FILE`, `N`) or a flag listed without its value gets a value of
//! the right kind.

mod common;

use common::run_gpt2;
use std::collections::BTreeSet;

const README: &str = include_str!("../README.md");
/// The documents README.md sends readers to for the details, whose command lines must parse too.
const DOCS: [(&str, &str); 4] = [
    ("docs/performance.md", include_str!("../docs/performance.md")),
    ("docs/walkthrough.md", include_str!("../docs/walkthrough.md")),
    ("docs/serve.md", include_str!("../docs/serve.md")),
    ("docs/distributed.md", include_str!("../docs/distributed.md")),
];

/// The command lines of the README, as written (without `gpt2`/`cargo run` and comments).
fn command_lines(readme: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut prose = String::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            prose.push_str(line);
            prose.push('\n');
            continue;
        }
        // A code line: `\` continues it on the next; `  #` starts a comment.
        let code = line.split("  #").next().unwrap().trim();
        match code.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(code);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    // Inline code: the odd pieces between backticks, across line breaks.
    lines.extend(prose.split('`').skip(1).step_by(2).map(|span| span.replace('\n', " ")));
    lines
        .iter()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("gpt2 ")
                .or_else(|| l.strip_prefix("cargo run --release -- "))
                .or((l == "gpt2").then_some(""))
                .map(str::to_string)
        })
        .collect()
}

/// Words split as a shell would: whitespace outside quotes, quotes removed.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => (quote, started) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            _ => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// A synopsis word made concrete; None for words that only shape the synopsis.
fn concrete(word: &str) -> Option<String> {
    let word = word.replace("\\|", "|").replace(['[', ']'], "");
    let word = word.trim_end_matches("...");
    // An alternative: its first choice (a lone `|` between alternatives is dropped).
    let word = word.split('|').next().unwrap();
    if word.is_empty() || matches!(word, "flags" | "below") {
        return None;
    }
    let placeholder = word.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    Some(match (placeholder, word) {
        (true, "BOOL") => "true".into(),
        (true, w) if w.len() == 1 => "1".into(),
        (true, _) => "x".into(),
        (false, w) => w.into(),
    })
}

/// The flags of a (sub)command that take a value, read from its --help.
fn flags_with_values(subcommand: &[String]) -> BTreeSet<String> {
    let mut args: Vec<&str> = subcommand.iter().map(String::as_str).collect();
    args.push("--help");
    let out = run_gpt2(&args);
    assert!(
        out.status.success(),
        "gpt2 {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = BTreeSet::new();
    for line in help.lines().map(str::trim_start).filter(|l| l.starts_with('-')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0].starts_with("--") && pair[1].starts_with('<') {
                flags.insert(pair[0].trim_end_matches(',').to_string());
            }
        }
        // An alias takes a value when its flag does: `[aliases: --learning-rate]`.
        if words.get(1).is_some_and(|w| w.starts_with('<')) {
            if let Some(start) = line.find("aliases: ") {
                let aliases = line[start + 9..].trim_end_matches(']');
                flags.extend(aliases.split(", ").map(str::to_string));
            }
        }
    }
    flags
}

/// `words` with a value after each flag that needs one and has none.
fn with_values(words: Vec<String>) -> Vec<String> {
    let subcommand: Vec<String> = words.iter().take_while(|w| !w.starts_with('-')).cloned().collect();
    let takes_value = flags_with_values(&subcommand);
    let mut out = Vec::new();
    for (i, word) in words.iter().enumerate() {
        out.push(word.clone());
        let next_is_value = words.get(i + 1).is_some_and(|n| !n.starts_with("--"));
        if takes_value.contains(word) && !next_is_value {
            out.push("1".into());
        }
    }
    out
}

#[test]
fn readme_command_lines_parse() {
    let lines = command_lines(README);
    assert!(lines.len() >= 30, "found only {} command lines: {lines:?}", lines.len());
    let docs = DOCS
        .iter()
        .flat_map(|(name, text)| command_lines(text).into_iter().map(move |l| (*name, l)));
    let mut failures = Vec::new();
    for (file, line) in lines.iter().map(|l| ("README.md", l.clone())).chain(docs) {
        let words = with_values(shell_words(&line).iter().filter_map(|w| concrete(w)).collect());
        let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
        args.push("--help");
        let out = run_gpt2(&args);
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("Usage:") {
            failures.push(format!(
                "{file}: `gpt2 {line}` (run as `gpt2 {}`): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "command lines of README.md and its docs that do not parse:\n{}",
        failures.join("\n")
    );
}

/// The extraction itself, on a known snippet: what the test above relies on.
#[test]
fn synopses_become_command_lines() {
    let text = "```\ngpt2 generate --model m --prompt \"a b\" \\\n    --seed 1   # c\n```\n\
                | `gpt2 convert --from M --to hf\\|llmc [--dtype f32\\|bf16]` | x |\n";
    let lines = command_lines(text);
    assert_eq!(
        lines,
        [
            "generate --model m --prompt \"a b\" --seed 1",
            "convert --from M --to hf\\|llmc [--dtype f32\\|bf16]"
        ]
    );
    let words: Vec<String> = shell_words(&lines[1]).iter().filter_map(|w| concrete(w)).collect();
    assert_eq!(words, ["convert", "--from", "1", "--to", "hf", "--dtype", "f32"]);
    assert_eq!(shell_words(&lines[0])[4], "a b");
}

/// `gpt2 inspect --evolution RUN`, as the README's table and quick start write it, names the run.
#[test]
fn evolution_takes_the_run_as_its_value() {
    let out = run_gpt2(&["inspect", "--evolution", "/nonexistent-run", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent-run"), "{err}");
    assert!(!err.contains("unexpected argument"), "{err}");
}

/// The quick start, run outright where it stands in a fresh directory: its `gpt2 train` with a
/// tiny model (the default takes half a minute), then every other line exactly as written.
#[cfg(unix)]
#[test]
fn the_quick_start_runs() {
    let start = README.find("Quick start").expect("a quick start");
    let block = README[start..].split("```").nth(1).expect("its code block");
    let lines: Vec<String> = command_lines(&format!("```{block}```"));
    assert_eq!(lines.len(), 5, "{lines:?}");
    let dir = common::temp_dir("readme-quick-start");
    std::os::unix::fs::symlink(concat!(env!("CARGO_MANIFEST_DIR"), "/data"), dir.join("data")).unwrap();
    let tiny = "--n-layer 1 --n-embd 16 --n-head 2 --block-size 16 --batch-size 2 --max-iters 2 --eval-iters 1";
    for (i, line) in lines.iter().enumerate() {
        let mut words = shell_words(line);
        if i == 0 {
            assert_eq!(words, ["train"]);
            words.extend(tiny.split(' ').map(str::to_string));
            words.extend(["--cache-dir".into(), dir.join("cache").to_str().unwrap().into()]);
        }
        let out = common::gpt2().current_dir(&dir).args(&words).output().unwrap();
        assert!(
            out.status.success(),
            "`gpt2 {line}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

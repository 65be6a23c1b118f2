//! docs/walkthrough.md stays true: every command it shows runs and prints the lines shown
//! (an excerpt, in order; numbers may differ in the last printed digit from one CPU to
//! another), and every function it links to exists in the linked file.

use std::path::Path;

mod common;
use common::gpt2;

const DOC: &str = "docs/walkthrough.md";

/// A command of a ```console block and the output lines shown under it.
struct Example {
    command: String,
    shown: Vec<String>,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut in_console = false;
    for line in doc.lines() {
        match line.trim_end() {
            "```console" => in_console = true,
            "```" => in_console = false,
            _ if !in_console => {}
            command if command.starts_with("$ ") => examples.push(Example {
                command: command[2..].to_string(),
                shown: Vec::new(),
            }),
            "" => {}
            shown => examples
                .last_mut()
                .expect("output before a command")
                .shown
                .push(shown.to_string()),
        }
    }
    examples
}

/// Splits a command line into words; double quotes group words.
fn words(command: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for ch in command.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => words.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
            ch => word.push(ch),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

/// A number printed in a word (`-0.0174`, `[+2.028,`, `40.74%`): the word with the number
/// replaced by `#`, the value, and the largest difference that only the last printed digit
/// makes (0 for integers).
fn split_number(word: &str) -> Option<(String, f64, f64)> {
    let start = word.find(|c: char| c.is_ascii_digit() || c == '-' || c == '+')?;
    let len = word[start..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(word.len() - start);
    let number = &word[start..start + len];
    let decimals = number.find('.').map_or(0, |dot| number.len() - dot - 1);
    let last_digit = if decimals == 0 {
        0.0
    } else {
        1.01 * 10f64.powi(-(decimals as i32))
    };
    Some((
        format!("{}#{}", &word[..start], &word[start + len..]),
        number.parse().ok()?,
        last_digit,
    ))
}

/// The same words, numbers equal up to the last printed digit.
fn same_line(shown: &str, actual: &str) -> bool {
    let (shown, actual): (Vec<&str>, Vec<&str>) =
        (shown.split_whitespace().collect(), actual.split_whitespace().collect());
    shown.len() == actual.len()
        && shown.iter().zip(&actual).all(|(s, a)| {
            s == a
                || matches!((split_number(s), split_number(a)),
                    (Some((s_text, s_value, last_digit)), Some((a_text, a_value, _)))
                        if s_text == a_text && (s_value - a_value).abs() <= last_digit)
        })
}

#[test]
fn every_command_runs_and_prints_what_the_walkthrough_shows() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let examples = examples(&doc);
    assert!(
        examples.len() >= 6,
        "expected the walkthrough's examples, found {}",
        examples.len()
    );
    for example in examples {
        let words = words(&example.command);
        assert_eq!(words[0], "gpt2", "{}: commands run the gpt2 binary", example.command);
        let output = gpt2().args(&words[1..]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} failed:\n{}",
            example.command,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut actual = stdout.lines();
        for shown in &example.shown {
            assert!(
                actual.any(|line| same_line(shown, line)),
                "`{}` does not print (in this order) the line\n{shown}\nIt prints:\n{stdout}",
                example.command
            );
        }
    }
}

#[test]
fn every_linked_function_is_in_the_linked_file() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let mut links = 0;
    for (i, _) in doc.match_indices("](../") {
        let target = &doc[i + 2..i + doc[i..].find(')').unwrap()];
        let path = Path::new("docs").join(target);
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("link to {target}: {e}"));
        let label_start = doc[..i].rfind('[').unwrap();
        let label = &doc[label_start + 1..i];
        let Some(name) = label.strip_prefix('`').and_then(|l| l.strip_suffix('`')) else {
            continue;
        };
        let item = name.rsplit("::").next().unwrap();
        let defined = ["fn", "struct", "enum", "trait", "type", "const"].iter().any(|kind| {
            source.contains(&format!("{kind} {item}("))
                || source.contains(&format!("{kind} {item} "))
                || source.contains(&format!("{kind} {item}<"))
        });
        assert!(defined, "{name} is not defined in {target}");
        links += 1;
    }
    assert!(
        links >= 20,
        "expected the walkthrough's links to the code, found {links}"
    );
}

#[test]
fn lines_match_up_to_the_last_digit() {
    assert!(same_line(
        "mean -0.0174  std 1.0285  [+2.028, -0.375, …]",
        "mean -0.0175  std 1.0285  [+2.028, -0.374, …]"
    ));
    assert!(same_line("40.74%  1  \" \"", "40.75%  1  \" \""));
    assert!(!same_line("40.74%  1  \" \"", "40.74%  2  \" \""));
    assert!(!same_line("mean -0.0174", "mean -0.0474"));
    assert!(!same_line("total 124,439,808", "total 124,439,809"));
    assert!(!same_line("head  0 attends", "head  0"));
    assert_eq!(
        words(r#"gpt2 inspect --prompt "To be or" --layer 0"#),
        ["gpt2", "inspect", "--prompt", "To be or", "--layer", "0"]
    );
}

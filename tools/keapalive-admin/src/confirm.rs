//! The confirmation before a destructive command. Without a terminal nobody can answer, and a
//! script that meant to delete says so with `--yes`: guessing either way would be wrong.

use std::io::{BufRead, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    /// The operator answered something other than yes.
    Declined,
    /// No terminal to ask and no `--yes`.
    CannotAsk,
}

/// Asks `question` on `prompt_to` and reads one line from `answers`; only `y` or `yes`
/// (any case) proceeds. `assume_yes` skips the question; `interactive` says whether `answers`
/// is a terminal.
pub fn confirm(
    question: &str,
    assume_yes: bool,
    interactive: bool,
    answers: &mut impl BufRead,
    prompt_to: &mut impl Write,
) -> Decision {
    if assume_yes {
        return Decision::Proceed;
    }
    if !interactive {
        return Decision::CannotAsk;
    }
    let _ = write!(prompt_to, "{question} [y/N] ");
    let _ = prompt_to.flush();
    let mut answer = String::new();
    if answers.read_line(&mut answer).is_err() {
        return Decision::Declined;
    }
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Decision::Proceed,
        _ => Decision::Declined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(input: &str, assume_yes: bool, interactive: bool) -> (Decision, String) {
        let mut prompt = Vec::new();
        let decision = confirm(
            "Delete?",
            assume_yes,
            interactive,
            &mut input.as_bytes(),
            &mut prompt,
        );
        (decision, String::from_utf8(prompt).unwrap())
    }

    #[test]
    fn only_yes_proceeds() {
        assert_eq!(ask("y\n", false, true).0, Decision::Proceed);
        assert_eq!(ask("YES\n", false, true).0, Decision::Proceed);
        assert_eq!(ask("\n", false, true).0, Decision::Declined);
        assert_eq!(ask("no\n", false, true).0, Decision::Declined);
        assert_eq!(ask("", false, true).0, Decision::Declined);
        assert_eq!(ask("y\n", false, true).1, "Delete? [y/N] ");
    }

    #[test]
    fn without_a_terminal_it_refuses_to_ask() {
        let (decision, prompt) = ask("y\n", false, false);
        assert_eq!(decision, Decision::CannotAsk);
        assert!(prompt.is_empty());
    }

    #[test]
    fn assume_yes_never_asks() {
        let (decision, prompt) = ask("", true, false);
        assert_eq!(decision, Decision::Proceed);
        assert!(prompt.is_empty());
    }
}

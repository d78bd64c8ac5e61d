//! Asking before a bulk delete, and the name the user runs this program by
//! (for commands printed for them to run next).

use super::CliResult;
use std::io::{BufRead, IsTerminal, Write};

/// True when the user agrees to `question` (`y` or `yes`), or said `--yes`
/// up front. Without a terminal to ask on, the answer is an error that
/// says to add `--yes`: a script must never delete jobs by default.
pub fn confirm(question: &str, yes: bool) -> Result<bool, Box<dyn std::error::Error>> {
    if yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(format!("{question} Not asked: stdin is not a terminal. Add --yes to go ahead.").into());
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// What a refused confirmation prints: nothing was changed.
pub fn declined() -> CliResult {
    println!("nothing deleted");
    Ok(())
}

/// The name this program was started by (argv[0]): `fairway` when it is
/// on the PATH, `scripts/fairway` from a checkout (that script passes the
/// name it was called by), or a path. Commands printed for the user to run
/// next start with it, so they can be pasted as they are.
pub fn program() -> String {
    std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "fairway".into())
}

/// "1 dead letter", "3 dead letters".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_yes_agrees() {
        for a in ["y\n", "YES\n", " yes "] {
            assert!(is_yes(a), "{a:?}");
        }
        for a in ["\n", "n\n", "no", "yep", ""] {
            assert!(!is_yes(a), "{a:?}");
        }
        assert!(confirm("Delete?", true).unwrap(), "--yes asks nothing");
    }

    #[test]
    fn counts_agree_with_their_number() {
        assert_eq!(count(1, "dead letter", "dead letters"), "1 dead letter");
        assert_eq!(count(0, "dead letter", "dead letters"), "0 dead letters");
        assert_eq!(count(12, "job", "jobs"), "12 jobs");
    }
}

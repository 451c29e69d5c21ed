//! The console as a login shell. sshd (and `login` on the serial console) start the
//! account's shell: `callgate -c "COMMAND"` for `ssh appliance COMMAND`, and `-callgate`
//! (a leading `-` in argv[0]) for an interactive login. The command is split into words
//! here, without a shell: no expansion, no redirection, no second command; `/bin/sh` is
//! just an unknown command.

/// How the binary was started.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// As a tool (`callgate show calls`).
    Tool,
    /// As a login shell with one command (`-c`), split into words.
    Command(Vec<String>),
    /// As an interactive login shell.
    Interactive,
}

/// Reads argv.
pub fn invocation(argv: &[String]) -> Result<Invocation, String> {
    let login = argv.first().is_some_and(|a| a.starts_with('-'));
    match argv.get(1).map(String::as_str) {
        Some("-c") => {
            let cmd = argv.get(2).ok_or("-c needs a command")?;
            if argv.len() > 3 {
                return Err("one command after -c".into());
            }
            let words = split(cmd)?;
            if words
                .iter()
                .any(|w| w == "--socket" || w.starts_with("--socket="))
            {
                return Err("--socket is not a console command".into());
            }
            Ok(Invocation::Command(words))
        }
        None if login => Ok(Invocation::Interactive),
        _ => Ok(Invocation::Tool),
    }
}

/// Splits a command line into words: blanks separate, "double" or 'single' quotes keep
/// blanks, a backslash inside double quotes keeps the next `"` or `\`. Nothing else is
/// special: `$`, `;`, `|`, `>` and backquotes are ordinary characters.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("a ' is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\')) => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        Some(c) => cur.push(c),
                        None => return Err("a \" is not closed".into()),
                    }
                }
            }
            c if c.is_control() => return Err("control characters are not accepted".into()),
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_login_shell_takes_one_command_and_no_shell_syntax() {
        assert_eq!(
            invocation(&argv(&["callgate", "-c", "show cdrs --last 5"])).unwrap(),
            Invocation::Command(argv(&["show", "cdrs", "--last", "5"]))
        );
        assert_eq!(
            invocation(&argv(&["callgate", "-c", "/bin/sh; id $(whoami) > /tmp/x"])).unwrap(),
            Invocation::Command(argv(&["/bin/sh;", "id", "$(whoami)", ">", "/tmp/x"]))
        );
        assert_eq!(
            invocation(&argv(&["-callgate"])).unwrap(),
            Invocation::Interactive
        );
        assert_eq!(
            invocation(&argv(&["callgate", "show", "calls"])).unwrap(),
            Invocation::Tool
        );
        assert!(invocation(&argv(&["callgate", "-c"])).is_err());
        assert!(invocation(&argv(&["callgate", "-c", "status --socket /tmp/s"])).is_err());
        assert!(invocation(&argv(&["callgate", "-c", "a", "b"])).is_err());
    }

    #[test]
    fn quotes_keep_blanks_and_nothing_else_is_special() {
        assert_eq!(
            split(r#"a "b c" 'd e' "f\"g""#).unwrap(),
            argv(&["a", "b c", "d e", "f\"g"])
        );
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
        assert!(split("a 'b").is_err());
        assert!(split("a \"b").is_err());
        assert!(split("a\u{7}b").is_err());
    }
}

//! Quoting for the guest's POSIX shell.
//!
//! OpenSSH sends a command as one string that the remote user's shell
//! parses again: `ssh host sh -c 'echo "a  b"'` joins its arguments with
//! spaces, so the guest runs `sh -c echo "a  b"`. banger quotes each word
//! itself, so `banger vm ssh NAME -- ARGS` and `banger vm run -- ARGS` reach
//! the guest with exactly the argv the local shell produced.

/// Quote `s` as one word for a POSIX shell: unchanged when it holds only
/// characters no shell treats specially, else single-quoted (inside single
/// quotes nothing is special; a `'` is closed, escaped and reopened).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The remote command line that runs `argv` with each element one word.
pub fn join(argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile words: every one must come back byte for byte from a real
    /// `sh`, whatever it holds.
    fn hard_words() -> Vec<String> {
        [
            "",
            " ",
            "a  b",
            "it's",
            "''",
            "\"double\"",
            "$HOME ${x:-y} $(id) `id`",
            "a;b && c || d | e & f",
            "line1\nline2\n",
            "tab\there",
            "*?[a-z]{x,y}~",
            "\\back\\slash\\",
            "-n",
            "#comment",
            "ünïcödé ✓",
            "a'b\"c$d;e\nf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(quote("make"), "make");
        assert_eq!(quote("a/b.c"), "a/b.c");
        assert_eq!(quote("--flag=x,y"), "--flag=x,y");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(
            join(&["sh".into(), "-c".into(), "echo \"a  b\"".into()]),
            r#"sh -c 'echo "a  b"'"#
        );
    }

    #[test]
    fn a_real_shell_reads_back_every_word() {
        let words = hard_words();
        // `printf '%s\0'` prints each argument the shell parsed, NUL-ended.
        let mut argv = vec!["printf".to_owned(), "%s\\0".to_owned()];
        argv.extend(words.iter().cloned());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(join(&argv))
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{out:?}");
        let got: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|w| String::from_utf8(w.to_vec()).unwrap())
            .collect();
        let mut want = words.clone();
        want.push(String::new()); // after the last NUL
        assert_eq!(got, want);
    }
}

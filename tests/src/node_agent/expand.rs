//! Kubernetes `$(VAR)` expansion in env values, command and args.
//!
//! Same rules as the kubelet: `$(NAME)` becomes NAME's value when NAME is
//! defined, stays as written when it is not; `$$` is an escaped `$`, so
//! `$$(NAME)` yields the literal `$(NAME)`.

/// Expands `input` with `lookup`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        // Copy one UTF-8 character.
        let ch_len = input[i..].chars().next().map(char::len_utf8).unwrap_or(1);
        out.push_str(&input[i..i + ch_len]);
        i += ch_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("127.0.0.5".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn defined_variables_are_replaced() {
        assert_eq!(expand("$(POD_IP):9090", env), "127.0.0.5:9090");
        assert_eq!(expand("a$(EMPTY)b", env), "ab");
    }

    #[test]
    fn undefined_variables_stay_as_written() {
        assert_eq!(expand("$(NOPE)/x", env), "$(NOPE)/x");
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(expand("$$(POD_IP)", env), "$(POD_IP)");
        assert_eq!(expand("cost $$5", env), "cost $5");
    }

    #[test]
    fn unterminated_and_plain_text_pass_through() {
        assert_eq!(expand("$(POD_IP", env), "$(POD_IP");
        assert_eq!(expand("héllo $ x", env), "héllo $ x");
    }
}

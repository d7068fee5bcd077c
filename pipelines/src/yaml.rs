//! Parsing untrusted YAML with its flow nesting bounded first.
//!
//! libyaml's scanner (under `serde_yaml_ng`) checks every open flow level on every token, so
//! its time grows with tokens × flow depth: 740 KB of `{"root":{"root":…` took 50 s, and the
//! whole document is scanned before serde's own recursion limit can apply. One linear pass
//! measures the depth of `[`/`{` first and refuses a spec nested deeper than
//! [`MAX_FLOW_DEPTH`], which no real pipeline comes near.

use serde::de::DeserializeOwned;

use crate::error::SpecError;

/// Deepest nesting of flow collections (`[…]`, `{…}`) a spec may have.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Parses `text` as YAML (JSON included) once its flow nesting is known to be bounded.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let depth = flow_depth(text);
    if depth > MAX_FLOW_DEPTH {
        return Err(SpecError::new(format!(
            "the spec nests '[' or '{{' more than {MAX_FLOW_DEPTH} deep"
        )));
    }
    serde_yaml_ng::from_str(text).map_err(|e| SpecError::new(format!("not valid YAML: {e}")))
}

/// The deepest flow nesting in `text`, stopping early once past [`MAX_FLOW_DEPTH`].
///
/// Brackets inside quoted scalars, comments and block scalars (`|`, `>`) do not count. A
/// quote opens a quoted scalar only where a YAML scalar can start (line start, after `[`,
/// `{`, `,`, `: `, a `- `/`? ` there, or an anchor or tag there), as the
/// YAML scanner decides, so a quote inside a plain scalar (`don't`) cannot hide what follows.
fn flow_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut at_start = true;
    // Indentation of the current line and, inside a block scalar, of the line that opened it.
    let mut indent = 0usize;
    let mut line_start = true;
    let mut block_parent: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if line_start {
            let spaces = bytes[i..].iter().take_while(|&&b| b == b' ').count();
            let blank = matches!(bytes.get(i + spaces), None | Some(b'\n' | b'\r'));
            if let Some(parent) = block_parent {
                if blank || spaces > parent {
                    // Past this line's newline, still at a line start.
                    i = skip_line(bytes, i) + 1;
                    continue;
                }
                block_parent = None;
            }
            indent = spaces;
            line_start = false;
            at_start = true;
            i += spaces;
            continue;
        }
        let next_is_space = matches!(bytes.get(i + 1), None | Some(b' ' | b'\t' | b'\n' | b'\r'));
        match c {
            b'\n' => {
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {}
            b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t') => {
                i = skip_line(bytes, i);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_FLOW_DEPTH {
                    return deepest;
                }
                at_start = true;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at_start = false;
            }
            b',' => at_start = true,
            // `: ` always ends a key; `- ` and `? ` are indicators only where a node starts.
            b':' if next_is_space => at_start = true,
            b'-' | b'?' if next_is_space && at_start => {}
            b'\'' | b'"' if at_start => {
                i = skip_quoted(bytes, i);
                at_start = false;
                continue;
            }
            b'&' | b'!' if at_start => {
                while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
                continue;
            }
            b'|' | b'>' if at_start && depth == 0 => {
                block_parent = Some(indent);
                i = skip_line(bytes, i);
                continue;
            }
            _ => at_start = false,
        }
        i += 1;
    }
    deepest
}

/// The index of the newline ending the line at `i` (or the end of the text).
fn skip_line(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |n| i + n)
}

/// The index just past the quoted scalar opening at `i` (`''` escapes a single quote, `\`
/// escapes in double quotes).
fn skip_quoted(bytes: &[u8], i: usize) -> usize {
    let quote = bytes[i];
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' if quote == b'"' => j += 2,
            b'\'' if quote == b'\'' && bytes.get(j + 1) == Some(&b'\'') => j += 2,
            b if b == quote => return j + 1,
            _ => j += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("steps: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let err = from_str::<serde_json::Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("more than 64 deep"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let json = format!("{}{{}}{}", r#"{"root":"#.repeat(65), "}".repeat(65));
        assert!(from_str::<serde_json::Value>(&json).is_err());
    }

    #[test]
    fn quotes_comments_and_block_scalars_neither_hide_nor_add_depth() {
        let ok = "a: '[[[[' # {{{{\nb: \"]]\\\"[[[\"\nc: |\n  x = [[[[[[[[\n  '\nd: don't [x]\n";
        assert_eq!(flow_depth(ok), 1);
        // A quote inside a plain scalar opens nothing: the nesting after it still counts.
        let hidden = format!("a: b 'c\nsteps: {}", "[".repeat(70));
        assert!(flow_depth(&hidden) > MAX_FLOW_DEPTH);
        let dash = format!("a: b - 'c\nsteps: [x#y, {}", "[".repeat(70));
        assert!(flow_depth(&dash) > MAX_FLOW_DEPTH);
        let tagged = format!("a: {}", "[ &x ']]]]', ".repeat(70));
        assert!(flow_depth(&tagged) > MAX_FLOW_DEPTH);
    }
}

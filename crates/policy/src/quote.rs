//! How values written by users appear in our messages: quoted, escaped and cut short, so a
//! 256 KiB annotation or a control character cannot flood or garble an event.

/// Longest part of a user value repeated in a message, in characters.
const SHOWN_CHARS: usize = 64;

/// `value` as a quoted, escaped string literal, cut to [`SHOWN_CHARS`] characters.
pub(crate) fn quoted(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_control_characters_escaped() {
        assert_eq!(quoted("ja"), "\"ja\"");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let long = "é".repeat(1000);
        let shown = quoted(&long);
        assert!(shown.chars().count() < 100, "{shown}");
        assert!(shown.ends_with("(2000 bytes)"), "{shown}");
    }
}

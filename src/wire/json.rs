//! The flat JSON objects a hit answers with, written straight into one buffer.
//!
//! A pool hit's answer is a handful of string members, one of them a ~500-byte URL. Going through
//! `serde_json` checks every byte of it for escaping one at a time and builds the object through
//! its serializer; here a string that needs no escaping (every URL and id in practice) is checked
//! a chunk at a time and copied whole. Anything that does need escaping goes through
//! `serde_json`, so the output is byte for byte what `serde_json` writes.

use std::fmt::Write;

/// A JSON object being written, members in the order they are added.
pub struct Object {
    buf: String,
}

impl Object {
    /// An empty object with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Object {
        let mut buf = String::with_capacity(capacity);
        buf.push('{');
        Object { buf }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        push_json_str(&mut self.buf, key);
        self.buf.push(':');
    }

    /// Adds a string member.
    pub fn str(mut self, key: &str, value: &str) -> Object {
        self.key(key);
        push_json_str(&mut self.buf, value);
        self
    }

    /// Adds a string member when there is a value.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> Object {
        match value {
            Some(v) => self.str(key, v),
            None => self,
        }
    }

    /// Adds a number member.
    pub fn num(mut self, key: &str, value: u64) -> Object {
        self.key(key);
        // Writing into a `String` cannot fail.
        let _ = write!(self.buf, "{value}");
        self
    }

    /// The finished object.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push('}');
        self.buf.into_bytes()
    }
}

/// Whether `s` can be written between quotes as it is: no control character, quote or
/// backslash (the only characters JSON requires escaped, and the only ones `serde_json` escapes).
fn plain(s: &str) -> bool {
    // A fold without an early exit over fixed-size chunks compiles to vector compares.
    s.as_bytes().chunks(32).all(|chunk| {
        chunk
            .iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    })
}

/// Appends `s` as a JSON string (an answer's members here, and the log lines of `telemetry`).
pub fn push_json_str(out: &mut String, s: &str) {
    if plain(s) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // A `str` always serialises.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Appends the text of `args` as a JSON string, written in place: a `format!` first would cost
/// an allocation per value (each log line's message is one).
pub fn push_json_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    let start = out.len();
    out.push('"');
    // Writing into a `String` cannot fail.
    let _ = out.write_fmt(args);
    if plain(&out[start + 1..]) {
        out.push('"');
    } else {
        let raw = out.split_off(start + 1);
        out.truncate(start);
        push_json_str(out, &raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_answer_reads_back_as_the_members_written_in_order() {
        let body = Object::with_capacity(64)
            .str(
                "EmbedUrl",
                "https://example.com/embed/abc?code=x&identityprovider=quicksight",
            )
            .num("Status", 200)
            .opt_str("AnonymousUserArn", None)
            .str("RequestId", "r-1")
            .finish();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"EmbedUrl":"https://example.com/embed/abc?code=x&identityprovider=quicksight","Status":200,"RequestId":"r-1"}"#
        );
        assert_eq!(Object::with_capacity(0).finish(), b"{}");
    }

    #[test]
    fn strings_that_need_escaping_are_escaped_as_serde_json_does() {
        for s in [
            "a\"b",
            "back\\slash",
            "tab\there",
            "nl\n",
            "\u{1}",
            "ünï©ødé",
            "\u{7f}",
            "",
        ] {
            let ours = Object::with_capacity(0).str("k", s).finish();
            let theirs = serde_json::to_vec(&serde_json::json!({ "k": s })).unwrap();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_round_trips_through_a_json_parser(s in any::<String>(), n in any::<u64>()) {
            let body = Object::with_capacity(0).str("Value", &s).num("N", n).finish();
            let back: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(back["Value"].as_str(), Some(s.as_str()));
            prop_assert_eq!(back["N"].as_u64(), Some(n));
            let expected = format!("{{\"Value\":{},\"N\":{n}}}", serde_json::to_string(&s).unwrap());
            prop_assert_eq!(String::from_utf8(body).unwrap(), expected);
        }

        #[test]
        fn formatted_text_is_written_as_serde_json_writes_the_string(
            before in any::<String>(),
            s in any::<String>(),
        ) {
            let mut out = before.clone();
            push_json_fmt(&mut out, format_args!("{s}"));
            prop_assert_eq!(out, format!("{before}{}", serde_json::to_string(&s).unwrap()));
        }
    }
}

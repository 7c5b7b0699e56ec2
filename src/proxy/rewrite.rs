//! Request rewriting for usage the client did not ask for (issue 3): adds
//! `stream_options.include_usage = true` to OpenAI-format streaming requests (and OpenRouter's
//! `usage.include = true`). Pure. Every top-level member other than the ones it touches keeps its
//! exact bytes; nothing else in the body is re-encoded.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// What a rewrite did, so the tee knows which chunk it must hide from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub body: Vec<u8>,
    /// True when meter turned stream usage on: the usage-only chunk is meter's, not the client's.
    pub injected_stream_usage: bool,
}

/// The request's top-level members, in order, each value as its raw JSON text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Rewrites a request so the provider reports usage: stream usage for a streaming request
/// (`inject_stream` on), and for OpenRouter (`openrouter`) usage accounting with its cost.
/// `None` when the body is not a JSON object or already asks for everything meter needs.
pub fn request_usage(body: &[u8], inject_stream: bool, openrouter: bool) -> Option<Rewritten> {
    let members: Members = serde_json::from_slice(body).ok()?;
    let get = |name: &str| {
        members
            .0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, v)| *v)
    };
    let streaming = get("stream").map(RawValue::get) == Some("true");
    let options = get("stream_options");
    let mut options_object = match options {
        None => serde_json::Map::new(),
        Some(raw) if raw.get() == "null" => serde_json::Map::new(),
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::Object(object)) => object,
            // Something meter does not understand: leave the request alone.
            _ => return None,
        },
    };
    let client_asked = options_object.get("include_usage") == Some(&serde_json::Value::Bool(true));
    let inject_usage = inject_stream && streaming && !client_asked;
    let usage_member = get("usage");
    let inject_openrouter = openrouter
        && match usage_member {
            None => true,
            Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(serde_json::Value::Object(object)) => {
                    object.get("include") != Some(&serde_json::Value::Bool(true))
                }
                Ok(serde_json::Value::Null) => true,
                _ => false,
            },
        };
    if !inject_usage && !inject_openrouter {
        return None;
    }
    if inject_usage {
        options_object.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    let new_options = serde_json::Value::Object(options_object).to_string();
    let new_usage = match (inject_openrouter, usage_member) {
        (true, Some(raw)) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::Object(mut object)) => {
                object.insert("include".into(), serde_json::Value::Bool(true));
                Some(serde_json::Value::Object(object).to_string())
            }
            _ => Some(r#"{"include":true}"#.to_string()),
        },
        (true, None) => Some(r#"{"include":true}"#.to_string()),
        (false, _) => None,
    };

    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    let mut first = true;
    let mut push = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        // serde_json escapes the key exactly as JSON requires.
        out.extend_from_slice(
            serde_json::Value::String(key.to_string())
                .to_string()
                .as_bytes(),
        );
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    let (mut wrote_options, mut wrote_usage) = (false, false);
    for (key, value) in &members.0 {
        match key.as_str() {
            "stream_options" if inject_usage => {
                push(&mut out, key, &new_options);
                wrote_options = true;
            }
            "usage" if new_usage.is_some() => {
                push(&mut out, key, new_usage.as_deref().unwrap_or("{}"));
                wrote_usage = true;
            }
            _ => push(&mut out, key, value.get()),
        }
    }
    if inject_usage && !wrote_options {
        push(&mut out, "stream_options", &new_options);
    }
    if let (Some(usage), false) = (&new_usage, wrote_usage) {
        push(&mut out, "usage", usage);
    }
    out.push(b'}');
    Some(Rewritten {
        body: out,
        injected_stream_usage: inject_usage,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(body: &str, openrouter: bool, expected: Option<(&str, bool)>) {
        let got = request_usage(body.as_bytes(), true, openrouter)
            .map(|r| (String::from_utf8(r.body).unwrap(), r.injected_stream_usage));
        assert_eq!(
            got.as_ref().map(|(b, i)| (b.as_str(), *i)),
            expected,
            "{body}"
        );
        if let Some((rewritten, true)) = got {
            let value: serde_json::Value = serde_json::from_str(&rewritten).unwrap();
            assert_eq!(value["stream_options"]["include_usage"], true);
        }
    }

    #[test]
    fn injects_only_what_is_missing() {
        check(
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hé \"x\""}],"temperature":0.70}"#,
            false,
            Some((
                r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hé \"x\""}],"temperature":0.70,"stream_options":{"include_usage":true}}"#,
                true,
            )),
        );
        check(
            r#"{"stream": true, "stream_options": {"include_obfuscation": false}, "n": 1}"#,
            false,
            Some((
                r#"{"stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true},"n":1}"#,
                true,
            )),
        );
        check(
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            false,
            Some((
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                true,
            )),
        );
        check(
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            false,
            None,
        );
        check(r#"{"stream":false,"messages":[]}"#, false, None);
        assert_eq!(request_usage(br#"{"stream":true}"#, false, false), None);
        check(r#"{"messages":[]}"#, false, None);
        check(r#"[1,2]"#, false, None);
        check(r#"{"stream":true,"stream_options":"weird"}"#, false, None);
        check(r#"{"stream":true"#, false, None);
    }

    #[test]
    fn openrouter_also_asks_for_cost() {
        check(
            r#"{"model":"openai/gpt-4o","messages":[]}"#,
            true,
            Some((
                r#"{"model":"openai/gpt-4o","messages":[],"usage":{"include":true}}"#,
                false,
            )),
        );
        check(
            r#"{"model":"openai/gpt-4o","stream":true}"#,
            true,
            Some((
                r#"{"model":"openai/gpt-4o","stream":true,"stream_options":{"include_usage":true},"usage":{"include":true}}"#,
                true,
            )),
        );
        check(
            r#"{"stream":true,"stream_options":{"include_usage":true},"usage":{"include":false}}"#,
            true,
            Some((
                r#"{"stream":true,"stream_options":{"include_usage":true},"usage":{"include":true}}"#,
                false,
            )),
        );
    }
}

//! Parameters of a request body as any server could read them: as a form,
//! and, when the body is a JSON object, as JSON. Servers differ in what
//! they read whatever the declared content type, so a stage that takes a
//! value from a body (a refresh token, a login's username) checks every
//! reading.

use std::borrow::Cow;

/// One reading of a body: its parameters in order, repeated names included.
pub type Params<'b> = Vec<(Cow<'b, str>, Cow<'b, str>)>;

/// The body read as a form, and as a JSON object's top-level members when
/// it starts with `{` and parses. A JSON member that is not a string reads
/// as its JSON text.
pub fn readings(body: &[u8]) -> Vec<Params<'_>> {
    let mut readings = vec![form_urlencoded::parse(body).collect()];
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        if let Ok(JsonMembers(members)) = serde_json::from_slice(body) {
            let members = members.into_iter().map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (Cow::Owned(k), Cow::Owned(v))
            });
            readings.push(members.collect());
        }
    }
    readings
}

/// Whether a reading has a parameter more than once: a server may take the
/// first value where palisade would take the last.
pub fn has_repeated(params: &Params<'_>, name: Option<&str>) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(params.len());
    params
        .iter()
        .filter(|(k, _)| name.is_none_or(|n| k == n))
        .any(|(k, _)| !seen.insert(k.as_ref()))
}

/// The value of `name` in a reading.
pub fn value<'p>(params: &'p Params<'_>, name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_ref())
}

/// The members of a JSON object in order, repeated names included
/// (`serde_json::Value` keeps only the last of them).
struct JsonMembers(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for JsonMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(JsonMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_read_as_a_form_and_as_json() {
        let r = readings(br#" {"username": "Bob", "n": 3}"#);
        assert_eq!(r.len(), 2);
        assert_eq!(value(&r[1], "username"), Some("Bob"));
        assert_eq!(value(&r[1], "n"), Some("3"));
        assert_eq!(value(&r[0], "username"), None);
    }

    #[test]
    fn a_form_is_read_once_and_repeats_are_seen() {
        let r = readings(b"username=a&password=x&username=b");
        assert_eq!(r.len(), 1);
        assert!(has_repeated(&r[0], Some("username")));
        assert!(has_repeated(&r[0], None));
        assert!(!has_repeated(&r[0], Some("password")));
        let json = readings(br#"{"u": 1, "u": 2}"#);
        assert!(has_repeated(&json[1], Some("u")));
    }
}

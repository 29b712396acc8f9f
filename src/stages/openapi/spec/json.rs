//! A JSON body parsed into a `serde_json::Value`, refusing repeated member
//! names: `Value` keeps only the last of them while the upstream's parser
//! may read the first, so a body validated here could differ from the one
//! acted upon. serde_json's nesting limit (128) applies.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body is not accepted as JSON.
pub(super) enum Bad {
    /// Not JSON (or nested too deeply).
    Syntax,
    /// A repeated member name in some object. Where is not kept: the
    /// names on the way are the client's text.
    Duplicate,
}

/// Set when a repeated member name stopped the parse.
#[derive(Default)]
struct State {
    duplicate: bool,
}

struct Parse<'s>(&'s mut State);

pub(super) fn parse(body: &[u8]) -> Result<Value, Bad> {
    let mut state = State::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Parse(&mut state).deserialize(&mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if state.duplicate => Err(Bad::Duplicate),
        Err(_) => Err(Bad::Syntax),
    }
}

impl<'de> DeserializeSeed<'de> for Parse<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Parse<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Parse(&mut *self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                self.0.duplicate = true;
                return Err(A::Error::custom("duplicate member"));
            }
            let v = map.next_value_seed(Parse(&mut *self.0))?;
            members.insert(key, v);
        }
        Ok(Value::Object(members))
    }
}

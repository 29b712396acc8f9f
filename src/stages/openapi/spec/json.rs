//! A JSON body parsed into a `serde_json::Value`, refusing repeated member
//! names: `Value` keeps only the last of them while the upstream's parser
//! may read the first, so a body validated here could differ from the one
//! acted upon. serde_json's nesting limit (128) applies.

use super::schema::push_token;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body is not accepted as JSON.
pub(super) enum Bad {
    /// Not JSON (or nested too deeply).
    Syntax,
    /// A repeated member name in the object at this pointer.
    Duplicate(String),
}

/// While a duplicate unwinds: the pointer's tokens, innermost first.
#[derive(Default)]
struct State {
    duplicate: bool,
    tokens: Vec<String>,
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
        Err(_) if state.duplicate => {
            let mut at = String::new();
            for token in state.tokens.iter().rev() {
                push_token(&mut at, token);
            }
            Err(Bad::Duplicate(at))
        }
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
        loop {
            match seq.next_element_seed(Parse(&mut *self.0)) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    if self.0.duplicate {
                        self.0
                            .tokens
                            .push(itoa::Buffer::new().format(items.len()).to_string());
                    }
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                self.0.duplicate = true;
                return Err(A::Error::custom("duplicate member"));
            }
            match map.next_value_seed(Parse(&mut *self.0)) {
                Ok(v) => {
                    members.insert(key, v);
                }
                Err(e) => {
                    if self.0.duplicate {
                        self.0.tokens.push(key);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(members))
    }
}

//! A JSON body walked once, without building a value: well-formedness,
//! depth, and every string read by the rules, member names and repeated
//! members too (`serde_json::Value` keeps only the last of a repeated
//! member, which the upstream may not be the one to read).

use super::{BodyPlan, Findings};
use crate::core::reasons::ValidationError;
use crate::stages::validation::config::Validation;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

struct Walk<'a, 'f> {
    v: &'a Validation,
    plan: &'a BodyPlan,
    out: &'a mut Findings<'f>,
    too_deep: bool,
}

/// One value inside `depth` arrays and objects.
struct Value<'w, 'a, 'f> {
    walk: &'w mut Walk<'a, 'f>,
    depth: usize,
}

pub(super) fn check(v: &Validation, plan: &BodyPlan, body: &[u8], out: &mut Findings<'_>) {
    let mut walk = Walk {
        v,
        plan,
        out,
        too_deep: false,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Value {
        walk: &mut walk,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if parsed.is_err() {
        if walk.too_deep {
            walk.out.push(ValidationError::JsonDepth);
        } else if walk.plan.json_max_depth != usize::MAX {
            // With `json` disabled, a body that does not parse is not refused.
            walk.out.push(ValidationError::Json);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Value<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Value<'_, '_, '_> {
    /// The depth of this value's members, if allowed.
    fn deeper<E: de::Error>(&mut self) -> Result<usize, E> {
        let inner = self.depth + 1;
        if inner > self.walk.plan.json_max_depth {
            self.walk.too_deep = true;
            return Err(E::custom("too deep"));
        }
        Ok(inner)
    }
}

impl<'de> Visitor<'de> for Value<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        let flags = self.walk.v.rules.scan(text.as_bytes(), self.walk.plan.want);
        self.walk.out.flags(flags);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.deeper()?;
        let walk = self.walk;
        while seq
            .next_element_seed(Value {
                walk: &mut *walk,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let depth = self.deeper()?;
        let walk = self.walk;
        while map
            .next_key_seed(Value {
                walk: &mut *walk,
                depth,
            })?
            .is_some()
        {
            map.next_value_seed(Value {
                walk: &mut *walk,
                depth,
            })?;
        }
        Ok(())
    }
}

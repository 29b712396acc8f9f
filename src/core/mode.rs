//! Modes every section shares: whether findings deny (`mode`), and what
//! a request gets when palisade's own state fails (`failure_mode`); and the
//! `string_enum!` macro every section's enums are read with.

/// Unit enums are written as plain strings only: serde would also take the
/// map form `{"enforce": null}`, which no operator means. With the `schema`
/// feature, the enum's JSON Schema lists the same strings.
macro_rules! string_enum {
    ($name:ident, $expecting:literal, { $($text:literal => $variant:expr),+ $(,)? }) => {
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct StrVisitor;
                impl ::serde::de::Visitor<'_> for StrVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        match v {
                            $($text => Ok($variant),)+
                            other => Err(E::unknown_variant(other, &[$($text),+])),
                        }
                    }
                }
                deserializer.deserialize_str(StrVisitor)
            }
        }

        // Exactly the strings the deserializer takes.
        #[cfg(feature = "schema")]
        $crate::core::schema::json_schema_impl!($name, stringify!($name), |_| ::serde_json::json!({
            "type": "string",
            "enum": [$($text),+],
        }));
    };
}
pub(crate) use string_enum;

/// Whether a stage's findings can deny, or are only logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

string_enum!(Mode, "\"enforce\" or \"monitor\"", { "enforce" => Mode::Enforce, "monitor" => Mode::Monitor });

/// What a request gets when palisade's own state (shared data) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    #[default]
    Deny,
    Allow,
}

string_enum!(FailureMode, "\"deny\" or \"allow\"", { "deny" => FailureMode::Deny, "allow" => FailureMode::Allow });

impl FailureMode {
    /// The mode of a finding about a failed host service or shared state.
    pub fn mode(self) -> Mode {
        match self {
            FailureMode::Deny => Mode::Enforce,
            FailureMode::Allow => Mode::Monitor,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Deny => "deny",
            FailureMode::Allow => "allow",
        }
    }
}

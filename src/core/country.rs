//! Countries: ISO 3166-1 alpha-2 codes as a request fact (from a header a
//! trusted component sets, see `stages::geo`) and sets of them, shared by
//! the geo stage's allow/deny lists and the `countries` filter of
//! rate-limit rules.

use crate::core::config_error::{err, ConfigError};

/// Two upper-case ASCII letters.
pub type Country = [u8; 2];

/// An entry of a configuration list of countries, as a JSON Schema pattern.
pub const LIST_PATTERN: &str = "^([A-Z]{2}|unknown)$";

/// The country a header value names: two ASCII letters, surrounding
/// whitespace and case ignored (`" de "` is `DE`). Anything else (empty,
/// `--`, `T1`, a name, several codes) names none.
pub fn parse(value: &[u8]) -> Option<Country> {
    match value.trim_ascii() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

/// A set of countries, one bit per code (26 × 26 = 676 bits), and whether
/// it holds the requests without a known country.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountrySet {
    bits: [u64; 11],
    unknown: bool,
}

fn bit_of(country: Country) -> Option<usize> {
    let [a, b] = country;
    if !(a.is_ascii_uppercase() && b.is_ascii_uppercase()) {
        return None;
    }
    Some(usize::from(a - b'A') * 26 + usize::from(b - b'A'))
}

impl CountrySet {
    /// Whether a request of `country` (`None`: not known) is in the set.
    pub fn contains(&self, country: Option<Country>) -> bool {
        let Some(country) = country else {
            return self.unknown;
        };
        bit_of(country)
            .and_then(|bit| {
                self.bits
                    .get(bit / 64)
                    .map(|word| word >> (bit % 64) & 1 == 1)
            })
            .unwrap_or(false)
    }

    fn insert(&mut self, country: Country) -> bool {
        let Some(bit) = bit_of(country) else {
            return false;
        };
        let Some(word) = self.bits.get_mut(bit / 64) else {
            return false;
        };
        let mask = 1 << (bit % 64);
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }

    /// The set of a configuration list at `path`: codes of two upper-case
    /// letters and `"unknown"`, each once.
    pub fn compile(list: &[String], path: &str) -> Result<CountrySet, ConfigError> {
        if list.is_empty() {
            return Err(err(path, "must not be empty"));
        }
        let mut set = CountrySet::default();
        for (i, code) in list.iter().enumerate() {
            let fresh = match code.as_bytes() {
                b"unknown" => !std::mem::replace(&mut set.unknown, true),
                [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => set.insert([*a, *b]),
                _ => {
                    return Err(err(
                        format!("{path}[{i}]"),
                        "not a country: use an ISO 3166-1 alpha-2 code in upper case such as \"DE\", or \"unknown\" for requests without a country",
                    ))
                }
            };
            if !fresh {
                return Err(err(format!("{path}[{i}]"), "listed twice"));
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(codes: &[&str]) -> Vec<String> {
        codes.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn header_values_are_two_letters_in_any_case() {
        assert_eq!(parse(b"DE"), Some(*b"DE"));
        assert_eq!(parse(b" us\t"), Some(*b"US"));
        assert_eq!(parse(b"kP"), Some(*b"KP"));
        for bad in [
            &b""[..],
            b" ",
            b"--",
            b"T1",
            b"D",
            b"DEU",
            b"Germany",
            b"DE, US",
            b"D E",
            b"\xc3\x9c\xc3\x9c",
            b"D\x00",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_set_holds_exactly_what_it_lists() {
        let set = CountrySet::compile(&list(&["AA", "ZZ", "KP", "US"]), "x").unwrap_or_default();
        for c in [b"AA", b"ZZ", b"KP", b"US"] {
            assert!(set.contains(Some(*c)), "{c:?}");
        }
        for c in [b"AB", b"ZY", b"KR", b"DE", b"ka", b"1A"] {
            assert!(!set.contains(Some(*c)), "{c:?}");
        }
        assert!(!set.contains(None));
        let with_unknown = CountrySet::compile(&list(&["unknown", "DE"]), "x").unwrap_or_default();
        assert!(with_unknown.contains(None));
        assert!(with_unknown.contains(Some(*b"DE")));
        assert!(!with_unknown.contains(Some(*b"FR")));
    }

    #[test]
    fn lists_name_the_entry_that_is_wrong() {
        let error = |codes: &[&str]| {
            CountrySet::compile(&list(codes), "geo.rules[1].deny")
                .err()
                .map(|e| e.path)
        };
        assert_eq!(error(&[]).as_deref(), Some("geo.rules[1].deny"));
        for bad in ["de", "DEU", "D", "", "D1", "Unknown", "UNKNOWN"] {
            assert_eq!(
                error(&["US", bad]).as_deref(),
                Some("geo.rules[1].deny[1]"),
                "{bad:?}"
            );
        }
        assert_eq!(
            error(&["US", "FR", "US"]).as_deref(),
            Some("geo.rules[1].deny[2]")
        );
        assert_eq!(
            error(&["unknown", "unknown"]).as_deref(),
            Some("geo.rules[1].deny[1]")
        );
        assert_eq!(error(&["unknown"]), None);
    }
}

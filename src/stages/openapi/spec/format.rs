//! The `format`s palisade checks; any other format is an annotation.
//! String formats apply to strings, numeric ones to numbers (other types
//! pass, as in JSON Schema).

use serde_json::Value;

#[derive(Clone, Copy)]
pub(super) enum Format {
    Int32,
    Int64,
    Date,
    DateTime,
    Uuid,
    Email,
    Ipv4,
    Ipv6,
    Byte,
}

impl Format {
    pub(super) fn named(name: &str) -> Option<Format> {
        Some(match name {
            "int32" => Format::Int32,
            "int64" => Format::Int64,
            "date" => Format::Date,
            "date-time" => Format::DateTime,
            "uuid" => Format::Uuid,
            "email" => Format::Email,
            "ipv4" => Format::Ipv4,
            "ipv6" => Format::Ipv6,
            "byte" => Format::Byte,
            _ => return None,
        })
    }

    pub(super) fn check(self, v: &Value) -> Result<(), &'static str> {
        let ok = match (self, v) {
            (Format::Int32 | Format::Int64, Value::Number(n)) => {
                let bound = if matches!(self, Format::Int32) {
                    2f64.powi(31)
                } else {
                    2f64.powi(63)
                };
                match n.as_i64() {
                    Some(i) => !matches!(self, Format::Int32) || i32::try_from(i).is_ok(),
                    None => n
                        .as_f64()
                        .is_some_and(|f| f.fract() != 0.0 || (-bound..bound).contains(&f)),
                }
            }
            (Format::Date, Value::String(s)) => date(s.as_bytes()),
            (Format::DateTime, Value::String(s)) => date_time(s.as_bytes()),
            (Format::Uuid, Value::String(s)) => uuid(s.as_bytes()),
            (Format::Email, Value::String(s)) => email(s),
            (Format::Ipv4, Value::String(s)) => s.parse::<std::net::Ipv4Addr>().is_ok(),
            (Format::Ipv6, Value::String(s)) => s.parse::<std::net::Ipv6Addr>().is_ok(),
            (Format::Byte, Value::String(s)) => base64(s.as_bytes()),
            _ => true,
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            Format::Int32 => "is out of the int32 range",
            Format::Int64 => "is out of the int64 range",
            Format::Date => "is not a valid date",
            Format::DateTime => "is not a valid date-time",
            Format::Uuid => "is not a valid uuid",
            Format::Email => "is not a valid email address",
            Format::Ipv4 => "is not a valid IPv4 address",
            Format::Ipv6 => "is not a valid IPv6 address",
            Format::Byte => "is not valid base64",
        })
    }
}

/// `n` ASCII digits at `s[at..]`, as a number.
fn digits(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = s.get(at..at + n)?;
    part.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// RFC 3339 `full-date`.
fn date(s: &[u8]) -> bool {
    s.len() == 10 && full_date(s)
}

fn full_date(s: &[u8]) -> bool {
    let (Some(y), Some(m), Some(d)) = (digits(s, 0, 4), digits(s, 5, 2), digits(s, 8, 2)) else {
        return false;
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => 0,
    };
    s.get(4) == Some(&b'-') && s.get(7) == Some(&b'-') && (1..=days).contains(&d)
}

/// RFC 3339 `date-time`: `2024-02-29T13:45:00.25+01:00`.
fn date_time(s: &[u8]) -> bool {
    if !full_date(s) || !matches!(s.get(10), Some(b'T' | b't')) {
        return false;
    }
    let (Some(h), Some(mi), Some(sec)) = (digits(s, 11, 2), digits(s, 14, 2), digits(s, 17, 2))
    else {
        return false;
    };
    if s.get(13) != Some(&b':') || s.get(16) != Some(&b':') || h > 23 || mi > 59 || sec > 60 {
        return false;
    }
    let mut i = 19;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match s.get(i) {
        Some(b'Z' | b'z') => s.len() == i + 1,
        Some(b'+' | b'-') => {
            s.len() == i + 6
                && s.get(i + 3) == Some(&b':')
                && digits(s, i + 1, 2).is_some_and(|oh| oh < 24)
                && digits(s, i + 4, 2).is_some_and(|om| om < 60)
        }
        _ => false,
    }
}

fn uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A plain `local@domain` check: one `@`, both parts present, no spaces or
/// control characters, a domain of labels (or an `[address]` literal).
fn email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let plain = |p: &str| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || c.is_control());
    let labels = domain.split('.').all(|l| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    plain(local)
        && !local.contains('@')
        && local.len() <= 64
        && (labels || (domain.starts_with('[') && domain.ends_with(']')))
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(s: &[u8]) -> bool {
    if s.len() % 4 != 0 {
        return false;
    }
    let body = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    body.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

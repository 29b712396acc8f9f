//! Palisade's own injection rules: a compact set aimed at the payloads
//! automated scanners and exploit kits send (SQL injection, script
//! injection, path traversal), cheap enough to run on every value of
//! every request. It is not a full WAF: README shows how to chain one
//! (OWASP CRS on coraza-proxy-wasm) behind palisade.
//!
//! A value is decoded the way a server behind the proxy might decode it
//! (percent-escapes up to three times, `%uXXXX`, overlong UTF-8 dots and
//! slashes, HTML character references) and each rule reads the decoded
//! forms, lower-cased, so that encoding a payload does not hide it.

use regex_lite::Regex;
use std::borrow::Cow;

/// Percent-decoding rounds: raw, once (what a server reads), twice
/// (what an application decoding again reads), three times.
const DECODE_ROUNDS: usize = 3;
/// Values longer than this are read only up to it: the rules look for
/// short patterns, and a request's cost must stay bounded.
const MAX_SCANNED_BYTES: usize = 8 * 1024;

/// How far past its trigger a pattern may reach: the shapes below are
/// short, and a bounded window keeps a value's cost linear in its length.
const WINDOW: usize = 160;

/// Patterns anchored where a trigger word or character was found (see
/// [`Rules::sqli`]). SQL ones read text lower-cased, with comments as
/// spaces and runs of white space as one space.
const SQL_UNION: &str = r"^union( all| distinct)? ?\(? ?select\b";
/// A boolean condition after a string or a closing parenthesis:
/// `' or 'a'='a`, `') and (1=1`, `' or true`.
const SQL_CONDITION: &str = r#"^(or\b|and\b|xor\b|\|\||&&|rlike\b|regexp\b|having\b) ?(\(? ?['"`]?[\w.@]*['"`]? ?(=|<>|!=|<=>|>|<|like\b|is (not )?null\b|between\b|in ?\(|sounds like\b)|(true|false|not)\b|\(? ?(select|sleep|benchmark|pg_sleep|extractvalue|updatexml|exists|case when|if|ascii|substring|substr|mid|ord|char|chr|length|cast|convert|elt|make_set)\b)"#;
/// After a number: only an equality is the tautology (`1 or 1=1`); `5
/// and 7 > 2` is arithmetic prose.
const SQL_NUMERIC_CONDITION: &str = r#"^(or\b|and\b|xor\b|\|\||&&|having\b) ?(\(? ?['"`]?[\w.@]*['"`]? ?(=|<>|!=|<=>|like\b|is (not )?null\b)|\(? ?(select|sleep|benchmark|pg_sleep|extractvalue|updatexml|exists|case when|if)\b)"#;
const SQL_STACKED: &str = r"^; ?(select\b[^;]*\bfrom\b|select (\d|null\b|\*|@@|sleep|pg_sleep|benchmark|load_file|version|user\(|database\(|char|concat)|drop (table|database|schema|view|index|user|procedure|function)\b|delete from\b|insert into\b|update \S+ set\b|create (table|database|user|procedure|function)\b|alter (table|database|user)\b|truncate table\b|exec(ute)? |declare @|shutdown\b|waitfor\b|if ?\()";
/// A subquery, or a tautology in parentheses (`(5=5)`, `elt(5=5,1)`).
const SQL_SUBQUERY: &str = r"^\( ?(select ?(\d|null\b|\*|\(|count\b|@@|char\b|concat|case\b|if\b|sleep\b|[\w.]+ from\b)|\d+ ?(=|<>) ?\d+ ?[),])";
const SQL_ORDER_BY: &str = r"^order by \d+ ?(--|#|/\*)";
const SQL_MISC: &str = r"^(waitfor (delay|time) ['\x22]|into (out|dump)file\b|procedure analyse\b|case( [\w.@]+)? when\b[^;]*\bthen\b|@@(version|datadir|hostname)\b|(dbms_pipe\.receive_message|dbms_lock\.sleep|utl_inaddr\.get_host_\w+|utl_http\.request|dbms_xmlgen|ctxsys\.drithsx)\b)";
/// Script ones read text lower-cased, with character references decoded
/// and tabs, line breaks and NULs removed (browsers skip them in a URL
/// scheme).
/// Elements that run script or load it. (A tag is read in code, not by a
/// pattern: a regex-lite search costs in proportion to its pattern's size,
/// and `<` is common enough in text.)
const SCRIPT_ELEMENTS: [&[u8]; 24] = [
    b"script",
    b"iframe",
    b"frame",
    b"frameset",
    b"object",
    b"embed",
    b"applet",
    b"meta",
    b"base",
    b"link",
    b"style",
    b"svg",
    b"math",
    b"form",
    b"template",
    b"xml",
    b"isindex",
    b"marquee",
    b"noscript",
    b"xss",
    b"animate",
    b"set",
    b"handler",
    b"listener",
];
/// An event handler breaking out of an attribute: `" onmouseover="alert(1)`.
const HTML_HANDLER: &str = r#"^on[a-z]{3,}\s*=\s*['"`]?[^\s'"`]*[(`]"#;
const HTML_SCRIPT_URL: &str = r"^(java|vb|live)script\s*:[^\n]*?[(`=]";
const HTML_MISC: &str = r"^(data\s*:\s*text/html|document\s*\.\s*(cookie|domain|write|location)|window\s*\.\s*location)";

/// SQL functions blind and error-based injection calls.
const SQL_FUNCTIONS: [&[u8]; 16] = [
    b"sleep",
    b"benchmark",
    b"pg_sleep",
    b"randomblob",
    b"load_file",
    b"extractvalue",
    b"updatexml",
    b"sys_eval",
    b"sys_exec",
    b"xp_cmdshell",
    b"sp_executesql",
    b"make_set",
    b"geometrycollection",
    b"multipoint",
    b"json_keys",
    b"gtid_subset",
];
/// Catalogs an injection reads the schema from.
const SQL_CATALOGS: [&[u8]; 8] = [
    b"information_schema",
    b"sysobjects",
    b"syscolumns",
    b"pg_catalog",
    b"sqlite_master",
    b"all_tables",
    b"user_tables",
    b"mysql",
];
/// The sinks script payloads call.
const SCRIPT_CALLS: [&[u8]; 8] = [
    b"alert",
    b"prompt",
    b"confirm",
    b"eval",
    b"settimeout",
    b"setinterval",
    b"execscript",
    b"fromcharcode",
];

/// The compiled rule set (the same for every route; `disable` turns
/// families off per route class).
#[derive(Debug, Clone)]
pub struct Rules {
    sql_union: Regex,
    sql_condition: Regex,
    sql_numeric_condition: Regex,
    sql_stacked: Regex,
    sql_subquery: Regex,
    sql_order_by: Regex,
    sql_misc: Regex,
    html_handler: Regex,
    html_script_url: Regex,
    html_misc: Regex,
}

/// What one value read as.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub traversal: bool,
    pub control: bool,
    pub sqli: bool,
    pub xss: bool,
}

/// Which families to look for, and which control bytes a value may hold.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub traversal: bool,
    pub control: bool,
    pub sqli: bool,
    pub xss: bool,
    /// Tabs and line breaks are text in a body (a form's text area, an
    /// escaped JSON string), a header-splitting attempt in a URL.
    pub line_breaks_ok: bool,
}

impl Rules {
    /// Compiles the patterns; `Err` is a bug in them, caught by the tests.
    pub fn new() -> Result<Rules, regex_lite::Error> {
        // ASCII case does not matter to SQL keywords, tags or schemes.
        let ci = |pattern: &str| Regex::new(&format!("(?i){pattern}"));
        Ok(Rules {
            sql_union: ci(SQL_UNION)?,
            sql_condition: ci(SQL_CONDITION)?,
            sql_numeric_condition: ci(SQL_NUMERIC_CONDITION)?,
            sql_stacked: ci(SQL_STACKED)?,
            sql_subquery: ci(SQL_SUBQUERY)?,
            sql_order_by: ci(SQL_ORDER_BY)?,
            sql_misc: ci(SQL_MISC)?,
            html_handler: ci(HTML_HANDLER)?,
            html_script_url: ci(HTML_SCRIPT_URL)?,
            html_misc: ci(HTML_MISC)?,
        })
    }

    /// Reads one value (a path, a query parameter, a body string) in each
    /// of its decoded forms.
    pub fn scan(&self, value: &[u8], want: Want) -> Flags {
        let mut flags = Flags::default();
        let value = &value[..value.len().min(MAX_SCANNED_BYTES)];
        let mut form: Cow<'_, [u8]> = Cow::Borrowed(value);
        for round in 0..DECODE_ROUNDS {
            // One pass tells which families the value could hold at all:
            // most values are a word, a number or an id, and stop here.
            let class = classes(&form);
            if want.control && class & CONTROL != 0 && has_control(&form, want.line_breaks_ok) {
                flags.control = true;
            }
            if want.traversal && !flags.traversal && class & SEPARATOR != 0 {
                flags.traversal =
                    (class & DOT != 0 && has_dot_dot_segment(&form)) || names_system_file(&form);
            }
            let sqli = want.sqli && !flags.sqli && class & SQL_SYNTAX != 0;
            let xss = want.xss && !flags.xss && class & HTML_SYNTAX != 0;
            if sqli || xss {
                let text = text_of(&form);
                if sqli {
                    flags.sqli = self.sqli(&sql_text(&text));
                }
                if xss {
                    flags.xss = self.xss(&html_text(&text));
                }
            }
            if round + 1 == DECODE_ROUNDS || class & ENCODED == 0 {
                break;
            }
            match percent_decode(&form) {
                Some(next) => form = Cow::Owned(next),
                None => break,
            }
        }
        flags
    }

    /// One pass over the words and punctuation of `text`; a pattern runs
    /// only where its trigger is, on a bounded window.
    fn sqli(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        any_trigger(text, |t| {
            let mut buf = [0; 24];
            let Some(word) = lowered(t.text, &mut buf) else {
                return false;
            };
            let Some(kind) = sql_trigger(word) else {
                return false;
            };
            let i = t.start;
            let at = |re: &Regex| re.is_match(window(text, i));
            let before = prev_non_space(bytes, i);
            let after = || next_non_space(bytes, t.end);
            // A condition or comment right after a string, a parenthesis,
            // or at the start (the value appended to a query's number).
            let breaks_out = matches!(before, None | Some(b'\'' | b'"' | b'`' | b')'));
            match kind {
                Sql::Union => at(&self.sql_union),
                Sql::Condition => {
                    // `having 1=1` is SQL whatever precedes it.
                    let numeric = before.is_some_and(|b| b.is_ascii_digit()) || word == b"having";
                    (breaks_out && at(&self.sql_condition))
                        || (numeric && at(&self.sql_numeric_condition))
                }
                Sql::Stacked => at(&self.sql_stacked),
                Sql::Parenthesis => at(&self.sql_subquery),
                Sql::Comment => {
                    // Right after the quote it closes, anything may follow.
                    let adjacent = i > 0 && bytes.get(i - 1).is_some_and(|b| b"'\"`)".contains(b));
                    let ends = match t.text {
                        "--" => {
                            matches!(after(), None | Some(b'-' | b'+' | b'#'))
                                || bytes.get(t.end) == Some(&b' ')
                        }
                        "#" => matches!(bytes.get(t.end), None | Some(b' ')),
                        _ => true,
                    };
                    before.is_some_and(|b| b"'\"`)".contains(&b)) && (adjacent || ends)
                }
                Sql::Order => {
                    let by_number = starts_with_ci(&text[i..], "order by ")
                        && bytes.get(i + 9).is_some_and(u8::is_ascii_digit);
                    by_number && (breaks_out || at(&self.sql_order_by))
                }
                Sql::Group => {
                    before.is_some() && breaks_out && starts_with_ci(&text[i..], "group by ")
                }
                Sql::Version => text[t.end..].starts_with("()"),
                Sql::Misc => at(&self.sql_misc),
                Sql::Function => after() == Some(b'('),
                Sql::Catalog => word != b"mysql" || starts_with_ci(&text[t.end..], ".user"),
            }
        })
    }

    fn xss(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        any_trigger(text, |t| {
            let mut buf = [0; 24];
            let Some(word) = lowered(t.text, &mut buf) else {
                return false;
            };
            let Some(kind) = html_trigger(word) else {
                return false;
            };
            let i = t.start;
            let at = |re: &Regex| re.is_match(window(text, i));
            let after = || next_non_space(bytes, t.end);
            match kind {
                Html::Tag => dangerous_tag(window(text, i).as_bytes()),
                Html::ScriptUrl => at(&self.html_script_url),
                Html::Misc => at(&self.html_misc),
                Html::Srcdoc => after() == Some(b'='),
                Html::Sink => prev_non_space(bytes, i) == Some(b'.') && after() == Some(b'='),
                Html::Expression => after() == Some(b'('),
                Html::Import => i > 0 && bytes.get(i - 1) == Some(&b'@'),
                Html::Binding => {
                    i >= 5
                        && text
                            .get(i - 5..i)
                            .is_some_and(|p| p.eq_ignore_ascii_case("-moz-"))
                }
                Html::Call => matches!(bytes.get(t.end), Some(b'(' | b'`')),
                Html::Handler => {
                    // Only where an attribute may start.
                    let starts = i == 0 || bytes.get(i - 1).is_some_and(|b| b" \"'`/;".contains(b));
                    starts && after() == Some(b'=') && at(&self.html_handler)
                }
            }
        })
    }
}

/// At a `<`: a script-capable element, an event-handler attribute inside
/// the tag, or a comment or CDATA section (which hide markup from
/// filters).
fn dangerous_tag(tag: &[u8]) -> bool {
    let rest = tag.get(1..).unwrap_or_default();
    if starts_with_ci_bytes(rest, b"!--") || starts_with_ci_bytes(rest, b"![cdata[") {
        return true;
    }
    // `< / script`: spaces and one slash before the name.
    let mut at = 0;
    while rest
        .get(at)
        .is_some_and(|b| b.is_ascii_whitespace() || *b == b'/')
    {
        at += 1;
    }
    let name_len = rest
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let name = rest.get(at..at + name_len).unwrap_or_default();
    if SCRIPT_ELEMENTS.iter().any(|e| e.eq_ignore_ascii_case(name)) {
        return true;
    }
    // Any element: `on...=` after a space, a slash or a quote, before `>`.
    if !rest.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    let end = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len());
    let inside = rest.get(..end).unwrap_or_default();
    (1..inside.len()).any(|i| {
        matches!(
            inside[i - 1],
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'/' | b'"' | b'\'' | b'`'
        ) && starts_with_ci_bytes(&inside[i..], b"on")
            && {
                let letters = inside[i + 2..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphabetic())
                    .count();
                let after = &inside[i + 2 + letters..];
                let spaces = after.iter().take_while(|b| b.is_ascii_whitespace()).count();
                letters >= 3 && after.get(spaces) == Some(&b'=')
            }
    })
}

fn starts_with_ci_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.get(..needle.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(needle))
}

/// What a SQL trigger token starts.
#[derive(Clone, Copy)]
enum Sql {
    Union,
    Condition,
    Stacked,
    Parenthesis,
    Comment,
    Order,
    Group,
    Version,
    Misc,
    Function,
    Catalog,
}

/// The SQL trigger a token is, if any. By length first: most words of a
/// value are none, and are told so in a comparison or two.
fn sql_trigger(w: &[u8]) -> Option<Sql> {
    let kind = match w.len() {
        1 => match w {
            b";" => Sql::Stacked,
            b"(" => Sql::Parenthesis,
            b"#" => Sql::Comment,
            _ => return None,
        },
        2 => match w {
            b"or" | b"||" | b"&&" => Sql::Condition,
            b"--" | b"/*" => Sql::Comment,
            b"@@" => Sql::Misc,
            _ => return None,
        },
        3 => match w {
            b"and" | b"xor" => Sql::Condition,
            _ => return None,
        },
        4 => match w {
            b"into" | b"case" => Sql::Misc,
            _ => return None,
        },
        5 => match w {
            b"union" => Sql::Union,
            b"rlike" => Sql::Condition,
            b"order" => Sql::Order,
            b"group" => Sql::Group,
            b"sleep" => Sql::Function,
            b"mysql" => Sql::Catalog,
            _ => return None,
        },
        6 => match w {
            b"regexp" | b"having" => Sql::Condition,
            b"ctxsys" => Sql::Misc,
            _ => return None,
        },
        7 => match w {
            b"version" => Sql::Version,
            b"waitfor" => Sql::Misc,
            _ => return None,
        },
        9 if w == b"procedure" => Sql::Misc,
        _ if w.starts_with(b"dbms_") || w.starts_with(b"utl_") => Sql::Misc,
        _ if SQL_FUNCTIONS.contains(&w) => Sql::Function,
        _ if SQL_CATALOGS.contains(&w) => Sql::Catalog,
        _ => return None,
    };
    Some(kind)
}

/// What a script trigger token starts.
#[derive(Clone, Copy)]
enum Html {
    Tag,
    ScriptUrl,
    Misc,
    Srcdoc,
    Sink,
    Expression,
    Import,
    Binding,
    Call,
    Handler,
}

fn html_trigger(w: &[u8]) -> Option<Html> {
    let kind = match w {
        b"<" => Html::Tag,
        b"javascript" | b"vbscript" | b"livescript" => Html::ScriptUrl,
        b"data" | b"document" | b"window" => Html::Misc,
        b"srcdoc" => Html::Srcdoc,
        b"innerhtml" | b"outerhtml" => Html::Sink,
        b"expression" => Html::Expression,
        b"import" => Html::Import,
        b"binding" => Html::Binding,
        _ if w.len() > 4 && w.starts_with(b"on") => Html::Handler,
        _ if SCRIPT_CALLS.contains(&w) => Html::Call,
        _ => return None,
    };
    Some(kind)
}

/// A word (letters, digits, `_`) or one of the punctuation marks the
/// rules start at.
struct Token<'t> {
    text: &'t str,
    start: usize,
    end: usize,
}

/// Whether `hit` holds at any token of `text`.
fn any_trigger(text: &str, hit: impl Fn(&Token<'_>) -> bool) -> bool {
    tokens(text).any(|t| hit(&t))
}

fn tokens(text: &str) -> impl Iterator<Item = Token<'_>> {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let start = i;
            let b = bytes[i];
            let len = if b.is_ascii_alphanumeric() || b == b'_' {
                bytes[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count()
            } else {
                match bytes.get(i..i + 2) {
                    Some(b"||" | b"&&" | b"--" | b"/*" | b"@@") => 2,
                    _ if matches!(b, b'<' | b';' | b'(' | b'#') => 1,
                    _ => {
                        i += 1;
                        continue;
                    }
                }
            };
            i += len;
            return Some(Token {
                text: &text[start..i],
                start,
                end: i,
            });
        }
        None
    })
}

fn prev_non_space(bytes: &[u8], i: usize) -> Option<u8> {
    bytes[..i].iter().rev().find(|b| **b != b' ').copied()
}

fn next_non_space(bytes: &[u8], i: usize) -> Option<u8> {
    bytes.get(i..)?.iter().find(|b| **b != b' ').copied()
}

/// `text` from `i`, at most [`WINDOW`] bytes, cut at a character boundary.
fn window(text: &str, i: usize) -> &str {
    let mut end = (i + WINDOW).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(i..end).unwrap_or_default()
}

/// The well-known files traversal reaches for, after a separator:
/// `etc/passwd`, `proc/self/`, `windows/win.ini`, `boot.ini`. `/` in a
/// name stands for either separator; `true`: the name must end there.
const SYSTEM_FILES: [(&[u8], bool); 8] = [
    (b"etc/passwd", false),
    (b"etc/shadow", false),
    (b"etc/hosts", true),
    (b"proc/self/", false),
    (b"windows/win.ini", false),
    (b"windows/system32", false),
    (b"boot.ini", true),
    (b"winnt/", false),
];

fn names_system_file(bytes: &[u8]) -> bool {
    let sep = |b: u8| b == b'/' || b == b'\\';
    let names_at = |at: usize| {
        let rest = bytes.get(at..).unwrap_or_default();
        SYSTEM_FILES.iter().any(|(file, whole)| {
            rest.len() >= file.len()
                && rest
                    .iter()
                    .zip(file.iter())
                    .all(|(a, f)| a.eq_ignore_ascii_case(f) || (*f == b'/' && sep(*a)))
                && (!whole
                    || rest
                        .get(file.len())
                        .is_none_or(|b| !b.is_ascii_alphanumeric()))
        })
    };
    // Only right after a separator (or at the start) can a name begin.
    names_at(0) || (0..bytes.len()).any(|i| sep(bytes[i]) && names_at(i + 1))
}

/// NUL, C0 controls and DEL; tab and line breaks only where text may hold them.
pub fn has_control(bytes: &[u8], line_breaks_ok: bool) -> bool {
    if !any_control(bytes) {
        return false;
    }
    bytes.iter().any(|&b| {
        (b < 0x20 && !(b == b'\t' || (line_breaks_ok && (b == b'\n' || b == b'\r')))) || b == 0x7f
    })
}

/// Whether any byte is below 0x20 or is 0x7f, eight bytes at a time (a
/// header value holds a token of hundreds of bytes).
fn any_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let v = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([b' '; 8]));
        // A byte below 0x20; a byte equal to 0x7f (a zero byte of v ^ 0x7f..).
        let below = v.wrapping_sub(ONES * 0x20) & !v & HIGHS;
        let del = (v ^ (ONES * 0x7f)).wrapping_sub(ONES) & !(v ^ (ONES * 0x7f)) & HIGHS;
        if below | del != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// A `..` segment between separators (`/`, `\`, `;` as Tomcat reads
/// `..;/`), or at either end.
fn has_dot_dot_segment(bytes: &[u8]) -> bool {
    let separator = |b: u8| b == b'/' || b == b'\\' || b == b';';
    bytes.windows(2).enumerate().any(|(i, w)| {
        w == b".."
            && (i == 0 || bytes.get(i - 1).is_some_and(|&b| separator(b)))
            && bytes.get(i + 2).is_none_or(|&b| separator(b))
    }) && bytes.iter().any(|&b| separator(b))
}

/// One round of percent-decoding (`%XX`, and IIS's `%uXXXX`), with the
/// overlong UTF-8 forms of `.`, `/` and `\` read as those characters.
/// `None` when there was nothing to decode.
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    if !bytes.contains(&b'%') && !has_overlong(bytes) {
        return None;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let two = bytes
                .get(i + 1..i + 3)
                .and_then(|h| Some((hex(h[0])?, hex(h[1])?)));
            if let Some((hi, lo)) = two {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
            let wide = bytes
                .get(i + 1..i + 6)
                .filter(|h| h[0] == b'u' || h[0] == b'U')
                .and_then(|h| std::str::from_utf8(&h[1..]).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32);
            if let Some(c) = wide {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 6;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    let out = fold_overlong(out);
    (out != bytes).then_some(out)
}

/// The overlong and full-width spellings servers have been fooled by.
const LOOKALIKES: [(&[u8], u8); 8] = [
    (&[0xc0, 0xae], b'.'),
    (&[0xc0, 0xaf], b'/'),
    (&[0xc1, 0x9c], b'\\'),
    (&[0xe0, 0x80, 0xae], b'.'),
    (&[0xe0, 0x80, 0xaf], b'/'),
    (&[0xef, 0xbc, 0x8e], b'.'), // U+FF0E FULLWIDTH FULL STOP
    (&[0xef, 0xbc, 0x8f], b'/'), // U+FF0F FULLWIDTH SOLIDUS
    (&[0xe2, 0x88, 0x95], b'/'), // U+2215 DIVISION SLASH
];

fn has_overlong(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|i| {
        LOOKALIKES
            .iter()
            .any(|(form, _)| bytes.get(i..i + form.len()) == Some(form))
    })
}

fn fold_overlong(bytes: Vec<u8>) -> Vec<u8> {
    if !bytes.iter().any(|&b| b >= 0xc0) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        for (form, ascii) in LOOKALIKES {
            if bytes.get(i..i + form.len()) == Some(form) {
                out.push(ascii);
                i += form.len();
                continue 'outer;
            }
        }
        out.extend(bytes.get(i).copied());
        i += 1;
    }
    out
}

/// The value as text for the patterns (which ignore ASCII case).
fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Where the two bytes `pair` first occur in `text` (`str::find` sets up
/// a two-way searcher, costly in wasm for the short values read here).
fn find2(text: &str, pair: &[u8; 2]) -> Option<usize> {
    text.as_bytes().windows(2).position(|w| w == pair)
}

/// `hay` starts with `needle`, in any ASCII case.
fn starts_with_ci(hay: &str, needle: &str) -> bool {
    starts_with_ci_bytes(hay.as_bytes(), needle.as_bytes())
}

/// A token in lower case, in `buf`; `None` when longer than any trigger.
fn lowered<'b>(word: &str, buf: &'b mut [u8; 24]) -> Option<&'b [u8]> {
    let dest = buf.get_mut(..word.len())?;
    for (d, s) in dest.iter_mut().zip(word.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    Some(dest)
}

/// Byte classes (see [`classes`]).
const CONTROL: u16 = 1;
const SEPARATOR: u16 = 1 << 1;
const DOT: u16 = 1 << 2;
/// Space, quotes, parentheses and the operators SQL injection needs: a
/// value of letters, digits, `_`, `.` and `,` alone is one word to SQL.
const SQL_SYNTAX: u16 = 1 << 3;
/// What markup and script need: `<`, `>`, `:`, `=`, `(`, `` ` ``, `&`
/// (a character reference), quotes.
const HTML_SYNTAX: u16 = 1 << 4;
/// `%`, or the first byte of an overlong or full-width look-alike:
/// decoding may change the value.
const ENCODED: u16 = 1 << 5;

const fn class_of(b: u8) -> u16 {
    match b {
        0..=0x1f | 0x7f => CONTROL | SQL_SYNTAX,
        b'/' | b'\\' => SEPARATOR | SQL_SYNTAX,
        b';' => SEPARATOR | SQL_SYNTAX | HTML_SYNTAX,
        b'.' => DOT,
        b'%' => ENCODED,
        // Lead bytes of the overlong and full-width look-alikes only: `é`
        // needs no decoding.
        0xc0 | 0xc1 | 0xe0 | 0xe2 | 0xef => ENCODED,
        b'<' | b'>' | b'=' | b'(' | b'`' | b'\'' | b'"' => SQL_SYNTAX | HTML_SYNTAX,
        b':' | b'&' => SQL_SYNTAX | HTML_SYNTAX,
        b' ' | b')' | b'#' | b'-' | b'*' | b'|' | b'@' | b'+' | b'!' => SQL_SYNTAX,
        _ => 0,
    }
}

const CLASSES: [u16; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = class_of(b as u8);
        b += 1;
    }
    table
};

/// The classes of the bytes of `value`, or-ed.
fn classes(value: &[u8]) -> u16 {
    value
        .iter()
        .fold(0, |acc, &b| acc | CLASSES[usize::from(b)])
}

/// Comments become spaces (`UNION/**/SELECT`), white space runs (and
/// MySQL's `+` for a space) one space.
fn sql_text(text: &str) -> Cow<'_, str> {
    // One pass: no comment opener, no white space but single spaces.
    let bytes = text.as_bytes();
    let plain = bytes.iter().enumerate().all(|(i, &b)| match b {
        b' ' => bytes.get(i + 1) != Some(&b' '),
        b'/' => bytes.get(i + 1) != Some(&b'*'),
        0 => false,
        _ => !b.is_ascii_whitespace(),
    });
    if plain {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find2(rest, b"/*") {
        out.push_str(&rest[..start]);
        // Keep `/*` when unterminated: it is the truncation a rule looks for.
        match find2(&rest[start + 2..], b"*/") {
            Some(end) if !rest[start + 2..start + 2 + end].starts_with('!') => {
                out.push(' ');
                rest = &rest[start + 2 + end + 2..];
            }
            // MySQL runs `/*!...*/`: it is SQL, not a comment.
            Some(end) => {
                out.push(' ');
                let body = &rest[start + 3..start + 2 + end];
                out.push_str(body.trim_start_matches(|c: char| c.is_ascii_digit()));
                out.push(' ');
                rest = &rest[start + 2 + end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let mut squeezed = String::with_capacity(out.len());
    let mut space = false;
    for c in out.chars() {
        if c.is_whitespace() || c == '\0' {
            space = true;
        } else {
            if space && !squeezed.is_empty() {
                squeezed.push(' ');
            }
            space = false;
            squeezed.push(c);
        }
    }
    if space {
        squeezed.push(' ');
    }
    Cow::Owned(squeezed)
}

/// Character references decoded (`&#106;`, `&#x6A;`, and the named ones
/// payloads use), then tabs, line breaks and NULs removed.
fn html_text(text: &str) -> Cow<'_, str> {
    if !text
        .bytes()
        .any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r' | 0))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match char_reference(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out.retain(|c| !matches!(c, '\t' | '\n' | '\r' | '\0'));
    Cow::Owned(out)
}

/// A character reference at the start of `text`: the character and the
/// reference's length (its `;` is optional, as browsers read it).
fn char_reference(text: &str) -> Option<(char, usize)> {
    const NAMED: [(&str, char); 9] = [
        ("&lt", '<'),
        ("&gt", '>'),
        ("&quot", '"'),
        ("&apos", '\''),
        ("&colon", ':'),
        ("&lpar", '('),
        ("&rpar", ')'),
        ("&tab", '\t'),
        ("&newline", '\n'),
    ];
    let semicolon = |len: usize| len + usize::from(text[len..].starts_with(';'));
    if let Some(digits) = text.strip_prefix("&#") {
        let (radix, digits, skip) = match digits.strip_prefix(['x', 'X']) {
            Some(hex) => (16, hex, 3),
            None => (10, digits, 2),
        };
        let len = digits
            .bytes()
            .take_while(|b| (*b as char).is_digit(radix))
            .count()
            .min(8);
        let code = u32::from_str_radix(digits.get(..len)?, radix).ok()?;
        return Some((char::from_u32(code)?, semicolon(skip + len)));
    }
    NAMED
        .iter()
        .find(|(name, _)| starts_with_ci(text, name))
        .map(|(name, c)| (*c, semicolon(name.len())))
}

#[cfg(test)]
mod tests;

//! Every rule family with payloads it must catch, in the encodings that
//! hide them, and ordinary values it must let through.

use super::*;

fn rules() -> Rules {
    Rules::new().unwrap_or_else(|e| unreachable!("{e}"))
}

const ALL: Want = Want {
    traversal: true,
    control: true,
    sqli: true,
    xss: true,
    line_breaks_ok: false,
};

fn flags(value: &str) -> Flags {
    rules().scan(value.as_bytes(), ALL)
}

fn assert_clean(values: &[&str]) {
    let r = rules();
    for v in values {
        assert_eq!(r.scan(v.as_bytes(), ALL), Flags::default(), "{v:?}");
    }
}

#[test]
fn sql_injection_is_caught_in_its_common_shapes() {
    let r = rules();
    for payload in [
        "' or '1'='1",
        "' OR 1=1--",
        "admin'--",
        "admin' #",
        "\" or \"\"=\"",
        "') or ('a'='a",
        "1 OR 1=1",
        "1' AND 1=1 AND 'a'='a",
        " AND 4821=4821",
        "' or true--",
        "1 UNION SELECT username, password FROM users",
        "1 UNION ALL SELECT NULL,NULL,NULL-- -",
        "1/**/UNION/**/SELECT/**/1,2",
        "1'/*!50000union*/ /*!50000select*/ 1,2--",
        "1; DROP TABLE users",
        "1;SELECT PG_SLEEP(5)--",
        "1' AND SLEEP(5)#",
        "1 AND (SELECT 1234 FROM (SELECT(SLEEP(5)))x)",
        "1' WAITFOR DELAY '0:0:5'--",
        "1 AND EXTRACTVALUE(1,CONCAT(0x5c,version()))",
        "1 RLIKE (SELECT (CASE WHEN (1=1) THEN 1 ELSE 0x28 END))",
        "1' ORDER BY 3--+",
        "1 ORDER BY 10#",
        "' UNION SELECT table_name FROM information_schema.tables--",
        "1 AND 1=DBMS_PIPE.RECEIVE_MESSAGE(CHR(65),5)",
        "1; EXEC xp_cmdshell('dir')",
        "' AND 1=(SELECT COUNT(*) FROM tabname); --",
        "1 and @@version>0",
        "x' AND BENCHMARK(5000000,MD5(1))#",
    ] {
        assert!(r.scan(payload.as_bytes(), ALL).sqli, "{payload:?}");
    }
}

#[test]
fn sql_injection_is_caught_when_encoded() {
    assert!(flags("%27%20OR%201%3D1--").sqli);
    assert!(flags("%2527%2520OR%25201%253D1--").sqli);
    assert!(flags("1%20UNION%20SELECT%20NULL").sqli);
}

#[test]
fn ordinary_text_is_not_sql_injection() {
    assert_clean(&[
        "O'Brien",
        "Rock 'n' roll",
        "It's 5 o'clock and I'm late",
        "select the best option from our menu",
        "Drop me a line; update me when you can",
        "Tom and Jerry",
        "salt and pepper, or sugar",
        "Pick a size (select one)",
        "rated #1 in 2024",
        "SELECT",
        "union",
        "Q&A: what's new?",
        "price >= 10 and <= 20",
        "a-b-c--d",
        "user@example.com",
        "2024-05-01T10:00:00Z",
        "Café crème, 3€",
        "order by date",
        "Shaquille O'Neal",
        "d'Artagnan & co",
        "\"quoted\" text",
        "1,2,3",
        "100%",
        "C:/Users/me/file.txt",
    ]);
}

#[test]
fn script_injection_is_caught_in_its_common_shapes() {
    let r = rules();
    for payload in [
        "<script>alert(1)</script>",
        "<ScRiPt src=//evil.example/x.js></sCrIpT>",
        "<img src=x onerror=alert(1)>",
        "<img/src/onerror=alert(1)>",
        "<svg onload=alert(1)>",
        "<body onload=alert('x')>",
        "\"><script>alert(document.cookie)</script>",
        "\" onmouseover=\"alert(1)",
        "' autofocus onfocus='alert(1)",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java\tscript:alert(1)",
        "&#106;avascript:alert(1)",
        "&#x6A;avascript&colon;alert(1)",
        "<a href=\"javascript:alert(1)\">x</a>",
        "<iframe src=\"data:text/html,<script>alert(1)</script>\">",
        "<details open ontoggle=alert(1)>",
        "<math><mi xlink:href=\"javascript:alert(1)\">",
        "';alert(String.fromCharCode(88,83,83))//",
        "<div style=\"width: expression(alert(1))\">",
        "<object data=x>",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "%253Cscript%253Ealert(1)%253C%252Fscript%253E",
        "<x onclick=alert`1`>",
    ] {
        assert!(r.scan(payload.as_bytes(), ALL).xss, "{payload:?}");
    }
}

#[test]
fn ordinary_text_is_not_script_injection() {
    assert_clean(&[
        "3 < 5 and 7 > 2",
        "a<b",
        "I <3 this",
        "Read \"JavaScript\" chapter 4",
        "Note: on Monday = holiday",
        "Hang on",
        "Please confirm by Friday",
        "https://example.com/path?a=1&b=2",
        "mailto:someone@example.com",
        "Tom & Jerry",
        "&amp; &copy; AT&T",
        "key=value",
        "x = (a + b) * c",
    ]);
}

#[test]
fn traversal_is_caught_raw_encoded_and_double_encoded() {
    let r = rules();
    for payload in [
        "../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "/static/../../../etc/shadow",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%252e%252e%252fetc%252fpasswd",
        "..%252f..%252f",
        "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        "%u002e%u002e%u2215etc%u2215passwd",
        "..;/admin",
        "/..",
        "file:///etc/passwd",
        "/proc/self/environ",
        "C:\\windows\\system32\\drivers",
    ] {
        assert!(r.scan(payload.as_bytes(), ALL).traversal, "{payload:?}");
    }
}

#[test]
fn dots_that_are_not_segments_are_not_traversal() {
    assert_clean(&[
        "wait...",
        "v1.2.3",
        "..",
        "report..final.pdf",
        "/api/files/a..b",
        "/etc",
        "passwd",
        "my/etc/notes",
    ]);
}

#[test]
fn control_bytes_are_caught_raw_and_encoded() {
    let r = rules();
    for payload in [
        "a\0b",
        "%00",
        "file.txt%00.png",
        "x%0d%0aSet-Cookie:a=b",
        "%250a",
        "\x7f",
    ] {
        assert!(r.scan(payload.as_bytes(), ALL).control, "{payload:?}");
    }
    let text = Want {
        line_breaks_ok: true,
        ..ALL
    };
    assert!(!r.scan(b"line one\r\nline two\ttab", text).control);
    assert!(r.scan(b"line one\r\nline two", ALL).control);
    assert!(r.scan(b"nul\0", text).control);
}

#[test]
fn a_family_not_wanted_is_not_looked_for() {
    let none = Want {
        traversal: false,
        control: false,
        sqli: false,
        xss: false,
        line_breaks_ok: false,
    };
    let r = rules();
    for payload in ["' or 1=1--", "<script>", "../../etc/passwd", "%00"] {
        assert_eq!(r.scan(payload.as_bytes(), none), Flags::default());
    }
    let only_xss = Want { xss: true, ..none };
    assert_eq!(
        r.scan(b"' or 1=1-- <script>", only_xss),
        Flags {
            xss: true,
            ..Flags::default()
        }
    );
}

#[test]
fn decoding_never_panics_on_broken_escapes() {
    let r = rules();
    for value in [
        &b"%"[..],
        b"%4",
        b"%zz",
        b"%u12",
        b"%uD800",
        b"%c0",
        b"\xc0",
        b"\xef\xbc",
        b"&#",
        b"&#x;",
        b"&#99999999999;",
        b"&#x110000;",
        b"/*",
        b"/*!",
        b"/*!*/",
        b"\xff\xfe",
    ] {
        let _ = r.scan(value, ALL);
    }
}

#[test]
fn long_values_are_read_up_to_the_bound() {
    let mut value = "a".repeat(MAX_SCANNED_BYTES);
    value.push_str("<script>");
    assert!(!flags(&value).xss);
    assert!(flags(&format!("{}<script>", "a".repeat(100))).xss);
}

#[test]
fn sql_shapes_without_a_leading_condition_are_caught() {
    let r = rules();
    for payload in [
        "ELT(5417=5417,8306)",
        "(5417=5417)*8306",
        "1\")));IF(5417=5417) SELECT 5417 ELSE DROP FUNCTION x--",
        "SELECT 'a'||(CASE 5417 WHEN 5417 THEN 1 ELSE 0 END)||'b'",
        "'--#\n-",
        "' GROUP BY columnnames HAVING 1=1-- -",
    ] {
        assert!(r.scan(payload.as_bytes(), ALL).sqli, "{payload:?}");
    }
    assert_clean(&[
        "(see page 2)",
        "in case you wonder",
        "group by colour",
        "'quoted' - text",
    ]);
}

#[test]
fn the_word_at_a_time_control_check_agrees_with_the_byte_at_a_time_one() {
    for len in 0..40 {
        for at in 0..len {
            for bad in [0u8, 1, 0x1f, 0x7f, b'\t', b'\n'] {
                let mut v = vec![b'a'; len];
                v[at] = bad;
                let slow = v.iter().any(|&b| b < 0x20 || b == 0x7f);
                assert_eq!(any_control(&v), slow, "{len} {at} {bad}");
            }
            let mut ok = vec![b'~'; len];
            ok[at] = 0x80;
            assert!(!any_control(&ok));
        }
    }
}

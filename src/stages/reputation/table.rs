//! A set of IPv4 and IPv6 prefixes, looked up in time bounded by the
//! address width (32 or 128 bit tests), not by the number of prefixes.
//!
//! Each family is a path-compressed binary trie (a node per prefix and per
//! branching point, so at most `2n - 1` nodes for `n` prefixes) stored in
//! one `Vec` with `u32` child indices: 16 bytes a node for IPv4, 32 for
//! IPv6. A lookup walks from the root and stops at the first prefix that
//! covers the address; it never visits more nodes than the width.
//!
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is IPv4 here, both in lists and in
//! lookups, so one address written either way gets one answer.
//!
//! Lists are shared between workers in a compact binary form ([`Table::encode`]):
//! per prefix one byte (the length, `+ 64` for IPv6) and the prefix's
//! significant bytes only.

use std::net::IpAddr;

/// The bits of one address family.
trait Bits: Copy + Eq + Default {
    const WIDTH: u8;
    /// Bit `i` counted from the most significant (0 or 1).
    fn bit(self, i: u8) -> usize;
    /// The first `len` bits, the rest zero.
    fn masked(self, len: u8) -> Self;
    /// How many leading bits `self` and `other` share.
    fn common(self, other: Self) -> u8;
}

macro_rules! bits_impl {
    ($t:ty, $width:literal) => {
        impl Bits for $t {
            const WIDTH: u8 = $width;
            fn bit(self, i: u8) -> usize {
                let shift = u32::from(Self::WIDTH.saturating_sub(1).saturating_sub(i));
                usize::from(self.checked_shr(shift).unwrap_or(0) & 1 == 1)
            }
            fn masked(self, len: u8) -> Self {
                let drop = u32::from(Self::WIDTH.saturating_sub(len));
                self & <$t>::MAX.checked_shl(drop).unwrap_or(0)
            }
            fn common(self, other: Self) -> u8 {
                u8::try_from((self ^ other).leading_zeros()).unwrap_or(Self::WIDTH)
            }
        }
    };
}

bits_impl!(u32, 32);
bits_impl!(u128, 128);

#[derive(Debug, Clone, Default)]
struct Node<B> {
    key: B,
    len: u8,
    /// A prefix of the set ends here (else a branching point).
    member: bool,
    /// Node indices; 0 (the root, never a child) for none.
    child: [u32; 2],
}

#[derive(Debug, Clone)]
struct Trie<B> {
    nodes: Vec<Node<B>>,
}

impl<B: Bits> Default for Trie<B> {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
        }
    }
}

impl<B: Bits> Trie<B> {
    fn node(&self, i: u32) -> Option<&Node<B>> {
        self.nodes.get(usize::try_from(i).ok()?)
    }

    fn push(&mut self, node: Node<B>) -> u32 {
        self.nodes.push(node);
        u32::try_from(self.nodes.len() - 1).unwrap_or(0)
    }

    fn set_child(&mut self, parent: u32, bit: usize, child: u32) {
        if let Some(slot) = usize::try_from(parent)
            .ok()
            .and_then(|p| self.nodes.get_mut(p))
            .and_then(|n| n.child.get_mut(bit))
        {
            *slot = child;
        }
    }

    fn insert(&mut self, key: B, len: u8) {
        let len = len.min(B::WIDTH);
        let key = key.masked(len);
        let mut at = 0u32;
        loop {
            let Some(node) = self.node(at) else {
                return;
            };
            if node.member {
                // Already covered: a longer prefix would change nothing.
                return;
            }
            if node.len == len {
                if let Some(n) = self.nodes.get_mut(at as usize) {
                    n.member = true;
                    // Whatever lies below is covered now; dropping the
                    // links keeps lookups short (the nodes stay allocated).
                    n.child = [0, 0];
                }
                return;
            }
            let bit = key.bit(node.len);
            let next = node.child.get(bit).copied().unwrap_or(0);
            let Some(child) = (next != 0).then(|| self.node(next)).flatten() else {
                let leaf = self.push(Node {
                    key,
                    len,
                    member: true,
                    child: [0, 0],
                });
                self.set_child(at, bit, leaf);
                return;
            };
            let common = child.key.common(key).min(child.len).min(len);
            if common == child.len {
                at = next;
                continue;
            }
            if common == len {
                // The new prefix sits between `at` and `next`, and covers
                // all of `next`: it replaces the link rather than holding it.
                let middle = self.push(Node {
                    key,
                    len,
                    member: true,
                    child: [0, 0],
                });
                self.set_child(at, bit, middle);
                return;
            }
            let child_bit = child.key.bit(common);
            let mut fork = Node {
                key: key.masked(common),
                len: common,
                member: false,
                child: [0, 0],
            };
            if let Some(slot) = fork.child.get_mut(child_bit) {
                *slot = next;
            }
            let fork = self.push(fork);
            let leaf = self.push(Node {
                key,
                len,
                member: true,
                child: [0, 0],
            });
            self.set_child(fork, key.bit(common), leaf);
            self.set_child(at, bit, fork);
            return;
        }
    }

    /// Whether a prefix of the set covers `addr`: at most `WIDTH + 1` nodes.
    fn contains(&self, addr: B) -> bool {
        let mut at = 0u32;
        while let Some(node) = self.node(at) {
            if addr.masked(node.len) != node.key {
                return false;
            }
            if node.member {
                return true;
            }
            if node.len >= B::WIDTH {
                return false;
            }
            at = node.child.get(addr.bit(node.len)).copied().unwrap_or(0);
            if at == 0 {
                return false;
            }
        }
        false
    }

    /// Each member prefix once, in trie order.
    fn members(&self, out: &mut Vec<(B, u8)>) {
        let mut stack = vec![0u32];
        while let Some(i) = stack.pop() {
            let Some(node) = self.node(i) else {
                continue;
            };
            if node.member {
                out.push((node.key, node.len));
                continue;
            }
            stack.extend(node.child.iter().rev().filter(|&&c| c != 0));
        }
    }

    fn bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node<B>>()
    }
}

/// One prefix, IPv4-mapped IPv6 already turned into IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    V4(u32, u8),
    V6(u128, u8),
}

impl Prefix {
    /// `a.b.c.d/n`, `x::/n` or a bare address (a /32 or /128). Host bits
    /// below the length are allowed and ignored (`10.1.2.3/8` is 10/8), as
    /// in most published lists.
    pub fn parse(text: &str) -> Option<Prefix> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = match len {
            Some(l) if (1..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse().ok()?
            }
            Some(_) => return None,
            None => max,
        };
        if len > max {
            return None;
        }
        Some(match addr {
            IpAddr::V4(a) => Prefix::V4(u32::from(a), len),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Prefix::V4(u32::from(v4), len - 96),
                _ => Prefix::V6(u128::from(a), len),
            },
        })
    }
}

/// A compiled list: which addresses it covers.
#[derive(Debug, Clone, Default)]
pub struct Table {
    v4: Trie<u32>,
    v6: Trie<u128>,
    len: usize,
}

/// Tag byte of an IPv6 prefix in the binary form: its length plus this.
const V6_TAG: u8 = 64;

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn insert(&mut self, prefix: Prefix) {
        match prefix {
            Prefix::V4(key, len) => self.v4.insert(key, len),
            Prefix::V6(key, len) => self.v6.insert(key, len),
        }
        self.len += 1;
    }

    /// Prefixes inserted (duplicates and covered ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.v4.contains(u32::from(v4)),
                None => self.v6.contains(u128::from(a)),
            },
        }
    }

    /// Heap bytes of the trie nodes.
    pub fn heap_bytes(&self) -> usize {
        self.v4.bytes() + self.v6.bytes()
    }

    /// The binary form shared between workers: each prefix that matters
    /// (covered ones are dropped) as a tag byte and its significant bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut v4 = Vec::new();
        self.v4.members(&mut v4);
        for (key, len) in v4 {
            out.push(len);
            let n = usize::from(len.div_ceil(8));
            out.extend(key.to_be_bytes().iter().take(n));
        }
        let mut v6 = Vec::new();
        self.v6.members(&mut v6);
        for (key, len) in v6 {
            out.push(len + V6_TAG);
            let n = usize::from(len.div_ceil(8));
            out.extend(key.to_be_bytes().iter().take(n));
        }
        out
    }

    /// The table [`Table::encode`] wrote; `None` if the bytes are not such
    /// a form (a damaged or foreign record).
    pub fn decode(mut bytes: &[u8]) -> Option<Table> {
        let mut table = Table::new();
        while let Some((&tag, rest)) = bytes.split_first() {
            let (v6, len) = match tag {
                0..=32 => (false, tag),
                t if (V6_TAG..=V6_TAG + 128).contains(&t) => (true, t - V6_TAG),
                _ => return None,
            };
            let n = usize::from(len.div_ceil(8));
            let (key, rest) = (rest.get(..n)?, rest.get(n..)?);
            bytes = rest;
            let prefix = if v6 {
                let mut b = [0u8; 16];
                b.get_mut(..n)?.copy_from_slice(key);
                Prefix::V6(u128::from_be_bytes(b), len)
            } else {
                let mut b = [0u8; 4];
                b.get_mut(..n)?.copy_from_slice(key);
                Prefix::V4(u32::from_be_bytes(b), len)
            };
            table.insert(prefix);
        }
        table.shrink();
        Some(table)
    }

    /// Gives back the growth room of the node vectors once built.
    pub fn shrink(&mut self) {
        self.v4.nodes.shrink_to_fit();
        self.v6.nodes.shrink_to_fit();
    }
}

/// A fetched list read as text.
#[derive(Debug, Default)]
pub struct Parsed {
    pub table: Table,
    /// Lines that are not a prefix (comments and blank lines are not counted).
    pub bad_lines: usize,
    /// The 1-based number of the first such line.
    pub first_bad_line: Option<usize>,
}

/// One prefix per line; `#` and `;` start a comment (whole-line or after
/// the prefix); blank lines are skipped, as are CR line ends. Lines that
/// are not a prefix are counted and skipped.
pub fn parse_list(text: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let end = line
            .iter()
            .position(|&b| b == b'#' || b == b';')
            .unwrap_or(line.len());
        let entry = line.get(..end).unwrap_or_default().trim_ascii();
        if entry.is_empty() {
            continue;
        }
        match std::str::from_utf8(entry).ok().and_then(Prefix::parse) {
            Some(prefix) => parsed.table.insert(prefix),
            None => {
                parsed.bad_lines += 1;
                parsed.first_bad_line.get_or_insert(i + 1);
            }
        }
    }
    parsed.table.shrink();
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn table(prefixes: &[&str]) -> Table {
        let mut t = Table::new();
        for p in prefixes {
            t.insert(Prefix::parse(p).unwrap_or_else(|| unreachable!("{p}")));
        }
        t
    }

    fn has(t: &Table, ip: &str) -> bool {
        t.contains(ip.parse().unwrap_or_else(|_| unreachable!("{ip}")))
    }

    #[test]
    fn v4_and_v6_prefixes() {
        let t = table(&["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]);
        assert!(has(&t, "203.0.113.0"));
        assert!(has(&t, "203.0.113.255"));
        assert!(!has(&t, "203.0.114.0"));
        assert!(has(&t, "198.51.100.7"));
        assert!(!has(&t, "198.51.100.6"));
        assert!(has(&t, "2001:db8:ffff::1"));
        assert!(!has(&t, "2001:db9::1"));
        // The families do not mix.
        assert!(!has(&t, "::cb00:7100"));
    }

    #[test]
    fn overlapping_prefixes_in_any_order() {
        for order in [
            ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24"],
            ["10.1.2.0/24", "10.1.0.0/16", "10.0.0.0/8"],
            ["10.1.0.0/16", "10.1.2.0/24", "10.0.0.0/8"],
        ] {
            let t = table(&order);
            assert!(has(&t, "10.200.0.1"), "{order:?}");
            assert!(has(&t, "10.1.2.3"), "{order:?}");
            assert!(!has(&t, "11.0.0.0"), "{order:?}");
        }
        let t = table(&["10.1.2.0/24", "10.1.3.0/24", "10.1.0.0/23"]);
        assert!(has(&t, "10.1.0.9") && has(&t, "10.1.1.9") && has(&t, "10.1.3.9"));
        assert!(!has(&t, "10.1.4.0"));
    }

    #[test]
    fn zero_and_full_lengths() {
        let all4 = table(&["0.0.0.0/0"]);
        assert!(has(&all4, "255.255.255.255") && has(&all4, "0.0.0.0"));
        assert!(!has(&all4, "2001:db8::1"));
        let all6 = table(&["::/0"]);
        assert!(has(&all6, "2001:db8::1") && !has(&all6, "1.2.3.4"));
        let host4 = table(&["192.0.2.1/32"]);
        assert!(has(&host4, "192.0.2.1") && !has(&host4, "192.0.2.0"));
        let host6 = table(&["2001:db8::1/128"]);
        assert!(has(&host6, "2001:db8::1") && !has(&host6, "2001:db8::2"));
        assert!(Prefix::parse("1.2.3.4/33").is_none());
        assert!(Prefix::parse("::/129").is_none());
        assert!(Prefix::parse("1.2.3.4/").is_none());
        assert!(Prefix::parse("1.2.3.4/+8").is_none());
        assert!(Prefix::parse("1.2.3/24").is_none());
        assert!(Prefix::parse("").is_none());
        assert_eq!(
            Prefix::parse("10.1.2.3/8"),
            Some(Prefix::V4(0x0a01_0203, 8))
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        let t = table(&["203.0.113.0/24"]);
        assert!(has(&t, "::ffff:203.0.113.9"));
        assert!(!has(&t, "::ffff:203.0.114.9"));
        let mapped = table(&["::ffff:198.51.100.0/120"]);
        assert!(has(&mapped, "198.51.100.20"));
        assert!(has(&mapped, "::ffff:198.51.100.20"));
        assert_eq!(
            Prefix::parse("::ffff:0:0/96"),
            Some(Prefix::V4(0, 0)),
            "all of IPv4"
        );
    }

    #[test]
    fn text_lists_skip_comments_and_count_bad_lines() {
        let text =
            b"# header\n203.0.113.0/24 ; note\r\n\n; x\nnot-an-ip\n2001:db8::/32\n10.0.0.0/99\n";
        let parsed = parse_list(text);
        assert_eq!(parsed.table.len(), 2);
        assert_eq!((parsed.bad_lines, parsed.first_bad_line), (2, Some(5)));
        assert!(has(&parsed.table, "203.0.113.1") && has(&parsed.table, "2001:db8::1"));
        let hostile = parse_list(&[0xff, b'\n', 0, b'\n', b'/', b'/']);
        assert_eq!((hostile.table.len(), hostile.bad_lines), (0, 3));
    }

    #[test]
    fn the_binary_form_round_trips_and_refuses_damage() {
        let t = table(&[
            "203.0.113.0/24",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::1/128",
            "::/0",
        ]);
        let t2 = Table::decode(&t.encode()).unwrap_or_else(|| unreachable!());
        for ip in ["203.0.113.1", "9.9.9.9", "2001:db8::1", "::1", "fe80::1"] {
            assert_eq!(has(&t, ip), has(&t2, ip), "{ip}");
        }
        let t = table(&["203.0.113.0/24", "2001:db8::/33"]);
        let bytes = t.encode();
        assert_eq!(bytes.len(), 1 + 3 + 1 + 5);
        assert!(Table::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(Table::decode(&[33]).is_none());
        assert!(Table::decode(&[200]).is_none());
        assert!(Table::decode(&[]).is_some_and(|t| t.is_empty()));
    }

    fn naive(prefixes: &[Prefix], ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        prefixes.iter().any(|p| match (*p, ip) {
            (Prefix::V4(k, l), IpAddr::V4(a)) => u32::from(a).masked(l) == k.masked(l),
            (Prefix::V6(k, l), IpAddr::V6(a)) => u128::from(a).masked(l) == k.masked(l),
            _ => false,
        })
    }

    fn prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![
            // Few high bits vary, so prefixes overlap often.
            (0u32..16, 0u8..=32).prop_map(|(k, l)| Prefix::V4(k << 28 | k, l)),
            any::<(u32, u8)>().prop_map(|(k, l)| Prefix::V4(k, l % 33)),
            (0u128..16, 0u8..=128).prop_map(|(k, l)| Prefix::V6(k << 124 | k, l)),
            any::<(u128, u8)>().prop_map(|(k, l)| Prefix::V6(k, l % 129)),
        ]
    }

    fn address(prefixes: &[Prefix]) -> impl Strategy<Value = IpAddr> {
        // Addresses near the prefixes, and anywhere.
        let near: Vec<IpAddr> = prefixes
            .iter()
            .map(|p| match *p {
                Prefix::V4(k, _) => IpAddr::V4(Ipv4Addr::from(k)),
                Prefix::V6(k, _) => IpAddr::V6(Ipv6Addr::from(k)),
            })
            .collect();
        let any_ip = prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            (0u32..16).prop_map(|k| IpAddr::V4(Ipv4Addr::from(k << 28 | k))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        ];
        if near.is_empty() {
            any_ip.boxed()
        } else {
            prop_oneof![any_ip, proptest::sample::select(near)].boxed()
        }
    }

    proptest! {
        #[test]
        fn matches_a_linear_scan(
            (prefixes, ips) in proptest::collection::vec(prefix(), 0..40).prop_flat_map(|p| {
                let ips = proptest::collection::vec(address(&p), 1..40);
                (Just(p), ips)
            })
        ) {
            let mut t = Table::new();
            for p in &prefixes {
                t.insert(*p);
            }
            let decoded = Table::decode(&t.encode());
            prop_assert!(decoded.is_some());
            let decoded = decoded.unwrap_or_default();
            for ip in ips {
                let want = naive(&prefixes, ip);
                prop_assert_eq!(t.contains(ip), want, "{}", ip);
                prop_assert_eq!(decoded.contains(ip), want, "decoded {}", ip);
            }
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Table::decode(&bytes);
            let _ = parse_list(&bytes);
        }
    }

    /// Figures for the README (run with `--nocapture`): build time and heap
    /// of a 100,000-prefix list, and a lookup's cost against a 10-prefix list.
    #[test]
    fn measure_a_100k_prefix_list() {
        use std::time::Instant;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut text = String::new();
        for i in 0..100_000u32 {
            let r = next();
            if i % 4 == 0 {
                text.push_str(&format!("{}/48\n", Ipv6Addr::from(u128::from(r) << 64)));
            } else {
                text.push_str(&format!("{}/24\n", Ipv4Addr::from(r as u32)));
            }
        }
        let start = Instant::now();
        let parsed = parse_list(text.as_bytes());
        let built = start.elapsed();
        assert_eq!(parsed.table.len(), 100_000);
        let encoded = parsed.table.encode();
        let start = Instant::now();
        let decoded = Table::decode(&encoded).unwrap_or_default();
        let rebuilt = start.elapsed();
        let small = table(&[
            "10.0.0.0/8",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "172.16.0.0/12",
            "2001:db8::/32",
            "fc00::/7",
            "100.64.0.0/10",
            "192.168.0.0/16",
            "169.254.0.0/16",
        ]);
        let probes: Vec<IpAddr> = (0..200_000)
            .map(|i| {
                let r = next();
                if i % 4 == 0 {
                    IpAddr::V6(Ipv6Addr::from(u128::from(r) << 64 | 1))
                } else {
                    IpAddr::V4(Ipv4Addr::from(r as u32))
                }
            })
            .collect();
        let time = |t: &Table| {
            let start = Instant::now();
            let hits = probes.iter().filter(|ip| t.contains(**ip)).count();
            (
                start.elapsed().as_nanos() as f64 / probes.len() as f64,
                hits,
            )
        };
        let (big_ns, big_hits) = time(&decoded);
        let (small_ns, small_hits) = time(&small);
        println!(
            "reputation table: 100000 prefixes (75% IPv4 /24, 25% IPv6 /48): text {} bytes parsed and built in {:.1} ms; heap {} bytes; shared binary form {} bytes, rebuilt in {:.1} ms; lookup {:.0} ns (100k list, {big_hits} hits) vs {:.0} ns (10-prefix list, {small_hits} hits)",
            text.len(),
            built.as_secs_f64() * 1e3,
            decoded.heap_bytes(),
            encoded.len(),
            rebuilt.as_secs_f64() * 1e3,
            big_ns,
            small_ns,
        );
    }
}

//! `palisade-check FILE...`: validates palisade configuration documents the
//! way the filter's `on_configure` does, without starting a proxy. Exits 1
//! and prints the JSON path of the first error of each invalid file; `-`
//! reads standard input. Useful in CI pipelines that render configurations.
//!
//! `palisade-check --schema` prints the configuration's JSON Schema
//! (draft 7), derived from the configuration types: what editors and
//! nginx/kong/palisade.meta.json (`make kong-schema`) are made from.
//!
//! `palisade-check --nginx-zone-size FILE...` prints, for each
//! configuration, the size of the `shm_kv *` zone it needs on NGINX with
//! ngx_wasm_module (see [`ngx_zone`]), as `FILE: shm_kv * <N>m` and a
//! one-line breakdown. Exits 1 on an invalid configuration.
//!
//! `palisade-check --resolve FILE` prints the configuration with its
//! `openapi.document` read or fetched when it is a `{"file": ...}` or
//! `{"uri": ...}` reference, as `{"inline": ...}`: the only form the filter
//! accepts (see [`resolve`]). Diagnostics go to standard error; nothing is
//! printed unless the resolved configuration passes the check. Every mode
//! resolves references before checking, so CI checks the real document.

use palisade::config::Policy;
use palisade::core::config_error::ConfigError;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

#[path = "palisade-check/resolve.rs"]
mod resolve;

/// The `shm_kv *` zone a configuration needs on ngx_wasm_module.
///
/// The keys and values are not listed here a second time: the writes the
/// filter's `on_configure` makes (the host probe, then
/// `pipeline::prepare_shared_data`) are replayed against an in-memory
/// store, and what they
/// wrote is costed the way ngx_wasm_module (commit 3bed2783,
/// `src/common/shm/ngx_wa_shm_kv.c`) and nginx's slab allocator
/// (`src/core/ngx_slab.c`, 1.27.4) lay it out on a 64-bit host with 4 KiB
/// pages:
///
/// * each key is one allocation of `sizeof(ngx_wa_shm_kv_node_t)` (96
///   bytes: rbtree node, key string, value string, CAS, LRU queue) plus the
///   key plus the value;
/// * an allocation of at most half a page takes a power-of-two chunk (at
///   least 8 bytes) from a page holding chunks of that size only, so a slot
///   page (896 bytes + a 14-18 byte key + 96) takes a 1 KiB chunk, four to a
///   page; a larger one takes whole contiguous pages;
/// * the zone begins with the slab pool's header, 9 size-class heads and
///   their statistics, and a 24-byte descriptor per page, then the pages
///   themselves, page-aligned;
/// * a value that grows is allocated anew before the old one is freed
///   (nothing else does; slot pages never change size).
///
/// Run-time growth: a remote key set's record (created empty at configure)
/// grows to its header plus the fetched document, at most
/// `jwks::MAX_DOCUMENT_BYTES`, and a remote reputation list's data record
/// (created at its first fetch) to at most `reputation::MAX_LIST_BYTES` of
/// binary prefixes; each is counted at that size, plus the largest once
/// more for the moment a record is replaced. Everything else is created at configure
/// time and never grows. On top of that, [`HEADROOM`], then the total is
/// rounded up to a whole MiB.
mod ngx_zone {
    use palisade::config::Policy;
    use palisade::pipeline::prepare_shared_data;
    use palisade::stages::auth::jwks;
    use palisade::stages::reputation;
    use palisade::state::host::{cas_zero_overwrites, SharedStore, StoreError, Versioned};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// nginx's page (`ngx_pagesize`) on the hosts ngx_wasm_module targets.
    pub const NGX_PAGE: u64 = 4096;
    /// `sizeof(ngx_wa_shm_kv_node_t)` on a 64-bit host.
    pub const NODE: u64 = 96;
    /// `sizeof(ngx_wa_shm_kv_t)` with `eviction=none`, allocated when the zone is initialised.
    const KV_HEADER: u64 = 88;
    /// Largest chunk (`ngx_slab_max_size`); above it, whole pages.
    const SLAB_MAX: u64 = NGX_PAGE / 2;
    /// Below this chunk size (`ngx_slab_exact_size`) the page's bitmap lives in its first chunks.
    const SLAB_EXACT: u64 = NGX_PAGE / 64;
    /// Smallest chunk (`min_shift` 3).
    const MIN_CHUNK: u64 = 8;
    /// `sizeof(ngx_slab_page_t)`: one per page of the zone.
    const PAGE_DESCRIPTOR: u64 = 24;
    /// `sizeof(ngx_slab_pool_t)` (200), then 9 size-class heads (24 each)
    /// and their statistics (32 each).
    const POOL_HEADER: u64 = 200 + 9 * (24 + 32);
    /// Largest JWK Set document the filter stores.
    pub const MAX_JWKS_BYTES: u64 = jwks::MAX_DOCUMENT_BYTES as u64;
    /// A remote reputation list's data record: its generation and at most
    /// `reputation::MAX_LIST_BYTES` of binary prefixes.
    pub const MAX_LIST_RECORD_BYTES: u64 = 8 + reputation::MAX_LIST_BYTES as u64;
    /// Added to what the tables need before rounding up: room for nginx
    /// builds whose structures are larger, and for the allocator's
    /// fragmentation when key-set records are replaced.
    pub const HEADROOM: u64 = 1 << 20;
    const MIB: u64 = 1 << 20;

    /// What one allocation takes from the slab allocator.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Alloc {
        /// A chunk of this many bytes, in a page of such chunks.
        Chunk(u64),
        /// This many whole pages.
        Pages(u64),
    }

    /// The slab allocator's answer to a request of `bytes`.
    pub fn alloc(bytes: u64) -> Alloc {
        if bytes > SLAB_MAX {
            Alloc::Pages(bytes.div_ceil(NGX_PAGE))
        } else {
            Alloc::Chunk(bytes.max(MIN_CHUNK).next_power_of_two())
        }
    }

    /// Chunks of `size` one page holds.
    pub fn chunks_per_page(size: u64) -> u64 {
        let n = NGX_PAGE / size;
        if size < SLAB_EXACT {
            // The bitmap (one bit a chunk) takes the page's first chunks.
            n - (n / 8).div_ceil(size)
        } else {
            n
        }
    }

    /// Bytes of a zone whose allocator has `pages` pages.
    pub fn zone_bytes(pages: u64) -> u64 {
        (POOL_HEADER + pages * PAGE_DESCRIPTOR).next_multiple_of(NGX_PAGE) + pages * NGX_PAGE
    }

    /// Memory store with ngx_wasm_module's semantics (a write with CAS 0
    /// creates only), remembering the largest value each key ever held:
    /// a node never shrinks.
    #[derive(Default)]
    struct Recorder {
        entries: RefCell<BTreeMap<String, Stored>>,
    }

    /// A key's value, its CAS, and the largest value it held (its node's size).
    type Stored = (Vec<u8>, u32, usize);

    impl SharedStore for Recorder {
        fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
            Ok(self
                .entries
                .borrow()
                .get(key)
                .map(|(value, cas, _)| (value.clone(), *cas)))
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            let mut entries = self.entries.borrow_mut();
            match entries.get_mut(key) {
                None if cas == 0 => {
                    entries.insert(key.to_string(), (value.to_vec(), 1, value.len()));
                    Ok(())
                }
                Some((old, version, size)) if *version == cas => {
                    *old = value.to_vec();
                    *version += 1;
                    *size = (*size).max(value.len());
                    Ok(())
                }
                _ => Err(StoreError::CasMismatch),
            }
        }
    }

    /// Keys of one kind (a table's pages, its overflow buckets, the seed, key-set records).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Group {
        pub label: String,
        pub keys: u64,
        pub alloc: Alloc,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Estimate {
        /// What `on_configure` creates, by kind.
        pub groups: Vec<Group>,
        /// Pages holding what `on_configure` creates.
        pub configure_pages: u64,
        /// Pages the key-set records take once filled, plus one replacement.
        pub runtime_pages: u64,
        /// Zone bytes for all those pages, header included.
        pub needed: u64,
        /// `needed` plus [`HEADROOM`], rounded up to a whole MiB: the size to declare.
        pub mib: u64,
    }

    /// `palisade.rl.p.12` -> `rl.p`, `palisade.jwks.<provider>.<hash>` -> `jwks`.
    fn label(key: &str) -> String {
        let rest = key.strip_prefix("palisade.").unwrap_or(key);
        match rest.rsplit_once('.') {
            Some((head, index)) if index.bytes().all(|b| b.is_ascii_digit()) => head.to_string(),
            _ => rest.split('.').next().unwrap_or(rest).to_string(),
        }
    }

    /// The zone `policy` needs on ngx_wasm_module.
    pub fn estimate(policy: &Policy) -> Result<Estimate, StoreError> {
        let store = Recorder::default();
        // What the filter's on_configure writes, in its order (filters/palisade/src/lib.rs).
        cas_zero_overwrites(&store)?;
        prepare_shared_data(policy, &store, [0x5a; 16])?;
        let remotes: Vec<_> = policy
            .auth
            .providers
            .iter()
            .filter_map(|p| p.remote.as_ref())
            .collect();
        let entries = store.entries.into_inner();

        let mut groups: BTreeMap<(String, Alloc), u64> = BTreeMap::new();
        let mut chunks: BTreeMap<u64, u64> = BTreeMap::new();
        let mut whole_pages = 0;
        *chunks
            .entry(KV_HEADER.max(MIN_CHUNK).next_power_of_two())
            .or_default() += 1;
        for (key, (_, _, size)) in &entries {
            let a = alloc(NODE + key.len() as u64 + *size as u64);
            *groups.entry((label(key), a)).or_default() += 1;
            match a {
                Alloc::Chunk(c) => *chunks.entry(c).or_default() += 1,
                Alloc::Pages(p) => whole_pages += p,
            }
        }
        let configure_pages = whole_pages
            + chunks
                .iter()
                .map(|(&size, &n)| n.div_ceil(chunks_per_page(size)))
                .sum::<u64>();
        let record_pages: Vec<u64> = remotes
            .iter()
            .map(|r| {
                let created = entries.get(&r.record_key).map_or(0, |e| e.2 as u64);
                match alloc(NODE + r.record_key.len() as u64 + created + MAX_JWKS_BYTES) {
                    Alloc::Pages(p) => p,
                    Alloc::Chunk(_) => 1,
                }
            })
            .chain(
                policy
                    .reputation
                    .iter()
                    .flat_map(|r| r.lists.iter().filter_map(|l| l.remote()))
                    .map(|r| {
                        let key = r.data_key().len() as u64;
                        match alloc(NODE + key + MAX_LIST_RECORD_BYTES) {
                            Alloc::Pages(p) => p,
                            Alloc::Chunk(_) => 1,
                        }
                    }),
            )
            .collect();
        let runtime_pages =
            record_pages.iter().sum::<u64>() + record_pages.iter().max().copied().unwrap_or(0);
        let needed = zone_bytes(configure_pages + runtime_pages);
        Ok(Estimate {
            groups: groups
                .into_iter()
                .map(|((label, alloc), keys)| Group { label, keys, alloc })
                .collect(),
            configure_pages,
            runtime_pages,
            needed,
            mib: (needed + HEADROOM).div_ceil(MIB),
        })
    }

    impl Estimate {
        /// `shm_kv * 7m eviction=none` and the breakdown, on one line.
        pub fn line(&self) -> String {
            let groups: Vec<String> = self
                .groups
                .iter()
                .map(|g| match g.alloc {
                    Alloc::Chunk(c) => format!("{} {} x {c} B", g.label, g.keys),
                    Alloc::Pages(p) => format!("{} {} x {p} pages", g.label, g.keys),
                })
                .collect();
            format!(
                "shm_kv * {}m eviction=none  # {}: {} pages at configure + {} for key sets at run time = {} bytes ({:.2} MiB) with the zone header, + {} MiB headroom",
                self.mib,
                groups.join(", "),
                self.configure_pages,
                self.runtime_pages,
                self.needed,
                self.needed as f64 / MIB as f64,
                HEADROOM / MIB,
            )
        }
    }
}

fn read(path: &str) -> std::io::Result<Vec<u8>> {
    if path == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(path)
    }
}

/// Why a configuration could not be loaded.
enum LoadError {
    Read(std::io::Error),
    Config(ConfigError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read(e) => write!(f, "cannot read: {e}"),
            LoadError::Config(e) => write!(f, "{e}"),
        }
    }
}

/// The configuration at `path` (`-`: standard input) with its document
/// references resolved: relative to the file's directory, or to the
/// current directory for standard input.
fn load(path: &str) -> Result<Vec<u8>, LoadError> {
    let bytes = read(path).map_err(LoadError::Read)?;
    let base = match path {
        "-" => Path::new(""),
        _ => Path::new(path).parent().unwrap_or(Path::new("")),
    };
    resolve::resolve_config(bytes, base).map_err(LoadError::Config)
}

/// `--resolve FILE`: the resolved configuration on standard output when it
/// passes the check; otherwise the error on standard error.
fn print_resolved(path: &str) -> ExitCode {
    let checked = load(path).and_then(|bytes| {
        Policy::from_json(&bytes)
            .map(|_| bytes)
            .map_err(LoadError::Config)
    });
    let mut bytes = match checked {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-check: cannot write the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The schema as JSON text: two-space indents, keys sorted, a final newline.
fn schema_text() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&palisade::config::json_schema()).map(|text| text + "\n")
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths == ["--schema"] {
        return match schema_text() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("palisade-check: cannot write the schema: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if paths.first().is_some_and(|p| p == "--resolve") {
        return match &paths[1..] {
            [path] => print_resolved(path),
            _ => {
                eprintln!("usage: palisade-check --resolve FILE (- for standard input)");
                ExitCode::from(2)
            }
        };
    }
    let zone = paths.first().is_some_and(|p| p == "--nginx-zone-size");
    let paths = if zone { &paths[1..] } else { &paths[..] };
    if paths.is_empty() {
        eprintln!(
            "usage: palisade-check FILE... (- for standard input)\n       palisade-check --schema\n       palisade-check --nginx-zone-size FILE...\n       palisade-check --resolve FILE"
        );
        return ExitCode::from(2);
    }
    let mut failed = false;
    for path in paths {
        match load(path) {
            Err(e @ LoadError::Read(_)) => {
                eprintln!("{path}: {e}");
                failed = true;
            }
            Err(e @ LoadError::Config(_)) => {
                println!("{path}: {e}");
                failed = true;
            }
            Ok(bytes) => match Policy::from_json(&bytes) {
                Ok(policy) if zone => match ngx_zone::estimate(&policy) {
                    Ok(estimate) => println!("{path}: {}", estimate.line()),
                    Err(e) => {
                        println!("{path}: cannot replay the shared-data writes: {e:?}");
                        failed = true;
                    }
                },
                Ok(_) => println!("{path}: ok"),
                Err(e) => {
                    println!("{path}: {e}");
                    failed = true;
                }
            },
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::ngx_zone::{alloc, chunks_per_page, estimate, zone_bytes, Alloc, Estimate};
    use palisade::config::Policy;

    fn estimated(json: &str) -> Estimate {
        let policy = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        estimate(&policy).unwrap_or_else(|e| unreachable!("{e:?}"))
    }

    fn keys(e: &Estimate, label: &str) -> u64 {
        e.groups
            .iter()
            .filter(|g| g.label == label)
            .map(|g| g.keys)
            .sum()
    }

    const ONE_RULE: &str = r#"{"version": 1, "rate_limits": {"slots": 65536, "rules": [
        {"name": "ip", "key": ["ip"], "capacity": 5, "refill": "none"}]}}"#;

    #[test]
    fn the_slab_allocator_rounds_like_nginx() {
        // A slot page: node 96 + key + 896-byte value.
        assert_eq!(alloc(96 + 18 + 896), Alloc::Chunk(1024));
        assert_eq!(alloc(1025), Alloc::Chunk(2048));
        assert_eq!(alloc(2048), Alloc::Chunk(2048));
        assert_eq!(alloc(2049), Alloc::Pages(1));
        assert_eq!(alloc(4097), Alloc::Pages(2));
        assert_eq!(alloc(1), Alloc::Chunk(8));
        assert_eq!(chunks_per_page(1024), 4);
        assert_eq!(chunks_per_page(64), 64);
        // 512 chunks of 8 bytes, the first 8 hold the 64-byte bitmap.
        assert_eq!(chunks_per_page(8), 504);
        // Header (704) + 1026 page descriptors, page-aligned, then the pages.
        assert_eq!(zone_bytes(1026), 28_672 + 1026 * 4096);
    }

    #[test]
    fn a_65536_slot_rate_limit_table_needs_6_mib() {
        let e = estimated(ONE_RULE);
        // 65,536 slots / 16 a page = 4,096 pages, one overflow bucket: four
        // 1 KiB chunks a page; the seed, the host probe, the gauges' lease
        // and the zone's own header in 128-byte chunks.
        assert_eq!(keys(&e, "rl.p"), 4096);
        assert_eq!(keys(&e, "rl.o"), 1);
        assert_eq!(keys(&e, "seed"), 1);
        assert_eq!(keys(&e, "host-probe"), 1);
        assert_eq!(keys(&e, "gauges"), 1);
        assert!(
            e.groups.iter().all(
                |g| matches!(g.label.as_str(), "seed" | "host-probe" | "gauges")
                    || g.alloc == Alloc::Chunk(1024)
            ),
            "{e:?}"
        );
        assert_eq!(e.configure_pages, 1025 + 1);
        assert_eq!(e.runtime_pages, 0);
        assert_eq!(e.needed, 4_231_168);
        assert_eq!(e.mib, 6);
        assert!(
            e.line().starts_with("shm_kv * 6m eviction=none  # "),
            "{}",
            e.line()
        );
    }

    #[test]
    fn every_table_the_filter_creates_is_counted() {
        let secret = "YS1kZW1vLXNlY3JldC1vZi1hdC1sZWFzdC0zMi1ieXRlcyEh";
        let json = format!(
            r#"{{"version": 1,
            "routes": [{{"name": "pay", "prefix": "/pay"}}, {{"name": "api", "prefix": "/api"}},
                       {{"name": "token", "path": "/oauth/token", "methods": ["POST"]}}],
            "rate_limits": {{"slots": 4096, "rules": [
                {{"name": "a", "key": ["ip"], "capacity": 5, "refill": "none"}},
                {{"name": "b", "key": ["ip", "route"], "capacity": 5, "refill": "none"}}]}},
            "signatures": {{"replay_slots": 8192,
                "keys": [{{"id": "k", "secret": {{"base64": "{secret}"}}}}],
                "policies": [{{"routes": ["pay"], "require_nonce": true}}]}},
            "jwt": {{"providers": [{{"name": "idp", "issuer": "https://idp.example", "audiences": ["api"],
                     "algorithms": ["EdDSA"],
                     "jwks": {{"remote": {{"address": "127.0.0.1:9000", "path": "/jwks"}}}}}}],
                     "refresh_tokens": {{"routes": ["token"], "slots": 1024}}}},
            "authorization": {{"policies": [{{"routes": ["api"]}}]}},
            "bot": {{"behaviour": {{"slots": 2048}}}}}}"#
        );
        let policy = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        let e = estimate(&policy).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(keys(&e, "rl.p"), 256);
        assert_eq!(keys(&e, "rl.o"), 2);
        assert_eq!(keys(&e, "rp.p"), 512);
        assert_eq!(keys(&e, "rt.p"), 64);
        assert_eq!(keys(&e, "bh.p"), 128);
        assert_eq!(keys(&e, "seed"), 1);
        assert_eq!(keys(&e, "jwks"), 1);
        let counted: u64 = e.groups.iter().map(|g| g.keys).sum();
        // The tables, the seed, the key-set record, the host probe and the
        // gauges' lease.
        assert_eq!(counted, policy.shared_keys().count() as u64 + 4);
        // 962 page-sized keys, four to a page; the seed, the probe and the zone header
        // in a page of 128-byte chunks, the empty key-set record (96 + key
        // + 32 bytes) in one of 256-byte chunks.
        assert_eq!(e.configure_pages, 962_u64.div_ceil(4) + 1 + 1);
        // The key-set record filled (96 + key + 32 + 256 KiB: 65 pages),
        // and once more while it is replaced.
        assert_eq!(e.runtime_pages, 2 * 65);
    }

    #[test]
    fn a_remote_reputation_list_is_counted_at_its_largest() {
        let json = r#"{"version": 1, "reputation": {"lists": [
            {"name": "inline", "action": "deny", "cidrs": ["203.0.113.0/24"]},
            {"name": "feed", "action": "deny", "remote": {"address": "127.0.0.1:9000", "path": "/feed"}}]}}"#;
        let policy = Policy::from_json(json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        let e = estimate(&policy).unwrap_or_else(|e| unreachable!("{e:?}"));
        // The schedule record at configure; an inline list needs no key.
        assert_eq!(keys(&e, "list"), 1);
        // The data record (96 + key + 8 + 4 MiB: 1025 pages), and once
        // more while it is replaced.
        assert_eq!(e.runtime_pages, 2 * 1025);
        assert_eq!(e.mib, 14, "{}", e.line());
    }

    #[test]
    fn the_replay_table_adds_its_pages() {
        let secret = "YS1kZW1vLXNlY3JldC1vZi1hdC1sZWFzdC0zMi1ieXRlcyEh";
        let with = |replay: bool| {
            estimated(&format!(
                r#"{{"version": 1, "routes": [{{"name": "pay", "prefix": "/pay"}}],
                "rate_limits": {{"slots": 65536, "rules": [
                    {{"name": "ip", "key": ["ip"], "capacity": 5, "refill": "none"}}]}},
                "signatures": {{"keys": [{{"id": "k", "secret": {{"base64": "{secret}"}}}}],
                    "policies": [{{"routes": ["pay"], "replay": {replay}}}]}}}}"#
            ))
        };
        let (without, with) = (with(false), with(true));
        assert_eq!(keys(&without, "rp.p"), 0, "{without:?}");
        // 65,536 replay slots by default: 4,096 more 1 KiB chunks.
        assert_eq!(with.configure_pages - without.configure_pages, 1024);
        assert_eq!((with.mib, without.mib), (10, 6));
    }
}

//! What every stage is given besides the request: the host services, the
//! process-wide hash seed, and the one rule for failed host services.

use crate::core::metrics::Metrics;
use crate::core::mode::{FailureMode, Mode};
use crate::core::verdict::{Finding, Reason, Stage};
use crate::state::host::{Clock, SharedStore, StoreError};
use crate::state::slots;
use siphasher::sip128::{Hash128, Hasher128, SipHasher13};

/// Host services one evaluation uses.
pub struct Services<'a> {
    pub store: &'a dyn SharedStore,
    pub clock: &'a dyn Clock,
    pub metrics: &'a dyn Metrics,
}

/// A stage's context for one request.
pub struct Ctx<'a> {
    pub host: &'a Services<'a>,
    pub seed: &'a [u8; 16],
    pub failure_mode: FailureMode,
    /// The key of the global mode's hashes (`global.key_secret`), when the
    /// document has a `global` section.
    pub cluster_seed: Option<&'a [u8; 16]>,
}

impl Ctx<'_> {
    /// SipHash-1-3 keyed with the process seed: neither a slot nor a tag of
    /// someone else's key can be predicted without the seed.
    pub fn keyed_hash(&self, write: impl FnOnce(&mut SipHasher13)) -> Hash128 {
        let mut h = SipHasher13::new_with_key(self.seed);
        write(&mut h);
        h.finish128()
    }

    /// The key of a global descriptor: like [`Ctx::keyed_hash`], but the
    /// same on every replica (keyed with the cluster's secret, not the
    /// process seed). `None` without a `global` section.
    pub fn cluster_hash(&self, write: impl FnOnce(&mut SipHasher13)) -> Option<u128> {
        let mut h = SipHasher13::new_with_key(self.cluster_seed?);
        write(&mut h);
        Some(h.finish128().as_u128())
    }

    /// Tag from one half of the hash, home page from the other (the tag
    /// also picks the alternates, see `slots::Address`).
    pub fn address(hash: Hash128, pages: u32) -> slots::Address {
        let pages = pages.max(1);
        slots::Address {
            tag: hash.h1.max(1),
            home: u32::try_from(hash.h2 % u64::from(pages)).unwrap_or(0),
            pages,
        }
    }

    /// What a shared-data failure means (see [`Ctx::host_failure`]).
    pub fn store_failure(&self, what: &str, stage: Stage, error: StoreError) -> Finding {
        log::error!(
            "palisade: shared data failed for `{what}` ({error:?}); failure_mode is {}",
            self.failure_mode.as_str()
        );
        Finding::new(stage, Reason::StoreUnavailable, self.failure_mode())
    }

    /// The one place that decides what a failed host service (clock, header
    /// map) means: `failure_mode` deny refuses the request with 503, allow
    /// lets it go on unchecked by that stage, logged and counted.
    pub fn host_failure(&self, what: &str, stage: Stage) -> Finding {
        host_failure(self.failure_mode, what, stage)
    }

    fn failure_mode(&self) -> Mode {
        self.failure_mode.mode()
    }
}

/// [`Ctx::host_failure`] before there is a context (no header map).
pub fn host_failure(failure_mode: FailureMode, what: &str, stage: Stage) -> Finding {
    log::error!(
        "palisade: the host failed to provide the {what}; failure_mode is {}",
        failure_mode.as_str()
    );
    Finding::new(stage, Reason::HostUnavailable, failure_mode.mode())
}

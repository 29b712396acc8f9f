//! The configured names behind the indices findings and counters carry
//! (route classes, rate-limit rules, JWT providers). The compiled policy
//! answers them, so findings and counters stay small and `Copy`, and
//! nothing below the document needs to know the policy.

use crate::core::routes::RouteId;

pub trait Names {
    fn route_name(&self, route: RouteId) -> &str;
    fn rule_name(&self, rule: u8) -> Option<&str>;
    fn provider_name(&self, provider: u8) -> Option<&str>;
    /// A reputation list's name (a reputation finding's `rule`).
    fn list_name(&self, _list: u8) -> Option<&str> {
        None
    }
}

//! What a chain does when its plugin instance crashes: the restart policy
//! (reload or fail-closed), its backoff and crash-loop cap, per channel or
//! per plugin type.

use std::str::FromStr;
use std::time::Duration;

/// What a chain does when its plugin instance crashes (after Envoy's
/// proxy-wasm failure policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// The chain stays errored until the node restarts.
    FailClosed,
    /// A new instance from the last written block, with backoff and a
    /// crash-loop cap.
    Reload,
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reload" => Ok(RestartPolicy::Reload),
            "fail-closed" => Ok(RestartPolicy::FailClosed),
            other => Err(format!("restart policy {other:?}: expected reload or fail-closed")),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::FailClosed => "fail-closed",
            RestartPolicy::Reload => "reload",
        })
    }
}

/// A chain's restart policy and its backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartConfig {
    /// Reload or fail closed.
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubled for each further crash
    /// within `crash_window`.
    pub initial_backoff: Duration,
    /// Longest delay between a crash and the restart.
    pub max_backoff: Duration,
    /// This many crashes within `crash_window` leave the chain errored.
    pub max_crashes: u32,
    /// The crash-loop window.
    pub crash_window: Duration,
}

impl RestartConfig {
    /// `policy` with the default backoff: 100 ms doubling to 10 s, at most
    /// 5 crashes within 60 s.
    pub fn new(policy: RestartPolicy) -> RestartConfig {
        RestartConfig {
            policy,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_crashes: 5,
            crash_window: Duration::from_secs(60),
        }
    }

    /// The delay before restarting after the `n`-th crash in the window
    /// (n >= 1): initial × 2^(n-1), at most `max_backoff`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Restart policies of a node's chains: per channel, else per plugin type,
/// else the default (`reload` for the plugins shipped in the binary,
/// `fail-closed` for plugins loaded from files), with one backoff.
#[derive(Debug, Clone)]
pub struct RestartPolicies {
    /// Policy of a channel (wins over its plugin's).
    pub by_channel: std::collections::BTreeMap<String, RestartPolicy>,
    /// Policy of every channel ordered by a plugin type.
    pub by_plugin: std::collections::BTreeMap<String, RestartPolicy>,
    /// Backoff and crash-loop cap (its `policy` is not used).
    pub backoff: RestartConfig,
}

impl Default for RestartPolicies {
    fn default() -> Self {
        RestartPolicies {
            by_channel: Default::default(),
            by_plugin: Default::default(),
            backoff: RestartConfig::new(RestartPolicy::Reload),
        }
    }
}

impl RestartPolicies {
    /// The restart configuration of `channel`, ordered by `plugin`
    /// (`shipped`: embedded in the binary).
    pub fn for_chain(&self, channel: &str, plugin: &str, shipped: bool) -> RestartConfig {
        let default = if shipped { RestartPolicy::Reload } else { RestartPolicy::FailClosed };
        let policy = self.by_channel.get(channel).or_else(|| self.by_plugin.get(plugin)).copied().unwrap_or(default);
        RestartConfig { policy, ..self.backoff.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let c = RestartConfig::new(RestartPolicy::Reload);
        let ms: Vec<u128> = (1..=9).map(|n| c.backoff(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(c.backoff(200), Duration::from_secs(10), "no overflow");
    }

    #[test]
    fn restart_policy_defaults_and_overrides() {
        let mut p = RestartPolicies::default();
        assert_eq!(p.for_chain("ch", "solo", true).policy, RestartPolicy::Reload);
        assert_eq!(p.for_chain("ch", "mine", false).policy, RestartPolicy::FailClosed);
        p.by_plugin.insert("mine".into(), RestartPolicy::Reload);
        p.by_channel.insert("strict".into(), RestartPolicy::FailClosed);
        assert_eq!(p.for_chain("ch", "mine", false).policy, RestartPolicy::Reload);
        assert_eq!(p.for_chain("strict", "mine", false).policy, RestartPolicy::FailClosed, "channel wins");
        assert_eq!("fail-closed".parse::<RestartPolicy>(), Ok(RestartPolicy::FailClosed));
        assert!("sometimes".parse::<RestartPolicy>().is_err());
    }
}

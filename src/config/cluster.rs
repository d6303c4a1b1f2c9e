//! The `[cluster]` section: whether this node shares partitions and
//! fetchers with others, its node id, lease timing; validated once into
//! [`ClusterSettings`] by `Config::validate`. The ownership machinery is
//! `crate::cluster`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Share partitions and fetchers with the other nodes on the same hub
    /// and blob store. Off: this process runs every partition and source.
    pub enabled: bool,
    /// This node's id in ownership records and leases (letters, digits,
    /// `.`, `_`, `-`); default `<hostname>-<pid>`.
    pub node_id: Option<String>,
    /// How long a partition claim or a fetcher lease lasts without renewal;
    /// a dead node's work moves after this long.
    pub lease_secs: u64,
    /// How often a node renews, claims and rebalances (at most half of
    /// `lease_secs`).
    pub renew_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: None,
            lease_secs: 30,
            renew_secs: 10,
        }
    }
}

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `[cluster] enabled`: this node shares the work with others.
    pub enabled: bool,
    pub node_id: String,
    pub lease: Duration,
    pub renew: Duration,
}

/// A `[cluster]` field that does not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster.{field}: {message}")]
pub struct ClusterConfigError {
    pub field: &'static str,
    pub message: String,
}

impl ClusterConfigError {
    /// The field's path in the file (`cluster.lease_secs`).
    pub fn path(&self) -> String {
        format!("cluster.{}", self.field)
    }
}

impl ClusterConfig {
    /// Check ranges and resolve the node id.
    pub fn validate(&self) -> Result<ClusterSettings, ClusterConfigError> {
        let error = |field: &'static str, message: &str| ClusterConfigError {
            field,
            message: message.to_string(),
        };
        if self.renew_secs == 0 {
            return Err(error("renew_secs", "must be at least 1"));
        }
        if self.lease_secs < 2 * self.renew_secs {
            return Err(error(
                "lease_secs",
                "must be at least twice renew_secs (a node renews several times per lease)",
            ));
        }
        if self.lease_secs > 3_600 {
            return Err(error("lease_secs", "must be at most 3600"));
        }
        let node_id = match &self.node_id {
            Some(id) => {
                validate_node_id(id).map_err(|message| error("node_id", &message))?;
                id.clone()
            }
            None => default_node_id(),
        };
        Ok(ClusterSettings {
            enabled: self.enabled,
            node_id,
            lease: Duration::from_secs(self.lease_secs),
            renew: Duration::from_secs(self.renew_secs),
        })
    }
}

/// A node id is part of blob names: 1-128 of letters, digits, `.`, `_`, `-`.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1-128 characters".to_string());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed".to_string());
    }
    if id.starts_with('.') {
        return Err("must not start with '.'".to_string());
    }
    Ok(())
}

/// `<hostname>-<pid>`, with characters a node id cannot hold replaced.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_with_a_host_and_pid_node_id() {
        let settings = ClusterConfig::default().validate().unwrap();
        assert!(!ClusterConfig::default().enabled);
        assert!(
            settings
                .node_id
                .ends_with(&format!("-{}", std::process::id()))
        );
        assert!(validate_node_id(&settings.node_id).is_ok());
        assert_eq!(settings.lease, Duration::from_secs(30));
        assert_eq!(settings.renew, Duration::from_secs(10));
    }

    #[test]
    fn ranges_and_node_ids_are_checked() {
        let bad = ClusterConfig {
            lease_secs: 3,
            renew_secs: 2,
            ..ClusterConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().path(), "cluster.lease_secs");
        let bad = ClusterConfig {
            renew_secs: 0,
            ..ClusterConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "renew_secs");
        for id in ["", "a/b", "../x", ".hidden", "with space"] {
            let bad = ClusterConfig {
                node_id: Some(id.to_string()),
                ..ClusterConfig::default()
            };
            assert_eq!(bad.validate().unwrap_err().field, "node_id", "{id:?}");
        }
        let good = ClusterConfig {
            node_id: Some("node-1.eu_west".to_string()),
            lease_secs: 3,
            renew_secs: 1,
            enabled: true,
        };
        assert_eq!(good.validate().unwrap().node_id, "node-1.eu_west");
    }

    #[test]
    fn the_section_is_strict_toml() {
        let config = crate::config::Config::parse(
            "[cluster]\nenabled = true\nnode_id = \"n1\"\nlease_secs = 6\nrenew_secs = 2\n",
            "t",
            &Default::default(),
        )
        .unwrap();
        assert!(config.cluster.enabled);
        let err =
            crate::config::Config::parse("[cluster]\nleese_secs = 6\n", "t", &Default::default())
                .unwrap_err()
                .to_string();
        assert!(err.contains("leese_secs"), "{err}");
        let err = crate::config::Config::parse(
            "[cluster]\nlease_secs = 1\nrenew_secs = 1\n",
            "t",
            &Default::default(),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("cluster.lease_secs"), "{err}");
    }
}

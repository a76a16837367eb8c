//! Kafka's named listeners: `listeners` (what the node binds), `advertised.listeners` (what
//! clients and other brokers are told, per listener name) and `listener.security.protocol.map`.
//! A node has one or more broker listeners and, on a controller, one named in
//! `controller.listener.names`. A client is answered with the endpoints of the listener it
//! connected on; other brokers are reached on `inter.broker.listener.name` (the first broker
//! listener unless named), so inter-broker traffic can take a path of its own.

use std::net::SocketAddr;

use super::BrokerConfig;
use crate::metadata::Endpoint;

/// A broker listener: a name from `listeners` and the address it binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerListener {
    pub name: String,
    pub address: SocketAddr,
}

/// Kafka's listener lists: `NAME://host:port` entries, comma-separated; a bare `host:port`
/// is the `PLAINTEXT` listener.
fn named_entries(key: &str, value: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = entry.split_once("://").unwrap_or(("PLAINTEXT", entry));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("{key} has a listener name that is not a word: \"{entry}\""));
        }
        if entries.iter().any(|(n, _)| n == name) {
            return Err(format!("{key} names listener {name} twice"));
        }
        entries.push((name.to_string(), address.to_string()));
    }
    if entries.is_empty() {
        return Err(format!("{key} is empty"));
    }
    Ok(entries)
}

fn socket_address(key: &str, value: &str) -> Result<SocketAddr, String> {
    let (host, port) = parse_host_port(key, value)?;
    let ip = if host.is_empty() { "0.0.0.0".to_string() } else { host };
    format!("{ip}:{port}")
        .parse()
        .or_else(|_| format!("[{ip}]:{port}").parse())
        .map_err(|_| format!("{key} must be an IP address and port, got \"{value}\""))
}

/// `host:port`, optionally behind Kafka's `PLAINTEXT://` prefix.
pub(super) fn parse_host_port(key: &str, value: &str) -> Result<(String, u16), String> {
    let address = value.trim().trim_start_matches("PLAINTEXT://");
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{key} must look like host:port (e.g. 127.0.0.1:9092), got \"{value}\""))?;
    let port = port.parse::<u16>().map_err(|_| format!("{key} has an invalid port in \"{value}\""))?;
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_string(), port))
}

impl BrokerConfig {
    /// `listeners`: the broker listeners (the first is the one `--listen` names and the
    /// default inter-broker listener) and, on a controller, one named in
    /// `controller.listener.names`.
    pub(super) fn apply_listeners(&mut self, value: &str) -> Result<(), String> {
        let key = "listeners";
        self.cluster.listeners_raw = Some(value.to_string());
        let mut brokers = Vec::new();
        self.cluster.controller_listener = None;
        for (name, address) in named_entries(key, value)? {
            let address = socket_address(key, &address)?;
            if self.cluster.controller_listener_names.contains(&name) {
                if self.cluster.controller_listener.replace(address).is_some() {
                    return Err(format!("listeners has more than one controller listener (at {name})"));
                }
            } else {
                brokers.push(BrokerListener { name, address });
            }
        }
        if brokers.is_empty() {
            return Err(format!(
                "listeners needs a broker listener (e.g. PLAINTEXT://127.0.0.1:9092), got \"{value}\""
            ));
        }
        let first = brokers.remove(0);
        self.cluster.listener_name = first.name;
        self.listener = first.address;
        self.other_listeners = brokers;
        Ok(())
    }

    /// `advertised.listeners`: host and port per listener name; controller listeners in it
    /// are ignored (voters are found through `controller.quorum.voters`). Whether each name is
    /// a broker listener is checked once every key is applied ([`BrokerConfig::validate`]).
    pub(super) fn apply_advertised_listeners(&mut self, value: &str) -> Result<(), String> {
        let key = "advertised.listeners";
        let mut advertised = Vec::new();
        for (name, address) in named_entries(key, value)? {
            if self.cluster.controller_listener_names.contains(&name) {
                continue;
            }
            let (host, port) = parse_host_port(key, &address)?;
            if host.is_empty() {
                return Err(format!("advertised.listeners needs a host name for {name}, got \"{address}\""));
            }
            advertised.push(Endpoint { listener: name, host, port });
        }
        if advertised.is_empty() {
            return Err(format!("advertised.listeners has no broker listener, got \"{value}\""));
        }
        self.advertised_listeners = advertised;
        Ok(())
    }

    /// Every broker listener, the first one first.
    pub fn broker_listeners(&self) -> Vec<BrokerListener> {
        let first = BrokerListener { name: self.cluster.listener_name.clone(), address: self.listener };
        std::iter::once(first).chain(self.other_listeners.iter().cloned()).collect()
    }

    /// What `listener` is advertised as, if `advertised.listeners` names it (the server adds
    /// the bound address of every listener it does not name).
    pub fn advertised(&self, listener: &str) -> Option<&Endpoint> {
        self.advertised_listeners.iter().find(|e| e.listener == listener)
    }

    /// The listener other brokers reach this one on.
    pub fn inter_broker_listener(&self) -> &str {
        self.cluster.inter_broker_listener_name.as_deref().unwrap_or(&self.cluster.listener_name)
    }

    /// Checks that every listener named by another key is a broker listener.
    pub(super) fn validate_listeners(&self) -> Result<(), String> {
        let names: Vec<String> = self.broker_listeners().into_iter().map(|l| l.name).collect();
        let known = |name: &str| names.iter().any(|n| n == name);
        let controller = |name: &str| self.cluster.controller_listener_names.iter().any(|n| n == name);
        if let Some(unknown) =
            self.advertised_listeners.iter().find(|e| !known(&e.listener) && !controller(&e.listener))
        {
            return Err(format!(
                "advertised.listeners names {}, which is not a broker listener in listeners ({})",
                unknown.listener,
                names.join(", ")
            ));
        }
        if let Some(name) = &self.cluster.inter_broker_listener_name {
            if !known(name) {
                return Err(format!(
                    "inter.broker.listener.name is {name}, which is not a broker listener in listeners ({})",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// `listener.security.protocol.map`: `NAME:PROTOCOL` pairs. Only PLAINTEXT listeners exist
/// here so far, so a map sending a listener to another protocol is refused, not ignored.
pub(super) fn check_security_protocol_map(value: &str) -> Result<(), String> {
    let key = "listener.security.protocol.map";
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| format!("{key} entries look like CONTROLLER:PLAINTEXT, got \"{entry}\""))?;
        match protocol.trim() {
            "PLAINTEXT" => {}
            "SSL" | "SASL_PLAINTEXT" | "SASL_SSL" => {
                return Err(format!(
                    "{key} maps {name} to {protocol}; only PLAINTEXT listeners are supported yet (no TLS or SASL)"
                ))
            }
            other => return Err(format!("{key} maps {name} to \"{other}\", which is not a security protocol")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_broker_listeners_each_with_its_advertised_address() {
        let mut config = BrokerConfig::default();
        config
            .apply("listeners", "CLIENT://127.0.0.1:19092,REPLICATION://127.0.0.1:19292,CONTROLLER://127.0.0.1:19192")
            .unwrap();
        config.apply("advertised.listeners", "CLIENT://c.example:9092,REPLICATION://r.example:9093").unwrap();
        config.apply("inter.broker.listener.name", "REPLICATION").unwrap();
        config.validate_listeners().unwrap();
        let names: Vec<String> = config.broker_listeners().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["CLIENT", "REPLICATION"]);
        assert_eq!(config.cluster.controller_listener, Some("127.0.0.1:19192".parse().unwrap()));
        assert_eq!(config.advertised("REPLICATION").map(|e| (e.host.as_str(), e.port)), Some(("r.example", 9093)));
        assert_eq!(config.inter_broker_listener(), "REPLICATION");
    }

    #[test]
    fn listeners_named_elsewhere_must_exist() {
        let mut config = BrokerConfig::default();
        config.apply("listeners", "PLAINTEXT://127.0.0.1:19092").unwrap();
        config.apply("advertised.listeners", "OTHER://h:1").unwrap();
        let err = config.validate_listeners().unwrap_err();
        assert!(err.starts_with("advertised.listeners names OTHER"), "{err}");
        config.apply("advertised.listeners", "PLAINTEXT://h:1").unwrap();
        config.apply("inter.broker.listener.name", "REPLICATION").unwrap();
        let err = config.validate_listeners().unwrap_err();
        assert!(err.starts_with("inter.broker.listener.name is REPLICATION"), "{err}");
        let err = config.apply("listeners", "A://127.0.0.1:1,A://127.0.0.1:2").unwrap_err();
        assert!(err.contains("names listener A twice"), "{err}");
        let err = check_security_protocol_map("PLAINTEXT:PLAINTEXT,SECURE:SSL").unwrap_err();
        assert!(err.contains("maps SECURE to SSL"), "{err}");
        check_security_protocol_map("CONTROLLER:PLAINTEXT,REPLICATION:PLAINTEXT").unwrap();
    }
}

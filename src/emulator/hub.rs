//! What the service keeps per hub: its connections and its groups.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::conn::Conn;

#[derive(Default)]
pub struct HubState {
    pub conns: HashMap<String, Arc<Conn>>,
    pub groups: HashMap<String, HashSet<String>>,
}

impl HubState {
    pub fn join(&mut self, group: &str, conn: &str) {
        self.groups
            .entry(group.to_string())
            .or_default()
            .insert(conn.to_string());
    }

    pub fn leave(&mut self, group: &str, conn: &str) {
        if let Some(members) = self.groups.get_mut(group) {
            members.remove(conn);
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    pub fn leave_all(&mut self, conn: &str) {
        self.groups.retain(|_, m| {
            m.remove(conn);
            !m.is_empty()
        });
    }

    pub fn groups_of(&self, conn: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, m)| m.contains(conn))
            .map(|(g, _)| g.clone())
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Conn>> {
        self.conns.values().cloned().collect()
    }

    pub fn get(&self, conn: &str) -> Option<Arc<Conn>> {
        self.conns.get(conn).cloned()
    }

    pub fn members(&self, group: &str) -> Vec<Arc<Conn>> {
        self.groups
            .get(group)
            .map(|m| m.iter().filter_map(|c| self.get(c)).collect())
            .unwrap_or_default()
    }

    pub fn of_user(&self, user: &str) -> Vec<Arc<Conn>> {
        self.conns
            .values()
            .filter(|c| c.user_id.as_deref() == Some(user))
            .cloned()
            .collect()
    }
}

/// Every hub of the emulator (hub names are case-insensitive in the service).
#[derive(Default)]
pub struct Registry {
    hubs: Mutex<HashMap<String, HubState>>,
    ce_ids: AtomicU64,
}

impl Registry {
    pub fn with<R>(&self, hub: &str, f: impl FnOnce(&mut HubState) -> R) -> R {
        let mut hubs = self.hubs.lock().unwrap();
        f(hubs.entry(hub.to_ascii_lowercase()).or_default())
    }

    /// `f` over every hub, results concatenated.
    pub fn list<T>(&self, mut f: impl FnMut(&HubState) -> Vec<T>) -> Vec<T> {
        let hubs = self.hubs.lock().unwrap();
        hubs.values().flat_map(&mut f).collect()
    }

    /// CloudEvents ids, unique per emulator process.
    pub fn next_ce_id(&self) -> String {
        (self.ce_ids.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }
}

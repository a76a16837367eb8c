//! The clickstream job's dictionary of page and user names: each stored once, and the
//! operators key their state by the names' ids, so an event costs a hash lookup rather than
//! an allocation. Names are the bytes of JSON strings, so UTF-8. The dictionary grows with
//! the distinct names seen; the key group compacts it ([`Names::retain`]) once most names
//! are no longer used by any state.

use std::sync::Arc;

use crate::operators::state::{StateMap, StateSet};

#[derive(Default)]
pub(crate) struct Names {
    ids: StateMap<Arc<[u8]>, u32>,
    names: Vec<Arc<[u8]>>,
}

impl Names {
    /// The id of `name`, given it on first sight.
    pub(crate) fn id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<[u8]> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    pub(crate) fn bytes(&self, id: u32) -> &[u8] {
        self.names.get(id as usize).map(|n| &**n).unwrap_or_default()
    }

    pub(crate) fn name(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Only the names in `live`, renumbered: the new table, and each old id's new id.
    pub(crate) fn retain(&self, live: &StateSet<u32>) -> (Names, Vec<u32>) {
        let mut kept = Names::default();
        let mut renumber = vec![u32::MAX; self.names.len()];
        for (old, name) in self.names.iter().enumerate() {
            if live.contains(&(old as u32)) {
                renumber[old] = kept.id(name);
            }
        }
        (kept, renumber)
    }
}

/// The two dictionaries a clickstream key group's operators share: the views are keyed by
/// page and count users, the sessions are keyed by user and count pages.
#[derive(Default)]
pub(crate) struct ClickNames {
    pub(crate) pages: Names,
    pub(crate) users: Names,
}

impl ClickNames {
    pub(crate) fn len(&self) -> usize {
        self.pages.len() + self.users.len()
    }
}

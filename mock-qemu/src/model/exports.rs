//! Block exports and the NBD server, as state (the sockets live in the
//! host I/O layer).

use super::graph::NodeId;

/// One export (`block-export-add`, or `nbd-server-add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The export id.
    pub id: String,
    /// The exported node.
    pub node: NodeId,
    /// The NBD export name.
    pub name: String,
    /// The NBD description.
    pub description: Option<String>,
    /// Clients may write.
    pub writable: bool,
    /// Dirty bitmaps exported with it (owner node, name): busy meanwhile.
    pub bitmaps: Vec<(NodeId, String)>,
}

/// The owner name of an export's BlockBackend in the graph.
pub fn backend_owner(id: &str) -> String {
    format!("export:{id}")
}

/// The NBD server (at most one) and every export.
#[derive(Debug, Default)]
pub struct Exports {
    /// The server's listening address, as given (`None`: not running).
    pub server: Option<String>,
    list: Vec<Export>,
}

impl Exports {
    /// Every export, newest first (as `query-block-exports` lists them).
    pub fn newest_first(&self) -> impl Iterator<Item = &Export> {
        self.list.iter().rev()
    }

    /// The export with this id.
    pub fn by_id(&self, id: &str) -> Option<&Export> {
        self.list.iter().find(|e| e.id == id)
    }

    /// The export with this NBD name.
    pub fn by_name(&self, name: &str) -> Option<&Export> {
        self.list.iter().find(|e| e.name == name)
    }

    /// Adds an export.
    pub fn add(&mut self, e: Export) {
        self.list.push(e);
    }

    /// Removes an export by id.
    pub fn remove(&mut self, id: &str) -> Option<Export> {
        let pos = self.list.iter().position(|e| e.id == id)?;
        Some(self.list.remove(pos))
    }

    /// Each export is on the node its BlockBackend is on now (graph
    /// changes such as a job's filter or a mirror's pivot move it).
    pub fn follow_backends<'a>(&mut self, backends: impl Iterator<Item = (&'a str, NodeId)>) {
        for (owner, node) in backends {
            if let Some(e) = self.list.iter_mut().find(|e| backend_owner(&e.id) == owner) {
                e.node = node;
            }
        }
    }

    /// Removes every export (the server stopped), oldest first.
    pub fn clear(&mut self) -> Vec<Export> {
        std::mem::take(&mut self.list)
    }
}

//! Letting an object go: a node stops replicating one object and keeps
//! replicating the others (placement moves objects off nodes that are no
//! longer their replicas: `repred-place`).

use std::sync::Arc;

use crate::{Error, Node};

impl Node {
    /// Whether this node keeps its objects in a store
    /// ([`Builder::durable`](crate::Builder::durable)).
    pub fn is_durable(&self) -> bool {
        self.inner.durable.is_some()
    }

    /// The names of the objects this node replicates now, in order.
    pub fn replicated(&self) -> Vec<String> {
        self.inner.registry.borrow().keys().cloned().collect()
    }

    /// Stops replicating `name`: its streams end (each peer is told the
    /// object was disposed of, and the side that dialed opens a new stream
    /// that waits in case this node replicates it again), its handles
    /// refuse further updates (as after a shutdown), and the node's store
    /// keeps its log as it stands, so that a later
    /// [`replicate`](Node::replicate) of the name resumes from it with the
    /// same source id. Returns whether the object was replicated.
    ///
    /// Only a durable node can release an object
    /// ([`Error::Config`] otherwise): a node that keeps an object in memory
    /// and made it again would write under the id it wrote under before,
    /// without the log of those writes.
    ///
    /// Every update recorded before the release is committed first: an
    /// update whose [`Handle::update`](crate::Handle::update) returned is
    /// on disk. If that commit fails ([`Error::Storage`]), the object no
    /// longer replicates but is still registered; call `release` again.
    pub async fn release(&self, name: &str) -> Result<bool, Error> {
        let Some(durable) = self.inner.durable.clone() else {
            return Err(Error::Config("only a durable node can release an object"));
        };
        if !self.inner.running() {
            return Err(Error::Shutdown);
        }
        let object = self.inner.registry.borrow().get(name).cloned();
        let Some(object) = object else { return Ok(false) };
        // No local update is taken from now on, and the streams close.
        object.dispose();
        // What it recorded before is on disk (updates waiting for it are
        // acknowledged by this commit)...
        durable.flush().await?;
        // ...and no later round saves it: a replica made again under this
        // name is the only writer of its log. The flush waits out a round
        // that may have taken the object before it was unregistered; that
        // round's failure is not this object's (it has nothing pending).
        durable.unregister(Arc::as_ptr(&object) as *const ());
        let _ = durable.flush().await;
        self.inner.registry.send_if_modified(|registry| match registry.get(name) {
            Some(o) if Arc::ptr_eq(o, &object) => registry.remove(name).is_some(),
            _ => false,
        });
        Ok(true)
    }
}

impl Node {
    /// Deletes what this node's store keeps of `name`, an object it does
    /// not replicate now (one it [released](Node::release)); returns
    /// whether the store had anything of it. A later
    /// [`replicate`](Node::replicate) of the name starts from scratch,
    /// under a new source id, and syncs from its peers.
    ///
    /// For an object whose every update this node had is held elsewhere
    /// (`repred-place` removes an object it dropped once the object's
    /// other replicas cover it): what only this store kept is lost.
    ///
    /// It commits at once, with an fsync, on the calling thread (a few
    /// milliseconds). Fails with [`Error::AlreadyReplicated`] if `name` is
    /// replicated now (release it first), [`Error::Config`] on a node
    /// that is not durable, [`Error::Storage`] if the store cannot be
    /// written (nothing was deleted then).
    pub fn remove_stored(&self, name: &str) -> Result<bool, Error> {
        let Some(durable) = &self.inner.durable else {
            return Err(Error::Config("only a durable node has a store to remove from"));
        };
        if self.inner.registry.borrow().contains_key(name) {
            return Err(Error::AlreadyReplicated(name.to_string()));
        }
        durable.store().remove(name).map_err(|e| Error::Storage(e.to_string()))
    }
}

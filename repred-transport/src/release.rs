//! Letting an object go: a node stops replicating one object and keeps
//! replicating the others (placement moves objects off nodes that are no
//! longer their replicas: `repred-place`).

use std::sync::Arc;

use crate::durable::{Busy, Claimed, Durable};
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
    /// The transaction and its fsync run on tokio's blocking pool, not on
    /// the task that awaits this. The removal is atomic with respect to a
    /// [`replicate`](Node::replicate) of the same name, whichever task
    /// calls either: the replicate either comes first (the removal then
    /// fails with [`Error::AlreadyReplicated`] and deletes nothing), or
    /// finds the removal under way and fails with [`Error::Removing`]
    /// (call it again once this returned), or comes after it and starts
    /// from scratch; it never resumes a copy that is being deleted. A
    /// removal started runs to its end even if this future is dropped.
    ///
    /// Fails with [`Error::AlreadyReplicated`] if `name` is replicated
    /// now or being made (release it first), [`Error::Removing`] if
    /// another removal of it is under way, [`Error::Config`] on a node
    /// that is not durable, [`Error::Storage`] if the store cannot be
    /// written (nothing was deleted then).
    pub async fn remove_stored(&self, name: &str) -> Result<bool, Error> {
        let durable = self.store_to_remove_from()?;
        let claim =
            durable.claim_removal(name, || self.is_replicated(name)).map_err(
                |busy| match busy {
                    Busy::InUse => Error::AlreadyReplicated(name.to_string()),
                    Busy::Removing => Error::Removing(name.to_string()),
                },
            )?;
        Ok(remove(durable, vec![claim]).await? > 0)
    }

    /// Deletes what this node's store keeps of each of `names`, as
    /// [`remove_stored`](Node::remove_stored) does, in one transaction
    /// (one fsync for all): `repred-place` removes every object that a
    /// round found covered at once. A name replicated now, being made or
    /// being removed already is left as it is; returns the names removed
    /// (whether the store had anything of them or not). Fails with
    /// [`Error::Config`] on a node that is not durable, [`Error::Storage`]
    /// if the store cannot be written (nothing was deleted then).
    pub async fn remove_stored_many<S: AsRef<str>>(
        &self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<Vec<String>, Error> {
        let durable = self.store_to_remove_from()?;
        let claims: Vec<Claimed> = names
            .into_iter()
            .filter_map(|name| {
                let name = name.as_ref();
                durable.claim_removal(name, || self.is_replicated(name)).ok()
            })
            .collect();
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let names = claims.iter().map(|c| c.name().to_string()).collect();
        remove(durable, claims).await?;
        Ok(names)
    }

    fn store_to_remove_from(&self) -> Result<Arc<Durable>, Error> {
        match &self.inner.durable {
            Some(durable) => Ok(durable.clone()),
            None => Err(Error::Config("only a durable node has a store to remove from")),
        }
    }

    fn is_replicated(&self, name: &str) -> bool {
        self.inner.registry.borrow().contains_key(name)
    }
}

/// Deletes the claimed names' stored copies in one transaction on the
/// blocking pool; the claims end once it committed (or failed), so that a
/// replica made from then on finds the store as the removal left it.
async fn remove(durable: Arc<Durable>, claims: Vec<Claimed>) -> Result<usize, Error> {
    // The store logs the removal in the node's span.
    let span = tracing::Span::current();
    let removal = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let removed = durable.store().remove_all(claims.iter().map(Claimed::name));
        drop(claims);
        removed
    });
    match removal.await {
        Ok(removed) => removed.map_err(|e| Error::Storage(e.to_string())),
        Err(e) => Err(Error::Task(format!("removing stored copies: {e}"))),
    }
}

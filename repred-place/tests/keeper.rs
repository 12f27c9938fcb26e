//! The keeper's rules on a toy cluster: replicas are sets of write ids
//! (a clock covers another when it is a superset), anti-entropy is a union
//! among the live holders, and the harness carries offers, checks and drops
//! as a driver would.

use std::collections::{BTreeMap, BTreeSet};

use repred::SourceId;
use repred_place::{Command, Keeper, KeeperConfig, Role};

type Data = BTreeMap<String, BTreeSet<u64>>;

struct World {
    ids: Vec<SourceId>,
    keepers: Vec<Keeper<String>>,
    data: Vec<Data>,
    up: Vec<bool>,
    now: u64,
}

impl World {
    fn new(n: usize) -> Self {
        let ids: Vec<SourceId> =
            (0..n).map(|i| SourceId::new(format!("node-{i}")).unwrap()).collect();
        let mut keepers: Vec<Keeper<String>> =
            ids.iter().map(|&id| Keeper::new(id, KeeperConfig::default())).collect();
        for k in &mut keepers {
            k.sync_members(0, ids.iter().map(|&id| (id, true)));
        }
        Self { ids, keepers, data: vec![Data::new(); n], up: vec![true; n], now: 0 }
    }

    fn index(&self, id: SourceId) -> usize {
        self.ids.iter().position(|&x| x == id).unwrap()
    }

    /// Every live node learns that `node` is up or down.
    fn set_up(&mut self, node: usize, up: bool) {
        self.up[node] = up;
        let id = self.ids[node];
        for (i, k) in self.keepers.iter_mut().enumerate() {
            if self.up[i] {
                k.set_member(self.now, id, up);
            }
        }
    }

    fn create(&mut self, node: usize, object: &str, value: u64) {
        self.data[node].entry(object.into()).or_default().insert(value);
        self.keepers[node].hold(self.now, object.into(), None);
    }

    fn write(&mut self, node: usize, object: &str, value: u64) {
        self.data[node].get_mut(object).unwrap().insert(value);
        self.keepers[node].changed(&object.to_string());
    }

    /// Carries every keeper's commands; `sync` first unions each object
    /// among its live holders (the streams' anti-entropy).
    fn pump(&mut self, sync: bool) {
        for _ in 0..20 {
            if sync {
                let objects: BTreeSet<String> =
                    self.data.iter().flat_map(|d| d.keys().cloned()).collect();
                for o in objects {
                    let holders: Vec<usize> = (0..self.ids.len())
                        .filter(|&i| self.up[i] && self.data[i].contains_key(&o))
                        .collect();
                    let union: BTreeSet<u64> =
                        holders.iter().flat_map(|&i| self.data[i][&o].clone()).collect();
                    for i in holders {
                        self.data[i].insert(o.clone(), union.clone());
                    }
                }
            }
            self.now += 1_000;
            for i in 0..self.ids.len() {
                if !self.up[i] {
                    continue;
                }
                self.keepers[i].handle_timeout(self.now);
                while let Some(c) = self.keepers[i].poll_command() {
                    match c {
                        Command::Offer { object, k, to, leaving } => {
                            let t = self.index(to);
                            let taken = self.up[t]
                                && self.keepers[t].handle_offer(
                                    self.now,
                                    object.clone(),
                                    k,
                                    self.ids[i],
                                    leaving,
                                );
                            if taken {
                                self.data[t].entry(object.clone()).or_default();
                            }
                            self.keepers[i].handle_offer_result(self.now, &object, to, taken);
                        }
                        Command::Check { object, peer } => {
                            let t = self.index(peer);
                            let covers = self.up[t]
                                && self.data[t].get(&object).is_some_and(|theirs| {
                                    theirs.is_superset(&self.data[i][&object])
                                });
                            self.keepers[i].handle_check(self.now, &object, peer, covers);
                        }
                        Command::Drop { object } => {
                            self.data[i].remove(&object);
                        }
                    }
                }
            }
        }
    }

    fn holders(&self, object: &str) -> BTreeSet<usize> {
        (0..self.ids.len()).filter(|&i| self.up[i] && self.data[i].contains_key(object)).collect()
    }

    fn owners(&self, judge: usize, object: &str) -> BTreeSet<usize> {
        let placed = self.keepers[judge].place(&object.to_string(), None);
        placed.owners.iter().map(|&id| self.index(id)).collect()
    }

    fn replicas(&self, judge: usize, object: &str) -> BTreeSet<usize> {
        let placed = self.keepers[judge].place(&object.to_string(), None);
        placed.replicas.iter().map(|&id| self.index(id)).collect()
    }
}

/// An object created on a non-replica reaches its three owners, and the
/// creator drops it once they cover it.
#[test]
fn objects_reach_their_owners_and_the_creator_lets_go() {
    let mut w = World::new(8);
    let owners = w.owners(0, "doc");
    let creator = (0..8).find(|i| !owners.contains(i)).unwrap();
    w.create(creator, "doc", 1);
    assert_eq!(w.keepers[creator].role(&"doc".into()), Some(Role::HandingOff));
    w.pump(true);
    assert_eq!(w.holders("doc"), owners);
    for &o in &owners {
        assert!(w.data[o]["doc"].contains(&1));
    }
}

/// A handed-off object is not dropped while the replicas lack a write
/// it took, however often they are asked.
#[test]
fn nothing_is_dropped_before_the_replicas_cover_it() {
    let mut w = World::new(8);
    let owners = w.owners(0, "doc");
    let creator = (0..8).find(|i| !owners.contains(i)).unwrap();
    w.create(creator, "doc", 1);
    w.pump(false);
    assert!(w.data[creator].contains_key("doc"), "dropped before anyone had the write");
    assert!(w.holders("doc").is_superset(&owners));
    w.pump(true);
    assert!(!w.data[creator].contains_key("doc"));
}

/// Dynamo's hinted handoff: an owner goes down, the next live node stands
/// in for it (a hint naming the owner) and takes writes; the owner comes
/// back stale, is handed the object back, and the stand-in drops it only
/// once the owner covers everything.
#[test]
fn a_stand_in_covers_an_absent_owner_and_hands_back() {
    let mut w = World::new(8);
    let owners = w.owners(0, "doc");
    let first = *owners.iter().next().unwrap();
    w.create(first, "doc", 1);
    w.pump(true);
    assert_eq!(w.holders("doc"), owners);

    let absent = *owners.iter().find(|&&o| o != first).unwrap();
    w.set_up(absent, false);
    let judge = first;
    w.pump(true);
    let replicas = w.replicas(judge, "doc");
    assert_eq!(replicas.len(), 3);
    assert_eq!(w.holders("doc"), replicas, "k live replicas again");
    let stand_in = *replicas.difference(&owners).next().unwrap();
    let hints: Vec<(String, SourceId)> =
        w.keepers[stand_in].hints().map(|(o, owner)| (o.clone(), owner)).collect();
    assert_eq!(hints, vec![("doc".to_string(), w.ids[absent])]);
    w.write(stand_in, "doc", 2);
    w.pump(true);

    // The owner returns with what it had before.
    w.set_up(absent, true);
    w.keepers[absent].sync_members(w.now, w.ids.iter().map(|&id| (id, true)));
    w.pump(false);
    assert!(w.data[stand_in].contains_key("doc"), "the stand-in let go before the owner had it");
    w.pump(true);
    assert_eq!(w.holders("doc"), owners, "back on exactly its owners");
    for &o in &owners {
        assert_eq!(w.data[o]["doc"], BTreeSet::from([1, 2]));
    }
    assert_eq!(w.keepers[stand_in].hints().count(), 0);
}

/// A node leaving hands every object to the nodes that replace it, though
/// the others' member lists still count it live, and ends holding nothing.
#[test]
fn a_leaving_node_hands_everything_off() {
    let mut w = World::new(10);
    let objects: Vec<String> = (0..50).map(|i| format!("doc-{i}")).collect();
    for (i, o) in objects.iter().enumerate() {
        let primary = *w.replicas(0, o).iter().next().unwrap();
        w.create(primary, o, i as u64);
    }
    w.pump(true);
    let leaver = 4;
    let held = w.keepers[leaver].len();
    assert!(held > 0);
    w.keepers[leaver].leave(w.now);
    w.pump(true);
    assert!(w.keepers[leaver].is_empty(), "still holds {}", w.keepers[leaver].len());
    w.set_up(leaver, false);
    w.pump(true);
    for (i, o) in objects.iter().enumerate() {
        let holders = w.holders(o);
        assert_eq!(holders, w.replicas(0, o), "{o}");
        for h in holders {
            assert!(w.data[h][o].contains(&(i as u64)));
        }
    }
}

/// Keepers whose member lists are equal may share one (the simulator's
/// memory at 10,000 nodes); a change to one keeper's list copies it, and
/// the other keeps placing as before.
#[test]
fn keepers_with_equal_member_lists_share_one_and_a_change_copies_it() {
    let ids: Vec<SourceId> = (0..8).map(|i| SourceId::new(format!("node-{i}")).unwrap()).collect();
    let mut a: Keeper<String> = Keeper::new(ids[0], KeeperConfig::default());
    let mut b: Keeper<String> = Keeper::new(ids[1], KeeperConfig::default());
    for k in [&mut a, &mut b] {
        k.sync_members(0, ids.iter().map(|&id| (id, true)));
    }
    assert!(b.share_placement(a.shared_placement()));
    assert!(std::sync::Arc::ptr_eq(a.shared_placement(), b.shared_placement()));
    let doc = "doc".to_string();
    let before = a.place(&doc, None);
    assert_eq!(b.place(&doc, None), before);

    // The same list again: nothing copied.
    b.sync_members(10, ids.iter().map(|&id| (id, true)));
    assert!(std::sync::Arc::ptr_eq(a.shared_placement(), b.shared_placement()));
    // A change: b's own copy, a's untouched.
    b.set_member(20, before.replicas[0], false);
    assert!(!std::sync::Arc::ptr_eq(a.shared_placement(), b.shared_placement()));
    assert!(a.placement().is_live(before.replicas[0]));
    assert!(!b.placement().is_live(before.replicas[0]));
    assert_eq!(a.place(&doc, None), before);
    assert_ne!(b.place(&doc, None).replicas, before.replicas);
    assert!(!a.share_placement(b.shared_placement()), "not equal: not shared");
}

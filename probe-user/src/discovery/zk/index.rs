//! The topology index as this agent knows it, built from entry NAMES only: a listing of a zone
//! directory or one watch event tells everything about a member (see [`layout`]); no member's
//! data is ever read.
//!
//! Entries that do not parse are skipped (warned about once per name, with a bound). Two
//! entries with one node id (a restarted agent whose old entry is not gone yet, or two agents
//! racing for one id) are settled the same way by every agent: the greatest (zone directory,
//! entry name) wins.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use prometheus_client::metrics::{counter::Counter, family::Family};
use tracing::{debug, info, warn};
use zookeeper_client::{EventType, Stat};

use super::resolve;
use crate::discovery::admit::{self, MemberPolicy, Reason, Refusal};
use crate::discovery::layout::{self, IndexEntry};
use crate::discovery::{Peer, PeerMap};

/// Refused names reported one by one; past this many, once in total (bounds the memory too).
const WARN_NAMES_MAX: usize = 256;

/// `reason` of `meshprobe_zookeeper_members_rejected_total`: one of [`Reason::ALL`]'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RejectedLabel {
    pub reason: &'static str,
}

/// Members refused, by reason.
pub type Rejected = Family<RejectedLabel, Counter>;

/// (zone directory name, entry name).
pub(super) type Key = (String, String);

/// A zone directory's children as of a listing: any join or leave in it changes this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ZoneVersion {
    cversion: i32,
    pzxid: i64,
}

impl ZoneVersion {
    pub(super) fn of(stat: &Stat) -> ZoneVersion {
        ZoneVersion {
            cversion: stat.cversion,
            pzxid: stat.pzxid,
        }
    }
}

/// Where a member's probe address stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Addr {
    Ready(SocketAddr),
    /// A DNS lookup is under way.
    Pending,
    /// The lookup failed, or gave an address the policy refuses; retried later.
    Failed,
}

struct Slot {
    entry: IndexEntry,
    addr: Addr,
    /// We warned that its address does not resolve (until it does).
    warned: bool,
}

/// What an event did to the index.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Applied {
    Nothing,
    Changed,
    /// The topology root itself was deleted.
    RootDeleted,
}

/// Refused names: each logged and counted once while it exists (bounded).
struct Refused {
    names: HashSet<String>,
    full: bool,
    counts: Rejected,
}

impl Refused {
    fn new(counts: Rejected) -> Refused {
        Refused {
            names: HashSet::new(),
            full: false,
            counts,
        }
    }

    fn refuse(&mut self, path: &str, r: &Refusal) {
        if self.names.contains(path) {
            return;
        }
        // Past the bound a name cannot be remembered: counted each time it is offered.
        count(&self.counts, r.reason);
        if self.names.len() >= WARN_NAMES_MAX {
            if !self.full {
                self.full = true;
                warn!(
                    "more than {WARN_NAMES_MAX} refused names in the ZooKeeper topology index; \
                     not reporting more of them (meshprobe_zookeeper_members_rejected_total \
                     counts them)"
                );
            }
            return;
        }
        self.names.insert(path.to_string());
        warn!(reason = %r.reason.label(), "not probing {path:?} from the ZooKeeper topology index: {r}");
    }

    fn forget(&mut self, path: &str) {
        self.names.remove(path);
    }
}

fn count(counts: &Rejected, reason: Reason) {
    counts
        .get_or_create(&RejectedLabel {
            reason: reason.label(),
        })
        .inc();
}

pub(super) struct Index {
    /// `/<root>/<heartbeat>.topology`.
    root: String,
    me: String,
    default_port: u16,
    policy: MemberPolicy,
    /// Valid zone directories, with the version of their last listing (`None`: never listed).
    zones: BTreeMap<String, Option<ZoneVersion>>,
    entries: BTreeMap<Key, Slot>,
    /// The entries of each node id, ascending (almost always one): a sorted Vec, not a
    /// BTreeSet, whose first node alone is a 500-byte allocation per member.
    by_id: BTreeMap<String, Vec<Key>>,
    invalid: Refused,
    /// We logged that the member cap is reached (until the index is below it again).
    capped: bool,
    /// Entries whose DNS name is to be looked up, for the runner.
    lookups: Vec<Key>,
}

impl Index {
    pub(super) fn new(
        root: String,
        me: String,
        default_port: u16,
        policy: MemberPolicy,
        rejected: Rejected,
    ) -> Index {
        Index {
            root,
            me,
            default_port,
            policy,
            zones: BTreeMap::new(),
            entries: BTreeMap::new(),
            by_id: BTreeMap::new(),
            invalid: Refused::new(rejected),
            capped: false,
            lookups: Vec::new(),
        }
    }

    pub(super) fn root(&self) -> &str {
        &self.root
    }

    /// Distinct node ids in the index, ourselves included.
    pub(super) fn node_ids(&self) -> usize {
        self.by_id.len()
    }

    /// Other members (distinct node ids, ourselves excluded).
    pub(super) fn members(&self) -> usize {
        self.by_id.len() - usize::from(self.by_id.contains_key(&self.me))
    }

    /// Is the entry at `path` in the index?
    pub(super) fn contains_path(&self, path: &str) -> bool {
        layout::split_entry_path(&self.root, path)
            .is_some_and(|(d, n)| self.entries.contains_key(&(d.to_string(), n.to_string())))
    }

    /// The zone directories the topology root holds now; drops the ones gone. Returns the
    /// valid ones.
    pub(super) fn set_zone_dirs(&mut self, names: Vec<String>) -> Vec<String> {
        let mut valid = BTreeSet::new();
        for name in names {
            match layout::parse_zone_dir(&name) {
                Ok(_) => {
                    valid.insert(name);
                }
                Err(why) => {
                    let path = format!("{}/{name}", self.root);
                    self.invalid.refuse(&path, &Refusal::malformed(why));
                }
            }
        }
        let gone: Vec<String> = self
            .zones
            .keys()
            .filter(|d| !valid.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            self.remove_zone(&d);
        }
        for d in &valid {
            self.zones.entry(d.clone()).or_insert(None);
        }
        valid.into_iter().collect()
    }

    /// The version of `dir` at its last listing.
    pub(super) fn version(&self, dir: &str) -> Option<ZoneVersion> {
        self.zones.get(dir).copied().flatten()
    }

    fn zone_keys(&self, dir: &str) -> Vec<Key> {
        self.entries
            .range((dir.to_string(), String::new())..)
            .take_while(|(k, _)| k.0 == dir)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forgets a zone directory and its entries.
    pub(super) fn remove_zone(&mut self, dir: &str) -> bool {
        let mut changed = false;
        for k in self.zone_keys(dir) {
            changed |= self.remove(&k);
        }
        self.zones.remove(dir);
        changed
    }

    /// Replaces what we know of `dir` with a listing of it (names only).
    pub(super) fn set_listing(
        &mut self,
        dir: &str,
        names: Vec<String>,
        version: ZoneVersion,
    ) -> bool {
        let Ok(zone) = layout::parse_zone_dir(dir) else {
            return false;
        };
        let names: BTreeSet<String> = names.into_iter().collect();
        let mut changed = false;
        for k in self.zone_keys(dir) {
            if !names.contains(&k.1) {
                changed |= self.remove(&k);
            }
        }
        let mut duplicated = BTreeSet::new();
        for name in names {
            if let Some(id) = self.insert(dir, &zone, name) {
                changed = true;
                if self.by_id.get(&id).is_some_and(|s| s.len() > 1) {
                    duplicated.insert(id);
                }
            }
        }
        for id in duplicated {
            self.report_duplicate(&id);
        }
        self.zones.insert(dir.to_string(), Some(version));
        changed
    }

    /// Adds an entry; returns its node id if it is new and admitted (see [`admit`]). Refused
    /// entries are not kept: a listing offers them again, and [`Refused`] logs and counts each
    /// once.
    fn insert(&mut self, dir: &str, zone: &str, name: String) -> Option<String> {
        let key = (dir.to_string(), name);
        if self.entries.contains_key(&key) {
            return None;
        }
        let path = format!("{}/{dir}/{}", self.root, key.1);
        match self.admit(zone, &key.1) {
            Ok((entry, addr)) => {
                self.invalid.forget(&path);
                if addr == Addr::Pending {
                    self.lookups.push(key.clone());
                }
                let id = entry.node_id.clone();
                // Room for one: a Vec's first growth would make room for four (1.9 MB at 10 000).
                let keys = self
                    .by_id
                    .entry(id.clone())
                    .or_insert_with(|| Vec::with_capacity(1));
                if let Err(at) = keys.binary_search(&key) {
                    keys.insert(at, key.clone());
                }
                self.entries.insert(
                    key,
                    Slot {
                        entry,
                        addr,
                        warned: false,
                    },
                );
                Some(id)
            }
            Err(r) => {
                self.invalid.refuse(&path, &r);
                None
            }
        }
    }

    /// The entry named `name` in `zone`, and its address as far as it is known, if the member
    /// may be probed.
    fn admit(&mut self, zone: &str, name: &str) -> Result<(IndexEntry, Addr), Refusal> {
        let entry = layout::parse_entry(zone, name).map_err(Refusal::malformed)?;
        admit::check_labels(&entry.node_id, &entry.zone, &entry.rack)?;
        let addr = match resolve::literal(&entry, self.default_port).map_err(Refusal::malformed)? {
            Some(a) => {
                self.policy.check_addr(a)?;
                Addr::Ready(a)
            }
            None => Addr::Pending,
        };
        let cap = self.policy.max_members;
        if self.entries.len() >= cap {
            if !self.capped {
                self.capped = true;
                warn!(
                    "the ZooKeeper topology index holds more than MESHPROBE_MAX_MEMBERS={cap} \
                     members; not probing the others (raise it if the cluster is that large)"
                );
            }
            return Err(Refusal::cap(cap));
        }
        Ok((entry, addr))
    }

    fn remove(&mut self, key: &Key) -> bool {
        let Some(slot) = self.entries.remove(key) else {
            return false;
        };
        if self.entries.len() < self.policy.max_members {
            self.capped = false;
        }
        let id = &slot.entry.node_id;
        if let Some(keys) = self.by_id.get_mut(id) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_id.remove(id);
            }
        }
        true
    }

    /// The entry that stands for `id` (the greatest key).
    fn chosen(&self, id: &str) -> Option<&Key> {
        self.by_id.get(id).and_then(|keys| keys.last())
    }

    fn report_duplicate(&self, id: &str) {
        let Some(keys) = self.by_id.get(id) else {
            return;
        };
        let paths: Vec<String> = keys.iter().map(|(d, n)| format!("{d}/{n}")).collect();
        warn!(
            member = %id,
            "node id {id:?} has {} entries in the ZooKeeper topology index ({}); using the \
             greatest, {} (a restarted agent's old entry that is not gone yet, or two agents \
             with one node id)",
            keys.len(),
            paths.join(", "),
            paths.last().map(String::as_str).unwrap_or_default()
        );
    }

    /// Applies a watch event of the topology root (recursive: the root, zone directories and
    /// entries).
    pub(super) fn apply(&mut self, kind: EventType, path: &str) -> Applied {
        if !matches!(kind, EventType::NodeCreated | EventType::NodeDeleted) {
            return Applied::Nothing;
        }
        let created = kind == EventType::NodeCreated;
        if path == self.root {
            return if created {
                Applied::Nothing
            } else {
                Applied::RootDeleted
            };
        }
        if let Some((dir, name)) = layout::split_entry_path(&self.root, path) {
            let zone = match layout::parse_zone_dir(dir) {
                Ok(z) => z,
                Err(why) => {
                    if created {
                        self.invalid.refuse(
                            path,
                            &Refusal::malformed(format!(
                                "in a zone directory that is not ours: {why}"
                            )),
                        );
                    }
                    return Applied::Nothing;
                }
            };
            let changed = if created {
                self.zones.entry(dir.to_string()).or_insert(None);
                match self.insert(dir, &zone, name.to_string()) {
                    Some(id) => {
                        if self.by_id.get(&id).is_some_and(|s| s.len() > 1) {
                            self.report_duplicate(&id);
                        }
                        true
                    }
                    None => false,
                }
            } else {
                self.invalid.forget(path);
                self.remove(&(dir.to_string(), name.to_string()))
            };
            return if changed {
                Applied::Changed
            } else {
                Applied::Nothing
            };
        }
        // A zone directory (one level below the root).
        let Some(dir) = path
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .filter(|d| !d.is_empty() && !d.contains('/'))
        else {
            return Applied::Nothing;
        };
        if created {
            match layout::parse_zone_dir(dir) {
                Ok(_) => {
                    self.zones.entry(dir.to_string()).or_insert(None);
                }
                Err(why) => self.invalid.refuse(path, &Refusal::malformed(why)),
            }
            Applied::Nothing
        } else {
            self.invalid.forget(path);
            if self.remove_zone(dir) {
                Applied::Changed
            } else {
                Applied::Nothing
            }
        }
    }

    /// DNS lookups to start: (entry, host, port).
    pub(super) fn take_lookups(&mut self) -> Vec<(Key, String, u16)> {
        let keys = std::mem::take(&mut self.lookups);
        keys.into_iter()
            .filter_map(|k| {
                let slot = self.entries.get(&k)?;
                let (host, port) = resolve::host_port(&slot.entry, self.default_port).ok()?;
                Some((k, host, port))
            })
            .collect()
    }

    /// Applies a lookup result; returns whether the member's address changed. A name that
    /// resolves to an address the policy refuses is treated like one that does not resolve
    /// (retried: DNS may change), logged and counted once until it resolves to one it admits.
    pub(super) fn looked_up(&mut self, key: &Key, r: Result<SocketAddr, String>) -> bool {
        let Some(slot) = self.entries.get_mut(key) else {
            return false;
        };
        if slot.addr != Addr::Pending {
            return false;
        }
        let id = &slot.entry.node_id;
        let r = r
            .map_err(Refusal::unresolved)
            .and_then(|a| self.policy.check_addr(a).map(|()| a));
        match r {
            Ok(a) => {
                if slot.warned {
                    slot.warned = false;
                    info!(member = %id, addr = %a, "ZooKeeper member address resolved");
                }
                slot.addr = Addr::Ready(a);
                true
            }
            Err(r) => {
                if slot.warned {
                    debug!(member = %id, "still unusable: {r}");
                } else {
                    slot.warned = true;
                    count(&self.invalid.counts, r.reason);
                    warn!(member = %id, reason = %r.reason.label(), "not probing ZooKeeper member {id:?} for now: {r}; retrying every {}s", super::RESOLVE_RETRY.as_secs());
                }
                slot.addr = Addr::Failed;
                false
            }
        }
    }

    /// Queues the failed lookups again; returns how many.
    pub(super) fn retry_failed(&mut self) -> usize {
        let keys: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, s)| s.addr == Addr::Failed)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(s) = self.entries.get_mut(k) {
                s.addr = Addr::Pending;
            }
        }
        let n = keys.len();
        self.lookups.extend(keys);
        n
    }

    /// The peer map: every member but ourselves whose address is known.
    pub(super) fn peers(&self) -> PeerMap {
        self.by_id
            .keys()
            .filter(|id| **id != self.me)
            .filter_map(|id| {
                let slot = self.entries.get(self.chosen(id)?)?;
                let Addr::Ready(addr) = slot.addr else {
                    return None;
                };
                Some((
                    id.clone(),
                    Peer {
                        node_id: id.clone(),
                        addr,
                        zone: slot.entry.zone.clone(),
                        rack: slot.entry.rack.clone(),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/mp/hb.topology";

    fn entry(id: &str, zone: &str, addr: &str) -> IndexEntry {
        IndexEntry {
            node_id: id.into(),
            zone: zone.into(),
            rack: "r1".into(),
            address: addr.into(),
            port: 0,
        }
    }

    fn path(e: &IndexEntry) -> String {
        layout::entry_path(ROOT, e)
    }

    fn index_with(policy: MemberPolicy) -> Index {
        Index::new(ROOT.into(), "me".into(), 862, policy, Rejected::default())
    }

    fn index() -> Index {
        index_with(MemberPolicy::any_network())
    }

    fn rejected(ix: &Index, r: Reason) -> u64 {
        ix.invalid
            .counts
            .get_or_create(&RejectedLabel { reason: r.label() })
            .get()
    }

    fn version(n: i64) -> ZoneVersion {
        ZoneVersion {
            cversion: n as i32,
            pzxid: n,
        }
    }

    #[test]
    fn listing_and_events_without_reads() {
        let mut ix = index();
        let z = layout::zone_dir_name("z1");
        let dirs = ix.set_zone_dirs(vec![z.clone(), "junk".into()]);
        assert_eq!(dirs, vec![z.clone()]);
        let a = entry("a", "z1", "198.18.0.1");
        let me = entry("me", "z1", "198.18.0.9");
        ix.set_listing(
            &z,
            vec![
                layout::entry_name(&a),
                layout::entry_name(&me),
                "not-an-entry".into(),
            ],
            version(1),
        );
        assert_eq!(ix.version(&z), Some(version(1)));
        assert_eq!((ix.node_ids(), ix.members()), (2, 1));
        let p = ix.peers();
        assert_eq!(p.len(), 1, "ourselves excluded: {p:?}");
        assert_eq!(p["a"].addr, "198.18.0.1:862".parse().unwrap());
        assert_eq!((p["a"].zone.as_str(), p["a"].rack.as_str()), ("z1", "r1"));

        // A join in a new zone, by events alone.
        let b = entry("b", "z2", "fd00::2");
        let bz = layout::zone_path(ROOT, "z2");
        assert_eq!(ix.apply(EventType::NodeCreated, &bz), Applied::Nothing);
        assert_eq!(
            ix.apply(EventType::NodeCreated, &path(&b)),
            Applied::Changed
        );
        assert_eq!(
            ix.apply(EventType::NodeCreated, &path(&b)),
            Applied::Nothing
        );
        assert!(ix.contains_path(&path(&b)));
        assert_eq!(ix.peers()["b"].addr, "[fd00::2]:862".parse().unwrap());
        assert_eq!(
            ix.apply(EventType::NodeDataChanged, &path(&b)),
            Applied::Nothing
        );
        // A leave.
        assert_eq!(
            ix.apply(EventType::NodeDeleted, &path(&a)),
            Applied::Changed
        );
        assert!(!ix.peers().contains_key("a"));
        // A listing drops what is gone.
        ix.set_listing(&z, vec![layout::entry_name(&me)], version(2));
        assert_eq!(ix.members(), 1);
        // A zone directory gone takes its entries along.
        assert_eq!(ix.apply(EventType::NodeDeleted, &bz), Applied::Changed);
        assert_eq!(ix.members(), 0);
        assert_eq!(ix.apply(EventType::NodeDeleted, ROOT), Applied::RootDeleted);
        assert_eq!(
            ix.apply(EventType::NodeCreated, "/elsewhere/x/y"),
            Applied::Nothing
        );
        // Zone directories gone from the root listing are forgotten.
        ix.set_zone_dirs(vec![]);
        assert_eq!((ix.node_ids(), ix.version(&z)), (0, None));
    }

    #[test]
    fn duplicated_ids_settle_on_the_greatest_path() {
        let old = entry("a", "z1", "198.18.0.1");
        let new = entry("a", "z2", "198.18.0.2");
        let (lo, hi) = if path(&old) < path(&new) {
            (old, new)
        } else {
            (new, old)
        };
        // Same answer whatever the order of arrival.
        for order in [[&lo, &hi], [&hi, &lo]] {
            let mut ix = index();
            for e in order {
                ix.apply(EventType::NodeCreated, &path(e));
            }
            assert_eq!(ix.members(), 1);
            assert_eq!(ix.peers()["a"].zone, hi.zone);
            ix.apply(EventType::NodeDeleted, &path(&hi));
            assert_eq!(ix.peers()["a"].zone, lo.zone);
        }
    }

    #[test]
    fn dns_names_wait_for_their_lookup() {
        let mut ix = index();
        let d = entry("d", "z", "host.example");
        ix.apply(EventType::NodeCreated, &path(&d));
        assert!(ix.peers().is_empty());
        let l = ix.take_lookups();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].1.as_str(), l[0].2), ("host.example", 862));
        assert!(!ix.looked_up(&l[0].0, Err("no".into())));
        assert_eq!(ix.retry_failed(), 1);
        let l = ix.take_lookups();
        assert!(ix.looked_up(&l[0].0, Ok("198.18.0.4:862".parse().unwrap())));
        assert_eq!(ix.peers()["d"].addr, "198.18.0.4:862".parse().unwrap());
        // A result for an entry that left is dropped.
        ix.apply(EventType::NodeDeleted, &path(&d));
        assert!(!ix.looked_up(&l[0].0, Ok("198.18.0.4:862".parse().unwrap())));
    }

    #[test]
    fn members_are_admitted_by_the_policy_and_each_refusal_counted_once() {
        let mut policy = MemberPolicy::any_network();
        policy.networks = admit::parse_networks("198.18.0.0/24,fd00::/64").unwrap();
        policy.max_members = 4;
        let mut ix = index_with(policy);
        let z = layout::zone_dir_name("z");
        let ok = entry("ok", "z", "198.18.0.1");
        let mut bad_port = entry("port", "z", "198.18.0.2");
        bad_port.port = 22;
        let refused = [
            (entry("lo", "z", "127.0.0.1"), Reason::Loopback),
            (entry("ll", "z", "fe80::1"), Reason::LinkLocal),
            (entry("mc", "z", "224.0.0.1"), Reason::NotUnicast),
            (entry("bc", "z", "198.18.0.255"), Reason::NotUnicast),
            (entry("md", "z", "fd00:ec2::254"), Reason::Metadata),
            (entry("far", "z", "198.19.0.1"), Reason::Network),
            (bad_port, Reason::Port),
            (entry("a\"b", "z", "198.18.0.3"), Reason::Label),
        ];
        let mut names: Vec<String> = refused.iter().map(|(e, _)| layout::entry_name(e)).collect();
        names.push(layout::entry_name(&ok));
        names.push("1~junk".into());
        // Offered twice (a listing, then again at a re-synchronisation): counted once.
        for v in 1..=2 {
            ix.set_listing(&z, names.clone(), version(v));
        }
        assert_eq!(ix.peers().keys().collect::<Vec<_>>(), ["ok"]);
        for (e, r) in &refused {
            assert!(rejected(&ix, *r) >= 1, "{} not counted as {r:?}", e.node_id);
        }
        assert_eq!(rejected(&ix, Reason::NotUnicast), 2);
        assert_eq!(rejected(&ix, Reason::Malformed), 1);
        assert_eq!(ix.entries.len(), 1, "refused entries are not kept");
        // A DNS name that resolves to a refused address is not probed (and retried).
        let d = entry("dns", "z", "host.example");
        ix.apply(EventType::NodeCreated, &path(&d));
        let l = ix.take_lookups();
        assert!(!ix.looked_up(&l[0].0, Ok("127.0.0.1:862".parse().unwrap())));
        assert_eq!(rejected(&ix, Reason::Loopback), 2);
        assert!(!ix.peers().contains_key("dns"));
        assert_eq!(ix.retry_failed(), 1);
        let l = ix.take_lookups();
        assert!(ix.looked_up(&l[0].0, Ok("198.18.0.9:862".parse().unwrap())));
        assert!(ix.peers().contains_key("dns"));
        // The cap: 4 entries at most; the others are refused until there is room.
        for i in 0..3 {
            ix.apply(
                EventType::NodeCreated,
                &path(&entry(&format!("n{i}"), "z", "198.18.0.20")),
            );
        }
        assert_eq!(ix.entries.len(), 4);
        assert_eq!(rejected(&ix, Reason::Cap), 1);
        assert!(ix.capped);
        ix.apply(EventType::NodeDeleted, &path(&ok));
        assert!(!ix.capped);
        ix.apply(
            EventType::NodeCreated,
            &path(&entry("n2", "z", "198.18.0.20")),
        );
        assert_eq!(ix.entries.len(), 4);
        assert!(ix.peers().contains_key("n2"));
    }

    #[test]
    fn invalid_names_are_warned_about_within_a_bound() {
        let mut ix = index();
        let z = layout::zone_dir_name("z");
        for i in 0..(WARN_NAMES_MAX + 10) {
            ix.apply(EventType::NodeCreated, &format!("{ROOT}/{z}/bad{i}"));
        }
        assert_eq!(ix.invalid.names.len(), WARN_NAMES_MAX);
        assert!(ix.invalid.full);
        // Past the bound each offer is counted: nothing is lost from the metric.
        assert_eq!(rejected(&ix, Reason::Malformed), WARN_NAMES_MAX as u64 + 10);
        ix.apply(EventType::NodeDeleted, &format!("{ROOT}/{z}/bad0"));
        assert_eq!(ix.invalid.names.len(), WARN_NAMES_MAX - 1);
        assert_eq!(ix.node_ids(), 0);
    }
}

//! Who should own how many partitions, and what one processor does about it: a pure function
//! of what the lease bucket shows, which every processor evaluates for itself.
//!
//! Owns: the even spread (each live processor's share: the partition count divided by the
//! processors, the remainder going one each to the first in the order of their ids) and the
//! plan of one processor (give back what is over its share, highest partitions first; take free
//! partitions up to its share, lowest first).
//!
//! Must never: take a partition another processor holds (only free ones are taken: the
//! bucket's create refuses a held key anyway), or plan anything for a processor that is not in
//! the member list (it is not counted in anyone's share).
//!
//! Invariants: the shares of the listed members add up to the partition count and differ by at
//! most one; with a stable member list, every processor following its plan reaches its share
//! within two rounds (one to give back, one for the others to take), and then the plans are
//! empty.

use std::collections::BTreeSet;

/// What the bucket showed at one look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The instance ids of the live processors (their member keys), sorted.
    pub members: Vec<String>,
    /// Partitions with a live lease, whoever holds it.
    pub held: BTreeSet<u32>,
}

/// What one processor should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Partitions to hand over (snapshot, then give the lease back).
    pub release: Vec<u32>,
    /// Free partitions to take.
    pub take: Vec<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.release.is_empty() && self.take.is_empty()
    }
}

/// The share of `me` among `members` (sorted ids) of `partitions`: 0 if it is not listed.
pub fn share(members: &[String], me: &str, partitions: u32) -> usize {
    let Some(index) = members.iter().position(|m| m == me) else {
        return 0;
    };
    let n = members.len();
    let (base, extra) = (partitions as usize / n, partitions as usize % n);
    base + usize::from(index < extra)
}

/// What `me`, owning `mine`, should do given `view` of a deployment of `partitions`.
pub fn plan(view: &View, me: &str, mine: &BTreeSet<u32>, partitions: u32) -> Plan {
    let target = share(&view.members, me, partitions);
    let mut plan = Plan::default();
    if mine.len() > target {
        plan.release = mine
            .iter()
            .rev()
            .take(mine.len() - target)
            .copied()
            .collect();
        plan.release.sort_unstable();
    } else if mine.len() < target {
        plan.take = (0..partitions)
            .filter(|p| !mine.contains(p) && !view.held.contains(p))
            .take(target - mine.len())
            .collect();
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(members: &[&str], held: impl IntoIterator<Item = u32>) -> View {
        let mut members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        members.sort();
        View {
            members,
            held: held.into_iter().collect(),
        }
    }

    #[test]
    fn shares_are_even_and_the_remainder_goes_to_the_first() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|m| m.to_string()).collect();
        let shares: Vec<usize> = members.iter().map(|m| share(&members, m, 16)).collect();
        assert_eq!(shares, [6, 5, 5]);
        assert_eq!(share(&members, "z", 16), 0, "not a member");
        assert_eq!(share(&members[..1], "a", 16), 16);
    }

    #[test]
    fn a_processor_alone_takes_every_free_partition() {
        let plan = plan(&view(&["a"], []), "a", &BTreeSet::new(), 4);
        assert_eq!(plan.take, [0, 1, 2, 3]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn one_joining_makes_the_others_give_back_their_highest() {
        let mine: BTreeSet<u32> = (0..8).collect();
        let plan = plan(&view(&["a", "b"], 0..8), "a", &mine, 8);
        assert_eq!(plan.release, [4, 5, 6, 7]);
        let theirs = super::plan(&view(&["a", "b"], 0..4), "b", &BTreeSet::new(), 8);
        assert_eq!(
            theirs.take,
            [4, 5, 6, 7],
            "once given back, the joiner takes them"
        );
    }

    #[test]
    fn nothing_held_by_another_is_taken() {
        let plan = plan(&view(&["a", "b"], [0, 1, 2]), "b", &BTreeSet::new(), 4);
        assert_eq!(plan.take, [3], "only the free one, though the share is 2");
    }

    proptest! {
        /// Members following their plans, one look and one step each per round, in any order:
        /// within three rounds every partition is owned exactly once and the shares are even.
        #[test]
        fn plans_converge_to_even_exclusive_ownership(
            members in 1usize..6,
            partitions in 1u32..40,
            seed in proptest::collection::vec(0usize..6, 0..40),
        ) {
            let ids: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
            let mut owned: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); members];
            // Start from an arbitrary exclusive ownership.
            for (p, m) in seed.iter().enumerate().take(partitions as usize) {
                if *m < members {
                    owned[*m].insert(p as u32);
                }
            }
            for _ in 0..3 {
                for m in 0..members {
                    let held = owned.iter().flatten().copied().collect();
                    let v = View { members: ids.clone(), held };
                    let step = plan(&v, &ids[m], &owned[m], partitions);
                    for p in &step.release {
                        owned[m].remove(p);
                    }
                    owned[m].extend(step.take);
                }
            }
            let mut seen = BTreeSet::new();
            for (m, mine) in owned.iter().enumerate() {
                prop_assert_eq!(mine.len(), share(&ids, &ids[m], partitions));
                for p in mine {
                    prop_assert!(seen.insert(*p), "partition {} owned twice", p);
                }
            }
            prop_assert_eq!(seen.len(), partitions as usize);
        }
    }
}

//! Server-side partition assignors for KIP-848 consumer groups: `uniform` (the default:
//! balanced and sticky, each member keeps what it can) and `range` (per topic, contiguous
//! ranges in member order, as the classic client-side range assignor does).
//! Both are deterministic: the same members, subscriptions and topics give the same result.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use uuid::Uuid;

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

pub const UNIFORM: &str = "uniform";
pub const RANGE: &str = "range";

pub fn is_known(name: &str) -> bool {
    name == UNIFORM || name == RANGE
}

/// What the assignor sees of one member.
pub struct AssignorMember<'a> {
    pub member_id: Arc<str>,
    /// Subscribed topics that exist, by id.
    pub topics: BTreeSet<Uuid>,
    /// The member's current target, for stickiness.
    pub current: Option<&'a Assignment>,
}

/// Assigns every partition of every subscribed topic (`partitions` per topic id) to exactly
/// one member subscribed to it.
pub fn assign(
    assignor: &str,
    members: &[AssignorMember],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<Arc<str>, Assignment> {
    if assignor == RANGE {
        range(members, partitions)
    } else {
        uniform(members, partitions)
    }
}

fn range(members: &[AssignorMember], partitions: &BTreeMap<Uuid, i32>) -> BTreeMap<Arc<str>, Assignment> {
    let mut result: BTreeMap<Arc<str>, Assignment> =
        members.iter().map(|m| (m.member_id.clone(), Assignment::new())).collect();
    for (&topic, &count) in partitions {
        let mut subscribers: Vec<&Arc<str>> =
            members.iter().filter(|m| m.topics.contains(&topic)).map(|m| &m.member_id).collect();
        subscribers.sort();
        if subscribers.is_empty() {
            continue;
        }
        let (each, extra) = (count as usize / subscribers.len(), count as usize % subscribers.len());
        let mut next = 0i32;
        for (i, member) in subscribers.into_iter().enumerate() {
            let share = each + usize::from(i < extra);
            let owned = result.entry(member.clone()).or_default().entry(topic).or_default();
            owned.extend(next..next + share as i32);
            next += share as i32;
        }
    }
    result.retain(|_, a| {
        a.retain(|_, p| !p.is_empty());
        true
    });
    result
}

fn uniform(members: &[AssignorMember], partitions: &BTreeMap<Uuid, i32>) -> BTreeMap<Arc<str>, Assignment> {
    let mut owned: BTreeMap<Arc<str>, BTreeSet<(Uuid, i32)>> =
        members.iter().map(|m| (m.member_id.clone(), BTreeSet::new())).collect();
    let subscribed = |member: &AssignorMember, topic: &Uuid| member.topics.contains(topic);
    let total: usize = partitions
        .iter()
        .filter(|(topic, _)| members.iter().any(|m| subscribed(m, topic)))
        .map(|(_, &count)| count.max(0) as usize)
        .sum();
    let ceiling = if members.is_empty() { 0 } else { total.div_ceil(members.len()) };
    // Stickiness: keep current partitions that still exist and are still subscribed, up to
    // the balanced share.
    let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
    for member in members {
        let Some(current) = member.current else { continue };
        let mine = owned.get_mut(&member.member_id).expect("every member has an entry");
        for (topic, parts) in current {
            let Some(&count) = partitions.get(topic) else { continue };
            if !subscribed(member, topic) {
                continue;
            }
            for &p in parts.iter().filter(|&&p| p < count) {
                if mine.len() < ceiling && taken.insert((*topic, p)) {
                    mine.insert((*topic, p));
                }
            }
        }
    }
    // Everything else goes to the least loaded subscriber (ties: member id order).
    for (&topic, &count) in partitions {
        for p in 0..count {
            if taken.contains(&(topic, p)) {
                continue;
            }
            let target = members
                .iter()
                .filter(|m| subscribed(m, &topic))
                .min_by_key(|m| (owned.get(&m.member_id).map_or(0, BTreeSet::len), m.member_id.clone()));
            if let Some(member) = target {
                taken.insert((topic, p));
                owned.entry(member.member_id.clone()).or_default().insert((topic, p));
            }
        }
    }
    // Heterogeneous subscriptions can leave imbalance: move partitions from the most to the
    // least loaded member that can take them. Each move narrows the spread, so this ends.
    for _ in 0..=total {
        let mut moved = false;
        let mut by_load: Vec<&AssignorMember> = members.iter().collect();
        by_load.sort_by_key(|m| (owned[&m.member_id].len(), m.member_id.clone()));
        'search: for big in by_load.iter().rev() {
            for small in by_load.iter() {
                if owned[&big.member_id].len() <= owned[&small.member_id].len() + 1 {
                    break;
                }
                let candidate = owned[&big.member_id].iter().find(|(topic, _)| subscribed(small, topic)).copied();
                if let Some(partition) = candidate {
                    owned.get_mut(&big.member_id).expect("present").remove(&partition);
                    owned.get_mut(&small.member_id).expect("present").insert(partition);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            break;
        }
    }
    owned
        .into_iter()
        .map(|(member, parts)| {
            let mut assignment = Assignment::new();
            for (topic, p) in parts {
                assignment.entry(topic).or_default().insert(p);
            }
            (member, assignment)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[Uuid]) -> AssignorMember<'static> {
        AssignorMember { member_id: Arc::from(id), topics: topics.iter().copied().collect(), current: None }
    }

    fn counts(result: &BTreeMap<Arc<str>, Assignment>) -> Vec<usize> {
        result.values().map(|a| a.values().map(BTreeSet::len).sum()).collect()
    }

    fn assert_exact_cover(result: &BTreeMap<Arc<str>, Assignment>, partitions: &BTreeMap<Uuid, i32>) {
        let mut seen = BTreeSet::new();
        for assignment in result.values() {
            for (topic, parts) in assignment {
                for p in parts {
                    assert!(seen.insert((*topic, *p)), "partition {topic}/{p} assigned twice");
                }
            }
        }
        let expected: usize = partitions.values().map(|&c| c as usize).sum();
        assert_eq!(seen.len(), expected);
    }

    #[test]
    fn uniform_balances_and_keeps_what_it_can() {
        let t = Uuid::new_v4();
        let partitions = BTreeMap::from([(t, 12)]);
        let three = [member("a", &[t]), member("b", &[t]), member("c", &[t])];
        let first = assign(UNIFORM, &three, &partitions);
        assert_eq!(counts(&first), vec![4, 4, 4]);
        assert_exact_cover(&first, &partitions);
        let mut four: Vec<AssignorMember> = ["a", "b", "c", "d"].iter().map(|id| member(id, &[t])).collect();
        for m in &mut four {
            m.current = first.get(&m.member_id);
        }
        let second = assign(UNIFORM, &four, &partitions);
        assert_eq!(counts(&second), vec![3, 3, 3, 3]);
        assert_exact_cover(&second, &partitions);
        for id in ["a", "b", "c"] {
            let before = &first[id][&t];
            let after = &second[id][&t];
            assert!(after.is_subset(before), "{id} only gives partitions away");
        }
    }

    #[test]
    fn uniform_handles_heterogeneous_subscriptions() {
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        let partitions = BTreeMap::from([(t1, 6), (t2, 2)]);
        let members = [member("a", &[t1, t2]), member("b", &[t1]), member("c", &[t2])];
        let result = assign(UNIFORM, &members, &partitions);
        assert_exact_cover(&result, &partitions);
        let mut loads = counts(&result);
        loads.sort();
        assert!(loads[2] - loads[0] <= 1 || result["c"].values().map(BTreeSet::len).sum::<usize>() == 2, "{loads:?}");
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let t = Uuid::new_v4();
        let partitions = BTreeMap::from([(t, 7)]);
        let result = assign(RANGE, &[member("b", &[t]), member("a", &[t])], &partitions);
        assert_eq!(result["a"][&t], (0..4).collect());
        assert_eq!(result["b"][&t], (4..7).collect());
    }
}

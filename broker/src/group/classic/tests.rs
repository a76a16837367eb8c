//! The classic group state machine driven through joins, syncs, heartbeats, leaves and time.
use super::*;
use crate::clock::{Clock, SystemClock};

fn config() -> GroupConfig {
    GroupConfig { initial_rebalance_delay_ms: 0, min_session_timeout_ms: 10, ..GroupConfig::default() }
}

fn request(member_id: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_string(),
        group_instance_id: instance.map(str::to_string),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 20_000,
        protocol_type: "consumer".into(),
        protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{p}")))).collect(),
        require_known_member_id: true,
        supports_skip_assignment: true,
    }
}

fn now_result<T: std::fmt::Debug>(reply: Reply<T>) -> T {
    match reply {
        Reply::Now(result) => result,
        Reply::Later(_) => panic!("expected an immediate reply"),
    }
}

fn later<T>(reply: Reply<T>) -> oneshot::Receiver<T> {
    match reply {
        Reply::Later(rx) => rx,
        Reply::Now(_) => panic!("expected to wait"),
    }
}

/// A member through MEMBER_ID_REQUIRED and its join; returns its id and the pending reply.
fn join_new(group: &mut ClassicGroup, now: Now) -> (String, oneshot::Receiver<JoinResult>) {
    let first = now_result(group.join(request("", None, &["range"]), now, &config()));
    assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
    assert!(!first.member_id.is_empty());
    let rx = later(group.join(request(&first.member_id, None, &["range"]), now, &config()));
    (first.member_id, rx)
}

#[test]
fn first_member_leads_and_syncs_to_stable() {
    let now = SystemClock.now();
    let mut group = ClassicGroup::new(now.wall_ms);
    let (id, mut rx) = join_new(&mut group, now);
    let joined = rx.try_recv().expect("a lone member completes the join at once");
    assert_eq!((joined.error, joined.generation_id, joined.leader.as_str()), (None, 1, id.as_str()));
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata, Bytes::from("meta-range"));
    let mut synced = later(group.sync(&id, None, 1, (None, None), vec![(id.clone(), Bytes::from("a"))], now));
    assert_eq!(synced.try_recv().unwrap().assignment, Bytes::from("a"));
    assert_eq!(group.state, ClassicState::Stable);
    assert!(group.take_dirty());
}

#[test]
fn a_new_member_rebalances_and_stale_generations_are_fenced() {
    let now = SystemClock.now();
    let mut group = ClassicGroup::new(now.wall_ms);
    let (a, _) = join_new(&mut group, now);
    let _ = group.sync(&a, None, 1, (None, None), vec![], now);
    let (b, mut b_rx) = join_new(&mut group, now);
    assert_eq!(group.state, ClassicState::PreparingRebalance);
    assert!(b_rx.try_recv().is_err(), "b waits for a to rejoin");
    assert_eq!(group.heartbeat(&a, None, 1, now), Err(ResponseError::RebalanceInProgress));
    let mut a_rx = later(group.join(request(&a, None, &["range"]), now, &config()));
    let (a_joined, b_joined) = (a_rx.try_recv().unwrap(), b_rx.try_recv().unwrap());
    assert_eq!((a_joined.generation_id, b_joined.generation_id), (2, 2));
    assert_eq!(a_joined.members.len(), 2, "a stays leader and gets the member list");
    assert!(b_joined.members.is_empty());
    assert!(matches!(
        group.sync(&b, None, 1, (None, None), vec![], now),
        Reply::Now(SyncResult { error: Some(ResponseError::IllegalGeneration), .. })
    ));
    let mut b_sync = later(group.sync(&b, None, 2, (None, None), vec![], now));
    assert!(b_sync.try_recv().is_err(), "followers wait for the leader's assignment");
    let assignments = vec![(a.clone(), Bytes::from("A")), (b.clone(), Bytes::from("B"))];
    let _ = group.sync(&a, None, 2, (None, None), assignments, now);
    assert_eq!(b_sync.try_recv().unwrap().assignment, Bytes::from("B"));
    assert_eq!(group.heartbeat("nobody", None, 2, now), Err(ResponseError::UnknownMemberId));
}

#[test]
fn a_silent_member_expires_and_the_rest_rebalance() {
    let now = SystemClock.now();
    let mut group = ClassicGroup::new(now.wall_ms);
    let (a, _) = join_new(&mut group, now);
    let _ = group.sync(&a, None, 1, (None, None), vec![], now);
    let (b, _b_rx) = join_new(&mut group, now);
    let _a_rx = group.join(request(&a, None, &["range"]), now, &config());
    let _ = group.sync(&a, None, 2, (None, None), vec![], now);
    let _ = group.sync(&b, None, 2, (None, None), vec![], now);
    assert_eq!(group.state, ClassicState::Stable);
    // a keeps heartbeating, b goes silent.
    let later_time = now.after(Duration::from_millis(6_000));
    group.heartbeat(&a, None, 2, later_time).unwrap();
    group.tick(now.after(Duration::from_millis(10_001)), &config());
    assert!(!group.has_member(&b));
    assert_eq!(group.state, ClassicState::PreparingRebalance);
    let mut rx = later(group.join(request(&a, None, &["range"]), later_time, &config()));
    assert_eq!(rx.try_recv().unwrap().generation_id, 3);
}

#[test]
fn a_static_member_rejoins_a_stable_group_without_a_rebalance() {
    let now = SystemClock.now();
    let mut group = ClassicGroup::new(now.wall_ms);
    let mut rx = later(group.join(request("", Some("i1"), &["range"]), now, &config()));
    let first = rx.try_recv().unwrap();
    let _ = group.sync(&first.member_id, Some("i1"), 1, (None, None), vec![(first.member_id.clone(), "X".into())], now);
    let again = now_result(group.join(request("", Some("i1"), &["range"]), now, &config()));
    assert_eq!((again.error, again.generation_id), (None, 1));
    assert_ne!(again.member_id, first.member_id);
    assert!(again.skip_assignment, "the rejoined leader must not reassign");
    assert_eq!(group.state, ClassicState::Stable);
    let synced = match group.sync(&again.member_id, Some("i1"), 1, (None, None), vec![], now) {
        Reply::Now(result) => result,
        Reply::Later(_) => panic!("a stable group answers at once"),
    };
    assert_eq!(synced.assignment, Bytes::from("X"));
    assert_eq!(group.heartbeat(&first.member_id, Some("i1"), 1, now), Err(ResponseError::FencedInstanceId));
    // Before v9, the same comeback names the old id as leader, so the member syncs as a
    // follower and gets the stored assignment.
    let old = JoinRequest { supports_skip_assignment: false, ..request("", Some("i1"), &["range"]) };
    let before_v9 = now_result(group.join(old, now, &config()));
    assert_eq!((before_v9.leader.as_str(), before_v9.skip_assignment), (again.member_id.as_str(), false));
    assert!(before_v9.members.is_empty());
    let synced = match group.sync(&before_v9.member_id, Some("i1"), 1, (None, None), vec![], now) {
        Reply::Now(result) => result,
        Reply::Later(_) => panic!("a stable group answers at once"),
    };
    assert_eq!(synced.assignment, Bytes::from("X"));
}

#[test]
fn a_static_member_that_misses_a_rebalance_keeps_its_place() {
    let now = SystemClock.now();
    let mut group = ClassicGroup::new(now.wall_ms);
    let (a, _) = join_new(&mut group, now);
    let _ = group.sync(&a, None, 1, (None, None), vec![], now);
    let mut s_rx = later(group.join(request("", Some("s1"), &["range"]), now, &config()));
    let mut a_rx = later(group.join(request(&a, None, &["range"]), now, &config()));
    let (s, _) = (s_rx.try_recv().unwrap().member_id, a_rx.try_recv().unwrap());
    let _ = group.sync(&a, None, 2, (None, None), vec![], now);
    let _ = group.sync(&s, Some("s1"), 2, (None, None), vec![], now);
    // A new member starts a rebalance; a and the newcomer join, s (static) is away past the
    // rebalance timeout.
    let (_, mut b_rx) = join_new(&mut group, now);
    let mut a_rx = later(group.join(request(&a, None, &["range"]), now, &config()));
    // s is alive (it heartbeats, and is told a rebalance is on) but does not rejoin in time.
    for at in [8_000, 16_000] {
        let beat = group.heartbeat(&s, Some("s1"), 2, now.after(Duration::from_millis(at)));
        assert_eq!(beat, Err(ResponseError::RebalanceInProgress));
    }
    group.tick(now.after(Duration::from_millis(20_001)), &config());
    let joined = a_rx.try_recv().expect("the rebalance timed out and completed");
    assert!(b_rx.try_recv().is_ok());
    assert!(group.has_member(&s), "the static member keeps its place");
    let listed: Vec<&str> = joined.members.iter().map(|m| m.member_id.as_ref()).collect();
    assert!(listed.contains(&s.as_str()) && listed.len() == 3, "the leader assigns to it too: {listed:?}");
}

#[test]
fn protocols_must_overlap_and_the_most_preferred_common_one_wins() {
    let now = SystemClock.now();
    let mut group = ClassicGroup::new(now.wall_ms);
    let mut rx = later(group.join(request("", Some("a"), &["roundrobin", "range"]), now, &config()));
    let a = rx.try_recv().unwrap().member_id;
    let refused = now_result(group.join(request("", Some("b"), &["sticky"]), now, &config()));
    assert_eq!(refused.error, Some(ResponseError::InconsistentGroupProtocol));
    let mut b_rx = later(group.join(request("", Some("b"), &["range", "roundrobin"]), now, &config()));
    let mut a_rx = later(group.join(request(&a, Some("a"), &["roundrobin", "range"]), now, &config()));
    let (a_joined, _) = (a_rx.try_recv().unwrap(), b_rx.try_recv().unwrap());
    // One vote each: the tie goes to the leader's preference.
    assert_eq!(a_joined.protocol_name.as_deref(), Some("roundrobin"));
}

#[test]
fn the_initial_delay_runs_in_whole_steps_from_the_first_join() {
    let now = SystemClock.now();
    let config = GroupConfig { initial_rebalance_delay_ms: 3_000, ..config() };
    let join_new = |group: &mut ClassicGroup, at: Now| {
        let first = now_result(group.join(request("", None, &["range"]), at, &config));
        later(group.join(request(&first.member_id, None, &["range"]), at, &config))
    };
    let mut group = ClassicGroup::new(now.wall_ms);
    let mut a_rx = join_new(&mut group, now);
    // b joins during the first step: the phase then ends two steps after a's join, not one
    // step after b's (Kafka's InitialDelayedJoin).
    let mut b_rx = join_new(&mut group, now.after(Duration::from_millis(300)));
    group.tick(now.after(Duration::from_millis(3_100)), &config);
    assert!(a_rx.try_recv().is_err(), "b joined during the first step: another one follows");
    group.tick(now.after(Duration::from_millis(3_400)), &config);
    assert!(a_rx.try_recv().is_err(), "the second step runs from the end of the first");
    group.tick(now.after(Duration::from_millis(6_000)), &config);
    assert_eq!(a_rx.try_recv().unwrap().generation_id, 1);
    assert_eq!(b_rx.try_recv().unwrap().generation_id, 1);
}

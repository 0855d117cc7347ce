//! Continuous consumer-offset sync (`[[groups]] offset_sync_ms`): a group that commits through
//! kshift on the write cluster has its offsets, translated with the offset map, on the mirror
//! within the interval, and a consumer started straight on the mirror from them misses
//! nothing and reads nothing twice. A group with members on the mirror is left alone there.

mod common;

use std::time::Duration;

use common::mirror::{read_all, settled};
use common::{Broker, Kshift};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;

fn routing() -> &'static str {
    "[[routes]]\ntopics = \"*\"\nwrite = \"old\"\nread = \"old\"\nmirror = [\"new\"]\n\
     [[groups]]\ngroups = \"*\"\ncluster = \"old\"\noffset_sync_ms = 300"
}

/// The offsets `group` has committed on `bootstrap` for `topic`'s partitions (`None`: none).
fn committed_on(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    let consumer = common::consumer(bootstrap, &[("group.id", group)]);
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .expect("committed offsets");
    (0..PARTITIONS)
        .map(
            |partition| match committed.find_partition(topic, partition) {
                Some(entry) => match entry.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                },
                None => None,
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_committed_offsets_reach_the_mirror_translated_and_a_consumer_there_misses_nothing(
) {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let topic = common::unique_topic("offset-sync");
    common::create_topic(&old.bootstrap(), &topic, PARTITIONS).await;
    common::create_topic(&new.bootstrap(), &topic, PARTITIONS).await;
    // The mirror already holds records of its own: its offsets differ from the write
    // cluster's, so a sync that copied offsets untranslated would be caught.
    common::send_numbered(&new.bootstrap(), &topic, "before", 7).await;
    let kshift = Kshift::start_toml(&common::two_cluster_toml(&old, &new, "", routing())).await;
    common::send_numbered(&kshift.bootstrap(), &topic, "record", 300).await;
    settled(kshift.state(), "new", 300, Duration::from_secs(30)).await;

    // A group that has read part of each partition commits through kshift, on old.
    let group = common::unique_topic("synced-group");
    let on_old = read_all(&old.bootstrap(), &topic, PARTITIONS, 300).await;
    let mut positions = Vec::new();
    for partition in 0..PARTITIONS {
        let offsets: Vec<i64> = on_old
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        let position = offsets[offsets.len() / 3];
        common::commit_position(&kshift.bootstrap(), &group, &topic, partition, position);
        positions.push(position);
    }
    // Within a few intervals the mirror has the same positions, translated.
    let new_id = kshift.state().cluster_id("new").unwrap();
    let old_id = kshift.state().cluster_id("old").unwrap();
    let expected: Vec<Option<i64>> = (0..PARTITIONS)
        .map(|partition| {
            let position = positions[partition as usize];
            match kshift
                .state()
                .mirrors
                .offsets
                .position(&topic, partition, old_id, new_id, position)
            {
                kshift::mirror::offset_map::Position::Mapped(offset) => Some(offset),
                other => panic!("position {position} does not translate: {other:?}"),
            }
        })
        .collect();
    assert_ne!(
        expected,
        positions.iter().map(|p| Some(*p)).collect::<Vec<_>>(),
        "the offsets translate to themselves, so this test could not tell a translation"
    );
    let what = format!("the mirror to have the translated {expected:?} for the group");
    common::eventually(Duration::from_secs(20), &what, async || {
        let on_new = committed_on(&new.bootstrap(), &group, &topic);
        (on_new == expected).then_some(()).ok_or(format!(
            "{on_new:?}; offset sync {:?}",
            kshift.control().offset_sync.snapshot()
        ))
    })
    .await;
    assert!(kshift.control().offset_sync.snapshot().groups_synced >= 1);

    // A consumer of the group started straight on the mirror resumes where the group was.
    let remaining: Vec<Vec<u8>> = {
        let mut remaining: Vec<(i32, i64, Vec<u8>)> = on_old
            .iter()
            .filter(|r| r.offset >= positions[r.partition as usize])
            .map(|r| (r.partition, r.offset, r.value.clone().unwrap_or_default()))
            .collect();
        remaining.sort();
        remaining.into_iter().map(|(_, _, value)| value).collect()
    };
    let consumer = common::consumer(
        &new.bootstrap(),
        &[("group.id", group.as_str()), ("auto.offset.reset", "error")],
    );
    consumer.subscribe(&[&topic]).expect("subscribe");
    let read = common::consume_n(&consumer, remaining.len(), Duration::from_secs(30)).await;
    let mut read: Vec<(i32, i64, Vec<u8>)> = read
        .into_iter()
        .map(|r| (r.partition, r.offset, r.value.unwrap_or_default()))
        .collect();
    read.sort();
    let read: Vec<Vec<u8>> = read.into_iter().map(|(_, _, value)| value).collect();
    assert_eq!(
        read, remaining,
        "the consumer on the mirror did not continue exactly where the group was"
    );
    kshift.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_members_on_the_mirror_is_left_alone_there() {
    let (old, new) = (Broker::start().await, Broker::start().await);
    let topic = common::unique_topic("offset-sync-active");
    common::create_topic(&old.bootstrap(), &topic, PARTITIONS).await;
    common::create_topic(&new.bootstrap(), &topic, PARTITIONS).await;
    let kshift = Kshift::start_toml(&common::two_cluster_toml(&old, &new, "", routing())).await;
    common::send_numbered(&kshift.bootstrap(), &topic, "record", 40).await;
    settled(kshift.state(), "new", 40, Duration::from_secs(30)).await;

    // The group runs straight on the mirror (a service that never went through kshift).
    let group = common::unique_topic("active-group");
    let member = common::consumer(&new.bootstrap(), &[("group.id", group.as_str())]);
    member.subscribe(&[&topic]).expect("subscribe");
    common::consume_n(&member, 40, Duration::from_secs(30)).await;
    // Someone commits for the same group through kshift, on old.
    for partition in 0..PARTITIONS {
        common::commit_position(&kshift.bootstrap(), &group, &topic, partition, 3);
    }
    common::eventually(
        Duration::from_secs(20),
        "the sync to find the group's members on the mirror",
        async || {
            let snapshot = kshift.control().offset_sync.snapshot();
            (snapshot.groups_active > 0)
                .then_some(())
                .ok_or(format!("{snapshot:?}"))
        },
    )
    .await;
    assert_eq!(
        kshift.control().offset_sync.snapshot().groups_synced,
        0,
        "the sync committed over a running group's offsets"
    );
    kshift.shutdown().await;
}

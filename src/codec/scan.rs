//! Reading a message in place, without decoding it into structs: what kshift needs of a
//! request or an answer it passes through byte for byte.
//!
//! A Produce answer passed through is checked by [`produce_answer_all_ok`]: it walks the
//! answer's structure with bounds checks (so an undecodable answer is still the backend's
//! failure) and says whether every partition succeeded. Decoding it into a
//! `ProduceResponse` and dropping it again cost ~1,600 instructions per produce (callgrind),
//! about 5% of kshift's; the walk allocates nothing.
//!
//! A Fetch request and its answer are walked the same way ([`walk_fetch_request`],
//! [`walk_fetch_answer`]). What kshift must change in them is a handful of fixed-width
//! fields (session id and epoch, leader epochs, the preferred read replica): the walks
//! return their offsets as [`Patch`]es, and [`patched`] writes them, copying the message only
//! when there is something to write and its bytes are shared.

use bytes::{Bytes, BytesMut};

use super::FrameError;

/// A read position in a message; every read is bounds-checked.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    flexible: bool,
    /// What is read, for errors.
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8], flexible: bool, what: &'static str) -> Cursor<'a> {
        Cursor {
            bytes,
            flexible,
            what,
        }
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    #[inline]
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(self.malformed("ends early".into()));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    pub(super) fn i16(&mut self) -> Result<i16, FrameError> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn i32(&mut self) -> Result<i32, FrameError> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn i64(&mut self) -> Result<i64, FrameError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(bytes))
    }

    /// Reads an i32 of the message that starts at `start` (of which this cursor is a
    /// tail) and, when it is not `wanted`, adds the patch that makes it so.
    fn i32_to(
        &mut self,
        start: &[u8],
        wanted: i32,
        patches: &mut Vec<Patch>,
    ) -> Result<(), FrameError> {
        let at = start.len() - self.remaining();
        if self.i32()? != wanted {
            patches.push(Patch { at, value: wanted });
        }
        Ok(())
    }

    /// Whether a flexible version's tagged fields are there (they are skipped); false in the
    /// older versions, which have none.
    fn any_tagged_fields(&mut self) -> Result<bool, FrameError> {
        if !self.flexible {
            return Ok(false);
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(count > 0)
    }

    /// An unsigned varint of at most 32 bits, as Kafka's compact lengths and tags are.
    #[inline]
    fn uvarint(&mut self) -> Result<u32, FrameError> {
        // Almost every one is a single byte (a count, a length or a tag below 128).
        if let Some((&byte, rest)) = self.bytes.split_first() {
            if byte & 0x80 == 0 {
                self.bytes = rest;
                return Ok(u32::from(byte));
            }
        }
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint longer than 5 bytes".into()))
    }

    /// An array's or a string's length: `None` for null.
    fn length(&mut self, sixteen_bits: bool) -> Result<Option<usize>, FrameError> {
        let length = if self.flexible {
            i64::from(self.uvarint()?) - 1
        } else if sixteen_bits {
            i64::from(self.i16()?)
        } else {
            i64::from(self.i32()?)
        };
        if length < -1 {
            return Err(self.malformed(format!("negative length {length}")));
        }
        Ok(usize::try_from(length).ok())
    }

    /// An array's element count (null counts as empty).
    fn array(&mut self) -> Result<usize, FrameError> {
        Ok(self.length(false)?.unwrap_or(0))
    }

    /// A string or bytes field: `None` for null.
    fn bytes(&mut self, sixteen_bits: bool) -> Result<Option<&'a [u8]>, FrameError> {
        match self.length(sixteen_bits)? {
            Some(length) => self.take(length).map(Some),
            None => Ok(None),
        }
    }

    /// A string, null or not.
    fn skip_string(&mut self) -> Result<(), FrameError> {
        self.bytes(true).map(drop)
    }

    /// A flexible version's tagged fields (none in the older versions).
    pub(super) fn skip_tagged_fields(&mut self) -> Result<(), FrameError> {
        self.any_tagged_fields().map(drop)
    }

    fn malformed(&self, reason: String) -> FrameError {
        FrameError::Malformed {
            what: self.what,
            reason,
        }
    }
}

/// Whether `body`, a Produce answer at `version`, is well formed and every partition in it
/// has error code 0. `Err` when it is not a Produce answer at that version (bytes after a
/// complete answer are ignored, as decoding does).
pub fn produce_answer_all_ok(body: &[u8], version: i16) -> Result<bool, FrameError> {
    let mut cursor = Cursor::new(body, version >= 9, "produce response");
    let mut all_ok = true;
    for _ in 0..cursor.array()? {
        cursor.skip_string()?; // name
        for _ in 0..cursor.array()? {
            cursor.take(4)?; // index
            all_ok &= cursor.i16()? == 0;
            cursor.take(8)?; // base_offset
            if version >= 2 {
                cursor.take(8)?; // log_append_time_ms
            }
            if version >= 5 {
                cursor.take(8)?; // log_start_offset
            }
            if version >= 8 {
                for _ in 0..cursor.array()? {
                    cursor.take(4)?; // batch_index
                    cursor.skip_string()?; // batch_index_error_message
                    cursor.skip_tagged_fields()?;
                }
                cursor.skip_string()?; // error_message
            }
            cursor.skip_tagged_fields()?;
        }
        cursor.skip_tagged_fields()?;
    }
    if version >= 1 {
        cursor.take(4)?; // throttle_time_ms
    }
    cursor.skip_tagged_fields()?;
    Ok(all_ok)
}

/// What a Produce request asks of the broker, beside its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceRequestHead {
    pub acks: i16,
    pub timeout_ms: i32,
}

/// Walks `body`, a Produce request at `version`, in place: `partition(topic, index)` is
/// called for each partition in order, and the walk stops (`Ok(None)`) at the first that
/// returns false. `Err` when it is not a Produce request at that version; a topic name
/// that is null is an error too (a broker refuses it).
pub fn walk_produce_request(
    body: &[u8],
    version: i16,
    mut partition: impl FnMut(&[u8], i32) -> bool,
) -> Result<Option<ProduceRequestHead>, FrameError> {
    let mut cursor = Cursor::new(body, version >= 9, "produce request");
    if version >= 3 {
        cursor.skip_string()?; // transactional_id
    }
    let acks = cursor.i16()?;
    let timeout_ms = cursor.i32()?;
    for _ in 0..cursor.array()? {
        let Some(topic) = cursor.bytes(true)? else {
            return Err(cursor.malformed("null topic name".into()));
        };
        for _ in 0..cursor.array()? {
            let index = cursor.i32()?;
            cursor.bytes(false)?; // records
            cursor.skip_tagged_fields()?;
            if !partition(topic, index) {
                return Ok(None);
            }
        }
        cursor.skip_tagged_fields()?;
    }
    cursor.skip_tagged_fields()?;
    Ok(Some(ProduceRequestHead { acks, timeout_ms }))
}

/// One big-endian i32 field of a message to overwrite before it is passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Offset of the field in the message body.
    pub at: usize,
    pub value: i32,
}

/// `body` with each of `patches` written: the same bytes when there are none, and a copy
/// only when the bytes are shared. A patch that does not fit the body is skipped (the walks
/// that make them have read those bytes).
pub fn patched(body: Bytes, patches: &[Patch]) -> Bytes {
    if patches.is_empty() {
        return body;
    }
    let mut owned = body
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    for patch in patches {
        if let Some(field) = owned.get_mut(patch.at..patch.at + 4) {
            field.copy_from_slice(&patch.value.to_be_bytes());
        }
    }
    owned.freeze()
}

/// What a Fetch request asks of the broker beside its partitions, and what must change in
/// it before a backend sees it: session id 0 and epoch -1 (kshift fetches without
/// sessions), and every leader epoch -1 (epochs belong to one cluster).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchRequestWalk {
    pub max_wait_ms: i32,
    pub patches: Vec<Patch>,
}

/// Walks `body`, a Fetch request at `version` (4 to 12), in place:
/// `partition(topic, index, fetch_offset)` is called for each partition in order, and the
/// walk stops (`Ok(None)`) at the first that returns false. `Ok(None)` too for a request
/// that a sessionless forward would change beyond its patches: a replica's fetch (replica
/// id other than -1), forgotten topics (an incremental session) or request-level tagged
/// fields. `Err` when it is not a Fetch request at that version.
pub fn walk_fetch_request(
    body: &[u8],
    version: i16,
    mut partition: impl FnMut(&[u8], i32, i64) -> bool,
) -> Result<Option<FetchRequestWalk>, FrameError> {
    let mut cursor = Cursor::new(body, version >= 12, "fetch request");
    if cursor.i32()? != -1 {
        return Ok(None); // replica_id
    }
    let mut walk = FetchRequestWalk {
        max_wait_ms: cursor.i32()?,
        patches: Vec::new(),
    };
    cursor.take(4 + 4 + 1)?; // min_bytes, max_bytes, isolation_level
    if version >= 7 {
        cursor.i32_to(body, 0, &mut walk.patches)?; // session_id
        cursor.i32_to(body, -1, &mut walk.patches)?; // session_epoch
    }
    for _ in 0..cursor.array()? {
        let Some(topic) = cursor.bytes(true)? else {
            return Err(cursor.malformed("null topic name".into()));
        };
        for _ in 0..cursor.array()? {
            let index = cursor.i32()?;
            if version >= 9 {
                cursor.i32_to(body, -1, &mut walk.patches)?; // current_leader_epoch
            }
            let fetch_offset = cursor.i64()?;
            if version >= 12 {
                cursor.i32_to(body, -1, &mut walk.patches)?; // last_fetched_epoch
            }
            if version >= 5 {
                cursor.take(8)?; // log_start_offset
            }
            cursor.take(4)?; // partition_max_bytes
            cursor.skip_tagged_fields()?;
            if !partition(topic, index, fetch_offset) {
                return Ok(None);
            }
        }
        cursor.skip_tagged_fields()?;
    }
    if version >= 7 && cursor.array()? > 0 {
        return Ok(None); // forgotten_topics_data
    }
    if version >= 11 {
        cursor.skip_string()?; // rack_id
    }
    if cursor.any_tagged_fields()? {
        return Ok(None);
    }
    Ok(Some(walk))
}

/// Walks `body`, a Fetch answer at `version` (4 to 12), in place:
/// `partition(topic, index, records)` is called for each partition in order. The patches
/// that make it kshift's answer (session id 0, preferred read replica -1), or `Ok(None)` when
/// it needs decoding: an error code anywhere, or a partition's tagged fields (diverging
/// epoch, current leader, snapshot id: one cluster's, which kshift clears). `Err` when it is
/// not a Fetch answer at that version.
pub fn walk_fetch_answer<'a>(
    body: &'a [u8],
    version: i16,
    mut partition: impl FnMut(&'a [u8], i32, &'a [u8]),
) -> Result<Option<Vec<Patch>>, FrameError> {
    let mut cursor = Cursor::new(body, version >= 12, "fetch response");
    let mut patches = Vec::new();
    cursor.take(4)?; // throttle_time_ms
    if version >= 7 {
        if cursor.i16()? != 0 {
            return Ok(None);
        }
        cursor.i32_to(body, 0, &mut patches)?; // session_id
    }
    for _ in 0..cursor.array()? {
        let Some(topic) = cursor.bytes(true)? else {
            return Err(cursor.malformed("null topic name".into()));
        };
        for _ in 0..cursor.array()? {
            let index = cursor.i32()?;
            if cursor.i16()? != 0 {
                return Ok(None);
            }
            cursor.take(8 + 8)?; // high_watermark, last_stable_offset
            if version >= 5 {
                cursor.take(8)?; // log_start_offset
            }
            for _ in 0..cursor.array()? {
                cursor.take(8 + 8)?; // aborted transaction: producer_id, first_offset
                cursor.skip_tagged_fields()?;
            }
            if version >= 11 {
                cursor.i32_to(body, -1, &mut patches)?; // preferred_read_replica
            }
            let records = cursor.bytes(false)?.unwrap_or_default();
            if cursor.any_tagged_fields()? {
                return Ok(None);
            }
            partition(topic, index, records);
        }
        cursor.skip_tagged_fields()?;
    }
    cursor.skip_tagged_fields()?;
    Ok(Some(patches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use bytes::BytesMut;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, ProducerId,
        TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn answer(codes: &[&[i16]], with_messages: bool) -> ProduceResponse {
        ProduceResponse::default()
            .with_throttle_time_ms(5)
            .with_responses(
                codes
                    .iter()
                    .enumerate()
                    .map(|(t, partitions)| {
                        TopicProduceResponse::default()
                            .with_name(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                            .with_partition_responses(
                                partitions
                                    .iter()
                                    .enumerate()
                                    .map(|(p, &code)| {
                                        let partition = PartitionProduceResponse::default()
                                            .with_index(p as i32)
                                            .with_error_code(code)
                                            .with_base_offset(1000 + p as i64)
                                            .with_log_append_time_ms(-1)
                                            .with_log_start_offset(0);
                                        if !with_messages {
                                            return partition;
                                        }
                                        partition
                                            .with_record_errors(vec![
                                                BatchIndexAndErrorMessage::default()
                                                    .with_batch_index(2)
                                                    .with_batch_index_error_message(Some(
                                                        StrBytes::from_static_str("bad record"),
                                                    )),
                                            ])
                                            .with_error_message(Some(StrBytes::from_static_str(
                                                "some records were refused",
                                            )))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
    }

    /// Asserts that `fails` holds for every prefix of `bytes` shorter than the whole: a
    /// message cut anywhere is an error, never read as complete.
    fn fails_at_every_shorter_length(bytes: &[u8], version: i16, fails: impl Fn(&[u8]) -> bool) {
        for length in 0..bytes.len() {
            assert!(
                fails(&bytes[..length]),
                "v{version}, {length} of {} bytes",
                bytes.len()
            );
        }
    }

    fn encoded<M: Encodable>(message: &M, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        message.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    #[test]
    fn reads_every_served_version_as_kafka_protocol_encodes_it() {
        for version in 3..=9 {
            for with_messages in [false, true] {
                let ok = encoded(&answer(&[&[0, 0], &[0]], with_messages), version);
                assert!(produce_answer_all_ok(&ok, version).unwrap(), "v{version}");
                let failed = encoded(&answer(&[&[0], &[0, 6, 0]], with_messages), version);
                assert!(
                    !produce_answer_all_ok(&failed, version).unwrap(),
                    "v{version}"
                );
                let empty = encoded(&answer(&[], with_messages), version);
                assert!(
                    produce_answer_all_ok(&empty, version).unwrap(),
                    "v{version}"
                );
            }
        }
    }

    fn request(version: i16, transactional: bool) -> Vec<u8> {
        let partition = |index: i32, records: Option<&'static [u8]>| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(records.map(Bytes::from_static))
        };
        let mut topic = TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partition_data(vec![partition(3, Some(b"batch")), partition(0, None)]);
        if version >= 9 {
            topic
                .unknown_tagged_fields
                .insert(4, Bytes::from_static(b"t"));
        }
        let request = ProduceRequest::default()
            .with_transactional_id(
                transactional.then(|| TransactionalId(StrBytes::from_static_str("tx"))),
            )
            .with_acks(-1)
            .with_timeout_ms(1500)
            .with_topic_data(vec![
                topic,
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("")))
                    .with_partition_data(vec![partition(7, Some(b""))]),
            ]);
        encoded(&request, version)
    }

    #[test]
    fn a_produce_request_is_walked_as_kafka_protocol_encodes_it() {
        for version in 3..=9 {
            for transactional in [false, true] {
                let bytes = request(version, transactional);
                let mut seen = Vec::new();
                let head = walk_produce_request(&bytes, version, |topic, index| {
                    seen.push((String::from_utf8(topic.to_vec()).unwrap(), index));
                    true
                });
                let expected = ProduceRequestHead {
                    acks: -1,
                    timeout_ms: 1500,
                };
                assert_eq!(head.unwrap(), Some(expected), "v{version}");
                let names = [("orders", 3), ("orders", 0), ("", 7)];
                let names: Vec<(String, i32)> =
                    names.iter().map(|&(t, i)| (t.to_string(), i)).collect();
                assert_eq!(seen, names, "v{version}");
                // Stopped at the second partition.
                let mut calls = 0;
                let stopped = walk_produce_request(&bytes, version, |_, _| {
                    calls += 1;
                    calls < 2
                });
                assert_eq!(stopped.unwrap(), None);
                assert_eq!(calls, 2);
                fails_at_every_shorter_length(&bytes, version, |bytes| {
                    walk_produce_request(bytes, version, |_, _| true).is_err()
                });
            }
        }
    }

    #[test]
    fn a_truncated_answer_is_an_error_at_every_length() {
        for version in [3, 8, 9] {
            let bytes = encoded(&answer(&[&[0, 0], &[0]], true), version);
            fails_at_every_shorter_length(&bytes, version, |bytes| {
                produce_answer_all_ok(bytes, version).is_err()
            });
        }
    }

    #[test]
    fn unknown_tagged_fields_are_skipped() {
        // v9, one topic with one partition, each struct carrying one unknown tagged field.
        let mut bytes = vec![2, 3, b'o', b'k', 2];
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // index 0, error 0
        bytes.extend_from_slice(&[0; 24]); // base offset, append time, log start
        bytes.extend_from_slice(&[1, 1]); // no record errors, null message
        bytes.extend_from_slice(&[1, 9, 2, 0xaa, 0xbb]); // partition: tag 9, two bytes
        bytes.extend_from_slice(&[1, 3, 0]); // topic: tag 3, empty
        bytes.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0xcc]); // throttle; tag 0, one byte
        assert!(produce_answer_all_ok(&bytes, 9).unwrap());
        assert!(produce_answer_all_ok(&bytes[..bytes.len() - 1], 9).is_err());
    }

    #[test]
    fn a_huge_count_fails_without_allocating() {
        assert!(produce_answer_all_ok(&[0x7f, 0xff, 0xff, 0xff], 7).is_err());
        assert!(produce_answer_all_ok(&[0xff, 0xff, 0xff, 0xff, 0x0f], 9).is_err());
    }

    fn fetch_request(version: i16) -> FetchRequest {
        let partition = |index: i32, offset: i64| {
            FetchPartition::default()
                .with_partition(index)
                .with_current_leader_epoch(if version >= 9 { 7 } else { -1 })
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(if version >= 12 { 6 } else { -1 })
                .with_log_start_offset(if version >= 5 { 3 } else { -1 })
                .with_partition_max_bytes(1 << 20)
        };
        let mut request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_isolation_level(1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![partition(3, 1000), partition(0, 7)]),
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("")))
                    .with_partitions(vec![partition(1, 5)]),
            ]);
        if version >= 7 {
            request = request.with_session_id(42).with_session_epoch(3);
        }
        if version >= 11 {
            request = request.with_rack_id(StrBytes::from_static_str("rack-a"));
        }
        request
    }

    #[test]
    fn a_fetch_request_is_walked_and_made_sessionless_as_kafka_protocol_reads_it() {
        for version in 4..=12 {
            let request = fetch_request(version);
            let bytes = encoded(&request, version);
            let mut seen = Vec::new();
            let walk = walk_fetch_request(&bytes, version, |topic, index, offset| {
                seen.push((String::from_utf8(topic.to_vec()).unwrap(), index, offset));
                true
            })
            .unwrap()
            .unwrap();
            assert_eq!(walk.max_wait_ms, 500, "v{version}");
            let expected = [("orders", 3, 1000), ("orders", 0, 7), ("", 1, 5)];
            let expected: Vec<(String, i32, i64)> = expected
                .iter()
                .map(|&(t, i, o)| (t.to_string(), i, o))
                .collect();
            assert_eq!(seen, expected, "v{version}");

            // Patched, it decodes as the sessionless, epoch-free request kshift would encode.
            let sent = patched(Bytes::from(bytes.clone()), &walk.patches);
            let decoded = FetchRequest::decode(&mut sent.clone(), version).unwrap();
            let mut wanted = request.clone().with_session_id(0).with_session_epoch(-1);
            for topic in &mut wanted.topics {
                for partition in &mut topic.partitions {
                    partition.current_leader_epoch = -1;
                    partition.last_fetched_epoch = -1;
                }
            }
            assert_eq!(decoded, wanted, "v{version}");
            // A request already sessionless and epoch-free needs no patch and is not copied.
            let clean = Bytes::from(encoded(&wanted, version));
            let walk = walk_fetch_request(&clean, version, |_, _, _| true);
            assert_eq!(walk.unwrap().unwrap().patches, vec![], "v{version}");

            // Stopped at the second partition.
            let mut calls = 0;
            let stopped = walk_fetch_request(&bytes, version, |_, _, _| {
                calls += 1;
                calls < 2
            });
            assert_eq!(stopped.unwrap(), None);
            assert_eq!(calls, 2);
            fails_at_every_shorter_length(&bytes, version, |bytes| {
                walk_fetch_request(bytes, version, |_, _, _| true).is_err()
            });
        }
    }

    #[test]
    fn a_fetch_a_forward_would_change_is_left_to_the_decoding_path() {
        let follower = fetch_request(11).with_replica_id(BrokerId(2));
        let walk = walk_fetch_request(&encoded(&follower, 11), 11, |_, _, _| true);
        assert_eq!(walk.unwrap(), None);
        let incremental =
            fetch_request(11).with_forgotten_topics_data(vec![ForgottenTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("gone")))
                .with_partitions(vec![0])]);
        let walk = walk_fetch_request(&encoded(&incremental, 11), 11, |_, _, _| true);
        assert_eq!(walk.unwrap(), None);
        let with_cluster_id =
            fetch_request(12).with_cluster_id(Some(StrBytes::from_static_str("other")));
        let walk = walk_fetch_request(&encoded(&with_cluster_id, 12), 12, |_, _, _| true);
        assert_eq!(walk.unwrap(), None);
    }

    fn fetch_answer(version: i16) -> FetchResponse {
        let partition = |index: i32, records: Option<&'static [u8]>| {
            let mut partition = PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(100)
                .with_last_stable_offset(90)
                .with_log_start_offset(if version >= 5 { 2 } else { -1 })
                .with_aborted_transactions(Some(vec![AbortedTransaction::default()
                    .with_producer_id(ProducerId(9))
                    .with_first_offset(80)]))
                .with_records(records.map(Bytes::from_static));
            if version >= 11 {
                partition.preferred_read_replica = BrokerId(111);
            }
            partition
        };
        let mut answer = FetchResponse::default()
            .with_throttle_time_ms(4)
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![partition(3, Some(b"batches")), partition(0, None)]),
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("logs")))
                    .with_partitions(vec![partition(1, Some(b""))]),
            ]);
        if version >= 7 {
            answer.session_id = 77;
        }
        answer
    }

    #[test]
    fn a_fetch_answer_is_walked_and_patched_as_kafka_protocol_reads_it() {
        for version in 4..=12 {
            let answer = fetch_answer(version);
            let bytes = encoded(&answer, version);
            let mut seen = Vec::new();
            let patches = walk_fetch_answer(&bytes, version, |topic, index, records| {
                seen.push((topic.to_vec(), index, records.to_vec()));
            })
            .unwrap()
            .unwrap();
            let expected: Vec<(Vec<u8>, i32, Vec<u8>)> = vec![
                (b"orders".to_vec(), 3, b"batches".to_vec()),
                (b"orders".to_vec(), 0, vec![]),
                (b"logs".to_vec(), 1, vec![]),
            ];
            assert_eq!(seen, expected, "v{version}");
            let sent = patched(Bytes::from(bytes.clone()), &patches);
            let decoded = FetchResponse::decode(&mut sent.clone(), version).unwrap();
            let mut wanted = answer.clone().with_session_id(0);
            for topic in &mut wanted.responses {
                for partition in &mut topic.partitions {
                    partition.preferred_read_replica = BrokerId(-1);
                }
            }
            assert_eq!(decoded, wanted, "v{version}");
            fails_at_every_shorter_length(&bytes, version, |bytes| {
                walk_fetch_answer(bytes, version, |_, _, _| {}).is_err()
            });
        }
    }

    #[test]
    fn a_fetch_answer_with_an_error_or_a_clusters_tagged_fields_is_left_to_decoding() {
        for version in [7, 12] {
            let mut failed = fetch_answer(version);
            failed.responses[1].partitions[0].error_code = 6;
            let walk = walk_fetch_answer(&encoded(&failed, version), version, |_, _, _| {});
            assert_eq!(walk.unwrap(), None, "v{version}");
            let whole = fetch_answer(version).with_error_code(71);
            let walk = walk_fetch_answer(&encoded(&whole, version), version, |_, _, _| {});
            assert_eq!(walk.unwrap(), None, "v{version}");
        }
        let mut moved = fetch_answer(12);
        moved.responses[0].partitions[1].current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(5))
            .with_leader_epoch(9);
        let walk = walk_fetch_answer(&encoded(&moved, 12), 12, |_, _, _| {});
        assert_eq!(walk.unwrap(), None);
    }

    #[test]
    fn patching_writes_in_place_when_the_bytes_are_not_shared() {
        let body = Bytes::from(vec![0u8; 8]);
        let pointer = body.as_ptr();
        let out = patched(body, &[Patch { at: 4, value: -1 }]);
        assert_eq!(&out[..], &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(out.as_ptr(), pointer);
        let shared = Bytes::from(vec![0u8; 8]);
        let keep = shared.clone();
        let out = patched(
            shared,
            &[Patch { at: 0, value: 1 }, Patch { at: 6, value: 1 }],
        );
        assert_eq!(&out[..], &[0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&keep[..], &[0; 8]);
    }
}

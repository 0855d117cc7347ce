//! Reading a message in place, without decoding it into structs: what kshift needs of a
//! request or an answer it passes through byte for byte.
//!
//! A Produce answer passed through is checked by [`produce_answer_all_ok`]: it walks the
//! answer's structure with bounds checks (so an undecodable answer is still the backend's
//! failure) and says whether every partition succeeded. Decoding it into a
//! `ProduceResponse` and dropping it again cost ~1,600 instructions per produce (callgrind),
//! about 5% of kshift's; the walk allocates nothing.

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
        if !self.flexible {
            return Ok(());
        }
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName, TransactionalId};
    use kafka_protocol::protocol::{Encodable, StrBytes};

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

    fn encoded(response: &ProduceResponse, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        response.encode(&mut buf, version).unwrap();
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
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).unwrap();
        buf.to_vec()
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
                for length in 0..bytes.len() {
                    assert!(
                        walk_produce_request(&bytes[..length], version, |_, _| true).is_err(),
                        "v{version}, {length} of {} bytes",
                        bytes.len()
                    );
                }
            }
        }
    }

    #[test]
    fn a_truncated_answer_is_an_error_at_every_length() {
        for version in [3, 8, 9] {
            let bytes = encoded(&answer(&[&[0, 0], &[0]], true), version);
            for length in 0..bytes.len() {
                assert!(
                    produce_answer_all_ok(&bytes[..length], version).is_err(),
                    "v{version}, {length} of {} bytes",
                    bytes.len()
                );
            }
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
}

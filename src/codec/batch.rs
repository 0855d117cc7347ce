//! Record batches (magic 2) as bytes: walking the batches of a produce partition, and
//! rewriting a batch for a mirror cluster, plus the Java client's murmur2 partitioner.
//!
//! Layout of a v2 batch header (offsets in bytes):
//! `0 baseOffset i64 · 8 batchLength i32 · 12 partitionLeaderEpoch i32 · 16 magic i8 ·
//! 17 crc u32 · 21 attributes i16 · 23 lastOffsetDelta i32 · 27 baseTimestamp i64 ·
//! 35 maxTimestamp i64 · 43 producerId i64 · 51 producerEpoch i16 · 53 baseSequence i32 ·
//! 57 recordCount i32 · 61 records…`. The CRC-32C covers `attributes` to the end, so
//! changing the producer identity means recomputing it; base offset, length and leader
//! epoch sit outside it.
//!
//! Invariant: nothing here panics on bytes from the network; a malformed batch is an error.

use bytes::{Bytes, BytesMut};

const HEADER_LEN: usize = 61;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORD_COUNT_OFFSET: usize = 57;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: {0}")]
    Truncated(&'static str),
    #[error("record batch magic {0} is not supported (only v2)")]
    Magic(i8),
}

/// One record batch, still encoded.
#[derive(Debug, Clone)]
pub struct Batch {
    bytes: Bytes,
}

impl Batch {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    fn i16_at(&self, offset: usize) -> i16 {
        i16::from_be_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    fn i32_at(&self, offset: usize) -> i32 {
        let b = &self.bytes[offset..offset + 4];
        i32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The offset of the batch's first record (as a broker stored it; 0 as a client sends it).
    pub fn base_offset(&self) -> i64 {
        let b = &self.bytes[0..8];
        i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The offset of the batch's last record; `None` when the header's base offset and
    /// delta (bytes a broker sent) add up beyond `i64`.
    pub fn checked_last_offset(&self) -> Option<i64> {
        self.base_offset()
            .checked_add(i64::from(self.i32_at(LAST_OFFSET_DELTA_OFFSET)))
    }

    /// The offset of the batch's last record, saturated at `i64::MAX` (see
    /// [`Batch::checked_last_offset`]).
    pub fn last_offset(&self) -> i64 {
        self.base_offset()
            .saturating_add(i64::from(self.i32_at(LAST_OFFSET_DELTA_OFFSET)))
    }

    pub fn producer_id(&self) -> i64 {
        let b = &self.bytes[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8];
        i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn producer_epoch(&self) -> i16 {
        self.i16_at(PRODUCER_EPOCH_OFFSET)
    }

    pub fn base_sequence(&self) -> i32 {
        self.i32_at(BASE_SEQUENCE_OFFSET)
    }

    pub fn record_count(&self) -> i32 {
        self.i32_at(RECORD_COUNT_OFFSET)
    }

    pub fn is_transactional(&self) -> bool {
        self.i16_at(ATTRIBUTES_OFFSET) & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.i16_at(ATTRIBUTES_OFFSET) & CONTROL_BIT != 0
    }

    /// The batch as kshift's own producer sends it to a mirror: kshift's producer id,
    /// epoch and sequence, not transactional (only committed records are mirrored), base
    /// offset 0, no leader epoch; CRC recomputed.
    pub fn for_mirror(&self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Bytes {
        let mut bytes = BytesMut::from(&self.bytes[..]);
        bytes[0..8].copy_from_slice(&0i64.to_be_bytes());
        bytes[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        let attributes = self.i16_at(ATTRIBUTES_OFFSET) & !TRANSACTIONAL_BIT;
        bytes[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        bytes[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8]
            .copy_from_slice(&producer_id.to_be_bytes());
        bytes[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2]
            .copy_from_slice(&producer_epoch.to_be_bytes());
        bytes[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
            .copy_from_slice(&base_sequence.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        bytes.freeze()
    }

    /// True when the stored CRC matches the contents.
    pub fn crc_is_valid(&self) -> bool {
        let stored = u32::from_be_bytes([
            self.bytes[CRC_OFFSET],
            self.bytes[CRC_OFFSET + 1],
            self.bytes[CRC_OFFSET + 2],
            self.bytes[CRC_OFFSET + 3],
        ]);
        stored == crc32c::crc32c(&self.bytes[ATTRIBUTES_OFFSET..])
    }
}

/// Splits the records of one produce partition into its batches (zero-copy slices).
pub fn split_batches(mut records: Bytes) -> Result<Vec<Batch>, BatchError> {
    let mut batches = Vec::new();
    while !records.is_empty() {
        if records.len() < HEADER_LEN {
            return Err(BatchError::Truncated("header"));
        }
        let length = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let total = usize::try_from(length)
            .ok()
            .and_then(|length| length.checked_add(12))
            .filter(|total| *total >= HEADER_LEN && *total <= records.len())
            .ok_or(BatchError::Truncated("batch length"))?;
        let magic = records[MAGIC_OFFSET] as i8;
        if magic != 2 {
            return Err(BatchError::Magic(magic));
        }
        batches.push(Batch {
            bytes: records.split_to(total),
        });
    }
    Ok(batches)
}

/// Attribute bits of the compression codec, and of LogAppendTime.
const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME_BIT: i16 = 0x08;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;

impl Batch {
    fn i64_at(&self, offset: usize) -> i64 {
        let b = &self.bytes[offset..offset + 8];
        i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// True for an uncompressed batch of client-set (CreateTime) timestamps: its records can
    /// be copied into another batch without being decoded.
    pub fn is_plain(&self) -> bool {
        let attributes = self.i16_at(ATTRIBUTES_OFFSET);
        attributes & (COMPRESSION_MASK | LOG_APPEND_TIME_BIT | CONTROL_BIT) == 0
    }
}

/// The records of `batches`, each [`Batch::is_plain`], as one uncompressed batch: offsets
/// renumbered from 0 and timestamps rebased on the first batch's, every record's key, value
/// and headers copied byte for byte (no decoding, no allocation per record). Producer id,
/// epoch and sequence are left unset (-1) for [`Batch::for_mirror`].
pub fn concatenate(batches: &[&Batch]) -> Result<Batch, BatchError> {
    let first = batches.first().ok_or(BatchError::Truncated("no batches"))?;
    let base_timestamp = first.i64_at(BASE_TIMESTAMP_OFFSET);
    let max_timestamp = batches
        .iter()
        .map(|batch| batch.i64_at(MAX_TIMESTAMP_OFFSET))
        .max()
        .unwrap_or(base_timestamp);
    let size: usize = batches.iter().map(|batch| batch.bytes.len()).sum();
    let mut out = BytesMut::with_capacity(size + 16 * batches.len());
    out.resize(HEADER_LEN, 0);
    let mut count: i64 = 0;
    for batch in batches {
        if !batch.is_plain() {
            return Err(BatchError::Truncated("not a plain batch"));
        }
        let batch_base = batch.i64_at(BASE_TIMESTAMP_OFFSET);
        let mut records = &batch.bytes[HEADER_LEN..];
        for _ in 0..batch.record_count().max(0) {
            let length = read_varint(&mut records)?;
            let length = usize::try_from(length).map_err(|_| BatchError::Truncated("record"))?;
            let mut body = records
                .get(..length)
                .ok_or(BatchError::Truncated("record"))?;
            records = &records[length..];
            let (&attributes, rest) = body.split_first().ok_or(BatchError::Truncated("record"))?;
            body = rest;
            let timestamp_delta = read_varint(&mut body)?;
            let _offset_delta = read_varint(&mut body)?;
            let timestamp = batch_base
                .checked_add(timestamp_delta)
                .ok_or(BatchError::Truncated("record timestamp"))?;
            let mut head = [0u8; 1 + 10 + 10];
            head[0] = attributes;
            let mut used = 1;
            used += write_varint(&mut head[used..], timestamp.wrapping_sub(base_timestamp));
            used += write_varint(&mut head[used..], count);
            let mut length_bytes = [0u8; 10];
            let length_used = write_varint(&mut length_bytes, (used + body.len()) as i64);
            out.extend_from_slice(&length_bytes[..length_used]);
            out.extend_from_slice(&head[..used]);
            out.extend_from_slice(body);
            count += 1;
        }
        if !records.is_empty() {
            return Err(BatchError::Truncated("bytes after the last record"));
        }
    }
    let count = i32::try_from(count).map_err(|_| BatchError::Truncated("record count"))?;
    let length = i32::try_from(out.len() - 12).map_err(|_| BatchError::Truncated("length"))?;
    out[0..8].copy_from_slice(&0i64.to_be_bytes());
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    out[MAGIC_OFFSET] = 2;
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&0i16.to_be_bytes());
    out[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
        .copy_from_slice(&(count - 1).max(0).to_be_bytes());
    out[BASE_TIMESTAMP_OFFSET..BASE_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&base_timestamp.to_be_bytes());
    out[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&max_timestamp.to_be_bytes());
    out[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&(-1i64).to_be_bytes());
    out[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2].copy_from_slice(&(-1i16).to_be_bytes());
    out[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4].copy_from_slice(&(-1i32).to_be_bytes());
    out[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Batch {
        bytes: out.freeze(),
    })
}

/// Reads one zigzag varint (Kafka's varint and varlong alike) from the front of `bytes`.
fn read_varint(bytes: &mut &[u8]) -> Result<i64, BatchError> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(BatchError::Truncated("varint"))
}

/// Writes `value` as a zigzag varint at the start of `out` (10 bytes are always enough);
/// returns the bytes used.
fn write_varint(out: &mut [u8], value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut used = 0;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out[used] = byte;
            return used + 1;
        }
        out[used] = byte | 0x80;
        used += 1;
    }
}

/// The complete batches at the start of fetched `records`: a broker may end a size-limited
/// fetch with part of a batch, which the next fetch returns whole.
pub fn complete_batches(records: Bytes) -> Result<Vec<Batch>, BatchError> {
    let mut complete = 0usize;
    while records.len() >= complete + HEADER_LEN {
        let at = complete + 8;
        let length = i32::from_be_bytes([
            records[at],
            records[at + 1],
            records[at + 2],
            records[at + 3],
        ]);
        match usize::try_from(length).ok().and_then(|l| l.checked_add(12)) {
            Some(total) if complete + total <= records.len() => complete += total,
            _ => break,
        }
    }
    split_batches(records.slice(..complete))
}

/// Kafka's murmur2 hash, as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner gives a keyed record.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// The offset after the last complete record batch in `records`, if any (none when the
/// batches' offsets overflow `i64`).
pub fn next_offset(records: &[u8]) -> Option<i64> {
    const HEADER: usize = 12; // base offset (8) + batch length (4)
    const MAGIC: usize = 16;
    const LAST_OFFSET_DELTA: usize = 23;
    let mut at = 0usize;
    let mut next = None;
    while records.len() >= at + LAST_OFFSET_DELTA + 4 {
        let base = i64::from_be_bytes(records[at..at + 8].try_into().ok()?);
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().ok()?);
        let end = at + HEADER + usize::try_from(length).ok()?;
        if end > records.len() {
            break; // a partial batch at the end of a size-limited fetch
        }
        let last = if records[at + MAGIC] >= 2 {
            let delta = i32::from_be_bytes(
                records[at + LAST_OFFSET_DELTA..at + LAST_OFFSET_DELTA + 4]
                    .try_into()
                    .ok()?,
            );
            base.checked_add(i64::from(delta))?
        } else {
            base // legacy message sets: the (wrapper) message's offset is its last
        };
        // Offsets from a broker's bytes: an overflow is a malformed answer, not a position.
        next = Some(last.checked_add(1)?);
        at = end;
    }
    next
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    /// `count` records `k{i}`/`v{i}` as a client's LZ4 batch (producer 42, epoch 3).
    pub(crate) fn encoded(count: usize, transactional: bool) -> Bytes {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional,
                control: false,
                partition_leader_epoch: 7,
                producer_id: 42,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: 100 + i as i32,
                timestamp: 1_700_000_000_000,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Lz4,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn mirror_rewrite_changes_identity_and_keeps_records() {
        let source = encoded(3, true);
        let batches = split_batches(source).unwrap();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert!(batch.is_transactional());
        assert!(batch.crc_is_valid());
        assert_eq!(batch.record_count(), 3);

        let rewritten = batch.for_mirror(9000, 1, 55);
        let mirrored = &split_batches(rewritten.clone()).unwrap()[0];
        assert!(mirrored.crc_is_valid());
        assert!(!mirrored.is_transactional());
        let mut buf = rewritten;
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.records[0].producer_id, 9000);
        assert_eq!(set.records[0].producer_epoch, 1);
        assert_eq!(set.records[0].sequence, 55);
        assert_eq!(set.records[2].sequence, 57);
        assert_eq!(set.records[2].value.as_deref(), Some(&b"v2"[..]));
        assert_eq!(set.records[0].partition_leader_epoch, -1);
    }

    #[test]
    fn a_last_offset_beyond_i64_does_not_overflow() {
        let mut bytes = BytesMut::from(&encoded(3, false)[..]);
        bytes[0..8].copy_from_slice(&i64::MAX.to_be_bytes());
        let batch = &split_batches(bytes.freeze()).unwrap()[0];
        assert_eq!(batch.base_offset(), i64::MAX);
        assert_eq!(batch.checked_last_offset(), None);
        assert_eq!(batch.last_offset(), i64::MAX);
        let fine = &split_batches(encoded(3, false)).unwrap()[0];
        assert_eq!(fine.checked_last_offset(), Some(fine.base_offset() + 2));
    }

    #[test]
    fn several_batches_split_and_bad_lengths_are_errors() {
        let mut two = BytesMut::from(&encoded(2, false)[..]);
        two.extend_from_slice(&encoded(1, false));
        let batches = split_batches(two.freeze()).unwrap();
        assert_eq!(
            batches.iter().map(Batch::record_count).collect::<Vec<_>>(),
            vec![2, 1]
        );

        let whole = encoded(1, false);
        assert_eq!(
            split_batches(whole.slice(..whole.len() - 1)).unwrap_err(),
            BatchError::Truncated("batch length")
        );
        assert_eq!(
            split_batches(whole.slice(..20)).unwrap_err(),
            BatchError::Truncated("header")
        );
        let mut negative = BytesMut::from(&whole[..]);
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(split_batches(negative.freeze()).is_err());
        let mut magic = BytesMut::from(&whole[..]);
        magic[16] = 1;
        assert_eq!(
            split_batches(magic.freeze()).unwrap_err(),
            BatchError::Magic(1)
        );
    }

    /// `count` uncompressed records `k{i}`/`v{i}` (with a header) at `timestamp` + i.
    pub(crate) fn plain(count: usize, first: usize, timestamp: i64) -> Batch {
        let records: Vec<Record> = (first..first + count)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 7,
                producer_id: 42,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: (i - first) as i64,
                sequence: (i - first) as i32,
                timestamp: timestamp + i as i64,
                key: (i % 3 != 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}").repeat(i % 5 + 1))),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_string(format!("h{i}")),
                    Some(Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        split_batches(buf.freeze()).unwrap().remove(0)
    }

    #[test]
    fn concatenated_plain_batches_decode_to_the_same_records_in_order() {
        let inputs = [
            plain(3, 0, 1_700_000_000_000),
            plain(1, 3, 1_700_000_000_100),
            // Timestamps before the first batch's: deltas go negative.
            plain(200, 4, 1_600_000_000_000),
        ];
        assert!(inputs.iter().all(Batch::is_plain));
        let merged = concatenate(&inputs.iter().collect::<Vec<_>>()).unwrap();
        assert!(merged.crc_is_valid());
        assert_eq!(merged.record_count(), 204);
        assert_eq!(merged.last_offset(), 203);
        assert_eq!(merged.producer_id(), -1);
        let mut expected = Vec::new();
        for input in &inputs {
            let mut bytes = input.bytes().clone();
            expected.extend(RecordBatchDecoder::decode(&mut bytes).unwrap().records);
        }
        let mut bytes = merged.bytes().clone();
        let decoded = RecordBatchDecoder::decode(&mut bytes).unwrap().records;
        assert_eq!(decoded.len(), expected.len());
        for (i, (got, want)) in decoded.iter().zip(&expected).enumerate() {
            assert_eq!(got.offset, i as i64);
            assert_eq!(got.timestamp, want.timestamp, "record {i}");
            assert_eq!(got.key, want.key, "record {i}");
            assert_eq!(got.value, want.value, "record {i}");
            assert_eq!(got.headers, want.headers, "record {i}");
        }
    }

    #[test]
    fn only_plain_batches_are_concatenated_and_truncation_is_an_error() {
        let compressed = split_batches(encoded(2, false)).unwrap().remove(0);
        assert!(!compressed.is_plain());
        let plain_one = plain(2, 0, 0);
        assert!(concatenate(&[&plain_one, &compressed]).is_err());
        // A record count promising more records than the bytes hold.
        let mut bytes = BytesMut::from(&plain_one.bytes()[..]);
        bytes[57..61].copy_from_slice(&3i32.to_be_bytes());
        let lying = split_batches(bytes.freeze()).unwrap().remove(0);
        assert!(concatenate(&[&lying]).is_err());
        let mut out = [0u8; 10];
        for value in [0i64, -1, 1, 63, -64, 64, i64::MAX, i64::MIN, 300, -300] {
            let used = write_varint(&mut out, value);
            let mut read = &out[..used];
            assert_eq!(read_varint(&mut read).unwrap(), value);
            assert!(read.is_empty());
        }
    }

    #[test]
    fn keyed_partitioning_matches_the_java_default() {
        // Utils.toPositive(murmur2("foobar")) % 3 etc., computed from the vectors above.
        assert_eq!(
            partition_for_key(b"foobar", 3),
            (-790332482i32 & 0x7fffffff) % 3
        );
        assert_eq!(partition_for_key(b"abc", 5), 479470107 % 5);
        assert_eq!(partition_for_key(b"abc", 0), 0);
    }

    #[test]
    fn next_offset_reads_batch_headers() {
        let mut batch = vec![0u8; 61];
        batch[0..8].copy_from_slice(&40i64.to_be_bytes());
        batch[8..12].copy_from_slice(&49i32.to_be_bytes());
        batch[16] = 2;
        batch[23..27].copy_from_slice(&4i32.to_be_bytes());
        let mut two = batch.clone();
        let mut second = batch.clone();
        second[0..8].copy_from_slice(&45i64.to_be_bytes());
        two.extend_from_slice(&second);
        assert_eq!(next_offset(&batch), Some(45));
        assert_eq!(next_offset(&two), Some(50));
        assert_eq!(next_offset(&two[..80]), Some(45)); // partial second batch
        assert_eq!(next_offset(&[]), None);
        // Offsets near i64::MAX from a broker's bytes: no overflow, no position.
        let mut last = batch.clone();
        last[0..8].copy_from_slice(&(i64::MAX - 4).to_be_bytes());
        assert_eq!(next_offset(&last), None);
        last[23..27].copy_from_slice(&3i32.to_be_bytes());
        assert_eq!(next_offset(&last), Some(i64::MAX));
    }
}

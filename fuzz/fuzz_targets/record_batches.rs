//! A produce request's record set, as kshift's write and mirror paths handle it: split into
//! batches, checked (CRC), re-stamped with kshift's producer identity for a mirror, and
//! decoded + re-encoded by record (murmur2 re-partitioning, a percentage by key).
#![no_main]

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};
use kshift::produce::batch::{complete_batches, partition_for_key, split_batches};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let records = Bytes::copy_from_slice(data);
    let _ = complete_batches(records.clone());
    let Ok(batches) = split_batches(records) else {
        return;
    };
    for batch in batches {
        let _ = (batch.base_offset(), batch.last_offset(), batch.producer_id());
        let _ = (batch.record_count(), batch.is_transactional(), batch.is_control());
        let _ = batch.crc_is_valid();
        let stamped = batch.for_mirror(7, 1, 42);
        let _ = split_batches(stamped);
        let mut bytes = batch.bytes().clone();
        if let Ok(set) = RecordBatchDecoder::decode(&mut bytes) {
            for record in &set.records {
                if let Some(key) = &record.key {
                    let _ = partition_for_key(key, 12);
                }
            }
            let mut encoded = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: set.compression,
            };
            if RecordBatchEncoder::encode(&mut encoded, &set.records, &options).is_ok() {
                let _ = split_batches(encoded.freeze());
            }
        }
    }
});

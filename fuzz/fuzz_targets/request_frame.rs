//! A request frame (after its length prefix) as a client sends it: kshift parses the header,
//! then decodes the body of every API it looks into, at the frame's version, and re-encodes
//! what decoded (as it does when it rewrites a request). None of it may panic or allocate
//! without bound.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};
use kshift::codec::{Request, RequestPrefix};
use libfuzzer_sys::fuzz_target;

fn round_trip<M: Decodable + Encodable>(request: &Request) {
    if let Ok(message) = request.decode::<M>() {
        let _ = kshift::codec::encode_body(&message, request.api_version);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = RequestPrefix::parse(data);
    let Ok(request) = Request::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    match request.api_key {
        ApiKey::Produce => round_trip::<ProduceRequest>(&request),
        ApiKey::Fetch => round_trip::<FetchRequest>(&request),
        ApiKey::ListOffsets => round_trip::<ListOffsetsRequest>(&request),
        ApiKey::Metadata => round_trip::<MetadataRequest>(&request),
        ApiKey::ApiVersions => round_trip::<ApiVersionsRequest>(&request),
        ApiKey::FindCoordinator => round_trip::<FindCoordinatorRequest>(&request),
        ApiKey::DescribeCluster => round_trip::<DescribeClusterRequest>(&request),
        ApiKey::OffsetCommit => round_trip::<OffsetCommitRequest>(&request),
        ApiKey::OffsetFetch => round_trip::<OffsetFetchRequest>(&request),
        ApiKey::OffsetDelete => round_trip::<OffsetDeleteRequest>(&request),
        ApiKey::JoinGroup => round_trip::<JoinGroupRequest>(&request),
        ApiKey::SyncGroup => round_trip::<SyncGroupRequest>(&request),
        ApiKey::Heartbeat => round_trip::<HeartbeatRequest>(&request),
        ApiKey::LeaveGroup => round_trip::<LeaveGroupRequest>(&request),
        ApiKey::DescribeGroups => round_trip::<DescribeGroupsRequest>(&request),
        ApiKey::DeleteGroups => round_trip::<DeleteGroupsRequest>(&request),
        ApiKey::InitProducerId => round_trip::<InitProducerIdRequest>(&request),
        ApiKey::AddPartitionsToTxn => round_trip::<AddPartitionsToTxnRequest>(&request),
        ApiKey::AddOffsetsToTxn => round_trip::<AddOffsetsToTxnRequest>(&request),
        ApiKey::TxnOffsetCommit => round_trip::<TxnOffsetCommitRequest>(&request),
        ApiKey::EndTxn => round_trip::<EndTxnRequest>(&request),
        ApiKey::CreateTopics => round_trip::<CreateTopicsRequest>(&request),
        ApiKey::CreatePartitions => round_trip::<CreatePartitionsRequest>(&request),
        ApiKey::DeleteTopics => round_trip::<DeleteTopicsRequest>(&request),
        ApiKey::DeleteRecords => round_trip::<DeleteRecordsRequest>(&request),
        ApiKey::DescribeConfigs => round_trip::<DescribeConfigsRequest>(&request),
        ApiKey::SaslHandshake => round_trip::<SaslHandshakeRequest>(&request),
        ApiKey::SaslAuthenticate => round_trip::<SaslAuthenticateRequest>(&request),
        _ => {}
    }
    // A Produce body's records go through batch splitting, as the write path does.
    if let Ok(produce) = request.decode::<ProduceRequest>() {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                if let Some(records) = &partition.records {
                    let _ = kshift::produce::batch::split_batches(records.clone());
                    let _ = kshift::produce::batch::complete_batches(records.clone());
                }
            }
        }
    }
});

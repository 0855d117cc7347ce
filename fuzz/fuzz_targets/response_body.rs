//! A backend's response body: the first four bytes choose the API key and version, the rest is
//! the body kshift decodes (and, for the answers it rewrites, re-encodes) — a broken or hostile
//! broker must not panic kshift. Fetch responses' record sets also go through batch splitting.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};
use kshift::codec::{decode_body, encode_body, split_response};
use libfuzzer_sys::fuzz_target;

fn round_trip<M: Decodable + Encodable>(body: &Bytes, version: i16) -> Option<M> {
    let message = decode_body::<M>(body.clone(), version, "response body").ok()?;
    let _ = encode_body(&message, version);
    Some(message)
}

fuzz_target!(|data: &[u8]| {
    let [k0, k1, v0, v1, rest @ ..] = data else {
        return;
    };
    let (key, version) = (i16::from_be_bytes([*k0, *k1]), i16::from_be_bytes([*v0, *v1]));
    let body = Bytes::copy_from_slice(rest);
    let _ = kshift::codec::response_correlation_id(rest);
    let _ = split_response(body.clone(), (version & 1) as i16);
    let Ok(api_key) = ApiKey::try_from(key) else {
        return;
    };
    match api_key {
        ApiKey::Produce => {
            round_trip::<ProduceResponse>(&body, version);
        }
        ApiKey::Fetch => {
            if let Some(fetch) = round_trip::<FetchResponse>(&body, version) {
                for topic in &fetch.responses {
                    for partition in &topic.partitions {
                        if let Some(records) = &partition.records {
                            let _ = kshift::produce::batch::split_batches(records.clone());
                            let _ = kshift::produce::batch::complete_batches(records.clone());
                        }
                    }
                }
            }
        }
        ApiKey::Metadata => {
            round_trip::<MetadataResponse>(&body, version);
        }
        ApiKey::ApiVersions => {
            round_trip::<ApiVersionsResponse>(&body, version);
        }
        ApiKey::FindCoordinator => {
            round_trip::<FindCoordinatorResponse>(&body, version);
        }
        ApiKey::ListOffsets => {
            round_trip::<ListOffsetsResponse>(&body, version);
        }
        ApiKey::ListGroups => {
            round_trip::<ListGroupsResponse>(&body, version);
        }
        ApiKey::EndTxn => {
            round_trip::<EndTxnResponse>(&body, version);
        }
        ApiKey::InitProducerId => {
            round_trip::<InitProducerIdResponse>(&body, version);
        }
        ApiKey::OffsetFetch => {
            round_trip::<OffsetFetchResponse>(&body, version);
        }
        ApiKey::OffsetCommit => {
            round_trip::<OffsetCommitResponse>(&body, version);
        }
        ApiKey::JoinGroup => {
            round_trip::<JoinGroupResponse>(&body, version);
        }
        ApiKey::DescribeGroups => {
            round_trip::<DescribeGroupsResponse>(&body, version);
        }
        ApiKey::DescribeCluster => {
            round_trip::<DescribeClusterResponse>(&body, version);
        }
        ApiKey::CreateTopics => {
            round_trip::<CreateTopicsResponse>(&body, version);
        }
        ApiKey::SaslHandshake => {
            round_trip::<SaslHandshakeResponse>(&body, version);
        }
        ApiKey::SaslAuthenticate => {
            round_trip::<SaslAuthenticateResponse>(&body, version);
        }
        _ => {}
    }
});

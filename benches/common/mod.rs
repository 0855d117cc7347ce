//! What the benches that run kshift in front of librdkafka's mock cluster (`scale`,
//! `slow_broker`, `fetch_shape`) share beside the tests' harness (their command line:
//! `args.rs`, included by those that read options). The criterion benches take the tests' Kafka
//! bytes (`tests/common/encode.rs`) directly.

/// A tokio runtime of 2 worker threads for kshift (the benches' clients run on threads of
/// their own).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

//! A far cluster (`common::FarBroker`: Tansu behind the delay proxy): a client that bootstraps
//! from it is told the proxy's address for the broker, so every later request crosses the
//! delayed link too, and records produced and fetched over it arrive intact.

mod common;

use std::time::Duration;

use common::{FarBroker, TIMEOUT};
use rdkafka::consumer::Consumer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_broker_advertises_the_delay_proxy_and_serves_through_it() {
    let far = FarBroker::start(Duration::from_millis(5)).await;
    let topic = common::unique_topic("far");
    common::create_topic(&far.bootstrap(), &topic, 3).await;

    let metadata = common::consumer(&far.bootstrap(), &[])
        .fetch_metadata(Some(&topic), TIMEOUT)
        .expect("metadata over the far link");
    let brokers: Vec<String> = metadata
        .brokers()
        .iter()
        .map(|broker| format!("{}:{}", broker.host(), broker.port()))
        .collect();
    assert_eq!(
        brokers,
        vec![far.bootstrap()],
        "the broker is advertised at the proxy, not at its own port {}",
        far.broker().port()
    );

    let values: Vec<String> = (0..1000).map(|i| format!("far-{i}")).collect();
    let producer = common::producer(&far.bootstrap(), &[("acks", "all")]);
    let records = values.iter().map(|value| (value.clone(), value.clone()));
    common::send_keyed(&producer, &topic, records).await;
    let consumer = common::assigned_consumer(&far.bootstrap(), &topic, 3, &[]);
    let mut received: Vec<String> = common::consume_n(&consumer, values.len(), TIMEOUT)
        .await
        .into_iter()
        .map(|record| String::from_utf8(record.value.unwrap_or_default()).unwrap())
        .collect();
    received.sort();
    let mut expected = values;
    expected.sort();
    assert_eq!(received, expected);
}

"""kafka-python through kshift: writes one record to each partition of a topic, then prints
(as JSON) the connections the client keeps, keyed by node id, and the brokers its metadata
names. Used by tests/client_libraries.rs.

Usage: python3 kafka_python_producer.py BOOTSTRAP TOPIC PARTITIONS
"""
import json
import sys

from kafka import KafkaProducer, TopicPartition
from kafka.net.compat import KafkaNetClient

# The network clients the producer creates (its documented `kafka_client` factory option).
CREATED = []


def recording_client(**configs):
    client = KafkaNetClient(**configs)
    CREATED.append(client)
    return client


def connections():
    """The client's connections by node id (kafka-python 3: a connection manager)."""
    manager = CREATED[0]._manager
    found = {}
    for node_id, conn in manager._conns.items():
        transport = getattr(conn, "transport", None)
        peer = transport.getPeer()[0:2] if transport is not None else ("?", 0)
        found[str(node_id)] = "%s:%s" % (peer[0], peer[1])
    return found, manager.cluster


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, kafka_client=recording_client
    )
    pending = [
        producer.send(topic, key=b"k", value=b"kafka-python-%d" % p, partition=p)
        for p in range(partitions)
    ]
    for future in pending:
        future.get(timeout=15)
    producer.flush()
    conns, cluster = connections()
    brokers = {
        str(b.node_id): "%s:%s" % (b.host, b.port) for b in cluster.brokers()
    }
    leaders = {
        str(p): cluster.leader_for_partition(TopicPartition(topic, p))
        for p in range(partitions)
    }
    print(json.dumps({"connections": conns, "brokers": brokers, "leaders": leaders}))
    producer.close(timeout=5)


if __name__ == "__main__":
    main()

// kafkajs through kshift: writes one record to each partition of a topic, then prints (as
// JSON) the broker objects the client keeps per node id (kafkajs's BrokerPool) and whether
// they are one and the same. Used by tests/client_libraries.rs.
//
// Usage: node kafkajs_producer.js BOOTSTRAP TOPIC PARTITIONS
const { Kafka, logLevel, Partitioners } = require('kafkajs')

async function main() {
  const [bootstrap, topic, partitionsText] = process.argv.slice(2)
  const partitions = Number(partitionsText)
  const kafka = new Kafka({ clientId: 'kafkajs-test', brokers: [bootstrap], logLevel: logLevel.NOTHING })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const messages = []
  for (let p = 0; p < partitions; p++) {
    messages.push({ key: 'k', value: `kafkajs-${p}`, partition: p })
  }
  // Resolves once every broker it sent to has answered; what it returns is the partitions
  // acknowledged.
  const acknowledged = await producer.send({ topic, acks: -1, messages })
  // Internal, for the test only: which broker object (and so which connections) each node id
  // maps to. kafkajs keeps `cluster.brokerPool.brokers` keyed by node id; the cluster was
  // captured when it refreshed its metadata (below).
  if (!lastCluster) throw new Error('no kafkajs cluster captured')
  const pool = lastCluster.brokerPool
  const nodes = Object.keys(pool.brokers)
  const objects = new Set(nodes.map(id => pool.brokers[id]))
  console.log(JSON.stringify({
    nodes,
    distinct_broker_objects: objects.size,
    seed_is_a_node: nodes.some(id => pool.brokers[id] === pool.seedBroker),
    sent: messages.length,
    acknowledged: acknowledged.map(r => r.partition).sort(),
  }))
  await producer.disconnect()
}

// kafkajs does not expose a producer's cluster: capture it as it refreshes its metadata.
let lastCluster = null
const Cluster = require('kafkajs/src/cluster')
const originalRefresh = Cluster.prototype.refreshMetadata
Cluster.prototype.refreshMetadata = function (...args) {
  lastCluster = this
  return originalRefresh.apply(this, args)
}

main().catch(error => {
  console.error(error)
  process.exit(1)
})

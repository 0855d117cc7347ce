// sarama through kshift: writes one record to each partition of a topic with a SyncProducer,
// then prints (as JSON) the brokers the client registered by node id, their addresses and
// whether each holds a connection. Used by tests/client_libraries.rs; built against Debian's
// golang-github-shopify-sarama-dev (sarama 1.22, GOPATH mode), which .ci/run installs.
//
// Usage: go run main.go BOOTSTRAP TOPIC PARTITIONS
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/Shopify/sarama"
)

func main() {
	bootstrap, topic := os.Args[1], os.Args[2]
	partitions, err := strconv.Atoi(os.Args[3])
	if err != nil {
		fail(err)
	}
	config := sarama.NewConfig()
	config.Version = sarama.V2_0_0_0
	config.Producer.Return.Successes = true
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Partitioner = sarama.NewManualPartitioner
	client, err := sarama.NewClient([]string{bootstrap}, config)
	if err != nil {
		fail(err)
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		fail(err)
	}
	for p := 0; p < partitions; p++ {
		message := &sarama.ProducerMessage{
			Topic:     topic,
			Partition: int32(p),
			Key:       sarama.StringEncoder("k"),
			Value:     sarama.StringEncoder(fmt.Sprintf("sarama-%d", p)),
		}
		if _, _, err := producer.SendMessage(message); err != nil {
			fail(err)
		}
	}
	brokers := map[string]map[string]interface{}{}
	for _, broker := range client.Brokers() {
		connected, _ := broker.Connected()
		brokers[strconv.Itoa(int(broker.ID()))] = map[string]interface{}{
			"address":   broker.Addr(),
			"connected": connected,
		}
	}
	leaders := map[string]int32{}
	for p := 0; p < partitions; p++ {
		leader, err := client.Leader(topic, int32(p))
		if err != nil {
			fail(err)
		}
		leaders[strconv.Itoa(p)] = leader.ID()
	}
	out, _ := json.Marshal(map[string]interface{}{"brokers": brokers, "leaders": leaders})
	fmt.Println(string(out))
	producer.Close()
	client.Close()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

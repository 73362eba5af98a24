"""The embedded MQTT broker (amqtt behind a packet-size guard) and configs for external brokers.

`EmbeddedBroker` is an async context manager; `configs/` ships a Mosquitto config for bigger setups.
"""

from fedmq.broker.embedded import BrokerConfig, EmbeddedBroker

__all__ = ["BrokerConfig", "EmbeddedBroker"]

"""The embedded MQTT broker (amqtt behind a packet-size guard) and configs for external brokers.

`EmbeddedBroker` is an async context manager (passwords, topic ACL and TLS: see auth.py and
docs/security.md); `configs/` ships Mosquitto configs, open and secured, and fedmq's ACL file.
"""

from fedmq.broker.embedded import BrokerConfig, EmbeddedBroker

__all__ = ["BrokerConfig", "EmbeddedBroker"]

"""fedmq: federated learning over MQTT for IoT and edge devices.

Layers (imports flow one way): codec <- transport <- cloud_node / edge_node <- cli.
"""

__version__ = "0.1.0"

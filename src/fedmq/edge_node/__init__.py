"""The edge node: receives the global model, trains on private data, publishes its delta.

`EdgeNode` is the async shell; training itself is `fedmq.workloads.train_local` in a worker thread.
"""

from fedmq.edge_node.runtime import EdgeConfig, EdgeNode, EdgeReport, shard_from_id

__all__ = ["EdgeConfig", "EdgeNode", "EdgeReport", "shard_from_id"]

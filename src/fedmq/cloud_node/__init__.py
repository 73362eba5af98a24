"""The cloud node: pure strategies and round bookkeeping, and the async runtime around them.

`CloudNode` runs synchronous rounds over a `Session`; `FedAvg` is the first `Strategy`.
"""

from fedmq.cloud_node.fedavg import FedAvg, FedAvgAggregator
from fedmq.cloud_node.robust import Krum, Median, NormClip, RobustAggregator, TrimmedMean
from fedmq.cloud_node.rounds import RoundCounters, RoundTracker, Verdict
from fedmq.cloud_node.runtime import CloudConfig, CloudNode, RoundRecord
from fedmq.cloud_node.strategy import Aggregator, Strategy

__all__ = [
    "Aggregator",
    "CloudConfig",
    "CloudNode",
    "FedAvg",
    "FedAvgAggregator",
    "Krum",
    "Median",
    "NormClip",
    "RobustAggregator",
    "RoundCounters",
    "RoundRecord",
    "RoundTracker",
    "Strategy",
    "TrimmedMean",
    "Verdict",
]

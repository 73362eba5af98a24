"""The cloud node: pure strategies and round bookkeeping, and the async runtime around them.

`CloudNode` runs synchronous rounds over a `Session`; `FedAvg` is the first `Strategy`, server
optimizers sit behind any strategy, and `FedBuffer` is the pure core of asynchronous rounds.
"""

from fedmq.cloud_node.fedadagrad import FedAdagrad
from fedmq.cloud_node.fedadam import FedAdam
from fedmq.cloud_node.fedavg import FedAvg, FedAvgAggregator
from fedmq.cloud_node.fedavgm import FedAvgM
from fedmq.cloud_node.fedbuff import FedBuffConfig, FedBuffCounters, FedBuffer, Offer
from fedmq.cloud_node.fedyogi import FedYogi
from fedmq.cloud_node.robust import Krum, Median, NormClip, RobustAggregator, TrimmedMean
from fedmq.cloud_node.rounds import RoundCounters, RoundTracker, Verdict
from fedmq.cloud_node.runtime import CloudConfig, CloudNode, RoundRecord
from fedmq.cloud_node.serveropt import (
    AdaptiveOptimizer,
    ServerOptAggregator,
    ServerOptimizer,
    ServerOptStrategy,
    ServerSGD,
)
from fedmq.cloud_node.staleness import Staleness
from fedmq.cloud_node.strategy import Aggregator, Strategy

__all__ = [
    "AdaptiveOptimizer",
    "Aggregator",
    "CloudConfig",
    "CloudNode",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgAggregator",
    "FedAvgM",
    "FedBuffConfig",
    "FedBuffCounters",
    "FedBuffer",
    "FedYogi",
    "Krum",
    "Median",
    "NormClip",
    "Offer",
    "RobustAggregator",
    "RoundCounters",
    "RoundRecord",
    "RoundTracker",
    "ServerOptAggregator",
    "ServerOptStrategy",
    "ServerOptimizer",
    "ServerSGD",
    "Staleness",
    "Strategy",
    "TrimmedMean",
    "Verdict",
]

"""Workloads: datasets, partitioners, drift, models, flat parameter vectors, local/centralized
training (FedAvg or FedProx).

Pure PyTorch + numpy, seeded and reproducible; no MQTT, no sockets, no global torch state changes.
"""

from fedmq.workloads.accel import accel_report
from fedmq.workloads.cost import TrainingCost, training_cost
from fedmq.workloads.data import DATASET_NAMES, DATASETS, Dataset, load_dataset
from fedmq.workloads.drift import DriftSpec, data_for_round
from fedmq.workloads.models import (
    MODEL_NAMES,
    build_model,
    get_flat,
    head,
    layout,
    make_model,
    num_params,
    set_flat,
)
from fedmq.workloads.partition import PartitionSpec, partition
from fedmq.workloads.train import (
    TrainConfig,
    TrainResult,
    derive_seed,
    evaluate,
    proximal_term,
    train_centralized,
    train_local,
)

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "MODEL_NAMES",
    "Dataset",
    "DriftSpec",
    "PartitionSpec",
    "TrainConfig",
    "TrainResult",
    "TrainingCost",
    "accel_report",
    "build_model",
    "data_for_round",
    "derive_seed",
    "evaluate",
    "get_flat",
    "head",
    "layout",
    "load_dataset",
    "make_model",
    "num_params",
    "partition",
    "proximal_term",
    "set_flat",
    "train_centralized",
    "train_local",
    "training_cost",
]

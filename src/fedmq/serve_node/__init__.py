"""The serve node: follows a job's global model over MQTT and answers predictions with it.

`ServeNode` is the async shell (MQTT request/response, optional HTTP); `api` is the JSON schema.
"""

from fedmq.serve_node.api import PredictRequest, Reply, RequestLimits
from fedmq.serve_node.runtime import ServeConfig, ServeNode, ServeReport
from fedmq.serve_node.service import Predictor, Served

__all__ = [
    "PredictRequest",
    "Predictor",
    "Reply",
    "RequestLimits",
    "ServeConfig",
    "ServeNode",
    "ServeReport",
    "Served",
]

"""The topic tree of one job. Every topic lives under `fedmq/<job>/`; see docs/protocol.md."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "fedmq"


@dataclass(frozen=True)
class Topics:
    job: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.job}"

    def status(self, node: str) -> str:
        return f"{self.prefix}/status/{node}"

    @property
    def status_all(self) -> str:
        return f"{self.prefix}/status/+"

    @property
    def jobspec(self) -> str:
        return f"{self.prefix}/job"

    @property
    def task(self) -> str:
        return f"{self.prefix}/task"

    def model(self, index: int) -> str:
        return f"{self.prefix}/model/{index}"

    @property
    def model_all(self) -> str:
        return f"{self.prefix}/model/+"

    def delta(self, index: int) -> str:
        return f"{self.prefix}/delta/{index}"

    @property
    def delta_all(self) -> str:
        return f"{self.prefix}/delta/+"

    def update(self, node: str) -> str:
        return f"{self.prefix}/update/{node}"

    @property
    def update_all(self) -> str:
        return f"{self.prefix}/update/+"

    def chain(self, node: str) -> str:
        """Chained mode: the model on its way to `node` (an edge, or the cloud at the end)."""
        return f"{self.prefix}/chain/{node}"

    @property
    def chain_all(self) -> str:
        return f"{self.prefix}/chain/+"

    @property
    def summary(self) -> str:
        return f"{self.prefix}/summary"

    @property
    def control(self) -> str:
        return f"{self.prefix}/control"

    def node_of(self, topic: str) -> str:
        """The last topic level: the node a status or update topic belongs to."""
        return topic.rsplit("/", 1)[-1]

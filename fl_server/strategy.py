"""Aggregation strategies, with the run record hooked into every round.

FedAvg averages the sites' parameters weighted by their number of training examples; FedAdam
applies the averaged update through a server-side Adam optimizer. Both are Flower's own; the
only addition is that every reply (including failures) is handed to the run record.
"""

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy

from fl_server.run_record import RunRecord

STRATEGIES = ("fedavg", "fedadam")


def build_strategy(
    name: str, record: RunRecord, min_sites: int, server_learning_rate: float
) -> Strategy:
    """A Flower strategy that trains and evaluates on every connected site each round."""
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_sites,
        "min_evaluate_nodes": min_sites,
        "min_available_nodes": min_sites,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }
    if name == "fedavg":
        base: type[FedAvg] = FedAvg
    elif name == "fedadam":
        base = FedAdam
        common |= {"eta": server_learning_rate, "eta_l": 1.0, "beta_1": 0.9, "beta_2": 0.99}
    else:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")

    class Recorded(base):
        def aggregate_train(
            self, server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = list(replies)
            record.record_train(server_round, replies)
            return super().aggregate_train(server_round, replies)

        def aggregate_evaluate(
            self, server_round: int, replies: Iterable[Message]
        ) -> MetricRecord | None:
            replies = list(replies)
            aggregated = super().aggregate_evaluate(server_round, replies)
            record.record_evaluate(server_round, replies, aggregated)
            return aggregated

    Recorded.__name__ = base.__name__
    return Recorded(**common)


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted training loss, and the largest epsilon any site has reached."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(float(m[weight_key]) for m in metrics)
    return MetricRecord(
        {
            "train-loss": sum(float(m["train-loss"]) * float(m[weight_key]) for m in metrics)
            / total,
            "max-epsilon": max(float(m["epsilon"]) for m in metrics),
        }
    )

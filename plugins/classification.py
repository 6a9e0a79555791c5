"""The classification task family: labelled images, a model with a linear head, cross-entropy, accuracy.

This is the behaviour the harness had before tasks were plugins, registered exactly as a third-party
task would be (docs/tasks.md).
"""

from __future__ import annotations

from harness import Measure, hookimpl
from harness.tasks import Task, TinyData

MEASURES = [Measure("accuracy", higher_is_better=True, display="percent", description="top-1 accuracy on the test set"),
            Measure("loss", higher_is_better=False, description="mean cross-entropy on the test set")]


class Classification(Task):
    """Architectures expose `head_path` (an nn.Linear), `block_paths` and `feature_path`; initFC strategies need them."""

    def check_model(self, model, architecture: str) -> None:
        from harness.engine.models import check_classifier

        check_classifier(model, architecture)

    def objective(self, generator):
        from harness.engine.train import cross_entropy_objective

        return cross_entropy_objective  # deterministic given the batch: the generator is not needed

    def evaluate(self, model, split, *, precision: str = "fp32") -> dict[str, float]:
        from harness.engine.train import evaluate

        accuracy, loss = evaluate(model, split, precision=precision)
        return {"accuracy": accuracy, "loss": loss}

    def tiny_data(self, *, num_classes: int = 10, channels: int = 1, size: int = 16, n_train: int = 200,
                  n_test: int = 100) -> TinyData:
        """Separable synthetic classes: original domain = pattern set 0, restricted = pattern set 1."""
        from harness.testing import synthetic_split

        shape = dict(num_classes=num_classes, channels=channels, size=size)
        return TinyData(original_train=synthetic_split(n_train, seed=1, pattern_seed=0, **shape),
                        original_test=synthetic_split(n_test, seed=2, pattern_seed=0, **shape),
                        restricted_train=synthetic_split(n_train, seed=3, pattern_seed=1, **shape),
                        restricted_test=synthetic_split(n_test, seed=4, pattern_seed=1, **shape),
                        num_classes=num_classes, channels=channels, size=size, architecture="cnn-s")


@hookimpl
def register_tasks(register):
    register("classification", factory=Classification, version="1", measures=MEASURES, labelled=True, head=True,
             description="Image classification: cross-entropy training, accuracy (the score) and loss on test sets")

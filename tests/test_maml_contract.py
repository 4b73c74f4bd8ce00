"""MAML (second and first order) pass the learner contract."""

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms import MAML
from tfmeta.models import conv4


class TestMAMLContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return MAML(conv4(input_shape, num_classes=ways, filters=16), inner_lr=0.4,
                    inner_steps=1, inner_steps_test=1)


class TestFOMAMLContract(ClassifierContract):
    learning_rate = 3e-3
    def make_learner(self, input_shape, ways):
        return MAML(conv4(input_shape, num_classes=ways, filters=16), inner_lr=0.4,
                    inner_steps=1, inner_steps_test=1, first_order=True)

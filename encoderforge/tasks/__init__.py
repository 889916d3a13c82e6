"""Tasks: WHAT to learn. A task supplies batches and a loss; the one training loop (training/loop.py) does the rest.

A task is any object with the methods of `Task` (a Protocol in training/task.py, not a base class): adding one is a
file here, its test, and one CLI line.
"""

from encoderforge.training.task import LossSum, Task

__all__ = ["LossSum", "Task"]

"""The ranking job, one file per stage: units, plan, execute, image/block tasks, rows, rank."""
from .failures import Failure, Stage
from .rank import rank
from .rows import Ranking
from .rundir import RunDirectory

__all__ = ["Failure", "Ranking", "RunDirectory", "Stage", "rank"]

"""The label side: true performance, rank agreement. Never needed to rank a bank."""
from .correlation import rank_agreement, summarize
from .performance import IOU_THRESHOLDS, average_precision, foreground_f1

__all__ = ["IOU_THRESHOLDS", "average_precision", "foreground_f1", "rank_agreement", "summarize"]

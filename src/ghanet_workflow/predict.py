"""``ghanet-wf predict``: risks for new patients from slides alone, with the trained fold models.

The mean risk over the fold models, its spread, and the risk group by the stored training cut-offs.
"""

from ghanet_workflow.fold import predict_main as main, predict_new

__all__ = ["main", "predict_new"]

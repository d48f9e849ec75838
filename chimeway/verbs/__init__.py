"""The verbs of ``Chimeway``, grouped by concept; ``chimeway.app`` combines them."""

from chimeway.verbs.live import LiveVerbs
from chimeway.verbs.operating import OperatingVerbs
from chimeway.verbs.policy import PolicyVerbs
from chimeway.verbs.scheduling import SchedulingVerbs
from chimeway.verbs.tracing import TracingVerbs
from chimeway.verbs.workflows import WorkflowVerbs

__all__ = ["LiveVerbs", "OperatingVerbs", "PolicyVerbs", "SchedulingVerbs", "TracingVerbs", "WorkflowVerbs"]

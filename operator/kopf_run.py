"""For `kopf run -m visioninapp.operator.kopf_run [--standalone] [-A]`: the handlers of the roles set
in `VISIONINAPP_OPERATOR_ROLES`, registered in kopf's default registry. `visioninapp-operator` is the
usual entry point; this module exists for users who run kopf's own CLI."""

from __future__ import annotations

import kopf

from visioninapp.operator.config import OperatorConfig
from visioninapp.operator.handlers import register

register(kopf.get_default_registry(), OperatorConfig())

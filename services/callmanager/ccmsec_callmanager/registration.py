"""The registration decision moved to `ccmsec.policy.registration` (SRST decides with it too)."""

from ccmsec.policy.registration import *  # noqa: F401,F403
from ccmsec.policy.registration import (  # noqa: F401  (names the star does not carry)
    AUTO_REGISTER_FALLBACK_MODEL,
    DEVICE_TYPE_MODELS,
    MODEL_DEVICE_TYPES,
    DeviceRecord,
    PhoneTrust,
    Verdict,
    certificate_names_device,
    check_lsc,
    decide,
    effective_mode,
    model_of_device_type,
)

"""Stand-ins for the outside world the example workflows talk to.

They decide from the run's data alone (no hidden state), so a step gives the same
answer in any worker process, and a demo can be scripted through its data.
"""

import hashlib


class CustomsUnavailable(Exception):
    """The customs service timed out: worth retrying."""


class GatewayTimeout(Exception):
    """The payment gateway did not answer: worth retrying."""


def carrier_position(data: dict) -> str:
    """Where the carrier's feed puts the container after this many checks."""
    return "arrived" if data.get("checks", 0) >= data.get("arrives_after_checks", 3) else "at sea"


def file_customs(data: dict, attempt: int) -> bool:
    """True when customs clears the declaration, False when it holds the container."""
    if attempt <= data.get("customs_outages", 0):
        raise CustomsUnavailable(f"customs service unavailable (attempt {attempt})")
    return data.get("customs_holds", 0) <= data.get("holds_so_far", 0)


def charge(data: dict, attempt: int) -> str:
    """'approved' or 'declined'; raises GatewayTimeout on the first `gateway_timeouts` attempts."""
    if attempt <= data.get("gateway_timeouts", 0):
        raise GatewayTimeout("payment gateway timed out")
    return "declined" if data.get("card") == "declined" else "approved"


def reference(prefix: str, *parts) -> str:
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:8].upper()
    return f"{prefix}-{digest}"


class BillingRefused(Exception):
    """The billing service refused to invoice the order."""

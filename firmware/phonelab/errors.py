"""The lab's one error: a peer (Kamailio, sipp, a namespace, a capture) could not be run.

Owns: `LabError`. It is not part of phoned's error tree: the lab is a test and demo tool
beside the product, never installed on a phone.
"""

from __future__ import annotations


class LabError(RuntimeError):
    """A lab peer (Kamailio, sipp, a namespace) could not be set up."""

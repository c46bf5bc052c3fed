"""phoned: the firmware service of a SIP desk phone with primary/backup PBX redundancy."""

__version__ = "0.1.0"

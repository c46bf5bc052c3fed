"""The SIP stack (SPEC §1, §2, §4): every pjsua2 and pjsip import lives here and only here.

Owns: `endpoint` (the library, transports, timers), `account` (one account per PBX),
`registration` (getting REGISTERs out, retrying refused ones), `leaving` (accounts on
their way out, nothing sent to a dead server), `moves` (accounts taken, released, and the
phone's link changed), `calls`, `subscriptions` (BLF, RFC 4235) with
`dialog_info` (the pure dialog-info parser), `pjsip_hooks` (a ctypes pjsip module),
`checksync` (the pure check-sync decision, SPEC §7), `features` (calls, lamps and
check-sync answers) and `stack` (`PjsuaStack`, the adapter behind the
`SipStack` port).
Must not touch: probing, routes, the VPN, the display; and pjsua2 from any thread but the
one that created it (STACK-NOTES: a foreign thread aborts the process).
"""

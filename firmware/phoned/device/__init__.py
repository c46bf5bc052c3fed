"""The device (SPEC §5): what the phone shows on its LEDs and display, and its line keys.

Owns: `board` (board profiles: pins, display), `view` (status -> what to show, pure),
`screen` (the picture, PIL), `display` (luma: the only importer of luma), `frames` (the
emulated panel's PNGs on disk), `leds` (gpiozero: the only importer of gpiozero) and
`output` (`DeviceOutput`, behind the `DeviceOutput` port).
Must not touch: SIP, sockets, decisions: it shows what it is told.
"""

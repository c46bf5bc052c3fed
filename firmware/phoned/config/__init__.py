"""Settings (SPEC §3, §6, §7): TOML text to frozen, validated dataclasses.

Owns: `settings` (the frozen dataclasses, one per TOML table), `rules` (one converter per
value, secret files), `check` (where a problem is: file:line, the list of problems),
`files` (reading a path safely: regular files only, bounded), `parsing` (a text to TOML
tables within bounds, `SettingsError`), `loader` (validate the tables, load a file) with
`vpn_table` and `provisioning_table` (those tables' keys), `overlay` (a provisioned file
laid over the local one), `changes` (which keys differ between two settings, told for the
log) and `live` (the settings in force). Every error names file, line, key, value and what
was expected.
Must not touch: the running service. It hands out new `Settings` objects; who applies them
is the service's business (`phoned.service.wiring`).
"""

"""Provisioning (SPEC §7), the phone's side: fetching its file and keeping the last good copy.

Owns: `mac` (which MAC names the file), `fetch` (the HTTP(S) GET of `<url>/<mac>.toml`:
bounded in time and size, redirects, basic and digest auth, conditional GET), with `http`
(one GET exchange under a deadline) and `auth` (answers to 401 challenges) below it, and
`lastgood` (the last accepted file, `<state_dir>/provisioned.toml`, written atomically).
Must not touch: settings parsing and validation (`phoned.config`: this package hands over
bytes), the running service (who applies a file is `phoned.service`'s business), pjsua2.
Every failure is a `phoned.errors.ProvisioningError` with a one-line message for a person;
no password ever appears in a message, a `repr` or a URL.
"""

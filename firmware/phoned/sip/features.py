"""The phone's user-facing SIP features on top of the stack: calls and BLF lamps (SPEC §4).

Owns: the public methods `phoned call` / `phoned hangup` / `phoned status` reach
(`call`, `hangup`, `answer`, `calls`, `blf_states`) and the list of addresses incoming
calls are accepted from. `PjsuaStack` (`sip.py`) inherits them; they run on its owner
thread like every other method and use its state, declared below.
Must not touch: accounts, registration, the library: `sip.py` owns those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from phoned.core.events import Server
from phoned.errors import SipError
from phoned.sip.account import ServerAccount, SipIdentity, call_uri
from phoned.sip.calls import CallBook, CallInfo
from phoned.sip.dialog_info import BlfState
from phoned.sip.subscriptions import BlfSubscriptions


class PhoneFeatures:
    """Calls and BLF lamps of `PjsuaStack`; see there for the thread rule."""

    _identity: SipIdentity
    _calls: CallBook
    _active: Server | None
    _accounts: dict[Server, ServerAccount]
    _blf: BlfSubscriptions | None
    _blf_keys: tuple[str, ...]
    _peers_given: dict[Server, tuple[str, ...]]

    def _check_thread(self) -> None:
        raise NotImplementedError

    def _settle(self) -> None:
        raise NotImplementedError

    # -- calls (SPEC §4: phoned call / hangup) --------------------------------------------
    def call(self, ext: str) -> int:
        """Call `ext` (an extension, or a full `sip:` URI) through the active server.

        Returns:
            The call's id (for `hangup()`); its progress arrives as `CallChanged`.

        Raises:
            SipError: wrong thread, no server in use yet, or pjsua2 refused the call.
        """
        self._check_thread()
        server = self._active
        account = self._accounts.get(server) if server is not None else None
        if server is None or account is None:
            raise SipError(f"sip: cannot call {ext}: no server in use")
        try:
            uri = call_uri(ext, self._identity, account.target)
        except ValueError as exc:
            raise SipError(f"sip: cannot call {ext!r}: {exc}") from exc
        call_id = self._calls.place(account, server, uri)
        self._settle()
        return call_id

    def hangup(self, call_id: int | None = None) -> int:
        """End call `call_id`, or every call when None; how many were asked to end.

        Raises:
            SipError: wrong thread, not started, or no live call has that id.
        """
        self._check_thread()
        count = self._calls.hangup(call_id)
        self._settle()
        return count

    def answer(self, call_id: int) -> None:
        """Pick up a ringing incoming call (when `auto_answer` is off).

        Raises:
            SipError: wrong thread, no such call, or it is not ringing.
        """
        self._check_thread()
        self._calls.answer(call_id)
        self._settle()

    def calls(self) -> list[CallInfo]:
        """The live calls, oldest first (for `phoned status`).

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        return self._calls.calls()

    def blf_states(self) -> dict[str, BlfState]:
        """Every BLF key's lamp state (all UNKNOWN while not subscribed).

        Raises:
            SipError: wrong thread, or not started.
        """
        self._check_thread()
        if self._blf is None:
            return dict.fromkeys(self._blf_keys, BlfState.UNKNOWN)
        return self._blf.states()

    def accept_calls_from(self, peers: Mapping[Server, Iterable[str]]) -> None:
        """Set the IP addresses (servers and their proxies) incoming calls may come from.

        SPEC §2: calls from either configured server are accepted, others get 403.
        Replaces the previous set; IP literals of targets given to `use_server()` are
        added automatically, so this is needed for the server not in use yet and for
        names resolved by the caller.
        """
        self._check_thread()
        self._peers_given = {server: tuple(hosts) for server, hosts in peers.items()}
        self._update_peers()

    def _update_peers(self) -> None:
        merged = {server: list(hosts) for server, hosts in self._peers_given.items()}
        for server, account in self._accounts.items():
            target = account.target
            merged.setdefault(server, []).append(target.host)
            if target.proxy is not None:
                merged[server].append(target.proxy[0])
        self._calls.accept_from(merged)

    # -- switching servers (SPEC §2) ----------------------------------------------------

"""Is a saved position still in the source's binlog? (pure)"""

from __future__ import annotations

from dataclasses import dataclass

from cdc.capture.flavor import mysql_gtid_normal
from transform.errors import FatalError
from transform.model import Position


def unavailable(position: Position, logs: list[tuple[str, int]]) -> str | None:
    """Why streaming can't resume at ``position`` given SHOW BINARY LOGS (name, size), or None.

    Binlog files are numbered in order; a saved file older than the oldest one the server still
    has was purged (PURGE BINARY LOGS, or expiry while the daemon was down).
    """
    if not logs:
        return "the source reports no binary logs (is log_bin on?)"
    names = [name for name, _ in logs]
    if position.file in names:
        size = dict(logs)[position.file]
        if position.pos > size:
            return (f"the saved position {position} lies past the end of {position.file} ({size} bytes): "
                    "the source's binlog was reset or this is another server")
        return None
    oldest = f"{names[0]}:4"
    return (f"the binlog at the saved position {position} has been purged from the source; the oldest "
            f"available is {oldest}. Changes made in between are lost to the stream: take a new snapshot "
            "with `softcart-sync resnapshot` (staging stays consistent meanwhile), or set "
            "SOFTCART_AUTO_RESNAPSHOT=true to have the daemon do it")


@dataclass(frozen=True)
class SourceFacts:
    """What the server SOFTCART_SOURCE_URL reaches says of itself, for the resume decision."""

    server_id: int
    uuid: str  # MySQL's server_uuid; '' on MariaDB, which has none
    name: str  # host:port, for messages
    #: does its binlog hold every transaction of the saved GTID state? (None: no GTID saved)
    has_saved_gtid: bool | None
    #: MariaDB: its GTID state at the saved file and offset (BINLOG_GTID_POS; '' where that is no
    #: event boundary), None where not asked (MySQL, no such file). On the server the position was
    #: read from, it is the saved GTID state: anything else means another history under the same
    #: file names (MariaDB has no server uuid, and server_id 1 is everyone's default).
    gtid_at_saved: str | None = None


@dataclass(frozen=True)
class Resume:
    position: Position  # file '' : resume by GTID (position.gtid) on another server
    note: str = ""

    @property
    def by_gtid(self) -> bool:
        return self.position.file == ""


def identity_text(server_id: int, uuid: str) -> str:
    return f"server_id {server_id}" + (f" (server_uuid {uuid})" if uuid else "")


#: the statement that resets a binary log, by server
RESET = "RESET MASTER; on MySQL 8.4+: RESET BINARY LOGS AND GTIDS"


def resume_from(saved: Position, saved_source: tuple[int, str] | None, facts: SourceFacts) -> Resume:
    """Where to resume, given the position saved and the server it was read from.

    - The same server: the saved file and offset, as long as its binlog still holds the saved GTID
      state (after RESET MASTER, or a restore, the same file names hold other transactions: the
      offset would land inside a foreign one).
    - Another server (a failover, the URL pointed elsewhere): by GTID where it has every saved
      transaction (a replica with log_slave_updates / log_replica_updates); otherwise there is no
      way to find the same place in its binlog.
    A saved position from before identities were kept counts as the same server.
    Raises FatalError naming both servers and the way out."""
    here = identity_text(facts.server_id, facts.uuid)
    fix = ("take a new snapshot with `softcart-sync resnapshot` (daemon stopped); staging stays as it is"
           " until it commits")
    same = saved_source is None or (saved_source[0] == facts.server_id and saved_source[1] == facts.uuid)
    offset_ours = not saved.gtid or facts.gtid_at_saved is None or \
        _gtid_seqs(facts.gtid_at_saved) == _gtid_seqs(saved.gtid)
    if same and offset_ours:
        if saved.gtid and facts.has_saved_gtid is False:
            raise FatalError(f"the source {facts.name} ({here}) no longer holds the transactions of the saved position"
                             f" {saved}: its binary log was reset ({RESET}) or the server restored, so that"
                             f" offset means nothing now; {fix}")
        return Resume(saved)
    if same:
        # The same server with another history under the saved file name and offset: a RESET
        # MASTER or a restore, never a failover (a replica has a server_id of its own). Its new
        # history may well number past the saved GTIDs: that proves nothing, so nothing is skipped.
        at = f"GTID state {facts.gtid_at_saved}" if facts.gtid_at_saved else "no event boundary"
        raise FatalError(f"the binary log of {facts.name} ({here}) holds another history at the saved position"
                         f" {saved} ({at} there; saved: {saved.gtid}): its binary log was reset ({RESET}) or the"
                         " server restored, and where the saved changes end in the new history can't be known;"
                         f" {fix} (or set SOFTCART_AUTO_RESNAPSHOT=true to have the daemon do it)")
    before = identity_text(*saved_source) if saved_source else "another server"
    found = f"{facts.name} is {here}"
    if saved.gtid and facts.has_saved_gtid:
        return Resume(Position("", 4, saved.gtid),
                      f"the saved position {saved} was read from {before}; {found}, and it holds every saved"
                      " transaction: resuming after them by GTID")
    why = ("it does not hold every transaction of the saved GTID state" if saved.gtid
           else "without GTIDs the same place can't be found in its binary log")
    raise FatalError(f"the saved position {saved} was read from {before}, but SOFTCART_SOURCE_URL now reaches"
                     f" {facts.name}, {here}, and {why}; {fix}")


def _gtid_seqs(text: str) -> dict[int, int] | str:
    """A MariaDB GTID state as {domain: sequence number}; MySQL's GTID set in one form."""
    out: dict[int, int] = {}
    for part in text.replace("\n", "").split(","):
        bits = part.strip().split("-")
        if len(bits) != 3 or not all(b.isdigit() for b in bits):
            try:
                return mysql_gtid_normal(text)
            except ValueError:
                return text.strip()
        out[int(bits[0])] = max(out.get(int(bits[0]), 0), int(bits[2]))
    return out


def mariadb_gtid_contains(state: str, saved: str) -> bool:
    """Does MariaDB GTID state ``state`` (``gtid_binlog_pos``: domain-server-seq per domain) hold
    every transaction of ``saved``? Per domain, by sequence number: the server id part says which
    server wrote the last one, and changes at a failover."""
    have, want = _gtid_seqs(state) if state.strip() else {}, _gtid_seqs(saved) if saved.strip() else {}
    if not isinstance(have, dict) or not isinstance(want, dict):
        return False
    return all(have.get(domain, -1) >= seq for domain, seq in want.items())
